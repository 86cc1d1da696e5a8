"""How the commands print numbers and times, one way everywhere (docs/commands.md, "Numbers").

The database keeps ``numeric`` values at whatever scale they arrived (``19``, ``19.0``,
``180.140000``); a person should see ``19``, ``19`` and ``180.14``:

* a **quantity** without trailing zeros (``19``, ``0.5``, ``-3``);
* **money** (P&L, equity, cash) with two decimals and thousands separators (``2,380.46``),
  ``signed`` ones with ``+``/``-``;
* a **price** as the broker gave it, normalized: trailing zeros dropped, but at least two
  decimals (``180.14``, ``2380.455``, ``0.05``, ``180.00``);
* ``None`` (nothing known) as ``-``.

For JSON, :func:`json_number` gives an ``int`` when the value is whole, else a ``float``
(exact for the up-to-15 significant digits money, prices and quantities have).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

NONE = "-"
_CENT = Decimal("0.01")


def _plain(d: Decimal) -> str:
    """``d`` without trailing zeros or an exponent; never ``-0``."""
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def quantity(value: Decimal | int | None) -> str:
    if value is None:
        return NONE
    return _plain(Decimal(value))


def money(value: Decimal | int | None, *, signed: bool = False) -> str:
    if value is None:
        return NONE
    d = Decimal(value).quantize(_CENT, rounding=ROUND_HALF_UP)
    if d == 0:
        d = abs(d)
    return f"{d:+,.2f}" if signed and d != 0 else f"{d:,.2f}"


def price(value: Decimal | int | None) -> str:
    if value is None:
        return NONE
    text = _plain(Decimal(value))
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac:0<2}"


def json_number(value: Decimal | int | None) -> int | float | None:
    if value is None:
        return None
    d = Decimal(value)
    return int(d) if d == d.to_integral_value() else float(d)


def timestamp(at: datetime | None) -> str:
    """``2026-12-02 02:54:58Z`` (UTC, to the second), or ``never``."""
    if at is None:
        return "never"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(at: datetime | None, now: datetime) -> str:
    """How long before ``now``: ``4s``, ``12m``, ``3h``, ``2d`` (``in 5s`` for the future)."""
    if at is None:
        return NONE
    delta = now - at
    future = delta < timedelta(0)
    secs = int(abs(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            text = f"{secs // size}{unit}"
            break
    else:
        text = f"{secs}s"
    return f"in {text}" if future else f"{text} ago"
