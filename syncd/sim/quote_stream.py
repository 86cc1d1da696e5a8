"""Alpaca's real-time market data websocket: ``/v2/{feed}`` (stocks) and ``/v1beta1/{feed}`` (options).

The protocol as Alpaca documents it and alpaca-py's ``StockDataStream``/``OptionDataStream``
speak it (see :mod:`syncd.brokers.alpaca_data_stream`): ``[{"T":"success","msg":"connected"}]``
on connect; ``{"action":"auth","key","secret"}`` answered ``authenticated`` or
``402 auth failed``; ``subscribe``/``unsubscribe`` with ``quotes`` (``trades`` and ``bars``
are accepted and echoed, never sent); the answer is the whole subscription. Quotes are
``T: "q"`` messages, one frame per publish holding every changed symbol of the connection.

Frames are JSON text unless the client asked for msgpack (``Content-Type:
application/msgpack``, as alpaca-py always does) or the endpoint is the option one (msgpack
only, as at Alpaca), where ``t`` is a msgpack Timestamp.

A quote is published when it changes: after each market tick, ``advance`` and ``set_price``
(the admin API's ``/_sim/price`` moves one deterministically). ``flood(rate)`` sends
``rate`` quotes per second for every subscribed symbol whether it moved or not (load tests).
Knobs: ``symbol_limit`` (405 beyond it), ``denied`` accounts (409 insufficient subscription),
one connection per account per endpoint (406 for a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgpack
import structlog
from aiohttp import WSMsgType, web

from syncd.sim.engine import Exchange
from syncd.sim.faults import Faults
from syncd.sim.market import SimQuote

log = structlog.get_logger(__name__)

STOCK_FEEDS = ("iex", "sip", "delayed_sip", "test")
OPTION_FEEDS = ("indicative", "opra")
CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")


def quote_message(q: SimQuote, binary: bool, bid: Decimal | None = None, ask: Decimal | None = None) -> dict[str, Any]:
    utc = q.at.astimezone(dt.UTC)
    at: Any = msgpack.Timestamp.from_datetime(utc) if binary else utc.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
    b = q.bid if bid is None else bid
    a = q.ask if ask is None else ask
    return {
        "T": "q",
        "S": q.symbol,
        "bx": "V",
        "bp": float(b),
        "bs": q.bid_size,
        "ax": "V",
        "ap": float(a),
        "as": q.ask_size,
        "t": at,
        "c": ["R"],
        "z": "C",
    }


def tradier_quote(q: SimQuote, bid: Decimal | None = None, ask: Decimal | None = None) -> dict[str, Any]:
    """A Tradier market events ``quote`` (prices as numbers, dates as epoch-millisecond strings)."""
    ms = str(int(q.at.timestamp() * 1000))
    return {
        "type": "quote",
        "symbol": q.symbol,
        "bid": float(q.bid if bid is None else bid),
        "bidsz": q.bid_size,
        "bidexch": "Q",
        "biddate": ms,
        "ask": float(q.ask if ask is None else ask),
        "asksz": q.ask_size,
        "askexch": "Q",
        "askdate": ms,
    }


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    options: bool
    binary: bool
    account: int | None = None
    tradier: bool = False  # Tradier's market events: one JSON object per line, no envelope
    session: str | None = None  # Tradier: the session id the connection was opened with
    quotes: set[str] = field(default_factory=set)
    channels: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in CHANNELS})
    sent: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    queue: asyncio.Queue[bytes | str | None] = field(default_factory=asyncio.Queue)
    sender: asyncio.Task[None] | None = None

    def quote(self, q: SimQuote, ask: Decimal | None = None) -> dict[str, Any]:
        return tradier_quote(q, ask=ask) if self.tradier else quote_message(q, self.binary, ask=ask)

    def encode(self, messages: list[dict[str, Any]]) -> bytes | str:
        if self.tradier:
            return "\n".join(json.dumps(m, separators=(",", ":")) for m in messages)
        if self.binary:
            return bytes(msgpack.packb(messages, datetime=False))
        return json.dumps(messages, separators=(",", ":"))

    def put(self, messages: list[dict[str, Any]]) -> None:
        self.queue.put_nowait(self.encode(messages))

    async def run_sender(self) -> None:
        while True:
            frame = await self.queue.get()
            if frame is None or self.ws.closed:
                return
            try:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return


def _error(code: int, message: str) -> list[dict[str, Any]]:
    return [{"T": "error", "code": code, "msg": message}]


class QuoteHub:
    """Every live market-data connection."""

    def __init__(self, exchange: Exchange, faults: Faults) -> None:
        self.exchange = exchange
        self.market = exchange.market
        self.faults = faults
        self.symbol_limit: int | None = None
        self.denied: set[int] = set()  # account indexes whose plan has no market data (409)
        self._conns: set[_Conn] = set()
        self._flood: asyncio.Task[None] | None = None
        self.sent = 0  # quotes sent so far
        self.sessions: dict[str, tuple[int, float]] = {}  # Tradier session id -> (account, issued at)
        self.session_ttl_s = 300.0  # Tradier: a session id is good for 5 minutes until used

    def routes(self) -> list[web.RouteDef]:
        stock = "|".join(STOCK_FEEDS)
        option = "|".join(OPTION_FEEDS)
        return [
            web.get("/v2/{feed:(" + stock + ")}", self.handle_stocks),
            web.get("/v1beta1/{feed:(" + option + ")}", self.handle_options),
            web.get("/v1/markets/events", self.handle_tradier),
            web.post("/v1/markets/events/session", self.handle_tradier_session),
        ]

    @staticmethod
    def is_stream_path(path: str) -> bool:
        head, _, feed = path.rpartition("/")
        return (
            (head == "/v2" and feed in STOCK_FEEDS)
            or (head == "/v1beta1" and feed in OPTION_FEEDS)
            or path == "/v1/markets/events"
        )

    def connections(self, options: bool | None = None) -> int:
        return sum(1 for c in self._conns if c.account is not None and (options is None or c.options == options))

    def subscribed(self) -> set[str]:
        """Every symbol some connection subscribes quotes for."""
        out: set[str] = set()
        for c in self._conns:
            out |= c.quotes
        return out

    # -- publishing -------------------------------------------------------------------

    def publish(self) -> int:
        """Send every subscribed quote that changed since it was last sent; returns how many."""
        total = 0
        for conn in list(self._conns):
            if not conn.quotes or conn.ws.closed:
                continue
            batch = []
            for symbol in conn.quotes:
                q = self.market.quote(symbol)
                if q is None:
                    continue
                key = (q.bid, q.ask)
                if conn.sent.get(symbol) == key:
                    continue
                conn.sent[symbol] = key
                batch.append(conn.quote(q))
            if batch:
                conn.put(batch)
                total += len(batch)
        self.sent += total
        return total

    def flood(self, rate: float) -> None:
        """Send ``rate`` quotes a second for every subscribed symbol (0 stops)."""
        if self._flood is not None:
            self._flood.cancel()
            self._flood = None
        if rate > 0:
            self._flood = asyncio.create_task(self._flood_loop(rate), name="sim-quote-flood")

    async def _flood_loop(self, rate: float) -> None:
        interval = 0.1 if rate >= 10 else 1.0 / rate
        per_tick = max(1, round(rate * interval))
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        flip = 0
        while True:
            next_at += interval
            for conn in list(self._conns):
                if not conn.quotes or conn.ws.closed:
                    continue
                batch = []
                for symbol in conn.quotes:
                    q = self.market.quote(symbol)
                    if q is None:
                        continue
                    for k in range(per_tick):
                        # alternate a cent on the ask: a change every time, the mid wobbling in place
                        bump = Decimal("0.01") if (flip + k) % 2 else Decimal(0)
                        batch.append(conn.quote(q, ask=q.ask + bump))
                if batch:
                    conn.put(batch)
                    self.sent += len(batch)
            flip += 1
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def disconnect(self) -> int:
        socks = [c.ws for c in self._conns]
        for ws in socks:
            await ws.close(code=1001, message=b"simulator closed the stream")
        return len(socks)

    async def stop(self) -> None:
        self.flood(0)
        await self.disconnect()

    # -- one connection ---------------------------------------------------------------

    async def handle_stocks(self, request: web.Request) -> web.WebSocketResponse:
        return await self._handle(request, options=False)

    async def handle_options(self, request: web.Request) -> web.WebSocketResponse:
        return await self._handle(request, options=True)

    async def _handle(self, request: web.Request, *, options: bool) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        binary = options or request.headers.get("Content-Type", "").startswith("application/msgpack")
        conn = _Conn(ws, options, binary)
        conn.sender = asyncio.create_task(conn.run_sender(), name="sim-quote-sender")
        self._conns.add(conn)
        conn.put([{"T": "success", "msg": "connected"}])
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    data = msgpack.unpackb(msg.data) if msg.type == WSMsgType.BINARY else json.loads(msg.data)
                    if not isinstance(data, dict):
                        raise ValueError("not an object")
                except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                    conn.put(_error(400, "invalid syntax"))
                    continue
                if not self._action(conn, data):
                    break
        finally:
            await self._hang_up(conn, ws)
        return ws

    async def _hang_up(self, conn: _Conn, ws: web.WebSocketResponse) -> None:
        """Forget ``conn``, let its sender drain what is queued, close the socket."""
        self._conns.discard(conn)
        conn.queue.put_nowait(None)
        if conn.sender is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await conn.sender
        if not ws.closed:
            await ws.close()

    def _action(self, conn: _Conn, data: dict[str, Any]) -> bool:
        """Handle one client message; False closes the connection (after the reply is sent)."""
        action = data.get("action")
        if action == "auth":
            return self._auth(conn, data)
        if action in ("subscribe", "unsubscribe"):
            if conn.account is None:
                conn.put(_error(401, "not authenticated"))
            else:
                self._subscribe(conn, data, action == "subscribe")
            return True
        conn.put(_error(400, "invalid syntax"))
        return True

    def _auth(self, conn: _Conn, data: dict[str, Any]) -> bool:
        if conn.account is not None:
            conn.put(_error(403, "already authenticated"))
            return True
        key = data.get("key")
        acct = self.exchange.by_key.get(key) if isinstance(key, str) else None
        if acct is None or data.get("secret") != acct.api_secret or acct.index in self.faults.auth_failed:
            conn.put(_error(402, "auth failed"))
            return False
        if acct.index in self.denied:
            conn.put(_error(409, "insufficient subscription"))
            return False
        if any(c.account == acct.index and c.options == conn.options and not c.ws.closed for c in self._conns):
            conn.put(_error(406, "connection limit exceeded"))
            return False
        conn.account = acct.index
        conn.put([{"T": "success", "msg": "authenticated"}])
        return True

    def _subscribe(self, conn: _Conn, data: dict[str, Any], subscribe: bool) -> None:
        change: dict[str, set[str]] = {}
        for channel in CHANNELS:
            symbols = data.get(channel, [])
            if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
                conn.put(_error(400, "invalid syntax"))
                return
            change[channel] = set(symbols)
        if subscribe:
            after = conn.channels["quotes"] | change["quotes"]
            if self.symbol_limit is not None and len(after) > self.symbol_limit:
                conn.put(_error(405, "symbol limit exceeded"))
                return
            for channel, symbols in change.items():
                conn.channels[channel] |= symbols
        else:
            for channel, symbols in change.items():
                conn.channels[channel] -= symbols
            for s in change["quotes"]:
                conn.sent.pop(s, None)
        conn.quotes = set(conn.channels["quotes"])
        reply: dict[str, Any] = {"T": "subscription"}
        reply.update({c: sorted(conn.channels[c]) for c in CHANNELS})
        conn.put([reply])
        if subscribe:
            self._send_now(conn, change["quotes"])

    # -- Tradier: the session, then a websocket fed by payloads ---------------------------

    def new_session(self, account: int) -> dict[str, Any]:
        """``POST /v1/markets/events/session``'s answer (the Tradier API authenticates the caller)."""
        sessionid = uuid.uuid4().hex
        self.sessions[sessionid] = (account, time.monotonic())
        return {"stream": {"url": "https://stream.tradier.com/v1/markets/events", "sessionid": sessionid}}

    async def handle_tradier_session(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        acct = self.exchange.by_token.get(token.strip()) if scheme.lower() == "bearer" else None
        if acct is None or acct.index in self.faults.auth_failed:
            return web.Response(status=401, text="Invalid Access Token")
        if acct.index in self.denied:
            return web.Response(status=403, text="market data is not available for this account")
        return web.json_response(self.new_session(acct.index))

    async def handle_tradier(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        conn = _Conn(ws, options=False, binary=False, tradier=True)
        conn.sender = asyncio.create_task(conn.run_sender(), name="sim-tradier-quote-sender")
        self._conns.add(conn)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                    if not isinstance(data, dict):
                        raise ValueError("not an object")
                except ValueError:
                    conn.put([{"error": "invalid payload"}])
                    continue
                if not self._tradier_payload(conn, data):
                    break
        finally:
            await self._hang_up(conn, ws)
        return ws

    def _tradier_payload(self, conn: _Conn, data: dict[str, Any]) -> bool:
        sessionid = data.get("sessionid")
        entry = self.sessions.get(sessionid) if isinstance(sessionid, str) else None
        if conn.account is None:
            if entry is None or time.monotonic() - entry[1] > self.session_ttl_s:
                conn.put([{"error": "invalid session"}])
                return False
            del self.sessions[str(sessionid)]  # used: one connection per session
            conn.account = entry[0]
            conn.session = str(sessionid)
        elif sessionid != conn.session:
            conn.put([{"error": "invalid session"}])
            return True
        symbols = data.get("symbols")
        if not isinstance(symbols, list) or not all(isinstance(x, str) for x in symbols):
            conn.put([{"error": "invalid payload"}])
            return True
        new = set(symbols)
        for gone in conn.quotes - new:
            conn.sent.pop(gone, None)
        added = new - conn.quotes
        conn.quotes = new
        self._send_now(conn, added)
        return True

    def _send_now(self, conn: _Conn, symbols: set[str]) -> None:
        """A new subscription gets the current quote at once (Alpaca sends the next one that happens)."""
        batch = []
        for symbol in sorted(symbols):
            q = self.market.quote(symbol)
            if q is not None:
                conn.sent[symbol] = (q.bid, q.ask)
                batch.append(conn.quote(q))
        if batch:
            conn.put(batch)
            self.sent += len(batch)
