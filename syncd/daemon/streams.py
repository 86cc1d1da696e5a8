"""Trade-update streams follow the leases: one consumer per held account whose broker can stream.

``Streams.follow(acquired, lost)`` starts a consumer for each newly held account and stops
(then reaps, within ``STREAM_STOP_TIMEOUT_S``) the consumer of each account given up;
``stop_all()`` stops every one at shutdown. A consumer reconnects by itself and returns when
the account cannot stream (then the tradeCycle's polling is all there is); one that raises
(a bug) is logged and restarted with ``restart_backoff``. A stream's failure never touches
the task loops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import structlog

from syncd.context import Account, Context
from syncd.daemon.aio import log_unretrieved, stoppable_sleep
from syncd.errors import describe

log = structlog.get_logger("syncd.daemon.supervisor")  # the events' logger name is unchanged

STREAM_STOP_TIMEOUT_S = 5.0

StreamFn = Callable[[Context, Account, asyncio.Event], Coroutine[Any, Any, None]]
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class Streams:
    """The running consumers, by account id. ``spawn`` runs the reapers (the owner cancels them last)."""

    def __init__(
        self,
        ctx: Context,
        stream: StreamFn,
        *,
        restart_backoff: Callable[[int], float],
        spawn: Spawn,
        accounts: Iterable[Account] | None = None,
        can_stream: Callable[[Account], bool] | None = None,
        kind: str = "stream",
    ) -> None:
        self.ctx = ctx
        self._stream = stream
        self._restart_backoff = restart_backoff
        self._spawn = spawn
        self._by_id = {a.id: a for a in (accounts if accounts is not None else ctx.accounts.values())}
        self._running: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        # which accounts get a consumer (default: a broker with a trade stream); ``kind`` names the tasks
        self._can_stream = can_stream or (lambda a: a.broker.supports_stream)
        self._kind = kind

    def running(self) -> frozenset[int]:
        return frozenset(self._running)

    def follow(self, acquired: frozenset[int], lost: frozenset[int]) -> None:
        """Stop the streams of ``lost`` accounts; start one for each ``acquired`` account that can stream."""
        for account_id in lost:
            self._stop(account_id)
        for account_id in acquired:
            account = self._by_id.get(account_id)
            if account is not None and self._can_stream(account) and account_id not in self._running:
                stop = asyncio.Event()
                task = asyncio.create_task(self._loop(account, stop), name=f"{self._kind}:{account.name}")
                task.add_done_callback(log_unretrieved)
                self._running[account_id] = (task, stop)

    async def _loop(self, account: Account, stop: asyncio.Event) -> None:
        """Consume the account's trade updates until told to stop (restart with backoff if it raises)."""
        failures = 0
        with structlog.contextvars.bound_contextvars(task=self._kind, account=account.name):
            while not stop.is_set():
                try:
                    await self._stream(self.ctx, account, stop)
                except Exception as exc:  # a stream's failure must not touch the tasks
                    failures += 1
                    log.error("stream_crashed", error=describe(exc), consecutive_failures=failures, exc_info=exc)
                else:
                    return
                if await stoppable_sleep(stop, self._restart_backoff(failures)):
                    return

    def _stop(self, account_id: int) -> None:
        entry = self._running.pop(account_id, None)
        if entry is None:
            return
        task, stop = entry
        stop.set()
        self._spawn(self._reap(task), f"reap:{task.get_name()}")

    @staticmethod
    async def _reap(task: asyncio.Task[None]) -> None:
        _done, pending = await asyncio.wait({task}, timeout=STREAM_STOP_TIMEOUT_S)
        for t in pending:
            t.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stop_all(self) -> None:
        """Stop every stream, waiting up to ``STREAM_STOP_TIMEOUT_S`` before cancelling the stragglers."""
        entries = list(self._running.values())
        self._running.clear()
        for _task, stop in entries:
            stop.set()
        tasks = [t for t, _ in entries]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=STREAM_STOP_TIMEOUT_S)
            for t in pending:
                log.warning("stream_cancelled", name=t.get_name())
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("streams_stopped", count=len(tasks))
