"""The outbox's ``replace`` against the simulator on real Postgres: a working order's new terms, exactly once.

Alpaca: ``PATCH /v2/orders/{id}`` makes a NEW order (``replaces`` = the old id) that inherits the trade
and role; the old one ends ``replaced`` with its fills still counted. Tradier: ``PUT`` changes the
order in place. A replace of an order that filled meanwhile ends ``rejected`` with the broker's reason.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from syncd.context import Context
from syncd.cycles import account_sync, trade_cycle
from syncd.sim import Simulator
from tests.outbox_rows import queue, request, trade
from tests.simfixtures import sim_fixture

D = Decimal

sim = sim_fixture(seed=17, accounts=2, positions_per_account=0, fill_on_submit=False)

BUY_LIMIT = {"symbol": "AAPL", "side": "buy", "qty": 10, "type": "limit", "limit_price": 1, "strategy": "LONG_STOCK"}


async def one_pass(ctx: Context) -> dict[str, Any]:
    return await trade_cycle.account_pass(ctx, ctx.accounts[next(iter(ctx.accounts))])


def patches(sim: Simulator) -> int:
    return sim.requests("/v2/orders/", method="PATCH")


async def orders_of(ctx: Context, tid: int) -> list[Any]:
    return list(
        await ctx.pool.fetch(
            "SELECT broker_order_id, status, qty, filled_qty, limit_price, role, replaces, replaced_by "
            "FROM orders WHERE trade_id = $1 AND parent_id IS NULL ORDER BY id",
            tid,
        )
    )


async def test_replace_makes_a_new_order_that_inherits_the_trade_and_keeps_earlier_fills(
    sim: Simulator, make_context: Any
) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_LIMIT)
        await one_pass(ctx)
        opened = await request(ctx, rid)
        tid = opened["trade_id"]
        sim.fill(opened["client_order_id"], qty=4, price="1")
        await one_pass(ctx)
        assert (await trade(ctx, tid))["quantity"] == 4

        rep = await queue(ctx, "replace", {"limit_price": "1.25"}, trade_id=tid)
        stats = await one_pass(ctx)
        assert stats["outbox_submitted"] == 1
        req = await request(ctx, rep)
        assert (req["state"], req["attempts"], req["last_error"]) == ("submitted", 1, None)
        old, new = await orders_of(ctx, tid)
        assert old["broker_order_id"] == opened["broker_order_id"]
        assert (old["status"], old["filled_qty"], old["replaced_by"]) == ("replaced", 4, new["broker_order_id"])
        assert (new["status"], new["qty"], new["limit_price"], new["role"]) == ("new", 6, D("1.25"), "entry")
        assert new["replaces"] == old["broker_order_id"] and req["broker_order_id"] == new["broker_order_id"]
        assert sim.order(new["broker_order_id"]).client_order_id == req["client_order_id"]

        sim.fill(new["broker_order_id"], price="1.25")
        await one_pass(ctx)
        t = await trade(ctx, tid)
        assert (t["status"], t["quantity"], t["entry_price"]) == ("open", 10, D("1.15"))  # (4 x 1 + 6 x 1.25) / 10
        await one_pass(ctx)
        assert patches(sim) == 1


async def test_replace_after_fill_is_rejected_with_the_brokers_reason(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_LIMIT)
        await one_pass(ctx)
        opened = await request(ctx, rid)
        sim.fill(opened["client_order_id"], price="1")  # filled before syncd sees the replace
        rep = await queue(ctx, "replace", {"limit_price": "1.10", "qty": 12}, trade_id=opened["trade_id"])
        stats = await one_pass(ctx)
        assert stats["outbox_rejected"] == 1
        req = await request(ctx, rep)
        assert req["state"] == "rejected" and "filled" in req["last_error"]
        assert patches(sim) == 1
        await one_pass(ctx)  # never retried
        assert patches(sim) == 1
        t = await trade(ctx, opened["trade_id"])
        assert (t["status"], t["quantity"]) == ("open", 10)  # the trade is untouched by the refusal


async def test_replace_with_the_answer_lost_is_found_by_its_client_id(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_LIMIT)
        await one_pass(ctx)
        tid = (await request(ctx, rid))["trade_id"]
        sim.faults.drop_next_response("/v2/orders/", method="PATCH")
        rep = await queue(ctx, "replace", {"qty": 7}, trade_id=tid)
        await one_pass(ctx)
        req = await request(ctx, rep)
        assert req["state"] == "submitted" and req["attempts"] == 1
        old, new = await orders_of(ctx, tid)
        assert (old["status"], new["qty"], new["role"]) == ("replaced", 7, "entry")
        await one_pass(ctx)
        assert patches(sim) == 1


async def test_replace_left_submitting_by_a_crash_is_recorded_not_sent_again(sim: Simulator, make_context: Any) -> None:
    """The crash after the broker replaced: the next pass finds the new order by client id, once."""
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_LIMIT)
        await one_pass(ctx)
        opened = await request(ctx, rid)
        placed = sim.order(opened["client_order_id"])
        new = sim.exchange.replace(placed, qty=None, limit_price=D("1.5"), client_order_id="syncd-rep-crash-1")
        rep = await queue(
            ctx, "replace", {"limit_price": "1.5"}, trade_id=opened["trade_id"], cid="syncd-rep-crash-1",
            state="submitting", attempts=1,
        )  # fmt: skip
        await one_pass(ctx)
        req = await request(ctx, rep)
        assert (req["state"], req["broker_order_id"]) == ("submitted", new.id)
        old_row, new_row = await orders_of(ctx, opened["trade_id"])
        assert (old_row["status"], new_row["broker_order_id"], new_row["role"]) == ("replaced", new.id, "entry")
        assert patches(sim) == 0


async def test_replace_by_the_request_it_amends(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_LIMIT)
        await one_pass(ctx)
        rep = await queue(ctx, "replace", {"request_id": rid, "limit_price": 2})
        await one_pass(ctx)
        req = await request(ctx, rep)
        assert req["state"] == "submitted" and req["trade_id"] == (await request(ctx, rid))["trade_id"]


async def test_replace_bad_requests_fail_without_a_broker_call(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_LIMIT)
        await one_pass(ctx)
        tid = (await request(ctx, rid))["trade_id"]
        cases = {
            await queue(ctx, "replace", {}, trade_id=tid): "a replace changes limit_price or qty",
            await queue(ctx, "replace", {"limit_price": 2}): "a replace request needs trade_id",
            await queue(ctx, "replace", {"limit_price": "1.234"}, trade_id=tid): "more than 2 decimal places",
            await queue(ctx, "replace", {"limit_price": 0}, trade_id=tid): "limit_price must be greater than 0",
            await queue(ctx, "replace", {"qty": -1}, trade_id=tid): "qty must be greater than 0",
            await queue(ctx, "replace", {"request_id": 999999, "qty": 1}): "not a request of this account",
            await queue(ctx, "replace", {"limit_price": 2, "side": "sell"}, trade_id=tid): "unknown key 'side'",
        }
        await one_pass(ctx)
        for rep, error in cases.items():
            req = await request(ctx, rep)
            assert req["state"] == "failed", (error, req["last_error"])
            assert error in req["last_error"], (error, req["last_error"])
        assert patches(sim) == 0
        assert (await trade(ctx, tid))["status"] == "pending"


async def test_tradier_replace_changes_the_order_in_place(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(1, broker="tradier")], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_LIMIT)
        await one_pass(ctx)
        opened = await request(ctx, rid)
        rep = await queue(ctx, "replace", {"limit_price": "1.05"}, trade_id=opened["trade_id"])
        await one_pass(ctx)
        req = await request(ctx, rep)
        assert (req["state"], req["broker_order_id"]) == ("submitted", opened["broker_order_id"])
        (row,) = await orders_of(ctx, opened["trade_id"])
        assert (row["status"], row["limit_price"]) == ("new", D("1.05"))
        # a quantity change is one Tradier does not offer: refused before anything is sent
        rep2 = await queue(ctx, "replace", {"qty": 5}, trade_id=opened["trade_id"])
        await one_pass(ctx)
        req2 = await request(ctx, rep2)
        assert req2["state"] == "rejected" and "cannot change an order's quantity" in req2["last_error"]
        assert sim.requests("/v1/accounts", method="PUT") == 1


async def test_tradier_replace_left_submitting_is_seen_on_the_order(sim: Simulator, make_context: Any) -> None:
    """Tradier keeps the id and tag: a replace whose outcome is unknown (a crash after the change) is
    resolved by reading the order: it already has the new price, so nothing is sent again."""
    async with make_context(accounts=[sim.account_settings(1, broker="tradier")], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_LIMIT)
        await one_pass(ctx)
        opened = await request(ctx, rid)
        sim.exchange.modify(sim.order(opened["broker_order_id"]), limit_price=D("1.05"))
        rep = await queue(
            ctx, "replace", {"limit_price": "1.05"}, trade_id=opened["trade_id"], state="submitting", attempts=1,
            cid="syncd-rep-crash-2",
        )  # fmt: skip
        await one_pass(ctx)
        req = await request(ctx, rep)
        assert (req["state"], req["attempts"], req["broker_order_id"]) == ("submitted", 1, opened["broker_order_id"])
        assert sim.requests("/v1/accounts", method="PUT") == 0
        # not yet changed at the broker: sent (again), the attempt counted
        rep2 = await queue(
            ctx, "replace", {"limit_price": "1.10"}, trade_id=opened["trade_id"], state="submitting", attempts=1,
            cid="syncd-rep-crash-3",
        )  # fmt: skip
        await one_pass(ctx)
        req2 = await request(ctx, rep2)
        assert (req2["state"], req2["attempts"]) == ("submitted", 2)
        assert sim.requests("/v1/accounts", method="PUT") == 1
        (row,) = await orders_of(ctx, opened["trade_id"])
        assert row["limit_price"] == D("1.1")


async def test_tradier_replace_after_fill_is_rejected(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(1, broker="tradier")], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", BUY_LIMIT)
        await one_pass(ctx)
        opened = await request(ctx, rid)
        sim.fill(opened["broker_order_id"], price="1")
        rep = await queue(ctx, "replace", {"limit_price": "1.05"}, trade_id=opened["trade_id"])
        await one_pass(ctx)
        req = await request(ctx, rep)
        assert req["state"] == "rejected" and "not in a modifiable state" in req["last_error"]


async def test_replacing_an_exit_keeps_it_the_trades_exit(sim: Simulator, make_context: Any) -> None:
    """The trade's working order is its exit: the replacement is an exit too (also when found after a crash)."""
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue(ctx, "open", {"symbol": "AAPL", "side": "buy", "qty": 10, "type": "market"})
        await one_pass(ctx)
        opened = await request(ctx, rid)
        sim.fill(opened["client_order_id"], price="100")
        await one_pass(ctx)
        await account_sync.account_pass(ctx, ctx.accounts[next(iter(ctx.accounts))])
        close = await queue(ctx, "close", {"type": "limit", "limit_price": 500}, trade_id=opened["trade_id"])
        await one_pass(ctx)
        exit_cid = (await request(ctx, close))["client_order_id"]
        rep = await queue(ctx, "replace", {"limit_price": 400}, trade_id=opened["trade_id"])
        await one_pass(ctx)
        assert (await request(ctx, rep))["state"] == "submitted"
        roles = [(r["status"], r["role"]) for r in await orders_of(ctx, opened["trade_id"])]
        assert roles == [("filled", "entry"), ("replaced", "exit"), ("new", "exit")]
        assert (await trade(ctx, opened["trade_id"]))["status"] == "closing"
        # found after a crash: the same role
        current = sim.order((await orders_of(ctx, opened["trade_id"]))[-1]["broker_order_id"])
        new = sim.exchange.replace(current, qty=None, limit_price=D(300), client_order_id="syncd-rep-crash-4")
        crashed = await queue(
            ctx, "replace", {"limit_price": 300}, trade_id=opened["trade_id"], cid="syncd-rep-crash-4",
            state="submitting", attempts=1,
        )  # fmt: skip
        await one_pass(ctx)
        assert (await request(ctx, crashed))["broker_order_id"] == new.id
        rows = await orders_of(ctx, opened["trade_id"])
        assert [(r["status"], r["role"]) for r in rows[-2:]] == [("replaced", "exit"), ("new", "exit")]
        assert sim.order(exit_cid).status == "replaced"
