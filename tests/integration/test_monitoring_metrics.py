"""The metrics deploy/prometheus/syncd-alerts.yml alerts on: outbox outcomes and waiting, lease changes.

Guards against an alert rule that can never fire because the fact it watches is not exported:
``syncd_outbox_requests_total`` counts every attempt's outcome, ``syncd_outbox_waiting`` and
``syncd_outbox_oldest_waiting_seconds`` say how long requests wait, ``syncd_lease_changes_total``
counts leases acquired and lost (all present at 0 from start-up, so ``increase()`` sees the first).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from syncd.context import Account, Context
from syncd.cycles import trade_cycle
from syncd.daemon.health import DaemonMetrics
from syncd.daemon.leases import LeaseManager
from syncd.daemon.supervisor import Supervisor, TaskDef
from syncd.settings import AccountSettings
from syncd.sim import Simulator
from tests.helpers import wait_for
from tests.simfixtures import sim_fixture

sim = sim_fixture(seed=13, accounts=1, positions_per_account=0, fill_on_submit=False)

BUY = {"symbol": "AAPL", "side": "buy", "qty": 1, "type": "market", "strategy": "LONG_STOCK"}


async def queue(ctx: Context, account: str, payload: Any, *, age_s: float = 0.0) -> int:
    return int(
        await ctx.pool.fetchval(
            "INSERT INTO order_requests (account_id, kind, payload, created_at) "
            "VALUES ($1, 'open', $2, now() - make_interval(secs => $3)) RETURNING id",
            ctx.accounts[account].id,
            payload,
            age_s,
        )
    )


def outcome(ctx: Context, account: str, name: str) -> float | None:
    return ctx.metrics.value("syncd_outbox_requests_total", account=account, outcome=name)


async def test_outbox_outcomes_are_counted_per_account(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        name = next(iter(ctx.accounts))
        await queue(ctx, name, {**BUY, "type": "limit", "limit_price": 1})  # $1 of $10 cash: placed
        await queue(ctx, name, {"symbol": "AAPL"})  # no side, no qty: a bad request fails
        sim.set_cash(0, 10)
        await queue(ctx, name, {**BUY, "qty": 1000})  # insufficient buying power: rejected
        stats = await trade_cycle.account_pass(ctx, ctx.accounts[name])
        assert (stats["outbox_submitted"], stats["outbox_failed"], stats["outbox_rejected"]) == (1, 1, 1)
        assert outcome(ctx, name, "submitted") == 1
        assert outcome(ctx, name, "failed") == 1
        assert outcome(ctx, name, "rejected") == 1
        assert outcome(ctx, name, "pending") is None  # nothing left with an unknown outcome


def account(name: str) -> AccountSettings:
    # Never contacted: the passes below do not call the broker.
    return AccountSettings(
        name=name, broker="alpaca", api_key="k-test", api_secret="s-test", base_url="http://127.0.0.1:9"
    )


async def idle_pass(ctx: Context, acct: Account) -> dict[str, Any]:
    return {}


async def fast(ctx: Context, task: Any, normal: float) -> float:
    return 0.05


@pytest_asyncio.fixture(loop_scope="function")
async def daemon_ctx(make_context: Any) -> AsyncIterator[Context]:
    async with make_context(accounts=[account("m1"), account("m2")], cycles={"jitter_pct": 0}) as context:
        yield dataclasses.replace(context, metrics=DaemonMetrics())


def supervisor(ctx: Context) -> Supervisor:
    leases = LeaseManager(
        ctx.pool,
        ctx.queries,
        instance=ctx.instance,
        account_ids=[a.id for a in ctx.accounts.values()],
        heartbeat_s=5.0,
        busy=frozenset,
    )
    return Supervisor(
        ctx,
        stop=asyncio.Event(),
        leases=leases,
        tasks=[TaskDef("accountSync", idle_pass)],
        interval_for=fast,
        stream=None,
    )


async def test_outbox_waiting_gauges_come_from_the_database(daemon_ctx: Context) -> None:
    ctx = daemon_ctx
    await queue(ctx, "m1", BUY, age_s=600)
    await queue(ctx, "m1", BUY, age_s=30)
    sup = supervisor(ctx)
    await sup.housekeeping.refresh_gauges()
    m = ctx.metrics
    assert m.value("syncd_outbox_waiting", account="m1") == 2
    oldest = m.value("syncd_outbox_oldest_waiting_seconds", account="m1")
    assert oldest is not None and 600 <= oldest < 900
    assert m.value("syncd_outbox_waiting", account="m2") == 0  # present, at 0: an alert sees "none waits"
    assert m.value("syncd_outbox_oldest_waiting_seconds", account="m2") == 0
    text = m.render()
    assert 'syncd_outbox_waiting{account="m1"} 2' in text
    assert "# TYPE syncd_outbox_oldest_waiting_seconds gauge" in text


async def test_lease_changes_are_counted_from_zero(daemon_ctx: Context) -> None:
    ctx = daemon_ctx
    sup = supervisor(ctx)
    await sup.start()
    try:
        await wait_for(lambda: len(sup.leases.held()) == 2, timeout=10, what="both leases")
        m = ctx.metrics
        assert m.value("syncd_lease_changes_total", change="acquired") == 2
        assert m.value("syncd_lease_changes_total", change="lost") == 0  # present before the first loss
        for name in ("m1", "m2"):
            for state in ("submitted", "rejected", "failed", "pending"):
                assert outcome(ctx, name, state) == 0
    finally:
        await sup.shutdown(5)
    assert ctx.metrics.value("syncd_lease_changes_total", change="lost") == 2  # a clean stop hands both back
