"""Tradier's market events stream, frame by frame (syncd.brokers.tradier_market_stream).

A scripted server on loopback answers ``POST /v1/markets/events/session`` and the websocket
exactly as each case needs (Tradier's documented shapes, and broken ones).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from syncd.brokers.base import BadBrokerData
from syncd.brokers.tradier_market_stream import MARKET_STREAM_URL, TradierQuoteStream, parse_quote
from syncd.brokers.types import Quote
from tests.helpers import wait_for

Script = Callable[[web.WebSocketResponse, "Server"], Awaitable[None]]
QUOTE = {"type": "quote", "symbol": "SPY", "bid": 281.84, "bidsz": 60, "bidexch": "M", "biddate": "1557757189000",
         "ask": 281.85, "asksz": 6, "askexch": "Z", "askdate": "1557757190000"}  # fmt: skip


class Server:
    def __init__(self, scripts: list[Script], sessions: list[tuple[int, Any]] | None = None) -> None:
        self.scripts = scripts
        self.session_answers = sessions or []
        self.session_requests: list[dict[str, str]] = []
        self.issued: list[str] = []
        self.payloads: list[Any] = []
        self.connections = 0
        self.base = ""

    async def session(self, request: web.Request) -> web.Response:
        self.session_requests.append(dict(request.headers))
        n = len(self.session_requests) - 1
        if n < len(self.session_answers):
            status, body = self.session_answers[n]
            return web.Response(status=status, text=body if isinstance(body, str) else json.dumps(body))
        sessionid = f"s{n}"
        self.issued.append(sessionid)
        return web.json_response(
            {"stream": {"url": "https://stream.tradier.com/v1/markets/events", "sessionid": sessionid}}
        )

    async def payload(self, ws: web.WebSocketResponse) -> Any:
        msg = await ws.receive()
        if msg.type != WSMsgType.TEXT:
            raise ConnectionError("closed")
        data = json.loads(msg.data)
        self.payloads.append(data)
        return data

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        script = self.scripts[min(self.connections, len(self.scripts) - 1)]
        self.connections += 1
        with suppress(ConnectionError):
            await script(ws, self)
        if not ws.closed:
            await ws.close()
        return ws


@asynccontextmanager
async def serving(*scripts: Script, sessions: list[tuple[int, Any]] | None = None) -> AsyncIterator[Server]:
    server = Server(list(scripts), sessions)
    app = web.Application()
    app.router.add_post("/v1/markets/events/session", server.session)
    app.router.add_get("/v1/markets/events", server.ws)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


def client(server: Server, **kw: Any) -> TradierQuoteStream:
    return TradierQuoteStream(
        account="acct",
        base_url=f"http://{server.base}",
        url=f"ws://{server.base}/v1/markets/events",
        token="TOKEN-SECRET",
        symbols_limit=kw.pop("symbols_limit", 100),
        timeout_s=2.0,
        backoff_s=(0.01, 0.02),
    )


@asynccontextmanager
async def run(stream: TradierQuoteStream) -> AsyncIterator[list[Quote]]:
    quotes: list[Quote] = []
    task = asyncio.create_task(stream.run(quotes.append))
    try:
        yield quotes
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def hold(ws: web.WebSocketResponse, server: Server) -> None:
    while True:
        await server.payload(ws)


def test_defaults_and_parse() -> None:
    assert MARKET_STREAM_URL == "wss://ws.tradier.com/v1/markets/events"
    q = parse_quote(json.loads(json.dumps(QUOTE), parse_float=Decimal))
    assert (q.symbol, q.bid, q.ask, q.bid_size, q.ask_size) == (
        "SPY",
        Decimal("281.84"),
        Decimal("281.85"),
        Decimal(60),
        Decimal(6),
    )
    assert q.at == dt.datetime(2019, 5, 13, 14, 19, 50, tzinfo=dt.UTC)  # the later of biddate and askdate


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"symbol": None}, "quote.symbol"),
        ({"bid": -1}, "quote.SPY.bid"),
        ({"ask": "x"}, "quote.SPY"),
        ({"biddate": "soon"}, "quote.SPY"),
        ({"asksz": -2}, "quote.SPY.ask_size"),
    ],
)
def test_parse_refuses_what_cannot_be_true(change: dict[str, Any], field: str) -> None:
    with pytest.raises(BadBrokerData) as info:
        parse_quote({**QUOTE, **change})
    assert info.value.field == field


async def test_session_payload_quotes_and_new_payloads() -> None:
    async def script(ws: web.WebSocketResponse, server: Server) -> None:
        first = await server.payload(ws)
        assert first == {"symbols": ["QQQ", "SPY"], "sessionid": "s0", "filter": ["quote"], "linebreak": True,
                         "validOnly": True}  # fmt: skip
        await ws.send_str(json.dumps(QUOTE) + "\n" + json.dumps({**QUOTE, "symbol": "QQQ"}) + "\n")
        await ws.send_str(json.dumps({"type": "trade", "symbol": "SPY", "price": "281.8"}))  # not a quote: ignored
        await hold(ws, server)

    async with serving(script) as server:
        stream = client(server)
        stream.want(["SPY", "QQQ"])
        async with run(stream) as quotes:
            await wait_for(lambda: len(quotes) == 2, what="two quotes from one frame")
            headers = server.session_requests[0]
            assert headers["Authorization"] == "Bearer TOKEN-SECRET" and headers["Accept"] == "application/json"
            stream.want(["SPY"])
            await wait_for(lambda: len(server.payloads) == 2, what="a new payload")
            assert server.payloads[1]["symbols"] == ["SPY"] and server.payloads[1]["sessionid"] == "s0"
            assert stream.subscribed == {"SPY"} and stream.sessions == 1


async def test_bad_lines_are_skipped() -> None:
    async def script(ws: web.WebSocketResponse, server: Server) -> None:
        await server.payload(ws)
        lines = [
            "{broken",
            "[1, 2]",
            json.dumps({**QUOTE, "bid": -3}),
            json.dumps({**QUOTE, "symbol": 5}),
            json.dumps(QUOTE),
        ]
        await ws.send_str("\n".join(lines))
        await hold(ws, server)

    async with serving(script) as server:
        stream = client(server)
        stream.want(["SPY"])
        async with run(stream) as quotes:
            await wait_for(lambda: quotes, what="the good quote")
            assert stream.bad == 4 and stream.reconnects == 0


async def test_an_error_or_a_drop_reconnects_with_a_fresh_session() -> None:
    async def refuses(ws: web.WebSocketResponse, server: Server) -> None:
        await server.payload(ws)
        await ws.send_str(json.dumps({"error": "invalid session"}))
        await hold(ws, server)

    async def drops(ws: web.WebSocketResponse, server: Server) -> None:
        await server.payload(ws)
        await ws.close()

    async def stays(ws: web.WebSocketResponse, server: Server) -> None:
        payload = await server.payload(ws)
        assert payload["sessionid"] == server.issued[-1]
        await ws.send_str(json.dumps(QUOTE))
        await hold(ws, server)

    sessions = [(500, "busy"), (200, {"stream": {}})]  # then good ones
    async with serving(refuses, drops, stays, sessions=sessions) as server:
        stream = client(server)
        stream.want(["SPY"])
        async with run(stream) as quotes:
            await wait_for(lambda: quotes and stream.state == "connected", what="back after four failures")
            assert [p["sessionid"] for p in server.payloads] == ["s2", "s3", "s4"]
            assert stream.reconnects == 4 and stream.sessions == 3


async def test_a_refused_token_is_final_and_secret_free() -> None:
    async with serving(hold, sessions=[(401, "Invalid Access Token")]) as server:
        stream = client(server)
        stream.want(["SPY"])
        assert await asyncio.wait_for(stream.run(lambda q: None), 5) == "auth_failed"
        assert server.connections == 0 and "TOKEN-SECRET" not in (stream.error or "")


async def test_symbols_beyond_the_limit_are_not_sent() -> None:
    async with serving(hold) as server:
        stream = client(server, symbols_limit=2)
        stream.want(["C", "B", "A"])
        async with run(stream):
            await wait_for(lambda: server.payloads, what="the payload")
            assert server.payloads[0]["symbols"] == ["A", "B"]
