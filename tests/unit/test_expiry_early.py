"""The pure rules of an early assignment or exercise (syncd/trading/expiry.py): an option leg that
vanished before its expiry takes only an assignment or exercise record, dated around the day it
vanished; without one, :func:`early_verdict` says wait, pending or closed outside."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

from syncd.brokers.types import OptionEvent, OptionEventKind, Side
from syncd.trading.expiry import Candidate, EarlyVerdict, all_options, early_verdict, settle
from syncd.trading.reconcile import TradeLeg, TradeSpec, TradeState, TradeStatus

PUT_140 = "AAPL260116P00140000"
CALL_150 = "AAPL260116C00150000"
CALL_160 = "AAPL260116C00160000"
VANISHED = dt.date(2026, 1, 5)  # eleven days before the expiry
NOW = dt.datetime(2026, 1, 6, 15, 0, tzinfo=dt.UTC)


def ev(kind: OptionEventKind, qty: str, symbol: str | None, on: dt.date, eid: str = "e") -> OptionEvent:
    return OptionEvent(eid, kind, on, D(qty), symbol)


def early(legs: list[TradeLeg], qty: str, entry: str, vanished_on: dt.date = VANISHED) -> Candidate:
    state = TradeState(status=TradeStatus.OPEN, quantity=D(qty), entry_price=D(entry))
    return Candidate(1, TradeSpec.of(legs), state, vanished_on=vanished_on)


def test_an_early_record_without_a_symbol_settles_a_vanished_short_put() -> None:
    c = early([TradeLeg(PUT_140, Side.SELL)], "1", "2.10")
    # Tradier: dated the Friday before a Monday the leg was seen gone
    (s,) = settle([c], [ev(OptionEventKind.ASSIGNED, "1", None, VANISHED - dt.timedelta(days=3))], {}, NOW)
    assert (s.state.status, s.state.close_reason, s.state.exit_price, s.state.realized_pnl) == (
        TradeStatus.CLOSED,
        "assigned",
        D(0),
        D("210.00"),
    )
    (child,) = s.children
    assert (child.symbol, child.side, child.quantity, child.entry_price) == ("AAPL", Side.BUY, D(100), D(140))


def test_an_early_leg_takes_no_expiry_and_no_record_dated_far_from_the_day_it_vanished() -> None:
    c = early([TradeLeg(PUT_140, Side.SELL)], "1", "2.10")
    assert settle([c], [ev(OptionEventKind.EXPIRED, "1", None, VANISHED)], {}, NOW) == []
    assert settle([c], [ev(OptionEventKind.EXPIRED, "1", PUT_140, VANISHED)], {}, NOW) == []
    assert settle([c], [ev(OptionEventKind.ASSIGNED, "1", None, VANISHED - dt.timedelta(days=5))], {}, NOW) == []
    assert settle([c], [ev(OptionEventKind.ASSIGNED, "1", None, VANISHED + dt.timedelta(days=8))], {}, NOW) == []
    assert settle([c], [ev(OptionEventKind.ASSIGNED, "-1", None, VANISHED)], {}, NOW) == []  # a long leg's sign
    # a named record is taken by its symbol, whatever its date
    (s,) = settle([c], [ev(OptionEventKind.ASSIGNED, "1", PUT_140, VANISHED - dt.timedelta(days=9))], {}, NOW)
    assert s.state.close_reason == "assigned"


def test_an_early_spread_needs_a_record_for_every_leg() -> None:
    c = early([TradeLeg(CALL_150, Side.SELL), TradeLeg(CALL_160, Side.BUY)], "1", "-1.20")
    assigned = ev(OptionEventKind.ASSIGNED, "1", CALL_150, VANISHED, "a")
    assert settle([c], [assigned], {}, NOW) == []  # the long leg closed by hand: no record for it
    exercised = ev(OptionEventKind.EXERCISED, "-1", CALL_160, VANISHED, "x")
    (s,) = settle([c], [assigned, exercised], {}, NOW)
    # shares sold at 150 and bought at 160 net to zero: cash at the strikes, -10 per unit
    assert (s.state.close_reason, s.state.exit_price, s.state.realized_pnl, s.children) == (
        "assigned",
        D(-10),
        D("-880.00"),
        (),
    )


def test_alpaca_waits_one_sync_then_closes_outside() -> None:
    spec = TradeSpec.of([TradeLeg(PUT_140, Side.SELL)])
    kw = {"nightly_records": False, "stock_changes": {"AAPL": [D(100)]}, "vanished_on": VANISHED, "today": VANISHED}
    assert early_verdict(spec, synced_since_vanished=False, **kw) == EarlyVerdict.WAIT  # type: ignore[arg-type]
    assert early_verdict(spec, synced_since_vanished=True, **kw) == EarlyVerdict.CLOSED_OUTSIDE  # type: ignore[arg-type]


def test_tradier_is_pending_only_on_a_sign_of_assignment() -> None:
    short_put = TradeSpec.of([TradeLeg(PUT_140, Side.SELL)])

    def verdict(spec: TradeSpec, changes: dict[str, list[D]], today: dt.date = VANISHED) -> EarlyVerdict:
        return early_verdict(
            spec,
            nightly_records=True,
            synced_since_vanished=True,
            stock_changes=changes,
            vanished_on=VANISHED,
            today=today,
        )

    assert verdict(short_put, {"AAPL": [D(100)]}) == EarlyVerdict.PENDING  # a short put assigned buys shares
    assert verdict(short_put, {"AAPL": [D(-100)]}) == EarlyVerdict.CLOSED_OUTSIDE  # shares sold: no sign
    assert verdict(short_put, {"MSFT": [D(100)]}) == EarlyVerdict.CLOSED_OUTSIDE
    assert verdict(short_put, {}) == EarlyVerdict.CLOSED_OUTSIDE
    assert verdict(TradeSpec.of([TradeLeg(CALL_150, Side.SELL)]), {"AAPL": [D(-100)]}) == EarlyVerdict.PENDING
    assert verdict(TradeSpec.of([TradeLeg(CALL_150, Side.BUY)]), {"AAPL": [D(100)]}) == EarlyVerdict.PENDING
    # bounded: a week after the leg vanished with no record, it was not an assignment
    late = VANISHED + dt.timedelta(days=8)
    assert verdict(short_put, {"AAPL": [D(100)]}, late) == EarlyVerdict.CLOSED_OUTSIDE


def test_all_options() -> None:
    assert all_options(TradeSpec.of([TradeLeg(PUT_140, Side.SELL), TradeLeg(CALL_150, Side.BUY)]))
    assert not all_options(TradeSpec.of([TradeLeg("AAPL", Side.BUY), TradeLeg(CALL_150, Side.SELL)]))
    assert not all_options(TradeSpec.of([]))
