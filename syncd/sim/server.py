"""The ``Simulator``: one aiohttp server for every dialect, and the knobs tests turn."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Literal

import structlog
from aiohttp import web
from pydantic import SecretStr

from syncd.settings import AccountSettings
from syncd.sim.admin_api import AdminApi
from syncd.sim.alpaca_api import AlpacaApi
from syncd.sim.alpaca_stream import StreamHub
from syncd.sim.book import make_builder
from syncd.sim.config import SimConfig
from syncd.sim.engine import (
    Exchange,
    LegSpec,
    OrderSpec,
    SimAccount,
    SimOrder,
    SimPosition,
    TradeEvent,
    expiry_time,
)
from syncd.sim.faults import Faults
from syncd.sim.market import Market, SimClock
from syncd.sim.quote_stream import QuoteHub
from syncd.sim.tradier_api import TradierApi
from syncd.sim.tradier_stream import STREAM_PATH, TradierEventsHub
from syncd.sim.wire import html_error, json_response

log = structlog.get_logger(__name__)

AccountRef = int | str | SimAccount
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Broker = Literal["alpaca", "tradier"]
_BUDGET = {"alpaca": 200, "tradier": 120}


class Simulator:
    """A running (after ``start``) simulated broker; see the package docstring."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.clock = SimClock(config.clock, config.start_time)
        self.market = Market(
            config.seed, self.clock, market_open=config.market_open, volatility_scale=config.volatility_scale
        )
        builder = make_builder(self.market, config.seed, config.positions_per_account)
        self.exchange = Exchange(config, self.market, builder)
        self.faults = Faults(config.seed)
        self.streams = StreamHub(self.exchange, self.faults, config.stream_conflict)
        self._tradier_api = TradierApi(self.exchange, self.faults)
        self.tradier_events = TradierEventsHub(
            self.exchange, self.faults, self._tradier_api, heartbeat_s=config.tradier_heartbeat_s
        )
        self.tradier_stream_url = ""
        self.quotes = QuoteHub(self.exchange, self.faults)  # market data: /v2/{feed}, /v1beta1/{feed}
        self.request_counts: Counter[str] = Counter()  # "METHOD /path" -> requests (admin excluded)
        self.request_count = 0
        self.url = ""
        self.stream_url = ""
        self.data_stream_url = ""
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024 * 1024)
        app.add_routes(AlpacaApi(self.exchange, self.faults).routes())
        app.add_routes(self._tradier_api.routes())
        app.add_routes(self.tradier_events.routes())
        app.add_routes([web.get("/stream", self.streams.handle)])
        app.add_routes(self.quotes.routes())
        app.add_routes(AdminApi(self).routes())
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        self.url = f"http://{shown}:{port}"
        self.stream_url = f"ws://{shown}:{port}/stream"
        self.tradier_stream_url = self.tradier_events.url = f"ws://{shown}:{port}{STREAM_PATH}"
        self.data_stream_url = f"ws://{shown}:{port}"  # + /v2/{feed} or /v1beta1/{feed}
        if self.config.tick_s is not None:
            self._ticker = asyncio.create_task(self._tick_forever(self.config.tick_s), name="sim-ticker")
        log.info("sim_started", url=self.url, accounts=len(self.accounts), seed=self.config.seed)

    async def stop(self) -> None:
        """Stop ticking, close every stream, stop serving."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.streams.disconnect()
        await self.tradier_events.disconnect()
        await self.quotes.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("sim_stopped", requests=self.request_count)

    async def __aenter__(self) -> Simulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _tick_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.tick()

    # -- accounts ------------------------------------------------------------------

    @property
    def accounts(self) -> list[SimAccount]:
        return self.exchange.accounts

    def account(self, which: AccountRef) -> SimAccount:
        """By index, name (``sim-3``), Alpaca key or Tradier account id."""
        return self.exchange.account(which)

    def account_settings(self, i: int, broker: Broker = "alpaca", name: str | None = None) -> AccountSettings:
        """A valid ``AccountSettings`` for sim account ``i``, every URL pointing here."""
        if not self.url:
            raise RuntimeError("start the simulator first: its URL is not known yet")
        acct = self.accounts[i]
        if broker == "alpaca":
            return AccountSettings(
                name=name or f"sim-alpaca-{i}",
                broker="alpaca",
                paper=True,
                api_key=SecretStr(acct.api_key),
                api_secret=SecretStr(acct.api_secret),
                base_url=self.url,
                data_url=self.url,
                stream_url=self.stream_url,
                data_stream_url=self.data_stream_url,
            )
        return AccountSettings(
            name=name or f"sim-tradier-{i}",
            broker="tradier",
            sandbox=True,
            account_id=acct.tradier_account_id,
            token=SecretStr(acct.tradier_token),
            base_url=self.url,
            stream_url=self.tradier_stream_url,
            market_stream_url=f"{self.data_stream_url}/v1/markets/events",
        )

    def share_tradier_token(self, *accounts: AccountRef) -> str:
        """One Tradier token for several accounts (the first one's), as one Tradier user holding
        them: REST calls reach each account with it, and one account events stream carries all."""
        return self.exchange.share_tradier_token(self.account(a).index for a in accounts)

    # -- the market ----------------------------------------------------------------

    def tick(self, n: int = 1) -> None:
        """``n`` market steps: prices walk, working orders match (no sleeping involved).

        Each step is ``SimConfig.tick_sim_s`` simulated seconds; with a manual clock the
        clock moves by as much (a wall clock moves by itself).
        """
        for _ in range(n):
            step = self.config.tick_sim_s
            if self.clock.mode == "manual":
                self.clock.advance(step)
            self.market.tick(step)
            self.exchange.match_all()
        self.quotes.publish()

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` ahead, ticking the market along the way, and let
        the event loop deliver what that produced (stream events)."""
        steps = max(1, math.ceil(seconds / self.config.tick_sim_s))
        for _ in range(steps):
            self.clock.advance(seconds / steps)
            self.market.tick(seconds / steps)
            self.exchange.match_all()
            self.quotes.publish()
            await asyncio.sleep(0)

    def expire(self, on: dt.date | None = None) -> int:
        """Move the clock to just after the close of ``on`` (default: the earliest expiration of a
        held option) and settle what expired: ITM by more than $0.01 exercised or assigned, the
        rest worthless (see :mod:`syncd.sim.engine`). A clock already past it only settles.
        Returns how many positions were settled."""
        if on is None:
            held = [
                inst.expiration
                for acct in self.exchange.accounts
                if acct.built
                for pos in acct.positions.values()
                if (inst := self.market.instrument(pos.symbol)) is not None and inst.expiration is not None
            ]
            if not held:
                return 0
            on = min(held)
        target = expiry_time(on) + dt.timedelta(seconds=1)
        now = self.clock.now()
        if now < target:
            self.clock.advance((target - now).total_seconds())
        settled = self.exchange.expire_due(force=True)
        self.exchange.match_all()
        return settled

    def assign_early(self, account: AccountRef, symbol: str) -> None:
        """Assign a short option (exercise a long one) of ``account`` now, before its expiry, as the
        OCC may an American-style contract: the shares are booked at the strike and the records are
        an expiry's (see :meth:`syncd.sim.engine.Exchange.assign_early`)."""
        self.exchange.assign_early(self.account(account), symbol)
        self.exchange.match_all()

    def set_price(self, symbol: str, bid: Decimal | float | str, ask: Decimal | float | str) -> None:
        """Pin a quote (a stock's options reprice from it); working orders match at once."""
        self.market.set_price(symbol, bid, ask)
        self.exchange.match_all()
        self.quotes.publish()

    def unpin(self, symbol: str) -> None:
        self.market.unpin(symbol)

    def set_market_open(self, is_open: bool) -> None:
        """Open (accepted orders go live and match) or close (working day orders expire)."""
        self.exchange.set_market_open(is_open)
        if is_open:
            self.exchange.match_all()

    # -- orders and positions ------------------------------------------------------

    def order(self, order_id: str | int) -> SimOrder:
        """By Alpaca uuid, Tradier id or client order id."""
        return self.exchange.order(order_id)

    def fill(
        self,
        order_id: str | int,
        qty: Decimal | int | str | None = None,
        price: Decimal | float | str | None = None,
    ) -> SimOrder:
        """Fill an order now (all that remains, or ``qty``), at the market or at ``price``,
        whatever the market state or its limit. A multi-leg ``price`` is the net price
        (the first leg's price is moved to make it exact)."""
        order = self.exchange.order(order_id)
        return self.exchange.force_fill(
            order,
            None if qty is None else Decimal(str(qty)),
            None if price is None else Decimal(str(price)),
        )

    def cancel(self, order_id: str | int) -> SimOrder:
        """Cancel an order as if by hand at the broker."""
        return self.exchange.cancel(self.exchange.order(order_id))

    def place_outside_order(
        self,
        account: AccountRef,
        symbol: str | None = None,
        side: str | None = None,
        qty: Decimal | int | str = 1,
        *,
        type: str = "market",
        limit_price: Decimal | float | str | None = None,
        time_in_force: str = "day",
        legs: Sequence[LegSpec | tuple[str, str, int]] = (),
        client_order_id: str | None = None,
        tag: str | None = None,
    ) -> SimOrder:
        """An order placed "by hand" at the broker, not through syncd. It is matched like
        any other (at once when the market is open and ``fill_on_submit``) and shows in
        order lists and the stream. Raises ``SimReject`` when the broker would refuse it."""
        acct = self.account(account)
        leg_specs = tuple(x if isinstance(x, LegSpec) else LegSpec(x[0], x[1], x[2]) for x in legs)
        spec = OrderSpec(
            qty=Decimal(str(qty)),
            type=type,
            time_in_force=time_in_force,
            limit_price=None if limit_price is None else Decimal(str(limit_price)),
            symbol=symbol,
            side=side,
            legs=leg_specs,
            client_order_id=client_order_id,
            tag=tag,
            source="outside",
        )
        order = self.exchange.submit(acct, spec)
        self.exchange.after_submit(order)
        return order

    def add_position(
        self, account: AccountRef, symbol: str, qty: Decimal | int | str, avg: Decimal | float | str
    ) -> SimPosition:
        """Set a position directly (replacing any held); qty 0 removes it. Cash is untouched."""
        return self.exchange.add_position(self.account(account), symbol, Decimal(str(qty)), Decimal(str(avg)))

    def remove_position(self, account: AccountRef, symbol: str) -> None:
        """Delete a position directly (as a transfer out would). Cash is untouched."""
        self.exchange.remove_position(self.account(account), symbol)

    def set_cash(self, account: AccountRef, cash: Decimal | float | str) -> None:
        acct = self.account(account)
        acct.cash = Decimal(str(cash))
        acct.touch()

    @property
    def events(self) -> list[TradeEvent]:
        """Every trade event so far (the last 10,000), oldest first."""
        return list(self.exchange.events)

    async def disconnect_streams(self, account: AccountRef | None = None) -> int:
        """Close trade_updates and Tradier account events connections from the server side (to test reconnects)."""
        index = None if account is None else self.account(account).index
        return await self.streams.disconnect(index) + await self.tradier_events.disconnect(index)

    def requests(self, path_prefix: str = "", method: str | None = None) -> int:
        """Broker requests received whose path starts with ``path_prefix``."""
        total = 0
        for key, n in self.request_counts.items():
            m, _, path = key.partition(" ")
            if path.startswith(path_prefix) and (method is None or m == method.upper()):
                total += n
        return total

    # -- the middleware: counting and faults ---------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        path, method = request.path, request.method
        if path.startswith("/_sim"):
            return await handler(request)
        self.request_count += 1
        self.request_counts[f"{method} {path}"] += 1
        if path in ("/stream", "/v1/accounts/events") or QuoteHub.is_stream_path(path):  # websockets: no HTTP faults
            return await handler(request)
        dialect = "tradier" if path.startswith("/v1/") else "alpaca"
        faults = self.faults
        if faults.latency_s > 0:
            await asyncio.sleep(faults.latency_s)
        rule = faults.take_fail(method, path)
        if rule is not None:
            return _error(dialect, rule.status, rule.body, rule.retry_after)
        if faults.rate_limit_every > 0 and self.request_count % faults.rate_limit_every == 0:
            return _error(dialect, 429, "json", faults.retry_after_s)
        credential = _credential(request, dialect)
        if credential:
            wait = faults.over_budget(credential, _BUDGET[dialect])
            if wait is not None:
                return _error(dialect, 429, "json", wait)
        if faults.roll_error():
            return _error(dialect, 500, faults.error_body, None)
        response = await handler(request)
        if faults.take_drop(method, path):
            log.info("sim_response_dropped", method=method, path=path)
            if request.transport is not None:
                request.transport.abort()
        return response


def _credential(request: web.Request, dialect: str) -> str:
    if dialect == "alpaca":
        return request.headers.get("APCA-API-KEY-ID", "")
    return request.headers.get("Authorization", "")


def _error(dialect: str, status: int, body: str, retry_after: float | None) -> web.Response:
    if body == "html":
        resp = html_error(status)
    elif dialect == "alpaca":
        code = {429: 42910000, 500: 50010000}.get(status, status * 100_000)
        message = "rate limit exceeded" if status == 429 else "internal server error"
        resp = json_response({"code": code, "message": message}, status=status)
    else:
        fault = "Rate limit quota violation" if status == 429 else "Internal Server Error"
        errorcode = (
            "policies.ratelimit.QuotaViolation" if status == 429 else "messaging.adaptors.http.flow.ServiceUnavailable"
        )
        resp = json_response({"fault": {"faultstring": fault, "detail": {"errorcode": errorcode}}}, status=status)
    if status == 429:
        wait = 1.0 if retry_after is None else retry_after
        resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        if dialect == "alpaca":
            resp.headers["X-Ratelimit-Limit"] = "200"
            resp.headers["X-Ratelimit-Remaining"] = "0"
            resp.headers["X-Ratelimit-Reset"] = str(int(time.time() + wait))
        else:
            resp.headers["X-Ratelimit-Allowed"] = "120"
            resp.headers["X-Ratelimit-Used"] = "120"
            resp.headers["X-Ratelimit-Available"] = "0"
            resp.headers["X-Ratelimit-Expiry"] = str(int((time.time() + wait) * 1000))
    elif retry_after is not None:
        resp.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return resp


async def start_simulator(config: SimConfig | None = None) -> Simulator:
    """Build and start a simulator; ``await sim.stop()`` when done (or ``async with``)."""
    sim = Simulator(config or SimConfig())
    await sim.start()
    return sim
