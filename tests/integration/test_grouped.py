"""syncd.db.grouped: concurrent callers of one statement share it, on real Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from syncd.context import Context
from syncd.cycles import account_sync
from syncd.db import create_pool
from syncd.db.grouped import GroupedQuery
from syncd.settings import DatabaseSettings
from syncd.trading.expiry import PENDING_REASONS
from tests.helpers import wait_for

# one row per element, in order; 1/x fails for x = 0
INVERSE = (
    "SELECT t.ord, 100 / t.x AS v, $2::text AS tag FROM unnest($1::int[]) WITH ORDINALITY AS t(x, ord) ORDER BY t.ord"
)
# the same, after waiting for advisory lock 4711 (a test holds it to keep a statement running)
GATED = (
    "SELECT t.ord, 100 / t.x AS v FROM unnest($1::int[]) WITH ORDINALITY AS t(x, ord),"
    " LATERAL (SELECT pg_advisory_xact_lock(4711)) AS gate ORDER BY t.ord"
)
WAITING = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4711 AND NOT granted"


@pytest_asyncio.fixture(loop_scope="function")
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    p = await create_pool(DatabaseSettings(dsn=dsn, pool_min=1, pool_max=2))
    yield p
    await p.close()


async def test_callers_that_arrive_meanwhile_share_one_statement(pool: asyncpg.Pool[Any]) -> None:
    q = GroupedQuery(pool, INVERSE, shared=["t"])
    rows = await asyncio.gather(*(q.fetchrow(x) for x in range(1, 21)))
    assert [r["v"] for r in rows] == [100 // x for x in range(1, 21)]
    assert all(r["tag"] == "t" for r in rows)
    assert q.calls == 20
    assert q.statements == 1  # all asked before the loop ran again: one group


async def _gate(dsn: str) -> asyncpg.Connection[Any]:
    gate: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    await gate.execute("SELECT pg_advisory_lock(4711)")
    return gate


async def test_callers_that_arrive_while_a_statement_runs_go_in_the_next(pool: asyncpg.Pool[Any], dsn: str) -> None:
    gate = await _gate(dsn)
    try:
        q = GroupedQuery(pool, GATED)
        first = asyncio.ensure_future(q.fetchrow(1))
        await wait_for(lambda: gate.fetchval(WAITING))  # its statement runs (and waits for the gate)
        rest = [asyncio.ensure_future(q.fetchrow(x)) for x in range(2, 12)]
        await wait_for(lambda: len(q._queue) == 10, what="the ten queued behind the running statement")
        await gate.execute("SELECT pg_advisory_unlock(4711)")
        assert (await first)["v"] == 100
        assert [(await r)["v"] for r in rest] == [100 // x for x in range(2, 12)]
        assert q.statements == 2
    finally:
        await gate.close()


async def test_a_lone_caller_is_sent_at_once(pool: asyncpg.Pool[Any]) -> None:
    q = GroupedQuery(pool, INVERSE, shared=["t"])
    assert (await q.fetchrow(4))["v"] == 25
    assert (await q.fetchrow(5))["v"] == 20
    assert q.statements == 2


async def test_one_callers_error_is_its_own(pool: asyncpg.Pool[Any]) -> None:
    """A group that fails is sent again caller by caller: the failing one gets its error, the others their rows."""
    q = GroupedQuery(pool, INVERSE, shared=["t"])
    results = await asyncio.gather(*(q.fetchrow(x) for x in (1, 2, 0, 4, 5)), return_exceptions=True)
    assert isinstance(results[2], asyncpg.DivisionByZeroError)
    assert [r["v"] for i, r in enumerate(results) if i != 2] == [100, 50, 25, 20]  # type: ignore[index]
    assert (await q.fetchrow(10))["v"] == 10  # the query goes on


async def test_a_cancelled_caller_leaves_the_others_answered(pool: asyncpg.Pool[Any], dsn: str) -> None:
    gate = await _gate(dsn)
    try:
        q = GroupedQuery(pool, GATED)
        first = asyncio.ensure_future(q.fetchrow(1))  # sent alone
        await wait_for(lambda: gate.fetchval(WAITING))
        queued = [asyncio.ensure_future(q.fetchrow(x)) for x in (2, 4, 5)]
        await wait_for(lambda: len(q._queue) == 3, what="the queued callers wait")
        queued[1].cancel()
        await gate.execute("SELECT pg_advisory_unlock(4711)")
        assert (await first)["v"] == 100
        assert (await queued[0])["v"] == 50 and (await queued[2])["v"] == 20
        assert queued[1].cancelled()
        assert q.calls == 3  # the cancelled one was left out of the group
    finally:
        await gate.close()


async def test_a_statement_that_does_not_answer_each_caller_is_an_error(pool: asyncpg.Pool[Any]) -> None:
    q = GroupedQuery(pool, "SELECT t.ord FROM unnest($1::int[]) WITH ORDINALITY AS t(x, ord) WHERE t.x > 100")
    with pytest.raises(RuntimeError, match="not one each in order"):
        await asyncio.gather(q.fetchrow(1), q.fetchrow(2), q.fetchrow(3))


async def test_an_account_asked_twice_in_one_group_gets_each_answer_judged(make_context: Any) -> None:
    """account_sync_unchanged over a group holding one account twice: only the recorded answer is a hit."""
    from syncd.sim import SimConfig, start_simulator

    sim = await start_simulator(SimConfig(seed=5, accounts=1, positions_per_account=3))
    try:
        async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
            assert isinstance(ctx, Context)
            acct = next(iter(ctx.accounts.values()))
            for _ in range(2):  # the answer, seen twice, is recorded
                await account_sync.account_pass(ctx, acct)
            recorded = await ctx.pool.fetchval("SELECT sync_answer FROM accounts WHERE id = $1", acct.id)
            assert recorded is not None
            q = GroupedQuery(ctx.pool, ctx.queries["account_sync_unchanged"], shared=[list(PENDING_REASONS)])
            other = bytes(16)
            rows = await asyncio.gather(
                q.fetchrow(acct.id, recorded), q.fetchrow(acct.id, other), q.fetchrow(acct.id, recorded)
            )
            assert q.statements == 1  # one group
            assert [r["positions"] for r in rows] == [3, None, 3]
            assert rows[1]["positions_state"] is not None  # a miss reads what the comparison needs
    finally:
        await sim.stop()


async def test_a_worker_cancelled_at_shutdown_leaves_no_caller_waiting(pool: asyncpg.Pool[Any], dsn: str) -> None:
    gate = await _gate(dsn)
    try:
        q = GroupedQuery(pool, GATED)
        first = asyncio.ensure_future(q.fetchrow(1))
        await wait_for(lambda: gate.fetchval(WAITING))
        queued = asyncio.ensure_future(q.fetchrow(2))
        await wait_for(lambda: len(q._queue) == 1, what="the caller queued")
        assert q._worker is not None
        q._worker.cancel()
        results = await asyncio.gather(first, queued, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert q._worker is None
    finally:
        await gate.close()
    assert (await q.fetchrow(4))["v"] == 25  # a new caller starts a new worker


async def test_no_answer_from_postgres_is_every_callers_at_once(dsn: str) -> None:
    """Postgres out of reach (here: the pool closed): the group fails once, every caller with it, no split."""
    p = await create_pool(DatabaseSettings(dsn=dsn, pool_min=1, pool_max=1))
    q = GroupedQuery(p, INVERSE, shared=["t"])
    assert (await q.fetchrow(1))["v"] == 100
    await p.close()
    results = await asyncio.gather(*(q.fetchrow(x) for x in (1, 2, 4)), return_exceptions=True)
    assert all(isinstance(r, asyncpg.InterfaceError) for r in results), results
    assert q._worker is None
