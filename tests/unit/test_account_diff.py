"""accountSync's pure part: the diff of stored rows against the broker's answer, and answer checks."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.brokers.occ import parse_occ
from syncd.brokers.types import AssetClass, Balances, Position
from syncd.cycles.account_sync import (
    PositionRow,
    balances_changed,
    diff_positions,
    event_kind,
    position_row,
    position_rows,
)
from syncd.db import events

D = Decimal


def stock(symbol: str, qty: str, **kw: object) -> PositionRow:
    base = PositionRow(
        symbol=symbol,
        asset_class="us_equity",
        underlying=symbol,
        option_type=None,
        strike=None,
        expiration=None,
        multiplier=D(1),
        quantity=D(qty),
        qty_available=D(qty),
        avg_entry_price=D("10"),
        cost_basis=D(qty) * 10,
    )
    return base._replace(**kw)  # type: ignore[arg-type]


def by_symbol(*rows: PositionRow) -> dict[str, PositionRow]:
    return {r.symbol: r for r in rows}


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        ("0", "5", "opened"),
        ("0", "-5", "opened"),
        ("5", "0", "closed"),
        ("-5", "0", "closed"),
        ("5", "8", "increased"),
        ("-5", "-8", "increased"),
        ("5", "2", "reduced"),
        ("-5", "-2", "reduced"),
        ("5", "-5", "flipped"),
        ("-3", "7", "flipped"),
        ("5", "5", None),
        ("5", "5.000", None),
    ],
)
def test_event_kind(old: str, new: str, kind: str | None) -> None:
    assert event_kind(D(old), D(new)) == kind


def test_new_position_is_upserted_and_opened() -> None:
    diff = diff_positions({}, [stock("AAPL", "10")])
    assert [r.symbol for r in diff.upserts] == ["AAPL"]
    assert [(e.symbol, e.kind, e.old_quantity, e.new_quantity) for e in diff.events] == [
        ("AAPL", "opened", D(0), D(10))
    ]
    assert diff.deletes == []


def test_identical_answer_changes_nothing() -> None:
    stored = by_symbol(stock("AAPL", "10"), stock("MSFT", "-3"))
    diff = diff_positions(stored, [stock("AAPL", "10.00"), stock("MSFT", "-3")])
    assert diff.empty
    assert diff.events == []
    assert diff.unchanged == 2


def test_vanished_position_is_deleted_and_closed() -> None:
    diff = diff_positions(by_symbol(stock("AAPL", "10"), stock("MSFT", "-3")), [stock("AAPL", "10")])
    assert diff.deletes == ["MSFT"]
    assert [(e.symbol, e.kind, e.old_quantity, e.new_quantity) for e in diff.events] == [
        ("MSFT", "closed", D(-3), D(0))
    ]
    assert diff.upserts == []


def test_flip_long_to_short() -> None:
    diff = diff_positions(by_symbol(stock("AAPL", "10")), [stock("AAPL", "-4")])
    assert [r.quantity for r in diff.upserts] == [D(-4)]
    assert [(e.kind, e.old_quantity, e.new_quantity) for e in diff.events] == [("flipped", D(10), D(-4))]


def test_change_without_quantity_change_is_upserted_without_event() -> None:
    stored = by_symbol(stock("AAPL", "10"))
    diff = diff_positions(stored, [stock("AAPL", "10", qty_available=D(4))])
    assert [r.qty_available for r in diff.upserts] == [D(4)]
    assert diff.events == []


def test_marks_alone_rewrite_a_row_monitor_has_not_quoted() -> None:
    stored = by_symbol(stock("AAPL", "10", current_price=D("11"), marks_ours=True))
    diff = diff_positions(stored, [stock("AAPL", "10", current_price=D("12"))])
    assert [r.current_price for r in diff.upserts] == [D(12)]
    assert diff.events == []


def test_marks_alone_leave_a_quoted_row_to_monitor_cycle() -> None:
    """monitorCycle owns the marks once it has quoted a row: accountSync must not fight it."""
    stored = by_symbol(stock("AAPL", "10", current_price=D("11"), marks_ours=False))
    diff = diff_positions(stored, [stock("AAPL", "10", current_price=D("12"), market_value=D("120"))])
    assert diff.empty
    assert diff.unchanged == 1


def test_marks_the_broker_does_not_give_are_no_change() -> None:
    """Tradier's positions carry no marks: a stored price is not a difference."""
    stored = by_symbol(stock("AAPL", "10", current_price=D("11"), market_value=D("110")))
    diff = diff_positions(stored, [stock("AAPL", "10")])
    assert diff.empty


def test_changed_symbols_are_sorted_and_unique() -> None:
    stored = by_symbol(stock("B", "1"), stock("C", "1"))
    diff = diff_positions(stored, [stock("A", "1"), stock("B", "2")])
    assert diff.changed_symbols == ["A", "B", "C"]


# -- checking and converting the broker's answer ----------------------------------------------------


def position(symbol: str, qty: str, asset_class: AssetClass = AssetClass.US_EQUITY, **kw: object) -> Position:
    return Position(
        symbol=symbol,
        asset_class=asset_class,
        quantity=D(qty),
        qty_available=D(qty),
        avg_entry_price=D("1.5"),
        cost_basis=D("150"),
        **kw,  # type: ignore[arg-type]
    )


def test_option_row_fields_come_from_the_occ_spec() -> None:
    spec = parse_occ("AAPL260116C00150000")
    row = position_row(position("AAPL260116C00150000", "-2", AssetClass.US_OPTION, option=spec))
    assert (row.underlying, row.option_type, row.strike, row.expiration, row.multiplier) == (
        "AAPL",
        "call",
        D("150"),
        dt.date(2026, 1, 16),
        D(100),
    )
    assert row.asset_class == "us_option"


def test_option_spec_given_by_the_adapter_is_used() -> None:
    spec = parse_occ("SPY251219P00400500")
    row = position_row(position("SPY251219P00400500", "1", AssetClass.US_OPTION, option=spec))
    assert (row.option_type, row.strike) == ("put", D("400.5"))


def test_stock_row_has_multiplier_one_and_no_option_fields() -> None:
    row = position_row(position("AAPL", "5"))
    assert (row.underlying, row.option_type, row.strike, row.expiration, row.multiplier) == (
        "AAPL",
        None,
        None,
        None,
        D(1),
    )


def test_flat_positions_are_dropped() -> None:
    assert [r.symbol for r in position_rows([position("AAPL", "0"), position("MSFT", "1")])] == ["MSFT"]


# -- balances ------------------------------------------------------------------------------------------


def balances(equity: str = "1000") -> Balances:
    return Balances("PA1", D(equity), D("500"), D("2000"), D("500"), D("0"))


def test_balances_changed_without_a_snapshot() -> None:
    assert balances_changed(None, balances())
    assert balances_changed({"equity": None}, balances())


def test_balances_unchanged_and_changed() -> None:
    snap = {
        "equity": D("1000.00"),
        "cash": D("500"),
        "buying_power": D("2000"),
        "long_market_value": D("500"),
        "short_market_value": D("0"),
    }
    assert not balances_changed(snap, balances())
    assert balances_changed(snap, balances("1000.01"))


# -- NOTIFY payloads -----------------------------------------------------------------------------------


def test_notify_payloads_one_per_key_or_one_star() -> None:
    """One shape for listeners: {"kind", "account", "key"}; past PER_KEY_MAX a single "*" payload with a count."""
    few = events.payloads("position", "acct-1", ["AAPL", "MSFT", "AAPL"])
    assert [json.loads(p) for p in few] == [
        {"kind": "position", "account": "acct-1", "key": "AAPL"},
        {"kind": "position", "account": "acct-1", "key": "MSFT"},
    ]
    many = events.payloads("position", "acct-1", [f"SYM{i:05d}C00150000" for i in range(2000)])
    assert [json.loads(p) for p in many] == [{"kind": "position", "account": "acct-1", "key": "*", "count": 2000}]
    assert all(len(p.encode()) < 8000 for p in few + many)
    assert events.payloads("trade", "acct-1", []) == []


@given(
    st.text(max_size=20),
    st.lists(st.one_of(st.text(max_size=12), st.integers()), max_size=8),
)
def test_notify_payloads_are_payload_texts(account: str, keys: list[str | int]) -> None:
    """The batch builds each payload once from a shared head: the very text ``payload`` writes, any name or key."""
    want = [events.payload("trade", account, k) for k in dict.fromkeys(keys)]
    assert events.payloads("trade", account, keys) == want
    shapes = [{"kind": "trade", "account": account, "key": k} for k in dict.fromkeys(keys)]
    assert [json.loads(p) for p in want] == shapes


# -- properties ------------------------------------------------------------------------------------------

_symbols = st.sampled_from([f"S{i}" for i in range(12)])
_qty = st.integers(min_value=-50, max_value=50).map(D)
_book = st.dictionaries(_symbols, _qty)


def _rows(book: dict[str, Decimal]) -> dict[str, PositionRow]:
    return {s: stock(s, str(q)) for s, q in book.items() if q != 0}


@given(old=_book, new=_book)
def test_applying_the_diff_yields_the_broker_state(old: dict[str, Decimal], new: dict[str, Decimal]) -> None:
    stored, fetched = _rows(old), _rows(new)
    diff = diff_positions(stored, fetched.values())
    result = {s: r for s, r in stored.items() if s not in diff.deletes}
    result.update({r.symbol: r for r in diff.upserts})
    assert result == fetched
    # Exactly one event per changed quantity, consistent with old and new.
    changes = {s for s in stored.keys() | fetched.keys() if _q(stored, s) != _q(fetched, s)}
    assert sorted(e.symbol for e in diff.events) == sorted(changes)
    for e in diff.events:
        assert (e.old_quantity, e.new_quantity) == (_q(stored, e.symbol), _q(fetched, e.symbol))
        assert e.kind == event_kind(e.old_quantity, e.new_quantity)
    assert diff.unchanged + len(diff.upserts) == len(fetched)


@given(book=_book)
def test_diff_of_a_state_with_itself_is_empty(book: dict[str, Decimal]) -> None:
    rows = _rows(book)
    diff = diff_positions(rows, rows.values())
    assert diff.empty
    assert diff.events == []


def _q(rows: dict[str, PositionRow], symbol: str) -> Decimal:
    row = rows.get(symbol)
    return row.quantity if row else D(0)
