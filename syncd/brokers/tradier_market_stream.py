"""Tradier's market events stream: live quotes for the symbols syncd watches.

The protocol (Tradier's "Streaming" docs, market events):

1. ``POST {base_url}/v1/markets/events/session`` with the account's token (``Authorization:
   Bearer``, ``Accept: application/json``) answers ``{"stream": {"url": ..., "sessionid": S}}``;
   a session id is good for 5 minutes until it is used, so every connection takes a fresh one;
2. connect to the websocket (``wss://ws.tradier.com/v1/markets/events`` by default,
   ``market_stream_url``) and send the payload ``{"symbols": [...], "sessionid": S,
   "filter": ["quote"], "linebreak": true, "validOnly": true}``; sending a new payload with the
   same session replaces the symbols (there is no acknowledgement);
3. the server sends events, one JSON object per line: ``{"type": "quote", "symbol": "SPY",
   "bid": 281.84, "bidsz": 60, "bidexch": "M", "biddate": "1557757189000", "ask": 281.85,
   "asksz": 6, "askexch": "Z", "askdate": "1557757190000"}`` (dates are epoch milliseconds),
   and an ``{"error": ...}`` object for a session it does not accept.

:class:`TradierQuoteStream` has the interface of
:class:`syncd.brokers.alpaca_data_stream.AlpacaQuoteStream` (``want``, ``run``, the counters and
the state), so the quote watcher runs either. A token the session endpoint refuses (401/403) is
the final state ``auth_failed``; anything else reconnects with jittered backoff and a fresh session.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
import structlog

from syncd.brokers.alpaca_data_stream import BACKOFF_S, OnQuote, OnState, QuoteStream, StreamRefused
from syncd.brokers.base import BadBrokerData
from syncd.brokers.parse import decimal_or_none
from syncd.brokers.sanity import check_quote
from syncd.brokers.types import Quote

log = structlog.get_logger(__name__)

MARKET_STREAM_URL = "wss://ws.tradier.com/v1/markets/events"


def _ms(value: Any, key: str) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{key} is not epoch milliseconds")
    return dt.datetime.fromtimestamp(int(value) / 1000, dt.UTC)


def parse_quote(msg: dict[str, Any]) -> Quote:
    """One ``type: "quote"`` event as a checked domain ``Quote``; ``BadBrokerData`` when it cannot be true."""
    symbol = msg.get("symbol")
    if not isinstance(symbol, str) or not symbol or len(symbol) > 32:
        raise BadBrokerData("tradier: quote without a symbol", field="quote.symbol", broker="tradier")
    try:
        dates = [d for d in (_ms(msg.get("biddate"), "biddate"), _ms(msg.get("askdate"), "askdate")) if d]
        quote = Quote(
            symbol=symbol,
            bid=decimal_or_none(msg.get("bid")),
            ask=decimal_or_none(msg.get("ask")),
            bid_size=decimal_or_none(msg.get("bidsz")),
            ask_size=decimal_or_none(msg.get("asksz")),
            at=max(dates) if dates else None,
        )
    except (ValueError, InvalidOperation, TypeError, OverflowError, OSError) as exc:
        raise BadBrokerData(f"tradier: quote for {symbol}: {exc}", field=f"quote.{symbol}", broker="tradier") from None

    def bad(message: str, field: str) -> BadBrokerData:
        return BadBrokerData(f"tradier: {message}", field=field, broker="tradier")

    return check_quote(quote, f"quote.{symbol}", bad)


class TradierQuoteStream(QuoteStream):
    """One Tradier market events connection that follows a wanted symbol set (stocks and options alike)."""

    kind = "market"

    def __init__(
        self,
        *,
        account: str,
        base_url: str,
        url: str | None,
        token: str,
        symbols_limit: int,
        timeout_s: float = 10.0,
        backoff_s: tuple[float, float] = BACKOFF_S,
    ) -> None:
        super().__init__(
            account=account,
            name="tradier-market",
            symbols_limit=symbols_limit,
            timeout_s=timeout_s,
            backoff_s=backoff_s,
        )
        self.base_url = base_url.rstrip("/")
        self.url = url or MARKET_STREAM_URL
        self._token = token
        self.sessions = 0

    def accepts(self, symbol: str) -> bool:
        return True

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***")

    async def _session(self, http: aiohttp.ClientSession) -> str:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        async with http.post(f"{self.base_url}/v1/markets/events/session", headers=headers) as resp:
            text = await resp.text()
            if resp.status in (401, 403):
                raise StreamRefused("auth_failed", resp.status, "the session endpoint refused the token")
            if resp.status != 200:
                raise StreamRefused("reconnecting", resp.status, f"session endpoint answered {resp.status}")
        try:
            body = json.loads(text)
            sessionid = body["stream"]["sessionid"]
        except (ValueError, KeyError, TypeError):
            raise StreamRefused("reconnecting", None, "session answer without stream.sessionid") from None
        if not isinstance(sessionid, str) or not sessionid:
            raise StreamRefused("reconnecting", None, "session answer without stream.sessionid")
        self.sessions += 1
        return sessionid

    async def _connection(self, on_quote: OnQuote, on_state: OnState | None) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with asyncio.timeout(self._timeout_s):
                sessionid = await self._session(http)
            async with http.ws_connect(self.url, heartbeat=30.0, max_msg_size=16 * 1024 * 1024) as ws:
                self._set_state("connected", None, on_state)
                log.info("quote_stream_connected", account=self.account, stream=self.name, url=self.url)
                self._changed.set()
                sender = asyncio.create_task(self._follow(ws, sessionid), name=f"quote-subscribe:{self.account}")
                try:
                    async for msg in ws:
                        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            self._frame(msg.data, on_quote)
                            await asyncio.sleep(0)  # a busy stream must not starve the flusher
                        elif msg.type == aiohttp.WSMsgType.ERROR:
                            raise ConnectionError(f"websocket error: {ws.exception()}")
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)

    async def _follow(self, ws: aiohttp.ClientWebSocketResponse, sessionid: str) -> None:
        """Send the whole payload again whenever the wanted set changes (Tradier replaces the symbols)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            symbols = list(self._wanted)
            payload = {"symbols": symbols, "sessionid": sessionid, "filter": ["quote"], "linebreak": True}
            await ws.send_str(json.dumps({**payload, "validOnly": True}, separators=(",", ":")))
            self.subscribed = frozenset(symbols)

    def _frame(self, data: str | bytes, on_quote: OnQuote) -> None:
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line, parse_float=Decimal)
            except ValueError as exc:
                self.bad += 1
                log.warning("quote_frame_unparsed", account=self.account, stream=self.name, error=str(exc)[:200])
                continue
            if not isinstance(item, dict):
                self.bad += 1
                continue
            if "error" in item:
                # the server does not accept this session (expired, used twice): a fresh one on reconnect
                raise StreamRefused("reconnecting", None, f"stream error: {str(item.get('error'))[:200]}")
            if item.get("type") != "quote":
                continue
            try:
                quote = parse_quote(item)
            except BadBrokerData as exc:
                self.bad += 1
                log.warning("quote_refused", account=self.account, stream=self.name, error=str(exc))
                continue
            self.received += 1
            self.last_event_at = time.time()
            on_quote(quote)
