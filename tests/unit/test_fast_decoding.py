"""The msgspec fast path (syncd.brokers.fast) against alpaca-py's models: they agree, or the fast path declines.

The fast path may only ever accept: for every payload, either it declines (``Slow``: the
adapter then decodes the bytes with json + alpaca-py's pydantic models, as it always did)
or it returns exactly what the slow path returns. Real payloads (alpaca-py's own test
fixtures, the simulator's answers) must be taken by the fast path, and every lie the
adapters refuse must be declined by it (then refused by the slow path, unchanged).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, cast

import aiohttp
import msgspec
import pytest
from alpaca.trading.models import Position as AlpacaPosition
from alpaca.trading.models import TradeAccount
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from syncd.brokers.alpaca import AlpacaBroker
from syncd.brokers.base import BadBrokerData
from syncd.brokers.fast import FastDecoder, Slow, may_hide_long_number, number, struct_of
from syncd.brokers.http import HttpCore, Reply
from syncd.brokers.parse import decimal_or_none
from syncd.brokers.types import Balances, Position
from syncd.settings import AccountSettings
from syncd.sim import SimConfig, start_simulator
from tests.unit import test_alpaca_wire as aw
from tests.unit import test_broker_lies as lies

# alpaca-py's own fixtures (github.com/alpacahq/alpaca-py, commit bd1fa9ea2fc3194914be9d47f7f5822a18a05b5f):
# tests/trading/trading_client/test_position_routes.py::test_get_all_positions and
# tests/trading/trading_client/test_account_routes.py::test_get_account, verbatim.
ALPACA_PY_POSITIONS = b"""
        [
            {
                "asset_id": "904837e3-3b76-47ec-b432-046db621571b",
                "symbol": "AAPL",
                "exchange": "NASDAQ",
                "asset_class": "us_equity",
                "avg_entry_price": "100.0",
                "qty": "5",
                "side": "long",
                "market_value": "600.0",
                "cost_basis": "500.0",
                "unrealized_pl": "100.0",
                "unrealized_plpc": "0.20",
                "unrealized_intraday_pl": "10.0",
                "unrealized_intraday_plpc": "0.0084",
                "current_price": "120.0",
                "lastday_price": "119.0",
                "change_today": "0.0084",
                "usd": {
                    "avg_entry_price": "100.0",
                    "market_value": "600.0",
                    "cost_basis": "500.0",
                    "unrealized_pl": "100.0",
                    "unrealized_plpc": "0.20",
                    "unrealized_intraday_pl": "10.0",
                    "unrealized_intraday_plpc": "0.0084",
                    "current_price": "120.0",
                    "lastday_price": "119.0",
                    "change_today": "0.0084"
                }
            }
        ]
"""

ALPACA_PY_ACCOUNT = b"""
        {
          "account_blocked": false,
          "accrued_fees": "0",
          "account_number": "010203ABCD",
          "buying_power": "262113.632",
          "cash": "-23140.2",
          "created_at": "2019-06-12T22:47:07.99658Z",
          "currency": "USD",
          "daytrade_count": 0,
          "daytrading_buying_power": "262113.632",
          "equity": "103820.56",
          "id": "e6fe16f3-64a4-4921-8928-cadf02f92f98",
          "initial_margin": "63480.38",
          "last_equity": "103529.24",
          "last_maintenance_margin": "38000.832",
          "non_marginable_buying_power": "98945.02",
          "long_market_value": "126960.76",
          "maintenance_margin": "38088.228",
          "multiplier": "4",
          "pattern_day_trader": false,
          "portfolio_value": "103820.56",
          "regt_buying_power": "80680.36",
          "short_market_value": "0",
          "shorting_enabled": true,
          "sma": "0",
          "status": "ACTIVE",
          "trade_suspended_by_user": false,
          "trading_blocked": false,
          "transfers_blocked": false,
          "options_buying_power": "262113.632",
          "options_approved_level": "1",
          "options_trading_level": "1"
        }
"""


def decoding_broker() -> AlpacaBroker:
    """An adapter for decoding only: no session (nothing here sends a request)."""
    broker = AlpacaBroker.__new__(AlpacaBroker)
    broker.account = AccountSettings(
        name="alpaca-fast", broker="alpaca", api_key=SecretStr(aw.KEY), api_secret=SecretStr(aw.SECRET)
    )
    broker._http = HttpCore(
        broker="alpaca", account=broker.account.name, session=cast(Any, None), timeout_s=5, headers={}
    )
    return broker


@pytest.fixture
def broker() -> AlpacaBroker:
    return decoding_broker()


def reply(body: bytes | Any) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Reply(200, {"Content-Type": "application/json"}, raw)


def slow_or_error(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except BadBrokerData as exc:
        return exc


def agree_positions(broker: AlpacaBroker, body: bytes | Any, *, fast_must_take: bool) -> list[Position] | None:
    """The fast path declines, or gives exactly the slow path's answer. Returns the fast answer."""
    r = reply(body)
    slow = slow_or_error(lambda: broker._slow_positions("alpaca GET /v2/positions", r))
    try:
        fast = broker._fast_positions(r)
    except Slow:
        assert not fast_must_take, f"the fast path declined a real payload (slow path: {slow!r})"
        return None
    assert fast == slow, "the fast path accepted what the slow path refuses or reads differently"
    return fast


def agree_account(broker: AlpacaBroker, body: bytes | Any, *, fast_must_take: bool) -> Balances | None:
    r = reply(body)
    slow = slow_or_error(lambda: broker._slow_account("alpaca GET /v2/account", r))
    try:
        fast = broker._fast_account(r)
    except Slow:
        assert not fast_must_take, f"the fast path declined a real payload (slow path: {slow!r})"
        return None
    assert fast == slow, "the fast path accepted what the slow path refuses or reads differently"
    return fast


# -- real payloads: taken, and read as alpaca-py reads them --------------------------------------------


def test_alpaca_py_fixtures_decode_the_same_both_ways(broker: AlpacaBroker) -> None:
    (p,) = agree_positions(broker, ALPACA_PY_POSITIONS, fast_must_take=True) or []
    assert (p.symbol, p.quantity, p.cost_basis, p.current_price) == (
        "AAPL",
        Decimal(5),
        Decimal("500.0"),
        Decimal("120.0"),
    )
    b = agree_account(broker, ALPACA_PY_ACCOUNT, fast_must_take=True)
    assert b is not None and (b.equity, b.cash) == (Decimal("103820.56"), Decimal("-23140.2"))


def test_mirrors_have_the_models_fields() -> None:
    for model in (AlpacaPosition, TradeAccount):
        for strict in (False, True):
            mirror = struct_of(model, strict=strict)
            assert mirror.__struct_fields__ == tuple(model.model_fields)
            required = {n for n, f in model.model_fields.items() if f.is_required()}
            assert {f.name for f in msgspec.structs.fields(mirror) if f.required} == required


def test_wire_test_payloads_and_their_variants_agree(broker: AlpacaBroker) -> None:
    taken = [
        [aw.position_json()],
        [aw.position_json(side="short", qty="-5", qty_available="-5", cost_basis="-502.5", market_value="-600")],
        [aw.position_json(symbol="AAPL260116C00150000", asset_class="us_option", asset_marginable=False)],
        [aw.position_json(symbol=f"S{i}") for i in range(60)],
        [{k: v for k, v in aw.position_json().items() if k not in ("qty_available", "current_price")}],
        [],
    ]
    for body in taken:
        agree_positions(broker, body, fast_must_take=True)
    agree_account(broker, aw.ACCOUNT_JSON, fast_must_take=True)
    # keys alpaca-py does not know: ignored by both, as pydantic ignores them
    agree_positions(broker, [aw.position_json(cost_basis_new="1", extra={"a": [1, 2]})], fast_must_take=True)
    agree_account(broker, {**aw.ACCOUNT_JSON, "balance_asof": "2024-01-01", "crypto_tier": 1}, fast_must_take=True)


async def test_the_simulators_answers_are_taken_and_agree(broker: AlpacaBroker) -> None:
    sim = await start_simulator(
        SimConfig(
            seed=7,
            accounts=3,
            positions_per_account=40,
            clock="manual",
            start_time=dt.datetime(2025, 12, 3, 16, 0, tzinfo=dt.UTC),
        )
    )
    try:
        async with aiohttp.ClientSession() as session:
            for acct in sim.accounts:
                headers = {"APCA-API-KEY-ID": acct.api_key, "APCA-API-SECRET-KEY": acct.api_secret}
                for path in ("/v2/positions", "/v2/account"):
                    async with session.get(sim.url + path, headers=headers) as resp:
                        body = await resp.read()
                    if path == "/v2/positions":
                        assert agree_positions(broker, body, fast_must_take=True)
                    else:
                        assert agree_account(broker, body, fast_must_take=True)
    finally:
        await sim.stop()


# -- lies: declined by the fast path, refused by the slow one as before ----------------------------------


def _lie_bodies() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, (over, _) in lies.ALPACA_POSITION_LIES.items():
        out.append((name, [aw.position_json(symbol="MSFT"), aw.position_json(**over)]))
    for name, (alpaca_rows, _, _) in lies.POSITION_ANSWER_LIES.items():
        out.append((name, alpaca_rows()))
    for mark in ("current_price", "market_value", "unrealized_pl"):
        out.append((f"nan-{mark}", [aw.position_json(**{mark: "NaN"})]))
    out.append(("non-occ-option", [aw.position_json(symbol="AAPL_JAN_150_C", asset_class="us_option")]))
    out.append(("number-for-string", [aw.position_json(qty=5)]))
    out.append(("bad-uuid", [aw.position_json(asset_id="nope")]))
    out.append(("unknown-exchange", [aw.position_json(exchange="MOON")]))
    out.append(("unknown-side", [aw.position_json(side="sideways")]))
    out.append(("not-a-list", {"positions": []}))
    long_number = json.dumps([aw.position_json(x=0.5)]).replace('"x": 0.5', '"x": 1.1234567890123456789012')
    out.append(("long-number-in-unknown-key", long_number.encode()))
    return out


@pytest.mark.parametrize(("name", "body"), _lie_bodies(), ids=[n for n, _ in _lie_bodies()])
def test_every_position_lie_is_declined_by_the_fast_path(broker: AlpacaBroker, name: str, body: Any) -> None:
    with pytest.raises(Slow):
        broker._fast_positions(reply(body))
    assert isinstance(
        slow_or_error(lambda: broker._slow_positions("alpaca GET /v2/positions", reply(body))), BadBrokerData
    )


@pytest.mark.parametrize(
    "body",
    [
        {**aw.ACCOUNT_JSON, "equity": lies.DIGITS_30},
        {**aw.ACCOUNT_JSON, "equity": "NaN"},
        {**aw.ACCOUNT_JSON, "equity": "Infinity"},
        {**aw.ACCOUNT_JSON, "equity": None},
        {**aw.ACCOUNT_JSON, "status": "NOPE"},
        {**aw.ACCOUNT_JSON, "options_approved_level": "1e3"},  # msgspec's lax mode would read 1000
        {**aw.ACCOUNT_JSON, "options_approved_level": " 1"},
        {**aw.ACCOUNT_JSON, "daytrade_count": 1.5},
        {**aw.ACCOUNT_JSON, "account_blocked": "yes"},
        json.dumps(aw.ACCOUNT_JSON)
        .replace('"daytrade_count": 0', '"daytrade_count": 1.0000000000000000000001')
        .encode(),
        json.dumps(aw.ACCOUNT_JSON)
        .replace('"equity": ', '"equity_raw": 1.1234567890123456789012, "equity": ')
        .encode(),
        b"<html>oops</html>",
    ],
)
def test_every_account_lie_is_declined_by_the_fast_path(broker: AlpacaBroker, body: Any) -> None:
    with pytest.raises(Slow):
        broker._fast_account(reply(body))
    agree_account(broker, body, fast_must_take=False)


# -- numbers: the fast subset of decimal_or_none ------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
        st.text(alphabet="0123456789.-+eE nNaIif_", max_size=30),
        st.from_regex(r"-?\d{1,20}(\.\d{0,25})?", fullmatch=True),
    )
)
def test_number_is_decimal_or_none_or_declines(text: str) -> None:
    try:
        fast = number(text)
    except Slow:
        return
    assert fast == decimal_or_none(text) and str(fast) == str(decimal_or_none(text))


@settings(max_examples=200, deadline=None)
@given(
    qty=st.from_regex(r"-?\d{1,18}(\.\d{0,8})?", fullmatch=True),
    price=st.from_regex(r"-?\d{1,8}(\.\d{0,12})?", fullmatch=True),
    side=st.sampled_from(["long", "short"]),
)
def test_generated_positions_agree(qty: str, price: str, side: str) -> None:
    broker = decoding_broker()
    body = [aw.position_json(qty=qty, qty_available=qty, avg_entry_price=price, current_price=price, side=side)]
    r = reply(body)
    try:
        fast = broker._fast_positions(r)
    except Slow:
        return
    assert fast == broker._slow_positions("alpaca GET /v2/positions", r)


def test_guards() -> None:
    assert may_hide_long_number(b'{"a": 1.1234567890123456789012}')
    assert not may_hide_long_number(b'{"a": "1.5", "b": true}')
    assert FastDecoder(AlpacaPosition, many=True).decode(b"[]") == []


# -- positions_key: the positions as the broker wrote them, but their marks -------------------------------


def _with_marks(body: Any, current: str | None = "1.25", value: str | None = "6.25", pl: str | None = "0.5") -> Any:
    """``body``'s rows with these marks (None: the body is not a list of objects, returned as it is)."""
    rows = json.loads(body) if isinstance(body, bytes) else body
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return None
    return [{**r, "current_price": current, "market_value": value, "unrealized_pl": pl} for r in rows]


def test_positions_key_leaves_out_the_marks_and_nothing_else(broker: AlpacaBroker) -> None:
    rows = [aw.position_json(symbol="MSFT"), aw.position_json(symbol="AAPL251219C00150000", asset_class="us_option")]
    key = broker._positions_key(reply(rows))
    assert key is not None
    assert broker._positions_key(reply(_with_marks(rows))) == key  # other prices, same positions
    assert broker._positions_key(reply(_with_marks(rows, None, None, None))) == key
    for field, value in (("qty", "6"), ("qty_available", "1"), ("avg_entry_price", "99.5"), ("cost_basis", "1.5")):
        changed = [rows[0], {**rows[1], field: value}]
        assert broker._positions_key(reply(changed)) != key, field
    assert broker._positions_key(reply([rows[0], {**rows[1], "side": "short"}])) != key
    assert broker._positions_key(reply([rows[1], rows[0]])) != key  # another order: decoded again (harmless)


@pytest.mark.parametrize(
    "marks",
    [("-1.25", "6.25", "0.5"), ("1.2.3", "6.25", "0.5"), ("1.25", "--6", "0.5"), ("1.25", "6.25", "NaN")],
    ids=["negative-price", "two-points", "two-minus", "nan"],
)
def test_positions_key_checks_the_marks_as_decoding_does(broker: AlpacaBroker, marks: tuple[str, str, str]) -> None:
    """A mark decoding refuses gives no key: the pass decodes the answer and refuses it as always."""
    body = _with_marks([aw.position_json(symbol="MSFT")], *marks)
    assert broker._positions_key(reply(body)) is None
    assert isinstance(
        slow_or_error(lambda: broker._slow_positions("alpaca GET /v2/positions", reply(body))), BadBrokerData
    )


@pytest.mark.parametrize(("name", "body"), _lie_bodies(), ids=[n for n, _ in _lie_bodies()])
def test_a_lie_has_no_key_a_taken_answer_could_share(broker: AlpacaBroker, name: str, body: Any) -> None:
    """positions_key's promise: an answer with the key of one decoding took is taken too. So a lie
    either has no key, or what it lies in is part of the key: with good marks it is still refused."""
    if broker._positions_key(reply(body)) is None:
        return
    good_marks = _with_marks(body)
    assert good_marks is not None, name
    assert broker._positions_key(reply(good_marks)) == broker._positions_key(reply(body))
    assert isinstance(
        slow_or_error(lambda: broker._slow_positions("alpaca GET /v2/positions", reply(good_marks))), BadBrokerData
    ), name
