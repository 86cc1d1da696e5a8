"""The simulator's Tradier account events stream over plain aiohttp: session, subscribe, heartbeats,
exclusions, one connection per token, refusals."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from syncd.sim import Simulator
from tests.helpers import wait_for
from tests.simfixtures import http_fixture, sim_fixture

sim = sim_fixture(seed=21, accounts=2, positions_per_account=0, tradier_heartbeat_s=0.2)
http = http_fixture()


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


async def new_session(sim: Simulator, http: aiohttp.ClientSession, i: int = 0) -> str:
    async with http.post(f"{sim.url}/v1/accounts/events/session", headers=headers(sim.accounts[i].tradier_token)) as r:
        assert r.status == 200
        body = await r.json()
    assert body["stream"]["url"] == sim.tradier_stream_url
    sid: str = body["stream"]["sessionid"]
    return sid


async def frames(ws: aiohttp.ClientWebSocketResponse, n: int, *, skip_heartbeats: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        if skip_heartbeats and frame.get("event") == "heartbeat":
            continue
        out.append(frame)
    return out


async def test_session_needs_a_good_token(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}/v1/accounts/events/session", headers=headers("nope")) as r:
        assert r.status == 401 and await r.text() == "Invalid Access Token"
    sim.faults.fail_auth(0)
    async with http.post(f"{sim.url}/v1/accounts/events/session", headers=headers(sim.accounts[0].tradier_token)) as r:
        assert r.status == 401
    sim.faults.fail_auth(0, on=False)


async def test_subscribe_heartbeats_and_order_events(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sid = await new_session(sim, http)
    async with http.ws_connect(sim.tradier_stream_url) as ws:
        await ws.send_str(json.dumps({"events": ["order"], "sessionid": sid, "excludeAccounts": []}))
        (beat,) = await frames(ws, 1, skip_heartbeats=False)
        assert beat["event"] == "heartbeat" and beat["status"] == "active" and beat["timestamp"].endswith("Z")
        placed = sim.place_outside_order(0, "AAPL", "buy", 3)  # fills at once
        sim.place_outside_order(1, "AAPL", "buy", 1)  # another token's account: not on this stream
        new, fill = await frames(ws, 2)
    assert new["event"] == fill["event"] == "order" and new["id"] == fill["id"] == placed.tradier_id
    assert new["account"] == sim.accounts[0].tradier_account_id
    assert new["status"] == "open" and new["exec_quantity"] == 0.0 and new["remaining_quantity"] == 3.0
    assert fill["status"] == "filled" and fill["exec_quantity"] == 3.0 and fill["avg_fill_price"] > 0
    assert fill["last_fill_quantity"] == 3.0 and fill["last_fill_price"] == fill["avg_fill_price"]
    assert fill["remaining_quantity"] == 0.0 and fill["transaction_date"].endswith("Z")
    assert set(fill) >= {"type", "price", "stop_price", "create_date"}


async def test_a_session_opens_one_stream_and_bad_ones_are_closed(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sid = await new_session(sim, http)
    for payload in (
        {"events": ["order"], "sessionid": "not-a-session"},
        "not json",
    ):
        async with http.ws_connect(sim.tradier_stream_url) as ws:
            await ws.send_str(payload if isinstance(payload, str) else json.dumps(payload))
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code in (1003, 1008)
    async with http.ws_connect(sim.tradier_stream_url) as first:
        await first.send_str(json.dumps({"events": ["order"], "sessionid": sid}))
        await wait_for(lambda: sim.tradier_events.connected(0), what="subscribed")
        async with http.ws_connect(sim.tradier_stream_url) as again:  # the same session id again
            await again.send_str(json.dumps({"events": ["order"], "sessionid": sid}))
            msg = await again.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE and again.close_code == 1008
        # a new session for the token replaces the old connection: one at a time
        sid2 = await new_session(sim, http)
        async with http.ws_connect(sim.tradier_stream_url) as second:
            await second.send_str(json.dumps({"events": ["order"], "sessionid": sid2}))
            while (msg := await first.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
                pass  # heartbeats until the close
            assert msg.type == aiohttp.WSMsgType.CLOSE and first.close_code == 1008
            assert sim.tradier_events.connected() == 1


async def test_excluded_accounts_get_no_events_until_resubscribed(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sid = await new_session(sim, http)
    me = sim.accounts[0].tradier_account_id
    async with http.ws_connect(sim.tradier_stream_url) as ws:
        await ws.send_str(json.dumps({"events": ["order"], "sessionid": sid, "excludeAccounts": [me]}))
        await wait_for(lambda: sim.tradier_events.sessions_created and not sim.tradier_events.connected(0))
        sim.place_outside_order(0, "MSFT", "buy", 1)
        await ws.send_str(json.dumps({"events": ["order"], "sessionid": sid, "excludeAccounts": []}))
        await wait_for(lambda: sim.tradier_events.connected(0), what="the exclusion lifted")
        placed = sim.place_outside_order(0, "AAPL", "buy", 1)
        first, _fill = await frames(ws, 2)
    assert first["id"] == placed.tradier_id  # nothing of the MSFT order came
