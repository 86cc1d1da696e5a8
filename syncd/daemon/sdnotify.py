"""systemd's notify protocol without a library: one datagram per message to ``$NOTIFY_SOCKET``.

``READY=1`` once serving, ``WATCHDOG=1`` (every ``WATCHDOG_USEC / 2``) while the
supervisor and its tasks are alive, ``STOPPING=1`` on shutdown, ``STATUS=...``
for ``systemctl status``. Outside systemd (no ``NOTIFY_SOCKET``) every call is a
no-op. A send that fails is logged once and never raised: the daemon must not
stop because its supervisor's socket went away.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends notify messages to the socket named by the environment (read once, at construction)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_s = _watchdog_interval(env)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or None when no watchdog is armed."""
        return self._watchdog_s if self.enabled else None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one message; True when it was delivered."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify_failed", error=f"{type(exc).__name__}: {exc.strerror or exc}")
                self._warned = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def _socket_address(raw: str) -> str | bytes | None:
    """A filesystem path, or an abstract socket (``@name`` -> ``\\0name``); None when unset or unusable."""
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    log.warning("sd_notify_socket_ignored", reason="NOTIFY_SOCKET is neither a path nor @abstract")
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` when the watchdog is meant for this process (``WATCHDOG_PID``, if set)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
