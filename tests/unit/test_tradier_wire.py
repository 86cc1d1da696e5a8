"""Tradier adapter on the wire (aioresponses): its quirks, request forms, errors and retries.

Retry waits are recorded by an injected sleep, never slept.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aioresponses import aioresponses
from pydantic import SecretStr

from syncd.brokers.base import (
    BadBrokerData,
    Broker,
    BrokerAuthFailed,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    OrderNotFound,
)
from syncd.brokers.tradier import TradierBroker, available_quantities, build_order_form
from syncd.brokers.types import (
    AssetClass,
    Intent,
    LegRequest,
    OrderClass,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from syncd.settings import AccountSettings
from tests.unit.broker_wire import Recorder, calls, url_pattern

TOKEN = "tradier-wire-token-0123456789"
BASE = "https://sandbox.tradier.com"
ACCT = "VA12345678"


@pytest.fixture
def broker(session: aiohttp.ClientSession, rec: Recorder) -> TradierBroker:
    account = AccountSettings(name="tradier-wire", broker="tradier", account_id=ACCT, token=SecretStr(TOKEN))
    return TradierBroker(account, session=session, **rec.wiring())


def url(path: str) -> re.Pattern[str]:
    return url_pattern(BASE, path)


def acct(path: str) -> re.Pattern[str]:
    return url(f"/v1/accounts/{ACCT}{path}")


def sent_form(m: aioresponses) -> dict[str, str]:
    ((_, _, kw),) = calls(m, "POST")
    data = kw["data"]
    return dict(data) if not isinstance(data, str) else dict(parse_qsl(data))


def order_json(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 228175,
        "type": "market",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": 10.0,
        "status": "open",
        "duration": "day",
        "avg_fill_price": 0.0,
        "exec_quantity": 0.0,
        "last_fill_price": 0.0,
        "last_fill_quantity": 0.0,
        "remaining_quantity": 10.0,
        "create_date": "2026-01-05T15:00:00.000Z",
        "transaction_date": "2026-01-05T15:00:01.000Z",
        "class": "equity",
        "tag": "syncd-1",
    }
    base.update(over)
    return base


def multileg_json(**over: Any) -> dict[str, Any]:
    base = order_json(
        id=229063,
        type="debit",
        symbol="AAPL",
        side="buy",
        quantity=67.0,
        price=2.1,
        status="filled",
        avg_fill_price=2.1,
        exec_quantity=67.0,
        remaining_quantity=0.0,
        tag="syncd-mleg-1",
    )
    base.update(
        {
            "class": "multileg",
            "num_legs": 2,
            "strategy": "spread",
            "leg": [
                order_json(
                    id=229064,
                    type="debit",
                    symbol="AAPL",
                    option_symbol="AAPL260116C00150000",
                    side="buy_to_open",
                    quantity=67.0,
                    status="filled",
                    exec_quantity=67.0,
                    avg_fill_price=3.1,
                    **{"class": "option"},
                ),
                order_json(
                    id=229065,
                    type="debit",
                    symbol="AAPL",
                    option_symbol="AAPL260116C00160000",
                    side="sell_to_open",
                    quantity=67.0,
                    status="filled",
                    exec_quantity=67.0,
                    avg_fill_price=1.0,
                    **{"class": "option"},
                ),
            ],
        }
    )
    base.update(over)
    return base


# -- shapes: single object, "null", strings -----------------------------------------------


async def test_protocol_and_stream(broker: TradierBroker) -> None:
    assert isinstance(broker, Broker)
    assert broker.kind == "tradier" and broker.supports_stream  # account events: tests/unit/test_tradier_stream_wire.py


@pytest.mark.parametrize("empty", ["null", None, " null "])
async def test_positions_null_is_empty(broker: TradierBroker, mock: aioresponses, empty: Any) -> None:
    """Tradier quirk: no positions arrive as ``{"positions": "null"}`` (or JSON null)."""
    mock.get(acct("/positions"), payload={"positions": empty})
    mock.get(acct("/orders"), payload={"orders": "null"})
    assert await broker.list_positions() == []


async def test_positions_single_object(broker: TradierBroker, mock: aioresponses) -> None:
    """Tradier quirk: one position arrives as an object, not a one-element list."""
    mock.get(
        acct("/positions"),
        payload={
            "positions": {
                "position": {
                    "cost_basis": 1005.0,
                    "date_acquired": "2026-01-02T14:41:11.405Z",
                    "id": 130089,
                    "quantity": 10.0,
                    "symbol": "AAPL",
                }
            }
        },
    )
    mock.get(acct("/orders"), payload={"orders": "null"})
    (pos,) = await broker.list_positions()
    assert (pos.symbol, pos.quantity, pos.qty_available) == ("AAPL", Decimal(10), Decimal(10))
    assert pos.avg_entry_price == Decimal("100.5")
    assert pos.asset_class == AssetClass.US_EQUITY


async def test_positions_list_with_strings_options_and_held_quantities(
    broker: TradierBroker, mock: aioresponses
) -> None:
    """Tradier quirks: numbers as strings; no qty_available (derived from open closing orders)."""
    mock.get(
        acct("/positions"),
        payload={
            "positions": {
                "position": [
                    {"cost_basis": "1005.00", "id": 1, "quantity": "10", "symbol": "AAPL"},
                    {"cost_basis": -640.0, "id": 2, "quantity": -2.0, "symbol": "AAPL260116C00160000"},
                    {"cost_basis": 640.0, "id": 3, "quantity": 2.0, "symbol": "AAPL260116C00150000"},
                ]
            }
        },
    )
    mock.get(
        acct("/orders"),
        payload={
            "orders": {
                "order": [
                    order_json(id=1, side="sell", quantity=4.0, exec_quantity=1.0, remaining_quantity=3.0),
                    order_json(id=2, side="sell", quantity=5.0, status="filled", exec_quantity=5.0),
                    order_json(
                        id=3,
                        symbol="AAPL",
                        option_symbol="AAPL260116C00160000",
                        side="buy_to_close",
                        quantity=1.0,
                        **{"class": "option"},
                    ),
                ]
            }
        },
    )
    stock, short_call, long_call = await broker.list_positions()
    assert stock.quantity == Decimal(10) and stock.qty_available == Decimal(7)  # 10 - (4 - 1) still to sell
    assert short_call.quantity == Decimal(-2) and short_call.qty_available == Decimal(-1)
    assert short_call.option is not None and short_call.option.strike == Decimal(160)
    assert short_call.avg_entry_price == Decimal("3.2")
    assert long_call.qty_available == Decimal(2)


async def test_orders_single_object_and_null(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(acct("/orders"), payload={"orders": {"order": order_json()}})
    mock.get(acct("/orders"), payload={"orders": "null"})
    (order,) = await broker.list_orders()
    assert order.broker_order_id == "228175" and order.client_order_id == "syncd-1"
    assert order.status == OrderStatus.NEW
    assert await broker.list_orders() == []
    assert "includeTags=true" in calls(mock)[0][1]


async def test_filled_before_its_price_is_known(broker: TradierBroker, mock: aioresponses) -> None:
    """Tradier quirk: status ``filled`` with ``avg_fill_price`` 0 -- the price is unknown, not 0."""
    mock.get(acct("/orders/228175"), payload={"order": order_json(status="filled", exec_quantity=10.0)})
    order = await broker.get_order("228175")
    assert order.status == OrderStatus.FILLED
    assert order.filled_qty == Decimal(10)
    assert order.filled_avg_price is None
    assert order.filled_at is not None


async def test_multileg_order_with_legs(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(acct("/orders"), payload={"orders": {"order": [multileg_json(), order_json(id=5, status="pending")]}})
    mleg, pending = await broker.list_orders()
    assert mleg.order_class == OrderClass.MLEG and mleg.side is None
    assert mleg.type == OrderType.LIMIT and mleg.limit_price == Decimal("2.1")
    assert mleg.asset_class == AssetClass.US_OPTION
    assert [leg.symbol for leg in mleg.legs] == ["AAPL260116C00150000", "AAPL260116C00160000"]
    assert [(leg.side, leg.intent) for leg in mleg.legs] == [(Side.BUY, Intent.OPEN), (Side.SELL, Intent.OPEN)]
    assert [leg.ratio_qty for leg in mleg.legs] == [1, 1]
    assert mleg.filled_avg_price == Decimal("2.1")
    assert pending.status == OrderStatus.PENDING_NEW


async def test_multileg_with_single_leg_object_and_credit(broker: TradierBroker, mock: aioresponses) -> None:
    body = multileg_json(type="credit", price="0.85")
    body["leg"] = body["leg"][0]  # the single-object quirk inside an order
    mock.get(acct("/orders/229063"), payload={"order": body})
    order = await broker.get_order("229063")
    assert len(order.legs) == 1
    assert order.limit_price == Decimal("-0.85")  # credit = negative net price


@pytest.mark.parametrize(
    ("raw", "ours"),
    [
        ("open", OrderStatus.NEW),
        ("partially_filled", OrderStatus.PARTIALLY_FILLED),
        ("filled", OrderStatus.FILLED),
        ("expired", OrderStatus.EXPIRED),
        ("canceled", OrderStatus.CANCELED),
        ("pending", OrderStatus.PENDING_NEW),
        ("rejected", OrderStatus.REJECTED),
        ("error", OrderStatus.REJECTED),
        ("calculated", OrderStatus.CALCULATED),
        ("accepted_for_bidding", OrderStatus.ACCEPTED_FOR_BIDDING),
        ("held", OrderStatus.HELD),
    ],
)
async def test_status_mapping(broker: TradierBroker, mock: aioresponses, raw: str, ours: OrderStatus) -> None:
    mock.get(acct("/orders/1"), payload={"order": order_json(status=raw)})
    assert (await broker.get_order("1")).status == ours


async def test_unknown_status_is_bad_data(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(acct("/orders/1"), payload={"order": order_json(status="teleported")})
    with pytest.raises(BadBrokerData) as ei:
        await broker.get_order("1")
    assert ei.value.field == "order.status"


async def test_get_order_null_or_404_is_not_found(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(acct("/orders/9"), payload={"order": "null"})
    mock.get(acct("/orders/10"), status=404, body="Not Found", content_type="text/plain")
    with pytest.raises(OrderNotFound):
        await broker.get_order("9")
    with pytest.raises(OrderNotFound):
        await broker.get_order("10")


async def test_get_order_by_client_id_matches_tag(broker: TradierBroker, mock: aioresponses) -> None:
    orders = {"orders": {"order": [order_json(id=1, tag="a-1"), order_json(id=2, tag="syncd-9"), order_json(id=3)]}}
    mock.get(acct("/orders"), payload=orders, repeat=True)
    found = await broker.get_order_by_client_id("syncd-9")
    assert found is not None and found.broker_order_id == "2"
    assert await broker.get_order_by_client_id("absent") is None


async def test_list_orders_status_and_since(broker: TradierBroker, mock: aioresponses) -> None:
    orders = [
        order_json(id=1, status="filled", create_date="2026-01-05T14:00:00.000Z"),
        order_json(id=2, status="open", create_date="2026-01-05T15:00:00.000Z"),
        order_json(id=3, status="canceled", create_date="2026-01-05T16:00:00.000Z"),
    ]
    mock.get(acct("/orders"), payload={"orders": {"order": orders}}, repeat=True)
    assert [o.broker_order_id for o in await broker.list_orders("open")] == ["2"]
    assert [o.broker_order_id for o in await broker.list_orders("closed")] == ["1", "3"]
    since = dt.datetime(2026, 1, 5, 14, 30, tzinfo=dt.UTC)
    assert [o.broker_order_id for o in await broker.list_orders("all", since)] == ["2", "3"]


# -- balances, quotes, clock ----------------------------------------------------------------


async def test_balances_margin_account(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(
        acct("/balances"),
        payload={
            "balances": {
                "option_short_value": 0,
                "total_equity": 17798.36,
                "account_number": ACCT,
                "account_type": "margin",
                "close_pl": -4813,
                "current_requirement": 2557,
                "equity": 0,
                "long_market_value": 11434.5,
                "market_value": 11434.5,
                "open_pl": 546.9,
                "option_long_value": 5700,
                "option_requirement": 1705,
                "pending_orders_count": 0,
                "short_market_value": 0,
                "stock_long_value": 5734.5,
                "total_cash": "6363.86",
                "uncleared_funds": 0,
                "pending_cash": 0,
                "margin": {
                    "fed_call": 0,
                    "maintenance_call": 0,
                    "option_buying_power": 6363.86,
                    "stock_buying_power": 12727.72,
                    "stock_short_value": 0,
                    "sweep": 0,
                },
            }
        },
    )
    bal = await broker.get_account()
    assert bal.broker_account_id == ACCT
    assert bal.equity == Decimal("17798.36") and bal.cash == Decimal("6363.86")
    assert bal.buying_power == Decimal("12727.72")
    assert bal.long_market_value == Decimal("11434.5")


async def test_balances_cash_account(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(
        acct("/balances"),
        payload={
            "balances": {
                "total_equity": 1000,
                "total_cash": 1000,
                "account_type": "cash",
                "cash": {"cash_available": 900.5, "sweep": 0, "unsettled_funds": 99.5},
            }
        },
    )
    assert (await broker.get_account()).buying_power == Decimal("900.5")


async def test_balances_null_is_bad_data(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(acct("/balances"), payload={"balances": "null"})
    with pytest.raises(BadBrokerData, match="balances"):
        await broker.get_account()


def quote_json(symbol: str, **over: Any) -> dict[str, Any]:
    q: dict[str, Any] = {
        "symbol": symbol,
        "description": symbol,
        "exch": "Q",
        "type": "stock",
        "last": 190.5,
        "change": 1.0,
        "volume": 1000,
        "bid": 190.4,
        "ask": 190.6,
        "bidsize": 3,
        "asksize": 1,
        "bid_date": 1767625200000,
        "ask_date": 1767625201000,
        "trade_date": 1767625199000,
        "greeks": None,
    }
    q.update(over)
    return q


async def test_quotes_single_object_null_and_greeks(broker: TradierBroker, mock: aioresponses) -> None:
    """Tradier quirks on quotes: a single quote is an object; nothing matched is "null"/unmatched_symbols."""
    greeks = {
        "delta": "0.52",
        "gamma": 0.03,
        "theta": -0.05,
        "vega": 0.2,
        "rho": 0.1,
        "phi": -0.1,
        "bid_iv": 0.3,
        "mid_iv": 0.31,
        "ask_iv": 0.32,
        "smv_vol": 0.3,
        "updated_at": "2026-01-05 14:59:08",
    }
    mock.get(url("/v1/markets/quotes"), payload={"quotes": {"quote": quote_json("AAPL")}})
    mock.get(
        url("/v1/markets/quotes"),
        payload={
            "quotes": {
                "quote": [quote_json("AAPL260116C00150000", type="option", greeks=greeks)],
                "unmatched_symbols": {"symbol": "NOPE"},
            }
        },
    )
    mock.get(url("/v1/markets/quotes"), payload={"quotes": {"unmatched_symbols": {"symbol": ["X", "Y"]}}})
    mock.get(url("/v1/markets/quotes"), payload={"quotes": "null"})
    q = (await broker.get_quotes(["AAPL"]))["AAPL"]
    assert (q.bid, q.ask, q.last) == (Decimal("190.4"), Decimal("190.6"), Decimal("190.5"))
    assert q.at == dt.datetime.fromtimestamp(1767625201, dt.UTC)
    opt = await broker.get_quotes(["AAPL260116C00150000", "NOPE"])
    assert list(opt) == ["AAPL260116C00150000"]
    g = opt["AAPL260116C00150000"].greeks
    assert g is not None and g.delta == Decimal("0.52") and g.implied_volatility == Decimal("0.31")
    assert await broker.get_quotes(["X", "Y"]) == {}
    assert await broker.get_quotes(["Z"]) == {}
    assert "greeks=true" in calls(mock)[0][1]


async def test_long_symbol_lists_are_posted_as_forms(broker: TradierBroker, mock: aioresponses) -> None:
    symbols = [f"S{i:03d}" for i in range(450)]
    mock.post(url("/v1/markets/quotes"), payload={"quotes": {"quote": [quote_json(s) for s in symbols[:400]]}})
    mock.post(url("/v1/markets/quotes"), payload={"quotes": {"quote": [quote_json(s) for s in symbols[400:]]}})
    quotes = await broker.get_quotes(symbols)
    assert len(quotes) == 450
    posts = calls(mock)
    assert len(posts) == 2 and all(m == "POST" for m, _, _ in posts)
    assert all("symbols" in dict(kw["data"]) for _, _, kw in posts)


async def test_malformed_quote_is_bad_data(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(url("/v1/markets/quotes"), payload={"quotes": {"quote": quote_json("AAPL", bid="n/a")}})
    with pytest.raises(BadBrokerData) as ei:
        await broker.get_quotes(["AAPL"])
    assert ei.value.field == "quotes[0].bid"


async def test_clock_with_calendar(broker: TradierBroker, mock: aioresponses) -> None:
    # Monday 2026-01-05 10:00 New York = 15:00 UTC
    mock.get(
        url("/v1/markets/clock"),
        payload={
            "clock": {
                "date": "2026-01-05",
                "description": "Market is open from 09:30 to 16:00",
                "state": "open",
                "timestamp": 1767625200,
                "next_change": "16:00",
                "next_state": "postmarket",
            }
        },
    )
    days = [
        {"date": "2026-01-05", "status": "open", "open": {"start": "09:30", "end": "16:00"}},
        {"date": "2026-01-06", "status": "closed", "description": "holiday for the test"},
        {"date": "2026-01-07", "status": "open", "open": {"start": "09:30", "end": "13:00"}},
    ]
    mock.get(url("/v1/markets/calendar"), payload={"calendar": {"month": 1, "year": 2026, "days": {"day": days}}})
    mock.get(url("/v1/markets/calendar"), payload={"calendar": {"month": 2, "year": 2026, "days": "null"}})
    clock = await broker.get_clock()
    assert clock.is_open
    assert clock.timestamp == dt.datetime(2026, 1, 5, 15, 0, tzinfo=dt.UTC)
    assert clock.next_close == dt.datetime(2026, 1, 5, 21, 0, tzinfo=dt.UTC)
    assert clock.next_open == dt.datetime(2026, 1, 7, 14, 30, tzinfo=dt.UTC)  # the holiday is skipped


async def test_clock_without_calendar_falls_back_to_weekdays(broker: TradierBroker, mock: aioresponses) -> None:
    # Saturday 2026-01-10 12:00 New York
    mock.get(
        url("/v1/markets/clock"),
        payload={
            "clock": {
                "date": "2026-01-10",
                "state": "closed",
                "timestamp": 1768064400,
                "next_change": "07:00",
                "next_state": "premarket",
            }
        },
        repeat=True,
    )
    mock.get(url("/v1/markets/calendar"), status=404, body="404: Not Found", content_type="text/plain", repeat=True)
    clock = await broker.get_clock()
    assert not clock.is_open
    assert clock.next_open == dt.datetime(2026, 1, 12, 14, 30, tzinfo=dt.UTC)
    assert clock.next_close == dt.datetime(2026, 1, 12, 21, 0, tzinfo=dt.UTC)
    before = len(calls(mock))
    await broker.get_clock()  # the calendar answer (or its absence) is cached per month
    assert len(calls(mock)) - before == 1


# -- placing orders ----------------------------------------------------------------------------


async def test_submit_equity_market(broker: TradierBroker, mock: aioresponses) -> None:
    mock.post(acct("/orders"), payload={"order": {"id": 257459, "status": "ok", "partner_id": "x"}})
    mock.get(acct("/orders/257459"), payload={"order": order_json(id=257459, tag="syncd-7")})
    order = await broker.submit_order(
        OrderRequest(client_order_id="syncd-7", qty=Decimal(10), symbol="AAPL", side=Side.BUY)
    )
    assert order.broker_order_id == "257459" and order.client_order_id == "syncd-7"
    assert sent_form(mock) == {
        "class": "equity",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "10",
        "type": "market",
        "duration": "day",
        "tag": "syncd-7",
    }


def form(request: OrderRequest) -> dict[str, str]:
    return dict(build_order_form(request))


def test_prices_and_quantities_go_on_the_wire_as_exact_decimals() -> None:
    """Issue 10: never a price through a float; the form carries the exact decimal digits."""
    f = form(
        OrderRequest(
            client_order_id="t",
            qty=Decimal("1234567.123456789"),
            type=OrderType.LIMIT,
            limit_price=Decimal("1.12345678901234567890"),
            symbol="AAPL",
            side=Side.BUY,
        )
    )
    assert (f["price"], f["quantity"]) == ("1.1234567890123456789", "1234567.123456789")
    spread = form(
        OrderRequest(
            client_order_id="t",
            qty=Decimal(3),
            type=OrderType.LIMIT,
            limit_price=Decimal("-0.07"),
            legs=(LegRequest("AAPL260116C00150000", Side.BUY), LegRequest("AAPL260116C00160000", Side.SELL, 2)),
        )
    )
    assert (spread["price"], spread["type"], spread["quantity[1]"]) == ("0.07", "credit", "6")


def test_equity_sides_from_intent() -> None:
    def side(s: Side, i: Intent) -> str:
        return form(OrderRequest(client_order_id="t", qty=Decimal(1), symbol="AAPL", side=s, intent=i))["side"]

    assert side(Side.BUY, Intent.OPEN) == "buy"
    assert side(Side.SELL, Intent.CLOSE) == "sell"
    assert side(Side.SELL, Intent.OPEN) == "sell_short"
    assert side(Side.BUY, Intent.CLOSE) == "buy_to_cover"


def test_option_limit_form() -> None:
    f = form(
        OrderRequest(
            client_order_id="t-1",
            qty=Decimal(2),
            type=OrderType.LIMIT,
            limit_price=Decimal("1.250"),
            symbol="AAPL260116P00100000",
            side=Side.SELL,
            intent=Intent.CLOSE,
            time_in_force=TimeInForce.GTC,
        )
    )
    assert f == {
        "class": "option",
        "symbol": "AAPL",
        "option_symbol": "AAPL260116P00100000",
        "side": "sell_to_close",
        "quantity": "2",
        "type": "limit",
        "price": "1.25",
        "duration": "gtc",
        "tag": "t-1",
    }


@pytest.mark.parametrize(
    ("price", "kind"), [(Decimal("2.10"), "debit"), (Decimal("-0.85"), "credit"), (Decimal(0), "even")]
)
def test_multileg_limit_form(price: Decimal, kind: str) -> None:
    f = build_order_form(
        OrderRequest(
            client_order_id="syncd-mleg-1",
            qty=Decimal(67),
            type=OrderType.LIMIT,
            limit_price=price,
            legs=(LegRequest("AAPL260116C00150000", Side.BUY), LegRequest("AAPL260116C00160000", Side.SELL, ratio=2)),
        )
    )
    d = dict(f)
    assert d["class"] == "multileg" and d["symbol"] == "AAPL" and d["type"] == kind
    assert d.get("price") == (None if kind == "even" else str(abs(price)).rstrip("0").rstrip("."))
    assert [(k, v) for k, v in f if "[" in k] == [
        ("option_symbol[0]", "AAPL260116C00150000"),
        ("side[0]", "buy_to_open"),
        ("quantity[0]", "67"),
        ("option_symbol[1]", "AAPL260116C00160000"),
        ("side[1]", "sell_to_open"),
        ("quantity[1]", "134"),
    ]


def test_multileg_market_form() -> None:
    d = form(
        OrderRequest(
            client_order_id="m",
            qty=Decimal(1),
            legs=(
                LegRequest("SPY260116C00600000", Side.SELL, intent=Intent.CLOSE),
                LegRequest("SPY260116C00610000", Side.BUY, intent=Intent.CLOSE),
            ),
        )
    )
    assert d["type"] == "market" and "price" not in d
    assert d["side[0]"] == "sell_to_close" and d["side[1]"] == "buy_to_close"


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (OrderRequest(client_order_id="has space", qty=Decimal(1), symbol="AAPL", side=Side.BUY), "tag"),
        (OrderRequest(client_order_id="x" * 256, qty=Decimal(1), symbol="AAPL", side=Side.BUY), "tag"),
        (OrderRequest(client_order_id="ok", qty=Decimal(0), symbol="AAPL", side=Side.BUY), "positive"),
        (
            OrderRequest(
                client_order_id="ok", qty=Decimal(1), legs=(LegRequest("AAPL", Side.BUY), LegRequest("MSFT", Side.SELL))
            ),
            "OCC",
        ),
        (
            OrderRequest(client_order_id="ok", qty=Decimal(1), type=OrderType.LIMIT, symbol="AAPL", side=Side.BUY),
            "limit_price",
        ),
        (
            OrderRequest(
                client_order_id="ok", qty=Decimal(1), symbol="AAPL", side=Side.BUY, time_in_force=TimeInForce.IOC
            ),
            "time_in_force",
        ),
    ],
)
def test_unplaceable_requests_are_rejected_before_sending(request_: OrderRequest, why: str) -> None:
    with pytest.raises(BrokerRejected, match=why):
        build_order_form(request_)


async def test_submit_400_is_rejected_with_reason(broker: TradierBroker, mock: aioresponses) -> None:
    errors = ["Backoffice rejected override of the order.", "DayTradingBuyingPowerExceeded"]
    mock.post(acct("/orders"), status=400, payload={"errors": {"error": errors}})
    with pytest.raises(BrokerRejected) as ei:
        await broker.submit_order(OrderRequest(client_order_id="b", qty=Decimal(1), symbol="AAPL", side=Side.BUY))
    assert ei.value.reason == "Backoffice rejected override of the order.; DayTradingBuyingPowerExceeded"
    assert len(calls(mock)) == 1


async def test_submit_errors_in_a_200_are_rejected(broker: TradierBroker, mock: aioresponses) -> None:
    mock.post(acct("/orders"), payload={"errors": {"error": "Invalid tag"}})
    with pytest.raises(BrokerRejected, match="Invalid tag"):
        await broker.submit_order(OrderRequest(client_order_id="b", qty=Decimal(1), symbol="AAPL", side=Side.BUY))


@pytest.mark.parametrize("kind", ["500", "timeout", "connection", "429"])
async def test_submit_is_never_retried(broker: TradierBroker, mock: aioresponses, rec: Recorder, kind: str) -> None:
    u = acct("/orders")
    if kind == "500":
        mock.post(u, status=500, body="<html>oops</html>", content_type="text/html", repeat=True)
    elif kind == "timeout":
        mock.post(u, exception=TimeoutError(), repeat=True)
    elif kind == "connection":
        mock.post(u, exception=aiohttp.ServerDisconnectedError(), repeat=True)
    else:
        mock.post(u, status=429, headers={"Retry-After": "1"}, repeat=True)
    with pytest.raises(BrokerUnavailable, match="sent once"):
        await broker.submit_order(OrderRequest(client_order_id="c", qty=Decimal(1), symbol="AAPL", side=Side.BUY))
    assert len(calls(mock)) == 1 and rec.sleeps == []


async def test_submit_details_unavailable_returns_what_is_known(broker: TradierBroker, mock: aioresponses) -> None:
    mock.post(acct("/orders"), payload={"order": {"id": 77, "status": "ok"}})
    mock.get(acct("/orders/77"), status=503, repeat=True)
    req = OrderRequest(
        client_order_id="mleg-2",
        qty=Decimal(3),
        type=OrderType.LIMIT,
        limit_price=Decimal("1.1"),
        legs=(LegRequest("AAPL260116C00150000", Side.BUY), LegRequest("AAPL260116C00160000", Side.SELL)),
    )
    order = await broker.submit_order(req)
    assert order.broker_order_id == "77" and order.status == OrderStatus.PENDING_NEW
    assert order.order_class == OrderClass.MLEG and len(order.legs) == 2 and order.client_order_id == "mleg-2"


async def test_cancel(broker: TradierBroker, mock: aioresponses) -> None:
    mock.delete(acct("/orders/5"), payload={"order": {"id": 5, "status": "ok"}})
    await broker.cancel_order("5")
    mock.delete(acct("/orders/6"), status=400, payload={"errors": {"error": "Order is not in a cancelable state"}})
    with pytest.raises(BrokerRejected, match="cancelable"):
        await broker.cancel_order("6")


# -- errors and retries ---------------------------------------------------------------------


async def test_invalid_token_is_auth_failure_without_the_token(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(acct("/balances"), status=401, body="Invalid Access Token", content_type="text/plain")
    with pytest.raises(BrokerAuthFailed, match="Invalid Access Token") as ei:
        await broker.get_account()
    assert TOKEN not in str(ei.value)


async def test_403_is_auth_failure(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(acct("/balances"), status=403, payload={"fault": {"faultstring": "Forbidden", "detail": {}}})
    with pytest.raises(BrokerAuthFailed, match="Forbidden"):
        await broker.get_account()


async def test_500_then_success_and_429_with_retry_after(
    broker: TradierBroker, mock: aioresponses, rec: Recorder
) -> None:
    mock.get(acct("/balances"), status=500, body="<html>oops</html>", content_type="text/html")
    mock.get(acct("/balances"), status=429, headers={"Retry-After": "2"}, body="")
    mock.get(acct("/balances"), payload={"balances": {"total_equity": 1, "total_cash": 1}})
    assert (await broker.get_account()).equity == Decimal(1)
    assert len(rec.sleeps) == 2 and rec.sleeps[1] == 2.0
    assert [h[2] for h in rec.hook] == ["500", "429", "200"]
    assert {h[1] for h in rec.hook} == {"/v1/accounts/{id}/balances"}


async def test_429_exhausted(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(acct("/balances"), status=429, headers={"Retry-After": "1"}, repeat=True)
    with pytest.raises(BrokerRateLimited):
        await broker.get_account()


async def test_malformed_json_and_html(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(acct("/positions"), body="{'positions': 'null'", content_type="application/json")
    mock.get(acct("/orders"), payload={"orders": "null"}, repeat=True)
    with pytest.raises(BadBrokerData, match="malformed JSON"):
        await broker.list_positions()
    mock.get(acct("/positions"), body="<html><body>Service Unavailable</body></html>", content_type="text/html")
    with pytest.raises(BadBrokerData, match="HTML page"):
        await broker.list_positions()


async def test_unexpected_shape_is_bad_data_never_empty(broker: TradierBroker, mock: aioresponses) -> None:
    """A malformed answer is an error, never a silent empty list."""
    mock.get(acct("/orders"), payload={"orders": "null"}, repeat=True)
    mock.get(acct("/positions"), payload={"positions": {"item": []}})
    with pytest.raises(BadBrokerData) as ei:
        await broker.list_positions()
    assert ei.value.field == "positions.position"
    mock.get(acct("/positions"), payload={"positions": {"position": ["AAPL"]}})
    with pytest.raises(BadBrokerData):
        await broker.list_positions()
    mock.get(acct("/positions"), payload={"position": []})
    with pytest.raises(BadBrokerData):
        await broker.list_positions()


def test_available_quantities_counts_legs_of_open_multileg_orders() -> None:
    from syncd.brokers.types import Order

    leg = Order(
        broker_order_id="l",
        client_order_id=None,
        symbol="AAPL260116C00150000",
        side=Side.SELL,
        type=OrderType.LIMIT,
        order_class=OrderClass.SIMPLE,
        qty=Decimal(5),
        filled_qty=Decimal(2),
        status=OrderStatus.PARTIALLY_FILLED,
        intent=Intent.CLOSE,
    )
    parent = Order(
        broker_order_id="p",
        client_order_id=None,
        symbol="AAPL",
        side=None,
        type=OrderType.LIMIT,
        order_class=OrderClass.MLEG,
        qty=Decimal(5),
        filled_qty=Decimal(2),
        status=OrderStatus.PARTIALLY_FILLED,
        legs=(leg,),
    )
    assert available_quantities([parent]) == {("AAPL260116C00150000", False): Decimal(3)}
