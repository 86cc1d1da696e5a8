"""Pure P&L, availability and exit-rule math of monitorCycle (``syncd.trading.pnl``)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.brokers.types import Side
from syncd.trading import pnl
from syncd.trading.pnl import ExitDecision, Leg, Trade

D = Decimal
TODAY = dt.date(2025, 12, 3)
LONG_CALL = "AAPL260116C00150000"
SHORT_CALL = "AAPL260116C00160000"


def opt(symbol: str, side: pnl.LegSide, qty: str | None, bid: str | None, ask: str | None, **kw: object) -> Leg:
    return Leg(
        symbol=symbol,
        side=side,
        position_quantity=None if qty is None else D(qty),
        bid=None if bid is None else D(bid),
        ask=None if ask is None else D(ask),
        multiplier=D(100),
        asset_class="us_option",
        expiration=dt.date(2026, 1, 16),
        **kw,  # type: ignore[arg-type]
    )


def seed_trade(**kw: object) -> Trade:
    """The seed report's case: BULL_CALL_DEBIT recorded with quantity 1, 67 of each leg held."""
    legs = (
        opt(LONG_CALL, "buy", "67", "4.90", "5.10"),
        opt(SHORT_CALL, "sell", "-67", "2.40", "2.60"),
    )
    base: dict[str, object] = {
        "id": 1,
        "strategy": "BULL_CALL_DEBIT",
        "legs": legs,
        "quantity": D(1),
        "entry_price": D("2.10"),
        "take_profit_pct": D(50),
    }
    base.update(kw)
    return Trade(**base)  # type: ignore[arg-type]


# -- quotes and positions ----------------------------------------------------------------------


def test_mid_of_two_sided_quote() -> None:
    assert pnl.mid(D("1.00"), D("1.20"), D("5")) == D("1.10")


def test_mid_falls_back_to_last_when_one_sided_or_crossed() -> None:
    assert pnl.mid(None, D("1.20"), D("1.05")) == D("1.05")
    assert pnl.mid(D("1.00"), None, D("1.05")) == D("1.05")
    assert pnl.mid(D("1.30"), D("1.20"), D("1.05")) == D("1.05")  # crossed
    assert pnl.mid(D("0"), D("0"), None) is None  # no ask at all


def test_zero_bid_is_a_real_bid_for_far_otm_options() -> None:
    assert pnl.two_sided(D("0"), D("0.05"))
    assert pnl.mid(D("0"), D("0.05")) == D("0.025")


def test_market_value_and_unrealized_pl_of_a_long() -> None:
    value = pnl.market_value(D("5.00"), D(67), D(100))
    assert value == D(33500)
    assert pnl.unrealized_pl(value, D(67), D(30000)) == D(3500)


@pytest.mark.parametrize("cost_basis", ["-200", "200"])
def test_unrealized_pl_of_a_short_whatever_sign_the_broker_gives_the_cost(cost_basis: str) -> None:
    """Broker quirk: Alpaca and Tradier report a short's cost basis negative; others positive."""
    value = pnl.market_value(D("1.50"), D(-1), D(100))
    assert value == D(-150)
    assert pnl.unrealized_pl(value, D(-1), D(cost_basis)) == D(50)


def test_unrealized_pl_unknown_without_cost_basis() -> None:
    assert pnl.unrealized_pl(D(100), D(1), None) is None


# -- the seed case -----------------------------------------------------------------------------


def test_seed_case_uses_held_quantity_not_stale_trade_quantity() -> None:
    state = pnl.evaluate(seed_trade())
    assert state.quantity == 67
    assert state.available_quantity == 67
    assert state.can_monitor
    assert state.can_exit
    assert state.direction == 1
    assert state.current_price == D("2.50")  # 5.00 - 2.50
    assert state.floating_pnl == (D("5.00") - D("2.50") - D("2.10")) * 67 * 100


def test_seed_case_take_profit_exits_the_67_held() -> None:
    trade = seed_trade(entry_price=D("1.60"))  # (2.50 - 1.60) / 1.60 = 56 % >= 50 %
    state = pnl.evaluate(trade)
    decision = pnl.decide_exit(trade, state, today=TODAY, exit_days_before_expiration=0)
    assert decision == ExitDecision(1, "take_profit", D(67))


# -- credit spreads ----------------------------------------------------------------------------


def bear_call_credit(entry: str, short_quote: tuple[str, str], long_quote: tuple[str, str]) -> Trade:
    return Trade(
        id=2,
        strategy="BEAR_CALL_CREDIT",
        legs=(
            opt("SPY260116C00600000", "sell", "-10", *short_quote),
            opt("SPY260116C00610000", "buy", "10", *long_quote),
        ),
        quantity=D(10),
        entry_price=D(entry),
        take_profit_pct=D(50),
        stop_loss_pct=D(100),
    )


def test_credit_spread_gains_when_the_spread_gets_cheaper() -> None:
    trade = bear_call_credit("2.00", ("1.40", "1.60"), ("0.50", "0.70"))  # net -0.90 to buy back
    state = pnl.evaluate(trade)
    assert state.direction == -1
    assert state.current_price == D("0.90")
    assert state.pnl_per_unit == D("1.10")
    assert state.floating_pnl == D("1.10") * 10 * 100
    assert pnl.decide_exit(trade, state, today=TODAY, exit_days_before_expiration=0) == ExitDecision(
        2, "take_profit", D(10)
    )


def test_credit_spread_loses_when_the_spread_gets_dearer() -> None:
    trade = bear_call_credit("2.00", ("5.90", "6.10"), ("1.90", "2.10"))  # 4.00 to buy back
    state = pnl.evaluate(trade)
    assert state.pnl_per_unit == D("-2.00")
    assert state.floating_pnl == D(-2000)
    decision = pnl.decide_exit(trade, state, today=TODAY, exit_days_before_expiration=0)
    assert isinstance(decision, ExitDecision)
    assert decision.rule == "stop_loss"


def test_credit_fill_reported_as_negative_net_price_gives_the_same_pnl() -> None:
    """Broker quirk: Alpaca reports a credit spread's fill price as a negative net debit."""
    positive = pnl.evaluate(bear_call_credit("2.00", ("1.40", "1.60"), ("0.50", "0.70")))
    negative = pnl.evaluate(bear_call_credit("-2.00", ("1.40", "1.60"), ("0.50", "0.70")))
    assert positive.floating_pnl == negative.floating_pnl == D(1100)


def test_bull_put_credit_signs() -> None:
    trade = Trade(
        id=3,
        strategy="BULL_PUT_CREDIT",
        legs=(
            opt("QQQ260116P00500000", "sell", "-35", "3.00", "3.20"),
            opt("QQQ260116P00490000", "buy", "35", "1.00", "1.20"),
        ),
        quantity=D(35),
        entry_price=D("2.50"),
    )
    state = pnl.evaluate(trade)
    assert state.direction == -1
    assert state.current_price == D("2.00")
    assert state.floating_pnl == D("0.50") * 35 * 100


def test_direction_without_a_telling_strategy_name() -> None:
    stock = Leg("AAPL", "sell", position_quantity=D(-10), bid=D(1), ask=D(2))
    assert pnl.direction("UNKNOWN", (stock,), D(5)) == -1
    assert pnl.direction("UNKNOWN", (opt(LONG_CALL, "buy", "1", "1", "2"),), None) == 1
    assert pnl.direction("UNKNOWN", (opt(LONG_CALL, "buy", "1", "1", "2"),), D("-1")) == -1


def test_short_stock_pnl() -> None:
    trade = Trade(
        id=4,
        strategy="SHORT_STOCK",
        legs=(Leg("TSLA", "sell", position_quantity=D(-10), bid=D("199.9"), ask=D("200.1")),),
        quantity=D(10),
        entry_price=D(210),
    )
    state = pnl.evaluate(trade)
    assert state.current_price == D(200)
    assert state.floating_pnl == D(100)


# -- availability ------------------------------------------------------------------------------


def test_working_closing_order_reduces_available_quantity() -> None:
    legs = (
        opt(LONG_CALL, "buy", "67", "4.90", "5.10", committed=D(20), committed_by_trade=D(20)),
        opt(SHORT_CALL, "sell", "-67", "2.40", "2.60", committed=D(20), committed_by_trade=D(20)),
    )
    state = pnl.evaluate(seed_trade(legs=legs))
    assert state.quantity == 67
    assert state.available_quantity == 47
    assert state.can_exit


def test_available_is_min_over_legs_divided_by_ratio_floored() -> None:
    legs = (
        opt(LONG_CALL, "buy", "10", "1", "2", ratio=1),
        opt(SHORT_CALL, "sell", "-15", "1", "2", ratio=2),
    )
    state = pnl.evaluate(seed_trade(legs=legs))
    assert state.quantity == 7  # min(10 / 1, floor(15 / 2))
    assert state.available_quantity == 7


def test_fully_committed_leg_blocks_the_exit() -> None:
    legs = (
        opt(LONG_CALL, "buy", "67", "4.90", "5.10", committed=D(67)),
        opt(SHORT_CALL, "sell", "-67", "2.40", "2.60"),
    )
    trade = seed_trade(legs=legs, entry_price=D("1.00"))
    state = pnl.evaluate(trade)
    assert state.available_quantity == 0
    assert not state.can_exit
    assert pnl.decide_exit(trade, state, today=TODAY, exit_days_before_expiration=0) == "nothing_available"


def test_shared_symbol_caps_each_trade_at_its_own_share() -> None:
    leg = Leg("AAPL", "buy", position_quantity=D(100), bid=D(1), ask=D(2), claimants=2)
    assert pnl.leg_held(leg, D(30)) == 30
    assert pnl.leg_available(leg, D(30)) == 30
    busy = Leg("AAPL", "buy", position_quantity=D(100), bid=D(1), ask=D(2), claimants=2, committed=D(80))
    assert pnl.leg_available(busy, D(30)) == 20


def test_a_trade_with_own_fills_holds_only_its_own_quantity() -> None:
    """Regression (issue 10): 250 shares bought by hand + a trade that bought 4: the trade, alone on the symbol,
    held (and exited) all 254. With a fill record it holds and may close at most its own 4."""
    leg = Leg("WMT", "buy", position_quantity=D(254), bid=D(1), ask=D(2))
    assert pnl.leg_held(leg, D(4)) == 254  # no fill record: the seed's rule (the whole position)
    assert pnl.leg_held(leg, D(4), own_fills=True) == 4
    assert pnl.leg_available(leg, D(4), own_fills=True) == 4
    sold = Leg("WMT", "buy", position_quantity=D(3), bid=D(1), ask=D(2))
    assert pnl.leg_held(sold, D(4), own_fills=True) == 3  # never more than the broker holds
    trade = Trade(id=1, strategy="LONG_STOCK", legs=(leg,), quantity=D(4), own_fills=True)
    state = pnl.evaluate(trade)
    assert (state.quantity, state.available_quantity) == (D(4), D(4))


def test_position_of_the_wrong_sign_is_not_the_legs() -> None:
    legs = (opt(LONG_CALL, "buy", "67", "4.90", "5.10"), opt(SHORT_CALL, "sell", "67", "2.40", "2.60"))
    state = pnl.evaluate(seed_trade(legs=legs))
    assert state.quantity == 0
    assert not state.can_monitor
    assert not state.can_exit
    assert state.current_price is None
    assert state.floating_pnl is None


def test_missing_leg_position() -> None:
    legs = (opt(LONG_CALL, "buy", "67", "4.90", "5.10"), opt(SHORT_CALL, "sell", None, None, None))
    state = pnl.evaluate(seed_trade(legs=legs))
    assert not state.can_monitor
    assert not state.can_exit
    assert state.quantity == 0


def test_fractional_shares_of_a_lone_stock_leg_are_kept() -> None:
    trade = Trade(
        id=5, strategy="LONG_STOCK", legs=(Leg("AAPL", "buy", position_quantity=D("2.5"), bid=D(1), ask=D(2)),)
    )
    assert pnl.evaluate(trade).available_quantity == D("2.5")


# -- exits -------------------------------------------------------------------------------------


def test_one_sided_quote_blocks_the_exit() -> None:
    legs = (opt(LONG_CALL, "buy", "67", "4.90", "5.10"), opt(SHORT_CALL, "sell", "-67", None, "2.60", last=D("2.5")))
    trade = seed_trade(legs=legs, entry_price=D("1.00"))
    state = pnl.evaluate(trade)
    assert not state.can_monitor
    assert state.can_exit
    assert state.floating_pnl is not None  # last price still gives a P&L to look at
    assert pnl.decide_exit(trade, state, today=TODAY, exit_days_before_expiration=0) == "no_two_sided_quote"


def test_no_second_exit_while_one_works() -> None:
    trade = seed_trade(entry_price=D("1.00"), exit_pending=True)
    state = pnl.evaluate(trade)
    assert pnl.decide_exit(trade, state, today=TODAY, exit_days_before_expiration=0) == "exit_pending"


def test_closing_trade_does_not_exit_again() -> None:
    trade = seed_trade(entry_price=D("1.00"), status="closing")
    assert pnl.decide_exit(trade, pnl.evaluate(trade), today=TODAY, exit_days_before_expiration=0) == "not_open"


def test_no_rule_no_exit() -> None:
    trade = seed_trade()  # +19 % < 50 %
    assert pnl.decide_exit(trade, pnl.evaluate(trade), today=TODAY, exit_days_before_expiration=0) is None


def test_stop_loss_as_percent_of_entry_debit() -> None:
    trade = seed_trade(entry_price=D("5.00"), stop_loss_pct=D(50), take_profit_pct=None)  # 2.50: -50 %
    state = pnl.evaluate(trade)
    assert pnl.pnl_pct(state, trade.entry_price) == D(-50)
    assert pnl.fired_rule(trade, state, today=TODAY, exit_days_before_expiration=0) == "stop_loss"


@pytest.mark.parametrize(("days", "fires"), [(0, False), (30, False), (44, True), (60, True)])
def test_days_before_expiration(days: int, fires: bool) -> None:
    trade = seed_trade()  # expires 2026-01-16: 44 days after 2025-12-03
    rule = pnl.fired_rule(trade, pnl.evaluate(trade), today=TODAY, exit_days_before_expiration=days)
    assert (rule == "days_before_expiration") is fires


def test_expiration_rule_ignores_stock_trades() -> None:
    trade = Trade(id=6, strategy="LONG_STOCK", legs=(Leg("AAPL", "buy", position_quantity=D(1), bid=D(1), ask=D(2)),))
    assert pnl.days_to_expiration(trade.legs, TODAY) is None
    assert pnl.fired_rule(trade, pnl.evaluate(trade), today=TODAY, exit_days_before_expiration=365) is None


def test_rules_need_an_entry_price() -> None:
    trade = seed_trade(entry_price=None, stop_loss_pct=D(1))
    state = pnl.evaluate(trade)
    assert state.floating_pnl is None
    assert pnl.fired_rule(trade, state, today=TODAY, exit_days_before_expiration=0) is None


prices = st.decimals(min_value=D("0.01"), max_value=D(500), places=2)


@given(long_mid=prices, short_mid=prices, entry=prices, held=st.integers(min_value=1, max_value=500))
def test_debit_and_credit_views_of_one_spread_are_mirror_images(
    long_mid: Decimal, short_mid: Decimal, entry: Decimal, held: int
) -> None:
    """The buyer's P&L of a spread is exactly the seller's loss."""

    def spread(strategy: str, long_side: pnl.LegSide) -> Trade:
        short_side: pnl.LegSide = "sell" if long_side == "buy" else "buy"
        q = D(held)
        return Trade(
            id=7,
            strategy=strategy,
            legs=(
                opt(LONG_CALL, long_side, str(q if long_side == "buy" else -q), str(long_mid), str(long_mid)),
                opt(SHORT_CALL, short_side, str(q if short_side == "buy" else -q), str(short_mid), str(short_mid)),
            ),
            entry_price=entry,
        )

    debit = pnl.evaluate(spread("BULL_CALL_DEBIT", "buy"))
    credit = pnl.evaluate(spread("BEAR_CALL_CREDIT", "sell"))
    assert debit.floating_pnl is not None
    assert credit.floating_pnl is not None
    assert debit.floating_pnl == -credit.floating_pnl
    assert debit.quantity == credit.quantity == held


def test_arithmetic_on_accepted_numbers_never_rounds() -> None:
    """Guards the 28-digit rounding (issue 10 item 5): values within syncd's digit bounds stay exact."""
    import decimal

    from syncd.brokers.parse import MAX_INTEGER_DIGITS
    from syncd.trading import reconcile

    price, qty = Decimal("12345678901234.5"), Decimal("123456789012345")
    assert len(str(qty)) == MAX_INTEGER_DIGITS
    with decimal.localcontext(decimal.Context(prec=200)):
        expected = price * qty * 100
    assert pnl.market_value(price, qty, Decimal(100)) == expected  # 33 digits: Decimal's default would round
    spec = reconcile.TradeSpec((reconcile.TradeLeg("X", Side.BUY),))
    realized = reconcile._realized(spec, price, price + Decimal("0.5"), qty)  # quantized to cents: 31 digits
    assert realized == Decimal("61728394506172.50")
