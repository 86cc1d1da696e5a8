"""Rows between Python and SQL go by name (issue 12), not by position.

The bulk writes pass each write's rows as one array of a composite type of 0012 or 0013, built from
mappings by attribute name (accountSync's upserts and events go as JSON arrays, checked field by
field below); the stored positions are read by column name. These tests guard
that a reordered column cannot shift a value: every builder names every attribute of its type
(asyncpg sends a missing one as NULL), a misspelt name is refused, values arrive exact, and a
SELECT's column order does not matter to ``stored_rows``.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest

from syncd.brokers.types import (
    AssetClass,
    Balances,
    Greeks,
    LegRequest,
    Order,
    OrderClass,
    OrderStatus,
    OrderType,
    Quote,
    Side,
)
from syncd.context import account_row
from syncd.cycles import account_sync, importer, monitor_cycle
from syncd.cycles.account_sync import PositionEvent, PositionRow
from syncd.cycles.importer import PlannedLeg, PlannedTrade
from syncd.daemon.passes import PassResult, pass_row
from syncd.settings import AccountSettings
from syncd.trading import order_store
from syncd.trading.order_store import _Change, _Event
from syncd.trading.outbox_store import leg_row
from syncd.trading.pnl import ExitDecision
from syncd.trading.reconcile import OrderSnapshot, Role, TradeState, TradeStatus

T0 = dt.datetime(2025, 12, 3, 15, 0, 0, 123456, tzinfo=dt.UTC)
BIG = Decimal("12345678901234567890.123456789012345")


async def _attributes(pool: asyncpg.Pool[Any], type_name: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT a.attname FROM pg_attribute a JOIN pg_type t ON t.typrelid = a.attrelid"
        " WHERE t.oid = to_regtype($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        type_name,
    )
    assert rows, f"no composite type {type_name}"
    return [r["attname"] for r in rows]


def _leg() -> Order:
    return Order(
        broker_order_id="leg-1",
        client_order_id=None,
        symbol="AAPL251219C00150000",
        side=Side.BUY,
        type=OrderType.LIMIT,
        order_class=OrderClass.MLEG,
        qty=Decimal("1"),
        filled_qty=Decimal("0"),
        status=OrderStatus.NEW,
        asset_class=AssetClass.US_OPTION,
        ratio_qty=1,
    )


def _order() -> Order:
    return Order(
        broker_order_id="o-1",
        client_order_id="c-1",
        symbol="AAPL",
        side=None,
        type=OrderType.LIMIT,
        order_class=OrderClass.MLEG,
        qty=Decimal("1"),
        filled_qty=Decimal("0"),
        status=OrderStatus.NEW,
        limit_price=Decimal("1.25"),
        submitted_at=T0,
        legs=(_leg(),),
    )


def _position() -> PositionRow:
    return PositionRow(
        symbol="AAPL",
        asset_class="us_equity",
        underlying="AAPL",
        option_type=None,
        strike=None,
        expiration=dt.date(2025, 12, 19),
        multiplier=Decimal("1"),
        quantity=BIG,
        qty_available=Decimal("-0.5"),
        avg_entry_price=Decimal("150.000001"),
        cost_basis=None,
        current_price=None,
        market_value=Decimal("0"),
        unrealized_pl=None,
    )


def _built_rows() -> dict[str, dict[str, Any]]:
    """One row of each builder, by the composite type it is sent as."""
    order = _order()
    snap = OrderSnapshot.of(order)
    change = _Change(order=order, before=None, after=snap, trade_id=7, role=Role.ENTRY, client_order_id="c-1")
    event = _Event("new", None, None, snap, None, T0, "poll")
    plan = PlannedTrade("AAPL", "LONG_STOCK", Decimal("3"), None, (PlannedLeg("AAPL", "buy"),), T0)
    trades, legs = importer._insert_args([plan])
    balances = Balances("b-1", Decimal("1"), Decimal("2"), Decimal("3"), Decimal("4"), Decimal("5"))
    return {
        "order_row": order_store._order_row("o-1", change),
        "order_leg_row": order_store._leg_row("o-1", order, order.legs[0], snap),
        "order_event_row": order_store._event_row(1, event),
        "trade_row": order_store._trade_row(7, TradeState(status=TradeStatus.OPEN, quantity=Decimal("3"))),
        "balances_row": account_sync.balances_row(balances),
        "import_trade_row": trades[0],
        "import_leg_row": legs[0],
        **_built_rows_0013(),
    }


def _built_rows_0013() -> dict[str, dict[str, Any]]:
    """The builders of the writes that passed parallel arrays before issue 12."""
    greeks = Greeks(
        delta=Decimal("0.5"), gamma=None, theta=Decimal("-0.01"), vega=BIG, implied_volatility=Decimal("0.2")
    )
    quote = Quote("AAPL", Decimal("1.10"), Decimal("1.20"), None, at=T0, greeks=greeks)
    account = AccountSettings(name="a-1", broker="tradier", token="t", account_id="VA1", sandbox=True)
    result = PassResult("a-1", 7, False, T0, T0, 0.5, error="BadBrokerData: x", stats={"positions": 3})
    return {
        "quote_row": monitor_cycle.quote_row("AAPL", quote),
        "trade_mark_row": monitor_cycle.trade_mark_row(7, BIG, None),
        "trade_exit_row": monitor_cycle.trade_exit_row(ExitDecision(7, "take_profit", Decimal("2.5"))),
        "trade_quantity_row": order_store._quantity_row(7, BIG),
        "trade_leg_row": leg_row(1, LegRequest("AAPL251219C00150000", Side.SELL, 2)),
        "account_row": account_row(account),
        "pass_row": pass_row(result),
    }


def test_the_0013_builders_carry_the_values_they_are_given() -> None:
    """Guards issue 12: each value lands in the attribute of its name (not the one next to it)."""
    rows = _built_rows_0013()
    assert rows["quote_row"]["price"] == Decimal("1.15") and rows["quote_row"]["last"] is None
    assert (rows["quote_row"]["vega"], rows["quote_row"]["gamma"], rows["quote_row"]["iv"]) == (
        BIG,
        None,
        Decimal("0.2"),
    )
    assert rows["trade_mark_row"] == {"id": 7, "current_price": BIG, "floating_pnl": None}
    assert rows["trade_exit_row"] == {"trade_id": 7, "reason": "take_profit", "qty": Decimal("2.5")}
    assert rows["trade_leg_row"] == {"leg_index": 1, "symbol": "AAPL251219C00150000", "side": "sell", "ratio": 2}
    assert rows["account_row"] == {"name": "a-1", "broker": "tradier", "broker_account_id": "VA1", "paper": True}
    assert rows["pass_row"]["error"] == "BadBrokerData: x" and json.loads(rows["pass_row"]["stats"]) == {"positions": 3}
    assert monitor_cycle.quote_row("MSFT", None)["bid"] is None


async def test_every_builder_names_every_attribute_of_its_type(db_pool: asyncpg.Pool[Any]) -> None:
    """A builder that left out an attribute would send NULL for it silently: each names them all."""
    for type_name, row in _built_rows().items():
        assert sorted(row) == sorted(await _attributes(db_pool, type_name)), type_name


async def test_a_misspelt_attribute_is_refused(db_pool: asyncpg.Pool[Any]) -> None:
    """A name the type does not have fails the write instead of landing anywhere."""
    balances = Balances("b-1", Decimal("1"), Decimal("2"), Decimal("3"), Decimal("4"), Decimal("5"))
    row = account_sync.balances_row(balances)
    row["equty"] = row.pop("equity")
    with pytest.raises(asyncpg.DataError, match="equty"):
        await db_pool.fetch("SELECT * FROM unnest($1::balances_row[])", [row])


async def test_account_sync_apply_lands_each_field_in_the_column_of_its_name(db_pool: asyncpg.Pool[Any]) -> None:
    """accountSync's rows go as JSON arrays (a field's place, not its name): every field of a row whose
    values all differ lands in the column of its name, exact, and so does every field of an event."""
    from syncd.db.queries import load_queries

    q = load_queries()
    row = PositionRow(
        symbol="AAPL251219C00150000",
        asset_class="us_option",
        underlying="AAPL",
        option_type="call",
        strike=Decimal("150"),
        expiration=dt.date(2025, 12, 19),
        multiplier=Decimal("100"),
        quantity=BIG,
        qty_available=Decimal("-0.5"),
        avg_entry_price=Decimal("1.250000001"),
        cost_basis=Decimal("375.10"),
        current_price=Decimal("1.5"),
        market_value=Decimal("450"),
        unrealized_pl=Decimal("-7.25"),
    )
    assert len(set(row[:14])) == 14 == len(account_sync.UPSERT_FIELDS)
    event = PositionEvent(row.symbol, "opened", Decimal("0.000"), BIG)
    account = await db_pool.fetchval("INSERT INTO accounts (name, broker) VALUES ('named', 'alpaca') RETURNING id")
    balances = Balances("b-1", Decimal("1"), Decimal("2"), Decimal("3"), Decimal("4"), Decimal("5"))

    def apply(rows: bytes, events: bytes) -> tuple[Any, ...]:
        return (
            q["account_sync_apply"],
            account,
            1,
            None,
            rows,
            [],
            events,
            account_sync.balances_row(balances),
            None,
            [],
            "{}",
            None,
            1,
            [],
            None,
        )

    written = await db_pool.fetchrow(*apply(account_sync.upsert_rows([row]), account_sync.event_rows([event])))
    assert written is not None and (written["upserted"], written["events"]) == (1, 1)
    columns = ", ".join(account_sync.UPSERT_FIELDS)
    stored = await db_pool.fetchrow(f"SELECT {columns} FROM portfolio_positions WHERE account_id = $1", account)
    assert stored is not None
    assert dict(stored.items()) == dict(zip(account_sync.UPSERT_FIELDS, row[:14], strict=True))
    assert str(stored["cost_basis"]) == "375.10"  # the scale too
    ev = await db_pool.fetchrow(
        "SELECT symbol, kind, old_quantity, new_quantity FROM position_events WHERE account_id = $1", account
    )
    assert ev is not None and tuple(ev) == (event.symbol, event.kind, event.old_quantity, event.new_quantity)
    nothing = PositionRow("NONE", "us_equity", "NONE", None, None, None, Decimal(1), Decimal(2), Decimal(2), None, None)
    await db_pool.fetchrow(*apply(account_sync.upsert_rows([nothing]), b"[]"))
    nulls = await db_pool.fetchrow(
        "SELECT option_type, strike, expiration, avg_entry_price, cost_basis, current_price, market_value,"
        " unrealized_pl FROM portfolio_positions WHERE account_id = $1 AND symbol = 'NONE'",
        account,
    )
    assert nulls is not None and set(nulls.values()) == {None}  # JSON null is SQL NULL, not the text 'null'


async def test_account_sync_apply_inserts_new_rows_plainly_and_fails_closed_on_a_stored_one(
    db_pool: asyncpg.Pool[Any],
) -> None:
    """Rows flagged new (0023) are inserted without a conflict probe, the others upserted; a row flagged
    new whose symbol is stored after all fails the whole statement: nothing of it is written (rows,
    events, snapshot, the account's marks). Rows of 0022's form (no flag) are upserted, new or not."""
    from syncd.db.queries import load_queries

    q = load_queries()
    account = await db_pool.fetchval("INSERT INTO accounts (name, broker) VALUES ('fresh', 'alpaca') RETURNING id")

    def balances(equity: int) -> dict[str, Any]:
        return account_sync.balances_row(
            Balances("b-1", Decimal(equity), Decimal(2), Decimal(3), Decimal(4), Decimal(5))
        )

    def stock(symbol: str, qty: str) -> PositionRow:
        n = Decimal(qty)
        return PositionRow(symbol, "us_equity", symbol, None, None, None, Decimal(1), n, n, Decimal(10), n * 10)

    async def apply(rows: bytes, events: list[PositionEvent], equity: int = 1) -> Any:
        return await db_pool.fetchrow(
            q["account_sync_apply"], account, 1, None, rows, [], account_sync.event_rows(events),
            balances(equity), None, [], "{}", bytes([equity]) * 16, 3, [], None,
        )  # fmt: skip

    def opened(symbol: str, qty: str) -> PositionEvent:
        return PositionEvent(symbol, "opened", Decimal(0), Decimal(qty))

    rows = account_sync.upsert_rows
    first = await apply(rows([stock("AAA", "1"), stock("BBB", "2")], {"AAA", "BBB"}), [opened("AAA", "1")])
    assert first is not None and first["upserted"] == 2
    again = await apply(rows([stock("AAA", "5"), stock("CCC", "3")], {"CCC"}), [])  # AAA stored: upserted
    assert again is not None and again["upserted"] == 2
    held = "SELECT symbol, quantity, updated_at FROM portfolio_positions WHERE account_id = $1 ORDER BY symbol"
    state = """SELECT (SELECT count(*) FROM position_events WHERE account_id = $1),
                      (SELECT count(*) FROM account_snapshots WHERE account_id = $1),
                      (SELECT (sync_answer, sync_positions_state, last_synced_at)::text FROM accounts WHERE id = $1)"""
    before = [tuple(r) for r in await db_pool.fetch(held, account)]
    assert [r[:2] for r in before] == [("AAA", Decimal(5)), ("BBB", Decimal(2)), ("CCC", Decimal(3))]
    state_before = tuple(await db_pool.fetchrow(state, account) or ())
    with pytest.raises(asyncpg.UniqueViolationError):  # BBB is stored after all; new balances, events too
        await apply(rows([stock("BBB", "9"), stock("DDD", "4")], {"BBB", "DDD"}), [opened("DDD", "4")], equity=7)
    assert [tuple(r) for r in await db_pool.fetch(held, account)] == before
    assert tuple(await db_pool.fetchrow(state, account) or ()) == state_before
    # 0022's form (14 fields, no flag): upserted, a stored row and a new one alike
    old_form = msgspec.json.Encoder(decimal_format="string").encode(
        [tuple(stock("BBB", "7"))[:14], tuple(stock("EEE", "8"))[:14]]
    )
    row = await apply(old_form, [opened("EEE", "8")])
    assert row is not None and (row["upserted"], row["events"]) == (2, 1)
    quantities = "SELECT symbol, quantity FROM portfolio_positions WHERE account_id = $1 AND symbol IN ('BBB', 'EEE')"
    assert sorted(tuple(r) for r in await db_pool.fetch(quantities, account)) == [("BBB", 7), ("EEE", 8)]


async def test_rows_arrive_exact_and_by_name(db_pool: asyncpg.Pool[Any]) -> None:
    """Decimals stay exact (no float), timestamps timestamptz to the microsecond, NULLs NULL."""
    for type_name, row in _built_rows().items():
        got = await db_pool.fetchrow(f"SELECT (u).* FROM unnest($1::{type_name}[]) AS u", [row])
        assert got is not None
        assert dict(got.items()) == row, type_name


async def test_stored_rows_are_read_by_column_name(db_pool: asyncpg.Pool[Any]) -> None:
    """``stored_rows`` reads records by column name: a SELECT in another column order gives the same row."""
    expected = _position()._replace(marks_ours=False)
    types = {"strike": "numeric", "expiration": "date", "marks_ours": "boolean"}
    names = list(reversed(PositionRow._fields))
    select = ", ".join(
        f"${i}::{types.get(n, 'text' if n in ('symbol', 'asset_class', 'underlying', 'option_type') else 'numeric')}"
        f" AS {n}"
        for i, n in enumerate(names, start=1)
    )
    record = await db_pool.fetchrow(f"SELECT {select}", *[getattr(expected, n) for n in names])
    assert record is not None
    assert account_sync.stored_rows([record]) == {expected.symbol: expected}
    partial = await db_pool.fetchrow("SELECT 'X'::text AS symbol")
    assert partial is not None
    with pytest.raises(ValueError, match="is not in list"):
        account_sync.stored_rows([partial])  # a column missing from the SELECT is an error, not a shifted value
