"""Small parsing and formatting helpers both broker adapters share.

Numbers from a broker arrive as strings, ints or floats; syncd keeps them as exact
``Decimal`` values and refuses what is not a finite number, and what has more digits
than syncd keeps exactly: at most ``MAX_INTEGER_DIGITS`` (15) digits before the decimal
point and ``MAX_SIGNIFICANT_DIGITS`` (20) significant digits in all. The ``numeric``
columns would store more, but the arithmetic on these numbers (P&L, averages, sums) runs
under :data:`WIDE` (100 digits), where sums and products of numbers within these bounds
are exact: nothing a broker says is silently rounded (a 30-digit quantity used to be
stored rounded to 28 digits). Times are kept as aware UTC
datetimes. Each adapter turns the exceptions raised here into its own ``BadBrokerData``
(naming the broker, the account and the field).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow, localcontext
from functools import wraps
from typing import Any, ParamSpec, TypeGuard, TypeVar

MAX_INTEGER_DIGITS = 15  # < 10**15: more than any real quantity, price or balance
MAX_SIGNIFICANT_DIGITS = 20  # a float's 17 digits fit; a 30-digit "quantity" does not

# The context syncd's arithmetic on broker numbers runs in (see the module docstring): wide enough
# that sums and products of accepted numbers never round; only divisions do (then quantized).
WIDE = Context(prec=100, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])

_P = ParamSpec("_P")
_R = TypeVar("_R")


def exact(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` under :data:`WIDE` (a decorator for the pure cores doing arithmetic on broker numbers)."""

    @wraps(fn)
    def inner(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with localcontext(WIDE):
            return fn(*args, **kwargs)

    return inner


class NotANumber(InvalidOperation):
    """A value that is not a number (a bool, a list, text such as ``"abc"``)."""


class NotFinite(NotANumber):
    """NaN or an infinity: a number syncd never stores."""


class TooManyDigits(NotANumber):
    """More digits than syncd keeps exactly (``MAX_INTEGER_DIGITS``, ``MAX_SIGNIFICANT_DIGITS``)."""


def _digits(value: Decimal) -> tuple[int, int]:
    """(significant digits, digits before the point) of a finite ``value``; trailing zeros after the
    point say nothing ("1.50" is "1.5") and do not count."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite: checked by the caller
    significant = len(digits)
    while significant > 1 and exponent < 0 and digits[significant - 1] == 0:
        significant -= 1
        exponent += 1
    return significant, max(0, significant + exponent)


def significant_digits(value: Decimal) -> int:
    return _digits(value)[0]


def check_digits(value: Decimal) -> Decimal:
    """``value`` itself, or ``TooManyDigits`` when it has more digits than syncd keeps exactly."""
    significant, integer = _digits(value)
    if integer > MAX_INTEGER_DIGITS or significant > MAX_SIGNIFICANT_DIGITS:
        raise TooManyDigits(
            f"{str(value)[:40]!r} has more digits than syncd keeps exactly "
            f"(at most {MAX_INTEGER_DIGITS} before the point, {MAX_SIGNIFICANT_DIGITS} in all)"
        )
    return value


_SHORT = min(MAX_INTEGER_DIGITS, MAX_SIGNIFICANT_DIGITS)


def is_finite(value: object) -> TypeGuard[Decimal]:
    """Whether ``value`` is a finite Decimal (not NaN, not an infinity): syncd's one finite-number check.

    Broker numbers (:func:`decimal_or_none`), outbox payloads, account rows, OCC strikes and the
    simulator's wire all refuse a non-finite number through this (or :func:`finite`).
    """
    return isinstance(value, Decimal) and value.is_finite()


def finite(value: Decimal) -> Decimal:
    """``value`` itself, or ``NotFinite`` for NaN, the infinities and what is not a Decimal at all."""
    if not is_finite(value):
        raise NotFinite(f"{str(value)[:40]!r} is not finite")
    return value


def decimal_or_none(value: Any) -> Decimal | None:
    """A broker number (str, int, float or Decimal) as an exact Decimal; ``None`` and ``""`` -> ``None``.

    Raises ``NotANumber`` (an ``InvalidOperation``) for anything else and ``NotFinite`` for
    NaN and infinities. A float goes through ``str`` so ``0.1`` stays ``Decimal("0.1")``.
    """
    kind = type(value)
    if kind is str:
        # The hot path: brokers send their numbers as JSON strings ("180.14").
        if not value:
            return None
        text = value.strip()
    elif value is None:
        return None
    elif kind is bool:
        raise NotANumber("boolean is not a number")
    elif isinstance(value, (int, float, str, Decimal)):
        text = str(value).strip()
        if not text:
            return None
    else:
        raise NotANumber(f"{kind.__name__} is not a number")
    try:
        out = Decimal(text)
    except InvalidOperation:
        raise NotANumber(f"{text[:40]!r} is not a number") from None
    if not out.is_finite():
        raise NotFinite(f"{text[:40]!r} is not finite")
    if len(text) <= _SHORT and "e" not in text and "E" not in text:
        # Written without an exponent in at most MAX_INTEGER_DIGITS characters: it cannot
        # hold more digits than syncd keeps, so the digit count is not needed.
        return out
    return check_digits(out)


def as_utc(t: dt.datetime) -> dt.datetime:
    """``t`` in UTC; a naive ``t`` is taken to be UTC already."""
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def iso_z(t: dt.datetime) -> str:
    """``t`` as ISO 8601 in UTC with a ``Z`` suffix (``2025-12-03T14:30:00Z``)."""
    return as_utc(t).isoformat().replace("+00:00", "Z")


def plain(d: Decimal) -> str:
    """A Decimal as plain digits, no exponent and no trailing zeros (``Decimal("1E+2")`` -> ``"100"``)."""
    return format(d.normalize(), "f")


def batches(items: list[str], size: int) -> Iterator[list[str]]:
    """``items`` in consecutive slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
