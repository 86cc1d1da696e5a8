"""The outbox (``order_requests``): what apps ask syncd to do at a broker, done exactly once.

Only when ``trading.enabled``; otherwise nothing here runs and queued requests stay
queued, untouched. One drainer per account at a time (a session advisory lock),
each request claimed with ``FOR UPDATE SKIP LOCKED``. For each request:

1. The payload is read as text and decoded here, within bounds (``MAX_PAYLOAD_BYTES``,
   ``MAX_PAYLOAD_DEPTH``, ``MAX_LEGS``), numbers as exact Decimals, then validated
   (docs/outbox.md): an unreadable or oversized payload, an unknown
   key, a missing field, a bad number (``"5_0"``, more decimals than the broker takes),
   a non-ASCII symbol, a bad client id, or a ``trade_id`` the request may not name (of
   another account; any on an ``open``) ends it ``failed`` with a readable
   ``last_error``, no broker call is made, and no trade it may not name is changed.
2. Its client id is fixed (generated when the app left it NULL) and committed
   before the first attempt; it never changes.
3. A request found ``submitting`` (a crash, a timeout, an unknown answer) is first
   looked up at the broker by its client id: found, it is recorded and
   ``submitted``; not found, it may be sent again, at most ``MAX_ATTEMPTS`` times
   in all, then it ends ``failed`` ("retries exhausted ...").
4. Otherwise it is marked ``submitting`` (``attempts + 1``) and COMMITTED, and
   only then sent. The broker's order is recorded through the same path as a
   poll (:mod:`syncd.trading.order_store`); ``BrokerRejected`` ends it ``rejected`` with
   the broker's reason (never retried).

``open`` creates the trade (legs, strategy, exit rules, ``requested_quantity``,
status ``pending``) in the transaction that marks the request ``submitting``;
``close`` closes what is actually held (per leg ``|position|`` minus what working
closing orders already hold; the trade's quantity is the minimum over legs divided
by each leg's ratio, capped by an optional ``qty``); ``cancel`` cancels the trade's
working orders. A close's ``limit_price`` is in the trade's terms (what one unit of
the trade is sold or bought back for; for a spread, the net with debit positive),
converted to the broker's signed net for a multi-leg order.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

import structlog

from syncd.brokers.base import BrokerError, BrokerRejected, BrokerUnavailable, OrderNotFound
from syncd.brokers.occ import option_spec_or_none
from syncd.brokers.types import Intent, LegRequest, Order, OrderRequest, OrderType, Side, TimeInForce
from syncd.context import Account, Context
from syncd.errors import describe
from syncd.trading.order_store import Applied, Conn, Link, Observation, apply_observations, lock_orders, notify
from syncd.trading.reconcile import Role

log = structlog.get_logger(__name__)

OUTBOX_LOCK_CLASS = 0x6F757462  # "outb": one drainer of an account's outbox at a time
MAX_ATTEMPTS = 3
# Every pattern is matched with fullmatch (a regex `$` also matches before a trailing "\n").
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9-]{1,48}")
SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9./-]{0,31}")
STRATEGY_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
DECIMAL_TEXT_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")  # a number given as a string: no "5_0", "1e3", " 5"
MAX_QTY = Decimal(10_000_000)
MAX_PRICE = Decimal(10_000_000)
MAX_LEGS = 4  # Alpaca's mleg and Tradier's multileg orders both take at most 4 legs
MAX_QTY_PLACES = 9  # fractional shares: Alpaca takes up to 9 decimals
MAX_PAYLOAD_BYTES = 16 * 1024  # of the payload as JSON text
MAX_PAYLOAD_DEPTH = 8  # nested arrays/objects; the deepest valid payload (legs) is 3
EXHAUSTED = "retries exhausted, broker answer unknown, client id not found"


class PayloadError(ValueError):
    """A request syncd cannot place; the message says what is wrong, for ``last_error``."""


# -- payloads (pure) -------------------------------------------------------------------------

_OPEN_KEYS = frozenset(
    {"symbol", "side", "legs", "qty", "type", "limit_price", "time_in_force", "strategy", "take_profit_pct",
     "stop_loss_pct"}
)
_CLOSE_KEYS = frozenset({"type", "limit_price", "qty", "time_in_force", "reason"})
_LEG_KEYS = frozenset({"symbol", "side", "ratio"})


@dataclass(frozen=True, slots=True)
class OpenPayload:
    qty: Decimal
    type: OrderType
    time_in_force: TimeInForce
    limit_price: Decimal | None
    legs: tuple[LegRequest, ...]  # one leg for a single-instrument order
    strategy: str
    take_profit_pct: Decimal | None
    stop_loss_pct: Decimal | None

    @property
    def underlying(self) -> str:
        spec = option_spec_or_none(self.legs[0].symbol)
        return spec.underlying if spec else self.legs[0].symbol

    def order_request(self, client_order_id: str) -> OrderRequest:
        if len(self.legs) == 1:
            leg = self.legs[0]
            return OrderRequest(
                client_order_id=client_order_id, qty=self.qty, type=self.type, time_in_force=self.time_in_force,
                symbol=leg.symbol, side=leg.side, intent=Intent.OPEN, limit_price=self.limit_price,
            )
        return OrderRequest(
            client_order_id=client_order_id, qty=self.qty, type=self.type, time_in_force=self.time_in_force,
            limit_price=self.limit_price, legs=self.legs,
        )


@dataclass(frozen=True, slots=True)
class ClosePayload:
    type: OrderType
    time_in_force: TimeInForce
    limit_price: Decimal | None
    qty: Decimal | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class CancelPayload:
    pass


Payload = OpenPayload | ClosePayload | CancelPayload


def _number(value: Any, key: str, *, positive: bool = True, whole: bool = False, limit: Decimal = MAX_QTY,
            places: int | None = None) -> Decimal:
    """An exact Decimal from a JSON number (read as Decimal, see :func:`read_payload`) or a plain decimal string.

    Never through a float: a float given in code goes through ``str`` (its shortest exact repr).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise PayloadError(f"{key} must be a number, got {type(value).__name__}")
    if isinstance(value, str) and not DECIMAL_TEXT_RE.fullmatch(value):
        raise PayloadError(f"{key} must be a number (plain decimal digits), got {value[:40]!r}")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise PayloadError(f"{key} must be a number, got {str(value)[:40]!r}") from None
    if not number.is_finite():
        raise PayloadError(f"{key} must be a finite number, got {str(value)[:40]!r}")
    if positive and number <= 0:
        raise PayloadError(f"{key} must be greater than 0, got {number}")
    if number.copy_abs() > limit:
        raise PayloadError(f"{key} is out of range: {str(number)[:40]}")
    if whole and number != number.to_integral_value():
        raise PayloadError(f"{key} must be a whole number for options, got {number}")
    if places is not None and decimal_places(number) > places:
        raise PayloadError(f"{key} has more than {places} decimal places: {number}")
    return number


def decimal_places(number: Decimal) -> int:
    """Digits after the point, trailing zeros not counted (``1.50`` -> 1), with no rounding context."""
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite: checked by the caller
    if not any(digits):
        return 0
    trailing = 0
    for digit in reversed(digits):
        if digit != 0 or trailing >= -exponent:
            break
        trailing += 1
    return max(0, -exponent - trailing)


def price_places(price: Decimal, option: bool) -> int:
    """The decimals a limit price may have, the rule both brokers apply.

    Options and multi-leg (net) prices: 2. Stocks: 2 at or above $1, 4 below $1 (Reg NMS
    Rule 612, as Alpaca and Tradier enforce it).
    """
    if option:
        return 2
    return 2 if price.copy_abs() >= 1 else 4


def check_price(price: Decimal | None, option: bool, key: str = "limit_price") -> None:
    """``PayloadError`` when ``price`` has more decimals than the broker takes for this instrument."""
    if price is None:
        return
    allowed = price_places(price, option)
    if decimal_places(price) > allowed:
        what = "an option or multi-leg price" if option else (
            "a stock price at or above $1" if allowed == 2 else "a stock price below $1")
        raise PayloadError(f"{key} {price} has more than {allowed} decimal places ({what} takes at most {allowed})")


def _ascii(value: Any) -> bool:
    return isinstance(value, str) and value.isascii()


def _choice(value: Any, key: str, enum: type[StrEnum], allowed: tuple[str, ...]) -> Any:
    if not _ascii(value) or value.lower() not in allowed:
        raise PayloadError(f"{key} must be one of {', '.join(allowed)}, got {str(value)[:40]!r}")
    return enum(value.lower())


def _side(value: Any, key: str) -> Side:
    result: Side = _choice(value, key, Side, ("buy", "sell"))
    return result


def _symbol(value: Any, key: str) -> str:
    """ASCII only, upper-cased (``"\\u017fpy".upper()`` is ``"SPY"``: a non-ASCII symbol is refused, never folded)."""
    if not _ascii(value) or not SYMBOL_RE.fullmatch(value.upper()):
        raise PayloadError(f"{key} must be a ticker or an OCC option symbol, got {str(value)[:40]!r}")
    return str(value.upper())


def _object(payload: Any, allowed: frozenset[str], kind: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise PayloadError(f"payload of a {kind} request must be a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise PayloadError(
            f"unknown key {unknown[0]!r} in {kind} payload (allowed: {', '.join(sorted(allowed)) or 'none'})"
        )
    return payload


def _legs(payload: dict[str, Any]) -> tuple[LegRequest, ...]:
    has_legs, has_symbol = "legs" in payload, "symbol" in payload or "side" in payload
    if has_legs and has_symbol:
        raise PayloadError("give either legs or symbol and side, not both")
    if not has_legs:
        if "symbol" not in payload:
            raise PayloadError("missing field 'symbol' (or 'legs')")
        if "side" not in payload:
            raise PayloadError("missing field 'side'")
        return (LegRequest(_symbol(payload["symbol"], "symbol"), _side(payload["side"], "side")),)
    raw = payload["legs"]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_LEGS:
        raise PayloadError(f"legs must be a list of 1 to {MAX_LEGS} legs")
    legs: list[LegRequest] = []
    for i, leg in enumerate(raw):
        where = f"legs[{i}]"
        leg = _object(leg, _LEG_KEYS, "leg")
        for key in ("symbol", "side"):
            if key not in leg:
                raise PayloadError(f"missing field '{key}' in {where}")
        ratio = _number(leg.get("ratio", 1), f"{where}.ratio", whole=True, limit=Decimal(100))
        legs.append(LegRequest(_symbol(leg["symbol"], f"{where}.symbol"), _side(leg["side"], f"{where}.side"),
                               int(ratio)))
    if len({leg.symbol for leg in legs}) != len(legs):
        raise PayloadError("legs name the same symbol twice")
    if len(legs) > 1 and any(option_spec_or_none(leg.symbol) is None for leg in legs):
        raise PayloadError("every leg of a multi-leg order must be an OCC option symbol")
    return tuple(legs)


def _order_terms(payload: dict[str, Any], multileg: bool, default_type: str | None) -> tuple[
    OrderType, TimeInForce, Decimal | None
]:
    if "type" not in payload and default_type is None:
        raise PayloadError("missing field 'type' (market or limit)")
    order_type: OrderType = _choice(payload.get("type", default_type), "type", OrderType, ("market", "limit"))
    tif: TimeInForce = _choice(payload.get("time_in_force", "day"), "time_in_force", TimeInForce,
                               tuple(t.value for t in TimeInForce))
    limit = payload.get("limit_price")
    if order_type == OrderType.LIMIT:
        if limit is None:
            raise PayloadError("missing field 'limit_price' (required for a limit order)")
        price = _number(limit, "limit_price", positive=not multileg, limit=MAX_PRICE, places=4)
        return order_type, tif, price
    if limit is not None:
        raise PayloadError("limit_price given for a market order")
    return order_type, tif, None


def _pct(payload: dict[str, Any], key: str) -> Decimal | None:
    value = payload.get(key)
    return None if value is None else _number(value, key, limit=Decimal(100_000))


def default_strategy(legs: tuple[LegRequest, ...]) -> str:
    if len(legs) > 1:
        return "CUSTOM_SPREAD"
    leg = legs[0]
    spec = option_spec_or_none(leg.symbol)
    direction = "LONG" if leg.side == Side.BUY else "SHORT"
    return f"{direction}_{spec.option_type.value.upper()}" if spec else f"{direction}_STOCK"


def parse_open(payload: Any) -> OpenPayload:
    data = _object(payload, _OPEN_KEYS, "open")
    legs = _legs(data)
    options = any(option_spec_or_none(leg.symbol) is not None for leg in legs)
    if "qty" not in data:
        raise PayloadError("missing field 'qty'")
    qty = _number(data["qty"], "qty", whole=options, places=MAX_QTY_PLACES)
    order_type, tif, limit = _order_terms(data, len(legs) > 1, None)
    check_price(limit, options or len(legs) > 1)
    strategy = data.get("strategy") or default_strategy(legs)
    if not isinstance(strategy, str) or not STRATEGY_RE.fullmatch(strategy):
        raise PayloadError(f"strategy must be letters, digits and _ (at most 64), got {str(strategy)[:40]!r}")
    return OpenPayload(qty, order_type, tif, limit, legs, strategy.upper(), _pct(data, "take_profit_pct"),
                       _pct(data, "stop_loss_pct"))


def parse_close(payload: Any) -> ClosePayload:
    data = _object(payload, _CLOSE_KEYS, "close")
    order_type, tif, limit = _order_terms(data, True, "market")
    qty = None if data.get("qty") is None else _number(data["qty"], "qty", places=MAX_QTY_PLACES)
    reason = data.get("reason")
    if reason is not None and (not isinstance(reason, str) or not reason.strip() or len(reason) > 200
                               or not reason.isprintable()):
        raise PayloadError("reason must be a non-empty string of at most 200 printable characters (no newline)")
    return ClosePayload(order_type, tif, limit, qty, reason.strip() if reason else None)


def _too_deep(text: str, limit: int) -> bool:
    """Whether JSON ``text`` nests arrays/objects more than ``limit`` deep (a scan, no recursion)."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def read_payload(text: str) -> Any:
    """A request's payload (``payload::text``) as Python, numbers as exact Decimals, within syncd's bounds.

    Read here rather than by the pool's jsonb codec, so a payload Postgres accepts but Python
    cannot decode (nested 5,000 deep, a 5,000-digit number) fails this request alone.
    """
    size = len(text.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload is {size} bytes as JSON, more than the {MAX_PAYLOAD_BYTES} syncd accepts")
    if _too_deep(text, MAX_PAYLOAD_DEPTH):
        raise PayloadError(f"payload nests arrays/objects more than {MAX_PAYLOAD_DEPTH} deep, more than syncd accepts")
    try:
        return json.loads(text, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"payload is not readable JSON: {str(exc)[:120]}") from None


def parse_payload(kind: str, payload: Any) -> Payload:
    """The validated payload of a request, or ``PayloadError`` saying what is wrong."""
    if kind == "open":
        return parse_open(payload)
    if kind == "close":
        return parse_close(payload)
    if kind == "cancel":
        _object(payload, frozenset(), "cancel")
        return CancelPayload()
    raise PayloadError(f"unknown request kind {kind!r}")


def make_client_order_id(request_id: int) -> str:
    """``syncd-<request id>-<random>``: letters, digits and ``-``, at most 48 characters."""
    cid = f"syncd-{request_id}-{secrets.token_hex(8)}"
    return cid[:48]


def check_client_order_id(cid: str) -> None:
    if not CLIENT_ID_RE.fullmatch(cid):
        raise PayloadError(
            f"client_order_id {cid[:60]!r} is not usable: it must be 1 to 48 letters, digits or '-'"
        )


# -- close quantities (pure) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CloseLeg:
    symbol: str
    side: Side  # the trade leg's side (buy = held long)
    ratio: int
    position: Decimal  # signed, from portfolio_positions
    committed: Decimal  # held by working closing orders already
    available: Decimal | None = None  # this trade's closable share (other trades on the symbol excluded)


def closable_quantity(legs: list[CloseLeg], cap: Decimal | None, whole: bool) -> Decimal:
    """Trade units that can be closed: min over legs of (|position| - committed) / ratio, capped.

    Where the leg says how much of it this trade may close (``available``: its share when other
    trades hold the same symbol), no more than that.
    """
    if not legs:
        return Decimal(0)
    units: list[Decimal] = []
    for leg in legs:
        if leg.position == 0 or (leg.position > 0) != (leg.side == Side.BUY):
            return Decimal(0)
        free = max(Decimal(0), abs(leg.position) - leg.committed)
        if leg.available is not None:
            free = min(free, max(Decimal(0), leg.available))
        units.append(free / leg.ratio)
    qty = min(units)
    if whole:
        qty = qty.to_integral_value(rounding=ROUND_FLOOR)
    if cap is not None:
        qty = min(qty, cap)
    return qty


def close_request(
    client_order_id: str, legs: list[CloseLeg], qty: Decimal, payload: ClosePayload
) -> OrderRequest:
    """The order that closes ``qty`` units of a trade: every leg the other way, intent close."""
    flip = {Side.BUY: Side.SELL, Side.SELL: Side.BUY}
    if len(legs) == 1:
        return OrderRequest(
            client_order_id=client_order_id, qty=qty, type=payload.type, time_in_force=payload.time_in_force,
            symbol=legs[0].symbol, side=flip[legs[0].side], intent=Intent.CLOSE, limit_price=payload.limit_price,
        )
    limit = -payload.limit_price if payload.limit_price is not None else None  # trade terms -> broker net
    return OrderRequest(
        client_order_id=client_order_id, qty=qty, type=payload.type, time_in_force=payload.time_in_force,
        limit_price=limit,
        legs=tuple(LegRequest(leg.symbol, flip[leg.side], leg.ratio, Intent.CLOSE) for leg in legs),
    )


# -- recovery (pure) ---------------------------------------------------------------------------


class Next(StrEnum):
    """What to do with a request whose last attempt's outcome is unknown, once the broker was asked."""

    RECORD = "record"  # the broker has it: record it, never send again
    SEND = "send"  # the broker has never seen it: safe to send (again)
    FAIL = "fail"  # not found, and the attempts are used up


def after_lookup(found: bool, attempts: int, max_attempts: int = MAX_ATTEMPTS) -> Next:
    if found:
        return Next.RECORD
    return Next.SEND if attempts < max_attempts else Next.FAIL


# -- draining ----------------------------------------------------------------------------------


# The outcomes syncd_outbox_requests_total counts (OutboxStats fields; "skipped" is not an attempt).
METRIC_OUTCOMES = ("submitted", "rejected", "failed", "pending")


@dataclass(slots=True)
class OutboxStats:
    submitted: int = 0
    rejected: int = 0
    failed: int = 0
    pending: int = 0  # left submitting: outcome still unknown
    skipped: int = 0  # held by another worker

    def as_dict(self) -> dict[str, int]:
        return {f"outbox_{k}": v for k, v in (
            ("submitted", self.submitted), ("rejected", self.rejected), ("failed", self.failed),
            ("pending", self.pending), ("skipped", self.skipped),
        ) if v}




async def drain_outbox(ctx: Context, account: Account) -> OutboxStats:
    """Work through the account's queued and submitting requests, oldest first."""
    stats = OutboxStats()
    if not ctx.settings.trading.enabled:
        return stats  # read-only mirror: nothing reaches a broker, queued stays queued
    q = ctx.queries
    if not await ctx.pool.fetchval(q["outbox_has_work"], account.id):
        return stats  # the usual case: one cheap query, no lock
    async with ctx.pool.acquire() as conn:
        if not await conn.fetchval(q["trade_outbox_try_lock"], OUTBOX_LOCK_CLASS, account.id):
            stats.skipped += 1
            return stats
        try:
            for row in await conn.fetch(q["outbox_pending"], account.id):
                outcome = await _work(ctx, account, conn, row["id"])
                setattr(stats, outcome, getattr(stats, outcome) + 1)
                if outcome != "skipped":
                    ctx.metrics.inc("syncd_outbox_requests_total", account=account.name, outcome=outcome)
        finally:
            await conn.execute(q["trade_outbox_unlock"], OUTBOX_LOCK_CLASS, account.id)
    return stats


async def _work(ctx: Context, account: Account, conn: Conn, request_id: int) -> str:
    """One request, start to end. Returns the OutboxStats field it counts under."""
    q = ctx.queries
    with_log = log.bind(request_id=request_id)
    async with conn.transaction():
        req = await conn.fetchrow(q["outbox_claim"], request_id)
        if req is None:
            return "skipped"
        trade = None if req["trade_id"] is None else await conn.fetchrow(q["outbox_trade"], req["trade_id"])
        refusal = trade_refusal(req["kind"], req["state"], req["attempts"], req["trade_id"], trade, account.id)
        if refusal is not None:
            req = {**dict(req), "trade_id": None}  # a trade it may not name: its end never touches it
        try:
            if refusal is not None:
                raise PayloadError(refusal)
            payload = parse_payload(req["kind"], read_payload(req["payload"]))
            cid = req["client_order_id"]
            if cid is None:
                cid = make_client_order_id(request_id)
                await conn.execute(q["outbox_set_client_id"], request_id, cid)
            check_client_order_id(cid)
        except PayloadError as exc:
            await _end(conn, q, account, req, "failed", f"bad request: {exc}")
            with_log.warning("order_request_failed", error=str(exc))
            return "failed"
    with_log = with_log.bind(client_order_id=cid, kind=req["kind"])
    if isinstance(payload, CancelPayload):
        return await _cancel(ctx, account, conn, req)
    attempts: int = req["attempts"]
    if req["state"] == "submitting":
        found = await _lookup(account, conn, q, req, cid)
        if found is None:
            return "pending"
        step = after_lookup(found is not False, attempts)
        if step == Next.RECORD:
            assert isinstance(found, Order)
            if isinstance(payload, OpenPayload) and req["trade_id"] is None:
                async with conn.transaction():
                    req = {**dict(req), "trade_id": await _open_trade(conn, q, account, req, payload)}
                    await conn.execute(q["outbox_set_trade"], req["id"], req["trade_id"])
            await _record(ctx, account, conn, req, payload, found)
            return "submitted"
        if step == Next.FAIL:
            await _end(conn, q, account, req, "failed", EXHAUSTED)
            with_log.error("order_request_failed", error=EXHAUSTED, attempts=attempts)
            return "failed"
    return await _send(ctx, account, conn, req, payload, cid)


async def _lookup(account: Account, conn: Conn, q: Any, req: Any, cid: str) -> Order | bool | None:
    """Ask the broker for the client id: the order, ``False`` (not found), or ``None`` (no answer)."""
    try:
        found = await account.broker.get_order_by_client_id(cid)
    except BrokerError as exc:
        await conn.execute(q["outbox_note_error"], req["id"], f"outcome unknown; lookup failed: {describe(exc)}")
        log.warning("order_request_lookup_failed", request_id=req["id"], error=describe(exc))
        return None
    return found if found is not None else False


async def _send(ctx: Context, account: Account, conn: Conn, req: Any, payload: Payload, cid: str) -> str:
    q = ctx.queries
    async with conn.transaction():
        try:
            order_request, trade_id = await _prepare(ctx, account, conn, req, payload, cid)
        except PayloadError as exc:
            await _end(conn, q, account, req, "failed", str(exc))
            log.warning("order_request_failed", request_id=req["id"], error=str(exc))
            return "failed"
        attempts = await conn.fetchval(q["outbox_mark_submitting"], req["id"], trade_id)
    # committed: from here on the outcome may be unknown, and the client id tells
    req = {**dict(req), "trade_id": trade_id, "state": "submitting", "attempts": attempts}
    try:
        order = await account.broker.submit_order(order_request)
    except BrokerRejected as exc:
        await _end(conn, q, account, req, "rejected", exc.reason or describe(exc))
        log.warning("order_rejected", request_id=req["id"], client_order_id=cid, reason=exc.reason)
        return "rejected"
    except BrokerError as exc:  # a timeout, a dropped answer, an answer we cannot read: the outcome is unknown
        log.warning("order_outcome_unknown", request_id=req["id"], client_order_id=cid, error=describe(exc))
        found = await _lookup(account, conn, q, req, cid)
        if isinstance(found, Order):
            await _record(ctx, account, conn, req, payload, found)
            return "submitted"
        await conn.execute(q["outbox_note_error"], req["id"], f"outcome unknown: {describe(exc)}")
        return "pending"  # the next pass asks again before anything is sent
    await _record(ctx, account, conn, req, payload, order)
    return "submitted"


async def _prepare(
    ctx: Context, account: Account, conn: Conn, req: Any, payload: Payload, cid: str
) -> tuple[OrderRequest, int | None]:
    """The order to send, and the request's trade (created here for ``open``)."""
    q = ctx.queries
    if isinstance(payload, OpenPayload):
        return payload.order_request(cid), await _open_trade(conn, q, account, req, payload)
    assert isinstance(payload, ClosePayload)
    trade = await _own_trade(conn, q, req, account)
    if trade["status"] not in ("open", "closing"):
        raise PayloadError(f"trade {trade['id']} is {trade['status']}: nothing to close")
    legs = [
        CloseLeg(r["symbol"], Side(r["side"]), r["ratio"], r["position_quantity"], r["committed"], r["available"])
        for r in await conn.fetch(q["outbox_close_inputs"], trade["id"], account.id)
    ]
    whole = any(option_spec_or_none(leg.symbol) is not None for leg in legs)
    check_price(payload.limit_price, whole or len(legs) > 1)
    qty = closable_quantity(legs, payload.qty, whole)
    if qty <= 0:
        raise PayloadError(f"nothing to close: trade {trade['id']} holds no quantity not already being closed")
    await conn.execute(q["outbox_set_close_reason"], trade["id"], payload.reason or "close requested")
    return close_request(cid, legs, qty, payload), trade["id"]


async def _open_trade(conn: Conn, q: Any, account: Account, req: Any, payload: OpenPayload) -> int:
    """The trade of an ``open`` request, created (pending, with legs and exit rules) on first need."""
    if req["trade_id"] is not None:
        return int(req["trade_id"])
    trade_id = int(await conn.fetchval(
        q["outbox_create_trade"], account.id, payload.underlying, payload.strategy, payload.qty,
        payload.take_profit_pct, payload.stop_loss_pct,
    ))
    await conn.execute(
        q["outbox_insert_legs"], trade_id, list(range(len(payload.legs))),
        [leg.symbol for leg in payload.legs], [leg.side.value for leg in payload.legs],
        [leg.ratio for leg in payload.legs],
    )
    log.info("trade_created", trade_id=trade_id, strategy=payload.strategy, qty=str(payload.qty))
    return trade_id


def trade_refusal(
    kind: str, state: str, attempts: int, trade_id: int | None, trade: Any, account_id: int
) -> str | None:
    """Why a request may not name its trade (``None``: it may).

    A request names only a trade of its own account (the database's keys refuse anything else
    too). An ``open`` creates its own trade: an app's ``trade_id`` on one is refused; syncd's own
    link (set as it marks the request ``submitting``, counting an attempt) is kept.
    """
    if trade_id is None:
        return None
    if trade is None or trade["account_id"] != account_id:
        return f"trade_id {trade_id} is not a trade of this account: a request names only its own account's trades"
    if kind == "open" and (state != "submitting" or attempts < 1):
        return f"an open request creates its own trade: trade_id must be NULL, got {trade_id}"
    return None


async def _own_trade(conn: Conn, q: Any, req: Any, account: Account) -> Any:
    if req["trade_id"] is None:
        raise PayloadError(f"a {req['kind']} request needs trade_id")
    trade = await conn.fetchrow(q["outbox_trade"], req["trade_id"])
    if trade is None or trade["account_id"] != account.id:
        raise PayloadError(f"trade {req['trade_id']} does not exist in this account")
    return trade


async def _record(ctx: Context, account: Account, conn: Conn, req: Any, payload: Payload, order: Order) -> None:
    """The broker has the order: link it to its trade, apply it like a poll, mark the request submitted."""
    q = ctx.queries
    role = Role.ENTRY if isinstance(payload, OpenPayload) else Role.EXIT
    applied = Applied()
    async with conn.transaction():
        await lock_orders(conn, q, account.id)
        links = {order.broker_order_id: Link(req["trade_id"], role)} if req["trade_id"] is not None else {}
        applied = await apply_observations(conn, q, account.id, [Observation(order, "poll")], links=links)
        await conn.execute(q["outbox_mark_submitted"], req["id"], order.broker_order_id)
    if req["trade_id"] is not None and req["trade_id"] not in applied.trades:
        applied.trades.append(req["trade_id"])  # created, or given its close reason, by this request
    await notify(conn, q, applied.notifications(account.name))
    log.info(
        "order_request_submitted", request_id=req["id"], client_order_id=order.client_order_id,
        broker_order_id=order.broker_order_id, status=order.status.value,
    )


async def _end(conn: Conn, q: Any, account: Account, req: Any, state: str, error: str) -> None:
    """The request ends without an order; its pending trade ends with it.

    Only a trade of the request's own account is ever changed (the queries say so too), and
    only one the request may name (:func:`trade_refusal` clears any other before we get here).
    """
    changed = None
    async with conn.transaction():
        await conn.execute(q["outbox_mark_final"], req["id"], state, error[:500])
        if req["kind"] == "open" and req["trade_id"] is not None:
            changed = await conn.fetchval(
                q["outbox_end_trade"], req["trade_id"], "rejected" if state == "rejected" else "cancelled",
                error[:500], account.id,
            )
        elif req["kind"] == "close" and req["trade_id"] is not None:
            changed = await conn.fetchval(q["outbox_reopen_trade"], req["trade_id"], account.id)  # open again
    if changed is not None:
        await notify(conn, q, Applied(trades=[changed]).notifications(account.name))



async def _cancel(ctx: Context, account: Account, conn: Conn, req: Any) -> str:
    """Cancel the trade's working orders (an order already gone counts as cancelled)."""
    q = ctx.queries
    try:
        trade = await _own_trade(conn, q, req, account)
    except PayloadError as exc:
        await _end(conn, q, account, req, "failed", f"bad request: {exc}")
        return "failed"
    if req["attempts"] >= MAX_ATTEMPTS:
        await _end(conn, q, account, req, "failed", "retries exhausted: the broker never confirmed the cancel")
        return "failed"
    await conn.fetchval(q["outbox_mark_submitting"], req["id"], trade["id"])
    ids = [r["broker_order_id"] for r in await conn.fetch(q["outbox_working_orders"], trade["id"])]
    for broker_order_id in ids:
        try:
            await account.broker.cancel_order(broker_order_id)
        except OrderNotFound:
            log.info("order_already_gone", broker_order_id=broker_order_id)
        except BrokerRejected as exc:  # e.g. already filled: nothing left to cancel
            log.info("order_cancel_refused", broker_order_id=broker_order_id, reason=exc.reason)
        except BrokerUnavailable as exc:
            await conn.execute(q["outbox_note_error"], req["id"], f"cancel outcome unknown: {describe(exc)}")
            return "pending"  # cancelling twice is harmless: the next pass tries again
    await conn.execute(q["outbox_mark_submitted"], req["id"], ids[0] if len(ids) == 1 else None)
    log.info("order_request_cancelled", request_id=req["id"], trade_id=trade["id"], orders=len(ids))
    return "submitted"

