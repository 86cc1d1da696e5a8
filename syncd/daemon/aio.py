"""Two asyncio helpers the daemon's parts share: a sleep that ``stop`` cuts short, and no silent task death."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from syncd.errors import describe

log = structlog.get_logger("syncd.daemon.supervisor")  # the events' logger name is unchanged


async def stoppable_sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop``; True when stopped."""
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


def log_unretrieved(task: asyncio.Task[Any]) -> None:
    """Done-callback: no exception of a background task goes unseen."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background_task_crashed", name=task.get_name(), error=describe(exc), exc_info=exc)
