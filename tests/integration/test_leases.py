"""Account leases on a real Postgres: balancing, take-over after a replica dies, no account held twice.

Liveness is the holder's database session (its advisory lock): a lease whose holder's
session is gone is free at once; one whose holder is alive is taken only after it lapsed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest_asyncio

from syncd.db import connect, create_pool, load_queries
from syncd.leases import InstanceInUse, LeaseManager, ProbeResult, needs_heartbeat
from syncd.settings import DatabaseSettings
from tests.helpers import wait_for

MADE: list[LeaseManager] = []
DSN: list[str] = []


@pytest_asyncio.fixture(loop_scope="function")
async def db_pool(dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool on this test's database, on the test's own event loop; every manager made is closed after."""
    pool = await create_pool(DatabaseSettings(dsn=dsn))
    DSN[:] = [dsn]
    yield pool
    while MADE:
        await MADE.pop().close()
    await pool.close()


async def _accounts(pool: asyncpg.Pool[Any], n: int) -> list[int]:
    rows = await pool.fetch(
        "INSERT INTO accounts (name, broker) SELECT 'acct-' || g, 'alpaca' FROM generate_series(1, $1) g RETURNING id",
        n,
    )
    return sorted(r["id"] for r in rows)


def _manager(
    pool: asyncpg.Pool[Any], instance: str, ids: list[int], heartbeat_s: float = 0.5, **kw: Any
) -> LeaseManager:
    """A manager with its own dedicated lease connection (as ``syncd run`` makes them)."""
    dsn = DSN[0]
    m = LeaseManager(
        pool,
        load_queries(),
        instance=instance,
        account_ids=ids,
        heartbeat_s=heartbeat_s,
        connect=lambda: connect(DatabaseSettings(dsn=dsn)),  # noqa: B023
        **kw,
    )
    MADE.append(m)
    return m


async def _db_holders(pool: asyncpg.Pool[Any]) -> dict[int, str]:
    rows = await pool.fetch("SELECT account_id, holder FROM account_leases WHERE expires_at > now()")
    return {r["account_id"]: r["holder"] for r in rows}


def _disjoint(*managers: LeaseManager) -> None:
    seen: set[int] = set()
    for m in managers:
        held = m.held()
        assert not (held & seen), f"account held twice: {sorted(held & seen)}"
        seen |= held


async def test_first_replica_takes_everything_then_shares_with_a_second(db_pool: asyncpg.Pool[Any]) -> None:
    ids = await _accounts(db_pool, 4)
    m1, m2 = _manager(db_pool, "r1", ids), _manager(db_pool, "r2", ids)
    first = await m1.heartbeat()
    assert first.held == frozenset(ids)
    assert first.live_replicas == 1
    second = await m2.heartbeat()
    assert second.live_replicas == 2 and second.share == 2
    assert second.held == frozenset()  # nothing free yet
    shed = await m1.heartbeat()
    assert len(shed.released) == 2 and len(shed.held) == 2
    taken = await m2.heartbeat()
    assert len(taken.acquired) == 2
    _disjoint(m1, m2)
    assert m1.held() | m2.held() == frozenset(ids)
    assert await _db_holders(db_pool) == {i: ("r1" if i in m1.held() else "r2") for i in ids}


async def test_a_dead_replica_loses_its_leases_within_three_heartbeats(db_pool: asyncpg.Pool[Any]) -> None:
    ids = await _accounts(db_pool, 3)
    heartbeat = 0.5
    m1, m2 = _manager(db_pool, "r1", ids, heartbeat), _manager(db_pool, "r2", ids, heartbeat)
    await m1.heartbeat()
    await m2.heartbeat()
    await m1.heartbeat()
    await m2.heartbeat()
    assert m1.held() and m2.held()
    died_at = time.monotonic()  # m1 stops heartbeating: it "dies"

    async def m2_has_all() -> bool:
        await m2.heartbeat()
        _disjoint(m1, m2)  # m1's local validity ends before the database lets m2 take over
        return m2.held() == frozenset(ids)

    await wait_for(m2_has_all, timeout=10, interval=0.1, what="r2 takes over r1's accounts")
    took = time.monotonic() - died_at
    assert m1.held() == frozenset()
    assert took <= 4 * heartbeat + 1.0, f"take-over took {took:.1f}s"


async def test_lapsed_leases_fire_lost_events(db_pool: asyncpg.Pool[Any]) -> None:
    ids = await _accounts(db_pool, 1)
    m1 = _manager(db_pool, "r1", ids, heartbeat_s=0.5)
    lost: list[frozenset[int]] = []
    m1.add_listener(lambda acquired, gone: lost.append(gone) if gone else None)
    await m1.heartbeat()
    event = m1.lost_event(ids[0])
    assert not event.is_set()
    await asyncio.wait_for(event.wait(), timeout=5)  # no heartbeat: it lapses locally
    assert lost == [frozenset(ids)]
    assert not m1.holds(ids[0])
    await m1.heartbeat()  # the row is still ours and unexpired? either way it is renewed or re-taken
    assert m1.holds(ids[0])
    assert not event.is_set()


async def test_paused_accounts_are_released_and_not_taken(db_pool: asyncpg.Pool[Any]) -> None:
    ids = await _accounts(db_pool, 2)
    m1 = _manager(db_pool, "r1", ids)
    await m1.heartbeat()
    await db_pool.execute("UPDATE accounts SET active = false WHERE id = $1", ids[0])
    result = await m1.heartbeat()
    assert result.held == frozenset({ids[1]})
    assert ids[0] in result.lost
    assert ids[0] not in await _db_holders(db_pool)


async def test_release_all_hands_over_at_once(db_pool: asyncpg.Pool[Any]) -> None:
    ids = await _accounts(db_pool, 2)
    m1, m2 = _manager(db_pool, "r1", ids, 30), _manager(db_pool, "r2", ids, 30)
    await m1.heartbeat()
    await m1.release_all()
    assert m1.held() == frozenset()
    assert (await m2.heartbeat()).held == frozenset(ids)
    assert await db_pool.fetchval("SELECT count(*) FROM replicas WHERE instance = 'r1'") == 0


async def test_busy_accounts_are_given_back_last(db_pool: asyncpg.Pool[Any]) -> None:
    ids = await _accounts(db_pool, 2)
    busy: set[int] = set(ids)
    m1 = _manager(db_pool, "r1", ids, 5, busy=lambda: busy)
    m2 = _manager(db_pool, "r2", ids, 5)
    await m1.heartbeat()
    await m2.heartbeat()
    assert (await m1.heartbeat()).released == frozenset()  # both mid-pass: keep them for now
    busy.discard(ids[1])
    assert (await m1.heartbeat()).released == frozenset({ids[1]})


async def test_many_replicas_racing_never_share_an_account_and_balance(db_pool: asyncpg.Pool[Any]) -> None:
    ids = await _accounts(db_pool, 10)
    managers = [_manager(db_pool, f"r{i}", ids, 5) for i in range(5)]
    for _ in range(6):
        await asyncio.gather(*(m.heartbeat() for m in managers))
        _disjoint(*managers)
        holders = await _db_holders(db_pool)
        assert len(holders) == len(set(holders))
    assert frozenset().union(*(m.held() for m in managers)) == frozenset(ids)
    assert max(len(m.held()) for m in managers) <= 2
