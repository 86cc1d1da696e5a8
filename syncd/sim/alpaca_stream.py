"""Alpaca's ``trade_updates`` websocket at ``/stream``.

The protocol, as Alpaca and alpaca-py's ``TradingStream`` speak it (JSON):

1. client ``{"action": "authenticate", "data": {"key_id": K, "secret_key": S}}``
   (or the newer ``{"action": "auth", "key": K, "secret": S}``);
   server ``{"stream": "authorization", "data": {"action": "authenticate",
   "status": "authorized"}}`` (or ``"unauthorized"`` with a ``message``, then closes);
2. client ``{"action": "listen", "data": {"streams": ["trade_updates"]}}``;
   server ``{"stream": "listening", "data": {"streams": ["trade_updates"]}}``;
3. server ``{"stream": "trade_updates", "data": {"event", "order", "timestamp",
   and for fills "price", "qty", "position_qty", "execution_id"}}``.

Alpaca's server sends its messages as binary frames holding JSON text; the
simulator answers in the frame type the client used to authenticate (text for
alpaca-py and most tools, binary for clients that send binary). Alpaca allows one
stream per account: see ``SimConfig.stream_conflict``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from syncd.sim.alpaca_api import trade_update_json
from syncd.sim.config import StreamConflict
from syncd.sim.engine import Exchange, SimAccount, TradeEvent
from syncd.sim.faults import Faults

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    account: int
    binary: bool
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    listening: bool = False
    sender: asyncio.Task[None] | None = None

    def put(self, message: dict[str, Any]) -> None:
        self.queue.put_nowait(json.dumps(message, separators=(",", ":")))

    async def run_sender(self) -> None:
        while True:
            text = await self.queue.get()
            if text is None or self.ws.closed:
                return
            try:
                if self.binary:
                    await self.ws.send_bytes(text.encode())
                else:
                    await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return


_AUTH_FAILED = "access key verification failed"


def _error_reply(message: str) -> dict[str, Any]:
    return {"stream": "error", "data": {"error_message": message}}


def _auth_reply(status: str, message: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"action": "authenticate", "status": status}
    if message:
        data["message"] = message
    return {"stream": "authorization", "data": data}


class StreamHub:
    """Every live ``trade_updates`` connection, at most one per account."""

    def __init__(self, exchange: Exchange, faults: Faults, conflict: StreamConflict) -> None:
        self.exchange = exchange
        self.faults = faults
        self.conflict = conflict
        self._conns: dict[int, _Conn] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        exchange.listeners.append(self._on_event)

    def connected(self, account: int | None = None) -> int:
        """How many accounts have a live, authenticated connection (or whether one has)."""
        if account is None:
            return len(self._conns)
        return int(account in self._conns)

    def listening(self, account: int) -> bool:
        conn = self._conns.get(account)
        return conn is not None and conn.listening

    def _on_event(self, event: TradeEvent) -> None:
        conn = self._conns.get(event.account)
        if conn is None or not conn.listening:
            return
        conn.put(
            trade_update_json(
                event.event,
                event.order,
                event.at,
                execution_id=event.execution_id,
                price=event.price,
                qty=event.qty,
                position_qty=event.position_qty,
            )
        )

    async def disconnect(self, account: int | None = None) -> int:
        """Close the server side of one account's connection (or every one)."""
        sockets = [c.ws for a, c in self._conns.items() if account is None or a == account]
        if account is None:
            sockets = list(self._sockets)
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
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                binary = msg.type == WSMsgType.BINARY
                try:
                    data = json.loads(msg.data)
                    if not isinstance(data, dict):
                        raise ValueError("not an object")
                except ValueError:
                    await self._send_direct(ws, binary, _error_reply("invalid syntax"))
                    continue
                action = data.get("action")
                if action in ("auth", "authenticate"):
                    if conn is not None:
                        conn.put(_auth_reply("authorized"))
                        continue
                    conn = await self._authenticate(ws, binary, data)
                    if conn is None:
                        break
                elif action == "listen":
                    if conn is None:
                        await self._send_direct(ws, binary, _auth_reply("unauthorized", _AUTH_FAILED))
                        break
                    streams = (data.get("data") or {}).get("streams") or []
                    conn.listening = "trade_updates" in streams
                    conn.put({"stream": "listening", "data": {"streams": [s for s in streams if s == "trade_updates"]}})
                else:
                    await self._send_direct(ws, binary, _error_reply(f"unrecognized action {action!r}"))
        finally:
            self._sockets.discard(ws)
            if conn is not None:
                if self._conns.get(conn.account) is conn:
                    del self._conns[conn.account]
                conn.queue.put_nowait(None)
                if conn.sender is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await conn.sender
            if not ws.closed:
                await ws.close()
        return ws

    async def _send_direct(self, ws: web.WebSocketResponse, binary: bool, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"))
        with contextlib.suppress(ConnectionError, RuntimeError):
            if binary:
                await ws.send_bytes(text.encode())
            else:
                await ws.send_str(text)

    def _lookup(self, data: dict[str, Any]) -> tuple[SimAccount | None, str]:
        if data.get("action") == "auth":
            key, secret = data.get("key"), data.get("secret")
        else:
            inner = data.get("data") or {}
            key, secret = inner.get("key_id"), inner.get("secret_key")
        acct = self.exchange.by_key.get(key) if isinstance(key, str) else None
        return acct, secret if isinstance(secret, str) else ""

    async def _authenticate(self, ws: web.WebSocketResponse, binary: bool, data: dict[str, Any]) -> _Conn | None:
        acct, secret = self._lookup(data)
        if acct is None or secret != acct.api_secret or acct.index in self.faults.auth_failed:
            await self._send_direct(ws, binary, _auth_reply("unauthorized", _AUTH_FAILED))
            return None
        existing = self._conns.get(acct.index)
        if existing is not None and not existing.ws.closed:
            if self.conflict == "reject":
                log.info("sim_stream_rejected", account=acct.name, reason="connection limit exceeded")
                await self._send_direct(ws, binary, _auth_reply("unauthorized", "connection limit exceeded"))
                return None
            await existing.ws.close(code=1008, message=b"replaced by a newer connection")
        conn = _Conn(ws, acct.index, binary)
        conn.sender = asyncio.create_task(conn.run_sender(), name=f"sim-stream-{acct.name}")
        self._conns[acct.index] = conn
        conn.put(_auth_reply("authorized"))
        return conn
