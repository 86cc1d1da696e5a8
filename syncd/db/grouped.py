"""One statement for many callers at once: what concurrent passes ask of Postgres, asked together.

An idle accountSync pass asks one small statement per account (is the stored state still the one
the broker's answer was found to match; then mark the account synced). Sent one by one, each costs
a round trip, a transaction and a commit -- most of Postgres's CPU in an idle pass, and a third of
syncd's. :class:`GroupedQuery` sends them in groups (a *group commit*):

- a caller whose statement finds none running sends it at once, alone: nothing waits for a timer;
- callers that arrive while a statement runs are queued, and the next statement carries all of
  them, each caller's arguments one element of the statement's arrays;
- one statement runs at a time per query and pool, so the groups grow exactly as much as the
  callers outpace Postgres.

A statement over several callers that Postgres refuses is run again for each caller alone, so one
caller's error (a constraint, a deadlock with another replica's group) is that caller's, and the
others get their rows; a failure to reach Postgres at all (down, the pool closed, a timeout) is
every caller's at once. The statement takes, as ``$1 .. $k``, one array per argument of a call, then the
shared arguments, and returns one row per element, its ``ord`` column the element's position
(1-based, as ``unnest ... WITH ORDINALITY`` numbers them).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)


class GroupedQuery:
    """``fetchrow(*args)`` of one statement, run for every waiting caller at once (see the module)."""

    def __init__(self, pool: asyncpg.Pool[Any], query: str, shared: Sequence[Any] = ()) -> None:
        self.pool = pool
        self.query = query
        self.shared = tuple(shared)
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[asyncpg.Record]]] = []
        self._worker: asyncio.Task[None] | None = None
        self.statements = 0  # statements sent (a group of any size counts one)
        self.calls = 0  # callers answered

    async def fetchrow(self, *args: Any) -> asyncpg.Record:
        """The statement's row for ``args``, sent with whatever other callers wait now."""
        future: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
        self._queue.append((args, future))
        if self._worker is None:
            # The worker belongs to no caller: a context of its own (no caller's log bindings).
            self._worker = asyncio.get_running_loop().create_task(self._run(), context=contextvars.Context())
        return await future

    async def _run(self) -> None:
        group: list[tuple[tuple[Any, ...], asyncio.Future[asyncpg.Record]]] = []
        try:
            while self._queue:
                group = [(args, f) for args, f in self._queue if not f.done()]  # a caller cancelled: left out
                self._queue = []
                if group:
                    await self._send(group)
                group = []
        except BaseException as exc:
            # cancelled (shut down) or a bug: nobody who waits is left waiting
            for _, f in [*group, *self._queue]:
                if f.done():
                    continue
                if isinstance(exc, Exception):
                    f.set_exception(exc)
                else:
                    f.cancel()
            self._queue = []
            raise
        finally:
            self._worker = None

    async def _send(self, group: list[tuple[tuple[Any, ...], asyncio.Future[asyncpg.Record]]]) -> None:
        try:
            rows = await self._statement([args for args, _ in group])
        except Exception as exc:  # noqa: BLE001 -- whatever it is, every caller gets an outcome
            if len(group) == 1 or not isinstance(exc, asyncpg.PostgresError):
                # One caller; or no answer from Postgres at all (it is down, the pool is closed, a
                # timeout): sent again caller by caller it would fail once per caller, one after
                # the other, each as slowly. Every caller gets this error at once.
                for _, f in group:
                    _settle(f, exc)
                return
            # Postgres refused the statement for what one caller asked (a constraint, a deadlock
            # with another replica's group): sent again caller by caller, the error is its own.
            log.warning("grouped_statement_split", size=len(group), error=f"{type(exc).__name__}: {exc}")
            for one in group:  # each caller's own outcome
                await self._send([one])
            return
        for (_, f), row in zip(group, rows, strict=True):
            _settle(f, row)

    async def _statement(self, calls: Sequence[tuple[Any, ...]]) -> list[asyncpg.Record]:
        columns = [list(column) for column in zip(*calls, strict=True)]
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self.query, *columns, *self.shared)
        self.statements += 1
        self.calls += len(calls)
        if [r["ord"] for r in rows] != list(range(1, len(calls) + 1)):
            raise RuntimeError(f"grouped statement: {len(rows)} rows for {len(calls)} callers, not one each in order")
        return rows


def _settle(future: asyncio.Future[asyncpg.Record], outcome: asyncpg.Record | BaseException) -> None:
    if future.done():
        return  # its caller was cancelled meanwhile
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
