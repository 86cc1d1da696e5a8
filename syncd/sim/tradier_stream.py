"""Tradier's account events stream: ``POST /v1/accounts/events/session`` and the websocket.

The protocol, as Tradier documents it (see :mod:`syncd.brokers.tradier_stream`):

1. ``POST /v1/accounts/events/session`` with the account's token answers
   ``{"stream": {"url": <this websocket>, "sessionid": ...}}``; the session id is good for
   :data:`SESSION_TTL_S` (5 minutes) until a websocket uses it, and only once;
2. the client connects to ``/v1/accounts/events`` and sends ``{"events": ["order"],
   "sessionid": ..., "excludeAccounts": [...]}``; an unknown, expired or used session id
   gets the connection closed (code 1008);
3. the server sends ``{"event": "heartbeat", "status": "active", "timestamp": ...}`` every
   ``heartbeat_s`` and, for every trade event the simulator produces for the token's
   account (the same events Alpaca's ``trade_updates`` carry), the order's state:
   ``{"id", "event": "order", "status", "type", "price", "stop_price", "avg_fill_price",
   "exec_quantity", "last_fill_quantity", "last_fill_price", "remaining_quantity",
   "transaction_date", "create_date", "account", "tag"}``.

Tradier allows one streaming session per user: a new connection for a token that already
has one closes the old one. A token reaches every account it was given
(``Simulator.share_tradier_token``), and its stream carries the events of each of them.
``faults.auth_failed`` accounts get ``401`` on the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from syncd.sim.engine import Exchange, SimAccount, SimOrder, TradeEvent
from syncd.sim.faults import Faults
from syncd.sim.tradier_api import TradierApi, TradierError, order_json
from syncd.sim.wire import json_response, tradier_ts

log = structlog.get_logger(__name__)

SESSION_PATH = "/v1/accounts/events/session"
STREAM_PATH = "/v1/accounts/events"
SESSION_TTL_S = 300.0
HEARTBEAT_S = 60.0


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    token: str
    accounts: frozenset[int]
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def put(self, message: dict[str, Any]) -> None:
        self.queue.put_nowait(json.dumps(message, separators=(",", ":")))

    async def run_sender(self) -> None:
        while True:
            text = await self.queue.get()
            if text is None or self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return


def account_event_json(event: TradeEvent, order: SimOrder, account_id: str, exchange: Exchange) -> dict[str, Any]:
    """One ``order`` event, as Tradier's account stream renders the order's state."""
    d = order_json(order, exchange.market, include_tags=True, hide_fill=False)
    out: dict[str, Any] = {
        "id": d["id"],
        "event": "order",
        "status": d["status"],
        "type": d["type"],
        "price": d.get("price", 0.0),
        "stop_price": 0.0,
        "avg_fill_price": d["avg_fill_price"],
        "exec_quantity": d["exec_quantity"],
        "last_fill_quantity": float(event.qty) if event.qty is not None else 0.0,
        "last_fill_price": float(event.price) if event.price is not None else 0.0,
        "remaining_quantity": d["remaining_quantity"],
        "transaction_date": tradier_ts(event.at),
        "create_date": d["create_date"],
        "account": account_id,
    }
    if "tag" in d:
        out["tag"] = d["tag"]
    return out


class TradierEventsHub:
    """Sessions and live account events connections, at most one per token."""

    def __init__(self, exchange: Exchange, faults: Faults, api: TradierApi, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.exchange = exchange
        self.faults = faults
        self.api = api
        self.heartbeat_s = heartbeat_s
        self.url = ""  # set by the Simulator once it knows its address
        self._sessions: dict[str, tuple[str, float]] = {}  # session id -> (token, monotonic expiry)
        self._conns: dict[str, _Conn] = {}  # token -> its connection
        self._sockets: set[web.WebSocketResponse] = set()
        self.sessions_created = 0
        exchange.listeners.append(self._on_event)

    def routes(self) -> list[web.RouteDef]:
        return [web.post(SESSION_PATH, self.create_session), web.get(STREAM_PATH, self.handle)]

    def connected(self, account: int | None = None) -> int:
        """How many tokens have a live subscribed connection (or whether ``account``'s has)."""
        if account is None:
            return len(self._conns)
        return int(any(account in c.accounts for c in self._conns.values()))

    def _accounts_of(self, token: str) -> frozenset[int]:
        return frozenset(a.index for a in self.exchange.tradier_accounts(token))

    async def create_session(self, request: web.Request) -> web.Response:
        try:
            acct: SimAccount = self.api.authenticate(request)
        except TradierError as exc:
            return exc.response()
        sid = secrets.token_hex(16)
        self._sessions[sid] = (acct.tradier_token, time.monotonic() + SESSION_TTL_S)
        self.sessions_created += 1
        return json_response({"stream": {"url": self.url, "sessionid": sid}})

    def _on_event(self, event: TradeEvent) -> None:
        if not self._conns:
            return
        acct = self.exchange.accounts[event.account]
        for conn in self._conns.values():
            if event.account in conn.accounts:
                conn.put(account_event_json(event, event.order, acct.tradier_account_id, self.exchange))

    async def disconnect(self, account: int | None = None) -> int:
        """Close the server side of the connection that carries ``account`` (or every one)."""
        if account is None:
            sockets = list(self._sockets)
        else:
            sockets = [c.ws for c in self._conns.values() if account in c.accounts]
        for ws in sockets:
            await ws.close(code=1001, message=b"simulator closed the stream")
        return len(sockets)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None, autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        conn: _Conn | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                    if not isinstance(data, dict):
                        raise ValueError("not an object")
                except ValueError:
                    await ws.close(code=1003, message=b"invalid payload")
                    break
                sid = data.get("sessionid")
                entry = self._sessions.get(sid) if isinstance(sid, str) else None
                if conn is not None and (entry is None or entry[0] == conn.token):
                    # a resent payload on a live connection: only the exclusions change
                    conn.accounts = self._subscribed(conn.token, data)
                    continue
                if entry is None or not isinstance(sid, str) or entry[1] < time.monotonic():
                    await ws.close(code=1008, message=b"invalid or expired session")
                    break
                del self._sessions[sid]  # a session id opens one stream
                token = entry[0]
                existing = self._conns.pop(token, None)
                if existing is not None:
                    await existing.ws.close(code=1008, message=b"replaced by a newer session")
                conn = _Conn(ws, token, self._subscribed(token, data))
                conn.tasks = [
                    asyncio.create_task(conn.run_sender(), name="sim-tradier-events-send"),
                    asyncio.create_task(self._heartbeats(conn), name="sim-tradier-events-heartbeat"),
                ]
                self._conns[token] = conn
        finally:
            self._sockets.discard(ws)
            if conn is not None:
                if self._conns.get(conn.token) is conn:
                    del self._conns[conn.token]
                conn.queue.put_nowait(None)
                for task in conn.tasks[1:]:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*conn.tasks, return_exceptions=True)
            if not ws.closed:
                await ws.close()
        return ws

    def _subscribed(self, token: str, data: dict[str, Any]) -> frozenset[int]:
        events = data.get("events")
        if not isinstance(events, list) or "order" not in events:
            return frozenset()
        excluded = data.get("excludeAccounts") or []
        excluded_ids = {str(x) for x in excluded} if isinstance(excluded, list) else set()
        return frozenset(
            i for i in self._accounts_of(token) if self.exchange.accounts[i].tradier_account_id not in excluded_ids
        )

    async def _heartbeats(self, conn: _Conn) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            stamp = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
            conn.put({"event": "heartbeat", "status": "active", "timestamp": stamp})
