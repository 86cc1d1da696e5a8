"""Option expiry, assignment and exercise on real Postgres: accountSync passes over a scripted broker.

Each lifecycle path: expired worthless, assigned, exercised, a spread half assigned, the pending
state until the broker's record arrives (Tradier: the next morning), records without a symbol,
and each record applied once whichever pass (accountSync, tradeCycle) sees it first.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal as D
from typing import Any

import pytest
import pytest_asyncio

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
from syncd.trading.expiry_store import settle_expirations
from syncd.trading.order_store import Link, Observation, apply_observations, lock_orders, reconcile_quantities
from syncd.trading.reconcile import Role
from tests.integration.test_account_sync import ScriptedBroker, alpaca_settings

CALL_150 = "AAPL260116C00150000"
CALL_160 = "AAPL260116C00160000"
PUT_140 = "AAPL260116P00140000"
PUT_135 = "AAPL260116P00135000"
EXP = dt.date(2026, 1, 16)


class EventBroker(ScriptedBroker):
    """A scripted account whose option records are scripted too."""

    def __init__(self, account_number: str) -> None:
        super().__init__(account_number)
        self.option_events: list[OptionEvent] = []
        self.event_calls = 0

    async def list_option_events(self, since: dt.date) -> list[OptionEvent]:
        self.event_calls += 1
        return [e for e in self.option_events if e.on >= since]


def ev(kind: OptionEventKind, qty: str, symbol: str | None, eid: str, price: str | None = None) -> OptionEvent:
    return OptionEvent(eid, kind, EXP, D(qty), symbol, None if price is None else D(price))


@pytest_asyncio.fixture(loop_scope="function")
async def env(make_context: Any) -> AsyncIterator[tuple[Context, Account, EventBroker]]:
    cm = make_context(accounts=[alpaca_settings("acct-0")], database={"pool_max": 4}, cycles={"auto_import": True})
    ctx: Context = await cm.__aenter__()
    broker = EventBroker("PA0000")
    ctx.accounts["acct-0"] = replace(ctx.accounts["acct-0"], broker=broker)
    try:
        yield ctx, ctx.accounts["acct-0"], broker
    finally:
        await cm.__aexit__(None, None, None)


async def make_trade(ctx: Context, account: Account, legs: list[tuple[str, str]], qty: str, entry: str) -> int:
    strategy = "LONG_CALL" if len(legs) == 1 else "SPREAD"
    tid = int(
        await ctx.pool.fetchval(
            "INSERT INTO trades (account_id, symbol, strategy, status, quantity, entry_price, opened_at)"
            " VALUES ($1, 'AAPL', $2, 'open', $3, $4, now() - interval '30 days') RETURNING id",
            account.id,
            strategy,
            D(qty),
            D(entry),
        )
    )
    for i, (symbol, side) in enumerate(legs):
        await ctx.pool.execute(
            "INSERT INTO trade_legs (trade_id, leg_index, symbol, side) VALUES ($1, $2, $3, $4)", tid, i, symbol, side
        )
    return tid


async def trade(ctx: Context, tid: int) -> dict[str, Any]:
    row = await ctx.pool.fetchrow("SELECT * FROM trades WHERE id = $1", tid)
    assert row is not None
    return dict(row)


async def children(ctx: Context, tid: int) -> list[dict[str, Any]]:
    rows = await ctx.pool.fetch("SELECT * FROM trades WHERE parent_trade_id = $1 ORDER BY id", tid)
    return [dict(r) for r in rows]


async def expire(ctx: Context, account: Account, broker: EventBroker, held: dict[str, str]) -> None:
    """The positions the contracts held before expiry, synced; then the broker's book after it."""
    for symbol, qty in held.items():
        broker.hold(symbol, qty)
    await account_sync.sync_account(ctx, account)
    broker.positions = []


async def test_expired_worthless_closes_with_exit_zero_and_the_whole_loss(
    env: tuple[Context, Account, EventBroker],
) -> None:
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(CALL_150, "buy")], "2", "1.25")
    await expire(ctx, account, broker, {CALL_150: "2"})
    broker.option_events = [ev(OptionEventKind.EXPIRED, "-2", CALL_150, "20260116::exp-1")]
    stats = await account_sync.account_pass(ctx, account)
    assert stats["expiry_trades"] == 1
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"], row["quantity"]) == (
        "closed",
        "expired",
        0,
        D("-250.00"),
        0,
    )
    assert row["closed_at"] is not None
    events = await ctx.pool.fetch("SELECT * FROM trade_events WHERE account_id = $1", account.id)
    assert [(e["broker_event_id"], e["kind"], e["trade_id"]) for e in events] == [("20260116::exp-1", "expired", tid)]
    # seen again: nothing changes, nothing is recorded twice; a closed trade asks the broker nothing
    calls = broker.event_calls
    assert "expiry_trades" not in await account_sync.account_pass(ctx, account)
    assert await ctx.pool.fetchval("SELECT count(*) FROM trade_events") == 1
    assert broker.event_calls == calls


async def test_pending_until_the_record_arrives_then_closed(env: tuple[Context, Account, EventBroker]) -> None:
    """Tradier's history is nightly: until the record comes the trade says what is known."""
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(PUT_140, "sell")], "1", "2.10")
    await expire(ctx, account, broker, {PUT_140: "-1"})
    await account_sync.account_pass(ctx, account)
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"], row["closed_at"]) == (
        "closing",
        "expiration pending",
        None,
        None,
        None,
    )
    # tradeCycle's reconcile does not close it as "closed outside syncd" meanwhile
    async with ctx.pool.acquire() as conn, conn.transaction():
        assert await reconcile_quantities(conn, ctx.queries, account.id, margin=dt.timedelta(0)) == []
    assert (await trade(ctx, tid))["status"] == "closing"
    broker.option_events = [ev(OptionEventKind.EXPIRED, "1", None, "2026-01-16:OPTEXP:1::Expired:0")]
    await account_sync.account_pass(ctx, account)
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"]) == (
        "closed",
        "expired",
        0,
        D("210.00"),
    )


async def test_short_call_assigned_leaves_a_stock_trade(env: tuple[Context, Account, EventBroker]) -> None:
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(CALL_150, "sell")], "2", "3.00")
    await expire(ctx, account, broker, {CALL_150: "-2"})
    broker.hold("AAPL", "-200", "150")
    broker.option_events = [
        ev(OptionEventKind.ASSIGNED, "2", CALL_150, "20260116::asn"),
        ev(OptionEventKind.STOCK, "-200", "AAPL", "20260116::asn", price="150"),
    ]
    await account_sync.account_pass(ctx, account)  # auto_import is on: the shares are not imported apart
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"]) == (
        "closed",
        "assigned",
        0,
        D("600.00"),
    )
    (child,) = await children(ctx, tid)
    assert (child["symbol"], child["strategy"], child["source"], child["status"]) == (
        "AAPL",
        "SHORT_STOCK",
        "assignment",
        "open",
    )
    assert (child["quantity"], child["entry_price"]) == (200, 150)
    legs = await ctx.pool.fetch("SELECT symbol, side, ratio FROM trade_legs WHERE trade_id = $1", child["id"])
    assert [tuple(r) for r in legs] == [("AAPL", "sell", 1)]
    assert await ctx.pool.fetchval("SELECT count(*) FROM trades WHERE source = 'import'") == 0
    stock = await ctx.pool.fetchrow("SELECT trade_id, child_trade_id FROM trade_events WHERE kind = 'stock'")
    assert stock is not None and tuple(stock) == (tid, child["id"])


async def test_long_put_exercised(env: tuple[Context, Account, EventBroker]) -> None:
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(PUT_140, "buy")], "1", "4.00")
    await expire(ctx, account, broker, {PUT_140: "1"})
    broker.hold("AAPL", "-100", "140")
    broker.option_events = [ev(OptionEventKind.EXERCISED, "-1", PUT_140, "20260116::exc")]
    await account_sync.account_pass(ctx, account)
    row = await trade(ctx, tid)
    assert (row["close_reason"], row["exit_price"], row["realized_pnl"]) == ("exercised", 0, D("-400.00"))
    (child,) = await children(ctx, tid)
    assert (child["strategy"], child["quantity"], child["entry_price"]) == ("SHORT_STOCK", 100, 140)


async def test_spread_with_one_leg_assigned_and_the_other_expired(env: tuple[Context, Account, EventBroker]) -> None:
    """The common real case: a put credit spread, the short put assigned, the long put expired."""
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(PUT_140, "sell"), (PUT_135, "buy")], "1", "-1.50")
    await expire(ctx, account, broker, {PUT_140: "-1", PUT_135: "1"})
    broker.hold("AAPL", "100", "140")
    broker.option_events = [
        ev(OptionEventKind.ASSIGNED, "1", PUT_140, "20260116::asn"),
        ev(OptionEventKind.EXPIRED, "-1", PUT_135, "20260116::exp"),
    ]
    await account_sync.account_pass(ctx, account)
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"]) == (
        "closed",
        "assigned",
        0,
        D("150.00"),
    )
    (child,) = await children(ctx, tid)
    assert (child["strategy"], child["quantity"], child["entry_price"]) == ("LONG_STOCK", 100, 140)
    rows = await ctx.pool.fetch("SELECT symbol, kind, trade_id FROM trade_events ORDER BY symbol")
    assert [tuple(r) for r in rows] == [(PUT_135, "expired", tid), (PUT_140, "assigned", tid)]


async def test_both_legs_in_the_money_net_to_cash(env: tuple[Context, Account, EventBroker]) -> None:
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(CALL_150, "buy"), (CALL_160, "sell")], "1", "4.00")
    await expire(ctx, account, broker, {CALL_150: "1", CALL_160: "-1"})
    broker.option_events = [
        ev(OptionEventKind.EXERCISED, "-1", CALL_150, "a"),
        ev(OptionEventKind.ASSIGNED, "1", CALL_160, "b"),
    ]
    await account_sync.account_pass(ctx, account)
    row = await trade(ctx, tid)
    assert (row["close_reason"], row["exit_price"], row["realized_pnl"]) == ("assigned", 10, D("600.00"))
    assert await children(ctx, tid) == []


async def test_each_record_applied_once_whichever_pass_sees_it_first(
    env: tuple[Context, Account, EventBroker],
) -> None:
    """accountSync and tradeCycle both settle; at once, the orders lock lets one apply the record."""
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(CALL_150, "sell")], "1", "3.00")
    await expire(ctx, account, broker, {CALL_150: "-1"})
    await account_sync.sync_account(ctx, account)
    broker.hold("AAPL", "-100", "150")
    await account_sync.sync_account(ctx, account)
    broker.option_events = [ev(OptionEventKind.ASSIGNED, "1", CALL_150, "x")]
    first, second = await asyncio.gather(settle_expirations(ctx, account), settle_expirations(ctx, account))
    assert sorted([len(first), len(second)]) == [0, 2]  # one closed the trade and opened the stock trade
    assert len(await children(ctx, tid)) == 1
    assert await ctx.pool.fetchval("SELECT count(*) FROM trade_events") == 1
    assert await settle_expirations(ctx, account) == []


async def test_not_yet_expired_vanished_option_still_closes_outside(
    env: tuple[Context, Account, EventBroker],
) -> None:
    """Before the close of the expiration day a vanished leg with no assignment record was closed by
    hand: still closed outside syncd, once a later sync (Alpaca) still shows it gone and the broker's
    activities still say nothing (docs/guarantees.md, early assignment)."""
    ctx, account, broker = env
    later = "AAPL991217C00150000"
    tid = await make_trade(ctx, account, [(later, "buy")], "1", "1")
    await expire(ctx, account, broker, {later: "1"})
    await account_sync.sync_account(ctx, account)
    assert await settle_expirations(ctx, account) == []  # asked the activities once: nothing yet, it waits
    assert broker.event_calls == 1
    async with ctx.pool.acquire() as conn, conn.transaction():  # tradeCycle leaves it to the records
        assert await reconcile_quantities(conn, ctx.queries, account.id, margin=dt.timedelta(0)) == []
    assert (await trade(ctx, tid))["status"] == "open"
    await account_sync.sync_account(ctx, account)
    assert await settle_expirations(ctx, account) == [tid]
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"], row["quantity"]) == (
        "closed",
        "position closed outside syncd",
        None,
        0,
    )


async def test_an_imported_stock_trade_is_adopted(env: tuple[Context, Account, EventBroker]) -> None:
    """Tradier: the shares appear (and are imported) before the nightly record says where they came from."""
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(PUT_140, "sell")], "1", "2.00")
    await expire(ctx, account, broker, {PUT_140: "-1"})
    broker.hold("AAPL", "100", "140")
    await account_sync.account_pass(ctx, account)
    assert (await trade(ctx, tid))["close_reason"] == "expiration pending"
    imported = await ctx.pool.fetchval("SELECT id FROM trades WHERE source = 'import'")
    assert imported is not None
    broker.option_events = [ev(OptionEventKind.ASSIGNED, "1", None, "tradier-asgn")]
    await account_sync.account_pass(ctx, account)
    assert (await trade(ctx, tid))["close_reason"] == "assigned"
    (child,) = await children(ctx, tid)
    assert (child["id"], child["source"]) == (imported, "assignment")


async def test_a_pending_trade_stays_pending_when_its_orders_are_seen_again(
    env: tuple[Context, Account, EventBroker],
) -> None:
    """An order of the trade re-derived meanwhile (a late poll answer) does not reopen it."""
    ctx, account, broker = env
    tid = await make_trade(ctx, account, [(PUT_140, "sell")], "1", "2.10")
    await expire(ctx, account, broker, {PUT_140: "-1"})
    await account_sync.account_pass(ctx, account)
    assert (await trade(ctx, tid))["close_reason"] == "expiration pending"
    at = dt.datetime(2026, 1, 2, 15, 0, tzinfo=dt.UTC)
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
        filled_avg_price=D("2.10"),
        submitted_at=at,
        updated_at=at,
        filled_at=at,
    )
    async with ctx.pool.acquire() as conn, conn.transaction():
        await lock_orders(conn, ctx.queries, account.id)
        await apply_observations(
            conn, ctx.queries, account.id, [Observation(entry)], links={"entry-1": Link(tid, Role.ENTRY)}
        )
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["exit_price"]) == ("closing", "expiration pending", None)


async def test_trade_cycle_settles_only_where_a_trade_may_be_settled(
    env: tuple[Context, Account, EventBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """tradeCycle asks expiry settlement only when its first read found a candidate (or the pass
    changed an order or trade since); an expired trade is still settled by the next pass."""
    from syncd.cycles import trade_cycle

    ctx, account, broker = env
    asked: list[int] = []
    settle = settle_expirations

    async def counted(c: Context, a: Account, now: dt.datetime | None = None) -> list[int]:
        asked.append(a.id)
        return await settle(c, a, now)

    async def no_orders(status: str = "all", since: dt.datetime | None = None) -> list[Order]:
        return []

    monkeypatch.setattr(trade_cycle, "settle_expirations", counted)
    monkeypatch.setattr(broker, "list_orders", no_orders)
    for _ in range(2):
        await trade_cycle.account_pass(ctx, account)
    assert asked == []  # no trade it could settle: not asked

    tid = await make_trade(ctx, account, [(CALL_150, "buy")], "2", "1.25")
    await expire(ctx, account, broker, {CALL_150: "2"})
    await account_sync.sync_account(ctx, account)  # the leg vanished: a candidate
    broker.option_events = [ev(OptionEventKind.EXPIRED, "-2", CALL_150, "20260116::exp-1")]
    await trade_cycle.account_pass(ctx, account)
    assert asked == [account.id]
    row = await trade(ctx, tid)
    assert (row["status"], row["close_reason"], row["realized_pnl"]) == ("closed", "expired", D("-250.00"))
    await trade_cycle.account_pass(ctx, account)
    assert asked == [account.id]  # closed: nothing left to settle
