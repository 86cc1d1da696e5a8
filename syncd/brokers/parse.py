"""Small parsing and formatting helpers both broker adapters share.

Numbers from a broker arrive as strings, ints or floats; syncd keeps them as exact
``Decimal`` values and refuses what is not a finite number. Times are kept as aware UTC
datetimes. Each adapter turns the exceptions raised here into its own ``BadBrokerData``
(naming the broker, the account and the field).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Any


class NotANumber(InvalidOperation):
    """A value that is not a number (a bool, a list, text such as ``"abc"``)."""


class NotFinite(NotANumber):
    """NaN or an infinity: a number syncd never stores."""


def decimal_or_none(value: Any) -> Decimal | None:
    """A broker number (str, int, float or Decimal) as an exact Decimal; ``None`` and ``""`` -> ``None``.

    Raises ``NotANumber`` (an ``InvalidOperation``) for anything else and ``NotFinite`` for
    NaN and infinities. A float goes through ``str`` so ``0.1`` stays ``Decimal("0.1")``.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise NotANumber("boolean is not a number")
    if not isinstance(value, (int, float, str, Decimal)):
        raise NotANumber(f"{type(value).__name__} is not a number")
    try:
        out = Decimal(str(value).strip())
    except InvalidOperation:
        raise NotANumber(f"{str(value)[:40]!r} is not a number") from None
    if not out.is_finite():
        raise NotFinite(f"{value!r} is not finite")
    return out


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
