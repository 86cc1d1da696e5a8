"""Alpaca's real-time market data websocket: live quotes for the symbols syncd watches.

The protocol (Alpaca "WebSocket Stream" docs, and alpaca-py's ``DataStream`` in
``alpaca/data/live/websocket.py``, which speaks it):

* URL ``{data_stream_url}/v2/{feed}`` for stocks (``iex``, ``sip``, ...) and
  ``{data_stream_url}/v1beta1/{feed}`` for options (``indicative``, ``opra``);
* every server message is an array of objects with a type ``T``;
* on connect the server sends ``[{"T":"success","msg":"connected"}]``;
* the client authenticates with ``{"action":"auth","key":K,"secret":S}``; the server answers
  ``[{"T":"success","msg":"authenticated"}]`` or an error such as
  ``[{"T":"error","code":402,"msg":"auth failed"}]``, ``406 connection limit exceeded``,
  ``409 insufficient subscription`` (the plan has no access to this feed);
* ``{"action":"subscribe","quotes":[...]}`` / ``{"action":"unsubscribe","quotes":[...]}``;
  the server answers with the whole current subscription
  ``[{"T":"subscription","trades":[],"quotes":[...],"bars":[],...}]`` or
  ``405 symbol limit exceeded``;
* a quote: ``{"T":"q","S":"AAPL","bx":"V","bp":187.1,"bs":2,"ax":"V","ap":187.2,"as":3,
  "t":"2024-03-01T15:04:05.123456789Z","c":["R"],"z":"C"}``.

Stocks are JSON text frames; options are msgpack only (Alpaca's option stream refuses JSON),
requested with ``Content-Type: application/msgpack``, where ``t`` is a msgpack Timestamp.

:class:`AlpacaQuoteStream` keeps one connection per endpoint (Alpaca allows one per key on
most plans), reconnects with jittered backoff, and follows :meth:`want` (the symbols to
watch, changed at any time) with subscribe/unsubscribe messages, never more than
``symbols_limit`` symbols. Each quote is checked and handed to ``on_quote``; a frame or a
quote that cannot be read is logged and skipped, never fatal. Wrong keys and a plan without
data access are named, final states (:data:`FATAL_STATES`): polling carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import aiohttp
import msgpack
import structlog

from syncd.brokers.base import BadBrokerData
from syncd.brokers.parse import decimal_or_none
from syncd.brokers.sanity import check_quote
from syncd.brokers.types import Quote
from syncd.errors import backoff

log = structlog.get_logger(__name__)

DATA_STREAM_URL = "wss://stream.data.alpaca.markets"
Kind = Literal["stocks", "options"]
State = Literal[
    "idle",  # nothing to watch: no connection
    "connecting",
    "connected",
    "reconnecting",
    "auth_failed",  # 402: wrong key or secret (final)
    "no_data_plan",  # 409: the plan has no access to this feed (final)
]
FATAL_STATES = frozenset({"auth_failed", "no_data_plan"})
BACKOFF_S = (1.0, 30.0)
HEALTHY_AFTER_S = 30.0  # a connection that lasted this long resets the backoff

OnQuote = Callable[[Quote], None]
OnState = Callable[[str, str | None], None]


class StreamRefused(Exception):
    """The server said no (an error message); ``state`` is what syncd calls it."""

    def __init__(self, state: str, code: int | None, message: str) -> None:
        super().__init__(f"{code} {message}" if code is not None else message)
        self.state = state
        self.code = code


def endpoint(base: str | None, kind: Kind, feed: str) -> str:
    """``{base}/v2/{feed}`` for stocks, ``{base}/v1beta1/{feed}`` for options."""
    root = (base or DATA_STREAM_URL).rstrip("/")
    return f"{root}/v2/{feed}" if kind == "stocks" else f"{root}/v1beta1/{feed}"


def _timestamp(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, msgpack.Timestamp):
        stamp: dt.datetime = value.to_datetime()
        return stamp
    if not isinstance(value, str):
        raise ValueError(f"t is not a timestamp ({type(value).__name__})")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:  # RFC 3339 with nanoseconds: Python takes at most microseconds
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("t has no time zone")
    return parsed.astimezone(dt.UTC)


def parse_quote(msg: dict[str, Any]) -> Quote:
    """One ``T: "q"`` message as a checked domain ``Quote``; ``BadBrokerData`` when it cannot be true."""
    symbol = msg.get("S")
    if not isinstance(symbol, str) or not symbol or len(symbol) > 32:
        raise BadBrokerData("alpaca: quote without a symbol", field="quote.S", broker="alpaca")
    try:
        quote = Quote(
            symbol=symbol,
            bid=decimal_or_none(msg.get("bp")),
            ask=decimal_or_none(msg.get("ap")),
            bid_size=decimal_or_none(msg.get("bs")),
            ask_size=decimal_or_none(msg.get("as")),
            at=_timestamp(msg.get("t")),
        )
    except (ValueError, InvalidOperation, TypeError) as exc:
        raise BadBrokerData(f"alpaca: quote for {symbol}: {exc}", field=f"quote.{symbol}", broker="alpaca") from None

    def bad(message: str, field: str) -> BadBrokerData:
        return BadBrokerData(f"alpaca: {message}", field=field, broker="alpaca")

    return check_quote(quote, f"quote.{symbol}", bad)


def is_option_symbol(symbol: str) -> bool:
    """An OCC option symbol (root, YYMMDD, C/P, strike x 1000 in 8 digits)."""
    return len(symbol) > 15 and symbol[-9] in "CP" and symbol[-8:].isdigit() and symbol[-15:-9].isdigit()


def _error_state(code: int | None) -> str:
    if code in (401, 402):
        return "auth_failed"
    if code == 409:
        return "no_data_plan"
    return "reconnecting"


class QuoteStream:
    """What every live-quote connection shares: the wanted symbol set (within ``symbols_limit``),
    the reconnect loop with backoff, and the state health shows. A subclass opens one connection
    (``_connection``) and says which symbols it carries (``accepts``)."""

    kind: str

    def __init__(
        self, *, account: str, name: str, symbols_limit: int, timeout_s: float, backoff_s: tuple[float, float]
    ) -> None:
        self.account = account
        self.name = name
        self.symbols_limit = symbols_limit
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._wanted: list[str] = []
        self._changed = asyncio.Event()
        self.subscribed: frozenset[str] = frozenset()
        self.state: str = "idle"
        self.error: str | None = None
        self.received = 0
        self.bad = 0
        self.reconnects = 0
        self.last_event_at: float | None = None  # time.time() of the last quote
        self._over_limit_logged = 0

    def accepts(self, symbol: str) -> bool:
        raise NotImplementedError

    async def _connection(self, on_quote: OnQuote, on_state: OnState | None) -> None:
        raise NotImplementedError

    def _scrub(self, text: str) -> str:
        """``text`` without the connection's secrets (an error message about to be logged)."""
        return text

    # -- what to watch ------------------------------------------------------------------

    def want(self, symbols: Iterable[str]) -> None:
        """The symbols to watch from now on (at most ``symbols_limit``: the rest are left to polling)."""
        wanted = sorted(set(symbols))
        if len(wanted) > self.symbols_limit:
            if self._over_limit_logged != len(wanted):
                log.warning(
                    "quote_symbols_over_limit",
                    account=self.account,
                    stream=self.name,
                    wanted=len(wanted),
                    limit=self.symbols_limit,
                )
                self._over_limit_logged = len(wanted)
            wanted = wanted[: self.symbols_limit]
        if wanted != self._wanted:
            self._wanted = wanted
            self._changed.set()

    @property
    def wanted(self) -> list[str]:
        return list(self._wanted)

    # -- the connection loop --------------------------------------------------------------

    async def run(self, on_quote: OnQuote, on_state: OnState | None = None) -> str:
        """Connect, subscribe, deliver quotes; reconnect until cancelled. Returns a fatal state's name."""
        failures = 0
        while True:
            if not self._wanted:
                self._set_state("idle", None, on_state)
                self._changed.clear()
                await self._changed.wait()
                continue
            self._set_state("connecting" if failures == 0 else "reconnecting", self.error, on_state)
            started = time.monotonic()
            delivered = self.received
            try:
                await self._connection(on_quote, on_state)
                error = "server closed the stream"
            except StreamRefused as exc:
                if exc.state in FATAL_STATES:
                    self._set_state(exc.state, str(exc), on_state)
                    log.error(
                        "quote_stream_refused", account=self.account, stream=self.name, state=exc.state, error=str(exc)
                    )
                    return exc.state
                error = str(exc)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                error = f"{type(exc).__name__}: {self._scrub(str(exc))[:200]}"
            self.subscribed = frozenset()
            if self.received > delivered or time.monotonic() - started > HEALTHY_AFTER_S:
                failures = 0
            failures += 1
            self.reconnects += 1
            delay = backoff(failures, *self._backoff_s, jitter="half")
            self._set_state("reconnecting", error, on_state)
            log.warning(
                "quote_stream_dropped",
                account=self.account,
                stream=self.name,
                error=error,
                attempt=failures,
                retry_in_s=round(delay, 2),
            )
            await asyncio.sleep(delay)

    def _set_state(self, state: str, error: str | None, on_state: OnState | None) -> None:
        if state == self.state and error == self.error:
            return
        self.state, self.error = state, error
        if on_state is not None:
            on_state(state, error)


class AlpacaQuoteStream(QuoteStream):
    """One Alpaca market-data connection (stocks or options) that follows a wanted symbol set."""

    def __init__(
        self,
        *,
        account: str,
        kind: Kind,
        url: str,
        key: str,
        secret: str,
        symbols_limit: int,
        timeout_s: float = 10.0,
        backoff_s: tuple[float, float] = BACKOFF_S,
    ) -> None:
        super().__init__(
            account=account,
            name=f"alpaca-{kind}",
            symbols_limit=symbols_limit,
            timeout_s=timeout_s,
            backoff_s=backoff_s,
        )
        self.kind = kind
        self.url = url
        self._key = key
        self._secret = secret
        self.binary = kind == "options"  # msgpack; stocks speak JSON

    def accepts(self, symbol: str) -> bool:
        """Whether this connection carries ``symbol`` (options on the option stream, the rest on stocks)."""
        return is_option_symbol(symbol) == (self.kind == "options")

    async def _connection(self, on_quote: OnQuote, on_state: OnState | None) -> None:
        headers = {"Content-Type": "application/msgpack"} if self.binary else {}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.ws_connect(self.url, headers=headers, heartbeat=20.0, max_msg_size=16 * 1024 * 1024) as ws,
        ):
            first = await self._control(ws)
            if first.get("T") != "success" or first.get("msg") != "connected":
                raise StreamRefused("reconnecting", None, f"unexpected welcome {str(first)[:100]}")
            await self._send(ws, {"action": "auth", "key": self._key, "secret": self._secret})
            reply = await self._control(ws)
            if reply.get("T") != "success" or reply.get("msg") != "authenticated":
                raise StreamRefused("auth_failed", None, f"unexpected auth reply {str(reply)[:100]}")
            self._set_state("connected", None, on_state)
            log.info("quote_stream_connected", account=self.account, stream=self.name, url=self.url)
            self._changed.set()  # subscribe to the whole wanted set on this new connection
            sender = asyncio.create_task(self._follow(ws), name=f"quote-subscribe:{self.account}:{self.kind}")
            try:
                async for msg in ws:
                    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        self._frame(msg.data, on_quote)
                        # a busy stream has the next frame buffered already, and reading it would not
                        # yield: let the flusher and everything else run between frames
                        await asyncio.sleep(0)
                    elif msg.type == aiohttp.WSMsgType.ERROR:
                        raise ConnectionError(f"websocket error: {ws.exception()}")
                if sender.done() and sender.exception() is not None:
                    raise sender.exception()  # type: ignore[misc]
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender

    async def _follow(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send subscribe/unsubscribe whenever the wanted set changes."""
        sent: set[str] = set()
        while True:
            await self._changed.wait()
            self._changed.clear()
            wanted = set(self._wanted)
            add, drop = sorted(wanted - sent), sorted(sent - wanted)
            if drop:
                await self._send(ws, {"action": "unsubscribe", "quotes": drop})
            if add:
                await self._send(ws, {"action": "subscribe", "quotes": add})
            sent = wanted

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        if self.binary:
            await ws.send_bytes(msgpack.packb(message))
        else:
            await ws.send_str(json.dumps(message, separators=(",", ":")))

    def _decode(self, data: str | bytes) -> Any:
        if isinstance(data, bytes) and self.binary:
            return msgpack.unpackb(data, timestamp=0)
        return json.loads(data, parse_float=Decimal)

    async def _control(self, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        """The first message of the next frame (connect and auth replies); an error frame raises."""
        msg = await asyncio.wait_for(ws.receive(), timeout=self._timeout_s)
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            raise ConnectionError(f"stream closed during the handshake ({msg.type.name})")
        try:
            items = self._decode(msg.data)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise StreamRefused("reconnecting", None, f"unreadable handshake frame: {exc}") from None
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            raise StreamRefused("reconnecting", None, "handshake frame is not an array of objects")
        first: dict[str, Any] = items[0]
        if first.get("T") == "error":
            code = first.get("code") if isinstance(first.get("code"), int) else None
            raise StreamRefused(_error_state(code), code, str(first.get("msg", "error"))[:200])
        return first

    def _frame(self, data: str | bytes, on_quote: OnQuote) -> None:
        try:
            items = self._decode(data)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, UnicodeDecodeError) as exc:
            self.bad += 1
            log.warning("quote_frame_unparsed", account=self.account, stream=self.name, error=str(exc)[:200])
            return
        if not isinstance(items, list):
            items = [items]
        for item in items:
            if not isinstance(item, dict):
                self.bad += 1
                continue
            kind = item.get("T")
            if kind == "q":
                try:
                    quote = parse_quote(item)
                except BadBrokerData as exc:
                    self.bad += 1
                    log.warning("quote_refused", account=self.account, stream=self.name, error=str(exc))
                    continue
                self.received += 1
                self.last_event_at = time.time()
                on_quote(quote)
            elif kind == "subscription":
                quotes = item.get("quotes")
                if isinstance(quotes, list):
                    self.subscribed = frozenset(s for s in quotes if isinstance(s, str))
            elif kind == "error":
                code = item.get("code")
                log.warning(
                    "quote_stream_error",
                    account=self.account,
                    stream=self.name,
                    code=code,
                    error=str(item.get("msg"))[:200],
                )
                if code == 405:  # symbol limit exceeded: the plan allows fewer than configured
                    self.symbols_limit = max(1, len(self.subscribed))
                    self.want(self._wanted)
