"""Alpaca adapter on the wire (aioresponses): parsing, request bodies, every error class, retries.

Retry waits are recorded by an injected sleep, never slept.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from pydantic import SecretStr
from structlog.testing import capture_logs

from syncd.brokers import alpaca as alpaca_mod
from syncd.brokers.alpaca import AlpacaBroker, build_order_payload
from syncd.brokers.base import (
    BadBrokerData,
    Broker,
    BrokerAuthFailed,
    BrokerError,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    OrderNotFound,
)
from syncd.brokers.types import (
    AssetClass,
    Intent,
    LegRequest,
    OptionType,
    OrderClass,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
)
from syncd.settings import AccountSettings
from tests.unit.broker_wire import NOW, Recorder, calls, url_pattern

KEY = "PKWIRETESTKEY0001"
SECRET = "wire-test-secret-do-not-leak-0001"
BASE = "https://paper-api.alpaca.markets"
DATA = "https://data.alpaca.markets"


@pytest.fixture
def account() -> AccountSettings:
    return AccountSettings(name="alpaca-wire", broker="alpaca", api_key=SecretStr(KEY), api_secret=SecretStr(SECRET))


@pytest.fixture
def broker(account: AccountSettings, session: aiohttp.ClientSession, rec: Recorder) -> AlpacaBroker:
    return AlpacaBroker(account, session=session, **rec.wiring())


def url(path: str, base: str = BASE) -> re.Pattern[str]:
    """Match ``base + path`` with any query string."""
    return url_pattern(base, path)


def no_secret(exc: BaseException) -> None:
    assert KEY not in str(exc)
    assert SECRET not in str(exc)


# -- JSON as Alpaca sends it ------------------------------------------------------------


def order_json(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "client_order_id": "syncd-1",
        "created_at": "2026-01-05T15:00:00.123456Z",
        "updated_at": "2026-01-05T15:00:01Z",
        "submitted_at": "2026-01-05T15:00:00.2Z",
        "filled_at": None,
        "expired_at": None,
        "canceled_at": None,
        "failed_at": None,
        "replaced_at": None,
        "replaced_by": None,
        "replaces": None,
        "asset_id": "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415",
        "symbol": "AAPL",
        "asset_class": "us_equity",
        "notional": None,
        "qty": "10",
        "filled_qty": "0",
        "filled_avg_price": None,
        "order_class": "",
        "order_type": "market",
        "type": "market",
        "side": "buy",
        "time_in_force": "day",
        "limit_price": None,
        "stop_price": None,
        "status": "accepted",
        "extended_hours": False,
        "legs": None,
        "trail_percent": None,
        "trail_price": None,
        "hwm": None,
    }
    base.update(over)
    return base


def mleg_json(**over: Any) -> dict[str, Any]:
    legs = [
        order_json(
            symbol="AAPL260116C00150000",
            asset_class="us_option",
            side="buy",
            position_intent="buy_to_open",
            ratio_qty="1",
            type="",
            order_type="",
            qty="67",
            status="filled",
            filled_qty="67",
            filled_avg_price="3.10",
            order_class="mleg",
        ),
        order_json(
            symbol="AAPL260116C00160000",
            asset_class="us_option",
            side="sell",
            position_intent="sell_to_open",
            ratio_qty="1",
            type="",
            order_type="",
            qty="67",
            status="filled",
            filled_qty="67",
            filled_avg_price="1.00",
            order_class="mleg",
        ),
    ]
    base = order_json(
        symbol="",
        asset_class="",
        asset_id="",
        side="",
        order_class="mleg",
        type="limit",
        order_type="limit",
        qty="67",
        filled_qty="67",
        filled_avg_price="2.10",
        limit_price="2.1",
        status="filled",
        legs=legs,
        client_order_id="syncd-mleg-1",
    )
    base.update(over)
    return base


def position_json(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "asset_id": "904837e3-3b76-47ec-b432-046db621571b",
        "symbol": "AAPL",
        "exchange": "NASDAQ",
        "asset_class": "us_equity",
        "asset_marginable": True,
        "avg_entry_price": "100.5",
        "qty": "5",
        "qty_available": "4",
        "side": "long",
        "market_value": "600.0",
        "cost_basis": "502.5",
        "unrealized_pl": "97.5",
        "unrealized_plpc": "0.19",
        "unrealized_intraday_pl": "10.0",
        "unrealized_intraday_plpc": "0.0084",
        "current_price": "120.0",
        "lastday_price": "119.0",
        "change_today": "0.0084",
    }
    base.update(over)
    return base


ACCOUNT_JSON = {
    "id": "e6fe16f3-64a4-4921-8928-cadf02f92f98",
    "account_number": "PA3ABCDEF",
    "status": "ACTIVE",
    "currency": "USD",
    "buying_power": "262113.632",
    "regt_buying_power": "262113.632",
    "cash": "-23140.2",
    "portfolio_value": "103820.56",
    "equity": "103820.56",
    "last_equity": "102000",
    "long_market_value": "126960.76",
    "short_market_value": "0",
    "pattern_day_trader": False,
    "trading_blocked": False,
    "transfers_blocked": False,
    "account_blocked": False,
    "created_at": "2024-01-01T00:00:00Z",
    "multiplier": "4",
    "shorting_enabled": True,
    "daytrade_count": 0,
}


# -- parsing ------------------------------------------------------------------------------


async def test_get_account(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/account"), payload=ACCOUNT_JSON)
    bal = await broker.get_account()
    assert bal.broker_account_id == "PA3ABCDEF"
    assert bal.equity == Decimal("103820.56")
    assert bal.cash == Decimal("-23140.2")
    assert bal.buying_power == Decimal("262113.632")
    assert bal.long_market_value == Decimal("126960.76")
    sent = calls(mock)[0][2]["headers"]
    assert sent["APCA-API-KEY-ID"] == KEY  # credentials travel in headers only


async def test_adapter_satisfies_protocol(broker: AlpacaBroker) -> None:
    assert isinstance(broker, Broker)
    assert broker.kind == "alpaca"
    assert broker.supports_stream


async def test_list_positions_stock_short_and_option(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(
        url("/v2/positions"),
        payload=[
            position_json(),
            position_json(symbol="TSLA", qty="-3", qty_available="-3", side="short", cost_basis="-600"),
            position_json(
                symbol="AAPL260116C00150000",
                asset_class="us_option",
                exchange="",
                qty="2",
                qty_available="1",
                avg_entry_price="3.2",
                cost_basis="640",
            ),
        ],
    )
    stock, short, opt = await broker.list_positions()
    assert (stock.symbol, stock.quantity, stock.qty_available) == ("AAPL", Decimal(5), Decimal(4))
    assert stock.option is None and stock.multiplier == 1
    assert stock.current_price == Decimal("120.0")
    assert (short.quantity, short.qty_available) == (Decimal(-3), Decimal(-3))
    assert opt.asset_class == AssetClass.US_OPTION
    assert opt.option is not None
    assert opt.option.option_type == OptionType.CALL
    assert opt.option.strike == Decimal(150)
    assert opt.option.expiration == dt.date(2026, 1, 16)
    assert opt.underlying == "AAPL" and opt.multiplier == 100


async def test_short_position_with_positive_qty_is_made_negative(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/positions"), payload=[position_json(qty="3", qty_available="3", side="short")])
    (pos,) = await broker.list_positions()
    assert pos.quantity == Decimal(-3)


async def test_empty_positions_is_an_empty_list(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/positions"), payload=[])
    assert await broker.list_positions() == []


async def test_positions_not_a_list_is_bad_data(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/positions"), payload={"positions": []})
    with pytest.raises(BadBrokerData) as ei:
        await broker.list_positions()
    assert ei.value.field == "positions"


async def test_bad_number_names_the_field(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/positions"), payload=[position_json(cost_basis="12,50")])
    with pytest.raises(BadBrokerData) as ei:
        await broker.list_positions()
    assert ei.value.field == "positions[0].cost_basis"


async def test_missing_required_field_names_it(broker: AlpacaBroker, mock: aioresponses) -> None:
    bad = position_json()
    del bad["symbol"]
    mock.get(url("/v2/positions"), payload=[bad])
    with pytest.raises(BadBrokerData) as ei:
        await broker.list_positions()
    assert ei.value.field == "positions[0].symbol"


async def test_option_position_with_bad_occ_symbol_is_bad_data(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/positions"), payload=[position_json(symbol="AAPL-JAN", asset_class="us_option")])
    with pytest.raises(BadBrokerData, match="OCC") as ei:
        await broker.list_positions()
    assert ei.value.field == "positions[0].symbol"


async def test_get_clock(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(
        url("/v2/clock"),
        payload={
            "timestamp": "2026-01-05T10:00:00.123-05:00",
            "is_open": True,
            "next_open": "2026-01-06T09:30:00-05:00",
            "next_close": "2026-01-05T16:00:00-05:00",
        },
    )
    clock = await broker.get_clock()
    assert clock.is_open
    assert clock.next_close == dt.datetime(2026, 1, 5, 21, 0, tzinfo=dt.UTC)
    assert clock.timestamp.tzinfo == dt.UTC


# -- orders ----------------------------------------------------------------------------------


async def test_get_order_simple(broker: AlpacaBroker, mock: aioresponses) -> None:
    body = order_json(status="filled", filled_qty="10", filled_avg_price="150.25", filled_at="2026-01-05T15:00:02Z")
    mock.get(url(f"/v2/orders/{body['id']}"), payload=body)
    order = await broker.get_order(body["id"])
    assert order.broker_order_id == body["id"]
    assert order.status == OrderStatus.FILLED
    assert order.filled_avg_price == Decimal("150.25")
    assert order.order_class == OrderClass.SIMPLE
    assert order.side == Side.BUY and order.type == OrderType.MARKET
    assert order.filled_at == dt.datetime(2026, 1, 5, 15, 0, 2, tzinfo=dt.UTC)
    ((_, sent_url, _),) = calls(mock)
    assert "nested=true" in sent_url


async def test_mleg_order_with_empty_fields_parses_with_legs(broker: AlpacaBroker, mock: aioresponses) -> None:
    """Alpaca quirk: mleg parents (and legs) carry "" for symbol/side/type; alpaca-py only cleans the top level."""
    body = mleg_json()
    mock.get(url(f"/v2/orders/{body['id']}"), payload=body)
    order = await broker.get_order(body["id"])
    assert order.order_class == OrderClass.MLEG
    assert order.side is None
    assert order.symbol == "AAPL"
    assert order.asset_class == AssetClass.US_OPTION
    assert order.limit_price == Decimal("2.1")
    assert [leg.symbol for leg in order.legs] == ["AAPL260116C00150000", "AAPL260116C00160000"]
    assert [leg.side for leg in order.legs] == [Side.BUY, Side.SELL]
    assert [leg.intent for leg in order.legs] == [Intent.OPEN, Intent.OPEN]
    assert [leg.ratio_qty for leg in order.legs] == [1, 1]
    assert order.legs[0].type == OrderType.LIMIT  # legs inherit the parent's type


async def test_zero_fill_price_is_unknown(broker: AlpacaBroker, mock: aioresponses) -> None:
    body = order_json(filled_avg_price="0")
    mock.get(url(f"/v2/orders/{body['id']}"), payload=body)
    assert (await broker.get_order(body["id"])).filled_avg_price is None


async def test_get_order_404_is_order_not_found(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/orders/nope"), status=404, payload={"code": 40410000, "message": "order not found"})
    with pytest.raises(OrderNotFound, match="order not found"):
        await broker.get_order("nope")


async def test_get_order_by_client_id(broker: AlpacaBroker, mock: aioresponses) -> None:
    body = order_json(client_order_id="syncd-42")
    mock.get(url("/v2/orders:by_client_order_id"), payload=body)
    mock.get(url("/v2/orders:by_client_order_id"), status=404, payload={"code": 40410000, "message": "not found"})
    found = await broker.get_order_by_client_id("syncd-42")
    assert found is not None and found.client_order_id == "syncd-42"
    assert await broker.get_order_by_client_id("syncd-43") is None
    sent = [u for _, u, _ in calls(mock)]
    assert all("client_order_id=syncd-4" in u for u in sent)


async def test_list_orders_paginates_with_after(
    account: AccountSettings, session: aiohttp.ClientSession, rec: Recorder, mock: aioresponses
) -> None:
    assert alpaca_mod.ORDERS_PAGE == 500  # Alpaca's maximum; a small page keeps the mocked bodies small
    broker = AlpacaBroker(account, session=session, orders_page=5, **rec.wiring())
    start = dt.datetime(2026, 1, 5, 14, 0, tzinfo=dt.UTC)
    page1 = [
        order_json(id=str(uuid.uuid4()), submitted_at=(start + dt.timedelta(seconds=i)).isoformat()) for i in range(5)
    ]
    page2 = [page1[-1]] + [
        order_json(id=str(uuid.uuid4()), submitted_at=(start + dt.timedelta(seconds=600 + i)).isoformat())
        for i in range(3)
    ]
    mock.get(url("/v2/orders"), payload=page1)
    mock.get(url("/v2/orders"), payload=page2)
    orders = await broker.list_orders("all", since=start - dt.timedelta(hours=1))
    assert len(orders) == 8  # the order repeated across pages is not counted twice
    first, second = (u for _, u, _ in calls(mock))
    for sent in (first, second):
        assert "limit=5" in sent and "direction=asc" in sent and "nested=true" in sent and "status=all" in sent
    assert "after=2026-01-05T13:00:00Z" in first
    assert "after=2026-01-05T14:00:03.999999Z" in second


async def test_list_orders_without_since_has_no_after(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/orders"), payload=[mleg_json()])
    (order,) = await broker.list_orders("open")
    assert len(order.legs) == 2
    ((_, sent, _),) = calls(mock)
    assert "after=" not in sent and "status=open" in sent


# -- submitting ----------------------------------------------------------------------------


async def test_submit_market_stock_body(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.post(url("/v2/orders"), payload=order_json(client_order_id="syncd-7"))
    req = OrderRequest(client_order_id="syncd-7", qty=Decimal(10), symbol="AAPL", side=Side.BUY)
    order = await broker.submit_order(req)
    assert order.client_order_id == "syncd-7"
    ((meth, _, kw),) = calls(mock)
    assert meth == "POST"
    assert kw["json"] == {
        "symbol": "AAPL",
        "qty": "10",
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": "syncd-7",
    }
    json.dumps(kw["json"])  # serialisable as sent


async def test_submit_limit_option_carries_position_intent(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.post(url("/v2/orders"), payload=order_json(symbol="AAPL260116P00100000", asset_class="us_option"))
    req = OrderRequest(
        client_order_id="syncd-8",
        qty=Decimal(2),
        type=OrderType.LIMIT,
        limit_price=Decimal("1.25"),
        symbol="AAPL260116P00100000",
        side=Side.SELL,
        intent=Intent.CLOSE,
    )
    await broker.submit_order(req)
    body = calls(mock)[0][2]["json"]
    assert body["position_intent"] == "sell_to_close"
    assert body["limit_price"] == "1.25" and body["type"] == "limit"


async def test_submit_mleg_limit_body(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.post(url("/v2/orders"), payload=mleg_json(status="accepted"))
    req = OrderRequest(
        client_order_id="syncd-mleg-1",
        qty=Decimal(67),
        type=OrderType.LIMIT,
        limit_price=Decimal("2.10"),
        legs=(
            LegRequest("AAPL260116C00150000", Side.BUY),
            LegRequest("AAPL260116C00160000", Side.SELL),
        ),
    )
    order = await broker.submit_order(req)
    assert order.order_class == OrderClass.MLEG
    body = calls(mock)[0][2]["json"]
    assert body["order_class"] == "mleg"
    assert "symbol" not in body and "side" not in body
    assert body["limit_price"] == "2.1" and body["qty"] == "67"
    assert body["legs"] == [
        {"symbol": "AAPL260116C00150000", "ratio_qty": "1", "side": "buy", "position_intent": "buy_to_open"},
        {"symbol": "AAPL260116C00160000", "ratio_qty": "1", "side": "sell", "position_intent": "sell_to_open"},
    ]


async def test_prices_and_quantities_go_on_the_wire_as_exact_decimals(broker: AlpacaBroker, mock: aioresponses) -> None:
    """Issue 10: a 20-decimal limit went out as 1.1234567890123457 through alpaca-py's float fields; the body
    now carries the request's exact Decimals as strings, in the JSON text that is sent."""
    mock.post(url("/v2/orders"), payload=order_json(client_order_id="syncd-9"))
    price, qty = Decimal("1.12345678901234567890"), Decimal("1234567.123456789")
    req = OrderRequest(
        client_order_id="syncd-9", qty=qty, type=OrderType.LIMIT, limit_price=price, symbol="AAPL", side=Side.BUY
    )
    await broker.submit_order(req)
    body = calls(mock)[0][2]["json"]
    assert (body["limit_price"], body["qty"]) == ("1.1234567890123456789", "1234567.123456789")
    assert Decimal(body["limit_price"]) == price and Decimal(body["qty"]) == qty
    text = json.dumps(body)
    assert '"limit_price": "1.1234567890123456789"' in text and "1.1234567890123457," not in text
    assert not any(isinstance(v, float) for v in body.values())


def test_mleg_body_has_no_float_anywhere() -> None:
    req = OrderRequest(
        client_order_id="x",
        qty=Decimal(3),
        type=OrderType.LIMIT,
        limit_price=Decimal("-0.07"),
        legs=(LegRequest("AAPL260116C00150000", Side.BUY), LegRequest("AAPL260116C00160000", Side.SELL, 2)),
    )
    body = build_order_payload(req)
    assert (body["qty"], body["limit_price"]) == ("3", "-0.07")
    assert [leg["ratio_qty"] for leg in body["legs"]] == ["1", "2"]
    floats = [v for v in [*body.values(), *(x for leg in body["legs"] for x in leg.values())] if isinstance(v, float)]
    assert floats == []


def test_invalid_request_is_rejected_before_sending() -> None:
    one_leg = OrderRequest(client_order_id="x", qty=Decimal(1), legs=(LegRequest("AAPL260116C00150000", Side.BUY),))
    with pytest.raises(BrokerRejected, match="invalid order request"):
        build_order_payload(one_leg)
    no_price = OrderRequest(client_order_id="x", qty=Decimal(1), type=OrderType.LIMIT, symbol="AAPL", side=Side.BUY)
    with pytest.raises(BrokerRejected, match="limit_price"):
        build_order_payload(no_price)


async def test_submit_422_is_rejected_with_reason(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.post(url("/v2/orders"), status=422, payload={"code": 40010001, "message": "client_order_id must be unique"})
    with pytest.raises(BrokerRejected) as ei:
        await broker.submit_order(OrderRequest(client_order_id="dup", qty=Decimal(1), symbol="AAPL", side=Side.BUY))
    assert ei.value.reason == "client_order_id must be unique"
    assert ei.value.status == 422
    no_secret(ei.value)


async def test_submit_403_insufficient_buying_power_is_rejected(broker: AlpacaBroker, mock: aioresponses) -> None:
    """Alpaca quirk: a business refusal comes as 403 with code 40310000, not as an auth failure."""
    mock.post(url("/v2/orders"), status=403, payload={"code": 40310000, "message": "insufficient buying power"})
    with pytest.raises(BrokerRejected) as ei:
        await broker.submit_order(OrderRequest(client_order_id="b", qty=Decimal("1e6"), symbol="AAPL", side=Side.BUY))
    assert ei.value.reason == "insufficient buying power"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("500", BrokerUnavailable),
        ("503-html", BrokerUnavailable),
        ("timeout", BrokerUnavailable),
        ("connection", BrokerUnavailable),
        ("429", BrokerRateLimited),
    ],
)
async def test_submit_is_never_retried(
    broker: AlpacaBroker, mock: aioresponses, rec: Recorder, kind: str, expected: type[Exception]
) -> None:
    """An order placement is sent once: its outcome is unknown, the caller must look the client id up."""
    u = url("/v2/orders")
    if kind == "500":
        mock.post(u, status=500, payload={"message": "internal"}, repeat=True)
    elif kind == "503-html":
        mock.post(u, status=503, body="<html>down</html>", content_type="text/html", repeat=True)
    elif kind == "timeout":
        mock.post(u, exception=TimeoutError(), repeat=True)
    elif kind == "connection":
        mock.post(u, exception=aiohttp.ClientConnectionError("reset by peer"), repeat=True)
    else:
        mock.post(u, status=429, headers={"Retry-After": "1"}, payload={"message": "too many"}, repeat=True)
    with pytest.raises(expected, match="sent once") as ei:
        await broker.submit_order(OrderRequest(client_order_id="c1", qty=Decimal(1), symbol="AAPL", side=Side.BUY))
    assert len(calls(mock)) == 1
    assert broker.request_count == 1
    assert rec.sleeps == []
    no_secret(ei.value)


async def test_cancel(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.delete(url("/v2/orders/abc"), status=204)
    await broker.cancel_order("abc")  # 204: no error (it returns None, which mypy checks)
    mock.delete(url("/v2/orders/done"), status=422, payload={"code": 42210000, "message": "order is not cancelable"})
    with pytest.raises(BrokerRejected, match="not cancelable"):
        await broker.cancel_order("done")
    mock.delete(url("/v2/orders/gone"), status=404, payload={"code": 40410000, "message": "order not found"})
    with pytest.raises(OrderNotFound):
        await broker.cancel_order("gone")


# -- quotes --------------------------------------------------------------------------------


def stock_snapshot(bp: float, ap: float, p: float) -> dict[str, Any]:
    t = "2026-01-05T15:00:00.5Z"
    return {
        "latestTrade": {"t": t, "x": "V", "p": p, "s": 100, "c": ["@"], "i": 1, "z": "C"},
        "latestQuote": {"t": t, "ax": "V", "ap": ap, "as": 2, "bx": "V", "bp": bp, "bs": 3, "c": ["R"], "z": "C"},
        "minuteBar": {"t": t, "o": p, "h": p, "l": p, "c": p, "v": 10, "n": 1, "vw": p},
        "dailyBar": {"t": t, "o": p, "h": p, "l": p, "c": p, "v": 10, "n": 1, "vw": p},
        "prevDailyBar": {"t": t, "o": p, "h": p, "l": p, "c": p, "v": 10, "n": 1, "vw": p},
    }


def option_snapshot(bp: float, ap: float, greeks: bool = True) -> dict[str, Any]:
    t = "2026-01-05T15:00:00Z"
    snap: dict[str, Any] = {
        "latestQuote": {"t": t, "ax": "C", "ap": ap, "as": 10, "bx": "C", "bp": bp, "bs": 12, "c": "A"},
        "latestTrade": {"t": t, "x": "C", "p": (bp + ap) / 2, "s": 1, "c": "I"},
    }
    if greeks:
        snap["greeks"] = {"delta": 0.52, "gamma": 0.03, "rho": 0.1, "theta": -0.05, "vega": 0.2}
        snap["impliedVolatility"] = 0.31
    return snap


async def test_get_quotes_batches_stocks_and_options(broker: AlpacaBroker, mock: aioresponses) -> None:
    stocks = [f"S{i:03d}" for i in range(250)]  # two stock batches
    opts = ["AAPL260116C00150000", "AAPL260116P00150000"]
    mock.get(url("/v2/stocks/snapshots", DATA), payload={s: stock_snapshot(1.0, 1.1, 1.05) for s in stocks[:200]})
    mock.get(
        url("/v2/stocks/snapshots", DATA),
        payload={**{s: stock_snapshot(2.0, 2.2, 2.1) for s in stocks[200:]}, "NOPE": None},
    )
    mock.get(
        url("/v1beta1/options/snapshots", DATA),
        payload={"snapshots": {opts[0]: option_snapshot(3.0, 3.2)}, "next_page_token": "p2"},
    )
    mock.get(
        url("/v1beta1/options/snapshots", DATA),
        payload={"snapshots": {opts[1]: option_snapshot(1.0, 1.2, greeks=False)}, "next_page_token": None},
    )
    quotes = await broker.get_quotes([*stocks, *opts, "AAPL"])
    assert len([q for q in quotes if not q.startswith("AAPL")]) == 250
    assert quotes["S000"].bid == Decimal("1.0") and quotes["S000"].ask == Decimal("1.1")
    assert quotes["S000"].last == Decimal("1.05") and quotes["S000"].greeks is None
    call = quotes[opts[0]]
    assert call.greeks is not None
    assert call.greeks.delta == Decimal("0.52") and call.greeks.implied_volatility == Decimal("0.31")
    assert quotes[opts[1]].greeks is None
    sent = [u for _, u, _ in calls(mock)]
    assert sum("/v2/stocks/snapshots" in u for u in sent) == 2
    assert any("page_token=p2" in u for u in sent)
    assert all(u.startswith(DATA) for u in sent)


async def test_quote_without_required_fields_is_bad_data(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/stocks/snapshots", DATA), payload={"AAPL": {"latestQuote": {"bp": 1.0}}})
    with pytest.raises(BadBrokerData) as ei:
        await broker.get_quotes(["AAPL"])
    assert ei.value.field == "snapshots.AAPL"


# -- error classes and retries ------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures(broker: AlpacaBroker, mock: aioresponses, status: int) -> None:
    mock.get(url("/v2/account"), status=status, payload={"message": "forbidden."})
    with pytest.raises(BrokerAuthFailed, match=str(status)) as ei:
        await broker.get_account()
    no_secret(ei.value)
    assert len(calls(mock)) == 1  # not retried


async def test_404_on_a_fixed_route_is_a_broker_error(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/account"), status=404, body="404 page not found", content_type="text/plain")
    with pytest.raises(BrokerError, match="base URL"):
        await broker.get_account()


async def test_500_then_success(broker: AlpacaBroker, mock: aioresponses, rec: Recorder) -> None:
    mock.get(url("/v2/positions"), status=500, payload={"message": "internal server error"})
    mock.get(url("/v2/positions"), payload=[position_json()])
    assert len(await broker.list_positions()) == 1
    assert broker.request_count == 2
    assert len(rec.sleeps) == 1 and 0 <= rec.sleeps[0] <= 0.5
    assert rec.hook == [("alpaca", "/v2/positions", "500"), ("alpaca", "/v2/positions", "200")]


async def test_429_with_retry_after_then_success(broker: AlpacaBroker, mock: aioresponses, rec: Recorder) -> None:
    mock.get(url("/v2/account"), status=429, headers={"Retry-After": "2"}, payload={"message": "too many requests"})
    mock.get(url("/v2/account"), payload=ACCOUNT_JSON)
    await broker.get_account()
    assert rec.sleeps == [2.0]


async def test_429_honours_x_ratelimit_reset(broker: AlpacaBroker, mock: aioresponses, rec: Recorder) -> None:
    """Alpaca sends the epoch second its window resets in ``X-Ratelimit-Reset``."""
    mock.get(url("/v2/account"), status=429, headers={"X-Ratelimit-Reset": str(int(NOW) + 3)}, body="")
    mock.get(url("/v2/account"), payload=ACCOUNT_JSON)
    await broker.get_account()
    assert rec.sleeps == [3.0]


async def test_429_asking_too_long_gives_up_at_once(broker: AlpacaBroker, mock: aioresponses, rec: Recorder) -> None:
    mock.get(url("/v2/account"), status=429, headers={"Retry-After": "600"}, repeat=True)
    with pytest.raises(BrokerRateLimited) as ei:
        await broker.get_account()
    assert ei.value.retry_after == 600
    assert rec.sleeps == []


async def test_429_exhausted_is_rate_limited(broker: AlpacaBroker, mock: aioresponses, rec: Recorder) -> None:
    mock.get(url("/v2/account"), status=429, headers={"Retry-After": "1"}, repeat=True)
    with pytest.raises(BrokerRateLimited, match="after 3 attempts") as ei:
        await broker.get_account()
    assert ei.value.retry_after == 1.0
    assert rec.sleeps == [1.0, 1.0]
    assert broker.request_count == 3


async def test_connection_error_then_success(broker: AlpacaBroker, mock: aioresponses, rec: Recorder) -> None:
    mock.get(url("/v2/clock"), exception=aiohttp.ClientConnectionError("connection reset"))
    mock.get(
        url("/v2/clock"),
        payload={
            "timestamp": "2026-01-05T10:00:00Z",
            "is_open": False,
            "next_open": "2026-01-06T14:30:00Z",
            "next_close": "2026-01-05T21:00:00Z",
        },
    )
    assert not (await broker.get_clock()).is_open
    assert rec.hook[0] == ("alpaca", "/v2/clock", "error")


async def test_timeouts_exhausted_are_unavailable(broker: AlpacaBroker, mock: aioresponses, rec: Recorder) -> None:
    mock.get(url("/v2/account"), exception=TimeoutError(), repeat=True)
    with capture_logs() as logs, pytest.raises(BrokerUnavailable, match="timed out") as ei:
        await broker.get_account()
    assert not isinstance(ei.value, BrokerRateLimited)
    assert broker.request_count == 3
    assert [h[2] for h in rec.hook] == ["timeout"] * 3
    retries = [e for e in logs if e["event"] == "broker_request_retry"]
    assert len(retries) == 2
    assert KEY not in repr(logs) and SECRET not in repr(logs)


async def test_connection_errors_exhausted(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/positions"), exception=aiohttp.ClientConnectionError("refused"), repeat=True)
    with pytest.raises(BrokerUnavailable, match="connection error"):
        await broker.list_positions()


async def test_5xx_exhausted(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/positions"), status=502, body="<html>bad gateway</html>", content_type="text/html", repeat=True)
    with pytest.raises(BrokerUnavailable, match="server error 502"):
        await broker.list_positions()


async def test_malformed_json_is_bad_data(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/positions"), body='[{"symbol": "AAPL",', content_type="application/json")
    with pytest.raises(BadBrokerData, match="malformed JSON") as ei:
        await broker.list_positions()
    assert ei.value.field == "body"


async def test_html_error_page_with_200_is_bad_data(broker: AlpacaBroker, mock: aioresponses) -> None:
    """A proxy or maintenance page answering 200 with HTML must not look like 'no positions'."""
    page = "<!DOCTYPE html><html><body>Maintenance</body></html>"
    mock.get(url("/v2/positions"), body=page, content_type="text/html")
    with pytest.raises(BadBrokerData, match="HTML page"):
        await broker.list_positions()


async def test_secret_echoed_in_a_broker_message_is_scrubbed(broker: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(url("/v2/account"), status=400, payload={"message": f"bad key {KEY}"})
    with pytest.raises(BrokerRejected) as ei:
        await broker.get_account()
    no_secret(ei.value)
    assert KEY not in ei.value.reason


async def test_hook_failure_does_not_break_the_call(
    account: AccountSettings, session: aiohttp.ClientSession, mock: aioresponses
) -> None:
    def boom(*_: str) -> None:
        raise RuntimeError("metrics down")

    broker = AlpacaBroker(account, session=session, timeout_s=5, on_request=boom, limiter=False)
    mock.get(url("/v2/positions"), payload=[])
    assert await broker.list_positions() == []


async def test_endpoint_labels_are_templates(broker: AlpacaBroker, mock: aioresponses, rec: Recorder) -> None:
    oid = str(uuid.uuid4())
    mock.get(url(f"/v2/orders/{oid}"), payload=order_json(id=oid))
    mock.delete(url(f"/v2/orders/{oid}"), status=204)
    await broker.get_order(oid)
    await broker.cancel_order(oid)
    assert [h[1] for h in rec.hook] == ["/v2/orders/{id}", "/v2/orders/{id}"]


async def test_overrides_and_live_urls(session: aiohttp.ClientSession, mock: aioresponses) -> None:
    live = AccountSettings(
        name="live", broker="alpaca", paper=False, api_key=SecretStr(KEY), api_secret=SecretStr(SECRET)
    )
    b = AlpacaBroker(live, session=session, timeout_s=1, limiter=False)
    assert (b.base_url, b.data_url, b.stream_url) == (
        "https://api.alpaca.markets",
        "https://data.alpaca.markets",
        "wss://api.alpaca.markets/stream",
    )
    sim = live.model_copy(
        update={"base_url": "http://127.0.0.1:9", "data_url": "http://127.0.0.1:9", "stream_url": "ws://127.0.0.1:9/s"}
    )
    b2 = AlpacaBroker(sim, session=session, timeout_s=1)
    assert (b2.base_url, b2.stream_url) == ("http://127.0.0.1:9", "ws://127.0.0.1:9/s")
    assert b2.limiter is not None and b2.limiter.per_minute == 200


async def test_rate_limiter_is_applied_before_each_request(
    account: AccountSettings, session: aiohttp.ClientSession, mock: aioresponses
) -> None:
    from syncd.brokers.ratelimit import TokenBucket

    waits: list[float] = []

    async def fake_sleep(s: float) -> None:
        waits.append(s)
        clock[0] += s

    clock = [0.0]
    bucket = TokenBucket(60, burst=1, clock=lambda: clock[0], sleep=fake_sleep)
    b = AlpacaBroker(account, session=session, timeout_s=1, limiter=bucket)
    mock.get(url("/v2/positions"), payload=[], repeat=True)
    await b.list_positions()
    await b.list_positions()
    assert len(waits) == 1  # the second request waited for a token


# -- trade update payloads ---------------------------------------------------------------


def test_trade_update_fill_with_legs_converts(broker: AlpacaBroker) -> None:
    msg = {
        "stream": "trade_updates",
        "data": {
            "event": "fill",
            "execution_id": str(uuid.uuid4()),
            "order": mleg_json(),
            "timestamp": "2026-01-05T15:00:02.5Z",
            "position_qty": "67",
            "price": "2.10",
            "qty": "67",
        },
    }
    update = broker._trade_update(msg)
    assert update is not None
    assert update.event == "fill"
    assert update.price == Decimal("2.10") and update.qty == Decimal(67) and update.position_qty == Decimal(67)
    assert len(update.order.legs) == 2
    assert update.execution_id is not None


def test_unparseable_trade_update_is_logged_and_skipped(broker: AlpacaBroker) -> None:
    """alpaca-py once broke on an mleg event with empty fields; we log ``stream_event_unparsed`` and go on."""
    bad = {"stream": "trade_updates", "data": {"event": "new", "order": {"id": "x", "status": ""}, "timestamp": ""}}
    with capture_logs() as logs:
        assert broker._trade_update(bad) is None
        assert broker._trade_update({"stream": "trade_updates"}) is None
    events = [e for e in logs if e["event"] == "stream_event_unparsed"]
    assert len(events) == 2
    assert events[0]["stream_event"] == "new" and events[0]["order_id"] == "x"


async def test_second_trade_updates_iterator_is_refused(broker: AlpacaBroker) -> None:
    """Alpaca allows one trade_updates connection per account."""
    broker._stream_active = True
    with pytest.raises(BrokerError, match="one trade_updates connection"):
        await anext(broker.trade_updates())
    broker._stream_active = False


async def test_429_with_http_date_retry_after(broker: AlpacaBroker, mock: aioresponses, rec: Recorder) -> None:
    from email.utils import formatdate

    mock.get(url("/v2/account"), status=429, headers={"Retry-After": formatdate(NOW + 4, usegmt=True)})
    mock.get(url("/v2/account"), payload=ACCOUNT_JSON)
    await broker.get_account()
    assert rec.sleeps == [4.0]
