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
import pytest
import pytest_asyncio

from syncd.daemon.leases import InstanceInUse, LeaseManager
from syncd.db import connect, create_pool, load_queries
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
        connect=lambda: connect(DatabaseSettings(dsn=dsn)),
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


# --- liveness: the holder's database session --------------------------------------------------


async def _end_session(pool: asyncpg.Pool[Any], instance: str) -> None:
    """End the replica's lease session from the server side (what the kernel does for a SIGKILLed process)."""
    pid = await pool.fetchval("SELECT backend_pid FROM replicas WHERE instance = $1", instance)
    assert pid is not None
    assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
    await wait_for(
        lambda: pool.fetchval("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", pid),
        timeout=5,
        what="the backend gone",
    )


async def test_a_lease_whose_holder_session_ended_is_free_at_once(db_pool: asyncpg.Pool[Any]) -> None:
    """Guards issue 10 item 4: a dead holder's leases were kept until their time expiry (30 s by default)."""
    ids = await _accounts(db_pool, 3)
    m1, m2 = _manager(db_pool, "r1", ids, 30), _manager(db_pool, "r2", ids, 30)
    assert (await m1.heartbeat()).held == frozenset(ids)
    assert (await m2.heartbeat()).held == frozenset()  # r1 is alive: nothing is free
    await _end_session(db_pool, "r1")
    rows = await db_pool.fetch("SELECT holder, holder_alive, valid FROM v_account_leases")
    assert {(r["holder"], r["holder_alive"], r["valid"]) for r in rows} == {("r1", False, False)}
    taken = await m2.heartbeat()  # long before the 90 s expiry
    assert taken.held == frozenset(ids) and taken.live_replicas == 1
    await wait_for(lambda: not m1.held(), timeout=5, what="r1 stops trusting its leases")
    assert await _db_holders(db_pool) == dict.fromkeys(ids, "r2")


async def test_a_live_holders_lease_is_not_taken_even_without_its_replica_row(db_pool: asyncpg.Pool[Any]) -> None:
    """The session lock decides, not the bookkeeping rows: a live holder keeps its leases until they lapse."""
    ids = await _accounts(db_pool, 2)
    m1, m2 = _manager(db_pool, "r1", ids, 30), _manager(db_pool, "r2", ids, 30)
    await m1.heartbeat()
    await db_pool.execute("DELETE FROM replicas WHERE instance = 'r1'")
    result = await m2.heartbeat()
    assert result.held == frozenset()
    assert (await m2.probe()).free == 0
    assert await _db_holders(db_pool) == dict.fromkeys(ids, "r1")
    assert m1.held() == frozenset(ids)


async def test_a_holder_postgres_still_sees_is_taken_only_after_its_lease_lapsed(db_pool: asyncpg.Pool[Any]) -> None:
    """A partition: the old session looks alive and is silent; the time lease decides, and the old holder's
    own clock has stopped it before the database lets another replica in."""
    ids = await _accounts(db_pool, 2)
    m1, m2 = _manager(db_pool, "r1", ids, 0.5), _manager(db_pool, "r2", ids, 0.5)
    await m1.heartbeat()
    assert (await m2.heartbeat()).held == frozenset()  # r1's session is alive

    async def m2_has_all() -> bool:
        await m2.heartbeat()
        _disjoint(m1, m2)
        return m2.held() == frozenset(ids)

    await wait_for(m2_has_all, timeout=10, interval=0.1, what="r2 takes r1's lapsed leases")
    assert m1.held() == frozenset()
    assert await db_pool.fetchval("SELECT bool_and(holder_alive) FROM v_account_leases")  # r2's session


async def test_the_holder_drops_its_leases_when_its_lease_connection_breaks(db_pool: asyncpg.Pool[Any]) -> None:
    """Its session vouched for the leases: once it is gone others may take them, so the holder stops at once;
    the next heartbeat opens a new session and renews what is still its own."""
    ids = await _accounts(db_pool, 1)
    m1 = _manager(db_pool, "r1", ids, 30)
    await m1.heartbeat()
    first_session = m1.session
    lost = m1.lost_event(ids[0])
    await _end_session(db_pool, "r1")
    await asyncio.wait_for(lost.wait(), timeout=5)
    assert m1.held() == frozenset()
    again = await m1.heartbeat()
    assert again.held == frozenset(ids) and not lost.is_set()
    assert m1.session is not None and m1.session != first_session
    assert await db_pool.fetchval("SELECT holder_session FROM account_leases") == m1.session


async def test_two_live_processes_never_share_an_instance_name(db_pool: asyncpg.Pool[Any]) -> None:
    """A second process under a live replica's name is refused (it would renew the other's leases); once the
    first one's session is gone, the name and its leases pass to the new process at once (a restart)."""
    ids = await _accounts(db_pool, 2)
    first, second = _manager(db_pool, "same", ids, 30), _manager(db_pool, "same", ids, 30)
    await first.heartbeat()
    with pytest.raises(InstanceInUse, match=r"'same' is registered by another live syncd session.*health\.instance"):
        await second.heartbeat()
    assert second.held() == frozenset()
    await _end_session(db_pool, "same")
    assert (await second.heartbeat()).held == frozenset(ids)
    assert await db_pool.fetchval("SELECT session_lock FROM replicas WHERE instance = 'same'") == second.session


async def test_run_takes_a_dead_replicas_accounts_before_its_next_heartbeat(db_pool: asyncpg.Pool[Any]) -> None:
    """The probe between heartbeats: with a 30 s heartbeat the survivor still takes over within a second or so."""
    ids = await _accounts(db_pool, 4)
    m1, m2 = _manager(db_pool, "r1", ids, 30), _manager(db_pool, "r2", ids, 30)
    await m1.heartbeat()
    await m2.heartbeat()
    await m1.heartbeat()
    mine = (await m2.heartbeat()).held
    assert len(mine) == 2
    acquired: list[frozenset[int]] = []
    m2.add_listener(lambda got, _lost: acquired.append(got) if got else None)
    stop = asyncio.Event()
    runner = asyncio.create_task(m2.run(stop))
    try:
        await _end_session(db_pool, "r1")
        await wait_for(lambda: m2.held() == frozenset(ids), timeout=5, what="r2 holds every account")
        assert frozenset().union(*acquired) == frozenset(ids) - mine  # the listeners heard of them
    finally:
        stop.set()
        await runner
    assert await _db_holders(db_pool) == {}  # run() gives them back when stopped


async def test_replicas_racing_for_a_dead_holders_accounts_never_share_one(db_pool: asyncpg.Pool[Any]) -> None:
    ids = await _accounts(db_pool, 10)
    dead = _manager(db_pool, "dead", ids, 30)
    await dead.heartbeat()
    managers = [_manager(db_pool, f"r{i}", ids, 30) for i in range(5)]
    await asyncio.gather(*(m.heartbeat() for m in managers))  # registered; nothing free yet
    await _end_session(db_pool, "dead")
    for _ in range(6):  # racers that lose a round take other accounts in the next
        await asyncio.gather(*(m.heartbeat() for m in managers))
        _disjoint(*managers)
        valid = await db_pool.fetch("SELECT account_id, holder FROM v_account_leases WHERE valid")
        assert {r["account_id"]: r["holder"] for r in valid} == {i: m.instance for m in managers for i in m.held()}
    assert frozenset().union(*(m.held() for m in managers)) == frozenset(ids)
    assert max(len(m.held()) for m in managers) <= 2


async def test_a_lease_of_an_older_syncd_without_a_session_is_taken_only_when_lapsed(
    db_pool: asyncpg.Pool[Any],
) -> None:
    """Rows written before migration 0009 carry no session: Postgres cannot vouch either way, time decides."""
    ids = await _accounts(db_pool, 1)
    await db_pool.execute(
        "INSERT INTO replicas (instance, expires_at) VALUES ('old', now() + interval '1 hour');"
        "INSERT INTO account_leases (account_id, holder, expires_at) "
        f"VALUES ({ids[0]}, 'old', now() + interval '1 hour')"
    )
    m1 = _manager(db_pool, "new", ids, 30)
    first = await m1.heartbeat()
    assert first.held == frozenset() and first.live_replicas == 2
    await db_pool.execute("UPDATE account_leases SET expires_at = now() - interval '1 second'")
    await db_pool.execute("UPDATE replicas SET expires_at = now() - interval '1 second' WHERE instance = 'old'")
    assert (await m1.heartbeat()).held == frozenset(ids)
