"""The simulator's market and matching engine, driven directly (no server, no network)."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import pytest

from syncd.sim import SimConfig, SimReject, Simulator, occ_symbol
from syncd.sim.market import black_scholes, parse_occ

START = dt.datetime(2025, 6, 4, 15, 0, tzinfo=dt.UTC)  # a Wednesday, 11:00 in New York


def make(**kw: object) -> Simulator:
    base: dict[str, object] = {
        "seed": 3,
        "accounts": 2,
        "positions_per_account": 0,
        "clock": "manual",
        "start_time": START,
    }
    base.update(kw)
    return Simulator(SimConfig(**base))  # type: ignore[arg-type]


def call(sim: Simulator, underlying: str, steps: int = 0, exp_index: int = 4) -> str:
    exp = sim.market.expirations()[exp_index]
    spot = Decimal(f"{sim.market.spot(underlying):.2f}")
    step = sim.market.strike_step(float(spot))
    strike = (spot / step).to_integral_value() * step + steps * step
    return occ_symbol(underlying, exp, "call", strike)


# -- determinism -------------------------------------------------------------------


def _fingerprint(sim: Simulator) -> list[object]:
    sim.tick(5)
    out: list[object] = []
    for acct in sim.accounts:
        out.append((acct.api_key, acct.api_secret, acct.tradier_token, acct.tradier_account_id, acct.cash))
        out.append(sorted((p.symbol, p.qty, p.avg_entry) for p in acct.positions.values()))
    for symbol in ("AAPL", "SPY", *sim.accounts[0].positions):
        q = sim.market.quote(symbol)
        assert q is not None
        out.append((symbol, q.bid, q.ask))
    order = sim.place_outside_order(1, "MSFT", "buy", 2)
    out.append((order.id, order.tradier_id, order.filled_avg_price))
    return out


def test_same_seed_same_everything() -> None:
    a, b = make(seed=42, positions_per_account=12), make(seed=42, positions_per_account=12)
    assert _fingerprint(a) == _fingerprint(b)


def test_another_seed_another_world() -> None:
    assert _fingerprint(make(seed=1, positions_per_account=12)) != _fingerprint(make(seed=2, positions_per_account=12))


def test_books_do_not_depend_on_when_they_are_built() -> None:
    early, late = make(positions_per_account=8), make(positions_per_account=8)
    book_early = {s: (p.qty, p.avg_entry) for s, p in early.accounts[1].positions.items()}
    late.tick(50)
    late.set_price("AAPL", 1, 2)
    assert {s: (p.qty, p.avg_entry) for s, p in late.accounts[1].positions.items()} == book_early


def test_book_size_and_its_vertical_spread() -> None:
    sim = make(positions_per_account=30, accounts=5)
    for acct in sim.accounts:
        positions = acct.positions
        assert len(positions) == 30
        shorts = [p for p in positions.values() if p.qty < 0 and len(p.symbol) > 10 and p.symbol[-9] == "C"]
        spreads = [
            (s, lng)
            for s in shorts
            for lng in positions.values()
            if lng.qty == -s.qty and lng.symbol[:-8] == s.symbol[:-8] and lng.symbol < s.symbol
        ]
        assert spreads, f"{acct.name} has no bull call spread"
        assert sim.exchange.balances(acct).buying_power > 0
    assert make(positions_per_account=0).accounts[0].positions == {}
    assert len(make(positions_per_account=3).accounts[0].positions) == 3


def test_credentials_are_unique() -> None:
    sim = make(accounts=1000)
    for attr in ("api_key", "tradier_token", "tradier_account_id", "account_number"):
        assert len({getattr(a, attr) for a in sim.accounts}) == 1000
    assert not any(a.built for a in sim.accounts)  # books are built lazily


# -- pricing -----------------------------------------------------------------------


def test_occ_round_trip() -> None:
    symbol = occ_symbol("AAPL", dt.date(2026, 1, 16), "call", Decimal("152.5"))
    assert symbol == "AAPL260116C00152500"
    assert parse_occ(symbol) == ("AAPL", dt.date(2026, 1, 16), "call", Decimal("152.5"))
    assert parse_occ("AAPL") is None and parse_occ("AAPL261316C00152500") is None


def test_black_scholes_sanity() -> None:
    c, cg = black_scholes(100, 100, 0.5, 0.3, True)
    p, pg = black_scholes(100, 100, 0.5, 0.3, False)
    assert math.isclose(c - p, 100 - 100 * math.exp(-0.04 * 0.5), rel_tol=1e-9)  # put-call parity
    assert 0 < cg.delta < 1 and -1 < pg.delta < 0 and cg.gamma > 0 and cg.theta < 0 and cg.vega > 0
    expired, g = black_scholes(110, 100, 0.0, 0.3, True)
    assert expired == 10 and g.delta == 1


def test_quotes_are_sane() -> None:
    sim = make()
    symbol = call(sim, "AAPL")
    for s in ("AAPL", symbol, symbol.replace("C0", "P0")):
        q = sim.market.quote(s)
        assert q is not None and 0 <= q.bid < q.ask
    q = sim.market.quote(symbol)
    assert q is not None and q.greeks is not None and 0 < q.greeks.delta < 1
    assert sim.market.quote("ZZZZ") is None
    assert sim.market.quote(occ_symbol("ZZZZ", dt.date(2026, 1, 16), "call", Decimal(10))) is None


def test_pinned_prices_do_not_walk_and_options_follow_them() -> None:
    sim = make()
    symbol = call(sim, "AAPL")
    sim.set_price("AAPL", "199.90", "200.10")
    before = sim.market.quote(symbol)
    sim.tick(20)
    q = sim.market.quote("AAPL")
    assert q is not None and (q.bid, q.ask) == (Decimal("199.90"), Decimal("200.10"))
    sim.set_price("AAPL", "249.90", "250.10")
    after = sim.market.quote(symbol)
    assert before is not None and after is not None and after.bid > before.ask


# -- matching ----------------------------------------------------------------------


def test_market_order_fills_at_the_ask() -> None:
    sim = make()
    sim.set_price("AAPL", "99.90", "100.10")
    cash = sim.accounts[0].cash
    order = sim.place_outside_order(0, "AAPL", "buy", 10)
    assert order.status == "filled" and order.filled_avg_price == Decimal("100.1")
    assert sim.accounts[0].positions["AAPL"].qty == 10
    assert sim.accounts[0].cash == cash - Decimal("1001.0")
    assert [e.event for e in sim.events] == ["new", "fill"]


def test_partial_fills_over_ticks() -> None:
    sim = make(partial_fills=True, partial_fill_steps=3)
    sim.set_price("KO", "59.99", "60.01")
    order = sim.place_outside_order(0, "KO", "buy", 10)
    assert (order.status, order.filled_qty) == ("partially_filled", Decimal(4))
    sim.tick()
    assert (order.status, order.filled_qty) == ("partially_filled", Decimal(8))
    sim.tick()
    assert (order.status, order.filled_qty) == ("filled", Decimal(10))
    assert [e.event for e in sim.events] == ["new", "partial_fill", "partial_fill", "fill"]
    assert sim.accounts[0].positions["KO"].qty == 10


def test_limit_orders_fill_when_crossed() -> None:
    sim = make()
    sim.set_price("AAPL", "99.00", "100.00")
    buy = sim.place_outside_order(0, "AAPL", "buy", 5, type="limit", limit_price="99.50")
    assert buy.status == "new"
    sim.set_price("AAPL", "98.90", "99.40")
    assert buy.status == "filled" and buy.filled_avg_price == Decimal("99.4")
    sell = sim.place_outside_order(0, "AAPL", "sell", 5, type="limit", limit_price="101", time_in_force="gtc")
    sim.tick(3)
    assert sell.status == "new"
    sim.set_price("AAPL", "101.20", "101.30")
    assert sell.status == "filled" and sell.filled_avg_price == Decimal("101.2")
    assert "AAPL" not in sim.accounts[0].positions


def test_multileg_fills_at_the_net_price() -> None:
    sim = make()
    long_leg, short_leg = call(sim, "MSFT", 0), call(sim, "MSFT", 2)
    sim.set_price(long_leg, "5.00", "5.20")
    sim.set_price(short_leg, "2.00", "2.10")
    legs = [(long_leg, "buy", 1), (short_leg, "sell", 1)]
    resting = sim.place_outside_order(0, legs=legs, qty=3, type="limit", limit_price="3.00")
    assert resting.status == "new"  # the net debit is 3.20
    order = sim.place_outside_order(0, legs=legs, qty=2, type="limit", limit_price="3.25")
    assert order.status == "filled" and order.filled_avg_price == Decimal("3.2")
    assert [leg.filled_avg_price for leg in order.legs] == [Decimal("5.2"), Decimal("2")]
    positions = sim.accounts[0].positions
    assert positions[long_leg].qty == 2 and positions[short_leg].qty == -2
    sim.set_price(long_leg, "4.80", "4.90")  # net 2.90 now: the resting one crosses
    assert resting.status == "filled" and positions[long_leg].qty == 5


def test_credit_spread_limit_is_negative() -> None:
    sim = make()
    short_leg, long_leg = call(sim, "MSFT", 0), call(sim, "MSFT", 2)
    sim.set_price(short_leg, "5.00", "5.20")
    sim.set_price(long_leg, "2.00", "2.10")
    legs = [(short_leg, "sell", 1), (long_leg, "buy", 1)]
    too_greedy = sim.place_outside_order(0, legs=legs, qty=1, type="limit", limit_price="-3.00")
    assert too_greedy.status == "new"  # the credit is only 2.90
    fair = sim.place_outside_order(0, legs=legs, qty=1, type="limit", limit_price="-2.80")
    assert fair.status == "filled" and fair.filled_avg_price == Decimal("-2.9")


def test_cancel_and_not_cancelable() -> None:
    sim = make()
    sim.set_price("F", "10.00", "10.01")
    order = sim.place_outside_order(0, "F", "buy", 1, type="limit", limit_price="5")
    sim.cancel(order.id)
    assert order.status == "canceled" and order.canceled_at is not None
    assert sim.events[-1].event == "canceled"
    with pytest.raises(SimReject) as err:
        sim.cancel(order.id)
    assert err.value.kind == "not_cancelable"


def test_day_orders_expire_at_the_close_and_closed_market_accepts_only() -> None:
    sim = make()
    sim.set_price("F", "10.00", "10.01")
    day = sim.place_outside_order(0, "F", "buy", 1, type="limit", limit_price="5")
    gtc = sim.place_outside_order(0, "F", "buy", 1, type="limit", limit_price="5", time_in_force="gtc")
    sim.set_market_open(False)
    assert day.status == "expired" and day.expired_at is not None and gtc.status == "new"
    night = sim.place_outside_order(0, "F", "buy", 2)
    sim.tick(5)
    assert night.status == "accepted" and night.filled_qty == 0
    sim.set_market_open(True)
    assert night.status == "filled"


def test_ioc_and_fok() -> None:
    sim = make()
    sim.set_price("F", "10.00", "10.01")
    fok = sim.place_outside_order(0, "F", "buy", 1, type="limit", limit_price="9", time_in_force="fok")
    assert fok.status == "canceled" and fok.filled_qty == 0
    ioc = sim.place_outside_order(0, "F", "buy", 1, type="limit", limit_price="11", time_in_force="ioc")
    assert ioc.status == "filled"


def test_buying_power_is_checked_and_reserved() -> None:
    sim = make()
    acct = sim.accounts[0]
    sim.set_cash(0, 10_000)
    sim.set_price("AAPL", "99.90", "100.00")
    with pytest.raises(SimReject) as err:
        sim.place_outside_order(0, "AAPL", "buy", 101)
    assert err.value.kind == "buying_power" and err.value.details["buying_power"] == "10000.00"
    sim.place_outside_order(0, "AAPL", "buy", 60, type="limit", limit_price="50")
    assert sim.exchange.balances(acct).buying_power == Decimal(7000)
    with pytest.raises(SimReject):
        sim.place_outside_order(0, "AAPL", "buy", 71)
    assert acct.orders[-1].qty == 60  # the refused order left no trace


def test_kept_balances_follow_prices_cash_and_positions() -> None:
    """The exchange keeps an account's balances between asks; every input changes them."""
    sim = make()
    acct = sim.accounts[0]
    sim.set_price("AAPL", "99.90", "100.10")
    first = sim.exchange.balances(acct)
    assert sim.exchange.balances(acct) is first  # nothing changed: kept
    sim.place_outside_order(0, "AAPL", "buy", 10)  # a fill: cash and a position
    bought = sim.exchange.balances(acct)
    assert bought.cash == first.cash - Decimal("1001.0") and bought.long_market_value == Decimal(1000)
    sim.set_price("AAPL", "109.90", "110.10")  # a price
    assert sim.exchange.balances(acct).long_market_value == Decimal(1100)
    sim.set_cash(0, 5_000)  # cash alone
    assert sim.exchange.balances(acct).cash == Decimal(5000)
    sim.place_outside_order(0, "AAPL", "sell", 5, type="limit", limit_price="500")  # working: computed afresh
    assert sim.exchange.balances(acct) is not sim.exchange.balances(acct)


def test_reused_client_order_id_is_refused() -> None:
    sim = make()
    sim.place_outside_order(0, "F", "buy", 1, client_order_id="cid-1")
    with pytest.raises(SimReject) as err:
        sim.place_outside_order(0, "F", "buy", 1, client_order_id="cid-1")
    assert err.value.kind == "duplicate_client_order_id"
    sim.place_outside_order(1, "F", "buy", 1, client_order_id="cid-1")  # per account


def test_bad_orders_are_refused() -> None:
    sim = make()
    option = call(sim, "AAPL")
    cases: list[dict[str, object]] = [
        {"symbol": "NOPE", "side": "buy"},
        {"symbol": "F", "side": "hold"},
        {"symbol": "F", "side": "buy", "qty": 0},
        {"symbol": "F", "side": "buy", "type": "stop"},
        {"symbol": "F", "side": "buy", "type": "limit"},
        {"symbol": option, "side": "buy", "qty": "1.5"},
        {"symbol": option, "side": "buy", "time_in_force": "gtc"},
        {"legs": [(option, "buy", 1)]},
        {"legs": [(option, "buy", 2), (call(sim, "AAPL", 1), "sell", 2)]},
    ]
    for case in cases:
        kw = {"qty": 1, **case}
        with pytest.raises(SimReject):
            sim.place_outside_order(0, **kw)  # type: ignore[arg-type]
    assert sim.accounts[0].orders == []


def test_position_derivation() -> None:
    sim = make()
    acct = sim.accounts[0]
    sim.set_price("AAPL", "99.99", "100")
    sim.place_outside_order(0, "AAPL", "buy", 10)
    sim.set_price("AAPL", "109.99", "110")
    sim.place_outside_order(0, "AAPL", "buy", 10)
    pos = acct.positions["AAPL"]
    assert (pos.qty, pos.avg_entry) == (Decimal(20), Decimal(105))
    sim.set_price("AAPL", "120", "120.01")
    sim.place_outside_order(0, "AAPL", "sell", 15)
    assert (pos.qty, pos.avg_entry, acct.realized_pl) == (Decimal(5), Decimal(105), Decimal(225))
    view = sim.exchange.position_view(acct, "AAPL")
    assert view is not None
    assert view.cost_basis == Decimal(525) and view.market_value == Decimal("600.025")
    assert view.unrealized_pl == Decimal("75.025")
    sim.set_price("AAPL", "130", "130.01")
    sim.place_outside_order(0, "AAPL", "sell", 10)  # a flip: short 5 from 130
    assert (pos.qty, pos.avg_entry) == (Decimal(-5), Decimal(130))
    sim.place_outside_order(0, "AAPL", "buy", 5)
    assert "AAPL" not in acct.positions


def test_qty_available_excludes_working_closing_orders() -> None:
    sim = make()
    acct = sim.accounts[0]
    sim.add_position(0, "AAPL", 10, 100)
    sim.add_position(0, "KO", -5, 60)
    sim.set_price("AAPL", "100", "100.01")
    sim.set_price("KO", "60", "60.01")
    sim.place_outside_order(0, "AAPL", "sell", 4, type="limit", limit_price="500", time_in_force="gtc")
    sim.place_outside_order(0, "KO", "buy", 2, type="limit", limit_price="1", time_in_force="gtc")
    assert sim.exchange.qty_available(acct, "AAPL") == 6
    assert sim.exchange.qty_available(acct, "KO") == -3
    with pytest.raises(SimReject) as err:
        sim.place_outside_order(0, "AAPL", "sell", 7)
    assert err.value.kind == "qty_available" and err.value.details["available"] == "6"
    sim.place_outside_order(0, "AAPL", "sell", 6)
    assert acct.positions["AAPL"].qty == 4


def test_forced_fills() -> None:
    sim = make(fill_on_submit=False)
    order = sim.place_outside_order(0, "F", "buy", 10)
    assert order.status == "new"
    sim.fill(order.id, qty=4, price="9.50")
    assert (order.status, order.filled_qty, order.filled_avg_price) == ("partially_filled", Decimal(4), Decimal("9.5"))
    sim.fill(order.client_order_id, price="10.50")
    assert (order.status, order.filled_avg_price) == ("filled", Decimal("10.1"))
    legs = [(call(sim, "SPY", 0), "buy", 1), (call(sim, "SPY", 1), "sell", 1)]
    spread = sim.place_outside_order(0, legs=legs, qty=1)
    sim.fill(spread.tradier_id, price="1.25")
    assert spread.status == "filled" and spread.filled_avg_price == Decimal("1.25")
