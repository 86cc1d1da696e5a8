"""OCC option symbols: parsing, formatting and their property-based round trips."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.brokers.occ import format_occ, is_option_symbol, option_spec_or_none, parse_occ
from syncd.brokers.types import OptionSpec, OptionType

roots = st.from_regex(r"\A[A-Z0-9]{1,6}\Z", fullmatch=True)
expirations = st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2099, 12, 31))
strikes = st.integers(min_value=1, max_value=99_999_999).map(lambda milli: Decimal(milli) / 1000)
specs = st.builds(
    OptionSpec,
    underlying=roots,
    option_type=st.sampled_from(OptionType),
    strike=strikes,
    expiration=expirations,
)


def test_parses_a_call() -> None:
    spec = parse_occ("AAPL260116C00150000")
    assert spec == OptionSpec("AAPL", OptionType.CALL, Decimal("150"), dt.date(2026, 1, 16), 100)


def test_parses_a_put_with_fractional_strike_and_long_root() -> None:
    spec = parse_occ("SPXW251219P05500500")
    assert (spec.underlying, spec.option_type, spec.strike) == ("SPXW", OptionType.PUT, Decimal("5500.5"))
    assert spec.expiration == dt.date(2025, 12, 19)


def test_adjusted_root_with_digits() -> None:
    assert parse_occ("BRKB1260116C00500000").underlying == "BRKB1"


@pytest.mark.parametrize(
    ("symbol", "why"),
    [
        ("AAPL", "not an OCC option symbol"),
        ("", "not an OCC option symbol"),
        ("aapl260116c00150000", "not an OCC option symbol"),
        ("TOOLONG260116C00150000", "not an OCC option symbol"),
        ("AAPL260116X00150000", "not an OCC option symbol"),
        ("AAPL260116C0015000", "not an OCC option symbol"),
        ("AAPL 260116C00150000", "not an OCC option symbol"),
        ("AAPL260230C00150000", "impossible date"),
        ("AAPL261301C00150000", "impossible date"),
        ("AAPL260116C00000000", "zero strike"),
    ],
)
def test_rejects_garbage_with_a_clear_error(symbol: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_occ(symbol)
    assert not is_option_symbol(symbol)
    assert option_spec_or_none(symbol) is None


def test_non_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_occ(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (OptionSpec("aapl", OptionType.CALL, Decimal(1), dt.date(2026, 1, 16)), "root"),
        (OptionSpec("SEVENCH", OptionType.CALL, Decimal(1), dt.date(2026, 1, 16)), "root"),
        (OptionSpec("A", OptionType.CALL, Decimal("1.0001"), dt.date(2026, 1, 16)), "3 decimal"),
        (OptionSpec("A", OptionType.CALL, Decimal(0), dt.date(2026, 1, 16)), "strike"),
        (OptionSpec("A", OptionType.CALL, Decimal(100000), dt.date(2026, 1, 16)), "strike"),
        (OptionSpec("A", OptionType.CALL, Decimal(1), dt.date(2100, 1, 1)), "year"),
    ],
)
def test_format_refuses_what_occ_cannot_say(spec: OptionSpec, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        format_occ(spec)


@given(specs)
def test_format_then_parse_is_identity(spec: OptionSpec) -> None:
    symbol = format_occ(spec)
    assert re.fullmatch(r"[A-Z0-9]{1,6}\d{6}[CP]\d{8}", symbol)
    assert parse_occ(symbol) == spec
    assert is_option_symbol(symbol)


@given(st.text(max_size=30))
def test_any_text_parses_to_its_own_symbol_or_raises_value_error(text: str) -> None:
    spec = option_spec_or_none(text)
    if spec is None:
        with pytest.raises(ValueError, match=r"\S"):  # always says what was wrong
            parse_occ(text)
        assert not is_option_symbol(text)
    else:
        assert format_occ(spec) == text


@given(specs, st.sampled_from([" ", "\t", " " * 2]), st.sampled_from(["", " ", "\n", "1", "C"]))
def test_leading_padding_or_trailing_junk_is_rejected(spec: OptionSpec, prefix: str, suffix: str) -> None:
    with pytest.raises(ValueError, match="not an OCC option symbol"):
        parse_occ(prefix + format_occ(spec) + suffix)
    with pytest.raises(ValueError, match="not an OCC option symbol"):
        parse_occ(format_occ(spec) + suffix + "1")
