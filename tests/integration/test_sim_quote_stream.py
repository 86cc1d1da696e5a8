"""The simulator's market-data websocket (/v2/{feed}, /v1beta1/{feed}) driven by alpaca-py's own clients,
and its protocol answers frame by frame."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import aiohttp
import msgpack
from alpaca.data.live import OptionDataStream, StockDataStream
from alpaca.data.models import Quote as AlpacaQuote

from syncd.sim import Simulator
from syncd.sim.market import occ_symbol
from tests.helpers import wait_for
from tests.simfixtures import http_fixture, sim_fixture

sim = sim_fixture(seed=3, accounts=2, positions_per_account=0)
http = http_fixture()


async def run_client(client: Any, until: Any, what: str) -> None:
    task = asyncio.create_task(client._run_forever())  # alpaca-py's run() owns a loop: drive its coroutine
    try:
        await wait_for(until, timeout=10, what=what)
    finally:
        await client.stop_ws()
        await client.close()
        task.cancel()  # its consume loop checks the stop flag only between 5 s receive timeouts
        await asyncio.gather(task, return_exceptions=True)


async def test_alpaca_py_stock_data_stream_gets_quotes(sim: Simulator) -> None:
    acct = sim.account(0)
    quotes: list[AlpacaQuote] = []

    async def on_quote(q: AlpacaQuote | dict[Any, Any]) -> None:
        assert isinstance(q, AlpacaQuote)  # parsed, not raw
        quotes.append(q)

    client = StockDataStream(acct.api_key, acct.api_secret, url_override=f"{sim.data_stream_url}/v2/iex")
    client.subscribe_quotes(on_quote, "AAPL")

    def moved() -> bool:
        if not quotes:
            return False
        if not any(q.bid_price == 101.0 for q in quotes):
            sim.set_price("AAPL", "101.00", "101.05")  # what /_sim/price does: a deterministic move
            return False
        return True

    await run_client(client, moved, "the pinned quote through alpaca-py")
    last = quotes[-1]
    assert (last.symbol, last.bid_price, last.ask_price) == ("AAPL", 101.0, 101.05)
    assert last.timestamp.tzinfo is not None


async def test_alpaca_py_option_data_stream_gets_quotes(sim: Simulator) -> None:
    acct = sim.account(1)
    symbol = occ_symbol("MSFT", sim.market.expirations()[2], "put", Decimal(380))
    quotes: list[AlpacaQuote] = []

    async def on_quote(q: AlpacaQuote | dict[Any, Any]) -> None:
        assert isinstance(q, AlpacaQuote)  # parsed, not raw
        quotes.append(q)

    client = OptionDataStream(acct.api_key, acct.api_secret, url_override=f"{sim.data_stream_url}/v1beta1/indicative")
    client.subscribe_quotes(on_quote, symbol)
    await run_client(client, lambda: quotes, "an option quote through alpaca-py")
    assert quotes[0].symbol == symbol and quotes[0].ask_price >= quotes[0].bid_price > 0


async def test_ticks_publish_only_changed_quotes(sim: Simulator, http: aiohttp.ClientSession) -> None:
    acct = sim.account(0)
    async with http.ws_connect(f"{sim.data_stream_url}/v2/sip") as ws:
        assert json.loads((await ws.receive()).data) == [{"T": "success", "msg": "connected"}]
        await ws.send_str(json.dumps({"action": "auth", "key": acct.api_key, "secret": acct.api_secret}))
        assert json.loads((await ws.receive()).data) == [{"T": "success", "msg": "authenticated"}]
        await ws.send_str(json.dumps({"action": "subscribe", "quotes": ["AAPL", "NOPE"], "trades": ["AAPL"]}))
        sub = json.loads((await ws.receive()).data)[0]
        assert sub["T"] == "subscription" and sub["quotes"] == ["AAPL", "NOPE"] and sub["trades"] == ["AAPL"]
        first = json.loads((await ws.receive()).data)
        assert [m["S"] for m in first] == ["AAPL"] and first[0]["T"] == "q"  # the current quote; NOPE unknown
        assert sim.quotes.publish() == 0  # nothing moved
        sim.set_price("AAPL", "150.00", "150.04")
        moved = json.loads((await ws.receive()).data)
        assert (moved[0]["bp"], moved[0]["ap"]) == (150.0, 150.04)
        assert moved[0]["t"].endswith("Z")
        await ws.send_str(json.dumps({"action": "unsubscribe", "quotes": ["AAPL"]}))
        assert json.loads((await ws.receive()).data)[0]["quotes"] == ["NOPE"]
        sim.set_price("AAPL", "151.00", "151.04")
        assert sim.quotes.subscribed() == {"NOPE"}


async def test_protocol_errors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    acct = sim.account(0)
    url = f"{sim.data_stream_url}/v2/iex"

    async def frames(ws: aiohttp.ClientWebSocketResponse) -> Any:
        return json.loads((await ws.receive()).data)

    async with http.ws_connect(url) as ws:
        await frames(ws)
        await ws.send_str(json.dumps({"action": "subscribe", "quotes": ["AAPL"]}))
        assert await frames(ws) == [{"T": "error", "code": 401, "msg": "not authenticated"}]
        await ws.send_str("{oops")
        assert await frames(ws) == [{"T": "error", "code": 400, "msg": "invalid syntax"}]
        await ws.send_str(json.dumps({"action": "auth", "key": acct.api_key, "secret": "wrong"}))
        assert await frames(ws) == [{"T": "error", "code": 402, "msg": "auth failed"}]
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)

    sim.quotes.symbol_limit = 1
    async with http.ws_connect(url) as ws:
        await frames(ws)
        await ws.send_str(json.dumps({"action": "auth", "key": acct.api_key, "secret": acct.api_secret}))
        await frames(ws)
        await ws.send_str(json.dumps({"action": "subscribe", "quotes": ["AAPL", "MSFT"]}))
        assert await frames(ws) == [{"T": "error", "code": 405, "msg": "symbol limit exceeded"}]
        async with http.ws_connect(url) as second:
            await frames(second)
            await second.send_str(json.dumps({"action": "auth", "key": acct.api_key, "secret": acct.api_secret}))
            assert await frames(second) == [{"T": "error", "code": 406, "msg": "connection limit exceeded"}]


async def test_msgpack_when_asked(sim: Simulator, http: aiohttp.ClientSession) -> None:
    acct = sim.account(0)
    headers = {"Content-Type": "application/msgpack"}
    async with http.ws_connect(f"{sim.data_stream_url}/v2/iex", headers=headers) as ws:
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.BINARY and msgpack.unpackb(msg.data) == [
            {"T": "success", "msg": "connected"}
        ]
        await ws.send_bytes(msgpack.packb({"action": "auth", "key": acct.api_key, "secret": acct.api_secret}))
        await ws.receive()
        await ws.send_bytes(msgpack.packb({"action": "subscribe", "quotes": ["AAPL"]}))
        await ws.receive()
        quote = msgpack.unpackb((await ws.receive()).data, timestamp=3)[0]
        assert quote["S"] == "AAPL" and quote["t"].tzinfo is not None
