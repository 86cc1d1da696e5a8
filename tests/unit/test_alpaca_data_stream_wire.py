"""Alpaca's market-data websocket, frame by frame (syncd.brokers.alpaca_data_stream).

A scripted websocket server on loopback sends exactly the frames of each case (Alpaca's documented
messages, and broken ones); the client under test is the one the quote watcher runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from aiohttp import WSMsgType, web

from syncd.brokers.alpaca_data_stream import AlpacaQuoteStream, endpoint, parse_quote
from syncd.brokers.base import BadBrokerData
from syncd.brokers.types import Quote
from tests.helpers import wait_for

Script = Callable[[web.WebSocketResponse, "Server"], Awaitable[None]]

CONNECTED = [{"T": "success", "msg": "connected"}]
AUTHENTICATED = [{"T": "success", "msg": "authenticated"}]
QUOTE = {"T": "q", "S": "AAPL", "bx": "V", "bp": 187.1, "bs": 2, "ax": "V", "ap": 187.2, "as": 3,
         "t": "2024-03-01T15:04:05.123456789Z", "c": ["R"], "z": "C"}  # fmt: skip


class Server:
    """One scripted connection after another; records what clients sent."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.received: list[Any] = []
        self.connections = 0
        self.headers: list[dict[str, str]] = []
        self.url = ""

    async def recv(self, ws: web.WebSocketResponse) -> Any:
        msg = await ws.receive()
        if msg.type == WSMsgType.BINARY:
            data = msgpack.unpackb(msg.data)
        elif msg.type == WSMsgType.TEXT:
            data = json.loads(msg.data)
        else:
            raise ConnectionError("closed")
        self.received.append(data)
        return data

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.headers.append(dict(request.headers))
        script = self.scripts[min(self.connections, len(self.scripts) - 1)]
        self.connections += 1
        with suppress(ConnectionError):
            await script(ws, self)
        if not ws.closed:
            await ws.close()
        return ws


@asynccontextmanager
async def serving(*scripts: Script) -> AsyncIterator[Server]:
    server = Server(list(scripts))
    app = web.Application()
    app.router.add_get("/v2/iex", server.handle)
    app.router.add_get("/v1beta1/indicative", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"ws://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


def client(server: Server, kind: str = "stocks", **kw: Any) -> AlpacaQuoteStream:
    feed = "iex" if kind == "stocks" else "indicative"
    return AlpacaQuoteStream(
        account="acct",
        kind=kind,  # type: ignore[arg-type]
        url=endpoint(server.url, kind, feed),  # type: ignore[arg-type]
        key="KEY",
        secret="SECRET",
        symbols_limit=kw.pop("symbols_limit", 30),
        timeout_s=2.0,
        backoff_s=(0.01, 0.02),
    )


async def send(ws: web.WebSocketResponse, messages: Any) -> None:
    await ws.send_str(json.dumps(messages))


async def handshake(ws: web.WebSocketResponse, server: Server) -> None:
    await send(ws, CONNECTED)
    auth = await server.recv(ws)
    assert auth == {"action": "auth", "key": "KEY", "secret": "SECRET"}
    await send(ws, AUTHENTICATED)


async def hold(ws: web.WebSocketResponse, server: Server) -> None:
    """Answer subscriptions until the client goes."""
    while True:
        msg = await server.recv(ws)
        if msg.get("action") in ("subscribe", "unsubscribe"):
            await send(ws, [{"T": "subscription", "trades": [], "quotes": msg.get("quotes", []), "bars": []}])


@asynccontextmanager
async def run(stream: AlpacaQuoteStream) -> AsyncIterator[tuple[list[Quote], list[tuple[str, str | None]]]]:
    quotes: list[Quote] = []
    states: list[tuple[str, str | None]] = []
    task = asyncio.create_task(stream.run(quotes.append, lambda s, e: states.append((s, e))))
    try:
        yield quotes, states
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_endpoints() -> None:
    assert endpoint(None, "stocks", "iex") == "wss://stream.data.alpaca.markets/v2/iex"
    assert endpoint("ws://h:1/", "options", "opra") == "ws://h:1/v1beta1/opra"


def test_parse_quote_json_with_nanoseconds() -> None:
    msg = json.loads(json.dumps(QUOTE), parse_float=Decimal)
    q = parse_quote(msg)
    assert (q.symbol, q.bid, q.ask, q.bid_size, q.ask_size) == (
        "AAPL",
        Decimal("187.1"),
        Decimal("187.2"),
        Decimal(2),
        Decimal(3),
    )
    assert q.at == dt.datetime(2024, 3, 1, 15, 4, 5, 123456, tzinfo=dt.UTC)


def test_parse_quote_msgpack_timestamp_and_float_prices() -> None:
    at = dt.datetime(2024, 3, 1, 15, 4, 5, 500000, tzinfo=dt.UTC)
    raw = msgpack.unpackb(
        msgpack.packb({**QUOTE, "bp": 0.1, "ap": 0.15, "t": msgpack.Timestamp.from_datetime(at)}), timestamp=0
    )
    q = parse_quote(raw)
    assert (q.bid, q.ask, q.at) == (Decimal("0.1"), Decimal("0.15"), at)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"S": None}, "quote.S"),
        ({"S": ""}, "quote.S"),
        ({"bp": -1.0}, "quote.AAPL.bid"),
        ({"ap": "abc"}, "quote.AAPL"),
        ({"bp": True}, "quote.AAPL"),
        ({"t": "yesterday"}, "quote.AAPL"),
        ({"t": 12}, "quote.AAPL"),
        ({"bs": -3}, "quote.AAPL.bid_size"),
    ],
)
def test_parse_quote_refuses_what_cannot_be_true(change: dict[str, Any], field: str) -> None:
    with pytest.raises(BadBrokerData) as info:
        parse_quote({**QUOTE, **change})
    assert info.value.field == field


async def test_auth_subscribe_and_quotes() -> None:
    async def script(ws: web.WebSocketResponse, server: Server) -> None:
        await handshake(ws, server)
        sub = await server.recv(ws)
        assert sub == {"action": "subscribe", "quotes": ["AAPL", "MSFT"]}
        await send(ws, [{"T": "subscription", "trades": [], "quotes": ["AAPL", "MSFT"], "bars": []}])
        await send(ws, [QUOTE, {**QUOTE, "S": "MSFT", "bp": 400.5, "ap": 400.6}])
        await hold(ws, server)

    async with serving(script) as server:
        stream = client(server)
        stream.want(["MSFT", "AAPL", "AAPL"])
        async with run(stream) as (quotes, states):
            await wait_for(lambda: len(quotes) == 2, what="two quotes")
            assert [q.symbol for q in quotes] == ["AAPL", "MSFT"]
            assert stream.subscribed == {"AAPL", "MSFT"}
            assert states[-1] == ("connected", None)
            stream.want(["MSFT", "NVDA"])  # the wanted set changes while connected
            await wait_for(lambda: stream.subscribed == {"NVDA"}, what="the change sent")
            assert {"action": "unsubscribe", "quotes": ["AAPL"]} in server.received
            assert {"action": "subscribe", "quotes": ["NVDA"]} in server.received
        assert server.headers[0].get("Content-Type") is None  # stocks: JSON


async def test_bad_frames_are_skipped_not_fatal() -> None:
    async def script(ws: web.WebSocketResponse, server: Server) -> None:
        await handshake(ws, server)
        await server.recv(ws)
        await ws.send_str("{not json")
        await ws.send_str('"a string"')
        await send(ws, [{**QUOTE, "bp": -5}, 7, {**QUOTE, "S": None}, {"T": "t", "S": "AAPL", "p": 1}])
        await ws.send_bytes(b"\xc1")  # not a text frame of JSON
        await send(ws, [QUOTE])
        await hold(ws, server)

    async with serving(script) as server:
        stream = client(server)
        stream.want(["AAPL"])
        async with run(stream) as (quotes, _states):
            await wait_for(lambda: len(quotes) == 1, what="the one good quote")
            assert stream.bad >= 5 and stream.reconnects == 0 and stream.state == "connected"


@pytest.mark.parametrize(
    ("code", "message", "state"),
    [(402, "auth failed", "auth_failed"), (409, "insufficient subscription", "no_data_plan")],
)
async def test_refusals_are_named_final_states(code: int, message: str, state: str) -> None:
    async def script(ws: web.WebSocketResponse, server: Server) -> None:
        await send(ws, CONNECTED)
        await server.recv(ws)
        await send(ws, [{"T": "error", "code": code, "msg": message}])

    async with serving(script) as server:
        stream = client(server)
        stream.want(["AAPL"])
        result = await asyncio.wait_for(stream.run(lambda q: None), 5)
        assert result == state and stream.state == state and server.connections == 1
        assert "SECRET" not in (stream.error or "")


async def test_connection_limit_and_drops_reconnect() -> None:
    async def limited(ws: web.WebSocketResponse, server: Server) -> None:
        await send(ws, CONNECTED)
        await server.recv(ws)
        await send(ws, [{"T": "error", "code": 406, "msg": "connection limit exceeded"}])

    async def drops(ws: web.WebSocketResponse, server: Server) -> None:
        await handshake(ws, server)
        await server.recv(ws)
        await send(ws, [QUOTE])
        await ws.close()

    async def stays(ws: web.WebSocketResponse, server: Server) -> None:
        await handshake(ws, server)
        sub = await server.recv(ws)
        assert sub == {"action": "subscribe", "quotes": ["AAPL"]}  # the whole set again on a new connection
        await send(ws, [{"T": "subscription", "quotes": ["AAPL"]}, QUOTE])
        await hold(ws, server)

    async with serving(limited, drops, stays) as server:
        stream = client(server)
        stream.want(["AAPL"])
        async with run(stream) as (quotes, states):
            await wait_for(lambda: len(quotes) == 2 and stream.state == "connected", what="back after two failures")
            assert server.connections == 3 and stream.reconnects == 2
            assert any(s == "reconnecting" and e and "406" in e for s, e in states)


async def test_symbol_limit_from_config_and_from_the_server() -> None:
    async def script(ws: web.WebSocketResponse, server: Server) -> None:
        await handshake(ws, server)
        first = await server.recv(ws)
        assert first == {"action": "subscribe", "quotes": ["A", "B", "C"]}  # the configured limit: 3 of 4
        await send(
            ws,
            [{"T": "subscription", "quotes": ["A", "B"]}, {"T": "error", "code": 405, "msg": "symbol limit exceeded"}],
        )
        await hold(ws, server)

    async with serving(script) as server:
        stream = client(server, symbols_limit=3)
        stream.want(["D", "C", "B", "A"])
        async with run(stream) as (_quotes, _states):
            await wait_for(lambda: stream.symbols_limit == 2, what="the limit lowered to what the server took")
            assert stream.wanted == ["A", "B"]
            await wait_for(lambda: {"action": "unsubscribe", "quotes": ["C"]} in server.received, what="C dropped")


async def test_nothing_wanted_means_no_connection() -> None:
    async with serving(hold) as server:
        stream = client(server)
        async with run(stream) as (_quotes, _states):
            assert stream.state == "idle" and server.connections == 0
            stream.want(["AAPL"])
            await wait_for(lambda: server.connections == 1, what="connects once something is wanted")


async def test_options_speak_msgpack() -> None:
    at = dt.datetime(2024, 3, 1, 15, 4, 5, tzinfo=dt.UTC)
    symbol = "AAPL240315C00172500"

    async def script(ws: web.WebSocketResponse, server: Server) -> None:
        await ws.send_bytes(msgpack.packb(CONNECTED))
        auth = await server.recv(ws)
        assert auth["action"] == "auth"
        await ws.send_bytes(msgpack.packb(AUTHENTICATED))
        sub = await server.recv(ws)
        assert sub == {"action": "subscribe", "quotes": [symbol]}
        quote = {"T": "q", "S": symbol, "t": msgpack.Timestamp.from_datetime(at), "bx": "C", "bp": 1.5, "bs": 3,
                 "ax": "C", "ap": 1.55, "as": 9, "c": "A"}  # fmt: skip
        await ws.send_bytes(msgpack.packb([quote]))
        await hold(ws, server)

    async with serving(script) as server:
        stream = client(server, "options")
        stream.want([symbol])
        async with run(stream) as (quotes, _states):
            await wait_for(lambda: quotes, what="an option quote")
            assert (quotes[0].bid, quotes[0].ask, quotes[0].at) == (Decimal("1.5"), Decimal("1.55"), at)
        assert server.headers[0].get("Content-Type") == "application/msgpack"
