"""Tradier: the ``Broker`` Protocol over aiohttp (``{base_url}/v1/...``, JSON answers).

Tradier's quirks, handled in every answer that can carry them:

- a list with one element arrives as the element itself:
  ``{"positions": {"position": {...}}}`` instead of ``{"position": [{...}]}``;
- "nothing" arrives as the string ``"null"`` (or JSON ``null``): ``{"positions": "null"}``;
- numbers may arrive as strings;
- an order can say ``filled`` before its fill price is known: ``avg_fill_price`` is 0
  then, which we report as ``None`` (unknown), never as a fill at 0.

Statuses are mapped onto Alpaca's vocabulary (``_STATUS``). Orders are placed
form-encoded, our client order id travelling in ``tag``. Tradier has no per-position
``qty_available``: we derive it as the position's size minus what open closing orders
still have to fill (see :func:`available_quantities`). Order events arrive by Tradier's
account events stream (:mod:`syncd.brokers.tradier_stream`, one connection per token):
``trade_updates()`` turns each event into a ``TradeUpdate`` (see :meth:`TradierBroker.trade_updates`).

Multi-leg limit prices follow syncd's (Alpaca's) convention: positive = net debit
(Tradier ``type=debit``), negative = net credit (``type=credit``), zero = ``even``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from decimal import Decimal, localcontext
from typing import Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiohttp
import structlog

from syncd.brokers.base import (
    AccountAnswer,
    BadBrokerData,
    BrokerAuthFailed,
    BrokerError,
    BrokerRejected,
    BrokerUnavailable,
    OrderNotFound,
    OrderStatusFilter,
    QuoteAnswer,
    answer_fingerprint,
    both,
)
from syncd.brokers.http import HttpCore, Reply, RequestHook, RetryPolicy
from syncd.brokers.occ import option_spec_or_none
from syncd.brokers.parse import WIDE, NotANumber, NotFinite, TooManyDigits, as_utc, batches, decimal_or_none, plain
from syncd.brokers.ratelimit import TRADIER_PER_MIN, TokenBucket
from syncd.brokers.sanity import check_order, check_position, check_positions, check_quote
from syncd.brokers.tradier_stream import AccountEvents, Raw, default_stream_url
from syncd.brokers.types import (
    CONTINGENT,
    AssetClass,
    Balances,
    Clock,
    Greeks,
    Intent,
    LegRequest,
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
from syncd.settings import AccountSettings

log = structlog.get_logger(__name__)

SANDBOX_URL = "https://sandbox.tradier.com"
LIVE_URL = "https://api.tradier.com"
QUOTE_BATCH = 400  # symbols per quotes request
HISTORY_PAGE = 100  # events per page asked of GET /v1/accounts/{id}/history
HISTORY_MAX_PAGES = 50
KNOWN_ORDERS = 10_000  # recent orders remembered per account, to complete stream events without a GET
QUOTE_GET_MAX = 40  # up to this many symbols go in a GET query string; more are POSTed as a form

_TAG_RE = re.compile(r"^[A-Za-z0-9-]{1,255}$")
_ET = ZoneInfo("America/New_York")

_STATUS: dict[str, OrderStatus] = {
    "open": OrderStatus.NEW,
    "partially_filled": OrderStatus.PARTIALLY_FILLED,
    "filled": OrderStatus.FILLED,
    "expired": OrderStatus.EXPIRED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "pending": OrderStatus.PENDING_NEW,
    "rejected": OrderStatus.REJECTED,
    "error": OrderStatus.REJECTED,
    "calculated": OrderStatus.CALCULATED,
    "accepted_for_bidding": OrderStatus.ACCEPTED_FOR_BIDDING,
    "held": OrderStatus.HELD,
    "pending_cancel": OrderStatus.PENDING_CANCEL,  # in Tradier's OpenAPI order-status enum
}

# Tradier side -> (our side, intent)
_SIDES: dict[str, tuple[Side, Intent]] = {
    "buy": (Side.BUY, Intent.OPEN),
    "sell": (Side.SELL, Intent.CLOSE),
    "sell_short": (Side.SELL, Intent.OPEN),
    "buy_to_cover": (Side.BUY, Intent.CLOSE),
    "buy_to_open": (Side.BUY, Intent.OPEN),
    "buy_to_close": (Side.BUY, Intent.CLOSE),
    "sell_to_open": (Side.SELL, Intent.OPEN),
    "sell_to_close": (Side.SELL, Intent.CLOSE),
}
_EQUITY_SIDE = {v: k for k, v in list(_SIDES.items())[:4]}
_OPTION_SIDE = {v: k for k, v in list(_SIDES.items())[4:]}

_TYPES: dict[str, OrderType] = {
    "market": OrderType.MARKET,
    "limit": OrderType.LIMIT,
    "stop": OrderType.STOP,
    "stop_limit": OrderType.STOP_LIMIT,
    "debit": OrderType.LIMIT,
    "credit": OrderType.LIMIT,
    "even": OrderType.LIMIT,
}

_DURATIONS: dict[str, TimeInForce] = {
    "day": TimeInForce.DAY,
    "gtc": TimeInForce.GTC,
    "pre": TimeInForce.PRE,
    "post": TimeInForce.POST,
}

_CLASSES: dict[str, OrderClass] = {
    "equity": OrderClass.SIMPLE,
    "option": OrderClass.SIMPLE,
    "multileg": OrderClass.MLEG,
    "combo": OrderClass.MLEG,
    "oto": OrderClass.OTO,
    "oco": OrderClass.OCO,
    "otoco": OrderClass.BRACKET,
}


class TradierBroker:
    """One Tradier account. Build it with :func:`syncd.brokers.factory.build_broker`."""

    def __init__(
        self,
        account: AccountSettings,
        *,
        session: aiohttp.ClientSession,
        timeout_s: float,
        on_request: RequestHook | None = None,
        limiter: TokenBucket | Literal[False] | None = None,
        retry: RetryPolicy | None = None,
        events: AccountEvents | None = None,
    ) -> None:
        if account.token is None or not account.account_id:
            raise ValueError(f"account {account.name!r}: tradier needs token and account_id")
        self.account = account
        self.account_id = account.account_id
        self.base_url = (account.base_url or (SANDBOX_URL if account.sandbox else LIVE_URL)).rstrip("/")
        token = account.token.get_secret_value()
        if limiter is None:
            limiter = TokenBucket(account.rate_limit_per_min or TRADIER_PER_MIN)
        self.limiter = limiter or None
        self._http = HttpCore(
            broker="tradier",
            account=account.name,
            session=session,
            timeout_s=timeout_s,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            limiter=self.limiter,
            retry=retry,
            on_request=on_request,
            reason_of=reason_of,
            secrets=(token,),
        )
        self._calendar: dict[tuple[int, int], list[tuple[dt.datetime, dt.datetime]] | None] = {}
        self._acct = f"/v1/accounts/{quote(self.account_id, safe='')}"
        # The last state seen of each recent order (polls, placements, stream events): a stream
        # event names only the order's state, and this supplies the rest without a GET.
        self._known: OrderedDict[str, Order] = OrderedDict()
        self.stream_url = account.stream_url or default_stream_url(account.sandbox)
        # the token's one account events connection (the factory shares it between the token's accounts)
        self.events = events or AccountEvents(
            http=self._http, base_url=self.base_url, stream_url=self.stream_url, session=session, name=account.name
        )

    # -- Protocol properties ------------------------------------------------------------

    @property
    def kind(self) -> str:
        return "tradier"

    @property
    def request_count(self) -> int:
        return self._http.request_count

    @property
    def supports_stream(self) -> bool:
        return True

    async def aclose(self) -> None:
        """Stop the account events connection (the HTTP session belongs to the caller)."""
        await self.events.aclose()

    async def trade_updates(self) -> AsyncIterator[TradeUpdate]:
        """This account's order events from the token's account events stream.

        An event carries the order's state after the change but not its symbol, side or
        legs, so each one is completed from the order as this adapter last saw it (a poll, a
        placement, an earlier event), or, for an order it has not seen or a multi-leg one, by a
        GET of the order (the same parsing and checks as a poll); where the event is ahead of
        that (more filled, the fill price it lacks, a cancel or expiry) the event's state wins.
        The update is ``cumulative``: the order store derives the fill from the state, as for a
        poll. An event that cannot be parsed is logged (``stream_event_unparsed``) and skipped;
        one whose order cannot be fetched now is logged (``stream_event_unresolved``) and left to
        the next poll.
        """
        async for raw in self.events.events(self.account_id):
            try:
                update = await self._stream_update(raw)
            except BadBrokerData as exc:
                log.warning("stream_event_unparsed", broker="tradier", error=str(exc)[:200], field=exc.field)
                continue
            except (OrderNotFound, BrokerUnavailable) as exc:
                log.warning(
                    "stream_event_unresolved",
                    broker="tradier",
                    broker_order_id=str(raw.get("id"))[:20],
                    error=str(exc)[:200],
                )
                continue
            yield update

    async def _stream_update(self, d: Raw) -> TradeUpdate:
        what = "account_event"
        order_id = d.get("id")
        if isinstance(order_id, bool) or not isinstance(order_id, (int, str)) or not str(order_id).isdigit():
            raise self._bad(f"{what}.id {str(order_id)[:30]!r} is not an order id", f"{what}.id")
        status = _STATUS.get(str(d.get("status")))
        if status is None:
            raise self._bad(f"{what}.status {str(d.get('status'))[:30]!r} is unknown", f"{what}.status")
        qty_key = "exec_quantity" if "exec_quantity" in d else "executed_quantity"
        filled = self._num(d.get(qty_key), f"{what}.{qty_key}")
        self._num(d.get("remaining_quantity"), f"{what}.remaining_quantity")  # read only to refuse a non-number
        avg = self._num(d.get("avg_fill_price"), f"{what}.avg_fill_price")
        last_qty = self._num(d.get("last_fill_quantity"), f"{what}.last_fill_quantity")
        last_price = self._num(d.get("last_fill_price"), f"{what}.last_fill_price")
        at = self._time(d.get("transaction_date"), f"{what}.transaction_date")
        if at is None:
            raise self._bad(f"{what}.transaction_date is missing", f"{what}.transaction_date")
        oid = str(order_id)
        known = self._known.get(oid)
        order = known if known is not None and not known.legs else await self.get_order(oid)
        if filled is not None and not order.legs and _event_is_ahead(order, status, filled, avg):
            order = dataclasses.replace(
                order,
                filled_qty=filled,
                status=status,
                filled_avg_price=avg if avg else order.filled_avg_price,
                updated_at=at,
                filled_at=at if status == OrderStatus.FILLED else order.filled_at,
                canceled_at=at if status == OrderStatus.CANCELED else order.canceled_at,
            )
            self._remember(order)
        return TradeUpdate(
            event={OrderStatus.FILLED: "fill", OrderStatus.PARTIALLY_FILLED: "partial_fill"}.get(status, status.value),
            order=order,
            at=at,
            price=last_price if last_price else None,
            qty=last_qty if last_qty else None,
            cumulative=True,
        )

    # -- account and positions -------------------------------------------------------------

    async def get_account(self) -> Balances:
        return self._balances(await self._get(f"{self._acct}/balances", "/v1/accounts/{id}/balances"))

    def _balances(self, body: Any) -> Balances:
        b = self._section(body, "balances")
        if b is None:
            raise self._bad("balances are missing", "balances")
        # Margin, PDT and cash accounts carry their buying power in different sub-objects.
        bp: Any = None
        for sub, key in (("margin", "stock_buying_power"), ("pdt", "stock_buying_power"), ("cash", "cash_available")):
            section = b.get(sub)
            if isinstance(section, dict) and section.get(key) not in (None, "null"):
                bp = section.get(key)
                break
        total_cash = self._num(b.get("total_cash"), "balances.total_cash")
        return Balances(
            broker_account_id=str(b.get("account_number") or self.account_id),
            equity=self._req(b.get("total_equity"), "balances.total_equity"),
            cash=total_cash if total_cash is not None else Decimal(0),
            buying_power=self._num(bp, "balances.buying_power") or (total_cash or Decimal(0)),
            long_market_value=self._num(b.get("long_market_value"), "balances.long_market_value") or Decimal(0),
            short_market_value=self._num(b.get("short_market_value"), "balances.short_market_value") or Decimal(0),
        )

    async def list_positions(self) -> list[Position]:
        """Positions, with ``qty_available`` derived from open closing orders (Tradier has none)."""
        pos_body, orders = await both(
            self._get(f"{self._acct}/positions", "/v1/accounts/{id}/positions"),
            self._orders(),
        )
        return self._positions(pos_body, orders)

    async def account_answer(self) -> AccountAnswer:
        """Balances, positions and orders (for ``qty_available``) requested at once, kept as bytes with
        their fingerprint; decoded on demand as :meth:`get_account` and :meth:`list_positions` decode them."""
        acct = self._acct
        (balances, (positions, orders)) = await both(
            self._reply(f"{acct}/balances", "/v1/accounts/{id}/balances"),
            both(
                self._reply(f"{acct}/positions", "/v1/accounts/{id}/positions"),
                self._reply(f"{acct}/orders", "/v1/accounts/{id}/orders", params=_ORDERS_PARAMS),
            ),
        )

        def decode() -> tuple[Balances, list[Position]]:
            decoded = [self._http.decode(what, reply) for what, reply in (balances, positions, orders)]
            return self._balances(decoded[0]), self._positions(decoded[1], self._orders_of(decoded[2]))

        return AccountAnswer(decode, answer_fingerprint(self.kind, balances[1].body, positions[1].body, orders[1].body))

    def _positions(self, pos_body: Any, orders: list[Order]) -> list[Position]:
        raw = self._items(pos_body, "positions", "position")
        held = available_quantities(orders)
        out = []
        for i, p in enumerate(raw):
            what = f"positions[{i}]"
            symbol = p.get("symbol")
            if not isinstance(symbol, str) or not symbol.strip():
                raise self._bad(f"{what}.symbol is missing", f"{what}.symbol")
            symbol = symbol.strip()
            qty = self._req(p.get("quantity"), f"{what}.quantity")
            cost = self._req(p.get("cost_basis"), f"{what}.cost_basis")
            option = option_spec_or_none(symbol)
            mult = Decimal(option.multiplier if option else 1)
            committed = held.get((symbol, qty < 0), Decimal(0))
            with localcontext(WIDE):  # exact: no digit of the broker's numbers is rounded away
                free = max(Decimal(0), qty.copy_abs() - committed)
                units = qty.copy_abs() * mult
            position = Position(
                symbol=symbol,
                asset_class=AssetClass.US_OPTION if option else AssetClass.US_EQUITY,
                quantity=qty,
                qty_available=free if qty >= 0 else free.copy_negate(),
                # a quotient (Tradier sends no average price): the default 28 digits, as any division
                avg_entry_price=cost.copy_abs() / units if qty else Decimal(0),
                cost_basis=cost,
                option=option,
            )
            out.append(check_position(position, what, self._bad))
        return check_positions(out, self._bad)

    # -- option expiry, assignment, exercise ------------------------------------------------

    async def list_option_events(self, since: dt.date) -> list[OptionEvent]:
        """``GET /v1/accounts/{id}/history?type=option`` from ``since``, oldest first.

        Tradier's history comes from its clearing firm and is updated nightly: yesterday's expiry
        appears the next morning. An event carries no id and usually no symbol (``{"option":
        {"option_type": "OPTEXP", "description": "Expired", "quantity": -1}}``): its id is
        derived from the record (date, type, quantity, description, and its place among
        identical records of that day), its symbol is ``None`` unless the record names an OCC
        symbol; syncd matches it to a leg by the expiration date and the quantity. ``OPTEXP`` is
        an expiry; an option type naming an assignment (``ASGN``/``ASSIGN``) or an exercise
        (``EXER``/``EXC``) is one; any other option record is left out.
        """
        rows: list[dict[str, Any]] = []
        for page in range(1, HISTORY_MAX_PAGES + 1):
            body = await self._get(
                f"{self._acct}/history",
                "/v1/accounts/{id}/history",
                params={"type": "option", "start": since.isoformat(), "limit": str(HISTORY_PAGE), "page": str(page)},
            )
            items = self._items(body, "history", "event")
            rows += items
            if len(items) < HISTORY_PAGE:
                break
        out: list[OptionEvent] = []
        counts: dict[str, int] = {}
        for i, row in enumerate(rows):
            event = self._history_event(row, f"history.event[{i}]", counts)
            if event is not None:
                out.append(event)
        out.sort(key=lambda e: e.on)
        return out

    def _history_event(self, row: dict[str, Any], what: str, counts: dict[str, int]) -> OptionEvent | None:
        if row.get("type") != "option":
            return None
        option = row.get("option")
        if not isinstance(option, dict):
            raise self._bad(f"{what}.option is not an object", f"{what}.option")
        option_type = str(option.get("option_type") or "").strip().upper()
        kind = _history_kind(option_type)
        if kind is None:
            log.info("tradier_history_option_skipped", option_type=option_type)
            return None
        raw_date = row.get("date")
        try:
            on = dt.date.fromisoformat(str(raw_date)[:10])
        except ValueError:
            raise self._bad(f"{what}.date is not a date", f"{what}.date") from None
        quantity = self._req(option.get("quantity"), f"{what}.option.quantity")
        description = str(option.get("description") or "").strip()
        symbol = next(
            (
                v.strip()
                for v in (option.get("symbol"), row.get("symbol"))
                if isinstance(v, str) and option_spec_or_none(v.strip()) is not None
            ),
            None,
        )
        key = f"{on.isoformat()}:{option_type}:{plain(quantity)}:{symbol or ''}:{description}"
        n = counts.get(key, 0)
        counts[key] = n + 1
        return OptionEvent(
            event_id=f"{key}:{n}", kind=kind, on=on, quantity=quantity, symbol=symbol, description=description
        )

    # -- orders -------------------------------------------------------------------------

    async def _orders(self) -> list[Order]:
        body = await self._get(f"{self._acct}/orders", "/v1/accounts/{id}/orders", params=_ORDERS_PARAMS)
        return self._orders_of(body)

    def _orders_of(self, body: Any) -> list[Order]:
        return [self._order(o, f"orders[{i}]") for i, o in enumerate(self._items(body, "orders", "order"))]

    async def list_orders(self, status: OrderStatusFilter = "all", since: dt.datetime | None = None) -> list[Order]:
        """Tradier returns the account's orders in one answer; we filter by status and creation time."""
        out = []
        for order in await self._orders():
            if status == "open" and order.status.is_terminal:
                continue
            if status == "closed" and not order.status.is_terminal:
                continue
            if since is not None and order.submitted_at is not None and order.submitted_at <= since:
                continue
            out.append(order)
        out.sort(key=lambda o: o.submitted_at or dt.datetime.min.replace(tzinfo=dt.UTC))
        return out

    async def get_order(self, broker_order_id: str) -> Order:
        body = await self._get(
            f"{self._acct}/orders/{quote(broker_order_id, safe='')}",
            "/v1/accounts/{id}/orders/{order_id}",
            params={"includeTags": "true"},
            on_404="not_found",
        )
        order = self._section(body, "order")
        if order is None:
            raise OrderNotFound(
                f"tradier: order {broker_order_id} not found", broker="tradier", account=self.account.name
            )
        return self._order(order, "order")

    async def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        """Tradier cannot search by tag: list the orders and match ``tag`` (newest wins)."""
        matches = [o for o in await self._orders() if o.client_order_id == client_order_id]
        if not matches:
            return None
        return max(matches, key=lambda o: o.submitted_at or dt.datetime.min.replace(tzinfo=dt.UTC))

    async def submit_order(self, request: OrderRequest) -> Order:
        """Place an order (form-encoded), sent exactly once; on an unknown outcome look its tag up."""
        form = build_order_form(request)
        body = await self._http.request(
            "POST",
            f"{self.base_url}{self._acct}/orders",
            endpoint="/v1/accounts/{id}/orders",
            form=form,
            once=True,
        )
        broker_id = self._answered_order_id(body, "POST /v1/accounts/{id}/orders", "order placement")
        log.info(
            "order_submitted",
            broker="tradier",
            account=self.account.name,
            client_order_id=request.client_order_id,
            broker_order_id=broker_id,
        )
        try:
            return await self.get_order(broker_id)
        except (BrokerAuthFailed, BrokerRejected):
            raise
        except BrokerError as exc:  # placed for sure; its details can come with the next poll
            log.warning("order_details_unavailable", broker="tradier", broker_order_id=broker_id, error=str(exc))
            return _placed_order(broker_id, request)

    async def replace_order(self, request: ReplaceRequest) -> Order:
        """``PUT /v1/accounts/{id}/orders/{order_id}``: Tradier changes the order in place (same id,
        same tag) and answers ``{"order": {"id": ..., "status": "ok"}}``; the order is then read back.
        Tradier cannot change an order's quantity: such a request is refused before anything is sent.
        """
        form = build_replace_form(request)
        body = await self._http.request(
            "PUT",
            f"{self.base_url}{self._acct}/orders/{quote(request.broker_order_id, safe='')}",
            endpoint="/v1/accounts/{id}/orders/{order_id}",
            form=form,
            once=True,
            on_404="not_found",
        )
        broker_id = self._answered_order_id(body, "PUT /v1/accounts/{id}/orders/{order_id}", "order modification")
        log.info("order_replaced", broker="tradier", account=self.account.name, broker_order_id=broker_id)
        return await self.get_order(broker_id)

    def _answered_order_id(self, body: Any, endpoint: str, what: str) -> str:
        """The order id of a placement or modification answer; ``BrokerRejected`` for Tradier's
        ``{"errors": ...}`` refusal (HTTP 200), ``BadBrokerData`` for an answer with no id."""
        errors = reason_of(body)
        if isinstance(body, dict) and "errors" in body and errors:
            raise BrokerRejected(
                f"tradier {endpoint}: refused: {errors}",
                reason=errors,
                status=200,
                broker="tradier",
                account=self.account.name,
            )
        order = self._section(body, "order")
        if order is None or order.get("id") in (None, "", "null"):
            raise self._bad(f"{what} answer has no order id", "order.id")
        return str(order["id"])

    async def cancel_order(self, broker_order_id: str) -> None:
        body = await self._http.request(
            "DELETE",
            f"{self.base_url}{self._acct}/orders/{quote(broker_order_id, safe='')}",
            endpoint="/v1/accounts/{id}/orders/{order_id}",
            on_404="not_found",
        )
        errors = reason_of(body)
        if isinstance(body, dict) and "errors" in body and errors:
            raise BrokerRejected(
                f"tradier cancel {broker_order_id}: refused: {errors}",
                reason=errors,
                broker="tradier",
                account=self.account.name,
            )

    # -- market data ------------------------------------------------------------------------

    async def get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """Quotes (greeks for options), batched; symbols Tradier does not know are absent."""
        return (await self.quote_answer(symbols)).decode()

    async def quote_answer(self, symbols: Sequence[str]) -> QuoteAnswer:
        """The quotes for ``symbols``, requested at once in batches and kept as bytes with their
        fingerprint (the symbols asked, then every answer's body); decoded on demand, as
        :meth:`get_quotes` decodes them."""
        wanted = list(dict.fromkeys(s for s in symbols if s))
        replies = await asyncio.gather(*(self._quote_reply(b) for b in batches(wanted, QUOTE_BATCH)))

        def decode() -> dict[str, Quote]:
            out: dict[str, Quote] = {}
            for what, reply in replies:
                for i, q in enumerate(self._items(self._http.decode(what, reply), "quotes", "quote")):
                    quote_ = self._quote(q, f"quotes[{i}]")
                    out[quote_.symbol] = quote_
            return out

        bodies = [",".join(wanted).encode(), *(reply.body for _, reply in replies)]
        return QuoteAnswer(decode, answer_fingerprint(self.kind, *bodies))

    def _quote_reply(self, symbols: list[str]) -> Awaitable[tuple[str, Reply]]:
        args = {"symbols": ",".join(symbols), "greeks": "true"}
        url = f"{self.base_url}/v1/markets/quotes"
        if len(symbols) <= QUOTE_GET_MAX:
            return self._http.request_reply("GET", url, endpoint="/v1/markets/quotes", params=args)
        # long lists go in a form body (Tradier's documented way), not the URL
        return self._http.request_reply("POST", url, endpoint="/v1/markets/quotes", form=args)

    async def get_clock(self) -> Clock:
        body = await self._get("/v1/markets/clock", "/v1/markets/clock")
        c = self._section(body, "clock")
        if c is None:
            raise self._bad("clock is missing", "clock")
        ts = self._req(c.get("timestamp"), "clock.timestamp")
        now = dt.datetime.fromtimestamp(float(ts), dt.UTC)
        state = c.get("state")
        if not isinstance(state, str):
            raise self._bad("clock.state is missing", "clock.state")
        sessions = await self._sessions(now)
        is_open = state == "open"
        next_open = next((o for o, _ in sessions if o > now), None)
        next_close = next((c_ for _, c_ in sessions if c_ > now), None)
        if next_open is None or next_close is None:
            raise self._bad("cannot derive the next session from the calendar", "calendar")
        return Clock(is_open=is_open, next_open=next_open, next_close=next_close, timestamp=now)

    async def _sessions(self, now: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
        """Regular sessions (open, close) in UTC from this month and the next."""
        today = now.astimezone(_ET).date()
        months = [(today.year, today.month)]
        months.append((today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1))
        out: list[tuple[dt.datetime, dt.datetime]] = []
        for year, month in months:
            if (year, month) not in self._calendar:
                self._calendar[(year, month)] = await self._month(year, month)
            days = self._calendar[(year, month)]
            out.extend(days if days is not None else _weekday_sessions(year, month))
        return sorted(out)

    async def _month(self, year: int, month: int) -> list[tuple[dt.datetime, dt.datetime]] | None:
        try:
            body = await self._get(
                "/v1/markets/calendar",
                "/v1/markets/calendar",
                params={"year": str(year), "month": f"{month:02d}"},
                on_404="none",
            )
        except (BrokerRejected, BadBrokerData) as exc:
            log.warning("tradier_calendar_unavailable", account=self.account.name, error=str(exc))
            return None
        cal = self._section(body, "calendar") if body is not None else None
        if cal is None:
            log.warning("tradier_calendar_unavailable", account=self.account.name, error="no calendar")
            return None
        days = self._items(cal, "days", "day")
        out = []
        for d in days:
            session = d.get("open")
            if d.get("status") != "open" or not isinstance(session, dict):
                continue
            try:
                day = dt.date.fromisoformat(str(d["date"]))
                start = dt.time.fromisoformat(str(session["start"]))
                end = dt.time.fromisoformat(str(session["end"]))
            except (KeyError, ValueError):
                raise self._bad(f"calendar day {str(d.get('date'))[:12]!r} is malformed", "calendar.days") from None
            out.append(
                (
                    dt.datetime.combine(day, start, _ET).astimezone(dt.UTC),
                    dt.datetime.combine(day, end, _ET).astimezone(dt.UTC),
                )
            )
        return out

    # -- parsing ------------------------------------------------------------------------

    def _order(self, d: Any, what: str, parent: Order | None = None) -> Order:
        order = self._parse_order(d, what, parent)
        if parent is not None:
            return order
        return self._remember(check_order(order, what, self._bad))

    def _remember(self, order: Order) -> Order:
        known = self._known
        known[order.broker_order_id] = order
        known.move_to_end(order.broker_order_id)
        while len(known) > KNOWN_ORDERS:
            known.popitem(last=False)
        return order

    def _parse_order(self, d: Any, what: str, parent: Order | None) -> Order:
        """One order; ``parent``: the order whose ``leg`` this is (its type, class and quantity, legs unset).

        A multileg order's legs share its net price: a leg carries no limit of its own. An
        OCO/OTO/OTOCO order's legs are orders of their own (own type, price, stop, status).
        An order without a type takes its parent's; a top-level one has none (refused by
        :func:`syncd.brokers.sanity.check_order`), never taken as a market order.
        """
        if not isinstance(d, dict):
            raise self._bad(f"{what} is not an object", what)
        status_raw = d.get("status")
        status = _STATUS.get(str(status_raw))
        if status is None:
            raise self._bad(f"{what}.status {str(status_raw)[:30]!r} is unknown", f"{what}.status")
        type_given = d.get("type")
        type_raw = "" if _is_null(type_given) or type_given == "" else str(type_given)
        order_type: OrderType | None = parent.type if parent is not None else None
        if type_raw:
            order_type = _TYPES.get(type_raw)
            if order_type is None:
                raise self._bad(f"{what}.type {type_raw[:30]!r} is unknown", f"{what}.type")
        cls_raw = str(d.get("class") or "equity")
        order_class = _CLASSES.get(cls_raw, OrderClass.SIMPLE)
        qty = self._num(d.get("quantity"), f"{what}.quantity")
        side_raw = d.get("side")
        side_intent = _SIDES.get(str(side_raw)) if side_raw not in (None, "", "null") else None
        option_symbol = d.get("option_symbol")
        raw_symbol = option_symbol if option_symbol and (cls_raw == "option" or parent is not None) else d.get("symbol")
        symbol = str(raw_symbol or "").strip()
        is_option = cls_raw in ("option", "multileg", "combo") or option_spec_or_none(symbol) is not None
        price = self._num(d.get("price"), f"{what}.price")
        if price is not None and type_raw == "credit":
            price = -abs(price)
        elif type_raw == "even":
            price = Decimal(0)
        in_multileg = parent is not None and parent.order_class == OrderClass.MLEG
        if in_multileg:
            price = None  # the parent's net, not this leg's own limit
        avg = self._num(d.get("avg_fill_price"), f"{what}.avg_fill_price")
        created = self._time(d.get("create_date"), f"{what}.create_date")
        updated = self._time(d.get("transaction_date"), f"{what}.transaction_date") or created
        ratio = None
        if in_multileg and parent is not None and parent.qty and qty is not None:
            ratio = int(qty / parent.qty) if qty % parent.qty == 0 else None
        tag = d.get("tag")
        contingent = order_class in CONTINGENT
        multileg = not contingent and (cls_raw in ("multileg", "combo") or bool(_present(d.get("leg"))))
        shell = Order(
            broker_order_id=str(d.get("id")),
            client_order_id=None,
            symbol="",
            side=None,
            type=order_type,
            order_class=OrderClass.MLEG if multileg else order_class,
            qty=qty,
            filled_qty=Decimal(0),
            status=status,
        )
        legs = tuple(
            self._order(leg, f"{what}.leg[{i}]", parent=shell)
            for i, leg in enumerate(self._listish(d.get("leg"), f"{what}.leg"))
        )
        if not symbol and legs:
            spec = option_spec_or_none(legs[0].symbol)
            symbol = spec.underlying if spec else legs[0].symbol
        stop = self._num(d.get("stop_price"), f"{what}.stop_price")
        return Order(
            broker_order_id=str(d.get("id")),
            client_order_id=str(tag) if tag not in (None, "", "null") else None,
            symbol=symbol,
            side=side_intent[0] if side_intent and not (legs and multileg) else None,
            type=order_type,
            order_class=shell.order_class,
            qty=qty,
            filled_qty=self._num(d.get("exec_quantity"), f"{what}.exec_quantity") or Decimal(0),
            status=status,
            asset_class=AssetClass.US_OPTION if is_option else AssetClass.US_EQUITY,
            stop_price=stop if order_type in (OrderType.STOP, OrderType.STOP_LIMIT) else None,
            filled_avg_price=avg if avg else None,  # 0 = not known yet, even when "filled"
            limit_price=price if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None,
            time_in_force=self._duration(d.get("duration"), f"{what}.duration"),
            ratio_qty=ratio,
            intent=side_intent[1] if side_intent else None,
            submitted_at=created,
            filled_at=updated if status == OrderStatus.FILLED else None,
            canceled_at=updated if status == OrderStatus.CANCELED else None,
            updated_at=updated,
            reject_reason=str(d["reason_description"]) if d.get("reason_description") else None,
            legs=legs,
        )

    def _duration(self, value: Any, field: str) -> TimeInForce:
        """Tradier's ``duration``: day, gtc, pre, post (kept, never folded into day); absent = day."""
        if _is_null(value) or value == "":
            return TimeInForce.DAY
        tif = _DURATIONS.get(str(value).strip().lower())
        if tif is None:
            raise self._bad(f"{field} {str(value)[:30]!r} is unknown", field)
        return tif

    def _quote(self, q: Any, what: str) -> Quote:
        if not isinstance(q, dict) or not isinstance(q.get("symbol"), str):
            raise self._bad(f"{what} has no symbol", f"{what}.symbol")
        g = q.get("greeks")
        greeks = None
        if isinstance(g, dict):
            greeks = Greeks(
                delta=self._num(g.get("delta"), f"{what}.greeks.delta"),
                gamma=self._num(g.get("gamma"), f"{what}.greeks.gamma"),
                theta=self._num(g.get("theta"), f"{what}.greeks.theta"),
                vega=self._num(g.get("vega"), f"{what}.greeks.vega"),
                rho=self._num(g.get("rho"), f"{what}.greeks.rho"),
                implied_volatility=self._num(g.get("mid_iv"), f"{what}.greeks.mid_iv"),
            )
        stamps = [self._num(q.get(k), f"{what}.{k}") for k in ("bid_date", "ask_date", "trade_date")]
        latest = max((s for s in stamps if s), default=None)
        quote_ = Quote(
            symbol=q["symbol"],
            bid=self._num(q.get("bid"), f"{what}.bid"),
            ask=self._num(q.get("ask"), f"{what}.ask"),
            last=self._num(q.get("last"), f"{what}.last"),
            bid_size=self._num(q.get("bidsize"), f"{what}.bidsize"),
            ask_size=self._num(q.get("asksize"), f"{what}.asksize"),
            at=self._epoch_ms(latest, f"{what}.bid_date") if latest else None,
            greeks=greeks,
        )
        return check_quote(quote_, what, self._bad)

    def _epoch_ms(self, value: Decimal, field: str) -> dt.datetime:
        try:
            return dt.datetime.fromtimestamp(float(value) / 1000, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise self._bad(f"{field} is not a time", field) from None

    def _section(self, body: Any, key: str) -> dict[str, Any] | None:
        """``body[key]`` as an object; ``None`` when Tradier says "null"."""
        if not isinstance(body, dict):
            raise self._bad(f"answer is not an object (expected {key!r})", key)
        if key not in body:
            raise self._bad(f"answer has no {key!r}", key)
        value = body[key]
        if _is_null(value):
            return None
        if not isinstance(value, dict):
            raise self._bad(f"{key} is not an object", key)
        return value

    def _items(self, body: Any, outer: str, inner: str) -> list[dict[str, Any]]:
        """``{outer: {inner: [...] | {...}}}`` or ``{outer: "null"}`` as a list of objects."""
        section = self._section(body, outer)
        if section is None:
            return []
        if inner not in section:
            # {"quotes": {"unmatched_symbols": ...}} has no quote at all; anything else is malformed
            if outer == "quotes" and "unmatched_symbols" in section:
                return []
            raise self._bad(f"{outer} has no {inner!r}", f"{outer}.{inner}")
        items = self._listish(section[inner], f"{outer}.{inner}")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self._bad(f"{outer}.{inner}[{i}] is not an object", f"{outer}.{inner}[{i}]")
        return items

    def _listish(self, value: Any, what: str) -> list[Any]:
        if _is_null(value):
            return []
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            return [value]  # Tradier's single object where a list is expected
        raise self._bad(f"{what} is neither a list nor an object", what)

    def _num(self, value: Any, field: str) -> Decimal | None:
        if _is_null(value):
            return None
        try:
            return decimal_or_none(value)
        except NotFinite:
            raise self._bad(f"{field} is not a finite number", field) from None
        except TooManyDigits as exc:
            raise self._bad(f"{field}: {exc}", field) from None
        except NotANumber:
            raise self._bad(f"{field} is not a number", field) from None

    def _req(self, value: Any, field: str) -> Decimal:
        out = self._num(value, field)
        if out is None:
            raise self._bad(f"{field} is missing", field)
        return out

    def _time(self, value: Any, field: str) -> dt.datetime | None:
        if _is_null(value) or value == "":
            return None
        try:
            t = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise self._bad(f"{field} is not a timestamp", field) from None
        return as_utc(t)

    def _bad(self, message: str, field: str) -> BadBrokerData:
        return BadBrokerData(f"tradier: {message}", field=field, broker="tradier", account=self.account.name)

    async def _get(
        self,
        path: str,
        endpoint: str,
        *,
        params: dict[str, str] | None = None,
        on_404: Literal["error", "not_found", "none"] = "error",
    ) -> Any:
        return await self._http.request(
            "GET", f"{self.base_url}{path}", endpoint=endpoint, params=params, on_404=on_404
        )

    def _reply(self, path: str, endpoint: str, *, params: dict[str, str] | None = None) -> Awaitable[tuple[str, Reply]]:
        """A GET as :meth:`_get` sends it (a 404 is an error), its 2xx answer undecoded."""
        return self._http.request_reply("GET", f"{self.base_url}{path}", endpoint=endpoint, params=params)


_ORDERS_PARAMS = {"includeTags": "true"}


# -- requests -------------------------------------------------------------------------------


def build_order_form(request: OrderRequest) -> list[tuple[str, str]]:
    """The form of ``POST /v1/accounts/{id}/orders``; ``BrokerRejected`` (nothing sent) if unplaceable."""

    def refuse(reason: str) -> BrokerRejected:
        return BrokerRejected(f"tradier: invalid order request: {reason}", reason=reason, broker="tradier")

    if not _TAG_RE.match(request.client_order_id):
        raise refuse("client_order_id must be 1-255 letters, digits or dashes to travel in Tradier's tag")
    if request.qty <= 0:
        raise refuse("qty must be positive")
    form: list[tuple[str, str]] = []
    if request.is_multileg:
        first = option_spec_or_none(request.legs[0].symbol)
        if first is None or len(request.legs) < 2:
            raise refuse("a multi-leg order needs at least two OCC option legs")
        form += [("class", "multileg"), ("symbol", first.underlying)]
        for i, leg in enumerate(request.legs):
            form += _leg_fields(i, leg, request.qty, refuse)
        if request.type == OrderType.MARKET:
            form.append(("type", "market"))
        elif request.type == OrderType.LIMIT and request.limit_price is not None:
            price = request.limit_price
            net = "debit" if price > 0 else "credit" if price < 0 else "even"
            form.append(("type", net))
            if net != "even":
                form.append(("price", plain(abs(price))))
        else:
            raise refuse("a multi-leg order is market or limit with limit_price")
    else:
        if request.symbol is None or request.side is None:
            raise refuse("a single-leg order needs symbol and side")
        spec = option_spec_or_none(request.symbol)
        if spec is not None:
            side = _OPTION_SIDE[(request.side, request.intent)]
            form += [("class", "option"), ("symbol", spec.underlying), ("option_symbol", request.symbol)]
        else:
            side = _EQUITY_SIDE[(request.side, request.intent)]
            form += [("class", "equity"), ("symbol", request.symbol)]
        form += [("side", side), ("quantity", plain(request.qty))]
        if request.type == OrderType.MARKET:
            form.append(("type", "market"))
        elif request.type == OrderType.LIMIT and request.limit_price is not None:
            form += [("type", "limit"), ("price", plain(request.limit_price))]
        else:
            raise refuse(f"order type {request.type.value!r} needs what syncd does not send (limit_price?)")
    if request.time_in_force not in _DURATIONS.values():
        raise refuse(f"time_in_force {request.time_in_force.value!r} is not offered by Tradier")
    form += [("duration", request.time_in_force.value), ("tag", request.client_order_id)]
    return form


def build_replace_form(request: ReplaceRequest) -> list[tuple[str, str]]:
    """The form of ``PUT /v1/accounts/{id}/orders/{order_id}`` (``price``; ``type=credit`` for a net
    credit); ``BrokerRejected`` (nothing sent) for what Tradier cannot change."""

    def refuse(reason: str) -> BrokerRejected:
        return BrokerRejected(f"tradier: invalid replace request: {reason}", reason=reason, broker="tradier")

    if request.qty is not None:
        raise refuse(
            "Tradier cannot change an order's quantity (its modify endpoint takes type, duration, price, stop)"
        )
    if request.limit_price is None:
        raise refuse("a replace changes limit_price")
    price = request.limit_price
    form: list[tuple[str, str]] = []
    if price < 0:
        form.append(("type", "credit"))
    form.append(("price", plain(abs(price))))
    return form


def _leg_fields(i: int, leg: LegRequest, qty: Decimal, refuse: Any) -> list[tuple[str, str]]:
    if option_spec_or_none(leg.symbol) is None:
        raise refuse(f"leg {i} symbol {leg.symbol[:40]!r} is not an OCC option symbol")
    if leg.ratio < 1:
        raise refuse(f"leg {i} ratio must be >= 1")
    return [
        (f"option_symbol[{i}]", leg.symbol),
        (f"side[{i}]", _OPTION_SIDE[(leg.side, leg.intent)]),
        (f"quantity[{i}]", plain(qty * leg.ratio)),
    ]


def available_quantities(orders: Iterable[Order]) -> dict[tuple[str, bool], Decimal]:
    """What open closing orders still commit, per (symbol, position is short).

    A closing order of a long position sells (``sell``/``sell_to_close``); of a short one it
    buys (``buy_to_cover``/``buy_to_close``). Its remaining quantity is ``qty - filled_qty``;
    multi-leg orders count per leg. An OCO/OTO/OTOCO group's closing orders hold once (the
    largest), an OTO/OTOCO's only once its entry has filled, at most what it filled: the rules of
    ``v_closing_order_holds`` (sql/0017_order_shapes.sql).
    """
    out: dict[tuple[str, bool], Decimal] = {}

    def held(o: Order, cap: Decimal | None = None) -> tuple[tuple[str, bool], Decimal] | None:
        if o.intent != Intent.CLOSE or o.side is None or o.status.is_terminal:
            return None
        key = (o.symbol, o.side == Side.BUY)  # buying to close = the position is short
        qty = o.qty or Decimal(0)
        return key, max(Decimal(0), (qty if cap is None else min(qty, cap)) - o.filled_qty)

    for order in orders:
        if order.status.is_terminal and not order.contingent:
            continue
        if order.contingent:
            # one-cancels-other: the group's closing orders hold the same shares once, not each;
            # an OTO/OTOCO's exits hold only once its entry (the first, opening leg) has filled
            cap = None
            if order.order_class != OrderClass.OCO:
                cap = max([order.filled_qty, *(leg.filled_qty for leg in order.legs if leg.intent == Intent.OPEN)])
                if cap <= 0:
                    continue
            group: dict[tuple[str, bool], Decimal] = {}
            for part in (order, *order.legs):
                h = held(part, cap)
                if h is not None:
                    group[h[0]] = max(group.get(h[0], Decimal(0)), h[1])
            for key, qty in group.items():
                out[key] = out.get(key, Decimal(0)) + qty
            continue
        for part in order.legs or (order,):
            h = held(part)
            if h is not None:
                out[h[0]] = out.get(h[0], Decimal(0)) + h[1]
    return out


def reason_of(body: Any) -> str | None:
    """Tradier's error text: ``{"errors": {"error": str | [str]}}`` or ``{"fault": {"faultstring": ...}}``."""
    if not isinstance(body, dict):
        return None
    errors = body.get("errors")
    if isinstance(errors, dict):
        err = errors.get("error")
        if isinstance(err, list):
            return "; ".join(str(e) for e in err if e) or None
        if err:
            return str(err)
    fault = body.get("fault")
    if isinstance(fault, dict) and fault.get("faultstring"):
        return str(fault["faultstring"])
    message = body.get("message")
    return str(message) if isinstance(message, str) and message else None


def _placed_order(broker_id: str, request: OrderRequest) -> Order:
    """What we know of an order Tradier accepted when its details could not be fetched."""
    legs = tuple(
        Order(
            broker_order_id=f"{broker_id}-{i}",
            client_order_id=None,
            symbol=leg.symbol,
            side=leg.side,
            type=request.type,
            order_class=OrderClass.SIMPLE,
            qty=request.qty * leg.ratio,
            filled_qty=Decimal(0),
            status=OrderStatus.PENDING_NEW,
            asset_class=AssetClass.US_OPTION,
            ratio_qty=leg.ratio,
            intent=leg.intent,
        )
        for i, leg in enumerate(request.legs)
    )
    symbol = request.symbol or ""
    if legs:
        spec = option_spec_or_none(legs[0].symbol)
        symbol = spec.underlying if spec else legs[0].symbol
    return Order(
        broker_order_id=broker_id,
        client_order_id=request.client_order_id,
        symbol=symbol,
        side=None if legs else request.side,
        type=request.type,
        order_class=OrderClass.MLEG if legs else OrderClass.SIMPLE,
        qty=request.qty,
        filled_qty=Decimal(0),
        status=OrderStatus.PENDING_NEW,
        asset_class=AssetClass.US_OPTION if legs or option_spec_or_none(symbol) else AssetClass.US_EQUITY,
        limit_price=request.limit_price,
        time_in_force=request.time_in_force,
        intent=request.intent,
        submitted_at=dt.datetime.now(dt.UTC),
        legs=legs,
    )


def _weekday_sessions(year: int, month: int) -> list[tuple[dt.datetime, dt.datetime]]:
    """Fallback when the calendar is unavailable: every weekday 09:30-16:00 New York (no holidays)."""
    out = []
    day = dt.date(year, month, 1)
    while day.month == month:
        if day.weekday() < 5:
            out.append(
                (
                    dt.datetime.combine(day, dt.time(9, 30), _ET).astimezone(dt.UTC),
                    dt.datetime.combine(day, dt.time(16, 0), _ET).astimezone(dt.UTC),
                )
            )
        day += dt.timedelta(days=1)
    return out


def _present(value: Any) -> Any:
    return None if _is_null(value) else value


def _history_kind(option_type: str) -> OptionEventKind | None:
    """The kind of a Tradier history ``option_type`` (``OPTEXP``: expired), or ``None``."""
    if option_type == "OPTEXP" or "EXPIR" in option_type:
        return OptionEventKind.EXPIRED
    if "ASGN" in option_type or "ASSIGN" in option_type:
        return OptionEventKind.ASSIGNED
    if "EXER" in option_type or option_type.endswith("EXC"):
        return OptionEventKind.EXERCISED
    return None


def _event_is_ahead(order: Order, status: OrderStatus, filled: Decimal, avg: Decimal | None) -> bool:
    """Whether an account event's state is newer than ``order``'s (then it replaces it).

    More filled; as filled, but with the fill price ``order`` lacks (Tradier's late fill price);
    or as filled with another status while ``order`` can still change (a cancel, an expiry). An
    event behind ``order`` (out of order) changes nothing here, and the order store would not let
    it go back either.
    """
    if filled != order.filled_qty:
        return filled > order.filled_qty
    if order.filled_avg_price is None and avg:
        return True
    return status != order.status and not order.status.is_terminal


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == "null")
