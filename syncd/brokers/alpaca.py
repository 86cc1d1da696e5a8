"""Alpaca: the ``Broker`` Protocol over aiohttp, parsed and built with alpaca-py's own models.

Trading API: ``{base_url}/v2/...``; market data: ``{data_url}/v2/stocks/snapshots`` and
``{data_url}/v1beta1/options/snapshots`` (batched); trade updates: alpaca-py's
``TradingStream`` driven inside our event loop (see :meth:`AlpacaBroker.trade_updates`).

alpaca-py's ``TradingClient`` is synchronous (``requests``), so we do the HTTP ourselves
(:mod:`syncd.brokers.http`) and use only its pydantic models: the JSON is validated by
the same code alpaca-py users rely on, and request bodies are exactly what
``TradingClient.submit_order`` would send (``.to_request_fields()``).

Multi-leg limit prices follow Alpaca's convention, which syncd uses everywhere: a
positive ``limit_price`` is a net debit, a negative one a net credit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar, cast
from urllib.parse import quote

import aiohttp
import msgspec
import structlog
from alpaca.trading import enums as ae
from alpaca.trading.models import Clock as AlpacaClock
from alpaca.trading.models import Order as AlpacaOrder
from alpaca.trading.models import Position as AlpacaPosition
from alpaca.trading.models import TradeAccount
from alpaca.trading.models import TradeUpdate as AlpacaTradeUpdate
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest, OptionLegRequest, ReplaceOrderRequest
from alpaca.trading.stream import TradingStream
from pydantic import ValidationError

from syncd.brokers.alpaca_quotes import snapshot_quote
from syncd.brokers.base import (
    AccountAnswer,
    BadBrokerData,
    BrokerAuthFailed,
    BrokerError,
    BrokerRejected,
    OrderStatusFilter,
    QuoteAnswer,
    answer_fingerprint,
    both,
)
from syncd.brokers.fast import FastDecoder, Slow, all_plain, number, number_or_none
from syncd.brokers.http import HttpCore, Reply, RequestHook, RetryPolicy
from syncd.brokers.occ import option_spec_or_none, parse_occ, parse_occ_cached
from syncd.brokers.parse import TooManyDigits, as_utc, batches, decimal_or_none, iso_z, plain
from syncd.brokers.ratelimit import ALPACA_PER_MIN, TokenBucket
from syncd.brokers.sanity import check_order, check_position, check_positions, check_quote
from syncd.brokers.types import (
    AssetClass,
    Balances,
    Clock,
    Intent,
    OptionEvent,
    OptionEventKind,
    Order,
    OrderClass,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Quote,
    ReplaceRequest,
    Side,
    TimeInForce,
    TradeUpdate,
)
from syncd.errors import backoff
from syncd.settings import AccountSettings

log = structlog.get_logger(__name__)

PAPER_URL = "https://paper-api.alpaca.markets"
LIVE_URL = "https://api.alpaca.markets"
DATA_URL = "https://data.alpaca.markets"
PAPER_STREAM_URL = "wss://paper-api.alpaca.markets/stream"
LIVE_STREAM_URL = "wss://api.alpaca.markets/stream"

ORDERS_PAGE = 500  # Alpaca's maximum page size for GET /v2/orders
ACTIVITIES_PAGE = 100  # page size asked of GET /v2/account/activities (Alpaca's default and maximum: 100)
# Alpaca's non-trade activity types for option events, and the stock trade an assignment or
# exercise books (docs.alpaca.markets: "Non-Trade Activities for Option Events").
OPTION_ACTIVITIES = {
    "OPEXP": OptionEventKind.EXPIRED,
    "OPASN": OptionEventKind.ASSIGNED,
    "OPEXC": OptionEventKind.EXERCISED,
    "OPTRD": OptionEventKind.STOCK,
}
STOCK_BATCH = 200  # symbols per stock-snapshot request (keeps the URL short)
OPTION_BATCH = 100  # Alpaca's documented maximum for option snapshots
OPTION_PAGE = 1000


class _OptionPage(msgspec.Struct):
    """What an option-snapshots page says of the next one (every other field skipped unread)."""

    next_page_token: str | None = None


_OPTION_PAGE_DECODER = msgspec.json.Decoder(_OptionPage)
STREAM_AUTH_ATTEMPTS = 4  # consecutive refused stream logins before BrokerAuthFailed

# alpaca-py ``Order.__init__`` turns "" into None for these keys, but only at the top level:
# nested legs and the order inside a TradeUpdate are validated without it. We do it everywhere.
_EMPTY_AS_NONE = ("asset_id", "symbol", "asset_class", "side", "position_intent", "type", "order_type")

# TradingStream internals we drive ourselves (alpaca-py 0.44): see ``trade_updates``.
_STREAM_INTERNALS = ("_start_ws", "_consume", "close")

_M = TypeVar("_M")

# The hot answers, decoded in C into mirrors of alpaca-py's models (see syncd.brokers.fast).
_POSITION_NUMBERS = ("qty", "qty_available", "avg_entry_price", "cost_basis", "current_price", "market_value")
_FAST_POSITIONS = FastDecoder(AlpacaPosition, many=True, plain=frozenset((*_POSITION_NUMBERS, "unrealized_pl")))
_FAST_ACCOUNT = FastDecoder(TradeAccount)
_ZERO = Decimal(0)


class AlpacaBroker:
    """One Alpaca account. Build it with :func:`syncd.brokers.factory.build_broker`."""

    def __init__(
        self,
        account: AccountSettings,
        *,
        session: aiohttp.ClientSession,
        timeout_s: float,
        on_request: RequestHook | None = None,
        limiter: TokenBucket | Literal[False] | None = None,
        retry: RetryPolicy | None = None,
        stream_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        stream_backoff: tuple[float, float] = (1.0, 30.0),
        orders_page: int = ORDERS_PAGE,
    ) -> None:
        if account.api_key is None or account.api_secret is None:
            raise ValueError(f"account {account.name!r}: alpaca needs api_key and api_secret")
        self.account = account
        self.base_url = (account.base_url or (PAPER_URL if account.paper else LIVE_URL)).rstrip("/")
        self.data_url = (account.data_url or DATA_URL).rstrip("/")
        self.stream_url = account.stream_url or (PAPER_STREAM_URL if account.paper else LIVE_STREAM_URL)
        self._key = account.api_key.get_secret_value()
        self._secret = account.api_secret.get_secret_value()
        if limiter is None:
            limiter = TokenBucket(account.rate_limit_per_min or ALPACA_PER_MIN)
        self.limiter = limiter or None
        self._http = HttpCore(
            broker="alpaca",
            account=account.name,
            session=session,
            timeout_s=timeout_s,
            headers={"APCA-API-KEY-ID": self._key, "APCA-API-SECRET-KEY": self._secret},
            limiter=self.limiter,
            retry=retry,
            on_request=on_request,
            reason_of=_reason_of,
            secrets=(self._key, self._secret),
        )
        self._timeout_s = timeout_s
        self._stream_sleep = stream_sleep
        self._stream_backoff = stream_backoff
        self._stream_active = False
        self._orders_page = orders_page

    # -- Protocol properties ------------------------------------------------------------

    @property
    def kind(self) -> str:
        return "alpaca"

    @property
    def request_count(self) -> int:
        return self._http.request_count

    @property
    def supports_stream(self) -> bool:
        return True

    async def aclose(self) -> None:
        """Nothing to release: the session belongs to the caller; streams end with their iterator."""

    # -- account, positions, clock ----------------------------------------------------------

    async def get_account(self) -> Balances:
        return self._balances(*await self._account_reply())

    def _account_reply(self) -> Awaitable[tuple[str, Reply]]:
        return self._http.request_reply("GET", f"{self.base_url}/v2/account", endpoint="/v2/account")

    def _balances(self, what: str, reply: Reply) -> Balances:
        try:
            return self._fast_account(reply)
        except Slow:
            return self._slow_account(what, reply)

    def _slow_account(self, what: str, reply: Reply) -> Balances:
        """The balances through ``json`` and alpaca-py's model, with every refusal's own message."""
        body = self._http.decode(what, reply)
        acct = self._model(TradeAccount, _obj(body, "account", self.account.name), "account")
        return Balances(
            broker_account_id=acct.account_number,
            equity=self._req_dec(acct.equity, "account.equity"),
            cash=self._req_dec(acct.cash, "account.cash"),
            buying_power=self._req_dec(acct.buying_power, "account.buying_power"),
            long_market_value=self._dec(acct.long_market_value, "account.long_market_value") or Decimal(0),
            short_market_value=self._dec(acct.short_market_value, "account.short_market_value") or Decimal(0),
            currency=acct.currency or "USD",
        )

    async def list_positions(self) -> list[Position]:
        return self._positions(*await self._positions_reply())

    def _positions_reply(self) -> Awaitable[tuple[str, Reply]]:
        return self._http.request_reply("GET", f"{self.base_url}/v2/positions", endpoint="/v2/positions")

    def _positions(self, what: str, reply: Reply) -> list[Position]:
        try:
            return self._fast_positions(reply)
        except Slow:
            return self._slow_positions(what, reply)

    async def account_answer(self) -> AccountAnswer:
        """Balances and positions requested at once, kept as bytes with their fingerprint; decoded on demand."""
        (what_b, balances), (what_p, positions) = await both(self._account_reply(), self._positions_reply())
        return AccountAnswer(
            lambda: (self._balances(what_b, balances), self._positions(what_p, positions)),
            answer_fingerprint(self.kind, balances.body, positions.body),
            balances=lambda: self._balances(what_b, balances),
            positions_key=lambda: self._positions_key(positions),
        )

    def _positions_key(self, reply: Reply) -> int | None:
        """``AccountAnswer.positions_key``: the fields of every position but its marks, as written.

        The marks are checked as :meth:`_fast_positions` checks them (plain numbers, a price not
        negative); the rest is what a position's row is made of (the symbol, its asset class and
        side, the quantities, the entry price and cost basis), so the same key means the same rows
        and the same checks passed. None where the fast decoder does not take the answer as it is.
        """
        try:
            rows = _FAST_POSITIONS.decode(reply.body)
        except Slow:
            return None
        dec = Decimal
        owned = []
        try:
            for p in rows:
                current, value, pl = p.current_price, p.market_value, p.unrealized_pl
                if not all_plain((current or "") + (value or "") + (pl or "")):
                    return None
                if current is not None and dec(current) < 0:
                    return None  # check_position refuses it: decode says so
                if value is not None:
                    dec(value)
                if pl is not None:
                    dec(pl)
                owned.append((p.symbol, p.asset_class, p.side, p.qty, p.qty_available, p.avg_entry_price, p.cost_basis))
        except InvalidOperation:
            return None
        return hash(tuple(owned))

    def _slow_positions(self, what: str, reply: Reply) -> list[Position]:
        """The positions through ``json`` and alpaca-py's model, with every refusal's own message."""
        rows = _list(self._http.decode(what, reply), "positions", self.account.name)
        positions = [self._position(_obj(p, f"positions[{i}]", self.account.name), i) for i, p in enumerate(rows)]
        return check_positions(positions, self._bad)

    def _fast_account(self, reply: Reply) -> Balances:
        """The balances, when the fast decoder takes the answer as it is (else ``Slow``; see get_account)."""
        acct = _FAST_ACCOUNT.decode(reply.body)
        if acct.equity is None or acct.cash is None or acct.buying_power is None:
            raise Slow
        return Balances(
            broker_account_id=acct.account_number,
            equity=number(acct.equity),
            cash=number(acct.cash),
            buying_power=number(acct.buying_power),
            long_market_value=number_or_none(acct.long_market_value) or _ZERO,
            short_market_value=number_or_none(acct.short_market_value) or _ZERO,
            currency=acct.currency or "USD",
        )

    def _fast_positions(self, reply: Reply) -> list[Position]:
        """The positions, when the fast decoder takes the answer as it is (else ``Slow``).

        The same conversion as :meth:`_position` and the same checks (``check_position``,
        ``check_positions``, run here with a ``bad`` that raises ``Slow``): whatever they would
        refuse goes the slow way, which refuses it with its usual message.
        """
        rows = _FAST_POSITIONS.decode(reply.body)
        out = []
        short, option_class, dec = ae.PositionSide.SHORT, ae.AssetClass.US_OPTION, Decimal
        try:
            for p in rows:
                qty, available, avg, cost = p.qty, p.qty_available, p.avg_entry_price, p.cost_basis
                current, value, pl = p.current_price, p.market_value, p.unrealized_pl
                # Each number is 1..15 characters (PlainNumber); made of digits, points and minus signs
                # only, Decimal(text) is decimal_or_none(text) or raises InvalidOperation (then: slow).
                if not all_plain(qty + avg + cost + (available or "") + (current or "") + (value or "") + (pl or "")):
                    raise Slow
                if p.symbol != p.symbol.strip():  # padded ("AAPL " in Alpaca's own example): the slow path strips it
                    raise Slow
                option = None
                if p.asset_class is option_class:
                    try:
                        option = parse_occ_cached(p.symbol)
                    except ValueError:
                        raise Slow from None
                quantity = dec(qty).copy_abs()
                if p.side is short:
                    quantity = quantity.copy_negate()
                    free = quantity if available is None else dec(available).copy_abs().copy_negate()
                else:
                    free = quantity if available is None else dec(available).copy_abs()
                position = Position(
                    symbol=p.symbol,
                    asset_class=_asset_class(p.asset_class),
                    quantity=quantity,
                    qty_available=free,
                    avg_entry_price=dec(avg),
                    cost_basis=dec(cost),
                    current_price=None if current is None else dec(current),
                    market_value=None if value is None else dec(value),
                    unrealized_pl=None if pl is None else dec(pl),
                    option=option,
                )
                out.append(check_position(position, "positions[]", _slow))
        except InvalidOperation:
            raise Slow from None
        return check_positions(out, _slow)

    async def get_clock(self) -> Clock:
        clock = self._model(AlpacaClock, _obj(await self._get("/v2/clock"), "clock", self.account.name), "clock")
        return Clock(
            is_open=clock.is_open,
            next_open=as_utc(clock.next_open),
            next_close=as_utc(clock.next_close),
            timestamp=as_utc(clock.timestamp),
        )

    # -- option expiry, assignment, exercise ------------------------------------------------

    async def list_option_events(self, since: dt.date) -> list[OptionEvent]:
        """``GET /v2/account/activities`` of types OPEXP, OPASN, OPEXC and OPTRD after the day before
        ``since``, oldest first, every page (``page_token``: the last id of a full page).

        An activity whose ``status`` is ``canceled`` (Alpaca took it back) is left out.
        """
        out: list[OptionEvent] = []
        seen: set[tuple[str, str]] = set()
        token: str | None = None
        while True:
            params = {
                "activity_types": ",".join(OPTION_ACTIVITIES),
                "after": (since - dt.timedelta(days=1)).isoformat(),
                "direction": "asc",
                "page_size": str(ACTIVITIES_PAGE),
            }
            if token is not None:
                params["page_token"] = token
            body = await self._get("/v2/account/activities", params=params)
            rows = _list(body, "activities", self.account.name)
            fresh = 0
            for i, row in enumerate(rows):
                event = self._activity(_obj(row, f"activities[{i}]", self.account.name), f"activities[{i}]")
                if event is None or (event.event_id, event.kind.value) in seen:
                    continue
                seen.add((event.event_id, event.kind.value))
                out.append(event)
                fresh += 1
            if len(rows) < ACTIVITIES_PAGE or not fresh:
                break
            last_id = rows[-1].get("id") if isinstance(rows[-1], dict) else None
            if not isinstance(last_id, str) or last_id == token:
                break
            token = last_id
        return out

    def _activity(self, data: dict[str, Any], what: str) -> OptionEvent | None:
        kind = OPTION_ACTIVITIES.get(str(data.get("activity_type") or ""))
        if kind is None or data.get("status") == "canceled":
            return None
        event_id = data.get("id")
        if not isinstance(event_id, str) or not event_id.strip():
            raise self._bad(f"{what}.id is missing", f"{what}.id")
        raw_date = data.get("date")
        try:
            on = dt.date.fromisoformat(str(raw_date)[:10])
        except ValueError:
            raise self._bad(f"{what}.date is not a date", f"{what}.date") from None
        symbol = data.get("symbol")
        if not isinstance(symbol, str) or not symbol.strip():
            raise self._bad(f"{what}.symbol is missing", f"{what}.symbol")
        symbol = symbol.strip()
        if kind != OptionEventKind.STOCK and option_spec_or_none(symbol) is None:
            raise self._bad(f"{what}.symbol is not an OCC option symbol", f"{what}.symbol")
        price = self._dec(data.get("price"), f"{what}.price")
        return OptionEvent(
            event_id=event_id.strip(),
            kind=kind,
            on=on,
            quantity=self._req_dec(data.get("qty"), f"{what}.qty"),
            symbol=symbol,
            price=price,
            description=str(data.get("description") or ""),
        )

    # -- orders -------------------------------------------------------------------------

    async def list_orders(self, status: OrderStatusFilter = "all", since: dt.datetime | None = None) -> list[Order]:
        """Every order (legs nested) submitted after ``since``, oldest first, all pages."""
        seen: dict[str, Order] = {}
        after = since
        while True:
            params = {"status": status, "limit": str(self._orders_page), "direction": "asc", "nested": "true"}
            if after is not None:
                params["after"] = iso_z(after)
            body = await self._get("/v2/orders", params=params)
            rows = _list(body, "orders", self.account.name)
            page = [self._order(_obj(o, "orders[]", self.account.name), "orders[]") for o in rows]
            new = [o for o in page if o.broker_order_id not in seen]
            for order in new:
                seen[order.broker_order_id] = order
            if len(page) < self._orders_page or not new:
                break
            # ``after`` is exclusive: step back a microsecond so orders sharing the last
            # timestamp are not skipped; the ids already seen are dropped above.
            last = max((o.submitted_at for o in page if o.submitted_at), default=None)
            if last is None:
                break
            after = last - dt.timedelta(microseconds=1)
        return list(seen.values())

    async def get_order(self, broker_order_id: str) -> Order:
        body = await self._get(
            f"/v2/orders/{quote(broker_order_id, safe='')}",
            endpoint="/v2/orders/{id}",
            params={"nested": "true"},
            on_404="not_found",
        )
        return self._order(_obj(body, "order", self.account.name), "order")

    async def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        body = await self._get(
            "/v2/orders:by_client_order_id",
            params={"client_order_id": client_order_id},
            on_404="none",
        )
        return None if body is None else self._order(_obj(body, "order", self.account.name), "order")

    async def submit_order(self, request: OrderRequest) -> Order:
        """Place an order, sent exactly once; on an unknown outcome look its client id up."""
        payload = build_order_payload(request)
        body = await self._http.request(
            "POST",
            f"{self.base_url}/v2/orders",
            endpoint="/v2/orders",
            json_body=payload,
            once=True,
            reject_403=_is_business_403,
        )
        order = self._order(_obj(body, "order", self.account.name), "order")
        log.info(
            "order_submitted",
            broker="alpaca",
            account=self.account.name,
            client_order_id=request.client_order_id,
            broker_order_id=order.broker_order_id,
            status=order.status.value,
        )
        return order

    async def replace_order(self, request: ReplaceRequest) -> Order:
        """``PATCH /v2/orders/{id}``: Alpaca answers with the NEW order (``replaces`` = the old id; the
        old one becomes ``replaced``). Sent exactly once, named by ``client_order_id`` so a lost
        answer can be looked up."""
        body = await self._http.request(
            "PATCH",
            f"{self.base_url}/v2/orders/{quote(request.broker_order_id, safe='')}",
            endpoint="/v2/orders/{id}",
            json_body=build_replace_payload(request),
            once=True,
            on_404="not_found",
            reject_403=_is_business_403,
        )
        order = self._order(_obj(body, "order", self.account.name), "order")
        log.info(
            "order_replaced",
            broker="alpaca",
            account=self.account.name,
            replaced=request.broker_order_id,
            broker_order_id=order.broker_order_id,
            status=order.status.value,
        )
        return order

    async def cancel_order(self, broker_order_id: str) -> None:
        await self._http.request(
            "DELETE",
            f"{self.base_url}/v2/orders/{quote(broker_order_id, safe='')}",
            endpoint="/v2/orders/{id}",
            on_404="not_found",
        )

    # -- quotes --------------------------------------------------------------------------

    async def get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """Latest quotes for stocks and OCC options, batched; symbols Alpaca lacks are absent."""
        return (await self.quote_answer(symbols)).decode()

    async def quote_answer(self, symbols: Sequence[str]) -> QuoteAnswer:
        """The snapshots for ``symbols``, requested at once in batches and kept as bytes with their
        fingerprint (the symbols asked, then every answer's body); decoded on demand."""
        wanted = list(dict.fromkeys(s for s in symbols if s))
        options: list[str] = []
        stocks: list[str] = []
        for s in wanted:
            (stocks if option_spec_or_none(s) is None else options).append(s)
        jobs = [self._stock_replies(b) for b in batches(stocks, STOCK_BATCH)]
        jobs += [self._option_replies(b) for b in batches(options, OPTION_BATCH)]
        replies = [r for part in await asyncio.gather(*jobs) for r in part]

        def decode() -> dict[str, Quote]:
            out: dict[str, Quote] = {}
            for option, what, reply in replies:
                out.update(self._snapshot_quotes(option, self._http.decode(what, reply)))
            return out

        bodies = [",".join(wanted).encode(), *(reply.body for _, _, reply in replies)]
        return QuoteAnswer(decode, answer_fingerprint(self.kind, *bodies))

    async def _stock_replies(self, symbols: list[str]) -> list[tuple[bool, str, Reply]]:
        what, reply = await self._data_reply("/v2/stocks/snapshots", {"symbols": ",".join(symbols)})
        return [(False, what, reply)]

    async def _option_replies(self, symbols: list[str]) -> list[tuple[bool, str, Reply]]:
        out: list[tuple[bool, str, Reply]] = []
        token: str | None = None
        while True:
            params = {"symbols": ",".join(symbols), "limit": str(OPTION_PAGE)}
            if token:
                params["page_token"] = token
            what, reply = await self._data_reply("/v1beta1/options/snapshots", params)
            out.append((True, what, reply))
            token = self._page_token(what, reply)
            if not token:
                return out

    def _data_reply(self, path: str, params: dict[str, str]) -> Awaitable[tuple[str, Reply]]:
        return self._http.request_reply("GET", f"{self.data_url}{path}", endpoint=path, params=params)

    def _page_token(self, what: str, reply: Reply) -> str | None:
        """An option-snapshots page's ``next_page_token``: read by msgspec alone when the answer is
        plainly an object with a string or null token, else from the decoded body (which refuses
        an answer that is no object, with its usual message)."""
        try:
            return _OPTION_PAGE_DECODER.decode(reply.body).next_page_token
        except msgspec.MsgspecError:
            pass
        token = _obj(self._http.decode(what, reply), "snapshots", self.account.name).get("next_page_token")
        return None if not token else str(token)

    def _snapshot_quotes(self, option: bool, body: Any) -> dict[str, Quote]:
        """The quotes of one decoded snapshots answer (stocks': a map by symbol, or the older shape
        wrapped in ``snapshots``; options': ``snapshots`` with a page token)."""
        if body is None:
            if option:
                _obj(body, "snapshots", self.account.name)  # raises: an option answer must be an object
            return {}
        raw = _obj(body, "snapshots", self.account.name)
        if option:
            raw = raw.get("snapshots") or {}
            if not isinstance(raw, dict):
                raise self._bad("snapshots is not an object", "snapshots")
        elif "snapshots" in raw and isinstance(raw["snapshots"], dict):  # older wrapped shape
            raw = raw["snapshots"]
        out: dict[str, Quote] = {}
        for sym, snap in raw.items():
            if snap is None:
                continue
            quote = snapshot_quote(sym, snap, self._bad, option=option)
            out[sym] = check_quote(quote, f"snapshots.{sym}", self._bad)
        return out

    # -- trade updates ------------------------------------------------------------------

    async def trade_updates(self) -> AsyncIterator[TradeUpdate]:
        """Order events from Alpaca's ``trade_updates`` stream, reconnecting with jittered backoff.

        alpaca-py's ``TradingStream`` has no public way to run inside a running event
        loop (``run()`` calls ``asyncio.run``) and its ``_run_forever`` loop retries
        forever with its own backoff and swallows every error. So we drive its
        connection coroutines directly: ``_start_ws()`` (connect, authenticate, listen)
        and ``_consume()`` (receive and dispatch until the socket closes), one
        connection at a time, closing the old socket before the next attempt (Alpaca
        allows one ``trade_updates`` connection per account). We subscribe with
        ``raw_data=True`` and validate each payload ourselves with alpaca-py's
        ``TradeUpdate``, so one event it cannot validate (an mleg order with empty
        fields) is logged as ``stream_event_unparsed`` and skipped instead of breaking
        the handler. A login refused ``STREAM_AUTH_ATTEMPTS`` times in a row (a wrong
        key) ends the iterator with ``BrokerAuthFailed``.
        """
        if self._stream_active:
            raise BrokerError(
                "alpaca allows one trade_updates connection per account; one is already open",
                broker="alpaca",
                account=self.account.name,
            )
        missing = [name for name in _STREAM_INTERNALS if not hasattr(TradingStream, name)]
        if missing:  # alpaca-py changed its internals: fail loudly, not silently
            raise BrokerError(
                f"alpaca-py's TradingStream lacks {', '.join(missing)}; this syncd needs alpaca-py 0.44-compatible",
                broker="alpaca",
                account=self.account.name,
            )
        self._stream_active = True
        queue: asyncio.Queue[TradeUpdate | BaseException] = asyncio.Queue(maxsize=10_000)
        runner = asyncio.create_task(self._run_stream(queue), name=f"alpaca-stream:{self.account.name}")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            self._stream_active = False

    async def _run_stream(self, queue: asyncio.Queue[TradeUpdate | BaseException]) -> None:
        failures = 0
        refusals = 0  # consecutive refused logins
        loop = asyncio.get_running_loop()
        while True:
            received = 0

            async def on_message(msg: Any) -> None:
                nonlocal received
                received += 1
                update = self._trade_update(msg)
                if update is not None:
                    await queue.put(update)

            stream = TradingStream(
                self._key,
                self._secret,
                paper=self.account.paper,
                raw_data=True,
                url_override=self.stream_url,
                websocket_params={
                    "ping_interval": 10,
                    "ping_timeout": 180,
                    "max_queue": 1024,
                    "open_timeout": self._timeout_s,
                },
            )
            stream.subscribe_trade_updates(on_message)
            started = loop.time()
            authenticated = False
            try:
                await _internal(stream, "_start_ws")()
                authenticated = True
                refusals = 0
                # stream_connected/stream_disconnected are the consumer's (syncd.trading.stream), once per
                # consumer; these are the websocket's own, which reconnects inside this loop.
                log.debug("alpaca_ws_connected", broker="alpaca", account=self.account.name)
                await _internal(stream, "_consume")()  # returns only when asked to stop
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- any failure of one connection means: reconnect
                error = f"{type(exc).__name__}: {self._http.scrub(str(exc))[:200]}"
                if not authenticated and isinstance(exc, ValueError) and "authenticate" in str(exc):
                    # Wrong keys, or "connection limit exceeded" while Alpaca still holds our
                    # previous connection: retry a few times, then report an auth failure.
                    refusals += 1
                    if refusals >= STREAM_AUTH_ATTEMPTS:
                        await queue.put(
                            BrokerAuthFailed(
                                f"alpaca trade_updates: login refused {refusals} times in a row",
                                broker="alpaca",
                                account=self.account.name,
                            )
                        )
                        return
                    error = "login refused"
            finally:
                with contextlib.suppress(Exception):
                    await stream.close()
            if received or loop.time() - started > 60:
                failures = 0  # the connection was healthy: start the backoff afresh
            failures += 1
            delay = self._reconnect_delay(failures)
            log.warning(  # the only trace of a reconnect the consumer never sees: kept at warning
                "alpaca_ws_dropped",
                broker="alpaca",
                account=self.account.name,
                error=error,
                attempt=failures,
                retry_in_s=round(delay, 2),
            )
            await self._stream_sleep(delay)

    def _reconnect_delay(self, failures: int) -> float:
        low, high = self._stream_backoff
        return backoff(failures, low, high, jitter="half")

    def _trade_update(self, msg: Any) -> TradeUpdate | None:
        data = msg.get("data") if isinstance(msg, dict) else None
        event = data.get("event") if isinstance(data, dict) else None
        try:
            if not isinstance(data, dict):
                raise ValueError("message has no data object")
            raw = dict(data)
            if isinstance(raw.get("order"), dict):
                raw["order"] = _clean_order(raw["order"])
            update = AlpacaTradeUpdate(**raw)
            return TradeUpdate(
                event=update.event.value if isinstance(update.event, ae.TradeEvent) else str(update.event),
                order=_convert_order(update.order),
                at=as_utc(update.timestamp),
                price=decimal_or_none(update.price),
                qty=decimal_or_none(update.qty),
                position_qty=decimal_or_none(update.position_qty),
                execution_id=str(update.execution_id) if update.execution_id else None,
            )
        except (ValidationError, ValueError, TypeError, KeyError, InvalidOperation) as exc:
            order = data.get("order") if isinstance(data, dict) else None
            log.warning(
                "stream_event_unparsed",
                broker="alpaca",
                account=self.account.name,
                stream_event=str(event)[:40] if event else None,
                order_id=str(order.get("id"))[:64] if isinstance(order, dict) else None,
                error=_validation_summary(exc),
            )
            return None

    # -- plumbing ------------------------------------------------------------------------

    async def _get(
        self,
        path: str,
        *,
        endpoint: str | None = None,
        params: dict[str, str] | None = None,
        on_404: Literal["error", "not_found", "none"] = "error",
    ) -> Any:
        return await self._http.request(
            "GET", f"{self.base_url}{path}", endpoint=endpoint or path, params=params, on_404=on_404
        )

    def _bad(self, message: str, field: str) -> BadBrokerData:
        return BadBrokerData(f"alpaca: {message}", field=field, broker="alpaca", account=self.account.name)

    def _model(self, model: Callable[..., _M], data: dict[str, Any], what: str) -> _M:
        try:
            return model(**data)
        except (ValidationError, ValueError, TypeError) as exc:
            raise self._bad(f"cannot read {what}: {_validation_summary(exc)}", _field_of(exc, what)) from None

    def _dec(self, value: Any, field: str) -> Decimal | None:
        try:
            return decimal_or_none(value)
        except TooManyDigits as exc:
            raise self._bad(f"{field}: {exc}", field) from None
        except (InvalidOperation, ValueError):
            raise self._bad(f"{field} is not a number", field) from None

    def _req_dec(self, value: Any, field: str) -> Decimal:
        out = self._dec(value, field)
        if out is None:
            raise self._bad(f"{field} is missing", field)
        return out

    def _position(self, data: dict[str, Any], index: int) -> Position:
        what = f"positions[{index}]"
        p = self._model(AlpacaPosition, data, what)
        sign = Decimal(-1) if p.side == ae.PositionSide.SHORT else Decimal(1)
        qty = self._req_dec(p.qty, f"{what}.qty")
        available = self._dec(p.qty_available, f"{what}.qty_available")
        symbol = p.symbol.strip()  # Alpaca's own example position says "AAPL "
        is_option = p.asset_class == ae.AssetClass.US_OPTION
        option = None
        if is_option:
            try:
                option = parse_occ(symbol)
            except ValueError as exc:
                raise self._bad(f"{what}.symbol: {exc}", f"{what}.symbol") from None
        # copy_abs/copy_negate are exact whatever the decimal context (abs() and * round to it).
        signed = qty.copy_abs() if sign > 0 else qty.copy_abs().copy_negate()
        free = signed if available is None else available.copy_abs() if sign > 0 else available.copy_abs().copy_negate()
        position = Position(
            symbol=symbol,
            asset_class=_asset_class(p.asset_class),
            quantity=signed,
            qty_available=free,
            avg_entry_price=self._req_dec(p.avg_entry_price, f"{what}.avg_entry_price"),
            cost_basis=self._req_dec(p.cost_basis, f"{what}.cost_basis"),
            current_price=self._dec(p.current_price, f"{what}.current_price"),
            market_value=self._dec(p.market_value, f"{what}.market_value"),
            unrealized_pl=self._dec(p.unrealized_pl, f"{what}.unrealized_pl"),
            option=option,
        )
        return check_position(position, what, self._bad)

    def _order(self, data: dict[str, Any], what: str) -> Order:
        order = self._model(AlpacaOrder, _clean_order(data), what)
        try:
            converted = _convert_order(order)
        except (InvalidOperation, ValueError) as exc:
            raise self._bad(f"cannot read {what}: {exc}", what) from None
        return check_order(converted, what, self._bad)


# -- request building ---------------------------------------------------------------------


def build_order_payload(request: OrderRequest) -> dict[str, Any]:
    """The JSON body of ``POST /v2/orders``, built with alpaca-py's request models.

    alpaca-py's models hold ``qty``, ``limit_price`` and ``ratio_qty`` as floats, so they only
    validate: the body carries the request's exact Decimals as strings (as Alpaca's API takes
    them), never a float. Raises ``BrokerRejected`` (no request made) when the models refuse it.
    """
    common: dict[str, Any] = {"qty": float(request.qty), "client_order_id": request.client_order_id}
    try:
        if request.time_in_force.value not in {t.value for t in ae.TimeInForce}:
            raise ValueError(f"time_in_force {request.time_in_force.value!r} is not offered by Alpaca")
        common["time_in_force"] = ae.TimeInForce(request.time_in_force.value)
        if request.is_multileg:
            common["order_class"] = ae.OrderClass.MLEG
            common["legs"] = [
                OptionLegRequest(
                    symbol=leg.symbol,
                    ratio_qty=leg.ratio,
                    side=ae.OrderSide(leg.side.value),
                    position_intent=position_intent(leg.side, leg.intent),
                )
                for leg in request.legs
            ]
        else:
            if request.symbol is None or request.side is None:
                raise ValueError("a single-leg order needs symbol and side")
            common["symbol"] = request.symbol
            common["side"] = ae.OrderSide(request.side.value)
            if option_spec_or_none(request.symbol) is not None:
                common["position_intent"] = position_intent(request.side, request.intent)
        if request.type == OrderType.MARKET:
            model: MarketOrderRequest | LimitOrderRequest = MarketOrderRequest(**common)
        elif request.type == OrderType.LIMIT:
            if request.limit_price is None:
                raise ValueError("a limit order needs limit_price")
            model = LimitOrderRequest(limit_price=float(request.limit_price), **common)
        else:
            raise ValueError(f"order type {request.type.value!r} is not supported")
    except (ValidationError, ValueError) as exc:
        reason = f"invalid order request: {_validation_summary(exc)}"
        raise BrokerRejected(f"alpaca: {reason}", reason=reason, broker="alpaca") from None
    return _exact_numbers(model.to_request_fields(), request)


def build_replace_payload(request: ReplaceRequest) -> dict[str, Any]:
    """The JSON body of ``PATCH /v2/orders/{id}`` (alpaca-py's ``ReplaceOrderRequest`` validates it);
    numbers as exact decimal strings. ``BrokerRejected`` (nothing sent) when the model refuses it."""
    try:
        if request.qty is None and request.limit_price is None:
            raise ValueError("a replace changes qty or limit_price")
        ReplaceOrderRequest(
            qty=int(request.qty)
            if request.qty is not None and request.qty == request.qty.to_integral_value()
            else None,
            limit_price=float(request.limit_price) if request.limit_price is not None else None,
            client_order_id=request.client_order_id,
        )
    except (ValidationError, ValueError) as exc:
        reason = f"invalid replace request: {_validation_summary(exc)}"
        raise BrokerRejected(f"alpaca: {reason}", reason=reason, broker="alpaca") from None
    body: dict[str, Any] = {"client_order_id": request.client_order_id}
    if request.qty is not None:
        body["qty"] = plain(request.qty)
    if request.limit_price is not None:
        body["limit_price"] = plain(request.limit_price)
    return body


def _exact_numbers(body: dict[str, Any], request: OrderRequest) -> dict[str, Any]:
    """``body`` with every number the exact decimal string of ``request`` (no float on the wire)."""
    body = {**body, "qty": plain(request.qty)}
    if request.limit_price is not None and "limit_price" in body:
        body["limit_price"] = plain(request.limit_price)
    if request.is_multileg:
        body["legs"] = [
            {**sent, "ratio_qty": str(leg.ratio)} for sent, leg in zip(body["legs"], request.legs, strict=True)
        ]
    return body


def position_intent(side: Side, intent: Intent) -> ae.PositionIntent:
    if side == Side.BUY:
        return ae.PositionIntent.BUY_TO_OPEN if intent == Intent.OPEN else ae.PositionIntent.BUY_TO_CLOSE
    return ae.PositionIntent.SELL_TO_OPEN if intent == Intent.OPEN else ae.PositionIntent.SELL_TO_CLOSE


# -- response conversion ------------------------------------------------------------------


def _clean_order(data: dict[str, Any]) -> dict[str, Any]:
    """alpaca-py's "" -> None normalisation, applied to the legs as well."""
    out = {k: (None if k in _EMPTY_AS_NONE and v == "" else v) for k, v in data.items()}
    if out.get("order_class") == "":
        out["order_class"] = "simple"
    if out.get("asset_class") == "ipo":  # an IPO indication of interest (Alpaca's OpenAPI example): US shares,
        out["asset_class"] = "us_equity"  # a class alpaca-py's enum lacks: read as an equity order, not refused
    legs = out.get("legs")
    if isinstance(legs, list):
        out["legs"] = [_clean_order(leg) if isinstance(leg, dict) else leg for leg in legs]
    return out


def _convert_order(o: AlpacaOrder, parent_type: OrderType | None = None) -> Order:
    """Alpaca's order as syncd's; a leg without a type takes its parent's, a top-level order keeps none
    (:func:`syncd.brokers.sanity.check_order` refuses it: an order with no type is not a market order)."""
    order_type = _order_type(o.type or o.order_type) or parent_type
    legs = tuple(_convert_order(leg, order_type) for leg in (o.legs or ()))
    order_class = OrderClass(o.order_class.value) if o.order_class else OrderClass.SIMPLE
    symbol = (o.symbol or "").strip()
    if not symbol and legs:
        spec = option_spec_or_none(legs[0].symbol)
        symbol = spec.underlying if spec else legs[0].symbol
    if o.asset_class is not None:
        asset_class = _asset_class(o.asset_class)
    elif (legs and order_class == OrderClass.MLEG) or option_spec_or_none(symbol) is not None:
        asset_class = AssetClass.US_OPTION
    else:
        asset_class = AssetClass.US_EQUITY
    avg = decimal_or_none(o.filled_avg_price)
    return Order(
        broker_order_id=str(o.id),
        client_order_id=o.client_order_id or None,
        symbol=symbol,
        side=Side(o.side.value) if o.side else None,
        type=order_type,
        order_class=order_class,
        qty=decimal_or_none(o.qty),  # None for a notional order: never 0
        filled_qty=decimal_or_none(o.filled_qty) or Decimal(0),
        status=OrderStatus(o.status.value),
        asset_class=asset_class,
        notional=decimal_or_none(o.notional),
        stop_price=decimal_or_none(o.stop_price),
        filled_avg_price=avg if avg else None,  # Alpaca sends 0 before anything is filled
        limit_price=decimal_or_none(o.limit_price),
        time_in_force=TimeInForce(o.time_in_force.value),
        ratio_qty=int(Decimal(str(o.ratio_qty))) if o.ratio_qty not in (None, "") else None,
        intent=_intent(o.position_intent),
        submitted_at=as_utc(o.submitted_at),
        filled_at=as_utc(o.filled_at) if o.filled_at else None,
        canceled_at=as_utc(o.canceled_at) if o.canceled_at else None,
        updated_at=as_utc(o.updated_at),
        legs=legs,
        replaces=str(o.replaces) if o.replaces else None,
        replaced_by=str(o.replaced_by) if o.replaced_by else None,
    )


def _order_type(t: ae.OrderType | None) -> OrderType | None:
    return OrderType(t.value) if t is not None else None


def _intent(pi: ae.PositionIntent | None) -> Intent | None:
    if pi is None:
        return None
    return Intent.OPEN if pi.value.endswith("_open") else Intent.CLOSE


def _asset_class(ac: ae.AssetClass | None) -> AssetClass:
    if ac == ae.AssetClass.US_OPTION:
        return AssetClass.US_OPTION
    if ac in (ae.AssetClass.CRYPTO, ae.AssetClass.CRYPTO_PERP):
        return AssetClass.CRYPTO
    return AssetClass.US_EQUITY


def _is_business_403(body: Any) -> bool:
    """Alpaca answers 403 with code 40310000 for refusals such as insufficient buying power."""
    return isinstance(body, dict) and str(body.get("code", "")).startswith("403") and "message" in body


def _reason_of(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return None


# -- small helpers ------------------------------------------------------------------------


def _slow(message: str, field: str) -> BadBrokerData:
    """The ``bad`` of the fast path: a failed check sends the answer the slow way (which refuses it)."""
    raise Slow


def _obj(body: Any, what: str, account: str = "") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadBrokerData(f"alpaca: {what} is not a JSON object", field=what, broker="alpaca", account=account)
    return body


def _list(body: Any, what: str, account: str = "") -> list[Any]:
    if not isinstance(body, list):
        raise BadBrokerData(f"alpaca: {what} is not a JSON array", field=what, broker="alpaca", account=account)
    return body


def _internal(stream: TradingStream, name: str) -> Callable[[], Awaitable[None]]:
    """A private coroutine method of alpaca-py's ``TradingStream`` (checked to exist up front)."""
    return cast("Callable[[], Awaitable[None]]", getattr(stream, name))


def _validation_summary(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False, include_input=False)[:3]:
            loc = ".".join(str(p) for p in err["loc"])
            parts.append(f"{loc}: {err['msg']}" if loc else str(err["msg"]))
        return "; ".join(parts)
    return str(exc)[:200]


def _field_of(exc: BaseException, what: str) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        loc = ".".join(str(p) for p in exc.errors()[0]["loc"])
        return f"{what}.{loc}" if loc else what
    return what
