"""Account leases: several ``syncd run`` replicas on one database share the accounts, one holder each.

A lease is a row in ``account_leases`` (account, holder, expires_at). Every
``heartbeat_s`` each replica, in one transaction:

1. renews its row in ``replicas`` and counts the live replicas ``N``;
2. drops leases on accounts that were paused or are no longer configured;
3. renews its unexpired leases (``expires_at = now() + ttl``, ``ttl = 3 x heartbeat_s``);
4. balances: its fair share is ``ceil(active accounts / N)``; above it, it gives back
   leases on accounts that are not mid-pass; below it, it takes free or lapsed ones
   (``INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= now()``: when two race
   for one account exactly one wins).

Bounds: a replica that dies stops renewing, so its leases lapse at most ``ttl``
(3 heartbeats) after its last renewal, and another replica takes them at its next
heartbeat: an orphaned account waits at most ``4 x heartbeat_s``. A clean shutdown
deletes the replica's leases at once.

Safety: a replica trusts a lease only until ``t0 + ttl - margin`` on its own monotonic
clock, where ``t0`` is taken *before* the renewing statement is sent; the database's
expiry (``now() + ttl`` at the statement) is never earlier, so whenever another
replica may take the lease over, this one has already stopped using it. When the
heartbeat cannot reach the database the leases therefore lapse locally too: an
account pass in flight on a lapsed lease is cancelled (its transaction rolls back).
Clocks of different hosts are never compared: every expiry is the database's
``now()``.

Scaling: a heartbeat is four set-based statements whatever the number of accounts
(arrays of ids, no round trip per account); with thousands of accounts and N
replicas each holds about ``accounts / N``; the tradeCycle outbox is additionally
claimed with ``FOR UPDATE SKIP LOCKED`` so no request is placed twice even across a
lease hand-over.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from syncd.db import Queries
from syncd.errors import describe

log = structlog.get_logger(__name__)

LeaseListener = Callable[[frozenset[int], frozenset[int]], None]  # (acquired, lost)


class LeaseLost(Exception):
    """This replica's lease on the account lapsed or was handed over while a pass was running."""


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    live_replicas: int
    candidates: int
    share: int
    held: frozenset[int]
    acquired: frozenset[int]
    released: frozenset[int]
    lost: frozenset[int]


def _few(ids: Collection[int], limit: int = 20) -> dict[str, Any]:
    """A bounded view of a set of account ids for a log line (thousands of accounts stay one short line)."""
    return {"count": len(ids), "ids": sorted(ids)[:limit]}


def fair_share(candidates: int, live_replicas: int) -> int:
    """At most ``ceil(candidates / live_replicas)`` accounts per replica."""
    return math.ceil(candidates / max(1, live_replicas)) if candidates else 0


class LeaseManager:
    """This replica's leases; ``run`` keeps them renewed and balanced until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        queries: Queries,
        *,
        instance: str,
        account_ids: Iterable[int],
        heartbeat_s: float,
        busy: Callable[[], Collection[int]] = frozenset,
        clock: Callable[[], float] = time.monotonic,
        connect: Callable[[], Awaitable[asyncpg.Connection[Any]]] | None = None,
    ) -> None:
        self._pool = pool
        self._connect = connect
        self._conn: asyncpg.Connection[Any] | None = None
        self._queries = queries
        self.instance = instance
        self._ids = sorted(set(account_ids))
        self.heartbeat_s = heartbeat_s
        self.ttl_s = 3 * heartbeat_s
        self._margin_s = min(1.0, heartbeat_s / 4)
        self._busy = busy
        self._clock = clock
        self._held: frozenset[int] = frozenset()
        self._valid_until = 0.0
        self._lost_events: dict[int, asyncio.Event] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._listeners: list[LeaseListener] = []
        self.live_replicas = 0

    # --- what the supervisor asks --------------------------------------------------------

    def holds(self, account_id: int) -> bool:
        return account_id in self._held and self._clock() < self._valid_until

    def held(self) -> frozenset[int]:
        return self._held if self._clock() < self._valid_until else frozenset()

    def lost_event(self, account_id: int) -> asyncio.Event:
        """Set when this replica stops holding ``account_id`` (cleared when it is acquired again)."""
        event = self._lost_events.get(account_id)
        if event is None:
            event = self._lost_events[account_id] = asyncio.Event()
            if not self.holds(account_id):
                event.set()
        return event

    def add_listener(self, listener: LeaseListener) -> None:
        """``listener(acquired, lost)`` after every change (streams follow the leases)."""
        self._listeners.append(listener)

    # --- the heartbeat ------------------------------------------------------------------

    async def heartbeat(self) -> HeartbeatResult:
        """One renewal and rebalancing round, in one transaction."""
        t0 = self._clock()
        ttl = float(self.ttl_s)
        q = self._queries
        async with asyncio.timeout(max(self.heartbeat_s, 2.0)), self._connection() as conn, conn.transaction():
            live = int(await conn.fetchval(q["replica_heartbeat"], self.instance, ttl))
            await conn.execute(q["lease_release_unwanted"], self.instance, self._ids)
            renewed = {r["account_id"] for r in await conn.fetch(q["lease_renew"], self.instance, ttl, self._ids)}
            candidates = int(await conn.fetchval(q["lease_count_candidates"], self._ids))
            share = fair_share(candidates, live)
            released: set[int] = set()
            acquired: set[int] = set()
            if len(renewed) > share:
                busy = set(self._busy())
                idle_first = sorted(renewed, key=lambda i: (i in busy, -i))
                released = {i for i in idle_first[: len(renewed) - share] if i not in busy}
                if released:
                    await conn.execute(q["lease_release"], self.instance, sorted(released))
            elif len(renewed) < share:
                rows = await conn.fetch(q["lease_acquire"], self.instance, self._ids, share - len(renewed), ttl)
                acquired = {r["account_id"] for r in rows}
        held = frozenset((renewed - released) | acquired)
        previous = self.held()
        self._set_held(held, t0 + ttl - self._margin_s)
        self.live_replicas = live
        lost = previous - held
        result = HeartbeatResult(
            live, candidates, share, held, frozenset(held - previous), frozenset(released), frozenset(lost)
        )
        if result.acquired or result.lost:
            log.info(
                "leases_changed",
                held=len(held),
                share=share,
                replicas=live,
                acquired=_few(result.acquired),
                released=_few(released),
                lost=_few(lost - released),
            )
        return result

    async def run(self, stop: asyncio.Event, *, on_error: Callable[[BaseException], None] | None = None) -> None:
        """Heartbeat every ``heartbeat_s`` until ``stop``; then give every lease back."""
        while not stop.is_set():
            try:
                await self.heartbeat()
            except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
                log.warning("lease_heartbeat_failed", error=describe(exc), valid_for_s=self._remaining())
                if on_error is not None:
                    on_error(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_s)
        await self.release_all()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection[Any] | PoolConnectionProxy[Any]]:
        """The heartbeat's connection: a dedicated one when ``connect`` was given (a busy pool must
        not starve the heartbeat, or leases would lapse under load), else one from the pool."""
        if self._connect is None:
            async with self._pool.acquire() as pooled:
                yield pooled
            return
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        conn = self._conn
        try:
            yield conn
        except BaseException:
            self._conn = None  # a failed heartbeat: start afresh next time
            conn.terminate()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(OSError, asyncpg.InterfaceError, asyncpg.PostgresError, TimeoutError):
                await asyncio.wait_for(conn.close(), 2.0)

    async def release_all(self) -> None:
        """Give every lease back and deregister (a clean shutdown); never raises."""
        previous = self._held
        self._set_held(frozenset(), 0.0)
        try:
            async with asyncio.timeout(5.0):
                await self._pool.execute(self._queries["replica_remove"], self.instance)
        except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
            log.warning("lease_release_failed", error=describe(exc))
        else:
            if previous:
                log.info("leases_released", count=len(previous))
        await self.close()

    # --- internals ----------------------------------------------------------------------

    def _remaining(self) -> float:
        return round(max(0.0, self._valid_until - self._clock()), 1)

    def _set_held(self, held: frozenset[int], valid_until: float) -> None:
        before = self._held if self._clock() < self._valid_until else frozenset()
        self._held, self._valid_until = held, valid_until
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if held and valid_until > self._clock():
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_later(valid_until - self._clock(), self._lapse)
        self._announce(frozenset(held - before), frozenset(before - held))

    def _lapse(self) -> None:
        """The leases were not renewed in time: stop using every one of them now."""
        self._expiry = None
        if self._held and self._clock() >= self._valid_until:
            lapsed = self._held
            self._held = frozenset()
            log.warning("leases_lapsed", count=len(lapsed), reason="heartbeat could not renew them in time")
            self._announce(frozenset(), lapsed)

    def _announce(self, acquired: frozenset[int], lost: frozenset[int]) -> None:
        for account_id in acquired:
            if account_id in self._lost_events:
                self._lost_events[account_id].clear()
        for account_id in lost:
            self._lost_events.setdefault(account_id, asyncio.Event()).set()
        if acquired or lost:
            for listener in self._listeners:
                listener(acquired, lost)
