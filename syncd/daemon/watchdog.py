"""The systemd watchdog: ping only while every task loop is running and on schedule.

Each loop tells :meth:`Watchdog.expect` by when (monotonic) it will next be heard from:
the end of its pass budget, of its wait, or of its restart backoff. ``grace_s`` is added
to that; a loop past it is *stalled*, and a loop whose task ended has *exited*.
:meth:`Watchdog.run` sends ``WATCHDOG=1`` every ``WatchdogSec/2`` while :meth:`alive`,
withholds it (logging ``watchdog_withheld`` once) while not, and sends a ``STATUS=`` line
about every 30 s. Without ``WATCHDOG_USEC`` it does nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog

from syncd.daemon.health import TaskView
from syncd.daemon.sdnotify import Notifier

log = structlog.get_logger("syncd.daemon.supervisor")  # the events' logger name is unchanged

WATCHDOG_GRACE_S = 30.0


def status_line(leases_held: int, accounts: int, views: Mapping[str, TaskView]) -> str:
    """``leases 2/3; accountSync ok; tradeCycle failing x2; ...`` (systemd's STATUS=)."""
    parts = [f"leases {leases_held}/{accounts}"]
    for name, view in views.items():
        state = "ok" if view.consecutive_failures == 0 else f"failing x{view.consecutive_failures}"
        parts.append(f"{name} {state}")
    return "; ".join(parts)


class Watchdog:
    """``grace_s`` is a public attribute: tests move it while running."""

    def __init__(
        self,
        notifier: Notifier,
        *,
        stop: asyncio.Event,
        loops: Mapping[str, asyncio.Task[None]],
        status: Callable[[], str],
        grace_s: float = WATCHDOG_GRACE_S,
    ) -> None:
        self._notifier = notifier
        self._stop = stop
        self._loops = loops
        self._status = status
        self.grace_s = grace_s
        self._deadlines: dict[str, float] = {}
        self._withheld = False

    def expect(self, name: str, by: float) -> None:
        """Loop ``name`` will be heard from again by monotonic time ``by`` (grace is added here)."""
        self._deadlines[name] = by + self.grace_s

    def alive(self) -> tuple[bool, list[str]]:
        """Every task loop running and within its deadline (pass budget or wait, plus grace)?

        While shutting down the answer is yes: the loops are meant to end, and systemd's
        ``TimeoutStopSec`` bounds the shutdown.
        """
        stalled: list[str] = []
        if self._stop.is_set():
            return True, stalled
        now = time.monotonic()
        for name, task in self._loops.items():
            if task.done():
                stalled.append(f"{name} exited")
            elif now > self._deadlines.get(name, now + 1):
                stalled.append(f"{name} stalled")
        return not stalled, stalled

    async def run(self) -> None:
        interval = self._notifier.watchdog_interval_s
        status_every = max(1, int(30 / interval)) if interval else 0
        ticks = 0
        while interval is not None:  # cancelled at the very end of the shutdown
            ok, stalled = self.alive()
            if ok:
                self._notifier.watchdog()
                self._withheld = False
            elif not self._withheld:
                log.error("watchdog_withheld", stalled=stalled)
                self._withheld = True
            if ticks % status_every == 0:
                self._notifier.status(self._status())
            ticks += 1
            await asyncio.sleep(interval)
