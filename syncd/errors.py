"""Turning exceptions into one readable line, for people and for ``last_error`` columns."""

from __future__ import annotations

import asyncpg

MAX_ERROR_LEN = 500


def describe(exc: BaseException) -> str:
    """``Type: message``, one line, bounded; database connection errors said plainly."""
    if isinstance(exc, (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError)):
        kind = "database unreachable" if _is_db(exc) else type(exc).__name__
    else:
        kind = type(exc).__name__
    text = " ".join(str(exc).split()) or repr(exc)
    line = f"{kind}: {text}"
    return line if len(line) <= MAX_ERROR_LEN else line[: MAX_ERROR_LEN - 1] + "…"


def _is_db(exc: BaseException) -> bool:
    return isinstance(exc, (asyncpg.InterfaceError, asyncpg.CannotConnectNowError, ConnectionRefusedError))
