"""Tradier's account events stream: one websocket per token, shared by that token's accounts.

The protocol, as Tradier documents it (docs.tradier.com, "Stream Account Events" and
"Account Streaming Responses"):

1. ``POST {base_url}/v1/accounts/events/session`` (the account's token, ``Accept:
   application/json``) answers ``{"stream": {"url": ..., "sessionid": ...}}``; the session id
   is good for 5 minutes, within which a websocket must use it;
2. connect to the account events websocket (``wss://ws.tradier.com/v1/accounts/events``, or
   ``wss://sandbox-ws.tradier.com/v1/accounts/events`` for paper accounts) and send
   ``{"events": ["order"], "sessionid": ..., "excludeAccounts": []}``;
3. the server sends one JSON object per frame: ``{"event": "heartbeat", "status": "active",
   "timestamp": ...}`` about once a minute, and for every order change of every account the
   token can see ``{"id", "event": "order", "status", "type", "price", "stop_price",
   "avg_fill_price", "exec_quantity" (older docs: "executed_quantity"), "last_fill_quantity",
   "last_fill_price", "remaining_quantity", "transaction_date", "create_date", "account",
   "tag", "parent_id"}``: the order's state after the change, not the one fill.

Tradier allows one streaming session per user at a time, so :class:`AccountEvents` holds one
connection for every account under one token (the factory builds one per token and stream
URL) and hands each subscribed account its own events (``account``); events of accounts
nobody here subscribed to are dropped. ``excludeAccounts`` is sent empty: the set of
accounts a replica holds changes with the leases, and dropping here needs no resubscription.

A connection is opened when the first account subscribes (a fresh session each time) and
closed when the last one leaves. When it fails (no frame, not even a heartbeat, within
``heartbeat_timeout_s``; the server closes; the session request fails) every subscriber's
iterator raises, and each consumer reconnects with its own backoff
(:func:`syncd.trading.stream.consume_trade_updates`); the first to come back opens the next
connection with a new session. A refused token (401/403 on the session) raises
``BrokerAuthFailed``: the consumer stops streaming and polling carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import structlog

from syncd.brokers.base import BadBrokerData, BrokerError, BrokerUnavailable
from syncd.brokers.http import HttpCore

log = structlog.get_logger(__name__)

SANDBOX_STREAM_URL = "wss://sandbox-ws.tradier.com/v1/accounts/events"
LIVE_STREAM_URL = "wss://ws.tradier.com/v1/accounts/events"
SESSION_PATH = "/v1/accounts/events/session"
SESSION_ENDPOINT = "accounts/events/session"
HEARTBEAT_TIMEOUT_S = 150.0  # Tradier sends a heartbeat a minute; two missed ones mean the link is dead
CONNECT_TIMEOUT_S = 10.0
QUEUE_MAX = 10_000  # events waiting for one account's consumer; beyond, the connection is dropped

Raw = dict[str, Any]


def default_stream_url(sandbox: bool) -> str:
    return SANDBOX_STREAM_URL if sandbox else LIVE_STREAM_URL


class AccountEvents:
    """One token's account events connection, fanned out to the accounts subscribed to it."""

    def __init__(
        self,
        *,
        http: HttpCore,
        base_url: str,
        stream_url: str,
        session: aiohttp.ClientSession,
        name: str,
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/")
        self.stream_url = stream_url
        self._session = session
        self.name = name  # the first account's name, for the log (never the token)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._subs: dict[str, asyncio.Queue[Raw | BaseException]] = {}
        self._runner: asyncio.Task[None] | None = None
        self.sessions_created = 0
        self.connections = 0
        self.connected = False
        self.last_frame_at: float | None = None  # monotonic time of the last frame (heartbeats too)
        self.bad_frames = 0

    def subscribed(self) -> frozenset[str]:
        return frozenset(self._subs)

    async def create_session(self) -> str:
        """A new streaming session id (``BrokerAuthFailed``, ``BrokerUnavailable``, ``BadBrokerData``)."""
        body = await self._http.request("POST", f"{self.base_url}{SESSION_PATH}", endpoint=SESSION_ENDPOINT)
        stream = body.get("stream") if isinstance(body, dict) else None
        sid = stream.get("sessionid") if isinstance(stream, dict) else None
        if not isinstance(sid, str) or not sid.strip():
            raise BadBrokerData(
                "tradier: the events session answer has no stream.sessionid",
                field="stream.sessionid",
                broker="tradier",
                account=self.name,
            )
        self.sessions_created += 1
        return sid

    async def events(self, account_id: str) -> AsyncIterator[Raw]:
        """The raw order events of ``account_id`` until the connection fails (then it raises)."""
        if account_id in self._subs:
            raise BrokerError(
                f"tradier: account {account_id} already has an account events consumer",
                broker="tradier",
                account=self.name,
            )
        queue: asyncio.Queue[Raw | BaseException] = asyncio.Queue(QUEUE_MAX)
        self._subs[account_id] = queue
        try:
            if self._runner is None or self._runner.done():
                self._runner = asyncio.create_task(self._run(), name=f"tradier-events:{self.name}")
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if self._subs.get(account_id) is queue:
                del self._subs[account_id]
            runner = self._runner
            if not self._subs and runner is not None and not runner.done():
                runner.cancel()

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    # -- the connection -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connect_and_read()
        except asyncio.CancelledError:
            raise
        except BrokerError as exc:
            self._fail(exc)
        except TimeoutError:
            self._fail(self._unavailable("no answer within the connect timeout or no heartbeat in time"))
        except (aiohttp.ClientError, OSError) as exc:
            self._fail(self._unavailable(_describe(exc)))
        finally:
            self.connected = False

    async def _connect_and_read(self) -> None:
        sid = await self.create_session()
        async with asyncio.timeout(self.connect_timeout_s):
            ws = await self._session.ws_connect(self.stream_url, heartbeat=None, autoping=True, max_msg_size=1 << 20)
        async with ws:
            await ws.send_str(json.dumps({"events": ["order"], "sessionid": sid, "excludeAccounts": []}))
            self.connections += 1
            self.connected = True
            self.last_frame_at = time.monotonic()
            log.debug("tradier_events_connected", broker="tradier", stream=self.name, accounts=len(self._subs))
            while True:
                try:
                    msg = await ws.receive(timeout=self.heartbeat_timeout_s)
                except TimeoutError:
                    silent = f"no frame (not even a heartbeat) for {self.heartbeat_timeout_s:g}s"
                    raise self._unavailable(silent) from None
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._frame(msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    reason = f" ({str(msg.extra)[:80]})" if msg.extra else ""
                    raise self._unavailable(f"the server closed the stream, code {ws.close_code}{reason}")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    raise self._unavailable(f"websocket error: {_describe(ws.exception())}")

    def _frame(self, data: str | bytes) -> None:
        self.last_frame_at = time.monotonic()
        try:
            frame = json.loads(data)
        except ValueError:
            frame = None
        if not isinstance(frame, dict):
            self.bad_frames += 1
            log.warning("stream_frame_unparsed", broker="tradier", stream=self.name, frame=str(data)[:60])
            return
        event = frame.get("event")
        if event == "heartbeat":
            return
        if event != "order":
            if "error" in frame:
                raise self._unavailable(f"the server said: {str(frame['error'])[:120]}")
            log.debug("tradier_event_ignored", stream_event=str(event)[:30])
            return
        queue = self._subs.get(str(frame.get("account")))
        if queue is None:
            return  # an account of this token nobody here follows
        try:
            queue.put_nowait(frame)
        except asyncio.QueueFull:
            raise self._unavailable(f"account {frame.get('account')} fell {QUEUE_MAX} events behind") from None

    def _fail(self, exc: BrokerError) -> None:
        for queue in self._subs.values():
            try:
                queue.put_nowait(exc)
            except asyncio.QueueFull:  # make room: the failure must reach the consumer
                queue.get_nowait()
                queue.put_nowait(exc)

    def _unavailable(self, why: str) -> BrokerUnavailable:
        return BrokerUnavailable(f"tradier account events: {why}", broker="tradier", account=self.name)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"handshake refused with HTTP {exc.status}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:160]}"
