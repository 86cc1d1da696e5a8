"""The simulator's Alpaca dialect over raw HTTP and websocket: what alpaca-py does not show.

Errors and their codes, order-list filters, the nested/flat multi-leg listing,
position closing, data limits, faults, and the trade_updates protocol frame by frame
(both auth styles, binary frames, one connection per account).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from syncd.sim import SimAccount, SimConfig, Simulator, start_simulator
from syncd.sim.market import asset_id
from tests.simfixtures import http_fixture, sim_fixture

sim = sim_fixture(seed=5, accounts=2, positions_per_account=6)
http = http_fixture()


def keys(acct: SimAccount) -> dict[str, str]:
    return {"APCA-API-KEY-ID": acct.api_key, "APCA-API-SECRET-KEY": acct.api_secret}


async def call(
    http: aiohttp.ClientSession, sim: Simulator, method: str, path: str, body: Any = None, i: int = 0, **params: str
) -> tuple[int, Any]:
    async with http.request(method, sim.url + path, headers=keys(sim.accounts[i]), json=body, params=params) as r:
        text = await r.text()
        return r.status, json.loads(text) if text else None


def market(symbol: str, qty: int, side: str = "buy", **extra: Any) -> dict[str, Any]:
    return {"symbol": symbol, "qty": str(qty), "side": side, "type": "market", "time_in_force": "day", **extra}


def limit(symbol: str, qty: int, price: str, side: str = "buy", **extra: Any) -> dict[str, Any]:
    return {**market(symbol, qty, side), "type": "limit", "limit_price": price, "time_in_force": "gtc", **extra}


async def test_authentication_errors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/v2/account") as r:
        assert r.status == 401 and await r.json() == {"code": 40110000, "message": "request is not authorized"}
    wrong = {**keys(sim.accounts[0]), "APCA-API-SECRET-KEY": "wrong"}
    async with http.get(f"{sim.url}/v2/account", headers=wrong) as r:
        assert r.status == 401
    sim.faults.fail_auth(0)
    status, body = await call(http, sim, "GET", "/v2/positions")
    assert status == 403 and body["code"] == 40310000
    status, _ = await call(http, sim, "GET", "/v2/positions", i=1)
    assert status == 200
    sim.faults.fail_auth(0, on=False)
    assert (await call(http, sim, "GET", "/v2/positions"))[0] == 200


async def test_order_validation_errors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}/v2/orders", headers=keys(sim.accounts[0]), data=b"{not json") as r:
        assert r.status == 400 and (await r.json())["code"] == 40010000
    bad = [
        {**market("AAPL", 1), "order_class": "bracket"},
        {**market("AAPL", 1), "qty": None},
        {**market("AAPL", 1), "qty": "ten"},
        market("NOSUCH", 1),
        {**market("AAPL", 1), "side": "hold"},
        {**market("AAPL", 1), "type": "stop"},
        {**market("AAPL", 1), "notional": "100"},
        {"order_class": "mleg", "qty": "1", "type": "market", "time_in_force": "day", "legs": []},
    ]
    for body in bad:
        status, err = await call(http, sim, "POST", "/v2/orders", body)
        assert status == 422 and err["code"] == 40010001 and err["message"], body
    assert sim.accounts[0].orders == []


async def test_order_list_filters(sim: Simulator, http: aiohttp.ClientSession) -> None:
    filled = (await call(http, sim, "POST", "/v2/orders", market("AAPL", 1)))[1]
    resting = (await call(http, sim, "POST", "/v2/orders", limit("MSFT", 1, "1.00")))[1]
    canceled = (await call(http, sim, "POST", "/v2/orders", limit("KO", 1, "1.00")))[1]
    assert (await call(http, sim, "DELETE", f"/v2/orders/{canceled['id']}"))[0] == 204

    async def ids(**params: str) -> list[str]:
        status, body = await call(http, sim, "GET", "/v2/orders", None, 0, **params)
        assert status == 200, body
        return [o["id"] for o in body]

    assert await ids() == [resting["id"]]
    assert await ids(status="closed") == [canceled["id"], filled["id"]]
    assert await ids(status="all", direction="asc") == [filled["id"], resting["id"], canceled["id"]]
    assert await ids(status="all", symbols="KO,AAPL") == [canceled["id"], filled["id"]]
    assert await ids(status="all", limit="1") == [canceled["id"]]
    assert await ids(status="all", after=resting["submitted_at"]) == [canceled["id"]]
    assert await ids(status="all", until=resting["submitted_at"]) == [resting["id"], filled["id"]]
    assert (await call(http, sim, "GET", "/v2/orders", status="bogus"))[0] == 422


async def test_mleg_listing_nested_or_flat(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Alpaca lists an mleg order's legs as orders of their own unless ``nested=true``."""
    positions = sim.accounts[0].positions
    short = next(s for s, p in positions.items() if p.qty < 0 and len(s) > 10 and s[-9] == "C")
    long = next(s for s, p in positions.items() if p.qty == -positions[short].qty and s[:-8] == short[:-8])
    held = positions[long].qty
    body = {
        "order_class": "mleg",
        "qty": str(held),
        "type": "limit",
        "limit_price": "-100",  # a credit nobody pays: it rests
        "time_in_force": "day",
        "legs": [
            {"symbol": long, "ratio_qty": "1", "side": "sell", "position_intent": "sell_to_close"},
            {"symbol": short, "ratio_qty": "1", "side": "buy", "position_intent": "buy_to_close"},
        ],
    }
    status, placed = await call(http, sim, "POST", "/v2/orders", body)
    assert status == 200 and placed["status"] == "new"
    assert placed["symbol"] == "" and placed["side"] == "" and placed["limit_price"] == "-100"
    assert [(leg["qty"], leg["type"], leg["position_intent"]) for leg in placed["legs"]] == [
        (str(held), "", "sell_to_close"),
        (str(held), "", "buy_to_close"),
    ]
    _, flat = await call(http, sim, "GET", "/v2/orders")
    assert [o["symbol"] for o in flat] == ["", long, short] and flat[0]["legs"] is None
    _, nested = await call(http, sim, "GET", "/v2/orders", nested="true")
    assert len(nested) == 1 and len(nested[0]["legs"]) == 2
    # the closing legs hold the whole position: nothing more is available to close
    _, pos = await call(http, sim, "GET", f"/v2/positions/{long}")
    assert pos["qty_available"] == "0"
    status, err = await call(
        http, sim, "POST", "/v2/orders", {**market(long, 1, "sell"), "position_intent": "sell_to_close"}
    )
    assert status == 403 and err["code"] == 40310000 and err["available"] == "0"


async def test_order_lookups_and_cancel_errors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    _, order = await call(http, sim, "POST", "/v2/orders", market("F", 2, client_order_id="cid-x"))
    assert (await call(http, sim, "GET", f"/v2/orders/{order['id']}"))[1]["client_order_id"] == "cid-x"
    status, err = await call(http, sim, "DELETE", f"/v2/orders/{order['id']}")
    assert status == 422 and err["code"] == 42210000
    status, err = await call(http, sim, "GET", "/v2/orders/00000000-0000-4000-8000-000000000000")
    assert status == 404 and err["code"] == 40410000
    status, _ = await call(http, sim, "GET", f"/v2/orders/{order['id']}", i=1)  # another account's order
    assert status == 404
    status, err = await call(http, sim, "GET", "/v2/orders:by_client_order_id", client_order_id="nope")
    assert status == 404 and err["code"] == 40410000


async def test_positions_get_and_close(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.add_position(0, "AAPL", 10, "150")
    status, pos = await call(http, sim, "GET", "/v2/positions/AAPL")
    assert status == 200 and pos["qty"] == "10" and pos["side"] == "long" and pos["avg_entry_price"] == "150"
    assert (await call(http, sim, "GET", f"/v2/positions/{asset_id('AAPL')}"))[1]["symbol"] == "AAPL"
    assert (await call(http, sim, "GET", "/v2/positions/ZZZ"))[0] == 404
    status, order = await call(http, sim, "DELETE", "/v2/positions/AAPL", percentage="50")
    assert status == 200 and order["qty"] == "5" and order["side"] == "sell"
    assert sim.accounts[0].positions["AAPL"].qty == 5
    status, err = await call(http, sim, "DELETE", "/v2/positions/AAPL", qty="6")
    assert status == 403 and err["code"] == 40310000
    assert (await call(http, sim, "DELETE", "/v2/positions/AAPL", qty="1", percentage="5"))[0] == 422
    status, err = await call(http, sim, "DELETE", "/v2/positions/ZZZ")
    assert status == 404 and err["message"] == "position not found: ZZZ"
    status, _ = await call(http, sim, "DELETE", "/v2/positions/AAPL")
    assert status == 200 and "AAPL" not in sim.accounts[0].positions


async def test_market_data_limits(sim: Simulator, http: aiohttp.ClientSession) -> None:
    assert (await call(http, sim, "GET", "/v2/stocks/snapshots"))[0] == 400
    _, snaps = await call(http, sim, "GET", "/v2/stocks/snapshots", symbols="AAPL,NOSUCH")
    assert list(snaps) == ["AAPL"]
    symbols = ",".join(f"AAPL2701{15:02d}C{100_000 + i * 1000:08d}" for i in range(101))
    status, err = await call(http, sim, "GET", "/v1beta1/options/snapshots", symbols=symbols)
    assert status == 400 and "100" in err["message"]
    _, quotes = await call(http, sim, "GET", "/v1beta1/options/quotes/latest", symbols=symbols.split(",", 1)[0])
    assert list(quotes["quotes"]) == [symbols.split(",", 1)[0]]


async def test_faults_over_alpaca(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.faults.rate_limit_every = 1
    sim.faults.retry_after_s = 3
    async with http.get(f"{sim.url}/v2/clock", headers=keys(sim.accounts[0])) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "3"
        assert int(r.headers["X-Ratelimit-Reset"]) > 0 and (await r.json())["code"] == 42910000
    sim.faults.clear()
    sim.faults.error_rate = 1.0
    status, err = await call(http, sim, "GET", "/v2/clock")
    assert status == 500 and err["code"] == 50010000
    sim.faults.clear()
    sim.faults.drop_next_response("/v2/orders", method="POST")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, sim, "POST", "/v2/orders", market("T", 1, client_order_id="crash-1"))
    status, order = await call(http, sim, "GET", "/v2/orders:by_client_order_id", client_order_id="crash-1")
    assert status == 200 and order["status"] == "filled"
    assert sim.requests("/v2/orders", method="POST") == 1 and sim.requests("/v2/clock") == 2


# -- the trade_updates stream, frame by frame -----------------------------------------


async def receive(ws: aiohttp.ClientWebSocketResponse) -> tuple[bool, dict[str, Any]]:
    msg = await asyncio.wait_for(ws.receive(), 10)
    assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
    return msg.type == aiohttp.WSMsgType.BINARY, json.loads(msg.data)


async def test_stream_binary_frames_and_new_auth_style(sim: Simulator, http: aiohttp.ClientSession) -> None:
    a = sim.accounts[0]
    async with http.ws_connect(sim.stream_url) as ws:
        await ws.send_bytes(json.dumps({"action": "auth", "key": a.api_key, "secret": a.api_secret}).encode())
        binary, reply = await receive(ws)
        assert binary and reply == {
            "stream": "authorization",
            "data": {"action": "authenticate", "status": "authorized"},
        }
        await ws.send_bytes(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}).encode())
        assert (await receive(ws))[1] == {"stream": "listening", "data": {"streams": ["trade_updates"]}}
        order = sim.place_outside_order(0, "PFE", "buy", 3)
        _, new = await receive(ws)
        _, fill = await receive(ws)
        assert new["stream"] == "trade_updates" and new["data"]["event"] == "new" and "price" not in new["data"]
        data = fill["data"]
        assert data["event"] == "fill" and data["order"]["id"] == order.id and data["qty"] == "3"
        assert data["position_qty"] == str(sim.accounts[0].positions["PFE"].qty) and data["execution_id"]
        assert data["timestamp"].endswith("Z") and float(data["price"]) > 0


async def test_stream_refusals(sim: Simulator, http: aiohttp.ClientSession) -> None:
    a = sim.accounts[0]
    auth = {"action": "authenticate", "data": {"key_id": a.api_key, "secret_key": "wrong"}}
    async with http.ws_connect(sim.stream_url) as ws:
        await ws.send_str(json.dumps(auth))
        binary, reply = await receive(ws)
        assert not binary and reply["data"]["status"] == "unauthorized"
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    async with http.ws_connect(sim.stream_url) as ws:
        await ws.send_str(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        assert (await receive(ws))[1]["data"]["status"] == "unauthorized"
    sim.faults.fail_auth(0)
    async with http.ws_connect(sim.stream_url) as ws:
        await ws.send_str(json.dumps({"action": "auth", "key": a.api_key, "secret": a.api_secret}))
        assert (await receive(ws))[1]["data"]["status"] == "unauthorized"


async def test_one_stream_per_account(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """Alpaca allows one trade_updates connection per account: a second one is refused."""
    a = sim.accounts[0]
    auth = json.dumps({"action": "auth", "key": a.api_key, "secret": a.api_secret})
    async with http.ws_connect(sim.stream_url) as first:
        await first.send_str(auth)
        assert (await receive(first))[1]["data"]["status"] == "authorized"
        async with http.ws_connect(sim.stream_url) as second:
            await second.send_str(auth)
            reply = (await receive(second))[1]["data"]
            assert reply == {"action": "authenticate", "status": "unauthorized", "message": "connection limit exceeded"}
        assert sim.streams.connected(0) == 1
        assert await sim.disconnect_streams(0) == 1
        assert (await first.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_stream_conflict_replace() -> None:
    sim = await start_simulator(SimConfig(seed=5, accounts=1, positions_per_account=0, stream_conflict="replace"))
    a = sim.accounts[0]
    auth = json.dumps({"action": "auth", "key": a.api_key, "secret": a.api_secret})
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(sim.stream_url) as first:
            await first.send_str(auth)
            await receive(first)
            async with http.ws_connect(sim.stream_url) as second:
                await second.send_str(auth)
                assert (await receive(second))[1]["data"]["status"] == "authorized"
                assert (await first.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    finally:
        await sim.stop()
