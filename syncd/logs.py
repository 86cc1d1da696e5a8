"""structlog's production chain: one JSON object per line on stderr (docs/operations.md).

Fields: ``timestamp`` (UTC ISO 8601), ``level``, ``event`` (a constant snake_case
name), ``task`` and ``account`` from contextvars, and the call's own fields.
Third-party libraries' stdlib logging goes through the same chain as one constant
event, ``library_log``, with their text in ``message`` and their logger's name in
``logger`` (alpaca-py's "connected to: ws://..." is not an event name). A redactor
replaces every configured secret, and any value under a secret-looking key,
with ``***`` before rendering.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from syncd.settings import LogSettings

REDACTED = "***"
_SECRET_KEY = re.compile(r"(secret|token|password|passwd|api_key|apikey|authorization|credential)", re.I)
_MIN_SECRET_LEN = 4  # shorter strings would redact ordinary words
# A DSN's password in any form libpq takes, however short: URL userinfo, ?password=, password=...
_DSN_USERINFO = re.compile(r"(postgres(?:ql)?://[^\s:@/]*:)\S*@", re.I)
_DSN_PASSWORD = re.compile(r"""((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&'"]+)""", re.I)


class RedactSecrets:
    """Replace known secret values anywhere in the event, and values of secret-looking keys."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        for key, value in list(event_dict.items()):
            event_dict[key] = REDACTED if _SECRET_KEY.search(key) and value else self._scrub(value)
        return event_dict

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            if "://" in value or "assword" in value.lower():
                value = _DSN_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", value)
                value = _DSN_PASSWORD.sub(lambda m: m.group(1) + REDACTED, value)
            return value
        if isinstance(value, MutableMapping):
            return {k: REDACTED if _SECRET_KEY.search(str(k)) and v else self._scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._scrub(v) for v in value]
        return value


LIBRARY_EVENT = "library_log"


def _library_log(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """A stdlib record from a library: constant ``event``, its text in ``message`` (foreign records only)."""
    event_dict["message"] = str(event_dict.get("event", ""))
    event_dict["event"] = LIBRARY_EVENT
    return event_dict


class Demote:
    """Log these events at debug: dropped below debug unless they report a failure (``ok`` false).

    The demo uses it for the per-pass ``account_pass`` lines, so the banner and the order
    events stand out; ``syncd run`` logs every pass at info.
    """

    def __init__(self, events: Iterable[str], level: int) -> None:
        self._events = frozenset(events)
        self._level = level

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if (
            self._level > logging.DEBUG
            and event_dict.get("event") in self._events
            and event_dict.get("ok", True) is not False
            and method in ("info", "debug")
        ):
            raise structlog.DropEvent
        return event_dict


def _drop_color_message(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)
    return event_dict


def configure_logging(
    settings: LogSettings,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    demote: Iterable[str] = (),
) -> None:
    """Configure structlog and the stdlib root logger once per process (``demote``: see :class:`Demote`)."""
    stream = stream or sys.stderr
    level = getattr(logging, settings.level.upper())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
        _drop_color_message,
    ]
    renderer: Processor
    if settings.format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        exc: list[Processor] = []
    else:
        renderer = structlog.processors.JSONRenderer(default=str)
        exc = [structlog.processors.dict_tracebacks]
    redact = RedactSecrets(secrets)

    own: list[Processor] = [Demote(demote, level)] if demote else []
    structlog.configure(
        processors=[*own, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _library_log],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *exc, redact, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # a library's warnings.warn becomes a library_log line, not raw text
    # Chatty libraries stay at warning unless we are debugging.
    # alpaca-py's stream says "connected to: ws://..." at info: syncd logs stream_connected itself.
    for noisy in ("asyncio", "aiohttp.access", "websockets", "urllib3", "alpaca.trading.stream"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
