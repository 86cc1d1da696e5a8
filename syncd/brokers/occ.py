"""OCC option symbols: ``AAPL260116C00150000`` <-> :class:`OptionSpec`.

The OSI/OCC format, as Alpaca and Tradier write it (no padding spaces):

- root: 1 to 6 characters, letters and digits (adjusted roots such as ``BRKB1``
  or ``SPXW`` included), the symbol's underlying;
- expiration: ``YYMMDD`` (years 2000-2099);
- ``C`` or ``P``;
- strike x 1000 as 8 digits (``00150000`` = 150.000; fractions to 1/1000).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from decimal import Decimal, InvalidOperation

from syncd.brokers.parse import is_finite
from syncd.brokers.types import OptionSpec, OptionType

_OCC_RE = re.compile(r"^(?P<root>[A-Z0-9]{1,6})(?P<date>\d{6})(?P<cp>[CP])(?P<strike>\d{8})$")
_ROOT_RE = re.compile(r"^[A-Z0-9]{1,6}$")
_MAX_STRIKE = Decimal("99999.999")
_THOUSAND = Decimal(1000)


def is_option_symbol(symbol: str) -> bool:
    """True when ``symbol`` is a well-formed OCC option symbol (date included)."""
    try:
        parse_occ(symbol)
    except ValueError:
        return False
    return True


def parse_occ(symbol: str) -> OptionSpec:
    """Parse an OCC option symbol; ``ValueError`` says what is wrong with it."""
    if not isinstance(symbol, str):
        raise ValueError(f"OCC option symbol must be a string, got {type(symbol).__name__}")
    m = _OCC_RE.match(symbol)
    if m is None:
        raise ValueError(
            f"not an OCC option symbol: {symbol[:40]!r} (expected ROOT + YYMMDD + C/P"
            " + 8-digit strike x 1000, e.g. 'AAPL260116C00150000')"
        )
    root, date_s, cp, strike_s = m.group("root", "date", "cp", "strike")
    try:
        expiration = dt.date(2000 + int(date_s[:2]), int(date_s[2:4]), int(date_s[4:6]))
    except ValueError:
        raise ValueError(f"OCC option symbol {symbol!r} has an impossible date {date_s!r}") from None
    strike = Decimal(int(strike_s)) / _THOUSAND
    if strike == 0:
        raise ValueError(f"OCC option symbol {symbol!r} has a zero strike")
    return OptionSpec(
        underlying=root,
        option_type=OptionType.CALL if cp == "C" else OptionType.PUT,
        strike=strike,
        expiration=expiration,
    )


@functools.lru_cache(maxsize=65536)
def parse_occ_cached(symbol: str) -> OptionSpec:
    """:func:`parse_occ`, remembered: the same option is read on every pass (``OptionSpec`` is frozen)."""
    return parse_occ(symbol)


def format_occ(spec: OptionSpec) -> str:
    """The OCC symbol of ``spec``; ``ValueError`` when it cannot be written in OCC form."""
    root = spec.underlying
    if not _ROOT_RE.match(root):
        raise ValueError(f"option root must be 1-6 upper-case letters or digits, got {root[:40]!r}")
    if not 2000 <= spec.expiration.year <= 2099:
        raise ValueError(f"expiration year {spec.expiration.year} does not fit OCC's YYMMDD")
    try:
        strike = Decimal(spec.strike)
        milli = strike * _THOUSAND
    except (InvalidOperation, TypeError):
        raise ValueError(f"strike is not a number: {spec.strike!r}") from None
    if not is_finite(strike) or strike <= 0 or strike > _MAX_STRIKE:
        raise ValueError(f"strike must be in (0, {_MAX_STRIKE}], got {spec.strike}")
    if milli != milli.to_integral_value():
        raise ValueError(f"strike {spec.strike} has more than 3 decimal places")
    cp = "C" if spec.option_type == OptionType.CALL else "P"
    return f"{root}{spec.expiration:%y%m%d}{cp}{int(milli):08d}"


def option_spec_or_none(symbol: str) -> OptionSpec | None:
    """The option spec of an OCC symbol, or ``None`` for anything else (a stock ticker).

    Remembered per symbol (``OptionSpec`` is frozen): monitorCycle sorts every held symbol on
    every pass, and a stock ticker's parse fails anew each time otherwise."""
    return _spec_or_none(symbol) if isinstance(symbol, str) else None


@functools.lru_cache(maxsize=65536)
def _spec_or_none(symbol: str) -> OptionSpec | None:
    try:
        return parse_occ(symbol)
    except ValueError:
        return None
