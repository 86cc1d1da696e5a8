"""The outbox (``order_requests``): what apps ask syncd to do at a broker, done exactly once.

Only when ``trading.enabled``; otherwise nothing here runs and queued requests stay
queued, untouched. One drainer per account at a time (a session advisory lock),
each request claimed with ``FOR UPDATE SKIP LOCKED``. For each request:

1. The payload is read as text and decoded here, within bounds (``MAX_PAYLOAD_BYTES``,
   ``MAX_PAYLOAD_DEPTH``, ``MAX_LEGS``), numbers as exact Decimals, then validated by
   strict pydantic models (``OpenModel``, ``CloseModel``, ``CancelModel``; docs/outbox.md),
   every problem named by its key: an unreadable or oversized payload, an unknown
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
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import structlog
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainValidator, ValidationError, model_validator

from syncd.brokers.base import BrokerError, BrokerRejected, BrokerUnavailable, OrderNotFound
from syncd.brokers.occ import option_spec_or_none
from syncd.brokers.parse import NotFinite, finite
from syncd.brokers.types import Intent, LegRequest, Order, OrderRequest, OrderType, ReplaceRequest, Side, TimeInForce
from syncd.context import Account, Context
from syncd.db.locks import OUTBOX_LOCK_CLASS as OUTBOX_LOCK_CLASS
from syncd.errors import describe
from syncd.trading.order_store import Applied, Link, Observation
from syncd.trading.outbox_store import OutboxStore, ReplaceTarget, Request, Trade, has_work
from syncd.trading.reconcile import Role

log = structlog.get_logger(__name__)

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


# -- payload results (pure) -------------------------------------------------------------------


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
                client_order_id=client_order_id,
                qty=self.qty,
                type=self.type,
                time_in_force=self.time_in_force,
                symbol=leg.symbol,
                side=leg.side,
                intent=Intent.OPEN,
                limit_price=self.limit_price,
            )
        return OrderRequest(
            client_order_id=client_order_id,
            qty=self.qty,
            type=self.type,
            time_in_force=self.time_in_force,
            limit_price=self.limit_price,
            legs=self.legs,
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


@dataclass(frozen=True, slots=True)
class ReplacePayload:
    limit_price: Decimal | None  # the new limit, in the broker's terms (a multi-leg order's signed net)
    qty: Decimal | None  # the order's new quantity
    request_id: int | None  # the request whose trade's order this amends (instead of trade_id)


Payload = OpenPayload | ClosePayload | CancelPayload | ReplacePayload


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
        what = (
            "an option or multi-leg price"
            if option
            else ("a stock price at or above $1" if allowed == 2 else "a stock price below $1")
        )
        raise PayloadError(f"{key} {price} has more than {allowed} decimal places ({what} takes at most {allowed})")


def default_strategy(legs: tuple[LegRequest, ...]) -> str:
    if len(legs) > 1:
        return "CUSTOM_SPREAD"
    leg = legs[0]
    spec = option_spec_or_none(leg.symbol)
    direction = "LONG" if leg.side == Side.BUY else "SHORT"
    return f"{direction}_{spec.option_type.value.upper()}" if spec else f"{direction}_STOCK"


# -- payloads (pure): pydantic models hold every rule; the errors name the key --------------------

_E = TypeVar("_E", bound=StrEnum)


def _number(
    *, positive: bool = True, whole: bool = False, limit: Decimal = MAX_QTY, places: int | None = None
) -> Callable[[object], Decimal]:
    """An exact Decimal from a JSON number (read as Decimal, see :func:`read_payload`) or a plain decimal string.

    Never through a float: a float given in code goes through ``str`` (its shortest exact repr).
    A bool is not a number; a string must be plain digits (no ``"5_0"``, ``"1e3"``, ``" 5"``).
    """

    def check(value: object) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
            raise ValueError(f"must be a number, got {type(value).__name__}")
        if isinstance(value, str) and not DECIMAL_TEXT_RE.fullmatch(value):
            raise ValueError(f"must be a number (plain decimal digits), got {value[:40]!r}")
        try:
            number = finite(value if isinstance(value, Decimal) else Decimal(str(value)))
        except NotFinite:
            raise ValueError(f"must be a finite number, got {str(value)[:40]!r}") from None
        except InvalidOperation:
            raise ValueError(f"must be a number, got {str(value)[:40]!r}") from None
        if positive and number <= 0:
            raise ValueError(f"must be greater than 0, got {number}")
        if number.copy_abs() > limit:
            raise ValueError(f"is out of range: {str(number)[:40]}")
        if whole and number != number.to_integral_value():
            raise ValueError(f"must be a whole number for options, got {number}")
        if places is not None and decimal_places(number) > places:
            raise ValueError(f"has more than {places} decimal places: {number}")
        return number

    return check


def _choice(enum: type[_E], allowed: tuple[str, ...]) -> PlainValidator:
    """One of ``allowed``, any case, ASCII only (``"mar\\u212aet".lower()`` is ``"market"``: refused, never folded)."""

    def check(value: object) -> _E:
        if not isinstance(value, str) or not value.isascii() or value.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {str(value)[:40]!r}")
        return enum(value.lower())

    return PlainValidator(check)


def _symbol(value: object) -> str:
    """ASCII only, upper-cased (``"\\u017fpy".upper()`` is ``"SPY"``: a non-ASCII symbol is refused, never folded)."""
    if not isinstance(value, str) or not value.isascii() or not SYMBOL_RE.fullmatch(value.upper()):
        raise ValueError(f"must be a ticker or an OCC option symbol, got {str(value)[:40]!r}")
    return value.upper()


def _strategy(value: object) -> str | None:
    """Letters, digits and ``_``; empty (or absent) means the default for the legs."""
    if not value:
        return None
    if not isinstance(value, str) or not STRATEGY_RE.fullmatch(value):
        raise ValueError(f"must be letters, digits and _ (at most 64), got {str(value)[:40]!r}")
    return value


def _reason(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 200 or not value.isprintable():
        raise ValueError("must be a non-empty string of at most 200 printable characters (no newline)")
    return value.strip()


def _optional_id() -> PlainValidator:
    return PlainValidator(lambda value: None if value is None else _request_id(value))


def _optional(check: Callable[[object], Decimal]) -> PlainValidator:
    """``check``, with an explicit JSON ``null`` meaning absent."""
    return PlainValidator(lambda value: None if value is None else check(value))


def _legs_list(value: object) -> object:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_LEGS:
        raise ValueError(f"must be a list of 1 to {MAX_LEGS} legs")
    return value


Qty = Annotated[Decimal, PlainValidator(_number(places=MAX_QTY_PLACES))]
Price = Annotated[Decimal | None, _optional(_number(positive=False, limit=MAX_PRICE, places=4))]
Pct = Annotated[Decimal | None, _optional(_number(limit=Decimal(100_000)))]
SideField = Annotated[Side, _choice(Side, ("buy", "sell"))]
_SIDE = _choice(Side, ("buy", "sell"))
TypeField = Annotated[OrderType, _choice(OrderType, ("market", "limit"))]
TifField = Annotated[TimeInForce, _choice(TimeInForce, tuple(t.value for t in TimeInForce))]
Symbol = Annotated[str, PlainValidator(_symbol)]


class _Model(BaseModel):
    """Strict: an unknown key is refused, nothing is coerced (every field has its own exact validator)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LegModel(_Model):
    symbol: Symbol
    side: SideField
    ratio: Annotated[Decimal, PlainValidator(_number(whole=True, limit=Decimal(100)))] = Decimal(1)

    def leg(self) -> LegRequest:
        return LegRequest(self.symbol, self.side, int(self.ratio))


class OpenModel(_Model):
    # explicit nulls reach the validators (and are refused): only an absent key is None
    symbol: Annotated[str | None, PlainValidator(_symbol)] = None
    side: Annotated[Side | None, _SIDE] = None
    legs: Annotated[list[LegModel] | None, BeforeValidator(_legs_list)] = None
    qty: Qty
    type: TypeField
    limit_price: Price = None
    time_in_force: TifField = TimeInForce.DAY
    strategy: Annotated[str | None, PlainValidator(_strategy)] = None
    take_profit_pct: Pct = None
    stop_loss_pct: Pct = None

    def order_legs(self) -> tuple[LegRequest, ...]:
        if self.legs is not None:
            return tuple(leg.leg() for leg in self.legs)
        assert self.symbol is not None and self.side is not None  # checked by _rules
        return (LegRequest(self.symbol, self.side),)

    @model_validator(mode="after")
    def _rules(self) -> OpenModel:
        given = self.model_fields_set
        if "legs" in given and ("symbol" in given or "side" in given):
            raise ValueError("give either legs or symbol and side, not both")
        if "legs" not in given:
            if "symbol" not in given:
                raise ValueError("missing field 'symbol' (or 'legs')")
            if "side" not in given:
                raise ValueError("missing field 'side'")
        legs = self.order_legs()
        if len({leg.symbol for leg in legs}) != len(legs):
            raise ValueError("legs name the same symbol twice")
        options = [option_spec_or_none(leg.symbol) is not None for leg in legs]
        if len(legs) > 1 and not all(options):
            raise ValueError("every leg of a multi-leg order must be an OCC option symbol")
        if any(options) and self.qty != self.qty.to_integral_value():
            raise ValueError(f"qty must be a whole number for options, got {self.qty}")
        _limit_rules(self.type, self.limit_price, multileg=len(legs) > 1)
        check_price(self.limit_price, any(options) or len(legs) > 1)
        return self

    def payload(self) -> OpenPayload:
        legs = self.order_legs()
        strategy = (self.strategy or default_strategy(legs)).upper()
        return OpenPayload(
            self.qty,
            self.type,
            self.time_in_force,
            self.limit_price,
            legs,
            strategy,
            self.take_profit_pct,
            self.stop_loss_pct,
        )


class CloseModel(_Model):
    type: TypeField = OrderType.MARKET
    limit_price: Price = None
    qty: Annotated[Decimal | None, _optional(_number(places=MAX_QTY_PLACES))] = None
    time_in_force: TifField = TimeInForce.DAY
    reason: Annotated[str | None, PlainValidator(_reason)] = None

    @model_validator(mode="after")
    def _rules(self) -> CloseModel:
        _limit_rules(self.type, self.limit_price, multileg=True)  # a close's price may be a spread's net
        return self

    def payload(self) -> ClosePayload:
        return ClosePayload(self.type, self.time_in_force, self.limit_price, self.qty, self.reason)


class CancelModel(_Model):
    pass


def _request_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
        raise ValueError(f"must be the id of a request (a whole number greater than 0), got {str(value)[:40]!r}")
    return value


class ReplaceModel(_Model):
    limit_price: Price = None
    qty: Annotated[Decimal | None, _optional(_number(places=MAX_QTY_PLACES))] = None
    request_id: Annotated[int | None, _optional_id()] = None

    @model_validator(mode="after")
    def _rules(self) -> ReplaceModel:
        if self.limit_price is None and self.qty is None:
            raise ValueError("a replace changes limit_price or qty: give at least one")
        return self

    def payload(self) -> ReplacePayload:
        return ReplacePayload(self.limit_price, self.qty, self.request_id)


def _limit_rules(order_type: OrderType, limit: Decimal | None, multileg: bool) -> None:
    if order_type == OrderType.LIMIT:
        if limit is None:
            raise ValueError("missing field 'limit_price' (required for a limit order)")
        if not multileg and limit <= 0:
            raise ValueError(f"limit_price must be greater than 0, got {limit}")
    elif limit is not None:
        raise ValueError("limit_price given for a market order")


_MODELS: dict[str, type[_Model]] = {
    "open": OpenModel,
    "close": CloseModel,
    "cancel": CancelModel,
    "replace": ReplaceModel,
}
_MISSING_HINTS = {"type": " (market or limit)"}


def _where(loc: tuple[int | str, ...]) -> str:
    """``("legs", 0, "ratio")`` -> ``"legs[0].ratio"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def describe_payload_error(exc: ValidationError, kind: str) -> str:
    """Every problem pydantic found, readably, each naming its key (unknown keys first)."""
    lines: list[str] = []
    for err in sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden"):
        loc = tuple(err["loc"])
        where, key = _where(loc), str(loc[-1]) if loc else ""
        in_leg = loc[:1] == ("legs",) and len(loc) >= 2
        what = "leg" if in_leg else kind
        owner = _where(loc[:2]) if in_leg else ""
        if err["type"] == "extra_forbidden":
            model: type[_Model] = LegModel if in_leg else _MODELS[kind]
            allowed = ", ".join(sorted(model.model_fields)) or "none"
            lines.append(f"unknown key {key!r} in {what} payload{' ' + owner if owner else ''} (allowed: {allowed})")
        elif err["type"] == "missing":
            lines.append(f"missing field {key!r}{_MISSING_HINTS.get(key, '')}{' in ' + owner if owner else ''}")
        elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
            got = type(err["input"]).__name__
            lines.append(
                f"{where} must be a JSON object, got {got}"
                if where
                else f"payload of a {kind} request must be a JSON object, got {got}"
            )
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where} {msg}" if where else msg)
    return "; ".join(lines)


def _validate(kind: str, payload: Any) -> _Model:
    try:
        return _MODELS[kind].model_validate(payload)
    except ValidationError as exc:
        raise PayloadError(describe_payload_error(exc, kind)) from None


def parse_open(payload: Any) -> OpenPayload:
    model = _validate("open", payload)
    assert isinstance(model, OpenModel)
    return model.payload()


def parse_close(payload: Any) -> ClosePayload:
    model = _validate("close", payload)
    assert isinstance(model, CloseModel)
    return model.payload()


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
        _validate("cancel", payload)
        return CancelPayload()
    if kind == "replace":
        model = _validate("replace", payload)
        assert isinstance(model, ReplaceModel)
        return model.payload()
    raise PayloadError(f"unknown request kind {kind!r}")


def make_client_order_id(request_id: int) -> str:
    """``syncd-<request id>-<random>``: letters, digits and ``-``, at most 48 characters."""
    cid = f"syncd-{request_id}-{secrets.token_hex(8)}"
    return cid[:48]


def check_client_order_id(cid: str) -> None:
    if not CLIENT_ID_RE.fullmatch(cid):
        raise PayloadError(f"client_order_id {cid[:60]!r} is not usable: it must be 1 to 48 letters, digits or '-'")


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


def close_request(client_order_id: str, legs: list[CloseLeg], qty: Decimal, payload: ClosePayload) -> OrderRequest:
    """The order that closes ``qty`` units of a trade: every leg the other way, intent close."""
    flip = {Side.BUY: Side.SELL, Side.SELL: Side.BUY}
    if len(legs) == 1:
        return OrderRequest(
            client_order_id=client_order_id,
            qty=qty,
            type=payload.type,
            time_in_force=payload.time_in_force,
            symbol=legs[0].symbol,
            side=flip[legs[0].side],
            intent=Intent.CLOSE,
            limit_price=payload.limit_price,
        )
    limit = -payload.limit_price if payload.limit_price is not None else None  # trade terms -> broker net
    return OrderRequest(
        client_order_id=client_order_id,
        qty=qty,
        type=payload.type,
        time_in_force=payload.time_in_force,
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
        return {
            f"outbox_{k}": v
            for k, v in (
                ("submitted", self.submitted),
                ("rejected", self.rejected),
                ("failed", self.failed),
                ("pending", self.pending),
                ("skipped", self.skipped),
            )
            if v
        }


async def drain_outbox(ctx: Context, account: Account) -> OutboxStats:
    """Work through the account's queued and submitting requests, oldest first."""
    stats = OutboxStats()
    if not ctx.settings.trading.enabled:
        return stats  # read-only mirror: nothing reaches a broker, queued stays queued
    if not await has_work(ctx.pool, ctx.queries, account.id):
        return stats  # the usual case: one cheap query, no lock
    async with ctx.pool.acquire() as conn:
        store = OutboxStore(conn, ctx.queries)
        if not await store.try_lock(OUTBOX_LOCK_CLASS, account.id):
            stats.skipped += 1
            return stats
        try:
            for request_id in await store.pending(account.id):
                outcome = await _work(account, store, request_id)
                setattr(stats, outcome, getattr(stats, outcome) + 1)
                if outcome != "skipped":
                    ctx.metrics.inc("syncd_outbox_requests_total", account=account.name, outcome=outcome)
        finally:
            await store.unlock(OUTBOX_LOCK_CLASS, account.id)
    return stats


async def _work(account: Account, store: OutboxStore, request_id: int) -> str:
    """One request, start to end. Returns the OutboxStats field it counts under."""
    with_log = log.bind(request_id=request_id)
    async with store.transaction():
        req = await store.claim(request_id)
        if req is None:
            return "skipped"
        trade = None if req.trade_id is None else await store.trade(req.trade_id)
        refusal = trade_refusal(req.kind, req.state, req.attempts, req.trade_id, trade, account.id)
        if refusal is not None:
            req = replace(req, trade_id=None)  # a trade it may not name: its end never touches it
        try:
            if refusal is not None:
                raise PayloadError(refusal)
            payload = parse_payload(req.kind, read_payload(req.payload))
            cid = req.client_order_id
            if cid is None:
                cid = make_client_order_id(request_id)
                await store.set_client_id(request_id, cid)
            check_client_order_id(cid)
        except PayloadError as exc:
            await _end(store, account, req, "failed", f"bad request: {exc}")
            with_log.warning("order_request_failed", error=str(exc))
            return "failed"
    with_log = with_log.bind(client_order_id=cid, kind=req.kind)
    if isinstance(payload, CancelPayload):
        return await _cancel(store, account, req)
    if req.state == "submitting":
        found = await _lookup(account, store, req, cid)
        if found is False and isinstance(payload, ReplacePayload):
            found = await _lookup_replaced(account, store, req, payload)
        if found is None:
            return "pending"
        step = after_lookup(found is not False, req.attempts)
        if step == Next.RECORD:
            assert isinstance(found, Order)
            if isinstance(payload, OpenPayload) and req.trade_id is None:
                async with store.transaction():
                    req = replace(req, trade_id=await _open_trade(store, account, req, payload))
                    assert req.trade_id is not None
                    await store.set_trade(req.id, req.trade_id)
            await _record(
                store, account, req, payload, found, await _replaced_role(store, account, req, payload, found)
            )
            return "submitted"
        if step == Next.FAIL:
            await _end(store, account, req, "failed", EXHAUSTED)
            with_log.error("order_request_failed", error=EXHAUSTED, attempts=req.attempts)
            return "failed"
    return await _send(store, account, req, payload, cid)


async def _lookup(account: Account, store: OutboxStore, req: Request, cid: str) -> Order | bool | None:
    """Ask the broker for the client id: the order, ``False`` (not found), or ``None`` (no answer)."""
    try:
        found = await account.broker.get_order_by_client_id(cid)
    except BrokerError as exc:
        await store.note_error(req.id, f"outcome unknown; lookup failed: {describe(exc)}")
        log.warning("order_request_lookup_failed", request_id=req.id, error=describe(exc))
        return None
    return found if found is not None else False


async def _send(store: OutboxStore, account: Account, req: Request, payload: Payload, cid: str) -> str:
    async with store.transaction():
        try:
            order_request, trade_id, role = await _prepare(store, account, req, payload, cid)
        except PayloadError as exc:
            await _end(store, account, req, "failed", str(exc))
            log.warning("order_request_failed", request_id=req.id, error=str(exc))
            return "failed"
        attempts = await store.mark_submitting(req.id, trade_id)
    # committed: from here on the outcome may be unknown, and the client id tells
    req = replace(req, trade_id=trade_id, state="submitting", attempts=attempts)
    try:
        if isinstance(order_request, ReplaceRequest):
            order = await account.broker.replace_order(order_request)
        else:
            order = await account.broker.submit_order(order_request)
    except BrokerRejected as exc:
        await _end(store, account, req, "rejected", exc.reason or describe(exc))
        log.warning("order_rejected", request_id=req.id, client_order_id=cid, reason=exc.reason)
        return "rejected"
    except OrderNotFound as exc:
        if not isinstance(order_request, ReplaceRequest):
            raise
        reason = f"the broker has no order {order_request.broker_order_id}: {describe(exc)}"
        await _end(store, account, req, "rejected", reason)
        log.warning("order_rejected", request_id=req.id, client_order_id=cid, reason=reason)
        return "rejected"
    except BrokerError as exc:  # a timeout, a dropped answer, an answer we cannot read: the outcome is unknown
        log.warning("order_outcome_unknown", request_id=req.id, client_order_id=cid, error=describe(exc))
        found = await _lookup(account, store, req, cid)
        if found is False and isinstance(payload, ReplacePayload):
            found = await _lookup_replaced(account, store, req, payload)
        if isinstance(found, Order):
            await _record(store, account, req, payload, found, role)
            return "submitted"
        await store.note_error(req.id, f"outcome unknown: {describe(exc)}")
        return "pending"  # the next pass asks again before anything is sent
    await _record(store, account, req, payload, order, role)
    return "submitted"


async def _prepare(
    store: OutboxStore, account: Account, req: Request, payload: Payload, cid: str
) -> tuple[OrderRequest | ReplaceRequest, int | None, Role | None]:
    """The order to send (or the change to make), the request's trade (created here for ``open``)
    and, for a replace, the role its order has in the trade (the replacement inherits it)."""
    if isinstance(payload, OpenPayload):
        return payload.order_request(cid), await _open_trade(store, account, req, payload), None
    if isinstance(payload, ReplacePayload):
        trade_id, target = await _replace_target(store, account, req, payload)
        if payload.limit_price is not None and not target.option and payload.limit_price <= 0:
            raise PayloadError(f"bad request: limit_price must be greater than 0, got {payload.limit_price}")
        try:
            check_price(payload.limit_price, target.option)
        except PayloadError as exc:
            raise PayloadError(f"bad request: {exc}") from None
        if payload.qty is not None and target.option and payload.qty != payload.qty.to_integral_value():
            raise PayloadError(f"bad request: qty must be a whole number for options, got {payload.qty}")
        change = ReplaceRequest(target.broker_order_id, cid, payload.qty, payload.limit_price)
        return change, trade_id, Role(target.role) if target.role else Role.ENTRY
    assert isinstance(payload, ClosePayload)
    trade = await _own_trade(store, req, account)
    if trade.status not in ("open", "closing"):
        raise PayloadError(f"trade {trade.id} is {trade.status}: nothing to close")
    legs = [
        CloseLeg(r.symbol, r.side, r.ratio, r.position_quantity, r.committed, r.available)
        for r in await store.close_inputs(trade.id, account.id)
    ]
    whole = any(option_spec_or_none(leg.symbol) is not None for leg in legs)
    check_price(payload.limit_price, whole or len(legs) > 1)
    qty = closable_quantity(legs, payload.qty, whole)
    if qty <= 0:
        raise PayloadError(f"nothing to close: trade {trade.id} holds no quantity not already being closed")
    await store.set_close_reason(trade.id, payload.reason or "close requested")
    return close_request(cid, legs, qty, payload), trade.id, Role.EXIT


async def _replace_target(
    store: OutboxStore, account: Account, req: Request, payload: ReplacePayload
) -> tuple[int, ReplaceTarget]:
    """The trade a replace names (by ``trade_id`` or the request it amends) and the order it changes."""
    trade_id = req.trade_id
    if payload.request_id is not None:
        named = await store.request_trade(payload.request_id, account.id)
        if named is None:
            raise PayloadError(f"request {payload.request_id} is not a request of this account with a trade")
        if trade_id is not None and trade_id != named:
            raise PayloadError(f"trade_id {trade_id} is not the trade of request {payload.request_id} ({named})")
        trade_id = named
    if trade_id is None:
        raise PayloadError("a replace request needs trade_id (or request_id in its payload)")
    trade = await store.trade(trade_id)
    if trade is None or trade.account_id != account.id:
        raise PayloadError(f"trade {trade_id} does not exist in this account")
    if trade.status not in ("pending", "open", "closing"):
        raise PayloadError(f"trade {trade.id} is {trade.status}: nothing to replace")
    targets = await store.replace_targets(trade.id, account.id)
    working = [t for t in targets if t.working]
    if len(working) > 1:
        ids = ", ".join(t.broker_order_id for t in working[:4])
        raise PayloadError(f"trade {trade.id} has {len(working)} working orders ({ids}): a replace changes one")
    if not targets:
        raise PayloadError(f"trade {trade.id} has no order to replace")
    return trade.id, working[0] if working else targets[0]


async def _replaced_role(
    store: OutboxStore, account: Account, req: Request, payload: Payload, order: Order
) -> Role | None:
    """For a replace found after a lost answer: the role the replaced order has in the trade (the
    order ``order`` replaced, or ``order`` itself when changed in place; else the working one)."""
    if not isinstance(payload, ReplacePayload) or req.trade_id is None:
        return None
    targets = await store.replace_targets(req.trade_id, account.id)
    named = [t for t in targets if t.broker_order_id in (order.replaces, order.broker_order_id)]
    role = next((t.role for t in named + targets if t.role), None)
    return Role(role) if role else Role.ENTRY


async def _lookup_replaced(
    account: Account, store: OutboxStore, req: Request, payload: ReplacePayload
) -> Order | bool | None:
    """A replace whose answer was lost, not found by its client id (Tradier changes the order in place,
    keeping its tag): the order it changes, when it already has the new terms; ``False`` otherwise."""
    try:
        async with store.transaction():
            _, target = await _replace_target(store, account, req, payload)
    except PayloadError:
        return False
    try:
        order = await account.broker.get_order(target.broker_order_id)
    except OrderNotFound:
        return False
    except BrokerError as exc:
        await store.note_error(req.id, f"outcome unknown; lookup failed: {describe(exc)}")
        return None
    if order.replaced_by is not None:
        return False  # replaced by someone else's change: ours was never made (its client id is unknown)
    if payload.limit_price is not None and order.limit_price != payload.limit_price:
        return False
    if payload.qty is not None and order.qty != payload.qty:
        return False
    return order


async def _open_trade(store: OutboxStore, account: Account, req: Request, payload: OpenPayload) -> int:
    """The trade of an ``open`` request, created (pending, with legs and exit rules) on first need."""
    if req.trade_id is not None:
        return req.trade_id
    trade_id = await store.create_trade(
        account.id, payload.underlying, payload.strategy, payload.qty, payload.take_profit_pct, payload.stop_loss_pct
    )
    await store.insert_legs(trade_id, payload.legs)
    log.info("trade_created", trade_id=trade_id, strategy=payload.strategy, qty=str(payload.qty))
    return trade_id


def trade_refusal(
    kind: str, state: str, attempts: int, trade_id: int | None, trade: Trade | None, account_id: int
) -> str | None:
    """Why a request may not name its trade (``None``: it may).

    A request names only a trade of its own account (the database's keys refuse anything else
    too). An ``open`` creates its own trade: an app's ``trade_id`` on one is refused; syncd's own
    link (set as it marks the request ``submitting``, counting an attempt) is kept.
    """
    if trade_id is None:
        return None
    if trade is None or trade.account_id != account_id:
        return f"trade_id {trade_id} is not a trade of this account: a request names only its own account's trades"
    if kind == "open" and (state != "submitting" or attempts < 1):
        return f"an open request creates its own trade: trade_id must be NULL, got {trade_id}"
    return None


async def _own_trade(store: OutboxStore, req: Request, account: Account) -> Trade:
    if req.trade_id is None:
        raise PayloadError(f"a {req.kind} request needs trade_id")
    trade = await store.trade(req.trade_id)
    if trade is None or trade.account_id != account.id:
        raise PayloadError(f"trade {req.trade_id} does not exist in this account")
    return trade


async def _record(
    store: OutboxStore, account: Account, req: Request, payload: Payload, order: Order, role: Role | None = None
) -> None:
    """The broker has the order: link it to its trade, apply it like a poll, mark the request submitted.

    A replace's order (Alpaca: the new one) takes the role the replaced order had; the replaced
    one is asked for once more, so its ``replaced`` status and fills are recorded now, not at the
    next poll.
    """
    if role is None:
        role = Role.ENTRY if isinstance(payload, OpenPayload) else Role.EXIT
    observations = [Observation(order, "poll")]
    if isinstance(payload, ReplacePayload) and order.replaces and order.replaces != order.broker_order_id:
        try:
            observations.insert(0, Observation(await account.broker.get_order(order.replaces), "poll"))
        except BrokerError as exc:  # the next poll asks for it again: it is still recorded as working
            log.info("replaced_order_unavailable", broker_order_id=order.replaces, error=describe(exc))
    async with store.transaction():
        links = {order.broker_order_id: Link(req.trade_id, role)} if req.trade_id is not None else {}
        applied = await store.record(account.id, observations, links)
        await store.mark_submitted(req.id, order.broker_order_id)
    if req.trade_id is not None and req.trade_id not in applied.trades:
        applied.trades.append(req.trade_id)  # created, or given its close reason, by this request
    await store.notify(applied.notifications(account.name))
    log.info(
        "order_request_submitted",
        request_id=req.id,
        client_order_id=order.client_order_id,
        broker_order_id=order.broker_order_id,
        status=order.status.value,
    )


async def _end(store: OutboxStore, account: Account, req: Request, state: str, error: str) -> None:
    """The request ends without an order; its pending trade ends with it.

    Only a trade of the request's own account is ever changed (the queries say so too), and
    only one the request may name (:func:`trade_refusal` clears any other before we get here).
    """
    changed = None
    async with store.transaction():
        await store.mark_final(req.id, state, error[:500])
        if req.kind == "open" and req.trade_id is not None:
            changed = await store.end_trade(
                req.trade_id, "rejected" if state == "rejected" else "cancelled", error[:500], account.id
            )
        elif req.kind == "close" and req.trade_id is not None:
            changed = await store.reopen_trade(req.trade_id, account.id)  # open again
    if changed is not None:
        await store.notify(Applied(trades=[changed]).notifications(account.name))


async def _cancel(store: OutboxStore, account: Account, req: Request) -> str:
    """Cancel the trade's working orders (an order already gone counts as cancelled)."""
    try:
        trade = await _own_trade(store, req, account)
    except PayloadError as exc:
        await _end(store, account, req, "failed", f"bad request: {exc}")
        return "failed"
    if req.attempts >= MAX_ATTEMPTS:
        await _end(store, account, req, "failed", "retries exhausted: the broker never confirmed the cancel")
        return "failed"
    await store.mark_submitting(req.id, trade.id)
    ids = await store.working_orders(trade.id)
    for broker_order_id in ids:
        try:
            await account.broker.cancel_order(broker_order_id)
        except OrderNotFound:
            log.info("order_already_gone", broker_order_id=broker_order_id)
        except BrokerRejected as exc:  # e.g. already filled: nothing left to cancel
            log.info("order_cancel_refused", broker_order_id=broker_order_id, reason=exc.reason)
        except BrokerUnavailable as exc:
            await store.note_error(req.id, f"cancel outcome unknown: {describe(exc)}")
            return "pending"  # cancelling twice is harmless: the next pass tries again
    await store.mark_submitted(req.id, ids[0] if len(ids) == 1 else None)
    log.info("order_request_cancelled", request_id=req.id, trade_id=trade.id, orders=len(ids))
    return "submitted"
