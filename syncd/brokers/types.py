"""Broker-neutral domain types.

The cycles only ever see these: no broker's JSON crosses the adapter boundary.
Money, prices and quantities are ``Decimal``; times are timezone-aware UTC
``datetime``s. Quantities are signed where the text says so (short < 0).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from enum import StrEnum

from syncd.brokers.parse import WIDE


class AssetClass(StrEnum):
    US_EQUITY = "us_equity"
    US_OPTION = "us_option"
    CRYPTO = "crypto"


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class Intent(StrEnum):
    """Whether an order leg opens or closes a position (Tradier needs it; Alpaca accepts it)."""

    OPEN = "open"
    CLOSE = "close"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"
    TRAILING_STOP = "trailing_stop"


class TimeInForce(StrEnum):
    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"
    OPG = "opg"
    CLS = "cls"
    PRE = "pre"  # Tradier: the pre-market session
    POST = "post"  # Tradier: the post-market session


class OrderClass(StrEnum):
    SIMPLE = "simple"
    MLEG = "mleg"
    BRACKET = "bracket"
    OCO = "oco"
    OTO = "oto"


CONTINGENT = frozenset({OrderClass.BRACKET, OrderClass.OCO, OrderClass.OTO})


class OrderStatus(StrEnum):
    """Alpaca's order-status vocabulary; Tradier's statuses are mapped onto it."""

    NEW = "new"
    ACCEPTED = "accepted"
    PENDING_NEW = "pending_new"
    ACCEPTED_FOR_BIDDING = "accepted_for_bidding"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    DONE_FOR_DAY = "done_for_day"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REPLACED = "replaced"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    STOPPED = "stopped"
    REJECTED = "rejected"
    SUSPENDED = "suspended"
    CALCULATED = "calculated"
    HELD = "held"
    PENDING_REVIEW = "pending_review"

    @property
    def is_terminal(self) -> bool:
        """True when the order can change no more (nothing more will fill)."""
        return self in _TERMINAL


# The one Python list of terminal statuses; every other status is working. SQL's
# order_is_working(status) (sql/0006_unify_holds.sql) is its complement
# (tests/integration/test_order_status_sql.py checks them status by status).
_TERMINAL = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.EXPIRED,
        OrderStatus.REPLACED,
        OrderStatus.REJECTED,
        OrderStatus.DONE_FOR_DAY,
    }
)


class OptionType(StrEnum):
    CALL = "call"
    PUT = "put"


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """What an OCC option symbol says (see :mod:`syncd.brokers.occ`)."""

    underlying: str
    option_type: OptionType
    strike: Decimal
    expiration: dt.date
    multiplier: int = 100


@dataclass(frozen=True, slots=True)
class Balances:
    broker_account_id: str
    equity: Decimal
    cash: Decimal
    buying_power: Decimal
    long_market_value: Decimal
    short_market_value: Decimal
    currency: str = "USD"


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    asset_class: AssetClass
    quantity: Decimal  # signed: short < 0
    qty_available: Decimal  # signed like quantity: what is not held by working orders
    avg_entry_price: Decimal
    cost_basis: Decimal
    current_price: Decimal | None = None
    market_value: Decimal | None = None
    unrealized_pl: Decimal | None = None
    option: OptionSpec | None = None

    @property
    def underlying(self) -> str:
        return self.option.underlying if self.option else self.symbol

    @property
    def multiplier(self) -> int:
        return self.option.multiplier if self.option else 1


@dataclass(frozen=True, slots=True)
class Order:
    """A broker order. A multi-leg order carries its legs, each an ``Order`` itself.

    ``qty`` is ``None`` when the broker gives none (an Alpaca notional order: ``notional`` is
    the dollar amount instead). A bracket/OCO/OTO order (``order_class``) carries its
    contingent orders as ``legs`` too; each keeps its own status, fills and prices.
    """

    broker_order_id: str
    client_order_id: str | None
    symbol: str  # the instrument; for a multi-leg parent, the underlying (or "")
    side: Side | None  # None for a multi-leg parent
    type: OrderType | None  # None only as read: sanity.check_order refuses an order without one
    order_class: OrderClass
    qty: Decimal | None
    filled_qty: Decimal
    status: OrderStatus
    asset_class: AssetClass = AssetClass.US_EQUITY
    notional: Decimal | None = None  # a dollar amount instead of a quantity (Alpaca)
    stop_price: Decimal | None = None
    filled_avg_price: Decimal | None = None
    limit_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    ratio_qty: int | None = None  # legs only
    intent: Intent | None = None
    submitted_at: dt.datetime | None = None
    filled_at: dt.datetime | None = None
    canceled_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    reject_reason: str | None = None
    legs: tuple[Order, ...] = ()
    replaces: str | None = None  # the broker id of the order this one replaced (Alpaca)
    replaced_by: str | None = None  # the broker id of the order that replaced this one (Alpaca)

    @property
    def contingent(self) -> bool:
        """A bracket, OCO or OTO order: its legs are orders of their own, not parts of one fill."""
        return self.order_class in CONTINGENT


class OptionEventKind(StrEnum):
    """What the broker's records say happened to an option position (``trade_events.kind``)."""

    EXPIRED = "expired"
    ASSIGNED = "assigned"
    EXERCISED = "exercised"
    STOCK = "stock"  # the stock trade an assignment or exercise booked (Alpaca OPTRD)


@dataclass(frozen=True, slots=True)
class OptionEvent:
    """One expiry, assignment or exercise from the broker's account records.

    ``event_id`` is the broker's activity id (Alpaca) or, where the broker gives none (Tradier's
    history), a key derived from the record itself: the same record always gives the same id.
    ``quantity`` is the signed change of the position it names (a long contract expiring:
    -1; a short one assigned: +1; the stock an assignment delivered: the shares, signed).
    ``symbol`` is the OCC symbol (the underlying for ``STOCK``), or ``None`` when the broker
    did not say (Tradier); ``price`` the per-share price of a ``STOCK`` trade (the strike).
    """

    event_id: str
    kind: OptionEventKind
    on: dt.date
    quantity: Decimal
    symbol: str | None = None
    price: Decimal | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class TradeUpdate:
    """One event of a broker's trade stream (Alpaca ``trade_updates``)."""

    event: str  # new, fill, partial_fill, canceled, expired, rejected, replaced, ...
    order: Order
    at: dt.datetime
    price: Decimal | None = None  # this fill's price, for fill/partial_fill
    qty: Decimal | None = None  # this fill's quantity
    position_qty: Decimal | None = None
    execution_id: str | None = None
    # True when the event carries the order's state rather than one fill (Tradier's account
    # events): the order store then derives the fill from the state, as it does for a poll.
    cumulative: bool = False


@dataclass(frozen=True, slots=True)
class Greeks:
    delta: Decimal | None = None
    gamma: Decimal | None = None
    theta: Decimal | None = None
    vega: Decimal | None = None
    rho: Decimal | None = None
    implied_volatility: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None = None
    bid_size: Decimal | None = None
    ask_size: Decimal | None = None
    at: dt.datetime | None = None
    greeks: Greeks | None = None

    @property
    def mid(self) -> Decimal | None:
        """Mid when both sides exist, else last."""
        if self.bid is not None and self.ask is not None and self.bid > 0 and self.ask > 0:
            with localcontext(WIDE):  # exact: the sum of two accepted prices never rounds
                return (self.bid + self.ask) / 2
        return self.last


@dataclass(frozen=True, slots=True)
class Clock:
    is_open: bool
    next_open: dt.datetime
    next_close: dt.datetime
    timestamp: dt.datetime


@dataclass(frozen=True, slots=True)
class LegRequest:
    symbol: str
    side: Side
    ratio: int = 1
    intent: Intent = Intent.OPEN


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What syncd asks a broker to place: a single-instrument order, or a multi-leg one.

    Exactly one of ``symbol``/``side`` (single) or ``legs`` (multi-leg) is set.
    ``client_order_id`` is fixed before the first attempt and never changes.
    """

    client_order_id: str
    qty: Decimal
    type: OrderType = OrderType.MARKET
    time_in_force: TimeInForce = TimeInForce.DAY
    symbol: str | None = None
    side: Side | None = None
    intent: Intent = Intent.OPEN
    limit_price: Decimal | None = None
    legs: tuple[LegRequest, ...] = field(default=())

    @property
    def is_multileg(self) -> bool:
        return bool(self.legs)


@dataclass(frozen=True, slots=True)
class ReplaceRequest:
    """What syncd asks a broker to change about a working order: a new limit and/or quantity.

    ``client_order_id`` names the replacement where the broker makes a new order (Alpaca);
    Tradier modifies the order in place and keeps its id and tag.
    """

    broker_order_id: str
    client_order_id: str
    qty: Decimal | None = None
    limit_price: Decimal | None = None
