"""syncd.brokers.parse: the number, time and batching helpers both adapters use."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest

from syncd.brokers.parse import (
    NotANumber,
    NotFinite,
    as_utc,
    batches,
    decimal_or_none,
    finite,
    is_finite,
    iso_z,
    plain,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("1.50", Decimal("1.50")),
        (" 2 ", Decimal("2")),
        (3, Decimal(3)),
        (0.1, Decimal("0.1")),  # through str: exact as written, not the binary float
        (Decimal("-4.25"), Decimal("-4.25")),
    ],
)
def test_numbers_are_exact_decimals(value: Any, expected: Decimal | None) -> None:
    assert decimal_or_none(value) == expected


@pytest.mark.parametrize("value", [True, False, [], {}, "abc", "1,5", "   "])
def test_what_is_not_a_number_is_refused(value: Any) -> None:
    with pytest.raises(NotANumber) as info:
        decimal_or_none(value)
    assert not isinstance(info.value, NotFinite)
    assert isinstance(info.value, InvalidOperation)  # what callers that predate NotANumber catch


@pytest.mark.parametrize("value", ["NaN", "sNaN", "Infinity", "-inf", float("nan"), float("inf")])
def test_non_finite_numbers_are_refused(value: Any) -> None:
    with pytest.raises(NotFinite):
        decimal_or_none(value)


@pytest.mark.parametrize(
    "value", [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"), 1.5, "1", None]
)
def test_finite_refuses_what_is_not_a_finite_decimal(value: Any) -> None:
    assert not is_finite(value)
    with pytest.raises(NotFinite):
        finite(value)


def test_finite_keeps_a_finite_decimal() -> None:
    assert is_finite(Decimal("-0.5")) and finite(Decimal("1E+400")) == Decimal("1E+400")


def test_the_finite_check_is_written_once() -> None:
    """Guards issue 12: the NaN/infinity check lives in parse.is_finite alone; every other module calls it."""
    package = Path(__file__).resolve().parents[2] / "syncd"
    copies = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p != package / "brokers" / "parse.py" and ".is_finite()" in p.read_text()
    ]
    assert copies == []


def test_times_are_aware_utc() -> None:
    naive = dt.datetime(2025, 12, 3, 14, 30)
    assert as_utc(naive) == dt.datetime(2025, 12, 3, 14, 30, tzinfo=dt.UTC)
    eastern = dt.datetime(2025, 12, 3, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert as_utc(eastern).tzinfo is dt.UTC and as_utc(eastern).hour == 14
    assert iso_z(eastern) == "2025-12-03T14:30:00Z"


def test_plain_and_batches() -> None:
    assert [plain(Decimal(x)) for x in ("1E+2", "1.500", "-0.25", "0")] == ["100", "1.5", "-0.25", "0"]
    assert list(batches(["a", "b", "c", "d", "e"], 2)) == [["a", "b"], ["c", "d"], ["e"]]
    assert list(batches([], 3)) == []


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("123456789012345", True),  # 15 integer digits, on the short path
        ("-12345678901234", True),
        ("1234567890123456", False),  # 16 integer digits
        ("1e15", False),  # short, but the exponent makes 16 integer digits
        ("1E+14", True),
        ("0.12345678901234567890", True),  # 20 significant digits
        ("0.123456789012345678901", False),  # 21
        ("5.0000000000000000000000000", True),  # trailing zeros say nothing
        ("000000000000000000001.5", True),  # leading zeros neither
    ],
)
def test_the_digit_limits_hold_on_the_short_path_and_the_long(text: str, ok: bool) -> None:
    """Guards the fast path: a literal short enough to skip the digit count can never exceed it."""
    if ok:
        assert decimal_or_none(text) == Decimal(text)
    else:
        with pytest.raises(NotANumber, match="more digits"):
            decimal_or_none(text)
