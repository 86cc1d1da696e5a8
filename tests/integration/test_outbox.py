"""The outbox against the simulator on real Postgres: placed exactly once, whatever crashes in between."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from syncd.context import Context
from syncd.cycles import account_sync, trade_cycle
from syncd.daemon.passes import run_pass
from syncd.sim import Simulator
from syncd.trading.order_store import Observation, apply_observations, lock_orders
from syncd.trading.outbox import drain_outbox
from tests.helpers import wait_for
from tests.outbox_rows import queue, request, trade
from tests.simfixtures import sim_fixture

D = Decimal
POST_ORDERS = ("/v2/orders", "POST")


sim = sim_fixture(seed=11, accounts=2, positions_per_account=0, fill_on_submit=False)


async def one_pass(ctx: Context, account: str | None = None) -> dict[str, Any]:
    return await trade_cycle.account_pass(ctx, ctx.accounts[account or next(iter(ctx.accounts))])


def posts(sim: Simulator) -> int:
    return sim.requests("/v2/orders", method="POST")


BUY_AAPL = {
    "symbol": "AAPL",
    "side": "buy",
    "qty": 10,
    "type": "market",
    "strategy": "LONG_STOCK",
    "take_profit_pct": 50,
    "stop_loss_pct": 25,
}


async def test_open_creates_trade_pending_partial_filled(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_AAPL)
        stats = await one_pass(ctx)
        assert stats["outbox_submitted"] == 1
        req = await request(ctx, rid)
        assert req["state"] == "submitted" and req["attempts"] == 1 and req["broker_order_id"]
        assert len(req["client_order_id"]) <= 48
        t = await trade(ctx, req["trade_id"])
        assert (t["status"], t["quantity"], t["requested_quantity"], t["strategy"]) == ("pending", 0, 10, "LONG_STOCK")
        assert (t["take_profit_pct"], t["stop_loss_pct"]) == (50, 25)
        legs = await ctx.pool.fetch("SELECT symbol, side, ratio FROM trade_legs WHERE trade_id = $1", t["id"])
        assert [tuple(r) for r in legs] == [("AAPL", "buy", 1)]

        sim.fill(req["client_order_id"], qty=4, price="100")
        await one_pass(ctx)
        t = await trade(ctx, t["id"])
        assert (t["status"], t["quantity"], t["entry_price"]) == ("open", 4, D(100))

        sim.fill(req["client_order_id"], price="103")
        await one_pass(ctx)
        t = await trade(ctx, t["id"])
        assert (t["status"], t["quantity"], t["broker_fill_price"]) == ("open", 10, D("101.8"))
        assert posts(sim) == 1


async def test_cancel_after_partial_fill_leaves_open_trade(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", {**BUY_AAPL, "type": "limit", "limit_price": 1})
        await one_pass(ctx)
        req = await request(ctx, rid)
        sim.fill(req["client_order_id"], qty=3, price="1")
        sim.cancel(req["client_order_id"])
        await one_pass(ctx)
        t = await trade(ctx, req["trade_id"])
        assert (t["status"], t["quantity"], t["entry_price"]) == ("open", 3, D(1))


async def test_broker_rejection_insufficient_buying_power(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        sim.set_cash(0, 10)
        rid = await queue(ctx, "open", {**BUY_AAPL, "qty": 1000})
        stats = await one_pass(ctx)
        assert stats["outbox_rejected"] == 1
        req = await request(ctx, rid)
        assert req["state"] == "rejected" and "buying power" in req["last_error"]
        t = await trade(ctx, req["trade_id"])
        assert t["status"] == "rejected" and "buying power" in t["close_reason"]
        await one_pass(ctx)  # never retried
        assert posts(sim) == 1


async def test_refused_order_is_not_a_failed_pass(sim: Simulator, make_context: Any) -> None:
    """docs/commands.md: an order the broker refused is not an account failure (sync-once exits 0 for it)."""
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        sim.set_cash(0, 10)
        rid = await queue(ctx, "open", {**BUY_AAPL, "qty": 1000})
        bad = await queue(ctx, "open", {"bogus": 1})
        summary = await run_pass(ctx, "tradeCycle", trade_cycle.account_pass, list(ctx.accounts.values()))
        assert summary.ok, summary.failed
        assert [(await request(ctx, r))["state"] for r in (rid, bad)] == ["rejected", "failed"]
        assert await ctx.pool.fetchval("SELECT last_error FROM accounts") is None


async def test_cancel_request_cancels_working_orders(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", {**BUY_AAPL, "type": "limit", "limit_price": 1})
        await one_pass(ctx)
        tid = (await request(ctx, rid))["trade_id"]
        cid = await queue(ctx, "cancel", {}, trade_id=tid)
        await one_pass(ctx)
        assert (await request(ctx, cid))["state"] == "submitted"
        assert sim.order((await request(ctx, rid))["client_order_id"]).status == "canceled"
        t = await trade(ctx, tid)
        assert (t["status"], t["close_reason"]) == ("cancelled", "order canceled")


async def test_response_dropped_after_placing_is_found_by_client_id(sim: Simulator, make_context: Any) -> None:
    """The crash between placing and recording: the broker has the order, syncd never heard back."""
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        sim.faults.drop_next_response("/v2/orders", method="POST")
        rid = await queue(ctx, "open", BUY_AAPL)
        await one_pass(ctx)
        req = await request(ctx, rid)
        assert req["state"] == "submitted" and req["broker_order_id"] == sim.order(req["client_order_id"]).id
        assert posts(sim) == 1
        await one_pass(ctx)
        assert posts(sim) == 1


async def test_dropped_response_and_failed_lookup_resolved_next_pass(sim: Simulator, make_context: Any) -> None:
    """The answer is lost and the lookup fails too: the request waits in submitting, never re-sent blind."""
    async with make_context(
        accounts=[sim.account_settings(0)], trading={"enabled": True}, cycles={"broker_timeout_s": 2}
    ) as ctx:
        sim.faults.drop_next_response("/v2/orders", method="POST")
        sim.faults.fail_next("/v2/orders:by_client_order_id", 503)
        sim.faults.fail_next("/v2/orders:by_client_order_id", 503)
        sim.faults.fail_next("/v2/orders:by_client_order_id", 503)
        sim.faults.fail_next("/v2/orders:by_client_order_id", 503)
        rid = await queue(ctx, "open", BUY_AAPL)
        acct = next(iter(ctx.accounts.values()))
        stats = await drain_outbox(ctx, acct)
        assert stats.pending == 1
        assert (await request(ctx, rid))["state"] == "submitting"
        sim.faults.clear()
        await one_pass(ctx)
        req = await request(ctx, rid)
        assert req["state"] == "submitted" and req["attempts"] == 1
        assert posts(sim) == 1


async def test_request_left_submitting_by_a_crash(sim: Simulator, make_context: Any) -> None:
    """A crash after the broker accepted: found by client id, recorded, not placed again."""
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        placed = sim.place_outside_order(0, "AAPL", "buy", 10, client_order_id="syncd-crash-1")
        rid = await queue(ctx, "open", BUY_AAPL, cid="syncd-crash-1", state="submitting", attempts=1)
        await one_pass(ctx)
        req = await request(ctx, rid)
        assert req["state"] == "submitted" and req["broker_order_id"] == placed.id
        assert req["trade_id"] is not None
        order = await ctx.pool.fetchrow("SELECT trade_id, role FROM orders WHERE broker_order_id = $1", placed.id)
        assert (order["trade_id"], order["role"]) == (req["trade_id"], "entry")
        assert posts(sim) == 0


async def test_request_left_submitting_never_reached_broker_is_sent(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_AAPL, cid="syncd-crash-2", state="submitting", attempts=1)
        await one_pass(ctx)
        assert (await request(ctx, rid))["state"] == "submitted"
        assert posts(sim) == 1
        rid2 = await queue(ctx, "open", BUY_AAPL, cid="syncd-crash-3", state="submitting", attempts=3)
        await one_pass(ctx)
        req = await request(ctx, rid2)
        assert req["state"] == "failed"
        assert req["last_error"] == "retries exhausted, broker answer unknown, client id not found"
        assert posts(sim) == 1


async def test_trading_disabled_sends_nothing(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": False}) as ctx:
        rid = await queue(ctx, "open", BUY_AAPL)
        bad = await queue(ctx, "open", {"bogus": 1})
        before = dict(await request(ctx, rid))
        summary = await run_pass(ctx, "tradeCycle", trade_cycle.account_pass, list(ctx.accounts.values()))
        assert summary.ok
        assert dict(await request(ctx, rid)) == before
        assert (await request(ctx, bad))["state"] == "queued"
        mutating = sum(n for k, n in sim.request_counts.items() if not k.startswith("GET "))
        assert mutating == 0


@pytest.mark.parametrize(
    ("kind", "payload", "error"),
    [
        ("open", {**BUY_AAPL, "colour": "red"}, "unknown key 'colour'"),
        ("open", {"symbol": "AAPL", "side": "buy", "type": "market"}, "missing field 'qty'"),
        ("open", {**BUY_AAPL, "qty": "ten"}, "qty must be a number"),
        ("open", {**BUY_AAPL, "qty": -5}, "qty must be greater than 0"),
        ("open", {**BUY_AAPL, "type": "limit"}, "missing field 'limit_price'"),
        ("open", {**BUY_AAPL, "side": "hold"}, "side must be one of buy, sell"),
        ("open", [1, 2], "must be a JSON object"),
        ("close", {"type": "market"}, "needs trade_id"),
        ("cancel", {"now": True}, "unknown key 'now'"),
    ],
)
async def test_malformed_payload_fails_without_broker_call(
    sim: Simulator, make_context: Any, kind: str, payload: Any, error: str
) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, kind, payload)
        await one_pass(ctx)
        req = await request(ctx, rid)
        assert req["state"] == "failed" and error in req["last_error"], req["last_error"]
        assert posts(sim) == 0 and sim.requests("/v2/orders", method="DELETE") == 0


async def test_bad_user_client_id_fails(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_AAPL, cid="has spaces and ünïcode")
        await one_pass(ctx)
        req = await request(ctx, rid)
        assert req["state"] == "failed" and "client_order_id" in req["last_error"]
        assert posts(sim) == 0


async def test_close_closes_what_is_held_then_trade_closed(sim: Simulator, make_context: Any) -> None:
    """An exit closes what the trade's own fills bought (67), not the 77 held once 10 more were bought by hand."""
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        rid = await queue(ctx, "open", {**BUY_AAPL, "qty": 67})
        await one_pass(ctx)
        req = await request(ctx, rid)
        sim.fill(req["client_order_id"], price="100")
        await one_pass(ctx)
        tid = req["trade_id"]
        sim.add_position(0, "AAPL", 77, "100")  # 10 more bought by hand: not the trade's
        await account_sync.account_pass(ctx, acct)
        close = await queue(ctx, "close", {"type": "market", "reason": "take_profit"}, trade_id=tid)
        await one_pass(ctx)
        creq = await request(ctx, close)
        assert creq["state"] == "submitted"
        assert sim.order(creq["client_order_id"]).qty == 67
        t = await trade(ctx, tid)
        assert (t["status"], t["close_reason"]) == ("closing", "take_profit")
        sim.fill(creq["client_order_id"], price="110")
        await one_pass(ctx)
        t = await trade(ctx, tid)
        assert (t["status"], t["quantity"], t["exit_price"]) == ("closed", 0, D(110))
        assert t["realized_pnl"] == D("670.00")  # (110 - 100) x 67 filled by the exit


async def test_tradier_open_and_dropped_response(sim: Simulator, make_context: Any) -> None:
    """Tradier has no client id: syncd's id travels in `tag` and is found by listing orders."""
    async with make_context(accounts=[sim.account_settings(1, broker="tradier")], trading={"enabled": True}) as ctx:
        sim.faults.drop_next_response("/v1/accounts", method="POST")
        rid = await queue(ctx, "open", BUY_AAPL)
        await one_pass(ctx)
        req = await request(ctx, rid)
        assert req["state"] == "submitted"
        assert sim.requests("/v1/accounts", method="POST") == 1
        sim.fill(req["broker_order_id"], price="99")
        await one_pass(ctx)
        t = await trade(ctx, req["trade_id"])
        assert (t["status"], t["quantity"], t["entry_price"]) == ("open", 10, D(99))


async def test_notify_payloads_are_small_json(sim: Simulator, make_context: Any, dsn: str) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        got: list[str] = []
        conn = await asyncpg.connect(dsn)
        try:
            await conn.add_listener("syncd_events", lambda *a: got.append(a[3]))
            rid = await queue(ctx, "open", BUY_AAPL)
            await one_pass(ctx)
            await wait_for(lambda: len(got) >= 2, timeout=5)
        finally:
            await conn.close()
        kinds = {json.loads(p)["kind"] for p in got}
        assert {"order", "trade"} <= kinds
        assert all(len(p.encode()) < 8000 for p in got)
        # The key of what changed, of one type per kind whoever sends it: a trade's id is a number
        # (as monitorCycle and import-positions send it), an order's key its broker id.
        req = await request(ctx, rid)
        name = next(iter(ctx.accounts))
        payloads = [json.loads(p) for p in got]
        assert {"kind": "trade", "account": name, "key": req["trade_id"]} in payloads
        assert {"kind": "order", "account": name, "key": req["broker_order_id"]} in payloads


async def test_monitor_queued_exit_keeps_trade_closing_and_a_failed_close_reopens_it(
    sim: Simulator, make_context: Any
) -> None:
    """monitorCycle sets a trade `closing` as it queues the close: a poll meanwhile must not flip it back to
    open; a close that ends without an order (nothing held) leaves the trade open again."""
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        rid = await queue(ctx, "open", {**BUY_AAPL, "type": "limit", "limit_price": 1})
        await one_pass(ctx)
        req = await request(ctx, rid)
        tid = req["trade_id"]
        sim.fill(req["client_order_id"], qty=5, price="1")
        await one_pass(ctx)
        assert (await trade(ctx, tid))["status"] == "open"
        # what monitor_queue_exits does, in one statement
        await ctx.pool.execute("UPDATE trades SET status = 'closing', close_reason = 'stop_loss' WHERE id = $1", tid)
        close = await queue(ctx, "close", {"type": "market", "qty": 5, "reason": "stop_loss"}, trade_id=tid)
        sim.fill(req["client_order_id"], qty=1, price="1")  # the entry moves while the exit waits
        order = await acct.broker.get_order(req["broker_order_id"])
        async with ctx.pool.acquire() as conn, conn.transaction():
            await lock_orders(conn, ctx.queries, acct.id)
            await apply_observations(conn, ctx.queries, acct.id, [Observation(order)])
        t = await trade(ctx, tid)
        assert (t["status"], t["quantity"], t["close_reason"]) == ("closing", 6, "stop_loss")
        # the positions were never synced: nothing is held as far as syncd knows -> the close fails
        await one_pass(ctx)
        creq = await request(ctx, close)
        assert creq["state"] == "failed" and "nothing to close" in creq["last_error"]
        t = await trade(ctx, tid)
        assert (t["status"], t["close_reason"]) == ("open", None)
