"""Every order shape the brokers send, on the wire (aioresponses), and replacing a working order.

Alpaca's notional order is the close-position answer of alpaca-py's own tests
(tests/broker/broker_client/test_trading_routes.py: ``"notional": "500"``, ``"qty": null``); its
replace answer is alpaca-py's ``test_replace_order`` fixture with ``replaces`` set, as Alpaca's
docs say a replace answers (the NEW order; the old one gets ``replaced_by`` and ends ``replaced``).
Bracket/OCO legs are Alpaca ``Order`` entities nested in ``legs`` (``order_class`` on each, the
take-profit a ``limit``, the stop loss a ``stop`` with ``stop_price``). Tradier's orders follow its
``GET /v1/accounts/{id}/orders`` answer (``class``, ``duration``, ``leg`` lists, ``stop_price``).
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aioresponses import aioresponses
from pydantic import SecretStr

from syncd.brokers.alpaca import AlpacaBroker, build_replace_payload
from syncd.brokers.base import BadBrokerData, BrokerRejected, BrokerUnavailable, OrderNotFound
from syncd.brokers.tradier import TradierBroker, available_quantities, build_replace_form
from syncd.brokers.types import (
    AssetClass,
    Intent,
    OrderClass,
    OrderStatus,
    OrderType,
    ReplaceRequest,
    Side,
    TimeInForce,
)
from syncd.settings import AccountSettings
from syncd.trading.reconcile import OrderSnapshot, merge_order
from tests.unit import test_alpaca_wire as aw
from tests.unit import test_tradier_wire as tw
from tests.unit.broker_wire import Recorder, calls

# -- Alpaca -----------------------------------------------------------------------------------

# alpaca-py tests/broker/broker_client/test_trading_routes.py (close a position: a notional order)
ALPACA_NOTIONAL = """
{
  "id": "61e69015-8549-4bfd-b9c3-01e75843f47d",
  "client_order_id": "eb9e2aaa-f71a-4f51-b5b4-52a6c565dad4",
  "created_at": "2021-03-16T18:38:01.942282Z",
  "updated_at": "2021-03-16T18:38:01.942282Z",
  "submitted_at": "2021-03-16T18:38:01.937734Z",
  "filled_at": null,
  "expired_at": null,
  "canceled_at": null,
  "failed_at": null,
  "replaced_at": null,
  "replaced_by": null,
  "replaces": null,
  "asset_id": "904837e3-3b76-47ec-b432-046db621571b",
  "symbol": "AAPL",
  "asset_class": "us_equity",
  "notional": "500",
  "qty": null,
  "filled_qty": "0",
  "filled_avg_price": null,
  "order_class": "simple",
  "order_type": "market",
  "type": "market",
  "side": "buy",
  "time_in_force": "day",
  "limit_price": null,
  "stop_price": null,
  "status": "accepted",
  "extended_hours": false,
  "legs": null,
  "trail_percent": null,
  "trail_price": null,
  "hwm": null,
  "position_intent": "buy_to_open",
  "commission": 1.25
}
"""

# alpaca-py tests/trading/trading_client/test_order_routes.py test_replace_order, as the NEW order
ALPACA_REPLACED = """
{
  "id": "0b11f089-722d-4ced-9beb-e2eeed3637dc",
  "client_order_id": "syncd-9-00aa11bb22cc33dd",
  "created_at": "2021-03-16T18:39:01.942282Z",
  "updated_at": "2021-03-16T18:39:01.942282Z",
  "submitted_at": "2021-03-16T18:39:01.937734Z",
  "filled_at": null,
  "expired_at": null,
  "canceled_at": null,
  "failed_at": null,
  "replaced_at": null,
  "replaced_by": null,
  "replaces": "61e69015-8549-4bfd-b9c3-01e75843f47d",
  "asset_id": "904837e3-3b76-47ec-b432-046db621571b",
  "symbol": "AAPL",
  "asset_class": "us_equity",
  "notional": null,
  "qty": "5",
  "filled_qty": "0",
  "filled_avg_price": null,
  "order_class": "simple",
  "order_type": "limit",
  "type": "limit",
  "side": "buy",
  "time_in_force": "day",
  "limit_price": "151.5",
  "stop_price": null,
  "status": "accepted",
  "extended_hours": false,
  "legs": null,
  "trail_percent": null,
  "trail_price": null,
  "hwm": null,
  "position_intent": "buy_to_open",
  "commission": 1.25
}
"""


@pytest.fixture
def alpaca(session: aiohttp.ClientSession, rec: Recorder) -> AlpacaBroker:
    account = AccountSettings(
        name="alpaca-shapes", broker="alpaca", api_key=SecretStr(aw.KEY), api_secret=SecretStr(aw.SECRET)
    )
    return AlpacaBroker(account, session=session, **rec.wiring())


@pytest.fixture
def tradier(session: aiohttp.ClientSession, rec: Recorder) -> TradierBroker:
    account = AccountSettings(name="tradier-shapes", broker="tradier", account_id=tw.ACCT, token=SecretStr(tw.TOKEN))
    return TradierBroker(account, session=session, **rec.wiring())


def notional(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(ALPACA_NOTIONAL)
    body.update(over)
    return body


def bracket(**over: Any) -> dict[str, Any]:
    """An Alpaca bracket: the entry (buy 10 AAPL limit 150) with take-profit and stop-loss legs."""
    tp = aw.order_json(
        id=str(uuid.uuid4()),
        client_order_id=str(uuid.uuid4()),
        order_class="bracket",
        type="limit",
        order_type="limit",
        side="sell",
        qty="10",
        limit_price="160",
        status="new",
        position_intent="sell_to_close",
    )
    sl = aw.order_json(
        id=str(uuid.uuid4()),
        client_order_id=str(uuid.uuid4()),
        order_class="bracket",
        type="stop",
        order_type="stop",
        side="sell",
        qty="10",
        stop_price="145",
        status="held",
        position_intent="sell_to_close",
    )
    body = aw.order_json(
        order_class="bracket",
        type="limit",
        order_type="limit",
        limit_price="150",
        status="filled",
        filled_qty="10",
        filled_avg_price="149.9",
        filled_at="2026-01-05T15:00:02Z",
        legs=[tp, sl],
    )
    body.update(over)
    return body


async def test_alpaca_notional_order_keeps_qty_none_on_every_parse_path(
    alpaca: AlpacaBroker, mock: aioresponses
) -> None:
    """By id, by client id, listed, and in a stream event: qty stays None, notional is kept; fills as sent."""
    body = notional()
    filled = notional(
        status="filled", filled_qty="2.857142857", filled_avg_price="175.00", filled_at=body["updated_at"]
    )
    mock.get(aw.url(f"/v2/orders/{body['id']}"), payload=body)
    mock.get(aw.url("/v2/orders:by_client_order_id"), payload=filled)
    mock.get(aw.url("/v2/orders"), payload=[body, filled | {"id": str(uuid.uuid4())}])
    seen = [
        await alpaca.get_order(body["id"]),
        await alpaca.get_order_by_client_id(body["client_order_id"]),
        *(await alpaca.list_orders()),
    ]
    update = alpaca._trade_update(
        {
            "stream": "trade_updates",
            "data": {
                "event": "fill",
                "order": filled,
                "timestamp": "2021-03-16T18:38:02Z",
                "price": "175.00",
                "qty": "2.857142857",
                "position_qty": "2.857142857",
                "execution_id": str(uuid.uuid4()),
            },
        }
    )
    assert update is not None
    seen.append(update.order)
    for order in seen:
        assert order is not None
        assert order.qty is None  # never 0
        assert order.notional == Decimal("500")
    assert seen[1] is not None and seen[1].filled_qty == Decimal("2.857142857")  # fractional, as sent
    assert seen[1].status == OrderStatus.FILLED and seen[1].filled_avg_price == Decimal("175.00")


async def test_alpaca_symbol_is_stripped(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    body = aw.order_json(symbol="  AAPL \t")
    mock.get(aw.url(f"/v2/orders/{body['id']}"), payload=body)
    assert (await alpaca.get_order(body["id"])).symbol == "AAPL"


@pytest.mark.parametrize("empty", [None, ""])
async def test_alpaca_order_without_a_type_is_bad_data(alpaca: AlpacaBroker, mock: aioresponses, empty: Any) -> None:
    body = aw.order_json(type=empty, order_type=empty)
    mock.get(aw.url(f"/v2/orders/{body['id']}"), payload=body)
    with pytest.raises(BadBrokerData, match="no type") as ei:
        await alpaca.get_order(body["id"])
    assert ei.value.field == "order.type"


async def test_alpaca_bracket_legs_are_orders_of_their_own(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    body = bracket()
    mock.get(aw.url(f"/v2/orders/{body['id']}"), payload=body)
    order = await alpaca.get_order(body["id"])
    assert order.order_class == OrderClass.BRACKET and order.contingent
    assert order.asset_class == AssetClass.US_EQUITY
    tp, sl = order.legs
    assert (tp.type, tp.limit_price, tp.status, tp.side, tp.intent) == (
        OrderType.LIMIT,
        Decimal("160"),
        OrderStatus.NEW,
        Side.SELL,
        Intent.CLOSE,
    )
    assert (sl.type, sl.stop_price, sl.status) == (OrderType.STOP, Decimal("145"), OrderStatus.HELD)
    # the entry's fill is its own: the legs are no part of it
    snap = OrderSnapshot.of(order)
    assert snap.legs == () and snap.filled_qty == Decimal("10")
    legs = sorted((leg.broker_order_id, leg.status.value, leg.filled_qty) for leg in order.legs)
    assert list(snap.children) == legs
    # a leg changing alone is a change of the order (its children), so it is written
    later = bracket(id=body["id"], legs=[body["legs"][0] | {"status": "filled", "filled_qty": "10"}, body["legs"][1]])
    mock.get(aw.url(f"/v2/orders/{body['id']}"), payload=later)
    after = OrderSnapshot.of(await alpaca.get_order(body["id"]))
    assert merge_order(snap, after) is not snap


async def test_alpaca_replace_patches_and_answers_the_new_order(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    old = "61e69015-8549-4bfd-b9c3-01e75843f47d"
    mock.patch(aw.url(f"/v2/orders/{old}"), payload=json.loads(ALPACA_REPLACED))
    new = await alpaca.replace_order(
        ReplaceRequest(old, "syncd-9-00aa11bb22cc33dd", qty=Decimal("5"), limit_price=Decimal("151.50"))
    )
    assert new.broker_order_id == "0b11f089-722d-4ced-9beb-e2eeed3637dc"
    assert new.replaces == old and new.limit_price == Decimal("151.5") and new.qty == Decimal("5")
    ((method, _, kw),) = calls(mock)
    assert method == "PATCH"
    assert kw["json"] == {"client_order_id": "syncd-9-00aa11bb22cc33dd", "qty": "5", "limit_price": "151.5"}


async def test_alpaca_replace_of_a_filled_order_is_rejected_with_the_reason(
    alpaca: AlpacaBroker, mock: aioresponses
) -> None:
    mock.patch(aw.url("/v2/orders/done"), status=422, payload={"code": 42210000, "message": "order is filled"})
    with pytest.raises(BrokerRejected, match="order is filled") as ei:
        await alpaca.replace_order(ReplaceRequest("done", "syncd-1-aa", limit_price=Decimal("1")))
    assert ei.value.reason == "order is filled"
    mock.patch(aw.url("/v2/orders/gone"), status=404, payload={"code": 40410000, "message": "order not found"})
    with pytest.raises(OrderNotFound):
        await alpaca.replace_order(ReplaceRequest("gone", "syncd-1-ab", limit_price=Decimal("1")))


async def test_alpaca_replace_is_never_retried(alpaca: AlpacaBroker, mock: aioresponses, rec: Recorder) -> None:
    mock.patch(aw.url("/v2/orders/x"), status=503, payload={"message": "busy"}, repeat=True)
    with pytest.raises(BrokerUnavailable):
        await alpaca.replace_order(ReplaceRequest("x", "syncd-1-ac", limit_price=Decimal("2")))
    assert alpaca.request_count == 1 and rec.sleeps == []


def test_alpaca_replace_needs_a_change() -> None:
    with pytest.raises(BrokerRejected, match="changes qty or limit_price"):
        build_replace_payload(ReplaceRequest("x", "syncd-1-ad"))


# -- Tradier ----------------------------------------------------------------------------------


def otoco(**over: Any) -> dict[str, Any]:
    """A Tradier OTOCO: buy 10 AAPL limit 150 (filled), then sell limit 160 / sell stop 145 (one cancels other)."""
    base = tw.order_json(id=300, type="limit", price=150.0, status="open", tag="by-hand")
    base.update(
        {
            "class": "otoco",
            "num_legs": 3,
            "strategy": "otoco",
            "leg": [
                tw.order_json(
                    id=301, type="limit", price=150.0, status="filled", exec_quantity=10.0, avg_fill_price=149.9
                ),
                tw.order_json(id=302, type="limit", price=160.0, side="sell", status="open"),
                tw.order_json(id=303, type="stop", stop_price=145.0, side="sell", status="open"),
            ],
        }
    )
    base.update(over)
    return base


@pytest.mark.parametrize("duration", ["pre", "post", "gtc", "day"])
async def test_tradier_durations_are_kept(tradier: TradierBroker, mock: aioresponses, duration: str) -> None:
    mock.get(tw.acct("/orders/228175"), payload={"order": tw.order_json(duration=duration)})
    assert (await tradier.get_order("228175")).time_in_force == TimeInForce(duration)


async def test_tradier_unknown_duration_is_bad_data(tradier: TradierBroker, mock: aioresponses) -> None:
    mock.get(tw.acct("/orders/228175"), payload={"order": tw.order_json(duration="overnight")})
    with pytest.raises(BadBrokerData, match="duration"):
        await tradier.get_order("228175")


async def test_tradier_order_without_a_type_is_bad_data(tradier: TradierBroker, mock: aioresponses) -> None:
    body = tw.order_json()
    del body["type"]
    mock.get(tw.acct("/orders/228175"), payload={"order": body})
    with pytest.raises(BadBrokerData, match="no type"):
        await tradier.get_order("228175")


async def test_tradier_symbol_is_stripped(tradier: TradierBroker, mock: aioresponses) -> None:
    mock.get(tw.acct("/orders/228175"), payload={"order": tw.order_json(symbol=" AAPL ")})
    assert (await tradier.get_order("228175")).symbol == "AAPL"


async def test_tradier_multileg_legs_carry_no_limit_of_their_own(tradier: TradierBroker, mock: aioresponses) -> None:
    body = tw.multileg_json()
    for leg in body["leg"]:
        leg["price"] = 2.1  # Tradier repeats the parent's net on each leg
    mock.get(tw.acct("/orders/229063"), payload={"order": body})
    order = await tradier.get_order("229063")
    assert order.limit_price == Decimal("2.1")
    assert [leg.limit_price for leg in order.legs] == [None, None]
    assert [leg.ratio_qty for leg in order.legs] == [1, 1]


async def test_tradier_otoco_legs_are_orders_of_their_own(tradier: TradierBroker, mock: aioresponses) -> None:
    mock.get(tw.acct("/orders/300"), payload={"order": otoco()})
    order = await tradier.get_order("300")
    assert order.order_class == OrderClass.BRACKET and order.contingent
    entry, tp, sl = order.legs
    assert (entry.status, entry.filled_qty, entry.filled_avg_price) == (
        OrderStatus.FILLED,
        Decimal(10),
        Decimal("149.9"),
    )
    assert (tp.type, tp.limit_price, tp.intent) == (OrderType.LIMIT, Decimal("160"), Intent.CLOSE)
    assert (sl.type, sl.stop_price, sl.limit_price) == (OrderType.STOP, Decimal("145"), None)
    assert [leg.ratio_qty for leg in order.legs] == [None, None, None]


async def test_tradier_oco_exits_hold_a_position_once(tradier: TradierBroker, mock: aioresponses) -> None:
    """qty_available: the take-profit and the stop of one group hold the same 10 shares, not 20."""
    oco = tw.order_json(id=400, type="limit", price=160.0, side="sell", status="open")
    oco.update(
        {
            "class": "oco",
            "leg": [
                tw.order_json(id=401, type="limit", price=160.0, side="sell", status="open"),
                tw.order_json(id=402, type="stop", stop_price=145.0, side="sell", status="open"),
            ],
        }
    )
    mock.get(tw.acct("/orders"), payload={"orders": {"order": [oco, otoco()]}})
    orders = await tradier.list_orders()
    assert available_quantities(orders) == {("AAPL", False): Decimal(20)}  # 10 per group, two groups
    # an OTOCO whose entry has not filled yet holds nothing
    waiting = otoco()
    waiting["leg"][0].update(status="open", exec_quantity=0.0, avg_fill_price=0.0)
    mock.get(tw.acct("/orders"), payload={"orders": {"order": waiting}})
    assert available_quantities(await tradier.list_orders()) == {}


async def test_tradier_replace_puts_the_new_price_and_reads_the_order_back(
    tradier: TradierBroker, mock: aioresponses
) -> None:
    mock.put(tw.acct("/orders/228175"), payload={"order": {"id": 228175, "status": "ok", "partner_id": "x"}})
    mock.get(tw.acct("/orders/228175"), payload={"order": tw.order_json(type="limit", price=151.5)})
    order = await tradier.replace_order(ReplaceRequest("228175", "syncd-9-aa", limit_price=Decimal("151.50")))
    assert order.broker_order_id == "228175" and order.limit_price == Decimal("151.5")
    ((_, _, kw),) = calls(mock, "PUT")
    data = kw["data"]
    assert (dict(data) if not isinstance(data, str) else dict(parse_qsl(data))) == {"price": "151.5"}


async def test_tradier_replace_refusals(tradier: TradierBroker, mock: aioresponses) -> None:
    with pytest.raises(BrokerRejected, match="cannot change an order's quantity"):
        await tradier.replace_order(ReplaceRequest("1", "syncd-1-aa", qty=Decimal(5), limit_price=Decimal(1)))
    assert calls(mock) == []  # nothing sent
    mock.put(tw.acct("/orders/2"), status=400, payload={"errors": {"error": ["Order is not in a modifiable state"]}})
    with pytest.raises(BrokerRejected, match="not in a modifiable state"):
        await tradier.replace_order(ReplaceRequest("2", "syncd-1-ab", limit_price=Decimal(1)))


def test_tradier_replace_form_of_a_credit() -> None:
    assert build_replace_form(ReplaceRequest("1", "c", limit_price=Decimal("-0.85"))) == [
        ("type", "credit"),
        ("price", "0.85"),
    ]


def test_no_float_in_replace_bodies() -> None:
    body = build_replace_payload(ReplaceRequest("x", "c", qty=Decimal("0.000000001"), limit_price=Decimal("0.0001")))
    assert body == {"client_order_id": "c", "qty": "0.000000001", "limit_price": "0.0001"}
    assert not re.search(r"e-?\d", json.dumps(body))


def test_tradier_only_durations_are_refused_for_alpaca_before_sending() -> None:
    from syncd.brokers.alpaca import build_order_payload
    from syncd.brokers.tradier import build_order_form
    from syncd.brokers.types import OrderRequest

    pre = OrderRequest("c-1", qty=Decimal(1), symbol="AAPL", side=Side.BUY, time_in_force=TimeInForce.PRE)
    with pytest.raises(BrokerRejected, match="not offered by Alpaca"):
        build_order_payload(pre)
    assert ("duration", "pre") in build_order_form(pre)
