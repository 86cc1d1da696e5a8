"""Tradier's account events stream on the wire: the session request (aioresponses) and the
websocket against a fake server of our own (subscribe, heartbeats, bad frames, drops, one
connection per token). Deadlines are conditions (``wait_for``), never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aioresponses import aioresponses
from pydantic import SecretStr

from syncd.brokers.base import BadBrokerData, BrokerAuthFailed, BrokerError, BrokerUnavailable
from syncd.brokers.factory import build_broker
from syncd.brokers.sanity import check_update
from syncd.brokers.tradier import TradierBroker
from syncd.brokers.tradier_stream import LIVE_STREAM_URL, SANDBOX_STREAM_URL
from syncd.brokers.types import OrderStatus, Side, TradeUpdate
from syncd.settings import AccountSettings
from tests.helpers import wait_for
from tests.unit.broker_wire import Recorder, calls, url_pattern
from tests.unit.test_tradier_wire import order_json

TOKEN = "tradier-stream-token-0123456789"
BASE = "https://sandbox.tradier.com"
ACCT = "VA12345678"
OTHER = "VA87654321"
SESSION_BODY = {"stream": {"url": "wss://sandbox-ws.tradier.com/v1/accounts/events", "sessionid": "sid-1"}}


def event(**over: Any) -> dict[str, Any]:
    """An order event as Tradier's "Account Streaming Responses" shows it."""
    base: dict[str, Any] = {
        "id": 228175,
        "event": "order",
        "status": "filled",
        "type": "market",
        "price": 0.0,
        "stop_price": 0.0,
        "avg_fill_price": 10.0,
        "exec_quantity": 10.0,
        "last_fill_quantity": 10.0,
        "last_fill_price": 10.0,
        "remaining_quantity": 0.0,
        "transaction_date": "2026-01-05T15:00:02.000Z",
        "create_date": "2026-01-05T15:00:00.000Z",
        "account": ACCT,
    }
    base.update(over)
    return base


# -- the session request -------------------------------------------------------------------------


@pytest.fixture
def broker(session: aiohttp.ClientSession, rec: Recorder) -> TradierBroker:
    account = AccountSettings(name="tradier-wire", broker="tradier", account_id=ACCT, token=SecretStr(TOKEN))
    return TradierBroker(account, session=session, **rec.wiring())


def test_stream_url_defaults_by_sandbox(session: aiohttp.ClientSession) -> None:
    sandbox = AccountSettings(name="a", broker="tradier", account_id=ACCT, token=SecretStr(TOKEN))
    live = AccountSettings(name="b", broker="tradier", account_id=ACCT, token=SecretStr(TOKEN), sandbox=False)
    given = AccountSettings(
        name="c", broker="tradier", account_id=ACCT, token=SecretStr(TOKEN), stream_url="ws://127.0.0.1:1/x"
    )
    assert TradierBroker(sandbox, session=session, timeout_s=1).stream_url == SANDBOX_STREAM_URL
    assert TradierBroker(live, session=session, timeout_s=1).stream_url == LIVE_STREAM_URL
    assert TradierBroker(given, session=session, timeout_s=1).stream_url == "ws://127.0.0.1:1/x"
    assert SANDBOX_STREAM_URL == "wss://sandbox-ws.tradier.com/v1/accounts/events"
    assert LIVE_STREAM_URL == "wss://ws.tradier.com/v1/accounts/events"


async def test_session_created(broker: TradierBroker, mock: aioresponses) -> None:
    mock.post(url_pattern(BASE, "/v1/accounts/events/session"), payload=SESSION_BODY)
    assert await broker.events.create_session() == "sid-1"
    ((_, _, kw),) = calls(mock, "POST")
    assert kw["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert kw["headers"]["Accept"] == "application/json"


async def test_session_refused_token_is_auth_failed(broker: TradierBroker, mock: aioresponses) -> None:
    mock.post(url_pattern(BASE, "/v1/accounts/events/session"), status=401, body="Invalid Access Token")
    with pytest.raises(BrokerAuthFailed) as err:
        await broker.events.create_session()
    assert TOKEN not in str(err.value)


@pytest.mark.parametrize(
    "body",
    [
        "<html>not json</html>",
        json.dumps({"stream": "null"}),
        json.dumps({"stream": {"url": "wss://x"}}),
        json.dumps({"stream": {"sessionid": " "}}),
        json.dumps([1, 2]),
    ],
)
async def test_session_malformed_answer_is_bad_data(broker: TradierBroker, mock: aioresponses, body: str) -> None:
    mock.post(url_pattern(BASE, "/v1/accounts/events/session"), status=200, body=body, content_type="application/json")
    with pytest.raises(BadBrokerData):
        await broker.events.create_session()


async def test_session_server_error_retried_then_unavailable(
    broker: TradierBroker, mock: aioresponses, rec: Recorder
) -> None:
    for _ in range(3):
        mock.post(url_pattern(BASE, "/v1/accounts/events/session"), status=503, body="down")
    with pytest.raises(BrokerUnavailable):
        await broker.events.create_session()
    assert len(calls(mock, "POST")) == 3 and len(rec.sleeps) == 2


# -- a fake Tradier: session, websocket, orders ---------------------------------------------------


class FakeTradier:
    """Just enough Tradier for the stream: ``/v1/accounts/events/session``, the websocket, GET order."""

    def __init__(self) -> None:
        self.sessions = 0
        self.session_status = 200
        self.subscriptions: list[dict[str, Any]] = []
        self.sockets: list[web.WebSocketResponse] = []
        self.orders: dict[str, dict[str, Any]] = {}
        self.order_gets = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/accounts/events/session", self._session)
        app.router.add_get("/v1/accounts/events", self._ws)
        app.router.add_get("/v1/accounts/{acct}/orders/{oid}", self._order)
        app.router.add_get("/v1/accounts/{acct}/orders", self._orders)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def settings(self, name: str = "t0", account_id: str = ACCT, token: str = TOKEN) -> AccountSettings:
        return AccountSettings(
            name=name,
            broker="tradier",
            account_id=account_id,
            token=SecretStr(token),
            base_url=self.url,
            stream_url=self.url.replace("http", "ws") + "/v1/accounts/events",
        )

    async def _session(self, request: web.Request) -> web.Response:
        if self.session_status != 200:
            return web.Response(status=self.session_status, text="Invalid Access Token")
        self.sessions += 1
        return web.json_response({"stream": {"url": "ws://here", "sessionid": f"sid-{self.sessions}"}})

    async def _order(self, request: web.Request) -> web.Response:
        self.order_gets += 1
        d = self.orders.get(request.match_info["oid"])
        if d is None:
            return web.Response(status=404, text="not found")
        return web.json_response({"order": d})

    async def _orders(self, request: web.Request) -> web.Response:
        return web.json_response({"orders": {"order": list(self.orders.values())}})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.subscriptions.append(json.loads(msg.data))
                self.sockets.append(ws)
        with contextlib.suppress(ValueError):
            self.sockets.remove(ws)
        return ws

    async def send(self, frame: Any) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        for ws in list(self.sockets):
            await ws.send_str(text)


@pytest_asyncio.fixture(loop_scope="function")
async def fake() -> AsyncIterator[FakeTradier]:
    server = FakeTradier()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _collect(it: AsyncIterator[TradeUpdate], out: list[TradeUpdate | BaseException]) -> None:
    try:
        async for u in it:
            out.append(u)
    except BrokerError as exc:  # the test looks at how the stream ended
        out.append(exc)


@contextlib.asynccontextmanager
async def consuming(broker: TradierBroker) -> AsyncIterator[list[TradeUpdate | BaseException]]:
    got: list[TradeUpdate | BaseException] = []
    task = asyncio.create_task(_collect(broker.trade_updates(), got))
    try:
        yield got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_subscribes_and_turns_an_event_into_an_update(fake: FakeTradier, session: aiohttp.ClientSession) -> None:
    """The event says filled at 10.00; the GET of the order (Tradier's late fill price) shows avg 0: the event wins."""
    broker = TradierBroker(fake.settings(), session=session, timeout_s=5)
    fake.orders["228175"] = order_json(status="filled", exec_quantity=10.0, avg_fill_price=0.0, remaining_quantity=0)
    async with consuming(broker) as got:
        await wait_for(lambda: fake.sockets, what="subscribed")
        assert fake.subscriptions == [{"events": ["order"], "sessionid": "sid-1", "excludeAccounts": []}]
        await fake.send({"event": "heartbeat", "status": "active", "timestamp": "2026-01-05T15:00:01.028929606Z"})
        await fake.send(event())
        await wait_for(lambda: got, what="an update")
    (update,) = got
    assert isinstance(update, TradeUpdate)
    assert update.event == "fill" and update.cumulative
    assert update.order.broker_order_id == "228175" and update.order.symbol == "AAPL"
    assert update.order.side == Side.BUY and update.order.client_order_id == "syncd-1"
    assert update.order.status == OrderStatus.FILLED and update.order.filled_qty == 10
    assert update.order.filled_avg_price == Decimal("10.0")
    assert update.qty == 10 and update.price == Decimal("10.0")
    assert update.at.isoformat() == "2026-01-05T15:00:02+00:00"


async def test_event_ahead_of_the_order_answer_wins_its_fill(fake: FakeTradier, session: aiohttp.ClientSession) -> None:
    broker = TradierBroker(fake.settings(), session=session, timeout_s=5)
    fake.orders["228175"] = order_json(status="open", exec_quantity=0.0)
    async with consuming(broker) as got:
        await wait_for(lambda: fake.sockets, what="subscribed")
        await fake.send(event(status="partially_filled", exec_quantity=4.0, avg_fill_price=9.5, remaining_quantity=6.0))
        await wait_for(lambda: got, what="an update")
    (update,) = got
    assert isinstance(update, TradeUpdate)
    assert update.event == "partial_fill"
    assert update.order.status == OrderStatus.PARTIALLY_FILLED
    assert update.order.filled_qty == 4 and update.order.qty == 10


async def test_bad_frames_are_skipped_and_the_stream_goes_on(fake: FakeTradier, session: aiohttp.ClientSession) -> None:
    broker = TradierBroker(fake.settings(), session=session, timeout_s=5)
    fake.orders["228175"] = order_json()
    async with consuming(broker) as got:
        await wait_for(lambda: fake.sockets, what="subscribed")
        for frame in (
            "not json{",
            "[1, 2]",
            event(id="abc"),  # not an order id
            event(status="teleported"),  # unknown status
            event(exec_quantity="NaN"),  # not a finite number
            event(transaction_date="yesterday"),
            event(id=999),  # an order the broker does not know (404): left to the poll
            event(account=OTHER),  # another account of the token nobody follows here
            {"event": "something_new"},
        ):
            await fake.send(frame)
        await fake.send(event(status="open", exec_quantity=0.0, avg_fill_price=0.0))
        await wait_for(lambda: got, what="the good event")
    assert len(got) == 1 and isinstance(got[0], TradeUpdate) and got[0].event == "new"
    assert broker.events.bad_frames == 2


async def test_event_that_cannot_be_true_is_refused_by_the_sanity_check(
    fake: FakeTradier, session: aiohttp.ClientSession
) -> None:
    broker = TradierBroker(fake.settings(), session=session, timeout_s=5)
    fake.orders["228175"] = order_json(status="open", quantity=10.0)
    async with consuming(broker) as got:
        await wait_for(lambda: fake.sockets, what="subscribed")
        await fake.send(event(exec_quantity=12.0))  # more filled than ordered
        await wait_for(lambda: got, what="an update")
    (update,) = got
    assert isinstance(update, TradeUpdate)

    def bad(message: str, field: str) -> BadBrokerData:
        return BadBrokerData(message, field=field)

    with pytest.raises(BadBrokerData, match="exceeds its qty"):
        check_update(update, "trade_update", bad)


async def test_silence_beyond_the_heartbeat_timeout_drops_and_a_new_session_reconnects(
    fake: FakeTradier, session: aiohttp.ClientSession
) -> None:
    broker = TradierBroker(fake.settings(), session=session, timeout_s=5)
    broker.events.heartbeat_timeout_s = 0.3
    async with consuming(broker) as got:
        await wait_for(lambda: got, timeout=10, what="the stream to give up on silence")
    assert isinstance(got[0], BrokerUnavailable) and "heartbeat" in str(got[0])
    fake.orders["228175"] = order_json()
    broker.events.heartbeat_timeout_s = 30
    async with consuming(broker) as again:
        await wait_for(lambda: len(fake.subscriptions) == 2, what="a second subscription")
        await fake.send(event())
        await wait_for(lambda: again, what="an update after the reconnect")
    assert fake.sessions == 2 and fake.subscriptions[1]["sessionid"] == "sid-2"  # a fresh session
    assert isinstance(again[0], TradeUpdate)


async def test_heartbeats_keep_a_quiet_stream_alive(fake: FakeTradier, session: aiohttp.ClientSession) -> None:
    broker = TradierBroker(fake.settings(), session=session, timeout_s=5)
    broker.events.heartbeat_timeout_s = 0.5
    fake.orders["228175"] = order_json()
    async with consuming(broker) as got:
        await wait_for(lambda: fake.sockets, what="subscribed")
        for _ in range(6):  # 6 x 0.2 s = longer than the timeout, but never silent for 0.5 s
            await fake.send({"event": "heartbeat", "status": "active", "timestamp": "2026-01-05T15:00:00Z"})
            await asyncio.sleep(0.2)  # pacing the fake server's heartbeats, not waiting for a result
        await fake.send(event())
        await wait_for(lambda: got, what="an update")
    assert isinstance(got[0], TradeUpdate) and fake.sessions == 1


async def test_server_close_ends_the_stream_with_unavailable(fake: FakeTradier, session: aiohttp.ClientSession) -> None:
    broker = TradierBroker(fake.settings(), session=session, timeout_s=5)
    async with consuming(broker) as got:
        await wait_for(lambda: fake.sockets, what="subscribed")
        for ws in list(fake.sockets):
            await ws.close(code=1008, message=b"invalid session")
        await wait_for(lambda: got, what="the stream to end")
    assert isinstance(got[0], BrokerUnavailable) and "closed" in str(got[0])
    assert not broker.events.connected


async def test_refused_token_ends_the_stream_with_auth_failed(
    fake: FakeTradier, session: aiohttp.ClientSession
) -> None:
    fake.session_status = 401
    broker = TradierBroker(fake.settings(), session=session, timeout_s=5)
    async with consuming(broker) as got:
        await wait_for(lambda: got, what="the stream to end")
    assert isinstance(got[0], BrokerAuthFailed) and TOKEN not in str(got[0])
    assert fake.subscriptions == []


async def test_accounts_under_one_token_share_one_session(fake: FakeTradier, session: aiohttp.ClientSession) -> None:
    shared: dict[Any, Any] = {}
    a = build_broker(fake.settings("t0", ACCT), session=session, timeout_s=5, shared=shared)
    b = build_broker(fake.settings("t1", OTHER), session=session, timeout_s=5, shared=shared)
    c = build_broker(
        fake.settings("t2", "VA00000002", token="another-token"), session=session, timeout_s=5, shared=shared
    )
    assert isinstance(a, TradierBroker) and isinstance(b, TradierBroker) and isinstance(c, TradierBroker)
    assert a.events is b.events and a.events is not c.events
    fake.orders["228175"] = order_json()
    fake.orders["228176"] = order_json(id=228176, symbol="MSFT")
    async with consuming(a) as got_a, consuming(b) as got_b:
        await wait_for(lambda: a.events.subscribed() == {ACCT, OTHER} and fake.sockets, what="both subscribed")
        await fake.send(event())
        await fake.send(event(id=228176, account=OTHER))
        await wait_for(lambda: got_a and got_b, what="one update each")
    assert fake.sessions == 1 and len(fake.subscriptions) == 1
    ua, ub = got_a[0], got_b[0]
    assert isinstance(ua, TradeUpdate) and isinstance(ub, TradeUpdate)
    assert ua.order.symbol == "AAPL" and ub.order.symbol == "MSFT"
    await wait_for(lambda: not fake.sockets, what="the connection closed once nobody follows it")


async def test_a_known_order_needs_no_get_and_a_cancel_is_taken_from_the_event(
    fake: FakeTradier, session: aiohttp.ClientSession
) -> None:
    """The adapter remembers orders it has seen (polls, placements, events): their events cost no request."""
    broker = TradierBroker(fake.settings(), session=session, timeout_s=5)
    fake.orders["228175"] = order_json(status="open", exec_quantity=0.0)
    await broker.list_orders()  # a poll: the order is known now
    gets = fake.order_gets
    async with consuming(broker) as got:
        await wait_for(lambda: fake.sockets, what="subscribed")
        await fake.send(event(status="partially_filled", exec_quantity=4.0, avg_fill_price=9.5, remaining_quantity=6))
        await fake.send(event(status="partially_filled", exec_quantity=2.0, avg_fill_price=9.0))  # late, out of order
        await fake.send(event(status="canceled", exec_quantity=4.0, avg_fill_price=9.5, remaining_quantity=0))
        await wait_for(lambda: len(got) == 3, what="three updates")
    assert fake.order_gets == gets  # not one GET
    first, stale, canceled = got
    assert isinstance(first, TradeUpdate) and isinstance(stale, TradeUpdate) and isinstance(canceled, TradeUpdate)
    assert first.order.status == OrderStatus.PARTIALLY_FILLED and first.order.filled_qty == 4
    assert first.order.symbol == "AAPL"
    assert stale.order.filled_qty == 4  # an event behind what is known changes nothing
    assert canceled.order.status == OrderStatus.CANCELED and canceled.order.filled_qty == 4
    assert canceled.order.canceled_at is not None and canceled.event == "canceled"
