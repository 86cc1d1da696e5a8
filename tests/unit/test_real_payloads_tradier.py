"""Real Tradier payloads (tests/fixtures/real/tradier, sources in its README.md) through TradierBroker.

Each answer is served on the wire by aioresponses as saved (JSON numbers with Tradier's long
trailing zeros kept as written) and read by the adapter's own entry point.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from pydantic import SecretStr

from syncd.brokers.tradier import TradierBroker
from syncd.brokers.types import (
    AssetClass,
    Intent,
    OptionEventKind,
    Order,
    OrderClass,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from syncd.settings import AccountSettings
from tests.unit import test_tradier_wire as tw
from tests.unit.broker_wire import Recorder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "tradier"
NO_ORDERS = {"orders": "null"}


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


def real(name: str) -> Any:
    return json.loads(text(name))


def utc(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def broker(session: aiohttp.ClientSession, rec: Recorder) -> TradierBroker:
    account = AccountSettings(name="tradier-real", broker="tradier", account_id=tw.ACCT, token=SecretStr(tw.TOKEN))
    return TradierBroker(account, session=session, **rec.wiring())


def serve(mock: aioresponses, path: str, name: str) -> None:
    """The fixture's bytes as the answer body (so numbers are parsed exactly as the adapter parses them)."""
    mock.get(tw.acct(path), body=text(name), content_type="application/json")


# -- orders -------------------------------------------------------------------------------------


def check_equity(o: Order) -> None:
    assert o.broker_order_id == "228175" and o.client_order_id is None
    assert o.symbol == "AAPL" and o.asset_class == AssetClass.US_EQUITY
    assert (o.side, o.intent, o.type, o.order_class) == (Side.BUY, Intent.OPEN, OrderType.LIMIT, OrderClass.SIMPLE)
    assert o.qty == Decimal(50) and o.limit_price == Decimal(22) and o.stop_price is None
    assert o.filled_qty == 0 and o.filled_avg_price is None  # avg_fill_price 0.0: nothing filled
    assert o.status == OrderStatus.EXPIRED
    assert o.time_in_force == TimeInForce.PRE
    assert o.submitted_at == utc("2018-06-01T12:02:29.682Z")
    assert o.updated_at == utc("2018-06-01T12:30:02.385Z")
    assert o.filled_at is None and o.canceled_at is None and o.legs == ()


def check_option(o: Order) -> None:
    assert o.broker_order_id == "228749"
    assert o.symbol == "SPY180720C00274000" and o.asset_class == AssetClass.US_OPTION
    assert (o.side, o.intent, o.type) == (Side.BUY, Intent.OPEN, OrderType.MARKET)
    assert o.qty == Decimal(1) and o.limit_price is None
    assert o.status == OrderStatus.EXPIRED and o.time_in_force == TimeInForce.PRE
    assert o.submitted_at == utc("2018-06-06T20:16:17.342Z")


def check_combo(o: Order) -> None:
    """A covered call: 100 shares and one call, one net debit of 42 for the whole."""
    assert o.broker_order_id == "229063" and o.order_class == OrderClass.MLEG
    assert o.symbol == "SPY" and o.side is None
    assert o.type == OrderType.LIMIT and o.limit_price == Decimal(42)
    assert o.qty == Decimal(1) and o.status == OrderStatus.CANCELED
    assert o.canceled_at == utc("2018-06-12T21:18:41.604Z")
    stock, call = o.legs
    assert (stock.broker_order_id, stock.symbol, stock.asset_class) == ("229064", "SPY", AssetClass.US_EQUITY)
    assert (stock.side, stock.intent, stock.qty, stock.ratio_qty) == (Side.BUY, Intent.OPEN, Decimal(100), 100)
    assert (call.broker_order_id, call.symbol, call.asset_class) == (
        "229065",
        "SPY180720C00274000",
        AssetClass.US_OPTION,
    )
    assert (call.side, call.intent, call.qty, call.ratio_qty) == (Side.SELL, Intent.CLOSE, Decimal(1), 1)
    assert stock.limit_price is None and call.limit_price is None  # the net is the parent's


def check_multileg(o: Order) -> None:
    """A condor sold for a net credit of 0.80: syncd's sign convention makes the limit negative."""
    assert o.broker_order_id == "229123" and o.order_class == OrderClass.MLEG
    assert o.symbol == "SPY" and o.asset_class == AssetClass.US_OPTION and o.side is None
    assert o.type == OrderType.LIMIT and o.limit_price == Decimal("-0.8")
    assert o.qty == Decimal(1) and o.status == OrderStatus.EXPIRED and o.time_in_force == TimeInForce.PRE
    assert [(leg.symbol, leg.side, leg.intent, leg.ratio_qty) for leg in o.legs] == [
        ("SPY180720C00274000", Side.BUY, Intent.OPEN, 1),
        ("SPY180720C00275000", Side.SELL, Intent.OPEN, 1),
        ("SPY180720C00276000", Side.SELL, Intent.OPEN, 1),
        ("SPY180720C00277000", Side.BUY, Intent.OPEN, 1),
    ]
    assert all(leg.status == OrderStatus.EXPIRED and leg.limit_price is None for leg in o.legs)


CHECKS = {
    "order_equity.json": check_equity,
    "order_option.json": check_option,
    "order_combo.json": check_combo,
    "order_multileg.json": check_multileg,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
async def test_single_order(broker: TradierBroker, mock: aioresponses, name: str) -> None:
    oid = real(name)["order"]["id"]
    serve(mock, f"/orders/{oid}", name)
    CHECKS[name](await broker.get_order(str(oid)))


async def test_orders_list(broker: TradierBroker, mock: aioresponses) -> None:
    serve(mock, "/orders", "orders_list.json")
    orders = {o.broker_order_id: o for o in await broker.list_orders()}
    assert sorted(orders) == ["228175", "228749", "229063", "229123"]
    check_equity(orders["228175"])
    check_option(orders["228749"])
    check_combo(orders["229063"])
    check_multileg(orders["229123"])


async def test_orders_single_object_instead_of_a_list(broker: TradierBroker, mock: aioresponses) -> None:
    serve(mock, "/orders", "orders_single.json")
    (o,) = await broker.list_orders()
    check_equity(o)


async def test_orders_null(broker: TradierBroker, mock: aioresponses) -> None:
    serve(mock, "/orders", "orders_null.json")
    assert await broker.list_orders() == []


async def test_order_placement_answer_then_read_back(broker: TradierBroker, mock: aioresponses) -> None:
    """Tradier answers a placement with ``{"order": {"id", "status": "ok", "partner_id"}}``; the
    order is then read back by its id (served here: the documented option order renumbered)."""
    mock.post(tw.acct("/orders"), body=text("order_placed.json"), content_type="application/json")
    placed = real("order_option.json")
    placed["order"]["id"] = 257459
    mock.get(tw.acct("/orders/257459"), payload=placed)
    request = OrderRequest(client_order_id="syncd-real-1", qty=Decimal(1), symbol="SPY180720C00274000", side=Side.BUY)
    o = await broker.submit_order(request)
    assert o.broker_order_id == "257459" and o.symbol == "SPY180720C00274000" and o.type == OrderType.MARKET


async def test_cancel_answer(broker: TradierBroker, mock: aioresponses) -> None:
    mock.delete(tw.acct("/orders/123456"), body=text("order_canceled_answer.json"), content_type="application/json")
    await broker.cancel_order("123456")


async def test_pending_cancel_is_a_documented_status(broker: TradierBroker, mock: aioresponses) -> None:
    """Tradier's OpenAPI lists ``pending_cancel`` among an order's statuses: read, not refused."""
    body = real("order_equity.json")
    body["order"]["status"] = "pending_cancel"
    mock.get(tw.acct("/orders/228175"), payload=body)
    o = await broker.get_order("228175")
    assert o.status == OrderStatus.PENDING_CANCEL and not o.status.is_terminal


# -- positions ----------------------------------------------------------------------------------


async def test_position_single_object(broker: TradierBroker, mock: aioresponses) -> None:
    serve(mock, "/positions", "positions_single.json")
    mock.get(tw.acct("/orders"), payload=NO_ORDERS)
    (p,) = await broker.list_positions()
    assert p.symbol == "AAPL" and p.asset_class == AssetClass.US_EQUITY and p.option is None
    assert p.quantity == Decimal(1) and p.qty_available == Decimal(1)
    assert p.cost_basis == Decimal("207.01") and p.avg_entry_price == Decimal("207.01")


async def test_position_symbol_is_stripped(broker: TradierBroker, mock: aioresponses) -> None:
    """The documented position with its symbol padded as Alpaca's own example writes one (``"AAPL "``):
    symbols are stripped of surrounding whitespace (docs/guarantees.md), as orders' already are."""
    body = real("positions_single.json")
    body["positions"]["position"]["symbol"] = "AAPL "
    mock.get(tw.acct("/positions"), payload=body)
    mock.get(tw.acct("/orders"), payload=NO_ORDERS)
    (p,) = await broker.list_positions()
    assert p.symbol == "AAPL"


async def test_positions_list(broker: TradierBroker, mock: aioresponses) -> None:
    serve(mock, "/positions", "positions_list.json")
    mock.get(tw.acct("/orders"), payload=NO_ORDERS)
    got = {p.symbol: p for p in await broker.list_positions()}
    assert sorted(got) == ["AAPL", "AMZN", "CAH", "FB"]
    assert all(p.quantity == 1 and p.qty_available == 1 for p in got.values())
    assert got["AMZN"].cost_basis == Decimal("1870.70") and got["AMZN"].avg_entry_price == Decimal("1870.7")
    assert got["CAH"].avg_entry_price == Decimal("50.41") and got["FB"].avg_entry_price == Decimal("173.04")


async def test_positions_less_what_an_open_closing_order_holds(broker: TradierBroker, mock: aioresponses) -> None:
    """The documented positions with a documented order list: expired orders hold nothing."""
    serve(mock, "/positions", "positions_list.json")
    serve(mock, "/orders", "orders_list.json")
    assert all(p.qty_available == p.quantity for p in await broker.list_positions())


async def test_positions_null(broker: TradierBroker, mock: aioresponses) -> None:
    serve(mock, "/positions", "positions_null.json")
    mock.get(tw.acct("/orders"), payload=NO_ORDERS)
    assert await broker.list_positions() == []


# -- balances -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "buying_power"),
    [
        ("balances_margin.json", Decimal("12727.72")),
        ("balances_pdt.json", Decimal("12727.72")),
        ("balances_cash.json", Decimal("4343.38")),
    ],
)
async def test_balances(broker: TradierBroker, mock: aioresponses, name: str, buying_power: Decimal) -> None:
    """Tradier's documented balances: 28-digit numbers (``17798.360000000000000000000000``), read exactly."""
    serve(mock, "/balances", name)
    b = await broker.get_account()
    assert b.broker_account_id == "VA00000000"
    assert b.equity == Decimal("17798.36") and b.cash == Decimal("6363.86")
    assert b.buying_power == buying_power
    assert b.long_market_value == Decimal("11434.5") and b.short_market_value == 0


# -- history ------------------------------------------------------------------------------------


async def test_option_expiry_history(broker: TradierBroker, mock: aioresponses) -> None:
    serve(mock, "/history", "history_option.json")
    (e,) = await broker.list_option_events(dt.date(2018, 9, 1))
    assert e.kind == OptionEventKind.EXPIRED and e.on == dt.date(2018, 9, 21)
    assert e.quantity == Decimal(-1) and e.symbol is None and e.description == "Expired"


# -- market data --------------------------------------------------------------------------------


async def test_quotes_stock_and_option(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(tw.url("/v1/markets/quotes"), body=text("quotes.json"), content_type="application/json")
    quotes = await broker.get_quotes(["AAPL", "TSLA240119P00250000"])
    aapl, put = quotes["AAPL"], quotes["TSLA240119P00250000"]
    assert aapl.bid == Decimal("185.81") and aapl.ask == Decimal("185.82") and aapl.last == Decimal("185.815")
    assert aapl.bid_size == Decimal(5) and aapl.ask_size == Decimal(2)
    assert aapl.at == dt.datetime(2024, 1, 12, 16, 12, 54, 129000, dt.UTC)  # trade_date, the latest stamp
    assert aapl.greeks is None
    assert put.bid == Decimal("28.35") and put.ask == Decimal("28.75") and put.last == Decimal("28.64")
    assert put.bid_size == Decimal(28) and put.ask_size == Decimal(12)
    assert put.at == dt.datetime(2024, 1, 12, 16, 14, 14, 411000, dt.UTC)
    assert put.greeks is not None
    assert put.greeks.delta == Decimal("-0.9604526529331165")
    assert put.greeks.gamma == Decimal("0.005467830085355449")
    assert put.greeks.theta == Decimal("-0.08873705325377128")
    assert put.greeks.vega == Decimal("0.024449975355968073")
    assert put.greeks.rho == Decimal("0.0016218090363680116")
    assert put.greeks.implied_volatility == Decimal("0.568797")


async def test_history_journal_and_trade_are_not_option_events(broker: TradierBroker, mock: aioresponses) -> None:
    """A journal and an option *trade* (``type: trade``): neither is an expiry, assignment or exercise."""
    serve(mock, "/history", "history_mixed.json")
    assert await broker.list_option_events(dt.date(2018, 5, 1)) == []


async def test_quotes_multiple(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(tw.url("/v1/markets/quotes"), body=text("quotes_multiple.json"), content_type="application/json")
    quotes = await broker.get_quotes(["AAPL", "TSLA240119P00250000"])
    assert quotes["AAPL"].bid == Decimal("185.54") and quotes["AAPL"].ask == Decimal("185.55")
    put = quotes["TSLA240119P00250000"]
    assert put.bid == Decimal("28.9") and put.ask == Decimal("29.3") and put.last == Decimal("29.22")
    assert put.at == dt.datetime(2024, 1, 12, 16, 1, 5, 186000, dt.UTC)  # trade_date: later than bid/ask


async def test_quotes_partly_unmatched(broker: TradierBroker, mock: aioresponses) -> None:
    """One quote (a single object) and ``unmatched_symbols``: the unknown symbol is simply absent."""
    mock.get(tw.url("/v1/markets/quotes"), body=text("quotes_partly_unmatched.json"), content_type="application/json")
    quotes = await broker.get_quotes(["AAPL", "SEFDF"])
    assert list(quotes) == ["AAPL"] and quotes["AAPL"].last == Decimal("185.75")


async def test_quotes_all_unmatched(broker: TradierBroker, mock: aioresponses) -> None:
    mock.get(tw.url("/v1/markets/quotes"), body=text("quotes_unmatched.json"), content_type="application/json")
    assert await broker.get_quotes(["SEFDF"]) == {}


async def test_calendar_month_with_holidays(broker: TradierBroker, mock: aioresponses) -> None:
    """January 2024 as Tradier sends it: closed days (weekends, New Year, MLK day) have no session."""
    mock.get(tw.url("/v1/markets/calendar"), body=text("calendar_2024_01.json"), content_type="application/json")
    sessions = await broker._month(2024, 1)
    assert sessions is not None
    days = [start.date() for start, _ in sessions]
    assert dt.date(2024, 1, 1) not in days and dt.date(2024, 1, 15) not in days
    assert days[0] == dt.date(2024, 1, 2) and len(days) == 21
    assert sessions[0] == (
        dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC),  # 09:30 EST
        dt.datetime(2024, 1, 2, 21, 0, tzinfo=dt.UTC),
    )


async def test_calendar_days(broker: TradierBroker, mock: aioresponses) -> None:
    """The documented calendar: sessions in New York time, kept as UTC (April: EDT, UTC-4)."""
    mock.get(tw.url("/v1/markets/calendar"), body=text("calendar.json"), content_type="application/json")
    sessions = await broker._month(2019, 4)
    assert sessions == [
        (dt.datetime(2019, 4, d, 13, 30, tzinfo=dt.UTC), dt.datetime(2019, 4, d, 20, 0, tzinfo=dt.UTC))
        for d in (1, 2, 3)
    ]


async def test_clock(broker: TradierBroker, mock: aioresponses) -> None:
    """The documented clock (open, epoch seconds); with no calendar the weekday sessions give next open/close."""
    mock.get(tw.url("/v1/markets/clock"), body=text("clock.json"), content_type="application/json")
    mock.get(tw.url("/v1/markets/calendar"), status=404, body="404: Not Found", content_type="text/plain", repeat=True)
    c = await broker.get_clock()
    assert c.is_open and c.timestamp == dt.datetime(2019, 5, 6, 15, 36, 28, tzinfo=dt.UTC)
    assert c.next_close == dt.datetime(2019, 5, 6, 20, 0, tzinfo=dt.UTC)
    assert c.next_open == dt.datetime(2019, 5, 7, 13, 30, tzinfo=dt.UTC)


# -- account events stream ----------------------------------------------------------------------


async def test_account_events_of_the_docs(broker: TradierBroker, mock: aioresponses) -> None:
    """Tradier's "Account Streaming Responses": one limit order open -> pending -> filled.

    An event names only the order's state; the adapter completes it from a GET of the order,
    served here as the documented equity order renumbered 1107075 (buy 2 AAPL limit 10)."""
    order = real("order_equity.json")
    order["order"] |= {"id": 1107075, "quantity": 2.0, "price": 10.0, "status": "open", "duration": "day"}
    mock.get(tw.acct("/orders/1107075"), payload=order)
    events = [e for e in real("account_events.json") if e["event"] == "order"]
    opened, pending, filled = [await broker._stream_update(e) for e in events]
    assert opened.event == "new" and opened.order.status == OrderStatus.NEW
    assert opened.order.filled_qty == 0 and opened.price is None and opened.qty is None
    assert pending.order.status == OrderStatus.PENDING_NEW
    assert filled.event == "fill" and filled.cumulative
    assert filled.order.status == OrderStatus.FILLED
    assert filled.order.filled_qty == Decimal(2) and filled.order.filled_avg_price == Decimal(10)
    assert filled.order.filled_at == utc("2021-08-09T20:05:35.277Z")
    assert filled.at == utc("2021-08-09T20:05:35.277Z")
    assert filled.qty is None and filled.price is None  # last_fill_quantity 0.0: no single fill named
    assert filled.order.symbol == "AAPL" and filled.order.side == Side.BUY and filled.order.qty == Decimal(2)
