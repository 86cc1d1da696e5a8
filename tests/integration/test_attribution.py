"""A trade owns what its own fills bought, never shares held outside syncd (issue 10, item 1).

Against the simulator on real Postgres, both brokers, stocks and spreads: the account holds
positions bought by hand, syncd opens a trade through the outbox on the same symbols, and the
trade's quantity, what monitorCycle may exit and what a ``close`` sells stay what the trade's
own orders filled. Shares sold by hand shrink a trade; shares bought by hand never grow it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal
from typing import Any, Literal

import pytest

from syncd.context import Context
from syncd.cycles import account_sync, monitor_cycle, trade_cycle
from syncd.cycles.importer import import_positions
from syncd.cycles.verify import verify_account
from syncd.sim import Simulator, occ_symbol
from tests.outbox_rows import queue, request, trade
from tests.simfixtures import sim_fixture

D = Decimal

sim = sim_fixture(seed=23, accounts=2, positions_per_account=0, fill_on_submit=False)

BROKERS = [pytest.param(0, "alpaca", id="alpaca"), pytest.param(1, "tradier", id="tradier")]
BrokerName = Literal["alpaca", "tradier"]


async def settle(ctx: Context) -> None:
    """The fills so far aged past the reconcile margin, then an accountSync pass: the trades are settled."""
    await ctx.pool.execute(
        "UPDATE orders SET filled_at = filled_at - interval '5 minutes', updated_at = updated_at - interval '5 minutes'"
    )
    await account_sync.account_pass(ctx, next(iter(ctx.accounts.values())))


async def sync(ctx: Context) -> None:
    """:func:`settle`, then a tradeCycle pass (which reconciles trades with the positions)."""
    await settle(ctx)
    await trade_cycle.account_pass(ctx, next(iter(ctx.accounts.values())))


async def trade_pass(ctx: Context) -> dict[str, Any]:
    return await trade_cycle.account_pass(ctx, next(iter(ctx.accounts.values())))


async def open_trade(ctx: Context, sim: Simulator, payload: dict[str, Any], *, fill: Any = None) -> tuple[int, Any]:
    rid = await queue(ctx, "open", payload)
    await trade_pass(ctx)
    req = await request(ctx, rid)
    assert req["state"] == "submitted", req["last_error"]
    sim.fill(req["broker_order_id"], qty=fill)
    await trade_pass(ctx)
    return int(req["trade_id"]), req


async def close_sent(ctx: Context, sim: Simulator, tid: int, payload: dict[str, Any] | None = None) -> Decimal:
    """Queue a close for ``tid``, place it; the quantity the broker received."""
    rid = await queue(ctx, "close", payload or {"type": "market"}, trade_id=tid)
    await trade_pass(ctx)
    req = await request(ctx, rid)
    assert req["state"] == "submitted", (req["state"], req["last_error"])
    return D(sim.order(req["broker_order_id"]).qty)


@pytest.mark.parametrize(("index", "broker"), BROKERS)
async def test_outside_shares_never_join_a_trade_nor_its_close(
    sim: Simulator, make_context: Any, index: int, broker: Literal["alpaca", "tradier"]
) -> None:
    """Regression: 250 WMT bought by hand + an outbox open for 4 WMT: the trade was reconciled to 254 and its
    close sold all 254. The trade holds 4, its close sells 4, the 250 stay untracked and importable."""
    sim.add_position(index, "WMT", 250, "90")
    async with make_context(accounts=[sim.account_settings(index, broker=broker)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        tid, _ = await open_trade(ctx, sim, {"symbol": "WMT", "side": "buy", "qty": 4, "type": "market"})
        await sync(ctx)
        await sync(ctx)
        t = await trade(ctx, tid)
        assert (t["status"], t["quantity"]) == ("open", 4)
        assert await ctx.pool.fetchval("SELECT quantity FROM portfolio_positions WHERE symbol = 'WMT'") == 254
        view = await ctx.pool.fetchrow(
            "SELECT quantity, available_quantity FROM v_trade_monitor WHERE trade_id = $1", tid
        )
        assert (view["quantity"], view["available_quantity"]) == (4, 4)
        mismatch = await ctx.pool.fetchrow(
            "SELECT kind, position_quantity, trade_quantity FROM v_position_mismatches WHERE symbol = 'WMT'"
        )
        assert tuple(mismatch) == ("quantity_mismatch", 254, 4)  # 250 untracked

        assert await close_sent(ctx, sim, tid) == 4  # never the 254 the account holds
        creq = await ctx.pool.fetchrow("SELECT * FROM order_requests WHERE kind = 'close'")
        sim.fill(creq["broker_order_id"])
        await sync(ctx)
        t = await trade(ctx, tid)
        assert (t["status"], t["quantity"]) == ("closed", 0)
        assert await ctx.pool.fetchval("SELECT quantity FROM portfolio_positions WHERE symbol = 'WMT'") == 250


@pytest.mark.parametrize(("index", "broker"), BROKERS)
async def test_partial_fills_count_and_a_hand_sale_shrinks_the_trade(
    sim: Simulator, make_context: Any, index: int, broker: Literal["alpaca", "tradier"]
) -> None:
    """A partly filled then cancelled entry holds what filled (6 of 10), whatever the account holds besides;
    selling by hand below that shrinks the trade, and buying back by hand does not grow it again."""
    sim.add_position(index, "KO", 100, "60")
    async with make_context(accounts=[sim.account_settings(index, broker=broker)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        rid = await queue(ctx, "open", {"symbol": "KO", "side": "buy", "qty": 10, "type": "limit", "limit_price": 1})
        await trade_pass(ctx)
        req = await request(ctx, rid)
        sim.fill(req["broker_order_id"], qty=6, price="1")
        await sync(ctx)
        t = await trade(ctx, req["trade_id"])
        assert (t["status"], t["quantity"]) == ("open", 6)  # the order still works: 6 filled so far
        sim.cancel(req["broker_order_id"])
        await sync(ctx)
        await sync(ctx)
        assert (await trade(ctx, req["trade_id"]))["quantity"] == 6

        hand = sim.place_outside_order(index, "KO", "sell", 103)  # 106 -> 3 held: the trade can own at most 3
        if hand.is_working:
            sim.fill(hand.id)
        await sync(ctx)
        await sync(ctx)
        assert await ctx.pool.fetchval("SELECT quantity FROM portfolio_positions WHERE symbol = 'KO'") == 3
        assert (await trade(ctx, req["trade_id"]))["quantity"] == 3

        sim.add_position(index, "KO", 50, "60")  # bought back by hand: not the trade's
        await sync(ctx)
        await sync(ctx)
        assert (await trade(ctx, req["trade_id"]))["quantity"] == 3
        assert await close_sent(ctx, sim, req["trade_id"], {"type": "market", "qty": 40}) == 3


def _spread(sim: Simulator) -> tuple[str, str]:
    exp = sim.market.expirations()[4]
    spot = D(f"{sim.market.spot('AAPL'):.2f}")
    step = D(str(sim.market.strike_step(float(spot))))
    strike = (spot / step).to_integral_value() * step
    return occ_symbol("AAPL", exp, "call", strike), occ_symbol("AAPL", exp, "call", strike + 2 * step)


@pytest.mark.parametrize(("index", "broker"), BROKERS)
async def test_spread_trade_owns_its_contracts_not_a_hand_bought_spread(
    sim: Simulator, make_context: Any, index: int, broker: Literal["alpaca", "tradier"]
) -> None:
    """The account holds 5 of a call spread bought by hand; syncd opens 2 more of the same spread. The trade
    holds 2, monitorCycle's exit and a close are for 2, and import-positions makes the other 5 a trade."""
    long_c, short_c = _spread(sim)
    sim.add_position(index, long_c, 5, "3.00")
    sim.add_position(index, short_c, -5, "1.00")
    async with make_context(
        accounts=[sim.account_settings(index, broker=broker)], trading={"enabled": True, "auto_exits": True}
    ) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        payload = {
            "legs": [{"symbol": long_c, "side": "buy"}, {"symbol": short_c, "side": "sell"}],
            "qty": 2,
            "type": "market",
            "strategy": "BULL_CALL_DEBIT",
            "stop_loss_pct": 10,
        }
        tid, _ = await open_trade(ctx, sim, payload)
        await sync(ctx)
        await sync(ctx)
        t = await trade(ctx, tid)
        assert (t["status"], t["quantity"]) == ("open", 2)
        held = await ctx.pool.fetch("SELECT symbol, quantity FROM portfolio_positions ORDER BY symbol")
        assert {r["symbol"]: r["quantity"] for r in held} == {long_c: 7, short_c: -7}
        view = await ctx.pool.fetchrow(
            "SELECT quantity, available_quantity FROM v_trade_monitor WHERE trade_id = $1", tid
        )
        assert (view["quantity"], view["available_quantity"]) == (2, 2)

        await settle(ctx)
        imported = await import_positions(ctx, acct)  # the 5 bought by hand become a trade of their own
        assert [(i.plan.strategy, i.plan.quantity) for i in imported] == [("BULL_CALL_DEBIT", Decimal(5))]
        assert await import_positions(ctx, acct) == []  # idempotent: the surplus is covered now
        await ctx.pool.execute("UPDATE trades SET stop_loss_pct = NULL WHERE id = $1", imported[0].trade_id)

        # the spread loses value: monitorCycle's stop-loss queues an exit for the trade's 2, not the 7 held
        sim.set_price(long_c, "0.10", "0.20")
        sim.set_price(short_c, "0.05", "0.10")
        await monitor_cycle.account_pass(ctx, acct)
        exit_req = await ctx.pool.fetchrow("SELECT * FROM order_requests WHERE kind = 'close' AND trade_id = $1", tid)
        assert exit_req is not None and exit_req["payload"]["qty"] == 2
        await trade_pass(ctx)
        exit_req = await request(ctx, exit_req["id"])
        assert exit_req["state"] == "submitted", exit_req["last_error"]
        assert D(sim.order(exit_req["broker_order_id"]).qty) == 2


async def test_a_trade_without_fills_is_still_reconciled_to_the_broker(sim: Simulator, make_context: Any) -> None:
    """The origin report's case keeps working: a trade an app wrote (no fill record) saying 1 while the account
    holds 67, the only claim on its symbol, follows the broker to 67, and its close sells 67."""
    sim.add_position(0, "AAPL", 67, "100")
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        tid = int(
            await ctx.pool.fetchval(
                "INSERT INTO trades (account_id, symbol, strategy, status, quantity) "
                "VALUES ($1, 'AAPL', 'LONG_STOCK', 'open', 1) RETURNING id",
                acct.id,
            )
        )
        await ctx.pool.execute("INSERT INTO trade_legs (trade_id, symbol, side) VALUES ($1, 'AAPL', 'buy')", tid)
        await sync(ctx)
        assert (await trade(ctx, tid))["quantity"] == 67
        assert await close_sent(ctx, sim, tid) == 67


async def test_import_takes_only_the_untracked_surplus(sim: Simulator, make_context: Any) -> None:
    """import-positions makes a trade of what no trade claims: 250 of 254 WMT, and not again."""
    sim.add_position(0, "WMT", 250, "90")
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        tid, _ = await open_trade(ctx, sim, {"symbol": "WMT", "side": "buy", "qty": 4, "type": "market"})
        await sync(ctx)
        await settle(ctx)
        imported = await import_positions(ctx, acct)
        assert [(i.plan.strategy, i.plan.quantity) for i in imported] == [("LONG_STOCK", Decimal(250))]
        assert await import_positions(ctx, acct) == []
        assert await ctx.pool.fetch("SELECT * FROM v_position_mismatches") == []
        assert (await trade(ctx, tid))["quantity"] == 4


async def _app_trade(ctx: Context, symbol: str, quantity: int, *, legs: bool) -> int:
    """A trade an app inserted (no fill record), with or without its trade_legs row."""
    acct = next(iter(ctx.accounts.values()))
    tid = int(
        await ctx.pool.fetchval(
            "INSERT INTO trades (account_id, symbol, strategy, status, quantity) "
            "VALUES ($1, $2, 'LONG_STOCK', 'open', $3) RETURNING id",
            acct.id,
            symbol,
            quantity,
        )
    )
    if legs:
        await ctx.pool.execute("INSERT INTO trade_legs (trade_id, symbol, side) VALUES ($1, $2, 'buy')", tid, symbol)
    return tid


async def test_an_app_trade_without_legs_is_still_reconciled_to_the_broker(sim: Simulator, make_context: Any) -> None:
    """Regression: an app's trade without trade_legs rows (1 recorded, 67 held, the only claim) was never
    reconciled: monitorCycle and a close already took it as holding 67, yet trades.quantity stayed 1, verify
    reported 66 untracked that import-positions would not import. It follows the broker to 67 like a trade
    with legs; one whose symbol is not held is left open (read only through its symbol, never closed by it)."""
    sim.add_position(0, "AAPL", 67, "100")
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        tid = await _app_trade(ctx, "AAPL", 1, legs=False)
        absent = await _app_trade(ctx, "NOPE", 3, legs=False)
        await sync(ctx)
        assert (await trade(ctx, tid))["quantity"] == 67
        t = await trade(ctx, absent)
        assert (t["status"], t["quantity"]) == ("open", 3)
        assert [r["symbol"] for r in await ctx.pool.fetch("SELECT symbol FROM v_position_mismatches")] == ["NOPE"]
        assert [f.symbol for f in (await verify_account(ctx, acct)).findings] == ["NOPE"]
        assert await import_positions(ctx, acct) == []
        assert await close_sent(ctx, sim, tid) == 67


async def test_a_trade_without_legs_is_a_claim_on_its_symbol(sim: Simulator, make_context: Any) -> None:
    """Regression: a trade with legs and an app's trade without legs on the same symbol: the legless one was not
    counted as a claim, so the other (no fill record) was reconciled to the whole position (1 -> 67). Both
    claim AAPL, so neither is set from the broker; verify reports the sum."""
    sim.add_position(0, "AAPL", 67, "100")
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        legged = await _app_trade(ctx, "AAPL", 1, legs=True)
        legless = await _app_trade(ctx, "AAPL", 2, legs=False)
        await sync(ctx)
        await sync(ctx)
        assert ((await trade(ctx, legged))["quantity"], (await trade(ctx, legless))["quantity"]) == (1, 2)
        mismatch = await ctx.pool.fetchrow("SELECT kind, position_quantity, trade_quantity FROM v_position_mismatches")
        assert tuple(mismatch) == ("quantity_mismatch", 67, 3)


async def test_shares_bought_after_an_import_are_importable_too(sim: Simulator, make_context: Any) -> None:
    """Regression: once the surplus next to a syncd trade was imported (an import trade has no fill record),
    shares bought by hand afterwards were reported untracked by verify, with the hint to import them, but
    import-positions never took them: a trade without fills counted as a claim that follows the broker, though
    sharing the symbol it keeps its quantity. The new 10 become a trade of their own, the others stay."""
    sim.add_position(0, "WMT", 250, "90")
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        tid, _ = await open_trade(ctx, sim, {"symbol": "WMT", "side": "buy", "qty": 4, "type": "market"})
        await sync(ctx)
        await settle(ctx)
        [first] = await import_positions(ctx, acct)
        assert first.plan.quantity == 250
        hand = sim.place_outside_order(0, "WMT", "buy", 10)  # bought by hand later: 264 held
        if hand.is_working:
            sim.fill(hand.id)
        await sync(ctx)
        await sync(ctx)
        assert [f.untracked for f in (await verify_account(ctx, acct)).findings] == [10]
        await settle(ctx)
        assert [i.plan.quantity for i in await import_positions(ctx, acct)] == [10]
        assert await import_positions(ctx, acct) == []
        assert await ctx.pool.fetch("SELECT * FROM v_position_mismatches") == []
        assert (await trade(ctx, tid))["quantity"] == 4
        assert (await trade(ctx, first.trade_id))["quantity"] == 250


async def test_a_trade_just_closed_is_not_imported_back_from_a_stale_sync(sim: Simulator, make_context: Any) -> None:
    """Regression: a syncd trade's close filled (the trade closed) while the last accountSync still showed the
    shares it sold (fetched before the fill): import-positions, as auto_import runs it right after that sync,
    made the sold 4 WMT a new trade. Until a sync newer than the close (with the reconcile margin) shows the
    position, a symbol a trade just ended on is not imported; then what is really held is."""
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        tid, _ = await open_trade(ctx, sim, {"symbol": "WMT", "side": "buy", "qty": 4, "type": "market"})
        await sync(ctx)
        assert await ctx.pool.fetchval("SELECT quantity FROM portfolio_positions WHERE symbol = 'WMT'") == 4
        rid = await queue(ctx, "close", {"type": "market"}, trade_id=tid)
        await trade_pass(ctx)
        sim.fill((await request(ctx, rid))["broker_order_id"])
        await trade_pass(ctx)  # the close's fill is recorded: the trade is closed, the mirror still says 4
        assert (await trade(ctx, tid))["status"] == "closed"
        assert await import_positions(ctx, acct) == []
        sim.add_position(0, "WMT", 7, "90")  # bought by hand afterwards: this one is untracked
        await settle(ctx)
        assert [(i.plan.symbol, i.plan.quantity) for i in await import_positions(ctx, acct)] == [("WMT", D(7))]


async def test_an_import_next_to_a_syncd_trade_is_shrunk_by_a_hand_sale(sim: Simulator, make_context: Any) -> None:
    """Regression: the 250 imported next to a syncd trade of 4 kept claiming 250 after 200 were sold by hand
    (sharing the symbol, a trade without fills was never reconciled). It is capped at the 54 held; the syncd
    trade keeps its 4."""
    sim.add_position(0, "WMT", 250, "90")
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        tid, _ = await open_trade(ctx, sim, {"symbol": "WMT", "side": "buy", "qty": 4, "type": "market"})
        await sync(ctx)
        await settle(ctx)
        [imported] = await import_positions(ctx, acct)
        hand = sim.place_outside_order(0, "WMT", "sell", 200)
        if hand.is_working:
            sim.fill(hand.id)
        await sync(ctx)
        await sync(ctx)
        assert await ctx.pool.fetchval("SELECT quantity FROM portfolio_positions WHERE symbol = 'WMT'") == 54
        assert (await trade(ctx, imported.trade_id))["quantity"] == 54
        assert (await trade(ctx, tid))["quantity"] == 4


@pytest.mark.parametrize(("index", "broker"), BROKERS)
async def test_a_spread_sold_by_hand_shrinks_the_trade_and_one_bought_back_does_not_grow_it(
    sim: Simulator, make_context: Any, index: int, broker: BrokerName
) -> None:
    """A spread trade of 2 next to 5 bought by hand: 6 spreads sold by hand leave 1, the trade shrinks to 1;
    buying 8 back by hand does not grow it; a close for 5 sells 1."""
    long_c, short_c = _spread(sim)
    sim.add_position(index, long_c, 5, "3.00")
    sim.add_position(index, short_c, -5, "1.00")
    async with make_context(accounts=[sim.account_settings(index, broker=broker)], trading={"enabled": True}) as made:
        ctx = replace(made, reconcile_margin=dt.timedelta(hours=-1))  # every pass sees settled fills
        await account_sync.account_pass(ctx, next(iter(ctx.accounts.values())))
        legs = [{"symbol": long_c, "side": "buy"}, {"symbol": short_c, "side": "sell"}]
        tid, _ = await open_trade(ctx, sim, {"legs": legs, "qty": 2, "type": "market", "strategy": "BULL_CALL_DEBIT"})
        await sync(ctx)
        assert (await trade(ctx, tid))["quantity"] == 2
        for held in (1, 9):
            sim.add_position(index, long_c, held, "3.00")
            sim.add_position(index, short_c, -held, "1.00")
            await sync(ctx)
            await sync(ctx)
            assert (await trade(ctx, tid))["quantity"] == 1
        assert await close_sent(ctx, sim, tid, {"type": "market", "qty": 5}) == 1


@pytest.mark.parametrize(("index", "broker"), BROKERS)
async def test_a_close_while_the_entry_still_works_sells_what_filled(
    sim: Simulator, make_context: Any, index: int, broker: BrokerName
) -> None:
    """Next to 100 KO bought by hand, an entry for 10 fills 6 and still works: a close sells the 6, never the
    106 held; the entry's last 4 then make the trade 4."""
    sim.add_position(index, "KO", 100, "60")
    async with make_context(accounts=[sim.account_settings(index, broker=broker)], trading={"enabled": True}) as ctx:
        await account_sync.account_pass(ctx, next(iter(ctx.accounts.values())))
        rid = await queue(ctx, "open", {"symbol": "KO", "side": "buy", "qty": 10, "type": "limit", "limit_price": 1})
        await trade_pass(ctx)
        req = await request(ctx, rid)
        sim.fill(req["broker_order_id"], qty=6, price="1")
        await sync(ctx)
        tid = req["trade_id"]
        assert await close_sent(ctx, sim, tid) == 6
        sim.fill((await ctx.pool.fetchrow("SELECT * FROM order_requests WHERE kind = 'close'"))["broker_order_id"])
        await sync(ctx)
        sim.fill(req["broker_order_id"], price="1")
        await sync(ctx)
        await sync(ctx)
        t = await trade(ctx, tid)
        assert (t["status"], t["quantity"]) == ("open", 4)
        assert await ctx.pool.fetchval("SELECT quantity FROM portfolio_positions WHERE symbol = 'KO'") == 104


async def test_a_stop_loss_exit_sells_the_trade_not_the_shares_held_outside(sim: Simulator, make_context: Any) -> None:
    """monitorCycle's stop-loss for a trade of 4 WMT next to 250 bought by hand queues and places 4."""
    sim.add_position(0, "WMT", 250, "90")
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True, "auto_exits": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        payload = {"symbol": "WMT", "side": "buy", "qty": 4, "type": "market", "stop_loss_pct": 5}
        tid, _ = await open_trade(ctx, sim, payload)
        await sync(ctx)
        sim.set_price("WMT", "1.00", "1.02")
        await account_sync.account_pass(ctx, acct)
        await monitor_cycle.account_pass(ctx, acct)
        exit_req = await ctx.pool.fetchrow("SELECT * FROM order_requests WHERE kind = 'close' AND trade_id = $1", tid)
        assert exit_req is not None and exit_req["payload"]["qty"] == 4
        await trade_pass(ctx)
        assert D(sim.order((await request(ctx, exit_req["id"]))["broker_order_id"]).qty) == 4
