"""Account leases: several ``syncd run`` replicas on one database share the accounts, one holder each.

A lease is a row in ``account_leases`` (account, holder, holder_session, expires_at).

Liveness is what Postgres knows about the holder's session. Each replica keeps one
dedicated connection for its leases and holds, on it, a session-level advisory lock
with a fresh key (``replica_session_open``); every lease it takes or renews records
that key. Postgres drops the lock the moment the session ends, and a killed process's
session ends as soon as the kernel closes its socket. So a lease is **free** when there
is none, when it lapsed (``expires_at <= now()``), or when its holder's lock is gone:
a restarted daemon or a surviving replica takes a dead holder's accounts at once,
without waiting for the time-based expiry. The expiry (``ttl = 3 x heartbeat_s``)
remains for what Postgres cannot see: a partition, where the old session still looks
alive; then the lease is taken only once it lapsed.

Every ``heartbeat_s`` each replica, in one transaction:

1. registers or renews its row in ``replicas`` (with its session lock key; a name held by
   another live session is refused: ``InstanceInUse``) and counts the live replicas ``N``
   (unexpired and their session not gone);
2. drops leases on accounts that were paused or are no longer configured;
3. renews its unexpired leases (``expires_at = now() + ttl``);
4. balances: its fair share is ``ceil(active accounts / N)``; above it, it gives back
   leases on accounts that are not mid-pass; below it, it takes free ones
   (``INSERT ... ON CONFLICT DO UPDATE ... WHERE <still free>``, re-checked on the latest
   row against the lock manager: when two race for one account exactly one wins).

Between heartbeats a read-only probe (``lease_probe``, every ``PROBE_S``) looks for a
change: another replica gone or new, or free accounts while below the fair share; then
the heartbeat runs at once. A dead replica's accounts are therefore taken within about
``PROBE_S`` plus one heartbeat; the listeners hear of them at once (the supervisor runs
a pass for them without waiting for its interval). A clean shutdown deletes the replica's
leases at once.

Safety: a replica trusts a lease only while its lease connection is up (when it breaks,
or a heartbeat on it fails, every lease is dropped locally before the connection is
closed: Postgres then frees them for others) and until ``t0 + ttl - margin`` on its own
monotonic clock, where ``t0`` is taken *before* the renewing statement is sent; the
database's expiry (``now() + ttl`` at the statement) is never earlier. An account pass
in flight on a dropped or lapsed lease is cancelled (its transaction rolls back).
Clocks of different hosts are never compared: every expiry is the database's ``now()``.

Poolers: the lease connection's advisory lock must live exactly as long as this
process's connection, so it needs a direct connection or a session-mode pooler (a
transaction-mode pgbouncer moves the lock between clients: do not use one here).

Scaling: a heartbeat is four set-based statements whatever the number of accounts
(arrays of ids, no round trip per account), the probe one read; with thousands of
accounts and N replicas each holds about ``accounts / N``; the tradeCycle outbox is
additionally claimed with ``FOR UPDATE SKIP LOCKED`` so no request is placed twice even
across a lease hand-over.
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
from syncd.errors import DB_ERRORS, describe

log = structlog.get_logger(__name__)

LeaseListener = Callable[[frozenset[int], frozenset[int]], None]  # (acquired, lost)


PROBE_S = 1.0  # between heartbeats: how often to look for a dead replica's (or free) accounts
SESSION_OPEN_TRIES = 5


class LeaseLost(Exception):
    """This replica's lease on the account lapsed or was handed over while a pass was running."""


class InstanceInUse(Exception):
    """Another live session (another process) is registered under this replica's instance name."""


# A heartbeat that fails with these is retried by the lease loop; the daemon carries on.
HEARTBEAT_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, InstanceInUse)


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    live_replicas: int
    candidates: int
    share: int
    held: frozenset[int]
    acquired: frozenset[int]
    released: frozenset[int]
    lost: frozenset[int]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    live_replicas: int
    candidates: int
    free: int


def _few(ids: Collection[int], limit: int = 20) -> dict[str, Any]:
    """A bounded view of a set of account ids for a log line (thousands of accounts stay one short line)."""
    return {"count": len(ids), "ids": sorted(ids)[:limit]}


def fair_share(candidates: int, live_replicas: int) -> int:
    """At most ``ceil(candidates / live_replicas)`` accounts per replica."""
    return math.ceil(candidates / max(1, live_replicas)) if candidates else 0


def needs_heartbeat(probe: ProbeResult, *, held: int, live_replicas: int) -> bool:
    """After a probe: rebalance now? (a replica came or went, or there is free work below our share)."""
    if probe.live_replicas != live_replicas:
        return True
    share = fair_share(probe.candidates, probe.live_replicas)
    return held > share or (probe.free > 0 and held < share)


def _keeps_connection(exc: BaseException) -> bool:
    """The server answered (an SQL error, a refused name): the lease connection is still sound."""
    return isinstance(exc, (asyncpg.PostgresError, InstanceInUse))


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
        probe_s: float = PROBE_S,
    ) -> None:
        self._pool = pool
        self._connect = connect
        self._conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any] | None = None
        self._session: int | None = None
        self._queries = queries
        self.instance = instance
        self._ids = sorted(set(account_ids))
        self.heartbeat_s = heartbeat_s
        self.probe_s = min(probe_s, heartbeat_s)
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
        self.health_url: str | None = None  # the listener's bound address, kept in replicas.health_url

    # --- what the supervisor asks --------------------------------------------------------

    def holds(self, account_id: int) -> bool:
        return account_id in self._held and self._clock() < self._valid_until

    def held(self) -> frozenset[int]:
        return self._held if self._clock() < self._valid_until else frozenset()

    @property
    def session(self) -> int | None:
        """The advisory-lock key of the current lease connection (None while there is none)."""
        return self._session

    def lost_event(self, account_id: int) -> asyncio.Event:
        """Set when this replica stops holding ``account_id`` (cleared when it is acquired again)."""
        event = self._lost_events.get(account_id)
        if event is None:
            event = self._lost_events[account_id] = asyncio.Event()
            if not self.holds(account_id):
                event.set()
        return event

    def add_listener(self, listener: LeaseListener) -> None:
        """``listener(acquired, lost)`` after every change (streams and task loops follow the leases)."""
        self._listeners.append(listener)

    # --- the heartbeat ------------------------------------------------------------------

    async def heartbeat(self) -> HeartbeatResult:
        """One renewal and rebalancing round, in one transaction."""
        t0 = self._clock()
        ttl = float(self.ttl_s)
        q = self._queries
        async with (
            asyncio.timeout(max(self.heartbeat_s, 2.0)),
            self._connection() as (conn, session),
            conn.transaction(),
        ):
            me = await conn.fetchrow(q["replica_heartbeat"], self.instance, ttl, session, self.health_url)
            assert me is not None
            if not me["registered"]:
                self._drop_all("instance name in use by another live session")
                raise InstanceInUse(
                    f"instance {self.instance!r} is registered by another live syncd session; "
                    "give each replica its own health.instance"
                )
            live = int(me["live"])
            await conn.execute(q["lease_release_unwanted"], self.instance, self._ids)
            rows = await conn.fetch(q["lease_renew"], self.instance, ttl, self._ids, session)
            renewed = {r["account_id"] for r in rows}
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
                rows = await conn.fetch(
                    q["lease_acquire"], self.instance, self._ids, share - len(renewed), ttl, session
                )
                acquired = {r["account_id"] for r in rows}
        held = frozenset((renewed - released) | acquired)
        previous = self.held()
        self.live_replicas = live
        self._set_held(held, t0 + ttl - self._margin_s)
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

    async def probe(self) -> ProbeResult:
        """One read between heartbeats: live replicas, candidate accounts, free ones."""
        async with asyncio.timeout(max(self.probe_s, 2.0)), self._connection() as (conn, _session):
            row = await conn.fetchrow(self._queries["lease_probe"], self.instance, self._ids)
        assert row is not None
        return ProbeResult(int(row["live"]), int(row["candidates"]), int(row["free"]))

    async def run(self, stop: asyncio.Event, *, on_error: Callable[[BaseException], None] | None = None) -> None:
        """Heartbeat every ``heartbeat_s`` (at once when a probe sees a change; every ``probe_s``
        while the lease connection is down, to be back within a second of the database) until
        ``stop``; then give every lease back. Failures are logged at most once per heartbeat."""
        next_beat = self._clock()
        quiet_until = 0.0
        while not stop.is_set():
            try:
                if self._clock() >= next_beat or self._conn is None or await self._probe_says_beat():
                    next_beat = self._clock() + self.heartbeat_s
                    await self.heartbeat()
                quiet_until = 0.0
            except HEARTBEAT_ERRORS as exc:
                if self._clock() >= quiet_until:
                    event = "lease_instance_in_use" if isinstance(exc, InstanceInUse) else "lease_heartbeat_failed"
                    log.warning(event, error=describe(exc), valid_for_s=self._remaining())
                    quiet_until = self._clock() + self.heartbeat_s
                if on_error is not None:
                    on_error(exc)
            wait = min(self.probe_s, max(0.0, next_beat - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        await self.release_all()

    async def _probe_says_beat(self) -> bool:
        found = await self.probe()
        return needs_heartbeat(found, held=len(self.held()), live_replicas=self.live_replicas)

    @contextlib.asynccontextmanager
    async def _connection(
        self,
    ) -> AsyncIterator[tuple[asyncpg.Connection[Any] | PoolConnectionProxy[Any], int]]:
        """The lease connection and its session lock key.

        Dedicated (``connect``) or, without ``connect``, one taken from the pool and kept: a
        busy pool must not starve the heartbeat, and the session lock lives with it. When
        it fails (not merely an SQL error), every lease is dropped locally *before* it is
        closed, and the next round opens a new one with a new key.
        """
        if self._conn is None or self._conn.is_closed():
            await self._open()
        conn, session = self._conn, self._session
        assert conn is not None and session is not None
        try:
            yield conn, session
        except BaseException as exc:
            if not _keeps_connection(exc) or conn.is_closed():
                self._discard(conn, "lease connection failed")
            raise

    async def _open(self) -> None:
        self._conn, self._session = None, None
        conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any]
        conn = await self._connect() if self._connect is not None else await self._pool.acquire()
        try:
            for _ in range(SESSION_OPEN_TRIES):
                session = await conn.fetchval(self._queries["replica_session_open"])
                if session is not None:
                    break
            else:
                raise InstanceInUse("no free session lock key (another application uses lock class 'leas'?)")
        except BaseException:
            self._terminate(conn)
            raise
        conn.add_termination_listener(self._on_terminated)
        self._conn, self._session = conn, int(session)

    def _on_terminated(self, conn: Any) -> None:
        """The lease connection closed under us (server gone, killed, network): its leases are no longer ours."""
        current = self._conn
        if current is None or conn not in (current, getattr(current, "_con", None)):
            return  # an earlier connection, already discarded
        self._conn, self._session = None, None
        self._drop_all("lease connection closed")

    def _discard(self, conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any], reason: str) -> None:
        self._drop_all(reason)
        if conn is self._conn:
            self._conn, self._session = None, None
        self._terminate(conn)

    def _terminate(self, conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> None:
        if isinstance(conn, PoolConnectionProxy):
            self._spawn_release(conn)
        else:
            conn.terminate()

    def _spawn_release(self, conn: PoolConnectionProxy[Any]) -> None:
        with contextlib.suppress(Exception):
            conn.terminate()
        task = asyncio.get_running_loop().create_task(self._pool.release(conn))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        conn, self._conn, self._session = self._conn, None, None
        if conn is None:
            return
        with contextlib.suppress(*DB_ERRORS):
            if isinstance(conn, PoolConnectionProxy):
                conn.terminate()  # the session lock goes with it; the pool opens a fresh one
                await asyncio.wait_for(self._pool.release(conn), 2.0)
            else:
                await asyncio.wait_for(conn.close(), 2.0)

    async def release_all(self) -> None:
        """Give every lease back and deregister (a clean shutdown); never raises."""
        previous = self._held
        self._set_held(frozenset(), 0.0)
        try:
            async with asyncio.timeout(5.0):
                await self._pool.execute(self._queries["replica_remove"], self.instance)
        except DB_ERRORS as exc:
            log.warning("lease_release_failed", error=describe(exc))
        else:
            if previous:
                log.info("leases_released", count=len(previous))
        await self.close()

    # --- internals ----------------------------------------------------------------------

    def _remaining(self) -> float:
        return round(max(0.0, self._valid_until - self._clock()), 1)

    def _drop_all(self, reason: str) -> None:
        """Stop using every lease now (the session that vouched for them is gone or going)."""
        dropped = self.held()
        self._set_held(frozenset(), 0.0)
        if dropped:
            log.warning("leases_dropped", count=len(dropped), reason=reason)

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
