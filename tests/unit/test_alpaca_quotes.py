"""Alpaca snapshots decoded directly (``syncd.brokers.alpaca_quotes``) agree with alpaca-py's models.

Issue 14: monitorCycle decoded every snapshot through alpaca-py's pydantic ``Snapshot`` and
``OptionsSnapshot`` (and imported ``alpaca.data``, hence pandas). The direct decoder must give
the same ``Quote`` on real payloads -- the wire tests' shapes, Alpaca's nanosecond timestamps,
string numbers, missing parts, and everything the simulator serves -- and refuse what the models
refused, naming the snapshot.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from alpaca.data.models.snapshots import OptionsSnapshot, Snapshot

from syncd.brokers.alpaca_quotes import snapshot_quote
from syncd.brokers.base import BadBrokerData
from syncd.brokers.parse import as_utc, decimal_or_none
from syncd.brokers.types import Greeks, Quote
from syncd.sim import Simulator
from tests.simfixtures import http_fixture, sim_fixture
from tests.unit.test_alpaca_wire import option_snapshot, stock_snapshot

sim = sim_fixture(seed=11, accounts=2, positions_per_account=40)
http = http_fixture()


def bad(message: str, field: str) -> Exception:
    return BadBrokerData(message, field=field, broker="alpaca")


def exact(body: Any) -> Any:
    """What the HTTP core hands the adapter: the JSON re-read with every fraction an exact Decimal."""
    return json.loads(json.dumps(body), parse_float=Decimal)


def reference(symbol: str, snap: dict[str, Any], *, option: bool) -> Quote:
    """The decoding syncd used before: alpaca-py's model, then float -> Decimal per field."""
    parsed: Any = (OptionsSnapshot if option else Snapshot)(symbol, snap)
    q, trade = parsed.latest_quote, parsed.latest_trade
    greeks: Greeks | None = None
    if option and (parsed.greeks is not None or parsed.implied_volatility is not None):
        g = parsed.greeks
        greeks = Greeks(
            delta=decimal_or_none(g.delta if g else None),
            gamma=decimal_or_none(g.gamma if g else None),
            theta=decimal_or_none(g.theta if g else None),
            vega=decimal_or_none(g.vega if g else None),
            rho=decimal_or_none(g.rho if g else None),
            implied_volatility=decimal_or_none(parsed.implied_volatility),
        )
    return Quote(
        symbol=symbol,
        bid=decimal_or_none(q.bid_price) if q is not None else None,
        ask=decimal_or_none(q.ask_price) if q is not None else None,
        last=decimal_or_none(trade.price) if trade is not None else None,
        bid_size=decimal_or_none(q.bid_size) if q is not None else None,
        ask_size=decimal_or_none(q.ask_size) if q is not None else None,
        at=as_utc(q.timestamp) if q is not None else (as_utc(trade.timestamp) if trade is not None else None),
        greeks=greeks,
    )


def agree(symbol: str, snap: dict[str, Any], *, option: bool) -> Quote:
    ours = snapshot_quote(symbol, exact(snap), bad, option=option)
    assert ours == reference(symbol, snap, option=option)  # Decimals compare by value
    return ours


def _nanos(snap: dict[str, Any]) -> dict[str, Any]:
    snap["latestQuote"]["t"] = "2026-01-05T15:00:00.123456789Z"
    snap["latestTrade"]["t"] = "2026-01-05T14:59:59.987654321-05:00"
    return snap


def _strings(snap: dict[str, Any]) -> dict[str, Any]:
    snap["latestQuote"].update(bp="1.25", ap="1.30")
    return snap


def _no_trade(snap: dict[str, Any]) -> dict[str, Any]:
    del snap["latestTrade"]
    return snap


def _no_quote(snap: dict[str, Any]) -> dict[str, Any]:
    del snap["latestQuote"]
    return snap


def _null_quote(snap: dict[str, Any]) -> dict[str, Any]:
    snap["latestQuote"] = None
    return snap


def _iv_only(snap: dict[str, Any]) -> dict[str, Any]:
    del snap["greeks"]
    return snap


def _greeks_only(snap: dict[str, Any]) -> dict[str, Any]:
    del snap["impliedVolatility"]
    return snap


SHAPES = {"plain": lambda s: s, "nanoseconds": _nanos, "string-numbers": _strings, "no-trade": _no_trade}
SHAPES_ANY = {"no-quote": _no_quote, "null-quote": _null_quote}


@pytest.mark.parametrize("shape", sorted({**SHAPES, **SHAPES_ANY}))
def test_stock_snapshots_agree(shape: str) -> None:
    snap = {**SHAPES, **SHAPES_ANY}[shape](stock_snapshot(180.1, 180.25, 180.17))
    agree("AAPL", snap, option=False)


@pytest.mark.parametrize("shape", sorted({**SHAPES, **SHAPES_ANY, "iv-only": _iv_only, "greeks-only": _greeks_only}))
def test_option_snapshots_agree(shape: str) -> None:
    edit = {**SHAPES, **SHAPES_ANY, "iv-only": _iv_only, "greeks-only": _greeks_only}[shape]
    got = agree("AAPL260116C00150000", edit(option_snapshot(3.05, 3.2)), option=True)
    assert got.greeks is not None  # every shape here keeps the greeks or the implied volatility


def test_an_option_without_greeks_has_none() -> None:
    assert agree("AAPL260116C00150000", option_snapshot(1.0, 1.2, greeks=False), option=True).greeks is None


def test_exact_digits_are_kept_not_rounded_through_a_float() -> None:
    snap = exact(stock_snapshot(1.0, 1.1, 1.05))
    snap["latestQuote"]["bp"] = Decimal("0.1000000000000001")
    assert snapshot_quote("X", snap, bad, option=False).bid == Decimal("0.1000000000000001")


BROKEN: dict[str, tuple[Any, str]] = {
    "not-an-object": ([1, 2], "snapshots.AAPL"),
    "quote-without-bid": ({"latestQuote": {"t": "2026-01-05T15:00:00Z", "ap": 1, "as": 1, "bs": 1}}, "snapshots.AAPL"),
    "quote-without-time": ({"latestQuote": {"bp": 1, "ap": 1, "as": 1, "bs": 1}}, "snapshots.AAPL"),
    "bad-time": ({"latestQuote": {"t": "yesterday", "bp": 1, "ap": 1, "as": 1, "bs": 1}}, "snapshots.AAPL"),
    "text-price": ({"latestTrade": {"t": "2026-01-05T15:00:00Z", "p": "lots", "s": 1}}, "snapshots.AAPL"),
    "trade-without-size": ({"latestTrade": {"t": "2026-01-05T15:00:00Z", "p": 1}}, "snapshots.AAPL"),
    "quote-not-an-object": ({"latestQuote": "1.0"}, "snapshots.AAPL"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_what_the_models_refused_is_refused(case: str) -> None:
    snap, field = BROKEN[case]
    with pytest.raises(Exception):  # noqa: B017,PT011 -- the models' own error, whatever its type
        reference("AAPL", snap, option=False)
    with pytest.raises(BadBrokerData) as ei:
        snapshot_quote("AAPL", exact(snap), bad, option=False)
    assert ei.value.field == field
    assert "AAPL" in str(ei.value)


def test_incomplete_greeks_are_refused_naming_them() -> None:
    snap = option_snapshot(3.0, 3.2)
    del snap["greeks"]["vega"]
    with pytest.raises(Exception):  # noqa: B017,PT011
        reference("AAPL260116C00150000", snap, option=True)
    with pytest.raises(BadBrokerData) as ei:
        snapshot_quote("AAPL260116C00150000", exact(snap), bad, option=True)
    assert ei.value.field == "snapshots.AAPL260116C00150000.greeks"


async def test_everything_the_simulator_serves_agrees(sim: Simulator, http: aiohttp.ClientSession) -> None:
    compared = 0
    for i in range(2):
        creds = sim.account_settings(i, "alpaca")
        assert creds.api_key is not None and creds.api_secret is not None
        headers = {
            "APCA-API-KEY-ID": creds.api_key.get_secret_value(),
            "APCA-API-SECRET-KEY": creds.api_secret.get_secret_value(),
        }
        async with http.get(f"{sim.url}/v2/positions", headers=headers) as r:
            held = [p["symbol"] for p in await r.json()]
        stocks = [s for s in held if len(s) < 15]
        options = [s for s in held if len(s) >= 15]
        async with http.get(
            f"{sim.url}/v2/stocks/snapshots", params={"symbols": ",".join(stocks)}, headers=headers
        ) as r:
            stock_body = await r.json()
        async with http.get(
            f"{sim.url}/v1beta1/options/snapshots", params={"symbols": ",".join(options)}, headers=headers
        ) as r:
            option_body = (await r.json())["snapshots"]
        for sym, snap in stock_body.items():
            agree(sym, copy.deepcopy(snap), option=False)
            compared += 1
        for sym, snap in option_body.items():
            agree(sym, copy.deepcopy(snap), option=True)
            compared += 1
    assert compared >= 40


@pytest.mark.parametrize(
    "value", [Decimal("1234567890123456.5"), Decimal("1.2345678901234567890123"), Decimal("1E+16"), 10**16, True]
)
def test_numbers_past_the_digit_limits_are_refused(value: Any) -> None:
    """The fast path for the HTTP core's Decimals and ints still refuses what syncd cannot keep exactly."""
    snap = exact(stock_snapshot(1.0, 1.1, 1.05))
    snap["latestQuote"]["bp"] = value
    with pytest.raises(BadBrokerData) as ei:
        snapshot_quote("AAPL", snap, bad, option=False)
    assert ei.value.field == "snapshots.AAPL"
    assert "latestQuote.bp" in str(ei.value)
