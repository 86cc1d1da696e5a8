"""The pure expiry core (syncd/trading/expiry.py): records -> closed trades, stock trades, pending."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

from syncd.brokers.types import OptionEvent, OptionEventKind, Side
from syncd.trading.expiry import (
    EXPIRATION_PENDING,
    Candidate,
    ChildTrade,
    expiry_applies,
    past_expiry,
    settle,
)
from syncd.trading.reconcile import TradeLeg, TradeSpec, TradeState, TradeStatus

CALL_150 = "AAPL260116C00150000"
CALL_160 = "AAPL260116C00160000"
PUT_140 = "AAPL260116P00140000"
PUT_135 = "AAPL260116P00135000"
EXP = dt.date(2026, 1, 16)
AFTER = dt.datetime(2026, 1, 16, 21, 30, tzinfo=dt.UTC)  # 16:30 New York
BEFORE = dt.datetime(2026, 1, 16, 20, 30, tzinfo=dt.UTC)  # 15:30 New York


def ev(kind: OptionEventKind, qty: str, symbol: str | None, eid: str = "", on: dt.date = EXP) -> OptionEvent:
    return OptionEvent(eid or f"{kind.value}:{symbol}:{qty}", kind, on, D(qty), symbol)


def cand(tid: int, legs: list[TradeLeg], qty: str, entry: str | None) -> Candidate:
    state = TradeState(status=TradeStatus.OPEN, quantity=D(qty), entry_price=None if entry is None else D(entry))
    return Candidate(tid, TradeSpec.of(legs), state)


def test_expiry_is_the_close_of_the_expiration_day_in_new_york() -> None:
    assert not past_expiry(CALL_150, BEFORE)
    assert past_expiry(CALL_150, AFTER)
    assert not past_expiry("AAPL", AFTER)
    assert not expiry_applies(TradeSpec.of([TradeLeg("AAPL", Side.BUY), TradeLeg(CALL_150, Side.SELL)]), AFTER)


def test_long_call_expired_worthless() -> None:
    c = cand(1, [TradeLeg(CALL_150, Side.BUY)], "2", "1.25")
    (s,) = settle([c], [ev(OptionEventKind.EXPIRED, "-2", CALL_150)], {}, AFTER)
    assert (s.state.status, s.state.close_reason, s.state.exit_price) == (TradeStatus.CLOSED, "expired", D(0))
    assert s.state.realized_pnl == D("-250.00")
    assert s.state.quantity == 0 and s.children == ()


def test_short_put_expired_keeps_the_premium() -> None:
    c = cand(1, [TradeLeg(PUT_140, Side.SELL)], "1", "2.10")
    (s,) = settle([c], [ev(OptionEventKind.EXPIRED, "1", PUT_140)], {}, AFTER)
    assert (s.state.exit_price, s.state.realized_pnl) == (D(0), D("210.00"))


def test_short_call_assigned_leaves_short_stock_at_the_strike() -> None:
    c = cand(1, [TradeLeg(CALL_150, Side.SELL)], "2", "3.00")
    (s,) = settle([c], [ev(OptionEventKind.ASSIGNED, "2", CALL_150)], {"AAPL": D(-200)}, AFTER)
    assert (s.state.close_reason, s.state.exit_price, s.state.realized_pnl) == ("assigned", D(0), D("600.00"))
    assert s.children == (ChildTrade("AAPL", Side.SELL, D(200), D(150)),)


def test_long_put_exercised_sells_stock_at_the_strike() -> None:
    c = cand(1, [TradeLeg(PUT_140, Side.BUY)], "1", "4.00")
    (s,) = settle([c], [ev(OptionEventKind.EXERCISED, "-1", PUT_140)], {}, AFTER)
    assert s.state.close_reason == "exercised"
    assert s.children == (ChildTrade("AAPL", Side.SELL, D(100), D(140)),)


def test_half_assigned_put_credit_spread() -> None:
    """Short 140 put assigned, long 135 put expired: long stock at 140, the credit realized."""
    legs = [TradeLeg(PUT_140, Side.SELL), TradeLeg(PUT_135, Side.BUY)]
    c = cand(1, legs, "1", "-1.50")  # a credit of 1.50
    events = [ev(OptionEventKind.ASSIGNED, "1", PUT_140), ev(OptionEventKind.EXPIRED, "-1", PUT_135)]
    (s,) = settle([c], events, {"AAPL": D(100)}, AFTER)
    assert (s.state.close_reason, s.state.exit_price, s.state.realized_pnl) == ("assigned", D(0), D("150.00"))
    assert s.children == (ChildTrade("AAPL", Side.BUY, D(100), D(140)),)
    assert [leg.kind for leg in s.legs] == [OptionEventKind.ASSIGNED, OptionEventKind.EXPIRED]


def test_call_debit_spread_both_in_the_money_nets_to_cash_at_the_strikes() -> None:
    legs = [TradeLeg(CALL_150, Side.BUY), TradeLeg(CALL_160, Side.SELL)]
    c = cand(1, legs, "3", "4.00")
    events = [ev(OptionEventKind.EXERCISED, "-3", CALL_150), ev(OptionEventKind.ASSIGNED, "3", CALL_160)]
    (s,) = settle([c], events, {}, AFTER)
    assert s.children == ()
    assert (s.state.exit_price, s.state.realized_pnl) == (D(10), D("1800.00"))  # (10 - 4) x 3 x 100


def test_pending_until_every_leg_has_its_record() -> None:
    legs = [TradeLeg(PUT_140, Side.SELL), TradeLeg(PUT_135, Side.BUY)]
    c = cand(1, legs, "1", "-1.50")
    (s,) = settle([c], [ev(OptionEventKind.EXPIRED, "-1", PUT_135)], {}, AFTER)
    assert (s.state.status, s.state.close_reason, s.state.exit_price) == (
        TradeStatus.CLOSING,
        EXPIRATION_PENDING,
        None,
    )
    assert s.events == ()
    # already pending: nothing changes
    assert settle([Candidate(1, c.spec, s.state)], [], {}, AFTER) == []


def test_not_past_expiry_is_not_settled() -> None:
    c = cand(1, [TradeLeg(CALL_150, Side.BUY)], "1", "1")
    assert settle([c], [ev(OptionEventKind.EXPIRED, "-1", CALL_150)], {}, BEFORE) == []


def test_records_without_symbol_match_by_date_and_side() -> None:
    """Tradier: two records of the expiry day, no symbols; the long leg takes the negative one."""
    legs = [TradeLeg(PUT_140, Side.SELL), TradeLeg(PUT_135, Side.BUY)]
    c = cand(1, legs, "1", "-1.50")
    events = [ev(OptionEventKind.EXPIRED, "-1", None, "a"), ev(OptionEventKind.EXPIRED, "1", None, "b")]
    (s,) = settle([c], events, {}, AFTER)
    assert s.state.close_reason == "expired"
    assert {leg.symbol: leg.events for leg in s.legs} == {PUT_140: (("b", "expired"),), PUT_135: (("a", "expired"),)}


def test_records_without_symbol_outside_the_window_do_not_match() -> None:
    c = cand(1, [TradeLeg(PUT_140, Side.SELL)], "1", "1")
    late = ev(OptionEventKind.EXPIRED, "1", None, "x", on=EXP + dt.timedelta(days=30))
    (s,) = settle([c], [late], {}, AFTER)
    assert s.state.close_reason == EXPIRATION_PENDING


def test_symbolless_assignment_goes_to_the_leg_the_new_stock_shows() -> None:
    """An iron condor's two short legs both fit a record "+1 assigned"; long stock means the put."""
    legs = [
        TradeLeg(PUT_140, Side.SELL),
        TradeLeg(PUT_135, Side.BUY),
        TradeLeg(CALL_150, Side.SELL),
        TradeLeg(CALL_160, Side.BUY),
    ]
    c = cand(1, legs, "1", "-2.00")
    events = [
        ev(OptionEventKind.EXPIRED, "1", None, "e1"),
        ev(OptionEventKind.ASSIGNED, "1", None, "a1"),
        ev(OptionEventKind.EXPIRED, "-1", None, "e2"),
        ev(OptionEventKind.EXPIRED, "-1", None, "e3"),
    ]
    (s,) = settle([c], events, {"AAPL": D(100)}, AFTER)
    assert s.children == (ChildTrade("AAPL", Side.BUY, D(100), D(140)),)


def test_a_record_is_taken_once() -> None:
    legs = [TradeLeg(CALL_150, Side.BUY)]
    one, two = cand(1, legs, "1", "1"), cand(2, legs, "1", "1")
    s1, s2 = settle([one, two], [ev(OptionEventKind.EXPIRED, "-1", CALL_150)], {}, AFTER)
    assert (s1.trade_id, s1.state.status) == (1, TradeStatus.CLOSED)
    assert (s2.trade_id, s2.state.close_reason) == (2, EXPIRATION_PENDING)


def test_no_entry_price_no_realized() -> None:
    c = cand(1, [TradeLeg(CALL_150, Side.BUY)], "1", None)
    (s,) = settle([c], [ev(OptionEventKind.EXPIRED, "-1", CALL_150)], {}, AFTER)
    assert (s.state.exit_price, s.state.realized_pnl) == (D(0), None)
