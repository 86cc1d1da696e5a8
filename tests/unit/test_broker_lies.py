"""Broker answers that parse but cannot be true are refused (issue 10 item 5), both adapters, every path.

Each case is a wire answer (aioresponses) with one lie in it: ``filled_qty`` above ``qty``, a
time far in the future, a negative price, a number with more digits than syncd keeps
exactly, an HTML page where JSON belongs. The adapter must raise ``BadBrokerData`` naming
the field; the cycles then store nothing of the answer and set ``accounts.last_error``
(tests/integration/test_broker_lies_stored.py shows that end to end).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from pydantic import SecretStr

from syncd.brokers.alpaca import AlpacaBroker
from syncd.brokers.base import BadBrokerData
from syncd.brokers.tradier import TradierBroker
from syncd.settings import AccountSettings
from tests.unit import test_alpaca_wire as aw
from tests.unit import test_tradier_wire as tw
from tests.unit.broker_wire import Recorder

FUTURE = "2099-01-01T00:00:00Z"
DIGITS_30 = "123456789012345678901234567890"
TOO_FINE = "1.123456789012345678901"  # 22 significant digits


@pytest.fixture
def alpaca(session: aiohttp.ClientSession, rec: Recorder) -> AlpacaBroker:
    account = AccountSettings(
        name="alpaca-lies", broker="alpaca", api_key=SecretStr(aw.KEY), api_secret=SecretStr(aw.SECRET)
    )
    return AlpacaBroker(account, session=session, **rec.wiring())


@pytest.fixture
def tradier(session: aiohttp.ClientSession, rec: Recorder) -> TradierBroker:
    account = AccountSettings(name="tradier-lies", broker="tradier", account_id=tw.ACCT, token=SecretStr(tw.TOKEN))
    return TradierBroker(account, session=session, **rec.wiring())


async def refused(call: Awaitable[Any], field: str) -> BadBrokerData:
    with pytest.raises(BadBrokerData) as ei:
        await call
    assert field in ei.value.field or field in str(ei.value), (ei.value.field, str(ei.value))
    return ei.value


# -- Alpaca ---------------------------------------------------------------------------------------------------

ALPACA_ORDER_LIES = {
    "filled-above-qty": ({"qty": "10", "filled_qty": "11", "status": "partially_filled"}, "filled_qty"),
    "negative-qty": ({"qty": "-10"}, "qty"),
    "future-submitted": ({"submitted_at": FUTURE}, "submitted_at"),
    "future-updated": ({"updated_at": FUTURE}, "updated_at"),
    "negative-fill-price": ({"filled_qty": "10", "status": "filled", "filled_avg_price": "-1.5"}, "filled_avg_price"),
    "digits-qty": ({"qty": DIGITS_30}, "more digits"),
    "digits-fill-price": ({"filled_qty": "1", "filled_avg_price": TOO_FINE}, "more digits"),
}


@pytest.mark.parametrize("lie", sorted(ALPACA_ORDER_LIES))
async def test_alpaca_order_lies_are_refused_by_id_and_in_the_listing(
    alpaca: AlpacaBroker, mock: aioresponses, lie: str
) -> None:
    over, field = ALPACA_ORDER_LIES[lie]
    order = aw.order_json(**over)
    mock.get(aw.url(f"/v2/orders/{order['id']}"), payload=order)
    await refused(alpaca.get_order(order["id"]), field)
    mock.get(aw.url("/v2/orders"), payload=[aw.order_json(), order])
    await refused(alpaca.list_orders("all"), field)
    mock.get(aw.url("/v2/orders:by_client_order_id"), payload=order)
    await refused(alpaca.get_order_by_client_id("syncd-1"), field)


async def test_alpaca_mleg_leg_lies_are_refused(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    order = aw.mleg_json()
    order["legs"][1]["filled_avg_price"] = "-1.00"
    mock.get(aw.url(f"/v2/orders/{order['id']}"), payload=order)
    await refused(alpaca.get_order(order["id"]), "legs[1].filled_avg_price")
    order = aw.mleg_json()
    order["legs"][0]["filled_qty"] = "68"  # more than the leg's 67
    mock.get(aw.url(f"/v2/orders/{order['id']}"), payload=order)
    await refused(alpaca.get_order(order["id"]), "legs[0].filled_qty")


async def test_alpaca_mleg_credit_is_not_a_negative_price(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    """A multi-leg order's net may be negative (a credit): only legs' prices must not be."""
    order = aw.mleg_json(filled_avg_price="-2.10", limit_price="-2.1")
    mock.get(aw.url(f"/v2/orders/{order['id']}"), payload=order)
    assert (await alpaca.get_order(order["id"])).filled_avg_price == Decimal("-2.10")


ALPACA_POSITION_LIES = {
    "negative-avg-entry": ({"avg_entry_price": "-100.5"}, "avg_entry_price"),
    "negative-current": ({"current_price": "-120"}, "current_price"),
    "digits-qty": ({"qty": DIGITS_30, "qty_available": DIGITS_30}, "more digits"),
    "digits-fraction": ({"qty": "5." + "1" * 25}, "more digits"),
    "digits-cost": ({"cost_basis": TOO_FINE}, "more digits"),
}


@pytest.mark.parametrize("lie", sorted(ALPACA_POSITION_LIES))
async def test_alpaca_position_lies_are_refused(alpaca: AlpacaBroker, mock: aioresponses, lie: str) -> None:
    over, field = ALPACA_POSITION_LIES[lie]
    mock.get(aw.url("/v2/positions"), payload=[aw.position_json(symbol="MSFT"), aw.position_json(**over)])
    await refused(alpaca.list_positions(), field)


async def test_alpaca_short_position_has_negative_cost_and_value_but_positive_prices(
    alpaca: AlpacaBroker, mock: aioresponses
) -> None:
    short = aw.position_json(side="short", qty="-5", qty_available="-5", cost_basis="-502.5", market_value="-600")
    mock.get(aw.url("/v2/positions"), payload=[short])
    (p,) = await alpaca.list_positions()
    assert (p.quantity, p.cost_basis, p.market_value, p.avg_entry_price) == (
        Decimal(-5),
        Decimal("-502.5"),
        Decimal(-600),
        Decimal("100.5"),
    )


async def test_alpaca_20_digit_quantity_is_kept_exactly(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    """Guards the rounding: a quantity was once stored rounded to Decimal's 28 digits (abs() x sign)."""
    qty = "123456789012345.12345"
    mock.get(aw.url("/v2/positions"), payload=[aw.position_json(side="short", qty=qty, qty_available=qty)])
    (p,) = await alpaca.list_positions()
    assert p.quantity == -Decimal(qty) and str(p.quantity) == "-" + qty


async def test_alpaca_account_with_too_many_digits_is_refused(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(aw.url("/v2/account"), payload={**aw.ACCOUNT_JSON, "equity": DIGITS_30})
    await refused(alpaca.get_account(), "account.equity")


ALPACA_QUOTE_LIES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "negative-bid": (lambda s: s["latestQuote"].update(bp=-1.0), "bid"),
    "negative-ask": (lambda s: s["latestQuote"].update(ap=-1.1), "ask"),
    "negative-last": (lambda s: s["latestTrade"].update(p=-1.05), "last"),
    "future-quote": (lambda s: s["latestQuote"].update(t=FUTURE), "snapshots.AAPL.at"),
}


@pytest.mark.parametrize("lie", sorted(ALPACA_QUOTE_LIES))
async def test_alpaca_quote_lies_are_refused(alpaca: AlpacaBroker, mock: aioresponses, lie: str) -> None:
    edit, field = ALPACA_QUOTE_LIES[lie]
    snap = aw.stock_snapshot(1.0, 1.1, 1.05)
    edit(snap)
    mock.get(aw.url("/v2/stocks/snapshots", aw.DATA), payload={"AAPL": snap})
    await refused(alpaca.get_quotes(["AAPL"]), field)


async def test_alpaca_option_quote_lie_is_refused(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    symbol = "AAPL260116C00150000"
    snap = aw.option_snapshot(-3.0, 3.2)
    mock.get(aw.url("/v1beta1/options/snapshots", aw.DATA), payload={"snapshots": {symbol: snap}})
    await refused(alpaca.get_quotes([symbol]), "bid")


@pytest.mark.parametrize("path", ["/v2/account", "/v2/positions", "/v2/orders"])
async def test_alpaca_html_where_json_belongs_is_refused_at_once(
    alpaca: AlpacaBroker, mock: aioresponses, rec: Recorder, path: str
) -> None:
    mock.get(aw.url(path), status=200, body="<html><h1>Oops</h1></html>", content_type="text/html")
    call = {"/v2/account": alpaca.get_account, "/v2/positions": alpaca.list_positions}.get(path, alpaca.list_orders)
    err = await refused(call(), "body")
    assert "HTML" in str(err)
    assert rec.sleeps == []  # not retried: refused on the first answer


# -- Tradier --------------------------------------------------------------------------------------------------

TRADIER_ORDER_LIES: dict[str, tuple[dict[str, Any], str]] = {
    "filled-above-qty": ({"quantity": 10.0, "exec_quantity": 11.0, "status": "partially_filled"}, "filled_qty"),
    "future-created": ({"create_date": FUTURE}, "submitted_at"),
    "future-transaction": ({"transaction_date": FUTURE}, "updated_at"),
    "negative-fill-price": ({"exec_quantity": 10.0, "status": "filled", "avg_fill_price": -3.0}, "filled_avg_price"),
    "digits-qty": ({"quantity": DIGITS_30}, "more digits"),
}


@pytest.mark.parametrize("lie", sorted(TRADIER_ORDER_LIES))
async def test_tradier_order_lies_are_refused_by_id_and_in_the_listing(
    tradier: TradierBroker, mock: aioresponses, lie: str
) -> None:
    over, field = TRADIER_ORDER_LIES[lie]
    order = tw.order_json(**over)
    mock.get(tw.acct(f"/orders/{order['id']}"), payload={"order": order})
    await refused(tradier.get_order(str(order["id"])), field)
    mock.get(tw.acct("/orders"), payload={"orders": {"order": [tw.order_json(id=1), order]}})
    await refused(tradier.list_orders("all"), field)


async def test_tradier_multileg_leg_lie_is_refused(tradier: TradierBroker, mock: aioresponses) -> None:
    order = tw.multileg_json()
    order["leg"][0]["exec_quantity"] = 68.0
    mock.get(tw.acct(f"/orders/{order['id']}"), payload={"order": order})
    await refused(tradier.get_order(str(order["id"])), "legs[0].filled_qty")


async def test_tradier_filled_above_qty_in_positions_orders_is_refused(
    tradier: TradierBroker, mock: aioresponses
) -> None:
    """list_positions reads the orders too (for qty_available): a lie there refuses the positions."""
    mock.get(tw.acct("/positions"), payload={"positions": "null"})
    mock.get(tw.acct("/orders"), payload={"orders": {"order": tw.order_json(quantity=1.0, exec_quantity=2.0)}})
    await refused(tradier.list_positions(), "filled_qty")


def _tradier_position(**over: Any) -> dict[str, Any]:
    p = {"cost_basis": 1000.0, "date_acquired": "2026-01-05T15:00:00.000Z", "id": 1, "quantity": 10.0, "symbol": "AAPL"}
    p.update(over)
    return p


@pytest.mark.parametrize(
    ("over", "field"),
    [({"quantity": DIGITS_30}, "more digits"), ({"cost_basis": TOO_FINE}, "more digits")],
    ids=["digits-qty", "digits-cost"],
)
async def test_tradier_position_lies_are_refused(
    tradier: TradierBroker, mock: aioresponses, over: dict[str, Any], field: str
) -> None:
    mock.get(tw.acct("/positions"), payload={"positions": {"position": [_tradier_position(**over)]}})
    mock.get(tw.acct("/orders"), payload={"orders": "null"})
    await refused(tradier.list_positions(), field)


async def test_tradier_json_number_with_too_many_digits_is_refused_not_rounded_through_a_float(
    tradier: TradierBroker, mock: aioresponses
) -> None:
    """A JSON number (not a string) of 25 digits: a float would have kept 17 silently."""
    position = '{"cost_basis": 1000, "id": 1, "symbol": "AAPL", "quantity": 10.123456789012345678901234}'
    body = '{"positions": {"position": ' + position + "}}"
    mock.get(tw.acct("/positions"), body=body, content_type="application/json")
    mock.get(tw.acct("/orders"), payload={"orders": "null"})
    await refused(tradier.list_positions(), "more digits")


async def test_tradier_json_numbers_are_exact(tradier: TradierBroker, mock: aioresponses) -> None:
    body = json.dumps({"positions": {"position": _tradier_position(quantity=-3, cost_basis=-450.15)}})
    mock.get(tw.acct("/positions"), body=body, content_type="application/json")
    mock.get(tw.acct("/orders"), payload={"orders": "null"})
    (p,) = await tradier.list_positions()
    assert (p.quantity, p.qty_available, p.cost_basis, p.avg_entry_price) == (
        Decimal(-3),
        Decimal(-3),
        Decimal("-450.15"),
        Decimal("150.05"),
    )


async def test_tradier_balances_with_too_many_digits_are_refused(tradier: TradierBroker, mock: aioresponses) -> None:
    mock.get(tw.acct("/balances"), payload={"balances": {"total_equity": DIGITS_30, "total_cash": 1}})
    await refused(tradier.get_account(), "total_equity")


# -- malformed answers accountSync relies on the adapters to refuse (issue 12) ---------------------------------

# Each: the positions list on the wire, the field the refusal must name. Both brokers.
POSITION_ANSWER_LIES: dict[str, tuple[Callable[[], list[dict[str, Any]]], Callable[[], list[dict[str, Any]]], str]] = {
    "reported-twice": (
        lambda: [aw.position_json(symbol="AAPL"), aw.position_json(symbol="MSFT"), aw.position_json(symbol="AAPL")],
        lambda: [_tradier_position(symbol="AAPL"), _tradier_position(symbol="MSFT"), _tradier_position(symbol="AAPL")],
        "reported twice",
    ),
    "empty-symbol": (
        lambda: [aw.position_json(symbol="")],
        lambda: [_tradier_position(symbol="")],
        "positions[0].symbol",
    ),
    "nan-quantity": (
        lambda: [aw.position_json(qty="NaN", qty_available="NaN")],
        lambda: [_tradier_position(quantity="NaN")],
        "positions[0].q",
    ),
    "infinite-quantity": (
        lambda: [aw.position_json(qty="Infinity", qty_available="Infinity")],
        lambda: [_tradier_position(quantity="-Infinity")],
        "positions[0].q",
    ),
    "nan-cost": (
        lambda: [aw.position_json(cost_basis="NaN")],
        lambda: [_tradier_position(cost_basis="NaN")],
        "positions[0].cost_basis",
    ),
    "missing-quantity": (
        lambda: [{k: v for k, v in aw.position_json().items() if k != "qty"}],
        lambda: [{k: v for k, v in _tradier_position().items() if k != "quantity"}],
        "positions[0].q",
    ),
}


@pytest.mark.parametrize("lie", sorted(POSITION_ANSWER_LIES))
async def test_malformed_positions_are_refused_by_both_adapters(
    alpaca: AlpacaBroker, tradier: TradierBroker, mock: aioresponses, lie: str
) -> None:
    """Guards issue 12: the adapters alone refuse these (accountSync no longer checks them again)."""
    alpaca_rows, tradier_rows, field = POSITION_ANSWER_LIES[lie]
    mock.get(aw.url("/v2/positions"), payload=alpaca_rows())
    await refused(alpaca.list_positions(), field)
    mock.get(tw.acct("/positions"), payload={"positions": {"position": tradier_rows()}})
    mock.get(tw.acct("/orders"), payload={"orders": "null"})
    await refused(tradier.list_positions(), field)


@pytest.mark.parametrize("mark", ["current_price", "market_value", "unrealized_pl"])
async def test_alpaca_non_finite_mark_is_refused(alpaca: AlpacaBroker, mock: aioresponses, mark: str) -> None:
    """Guards issue 12: a NaN mark is refused by the adapter (Tradier sends no marks)."""
    mock.get(aw.url("/v2/positions"), payload=[aw.position_json(**{mark: "NaN"})])
    await refused(alpaca.list_positions(), f"positions[0].{mark}")


async def test_alpaca_option_with_a_non_occ_symbol_is_refused(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    """Guards issue 12: an option position must carry an OCC symbol (Tradier infers options from the OCC form)."""
    mock.get(aw.url("/v2/positions"), payload=[aw.position_json(symbol="AAPL_JAN_150_C", asset_class="us_option")])
    error = await refused(alpaca.list_positions(), "positions[0].symbol")
    assert "not an OCC option symbol" in str(error)


@pytest.mark.parametrize("value", ["NaN", "Infinity", None])
async def test_non_finite_or_missing_equity_is_refused_by_both_adapters(
    alpaca: AlpacaBroker, tradier: TradierBroker, mock: aioresponses, value: str | None
) -> None:
    """Guards issue 12: the balances accountSync snapshots are finite and present (adapters guarantee it)."""
    mock.get(aw.url("/v2/account"), payload={**aw.ACCOUNT_JSON, "equity": value})
    await refused(alpaca.get_account(), "equity")
    mock.get(tw.acct("/balances"), payload={"balances": {"total_equity": value, "total_cash": 1}})
    await refused(tradier.get_account(), "total_equity")


TRADIER_QUOTE_LIES: dict[str, tuple[dict[str, Any], str]] = {
    "negative-bid": ({"bid": -190.4}, "bid"),
    "negative-ask": ({"ask": -190.6}, "ask"),
    "negative-last": ({"last": -190.5}, "last"),
    "future-quote": ({"bid_date": 4_102_444_800_000}, ".at"),  # 2100-01-01
    "digits-bid": ({"bid": TOO_FINE}, "more digits"),
}


@pytest.mark.parametrize("lie", sorted(TRADIER_QUOTE_LIES))
async def test_tradier_quote_lies_are_refused(tradier: TradierBroker, mock: aioresponses, lie: str) -> None:
    over, field = TRADIER_QUOTE_LIES[lie]
    mock.get(tw.url("/v1/markets/quotes"), payload={"quotes": {"quote": tw.quote_json("AAPL", **over)}})
    await refused(tradier.get_quotes(["AAPL"]), field)


@pytest.mark.parametrize("path", ["/balances", "/positions", "/orders"])
async def test_tradier_html_where_json_belongs_is_refused_at_once(
    tradier: TradierBroker, mock: aioresponses, rec: Recorder, path: str
) -> None:
    html = "<html><h1>Oops</h1></html>"
    mock.get(tw.acct(path), status=200, body=html, content_type="text/html", repeat=True)
    if path == "/positions":
        mock.get(tw.acct("/orders"), payload={"orders": "null"})
    call = {"/balances": tradier.get_account, "/positions": tradier.list_positions}.get(path, tradier.list_orders)
    err = await refused(call(), "body")
    assert "HTML" in str(err)
    assert rec.sleeps == []


async def test_alpaca_json_number_with_too_many_digits_is_refused_before_a_float_rounds_it(
    alpaca: AlpacaBroker, mock: aioresponses
) -> None:
    """alpaca-py's models hold some numbers as float: a 25-digit JSON number would be rounded unseen."""
    order = json.dumps(aw.order_json(filled_qty="1", status="partially_filled")).replace(
        '"filled_avg_price": null', '"filled_avg_price": 150.123456789012345678901234'
    )
    mock.get(aw.url("/v2/orders/x1"), body=order, content_type="application/json")
    err = await refused(alpaca.get_order("x1"), "more digits")
    assert err.field == "body"


async def test_float_json_numbers_of_real_brokers_pass(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    snap = aw.stock_snapshot(0.30000000000000004, 1.1, 1.2345678901234567e-10)
    mock.get(aw.url("/v2/stocks/snapshots", aw.DATA), payload={"AAPL": snap})
    quote = (await alpaca.get_quotes(["AAPL"]))["AAPL"]
    assert quote.bid == Decimal("0.30000000000000004")


async def test_a_bare_json_number_with_too_many_digits_is_refused(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    """Guards the decoder: json's parse_float hook sees every number with a point; none is rounded."""
    body = json.dumps({**aw.ACCOUNT_JSON}).replace('"equity": ', '"equity_raw": 1.1234567890123456789012, "equity": ')
    assert "equity_raw" in body
    mock.get(aw.url("/v2/account"), body=body, content_type="application/json")
    error = await refused(alpaca.get_account(), "body")
    assert "1.1234567890123456789012 has more digits" in str(error)
