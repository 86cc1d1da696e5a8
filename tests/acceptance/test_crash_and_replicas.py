"""Crashes and replicas: SIGKILL then restart loses and doubles nothing; three replicas, one killed."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from decimal import Decimal

import pytest

from syncd.sim import Simulator
from tests.acceptance.conftest import DaemonFactory, fetch, fetchval
from tests.helpers import wait_for

TERMINAL = ("submitted", "rejected", "failed")


async def _queue_orders(dsn: str, account: str, n: int) -> None:
    payloads = [
        json.dumps(
            {
                "symbol": sym,
                "side": "buy",
                "qty": 1 + i % 3,
                "type": "market",
                "time_in_force": "day",
                "strategy": "LONG_STOCK",
            }
        )
        for i, sym in enumerate(["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL"] * (n // 5 + 1))
    ][:n]
    await fetch(
        dsn,
        "INSERT INTO order_requests (account_id, kind, payload) "
        "SELECT (SELECT id FROM accounts WHERE name = $1), 'open', p::jsonb FROM unnest($2::text[]) p RETURNING id",
        account,
        payloads,
    )


@pytest.mark.slow
async def test_sigkill_mid_work_then_restart_places_every_request_exactly_once(
    sim: Simulator, dsn: str, daemon_factory: DaemonFactory
) -> None:
    accounts = [sim.account_settings(0, "alpaca"), sim.account_settings(1, "tradier")]
    daemon = daemon_factory(accounts, dsn=dsn)
    await daemon.start()
    await daemon.wait_status("ok", timeout=40)
    sim.faults.latency_s = 0.15  # passes take a while: the kill lands mid-work
    for acct in accounts:
        await _queue_orders(dsn, acct.name, 10)

    async def some_submitted() -> bool:
        return bool(await fetchval(dsn, "SELECT count(*) FROM order_requests WHERE state = 'submitted'") >= 2)

    await wait_for(some_submitted, timeout=30, what="work under way")
    await daemon.kill()  # SIGKILL: no cleanup at all
    states = Counter(r["state"] for r in await fetch(dsn, "SELECT state FROM order_requests"))
    assert sum(states.values()) == 20
    assert states["queued"] + states["submitting"] > 0, f"the kill came too late to prove anything: {states}"

    sim.faults.latency_s = 0.0
    await daemon.start()

    async def all_done() -> bool:
        return bool(
            await fetchval(dsn, "SELECT count(*) FROM order_requests WHERE state <> ALL($1::text[])", list(TERMINAL))
            == 0
        )

    await wait_for(all_done, timeout=60, what="every request placed after the restart")
    requests = await fetch(dsn, "SELECT client_order_id, state, trade_id FROM order_requests")
    assert all(r["state"] == "submitted" for r in requests), Counter(r["state"] for r in requests)
    ours = {r["client_order_id"] for r in requests}
    # Alpaca keeps our id as client_order_id, Tradier as the order's tag.
    at_broker = Counter(
        cid for i in (0, 1) for o in sim.accounts[i].orders for cid in {o.client_order_id, o.tag} & ours
    )
    assert set(at_broker) == ours, "a request never reached the broker"
    assert max(at_broker.values()) == 1, "a request was placed twice"
    in_db = await fetch(
        dsn,
        "SELECT client_order_id, count(*) AS n FROM orders WHERE client_order_id = ANY($1) GROUP BY client_order_id",
        list(ours),
    )
    assert {r["client_order_id"] for r in in_db} == ours and all(r["n"] == 1 for r in in_db)
    assert await fetchval(dsn, "SELECT count(DISTINCT trade_id) FROM order_requests") == 20

    async def mirror_matches() -> bool:
        rows = await fetch(
            dsn, "SELECT a.name, p.symbol, p.quantity FROM portfolio_positions p JOIN accounts a ON a.id = p.account_id"
        )
        db = {(r["name"], r["symbol"]): r["quantity"] for r in rows}
        broker = {
            (acct.name, sym): Decimal(pos.qty)
            for i, acct in enumerate(accounts)
            for sym, pos in sim.accounts[i].positions.items()
        }
        return db == broker

    await wait_for(mirror_matches, timeout=30, what="portfolio_positions equal the broker's positions")
    assert await daemon.stop() == 0


@pytest.mark.slow
async def test_three_replicas_share_accounts_and_survive_one_killed(
    sim: Simulator, dsn: str, daemon_factory: DaemonFactory
) -> None:
    accounts = [sim.account_settings(i, "alpaca" if i % 2 == 0 else "tradier") for i in range(4)]
    replicas = [daemon_factory(accounts, dsn=dsn, name=f"r{i}") for i in range(3)]
    for r in replicas:
        await r.start()
    for r in replicas:
        await r.wait_status("ok", "degraded", timeout=40, synced=False)

    async def balanced() -> dict[str, str] | None:
        rows = await fetch(
            dsn,
            "SELECT a.name, l.holder FROM account_leases l JOIN accounts a ON a.id = l.account_id "
            "WHERE l.expires_at > now()",
        )
        holders = {r["name"]: r["holder"] for r in rows}
        per = Counter(holders.values())
        ok = len(holders) == 4 and max(per.values()) <= 2  # ceil(4 / 3)
        return holders if ok else None

    holders = await wait_for(balanced, timeout=30, what="4 accounts leased, at most 2 per replica")
    victim = next(r for r in replicas if r.name in holders.values())
    orphaned = sorted(n for n, h in holders.items() if h == victim.name)
    await victim.kill()
    killed_at = await fetchval(dsn, "SELECT now()")

    async def taken_over() -> bool:
        rows = await fetch(
            dsn,
            "SELECT DISTINCT a.name FROM sync_runs s JOIN accounts a ON a.id = s.account_id "
            "WHERE s.task = 'accountSync' AND s.ok AND s.started_at > $1 AND s.instance <> $2",
            killed_at,
            victim.name,
        )
        return set(orphaned) <= {r["name"] for r in rows}

    await wait_for(taken_over, timeout=30, what="the survivors sync the dead replica's accounts")
    await asyncio.sleep(0)
    survivors = [r for r in replicas if r is not victim]
    for r in survivors:
        assert r.alive()
    for r in survivors:
        assert await r.stop() == 0

    # No account was ever worked on by two replicas at once: per account and task, passes do not overlap.
    overlaps = await fetch(
        dsn,
        """
        SELECT a.account_id, a.task, a.instance AS i1, b.instance AS i2
          FROM sync_runs a JOIN sync_runs b
            ON a.account_id = b.account_id AND a.task = b.task AND a.id < b.id AND a.instance <> b.instance
         WHERE tstzrange(a.started_at, a.finished_at) && tstzrange(b.started_at, b.finished_at)
        """,
    )
    assert overlaps == [], [dict(r) for r in overlaps]
