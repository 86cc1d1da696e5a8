"""The simulator's Tradier dialect over raw HTTP: shapes, quirks, errors and faults."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from syncd.sim import SimAccount, Simulator, occ_symbol
from tests.simfixtures import http_fixture, sim_fixture

sim = sim_fixture(seed=11, accounts=2, positions_per_account=6)
http = http_fixture()


class Tradier:
    """A few lines of raw HTTP, just enough to look at Tradier's wire format."""

    def __init__(self, sim: Simulator, http: aiohttp.ClientSession, i: int = 0) -> None:
        self.acct: SimAccount = sim.accounts[i]
        self.url = sim.url
        self.http = http
        self.headers = {"Authorization": f"Bearer {self.acct.tradier_token}", "Accept": "application/json"}

    @property
    def base(self) -> str:
        return f"/v1/accounts/{self.acct.tradier_account_id}"

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path, headers=self.headers, params=params) as r:
            return r.status, await r.json(content_type=None)

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, Any]:
        async with self.http.post(self.url + path, headers=self.headers, data=form) as r:
            return r.status, await r.json(content_type=None)

    async def delete(self, path: str) -> tuple[int, Any]:
        async with self.http.delete(self.url + path, headers=self.headers) as r:
            return r.status, await r.json(content_type=None)

    async def order(self, tradier_id: int, tags: bool = True) -> dict[str, Any]:
        status, body = await self.get(f"{self.base}/orders/{tradier_id}", includeTags=str(tags).lower())
        assert status == 200, body
        order: dict[str, Any] = body["order"]
        return order


def _spread(acct: SimAccount) -> tuple[str, str]:
    positions = acct.positions.values()
    short = next(p for p in positions if p.qty < 0 and len(p.symbol) > 10 and "C" in p.symbol[-9:])
    long = next(p for p in positions if p.qty == -short.qty and p.symbol[:-8] == short.symbol[:-8])
    return long.symbol, short.symbol


async def test_profile_has_a_single_account_object(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Tradier quirk: a profile with one account has ``account`` as an object, not a list."""
    t = Tradier(sim, http)
    status, body = await t.get("/v1/user/profile")
    assert status == 200
    assert body["profile"]["account"]["account_number"] == t.acct.tradier_account_id


async def test_positions_list_single_object_and_null(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Tradier quirks: many positions are a list, one is an object, none is the string "null"."""
    t = Tradier(sim, http)
    _, body = await t.get(f"{t.base}/positions")
    items = body["positions"]["position"]
    assert isinstance(items, list) and len(items) == 6
    assert {p["symbol"]: Decimal(str(p["quantity"])) for p in items} == {s: p.qty for s, p in t.acct.positions.items()}
    first = items[0]
    assert (
        isinstance(first["id"], int) and isinstance(first["quantity"], float) and isinstance(first["cost_basis"], float)
    )
    assert first["date_acquired"].endswith("Z")
    short = next(p for p in items if p["quantity"] < 0)
    assert short["cost_basis"] < 0

    for symbol in list(t.acct.positions)[1:]:
        sim.remove_position(0, symbol)
    _, body = await t.get(f"{t.base}/positions")
    assert isinstance(body["positions"]["position"], dict)

    sim.remove_position(0, next(iter(t.acct.positions)))
    _, body = await t.get(f"{t.base}/positions")
    assert body == {"positions": "null"}


async def test_orders_null_then_single_then_list(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Tradier quirks: no orders is "null", one order is an object, two are a list."""
    t = Tradier(sim, http)
    _, body = await t.get(f"{t.base}/orders")
    assert body == {"orders": "null"}
    form = {"class": "equity", "symbol": "AAPL", "side": "buy", "quantity": "5", "type": "market", "duration": "day"}
    status, placed = await t.post(f"{t.base}/orders", {**form, "tag": "syncd-abc-1"})
    assert status == 200 and placed["order"]["status"] == "ok" and isinstance(placed["order"]["id"], int)
    _, body = await t.get(f"{t.base}/orders", includeTags="true")
    one = body["orders"]["order"]
    assert isinstance(one, dict) and one["tag"] == "syncd-abc-1" and one["status"] == "filled"
    assert one["class"] == "equity" and one["exec_quantity"] == 5.0 and one["avg_fill_price"] > 0
    await t.post(f"{t.base}/orders", form)
    _, body = await t.get(f"{t.base}/orders")
    many = body["orders"]["order"]
    assert isinstance(many, list) and len(many) == 2 and "tag" not in many[0]


async def test_option_order_closes_a_short_leg(sim: Simulator, http: aiohttp.ClientSession) -> None:
    t = Tradier(sim, http)
    _, short_leg = _spread(t.acct)
    held = t.acct.positions[short_leg].qty
    underlying = short_leg[:-15]
    form = {
        "class": "option",
        "symbol": underlying,
        "option_symbol": short_leg,
        "side": "buy_to_close",
        "quantity": "1",
        "type": "market",
        "duration": "day",
    }
    status, placed = await t.post(f"{t.base}/orders", form)
    assert status == 200, placed
    order = await t.order(placed["order"]["id"])
    assert order["class"] == "option" and order["option_symbol"] == short_leg and order["side"] == "buy_to_close"
    assert t.acct.positions[short_leg].qty == held + 1

    too_many = {**form, "quantity": str(-held + 5)}
    status, body = await t.post(f"{t.base}/orders", too_many)
    assert status == 400 and "insufficient qty" in body["errors"]["error"]


async def test_multileg_order_with_legs(sim: Simulator, http: aiohttp.ClientSession) -> None:
    t = Tradier(sim, http)
    long_leg, short_leg = _spread(t.acct)
    form = {
        "class": "multileg",
        "symbol": long_leg[:-15],
        "type": "debit",
        "price": "50.00",
        "duration": "day",
        "option_symbol[0]": long_leg,
        "side[0]": "buy_to_open",
        "quantity[0]": "2",
        "option_symbol[1]": short_leg,
        "side[1]": "sell_to_open",
        "quantity[1]": "2",
        "tag": "syncd-spread-1",
    }
    status, placed = await t.post(f"{t.base}/orders", form)
    assert status == 200, placed
    order = await t.order(placed["order"]["id"])
    assert order["class"] == "multileg" and order["type"] == "debit" and order["num_legs"] == 2
    assert order["strategy"] == "spread" and order["status"] == "filled" and order["tag"] == "syncd-spread-1"
    legs = order["leg"]
    assert [leg["option_symbol"] for leg in legs] == [long_leg, short_leg]
    assert [leg["side"] for leg in legs] == ["buy_to_open", "sell_to_open"]
    assert all(leg["class"] == "option" and leg["quantity"] == 2.0 for leg in legs)


async def test_late_fill_price_quirk(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Tradier quirk: the status says filled before avg_fill_price arrives (knob-controlled)."""
    t = Tradier(sim, http)
    sim.faults.tradier_late_fill_price = True
    form = {"class": "equity", "symbol": "KO", "side": "buy", "quantity": "3", "type": "market", "duration": "day"}
    _, placed = await t.post(f"{t.base}/orders", form)
    first = await t.order(placed["order"]["id"])
    assert first["status"] == "filled" and first["avg_fill_price"] == 0.0 and "last_fill_price" not in first
    second = await t.order(placed["order"]["id"])
    assert second["avg_fill_price"] > 0 and second["last_fill_price"] == second["avg_fill_price"]


async def test_cancel_a_resting_limit(sim: Simulator, http: aiohttp.ClientSession) -> None:
    t = Tradier(sim, http)
    form = {
        "class": "equity",
        "symbol": "MSFT",
        "side": "buy",
        "quantity": "1",
        "type": "limit",
        "price": "1.00",
        "duration": "gtc",
    }
    _, placed = await t.post(f"{t.base}/orders", form)
    oid = placed["order"]["id"]
    assert (await t.order(oid))["status"] == "open"
    status, body = await t.delete(f"{t.base}/orders/{oid}")
    assert status == 200 and body == {"order": {"id": oid, "status": "ok"}}
    assert (await t.order(oid))["status"] == "canceled"
    status, body = await t.delete(f"{t.base}/orders/{oid}")
    assert status == 400 and isinstance(body["errors"]["error"], str)


async def test_quotes_single_list_greeks_unmatched_and_post(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Tradier quirks: one quote is an object, unmatched symbols come apart, greeks on demand."""
    t = Tradier(sim, http)
    _, body = await t.get("/v1/markets/quotes", symbols="AAPL")
    quote = body["quotes"]["quote"]
    assert isinstance(quote, dict) and quote["type"] == "stock" and quote["bid"] < quote["ask"]
    assert "unmatched_symbols" not in body["quotes"]

    long_leg, _ = _spread(t.acct)
    _, body = await t.get("/v1/markets/quotes", symbols=f"SPY,{long_leg},NOPE", greeks="true")
    quotes = body["quotes"]["quote"]
    assert [q["symbol"] for q in quotes] == ["SPY", long_leg]
    assert quotes[0]["type"] == "etf" and "greeks" not in quotes[0]
    option = quotes[1]
    assert option["option_type"] == "call" and option["contract_size"] == 100 and option["underlying"] == long_leg[:-15]
    assert 0 < option["greeks"]["delta"] < 1 and option["greeks"]["mid_iv"] > 0
    assert body["quotes"]["unmatched_symbols"] == {"symbol": "NOPE"}

    status, body = await t.post("/v1/markets/quotes", {"symbols": "MSFT,QQQ"})
    assert status == 200 and [q["symbol"] for q in body["quotes"]["quote"]] == ["MSFT", "QQQ"]


async def test_clock_and_balances(sim: Simulator, http: aiohttp.ClientSession) -> None:
    t = Tradier(sim, http)
    _, body = await t.get("/v1/markets/clock")
    assert body["clock"]["state"] == "open" and isinstance(body["clock"]["timestamp"], int)
    sim.set_market_open(False)
    _, body = await t.get("/v1/markets/clock")
    assert body["clock"]["state"] == "closed"
    _, body = await t.get(f"{t.base}/balances")
    b = body["balances"]
    assert b["account_number"] == t.acct.tradier_account_id and b["total_cash"] == float(t.acct.cash)
    assert b["margin"]["option_buying_power"] > 0 and b["equity"] == 0


async def test_calendar_in_tradiers_shape_and_the_adapter_reads_it(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Issue 13: the simulator serves /v1/markets/calendar, so the demo logs no tradier_calendar_unavailable."""
    from structlog.testing import capture_logs

    t = Tradier(sim, http)
    status, body = await t.get("/v1/markets/calendar", month="02", year="2026")
    assert status == 200
    cal = body["calendar"]
    assert (cal["month"], cal["year"]) == (2, 2026) and len(cal["days"]["day"]) == 28
    monday, saturday = cal["days"]["day"][1], cal["days"]["day"][6]
    assert monday == {
        "date": "2026-02-02",
        "status": "open",
        "description": "Market is open",
        "premarket": {"start": "04:00", "end": "09:24"},
        "open": {"start": "09:30", "end": "16:00"},
        "postmarket": {"start": "16:00", "end": "20:00"},
    }
    assert saturday == {"date": "2026-02-07", "status": "closed", "description": "Market is closed"}
    async with http.get(f"{sim.url}/v1/markets/calendar", headers=t.headers, params={"month": "xx"}) as r:
        assert r.status == 400  # Tradier answers a bad parameter in plain text

    from syncd.brokers.factory import build_broker

    broker = build_broker(sim.account_settings(0, "tradier"), session=http, timeout_s=5)
    with capture_logs() as logs:
        clock = await broker.get_clock()
    assert not [e for e in logs if e["event"] == "tradier_calendar_unavailable"]
    assert clock.next_close > clock.timestamp and clock.next_open > clock.timestamp


async def test_auth_and_request_errors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Tradier quirk: a bad token is a plain-text 401 ``Invalid Access Token``; errors hold one string."""
    t = Tradier(sim, http)
    async with http.get(f"{sim.url}{t.base}/positions", headers={"Accept": "application/json"}) as r:
        assert r.status == 401 and await r.text() == "Invalid Access Token"
    async with http.get(f"{sim.url}{t.base}/positions", headers={"Authorization": t.headers["Authorization"]}) as r:
        assert r.status == 406
    other = sim.accounts[1].tradier_account_id
    async with http.get(f"{sim.url}/v1/accounts/{other}/positions", headers=t.headers) as r:
        assert r.status == 401
    sim.faults.fail_auth(0)
    async with http.get(f"{sim.url}/v1/user/profile", headers=t.headers) as r:
        assert r.status == 401
    sim.faults.fail_auth(0, on=False)

    form = {"class": "equity", "symbol": "AAPL", "side": "hold", "quantity": "1", "type": "market", "duration": "day"}
    status, body = await t.post(f"{t.base}/orders", form)
    assert status == 400 and body == {"errors": {"error": "Invalid side: hold"}}
    status, body = await t.post(f"{t.base}/orders", {**form, "side": "buy", "tag": "not valid!"})
    assert status == 400 and "tag" in body["errors"]["error"]
    status, body = await t.post(f"{t.base}/orders", {**form, "side": "buy", "quantity": "10000000"})
    assert status == 400 and body["errors"]["error"] == "insufficient buying power"
    sim.add_position(0, "AAPL", 10, "150")
    status, body = await t.post(f"{t.base}/orders", {**form, "side": "sell_short"})
    assert status == 400 and "long position" in body["errors"]["error"]
    status, body = await t.get(f"{t.base}/orders/999")
    assert status == 404


async def test_dropped_response_still_places_the_order(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """The crash between placing and recording: the client sees a disconnect, the order exists."""
    t = Tradier(sim, http)
    sim.faults.drop_next_response(f"{t.base}/orders", method="POST")
    form = {"class": "equity", "symbol": "T", "side": "buy", "quantity": "2", "type": "market", "duration": "day"}
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await t.post(f"{t.base}/orders", {**form, "tag": "syncd-crash-1"})
    _, body = await t.get(f"{t.base}/orders", includeTags="true")
    assert body["orders"]["order"]["tag"] == "syncd-crash-1"
    assert sim.requests(f"{t.base}/orders", method="POST") == 1


async def test_rate_limits_and_html_errors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    t = Tradier(sim, http)
    sim.faults.fail_next("/v1/markets/quotes", 502, body="html")
    async with http.get(f"{sim.url}/v1/markets/quotes", headers=t.headers, params={"symbols": "AAPL"}) as r:
        assert r.status == 502 and r.content_type == "text/html" and "<html>" in await r.text()
    sim.faults.rate_limit_every = 2
    statuses = []
    for _ in range(4):
        async with http.get(f"{sim.url}/v1/markets/clock", headers=t.headers) as r:
            statuses.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1 and "X-Ratelimit-Expiry" in r.headers
    assert statuses.count(429) == 2
    sim.faults.clear()
    sim.faults.enforce_rate_limits = True
    codes = []
    for _ in range(125):
        async with http.get(f"{sim.url}/v1/markets/clock", headers=t.headers) as r:
            codes.append(r.status)
    assert codes[:120] == [200] * 120 and codes[120:] == [429] * 5


async def test_orders_placed_elsewhere_show_up(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """An order placed by hand (or through Alpaca) is in the Tradier book too, with Tradier's words."""
    t = Tradier(sim, http)
    exp = sim.market.expirations()[3]
    put = occ_symbol("SPY", exp, "put", Decimal(500))
    order = sim.place_outside_order(0, put, "sell", 1)
    _, body = await t.get(f"{t.base}/orders")
    seen = body["orders"]["order"]
    assert seen["id"] == order.tradier_id and seen["side"] == "sell_to_open" and seen["status"] == "filled"
    _, body = await t.get(f"{t.base}/positions")
    assert any(p["symbol"] == put and p["quantity"] == -1.0 for p in body["positions"]["position"])
