"""Early assignment and exercise on real Postgres: an option leg that vanishes *before* its expiry.

An American-style short option may be assigned any day (a long one exercised). syncd looks for the
broker's record before it calls the trade closed outside syncd: Alpaca books its activities at
once (settled the same pass; with none, closed outside after one more sync), Tradier's history
comes the next morning (``closing`` / ``assignment pending`` while the stock in the underlying
says it was assigned, then settled; no such sign: closed outside at once).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal as D
from typing import Any

import pytest_asyncio

from syncd.brokers.base import BrokerError
from syncd.brokers.types import (
    AssetClass,
    OptionEvent,
    OptionEventKind,
    Order,
    OrderClass,
    OrderStatus,
    OrderType,
    Side,
)
from syncd.context import Account, Context
from syncd.cycles import account_sync
from syncd.trading.expiry import ET
from syncd.trading.expiry_store import settle_expirations
from syncd.trading.order_store import Link, Observation, apply_observations, lock_orders, reconcile_quantities
from syncd.trading.reconcile import Role
from tests.integration.test_account_sync import alpaca_settings
from tests.integration.test_expiry import EventBroker, children, make_trade, trade

# Far from expiry for the test's whole life: a vanished leg of these is an early one.
PUT_140 = "AAPL300118P00140000"
CALL_150 = "AAPL300118C00150000"
CALL_160 = "AAPL300118C00160000"


class TradierEventBroker(EventBroker):
    kind = "tradier"


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).astimezone(ET).date()


def rec(kind: OptionEventKind, qty: str, symbol: str | None, eid: str, price: str | None = None) -> OptionEvent:
    return OptionEvent(eid, kind, today(), D(qty), symbol, None if price is None else D(price))


@pytest_asyncio.fixture(loop_scope="function", params=["alpaca", "tradier"])
async def env(make_context: Any, request: Any) -> AsyncIterator[tuple[Context, Account, EventBroker]]:
    cm = make_context(accounts=[alpaca_settings("acct-0")], database={"pool_max": 4}, cycles={"auto_import": True})
    ctx: Context = await cm.__aenter__()
    broker = EventBroker("PA0000") if request.param == "alpaca" else TradierEventBroker("PA0000")
    ctx.accounts["acct-0"] = replace(ctx.accounts["acct-0"], broker=broker)
    try:
        yield ctx, ctx.accounts["acct-0"], broker
    finally:
        await cm.__aexit__(None, None, None)


async def held_then_gone(ctx: Context, account: Account, broker: EventBroker, held: dict[str, str]) -> None:
    """The contracts held and synced; then the broker's book without them (what a later pass sees)."""
    for symbol, qty in held.items():
        broker.hold(symbol, qty)
    await account_sync.sync_account(ctx, account)
    broker.positions = []


async def test_early_assignment_alpaca_settles_at_once_tradier_when_the_history_comes(
    env: tuple[Context, Account, EventBroker],
) -> None:
    """A short 140 put assigned before expiry: 100 AAPL bought at 140 appear the same day."""
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(PUT_140, "sell")], "1", "2.10")
    await held_then_gone(ctx, account, broker, {PUT_140: "-1"})
    broker.hold("AAPL", "100", "140")
    nightly = broker.kind == "tradier"
    if nightly:
        await account_sync.account_pass(ctx, account)  # no history yet; the shares say "assigned"
        row = await trade(ctx, tid)
        assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"], row["closed_at"]) == (
            "closing",
            "assignment pending",
            None,
            None,
            None,
        )
        async with ctx.pool.acquire() as conn, conn.transaction():  # tradeCycle leaves it alone
            assert await reconcile_quantities(conn, ctx.queries, account.id, margin=dt.timedelta(0)) == []
        await account_sync.account_pass(ctx, account)  # still no record: still pending
        assert (await trade(ctx, tid))["close_reason"] == "assignment pending"
        broker.option_events = [rec(OptionEventKind.ASSIGNED, "1", None, "tradier-asgn")]  # the next morning
    else:
        broker.option_events = [
            rec(OptionEventKind.ASSIGNED, "1", PUT_140, "20300110::asgn-1"),
            rec(OptionEventKind.STOCK, "100", "AAPL", "20300110::asgn-1", "140"),
        ]
    stats = await account_sync.account_pass(ctx, account)
    assert stats["expiry_trades"] >= 1
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"], row["quantity"]) == (
        "closed",
        "assigned",
        0,
        D("210.00"),
        0,
    )
    (child,) = await children(ctx, tid)
    assert (child["symbol"], child["strategy"], child["quantity"], child["entry_price"], child["source"]) == (
        "AAPL",
        "LONG_STOCK",
        100,
        140,
        "assignment",
    )
    taken = await ctx.pool.fetch("SELECT kind, trade_id FROM trade_events WHERE account_id = $1", account.id)
    assert {(e["kind"], e["trade_id"]) for e in taken if e["kind"] == "assigned"} == {("assigned", tid)}
    # applied once: the next pass changes nothing and asks the broker nothing
    calls = broker.event_calls
    assert "expiry_trades" not in await account_sync.account_pass(ctx, account)
    assert broker.event_calls == calls
    assert await ctx.pool.fetchval("SELECT count(*) FROM trades WHERE parent_trade_id = $1", tid) == 1


async def test_early_exercise_of_a_long_call(env: tuple[Context, Account, EventBroker]) -> None:
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(CALL_150, "buy")], "2", "3.00")
    await held_then_gone(ctx, account, broker, {CALL_150: "2"})
    broker.hold("AAPL", "200", "150")
    broker.option_events = [rec(OptionEventKind.EXERCISED, "-2", None if broker.kind == "tradier" else CALL_150, "ex")]
    await account_sync.account_pass(ctx, account)
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"]) == (
        "closed",
        "exercised",
        0,
        D("-600.00"),
    )
    (child,) = await children(ctx, tid)
    assert (child["strategy"], child["quantity"], child["entry_price"]) == ("LONG_STOCK", 200, 150)


async def test_vanished_leg_with_no_record_is_still_closed_outside(env: tuple[Context, Account, EventBroker]) -> None:
    """Closed by hand: no record, no stock change. Tradier at once; Alpaca after one more sync."""
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(CALL_150, "sell"), (CALL_160, "buy")], "1", "-1.20")
    await held_then_gone(ctx, account, broker, {CALL_150: "-1", CALL_160: "1"})
    await account_sync.account_pass(ctx, account)
    assert broker.event_calls == 1  # the records were asked for before calling it closed outside
    if broker.kind == "alpaca":
        assert (await trade(ctx, tid))["status"] == "open"  # activities are immediate: one more sync
        await account_sync.account_pass(ctx, account)
        assert broker.event_calls == 2
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"], row["quantity"]) == (
        "closed",
        "position closed outside syncd",
        None,
        None,
        0,
    )
    assert await children(ctx, tid) == []
    # closed: nothing more is asked
    await account_sync.account_pass(ctx, account)
    assert broker.event_calls == (2 if broker.kind == "alpaca" else 1)


async def test_stock_change_the_other_way_is_no_sign_of_assignment(
    env: tuple[Context, Account, EventBroker],
) -> None:
    """A short put's assignment buys shares; shares sold that day are no sign of it (Tradier)."""
    ctx, account, broker = env
    broker.hold("AAPL", "300", "150")
    tid = await make_trade(ctx, account, [(PUT_140, "sell")], "1", "2.00")
    await held_then_gone(ctx, account, broker, {PUT_140: "-1", "AAPL": "300"})
    broker.hold("AAPL", "200", "150")
    await account_sync.account_pass(ctx, account)
    if broker.kind == "alpaca":
        await account_sync.account_pass(ctx, account)
    assert (await trade(ctx, tid))["close_reason"] == "position closed outside syncd"


async def test_nothing_vanished_asks_the_broker_nothing(env: tuple[Context, Account, EventBroker]) -> None:
    ctx, account, broker = env
    await make_trade(ctx, account, [(PUT_140, "sell")], "1", "2.00")
    broker.hold(PUT_140, "-1")
    for _ in range(2):
        await account_sync.account_pass(ctx, account)
    assert broker.event_calls == 0


async def test_broker_unavailable_leaves_the_trade_as_it_is(env: tuple[Context, Account, EventBroker]) -> None:
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(PUT_140, "sell")], "1", "2.00")
    await held_then_gone(ctx, account, broker, {PUT_140: "-1"})

    async def down(since: dt.date) -> list[OptionEvent]:
        broker.event_calls += 1
        raise BrokerError("activities: 503")

    broker.list_option_events = down  # type: ignore[method-assign]
    for _ in range(3):
        await account_sync.sync_account(ctx, account)
        assert await settle_expirations(ctx, account) == []
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"]) == ("open", None)
    assert broker.event_calls == 3


async def test_pending_assignment_without_a_record_for_a_week_closes_outside(
    env: tuple[Context, Account, EventBroker],
) -> None:
    ctx, account, broker = env
    if broker.kind != "tradier":
        return
    tid = await make_trade(ctx, account, [(PUT_140, "sell")], "1", "2.00")
    await held_then_gone(ctx, account, broker, {PUT_140: "-1"})
    broker.hold("AAPL", "100", "140")
    await account_sync.account_pass(ctx, account)
    assert (await trade(ctx, tid))["close_reason"] == "assignment pending"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    assert tid in await settle_expirations(ctx, account, now=later)
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"]) == ("closed", "position closed outside syncd", None)


async def test_a_fill_newer_than_the_positions_is_no_vanished_leg(env: tuple[Context, Account, EventBroker]) -> None:
    """The entry just filled and no sync has shown the contract yet: not a vanished leg, nothing asked."""
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(PUT_140, "sell")], "0", "2.00")
    await account_sync.sync_account(ctx, account)
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    entry = Order(
        broker_order_id="entry-1",
        client_order_id=None,
        symbol=PUT_140,
        side=Side.SELL,
        type=OrderType.LIMIT,
        order_class=OrderClass.SIMPLE,
        qty=D(1),
        filled_qty=D(1),
        status=OrderStatus.FILLED,
        asset_class=AssetClass.US_OPTION,
        filled_avg_price=D("2.00"),
        submitted_at=now,
        updated_at=now,
        filled_at=now,
    )
    async with ctx.pool.acquire() as conn, conn.transaction():
        await lock_orders(conn, ctx.queries, account.id)
        await apply_observations(
            conn, ctx.queries, account.id, [Observation(entry)], links={"entry-1": Link(tid, Role.ENTRY)}
        )
    assert await settle_expirations(ctx, account) == []
    assert broker.event_calls == 0
    assert (await trade(ctx, tid))["status"] == "open"


async def test_accountsync_and_tradecycle_at_once_apply_an_early_record_once(
    env: tuple[Context, Account, EventBroker],
) -> None:
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(CALL_150, "sell")], "1", "3.00")
    await held_then_gone(ctx, account, broker, {CALL_150: "-1"})
    broker.hold("AAPL", "-100", "150")
    await account_sync.sync_account(ctx, account)
    symbol = None if broker.kind == "tradier" else CALL_150
    broker.option_events = [rec(OptionEventKind.ASSIGNED, "1", symbol, "x")]
    first, second = await asyncio.gather(settle_expirations(ctx, account), settle_expirations(ctx, account))
    assert sorted([len(first), len(second)]) == [0, 2]  # one closed the trade and opened the stock trade
    assert (await trade(ctx, tid))["close_reason"] == "assigned"
    (child,) = await children(ctx, tid)
    assert (child["strategy"], child["quantity"], child["entry_price"]) == ("SHORT_STOCK", 100, 150)
    assert await ctx.pool.fetchval("SELECT count(*) FROM trade_events") == 1
    assert await settle_expirations(ctx, account) == []


async def test_a_leg_two_live_trades_claim_is_left_to_verify(env: tuple[Context, Account, EventBroker]) -> None:
    """Two trades on one contract, gone: neither is closed or settled by guess; the broker is not asked."""
    ctx, account, broker = env
    first = await make_trade(ctx, account, [(PUT_140, "sell")], "1", "2.00")
    second = await make_trade(ctx, account, [(PUT_140, "sell")], "1", "2.20")
    await held_then_gone(ctx, account, broker, {PUT_140: "-2"})
    for _ in range(2):
        await account_sync.account_pass(ctx, account)
    assert [(await trade(ctx, t))["status"] for t in (first, second)] == ["open", "open"]
    assert broker.event_calls == 0
