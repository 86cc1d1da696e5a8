"""The importer's pure part: recognising vertical spreads among positions and naming trades."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.brokers.occ import format_occ, parse_occ
from syncd.brokers.types import OptionSpec, OptionType
from syncd.cycles.importer import Holding, pair_verticals, plan_imports, single_strategy, spread_strategy

D = Decimal
EXP = dt.date(2026, 1, 16)


def option(symbol: str, qty: str, avg: str = "1") -> Holding:
    spec = parse_occ(symbol)
    return Holding(
        symbol=symbol,
        asset_class="us_option",
        underlying=spec.underlying,
        quantity=D(qty),
        avg_entry_price=D(avg),
        option_type=spec.option_type.value,
        strike=spec.strike,
        expiration=spec.expiration,
    )


def stock(symbol: str, qty: str, asset_class: str = "us_equity", avg: str = "100") -> Holding:
    return Holding(symbol=symbol, asset_class=asset_class, underlying=symbol, quantity=D(qty), avg_entry_price=D(avg))


@pytest.mark.parametrize(
    ("option_type", "long", "short", "name"),
    [
        ("call", "150", "160", "BULL_CALL_DEBIT"),
        ("call", "160", "150", "BEAR_CALL_CREDIT"),
        ("put", "160", "150", "BEAR_PUT_DEBIT"),
        ("put", "150", "160", "BULL_PUT_CREDIT"),
    ],
)
def test_spread_strategy(option_type: str, long: str, short: str, name: str) -> None:
    assert spread_strategy(option_type, D(long), D(short)) == name


def test_spread_strategy_needs_two_strikes() -> None:
    with pytest.raises(ValueError, match="different strikes"):
        spread_strategy("call", D(150), D(150))


@pytest.mark.parametrize(
    ("holding", "name"),
    [
        (stock("AAPL", "10"), "LONG_STOCK"),
        (stock("AAPL", "-10"), "SHORT_STOCK"),
        (stock("BTCUSD", "0.5", "crypto"), "LONG_CRYPTO"),
        (option("AAPL260116C00150000", "2"), "LONG_CALL"),
        (option("AAPL260116C00150000", "-2"), "SHORT_CALL"),
        (option("AAPL260116P00150000", "2"), "LONG_PUT"),
        (option("AAPL260116P00150000", "-2"), "SHORT_PUT"),
    ],
)
def test_single_strategy(holding: Holding, name: str) -> None:
    assert single_strategy(holding) == name


def test_bull_call_debit_spread_is_one_two_leg_trade() -> None:
    plans = plan_imports([option("AAPL260116C00150000", "5", "4.10"), option("AAPL260116C00160000", "-5", "1.60")])
    assert len(plans) == 1
    (p,) = plans
    assert (p.symbol, p.strategy, p.quantity, p.entry_price) == ("AAPL", "BULL_CALL_DEBIT", D(5), D("2.50"))
    assert [(leg.symbol, leg.side, leg.ratio) for leg in p.legs] == [
        ("AAPL260116C00150000", "buy", 1),
        ("AAPL260116C00160000", "sell", 1),
    ]


def test_credit_spread_entry_price_is_negative() -> None:
    (p,) = plan_imports([option("SPY260116P00400000", "3", "1.00"), option("SPY260116P00410000", "-3", "2.20")])
    assert (p.strategy, p.entry_price) == ("BULL_PUT_CREDIT", D("-1.20"))


def test_unequal_quantities_are_not_a_spread() -> None:
    plans = plan_imports([option("AAPL260116C00150000", "5"), option("AAPL260116C00160000", "-4")])
    assert sorted(p.strategy for p in plans) == ["LONG_CALL", "SHORT_CALL"]


@pytest.mark.parametrize(
    "other",
    [
        "AAPL260220C00160000",  # another expiration
        "AAPL260116P00160000",  # another type
        "MSFT260116C00160000",  # another underlying
    ],
)
def test_mismatched_options_are_not_a_spread(other: str) -> None:
    plans = plan_imports([option("AAPL260116C00150000", "5"), option(other, "-5")])
    assert len(plans) == 2
    assert all(len(p.legs) == 1 for p in plans)


def test_two_longs_are_not_a_spread() -> None:
    plans = plan_imports([option("AAPL260116C00150000", "5"), option("AAPL260116C00160000", "5")])
    assert [p.strategy for p in plans] == ["LONG_CALL", "LONG_CALL"]


def test_narrowest_spread_pairs_first() -> None:
    longs_and_shorts = [
        option("AAPL260116C00150000", "1"),
        option("AAPL260116C00155000", "-1"),
        option("AAPL260116C00170000", "-1"),
    ]
    plans = plan_imports(longs_and_shorts)
    spreads = [p for p in plans if len(p.legs) == 2]
    assert [(p.legs[0].symbol, p.legs[1].symbol) for p in spreads] == [("AAPL260116C00150000", "AAPL260116C00155000")]
    assert [p.strategy for p in plans if len(p.legs) == 1] == ["SHORT_CALL"]


def test_stock_and_options_together() -> None:
    plans = plan_imports(
        [
            stock("AAPL", "100"),
            stock("TSLA", "-5"),
            option("AAPL260116C00150000", "2"),
            option("AAPL260116C00160000", "-2"),
        ]
    )
    assert [(p.symbol, p.strategy) for p in plans] == [
        ("AAPL", "LONG_STOCK"),
        ("AAPL", "BULL_CALL_DEBIT"),
        ("TSLA", "SHORT_STOCK"),
    ]
    short = plans[-1]
    assert (short.quantity, short.legs[0].side) == (D(5), "sell")


def test_missing_average_price_gives_no_entry_price() -> None:
    a = option("AAPL260116C00150000", "1")
    b = Holding(**{**_fields(option("AAPL260116C00160000", "-1")), "avg_entry_price": None})
    (p,) = plan_imports([a, b])
    assert p.entry_price is None


def _fields(h: Holding) -> dict[str, Any]:
    return {name: getattr(h, name) for name in Holding.__slots__}


def test_opened_at_is_the_earliest_first_seen() -> None:
    t1, t2 = dt.datetime(2025, 1, 2, tzinfo=dt.UTC), dt.datetime(2025, 1, 3, tzinfo=dt.UTC)
    a = Holding(**{**_fields(option("AAPL260116C00150000", "1")), "first_seen_at": t2})
    b = Holding(**{**_fields(option("AAPL260116C00160000", "-1")), "first_seen_at": t1})
    (p,) = plan_imports([a, b])
    assert p.opened_at == t1


def test_flat_holdings_are_ignored() -> None:
    assert plan_imports([stock("AAPL", "0")]) == []


# -- properties ------------------------------------------------------------------------------------------


@st.composite
def option_books(draw: st.DrawFn) -> list[Holding]:
    """Up to 10 distinct option positions on two underlyings, few strikes, so spreads are common."""
    specs = st.builds(
        OptionSpec,
        underlying=st.sampled_from(["AAPL", "SPY"]),
        option_type=st.sampled_from(list(OptionType)),
        strike=st.sampled_from([D(100), D(105), D(110), D(120)]),
        expiration=st.sampled_from([EXP, dt.date(2026, 2, 20)]),
    )
    symbols = draw(st.lists(specs.map(format_occ), max_size=10, unique=True))
    qtys = draw(st.lists(st.sampled_from([-2, -1, 1, 2]), min_size=len(symbols), max_size=len(symbols)))
    return [option(s, str(q)) for s, q in zip(symbols, qtys, strict=True)]


@given(book=option_books())
def test_every_position_is_in_exactly_one_trade(book: list[Holding]) -> None:
    plans = plan_imports(book)
    legs = Counter(leg.symbol for p in plans for leg in p.legs)
    assert legs == Counter(h.symbol for h in book)
    by_symbol = {h.symbol: h for h in book}
    for p in plans:
        for leg in p.legs:
            h = by_symbol[leg.symbol]
            assert leg.side == ("buy" if h.quantity > 0 else "sell")
            assert p.quantity == abs(h.quantity)


@given(book=option_books())
def test_every_spread_is_a_valid_vertical(book: list[Holding]) -> None:
    pairs, leftovers = pair_verticals(book)
    for long, short in pairs:
        assert long.quantity == -short.quantity > 0
        assert (long.underlying, long.option_type, long.expiration) == (
            short.underlying,
            short.option_type,
            short.expiration,
        )
        assert long.strike != short.strike
    assert len(leftovers) + 2 * len(pairs) == len(book)


@given(book=option_books(), data=st.data())
def test_plan_does_not_depend_on_input_order(book: list[Holding], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(book))
    assert plan_imports(shuffled) == plan_imports(book)


@given(book=option_books())
def test_no_spread_left_among_leftovers(book: list[Holding]) -> None:
    """Greedy pairing is maximal: no two unpaired holdings would make a vertical."""
    _, leftovers = pair_verticals(book)
    pairs_again, _ = pair_verticals(leftovers)
    assert pairs_again == []
