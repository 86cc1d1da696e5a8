"""``/_sim``: driving a simulator from another process (as acceptance tests and the demo do)."""

from __future__ import annotations

from typing import Any

import aiohttp

from syncd.sim import Simulator
from tests.simfixtures import http_fixture, sim_fixture

sim = sim_fixture(seed=9, accounts=3, positions_per_account=4)
http = http_fixture()


async def admin(
    http: aiohttp.ClientSession, sim: Simulator, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, f"{sim.url}/_sim/{path}", json=body) as r:
        return r.status, await r.json()


async def test_state_accounts_and_counters(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, state = await admin(http, sim, "GET", "state")
    assert status == 200 and state["accounts"] == 3 and state["market_open"] is True and state["url"] == sim.url
    _, accounts = await admin(http, sim, "GET", "accounts?offset=1&limit=5")
    assert [a["index"] for a in accounts] == [1, 2]
    assert accounts[0]["alpaca_key"] == sim.accounts[1].api_key
    assert accounts[0]["tradier_token"] == sim.accounts[1].tradier_token
    _, detail = await admin(http, sim, "GET", "accounts/0")
    assert len(detail["positions"]) == 4 and detail["orders"] == [] and float(detail["buying_power"]) > 0
    _, requests = await admin(http, sim, "GET", "requests")
    assert requests == {"total": 0, "by_path": {}}  # admin calls are not counted


async def test_prices_market_and_time(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, q = await admin(http, sim, "POST", "price", {"symbol": "AAPL", "bid": "100.00", "ask": "100.10"})
    assert status == 200 and q == {"symbol": "AAPL", "bid": "100", "ask": "100.1"}
    _, version = await admin(http, sim, "POST", "tick", {"n": 3})
    _, q = await admin(http, sim, "GET", "quote?symbol=AAPL")
    assert q["bid"] == "100"  # pinned
    await admin(http, sim, "POST", "unpin", {"symbol": "AAPL"})
    _, state = await admin(http, sim, "POST", "market", {"open": False})
    assert state["market_open"] is False
    _, later = await admin(http, sim, "POST", "advance", {"seconds": 30})
    assert later["market_version"] > version["market_version"]
    assert (await admin(http, sim, "GET", "quote?symbol=NOPE"))[0] == 404


async def test_outside_orders_fills_and_cancels(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await admin(http, sim, "POST", "faults", {"fill_on_submit": False})
    status, order = await admin(http, sim, "POST", "orders", {"account": 0, "symbol": "F", "side": "buy", "qty": 10})
    assert status == 200 and order["status"] == "new" and order["source"] == "outside"
    _, filled = await admin(http, sim, "POST", "fill", {"order_id": order["id"], "qty": "4", "price": "12.5"})
    assert filled["status"] == "partially_filled" and filled["filled_avg_price"] == "12.5"
    _, canceled = await admin(http, sim, "POST", "cancel", {"order_id": order["tradier_id"]})
    assert canceled["status"] == "canceled"
    status, err = await admin(http, sim, "POST", "cancel", {"order_id": order["id"]})
    assert status == 400 and err["kind"] == "not_cancelable"
    assert (await admin(http, sim, "GET", "orders/nope"))[0] == 404
    status, err = await admin(http, sim, "POST", "orders", {"account": 0, "symbol": "F", "side": "buy", "qty": 1e9})
    assert status == 400 and err["kind"] == "buying_power"
    _, events = await admin(http, sim, "GET", "events?limit=10")
    assert [e["event"] for e in events] == ["new", "partial_fill", "canceled"]


async def test_positions_and_cash(sim: Simulator, http: aiohttp.ClientSession) -> None:
    status, pos = await admin(
        http, sim, "POST", "positions", {"account": "sim-1", "symbol": "KO", "qty": -3, "avg": 60}
    )
    assert status == 200 and pos == {"symbol": "KO", "qty": "-3", "avg_entry_price": "60"}
    assert sim.accounts[1].positions["KO"].qty == -3
    await admin(http, sim, "POST", "positions/remove", {"account": 1, "symbol": "KO"})
    assert "KO" not in sim.accounts[1].positions
    assert (await admin(http, sim, "POST", "positions/remove", {"account": 1, "symbol": "KO"}))[0] == 404
    await admin(http, sim, "POST", "cash", {"account": 2, "cash": "1234.5"})
    assert str(sim.accounts[2].cash) == "1234.5"
    assert (await admin(http, sim, "POST", "positions", {"account": 0, "symbol": "KO"}))[0] == 400


async def test_fault_knobs(sim: Simulator, http: aiohttp.ClientSession) -> None:
    body = {"latency_s": 0.01, "rate_limit_every": 5, "error_body": "html", "tradier_late_fill_price": True}
    _, knobs = await admin(http, sim, "POST", "faults", body)
    assert knobs["latency_s"] == 0.01 and knobs["rate_limit_every"] == 5 and knobs["tradier_late_fill_price"] is True
    assert (await admin(http, sim, "POST", "faults", {"error_body": "xml"}))[0] == 400
    await admin(http, sim, "POST", "fail_auth", {"account": 0})
    assert sim.faults.auth_failed == {0}
    await admin(http, sim, "POST", "drop_next", {"path_prefix": "/v2/orders", "method": "POST"})
    await admin(http, sim, "POST", "fail_next", {"path_prefix": "/v2/account", "status": 503})
    _, cleared = await admin(http, sim, "POST", "faults/clear")
    assert cleared["latency_s"] == 0 and cleared["auth_failed"] == [] and cleared["rate_limit_every"] == 0
    _, closed = await admin(http, sim, "POST", "streams/disconnect", {})
    assert closed == {"closed": 0}


async def test_bad_admin_bodies(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}/_sim/tick", data=b"{nope") as r:
        assert r.status == 400 and "JSON" in (await r.json())["error"]
    assert (await admin(http, sim, "POST", "tick", [1, 2]))[0] == 400
    status, err = await admin(http, sim, "POST", "advance", {})
    assert status == 400 and err == {"error": "seconds is required"}
    assert (await admin(http, sim, "POST", "market", {"open": "maybe"}))[0] == 400
    status, err = await admin(http, sim, "GET", "accounts/99")
    assert status == 404 and "no simulated account 99" in err["error"]
