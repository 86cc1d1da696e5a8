"""Alpaca market-data snapshots straight to :class:`~syncd.brokers.types.Quote` (monitorCycle's hot path).

``GET /v2/stocks/snapshots`` answers ``{SYMBOL: snapshot}`` and ``GET /v1beta1/options/snapshots``
``{"snapshots": {SYMBOL: snapshot}, "next_page_token": ...}`` (Alpaca's market-data API reference);
a snapshot holds ``latestQuote`` (``t``, ``bp``, ``bs``, ``ap``, ``as``, exchanges and conditions),
``latestTrade`` (``t``, ``p``, ``s``, ...), for stocks ``minuteBar``/``dailyBar``/``prevDailyBar``,
for options ``greeks`` (``delta``, ``gamma``, ``rho``, ``theta``, ``vega``) and ``impliedVolatility``.

alpaca-py's ``Snapshot``/``OptionsSnapshot`` models decoded these through pydantic (and pulled in
``alpaca.data``, hence pandas and numpy, at import), then every number went float -> Decimal:
about 40 % of an idle monitorCycle pass's CPU. This reads the JSON the HTTP core decoded (its
numbers already exact Decimals) field by field, requiring what those models require (a quote's
``t``, ``bp``, ``bs``, ``ap``, ``as``; a trade's ``t``, ``p``, ``s``; all five greeks) and
ignoring the bars, which syncd never reads. ``tests/unit/test_alpaca_quotes.py`` proves both
decodings agree on the payloads of the wire tests and the simulator.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from syncd.brokers.parse import MAX_INTEGER_DIGITS, MAX_SIGNIFICANT_DIGITS, as_utc, decimal_or_none
from syncd.brokers.types import Greeks, Quote

Bad = Callable[[str, str], Exception]

_GREEKS = ("delta", "gamma", "rho", "theta", "vega")
_SHORT = min(MAX_INTEGER_DIGITS, MAX_SIGNIFICANT_DIGITS)
_INT_LIMIT = 10**MAX_INTEGER_DIGITS


class _Unreadable(ValueError):
    """One field of a snapshot cannot be read; the message names it."""


def _number(obj: dict[str, Any], key: str, where: str, *, required: bool) -> Decimal | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Unreadable(f"{where}.{key}: field required")
        return None
    kind = type(value)
    if kind is Decimal:
        # The HTTP core's exact Decimal of a JSON fraction: finite (NaN and the infinities are not
        # JSON fractions). Written in at most _SHORT characters without an exponent, it cannot hold
        # more digits than syncd keeps (decimal_or_none's own fast path for strings).
        text = str(value)  # C; as_tuple() builds a named tuple in Python
        if len(text) <= _SHORT and "E" not in text:
            number: Decimal = value
            return number
    elif kind is int and -_INT_LIMIT < value < _INT_LIMIT:
        return Decimal(value)
    elif kind is bool or kind is dict or kind is list:
        raise _Unreadable(f"{where}.{key}: not a number")
    try:
        out = decimal_or_none(value)
    except (InvalidOperation, ValueError) as exc:
        raise _Unreadable(f"{where}.{key}: {exc}") from None
    if out is None and required:
        raise _Unreadable(f"{where}.{key}: not a number")
    return out


def _time(obj: dict[str, Any], where: str) -> dt.datetime:
    """An RFC 3339 timestamp (Alpaca's have up to nanoseconds: the digits past microseconds are dropped)."""
    value = obj.get("t")
    if not isinstance(value, str) or not value:
        raise _Unreadable(f"{where}.t: field required" if value is None else f"{where}.t: not a timestamp")
    text = value
    dot = text.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        if end - dot > 7:  # more than 6 fraction digits: Python reads at most microseconds
            text = text[: dot + 7] + text[end:]
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _Unreadable(f"{where}.t: {value[:40]!r} is not a timestamp") from None
    return as_utc(parsed)


def _part(snap: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = snap.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Unreadable(f"{key}: not an object")
    return value


def _greeks(snap: dict[str, Any]) -> Greeks | None:
    raw = _part(snap, "greeks")
    iv = _number(snap, "impliedVolatility", "snapshot", required=False) if "impliedVolatility" in snap else None
    if raw is None and iv is None:
        return None
    values = {k: _number(raw, k, "greeks", required=True) for k in _GREEKS} if raw is not None else {}
    return Greeks(
        delta=values.get("delta"),
        gamma=values.get("gamma"),
        theta=values.get("theta"),
        vega=values.get("vega"),
        rho=values.get("rho"),
        implied_volatility=iv,
    )


def snapshot_quote(symbol: str, snap: Any, bad: Bad, *, option: bool) -> Quote:
    """The :class:`Quote` of one snapshot (bid/ask/sizes and time from ``latestQuote``, last from ``latestTrade``).

    Raises what ``bad(message, field)`` makes (``BadBrokerData``) when the snapshot is not an
    object or a field syncd reads is missing or not a number; the range checks
    (``sanity.check_quote``) are the caller's, as before.
    """
    where = f"snapshots.{symbol}"
    if not isinstance(snap, dict):
        raise bad(f"snapshot of {symbol} is not an object", where)
    try:
        q = _part(snap, "latestQuote")
        trade = _part(snap, "latestTrade")
        bid = ask = bid_size = ask_size = last = None
        at: dt.datetime | None = None
        if q is not None:
            at = _time(q, "latestQuote")
            bid = _number(q, "bp", "latestQuote", required=True)
            bid_size = _number(q, "bs", "latestQuote", required=True)
            ask = _number(q, "ap", "latestQuote", required=True)
            ask_size = _number(q, "as", "latestQuote", required=True)
        if trade is not None:
            trade_at = _time(trade, "latestTrade")
            last = _number(trade, "p", "latestTrade", required=True)
            _number(trade, "s", "latestTrade", required=True)
            at = at or trade_at
    except _Unreadable as exc:
        raise bad(f"cannot read the snapshot of {symbol}: {exc}", where) from None
    try:
        greeks = _greeks(snap) if option else None
    except _Unreadable as exc:
        raise bad(f"cannot read the greeks of {symbol}: {exc}", f"{where}.greeks") from None
    return Quote(symbol=symbol, bid=bid, ask=ask, last=last, bid_size=bid_size, ask_size=ask_size, at=at, greeks=greeks)


__all__ = ["snapshot_quote"]
