"""Failures, said once: one readable line per exception, which ones mean "the database is away", and how long to wait.

* :func:`describe` turns an exception into one line, for people and ``last_error`` columns.
* :data:`DB_ERRORS`: every exception a database call fails with when the server is down,
  restarting, refusing us or answering with an error (``TimeoutError`` is an ``OSError``).
  A pass, a heartbeat or a health probe catching these records the failure and carries on.
* :data:`DB_UNAVAILABLE`: the narrower connection-level subset; ``retry_database`` (startup:
  migrate, connect) waits and retries only on these, so a real SQL error still stops it.
* :func:`backoff`: the one exponential backoff (each caller keeps its own base and cap).
"""

from __future__ import annotations

import random
from typing import Literal

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


DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, socket errors, TimeoutError (our deadlines)
    asyncpg.InterfaceError,  # ConnectionDoesNotExistError, "pool is closing", connection lost mid-query
    asyncpg.PostgresError,  # CannotConnectNowError, AdminShutdownError, ... and any error the server answers
    # "cannot switch to state 12; another operation (2) is in progress": a pooled connection whose
    # cancelled operation (a deadline while the server restarted) had not finished unwinding. Seen in
    # tests/acceptance/test_database_restart.py; the next pass gets a sound connection.
    asyncpg.InternalClientError,
)

DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.ConnectionFailureError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)

Jitter = Literal["none", "half", "full"]


def backoff(failures: int, base: float = 1.0, cap: float = 60.0, *, jitter: Jitter = "none") -> float:
    """Delay after the ``failures``-th consecutive failure: ``base`` doubling per failure up to ``cap``.

    ``jitter``: "none" exactly that (1, 2, 4 ... cap); "half" somewhere in [d/2, d]; "full"
    somewhere in [0, d] (tenacity's ``wait_random_exponential``).
    """
    delay = float(min(cap, base * 2 ** min(max(0, failures - 1), 64)))
    if jitter == "half":
        return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 -- jitter, not crypto
    if jitter == "full":
        return random.uniform(0, delay)  # noqa: S311 -- jitter, not crypto
    return delay
