"""The simulator's brokerage: accounts, orders, fills and positions (no HTTP here).

The wire dialects (``alpaca_api``, ``tradier_api``) and the test-facing
``Simulator`` call into one ``Exchange``; everything is synchronous and runs on
the event loop's thread, so no locking is needed. Quantities and money are
``Decimal``; a position's quantity is signed (short < 0).

Rules, simplified from real brokers but applied consistently:

- An order is accepted (status ``new``, or ``accepted`` while the market is
  closed) or refused at once with a ``SimReject`` (no order is created): unknown
  symbol, bad field, reused ``client_order_id``, closing more than is available,
  or insufficient buying power.
- Buying power = cash + short market value (negative) - what working orders would
  still need to open positions. Buying costs qty x price x multiplier; opening a
  short stock or a naked short option needs its notional (strike for puts, spot for
  calls); a two-leg vertical needs its width minus the credit; closing needs nothing.
- Matching (when the market is open): a buy fills at the ask, a sell at the bid; a
  limit fills when that price is at or better than the limit; a multi-leg order at
  its net price (debit > 0, credit < 0) when the net is at or better than its limit.
  With ``partial_fills`` each matching pass fills one slice.
- ``qty_available`` = |qty| minus the remaining quantity of working orders that
  would reduce the position (signed like the position).
- Day orders still working when the market closes expire.
- Options expire at the close (16:00 New York) of their expiration date: a contract in the
  money by more than $0.01 (the underlying's mid against the strike) is exercised (long) or
  assigned (short) and delivers 100 shares per contract at the strike; any other expires
  worthless. Each is recorded as account activities (``OPEXC``/``OPASN`` with the ``OPTRD``
  stock trade, or ``OPEXP``), served by Alpaca's ``/v2/account/activities`` and Tradier's
  ``/v1/accounts/{id}/history``. Orders for an expired contract are refused.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import string
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from syncd.sim.config import SimConfig
from syncd.sim.market import CENT, ET, Instrument, Market

ZERO = Decimal(0)
ONE = Decimal(1)
WORKING = frozenset({"new", "accepted", "partially_filled", "pending_new"})
CLOSED = frozenset({"filled", "canceled", "expired", "rejected", "replaced", "done_for_day"})
SIDES = ("buy", "sell")
ORDER_TYPES = ("market", "limit")
TIME_IN_FORCE = ("day", "gtc", "ioc", "fok")
_ALNUM_UP = string.ascii_uppercase + string.digits
_ALNUM = string.ascii_letters + string.digits
_PRICE_Q = Decimal("0.000001")
VIEWS_KEPT = 2048  # accounts whose valued positions Exchange.position_views keeps
EXPIRY_CLOSE = dt.time(16, 0)
ITM_BY = Decimal("0.01")  # in the money by more than this: exercised or assigned


def expiry_time(expiration: dt.date) -> dt.datetime:
    """When a contract expiring on ``expiration`` expires: that day's close in New York."""
    return dt.datetime.combine(expiration, EXPIRY_CLOSE, tzinfo=ET)


def _last_cutoff(now: dt.datetime) -> dt.datetime:
    """The latest 16:00 New York at or before ``now``."""
    local = now.astimezone(ET)
    cutoff = dt.datetime.combine(local.date(), EXPIRY_CLOSE, tzinfo=ET)
    return cutoff if cutoff <= now else cutoff - dt.timedelta(days=1)


class SimReject(Exception):
    """A request the simulated broker refuses; each dialect renders it its own way.

    ``kind`` is one of: ``invalid`` (a bad or missing field), ``unsupported`` (valid
    at the real broker, not simulated), ``duplicate_client_order_id``, ``buying_power``,
    ``qty_available``, ``not_found``, ``not_cancelable``, ``not_replaceable``.
    """

    def __init__(self, kind: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details


@dataclass(frozen=True, slots=True)
class LegSpec:
    symbol: str
    side: str  # buy | sell
    ratio: int = 1
    position_intent: str | None = None  # buy_to_open ... sell_to_close


@dataclass(frozen=True, slots=True)
class OrderSpec:
    """A dialect-neutral order request (what Alpaca's JSON or Tradier's form said)."""

    qty: Decimal
    type: str = "market"
    time_in_force: str = "day"
    limit_price: Decimal | None = None  # multi-leg: net, debit > 0, credit < 0
    symbol: str | None = None
    side: str | None = None
    position_intent: str | None = None
    legs: tuple[LegSpec, ...] = ()
    client_order_id: str | None = None
    tag: str | None = None
    source: str = "alpaca"  # alpaca | tradier | outside
    tradier_type: str | None = None  # debit | credit | even, as Tradier was told

    @property
    def is_multileg(self) -> bool:
        return bool(self.legs)


@dataclass(slots=True, eq=False)
class SimOrder:
    """An order (a multi-leg order's legs are ``SimOrder``s too, with ``parent`` set)."""

    id: str
    tradier_id: int
    account: int
    client_order_id: str
    symbol: str  # "" for a multi-leg parent (its legs carry the symbols)
    underlying: str
    asset_class: str  # us_equity | us_option ("" for a multi-leg parent)
    side: str | None  # buy | sell; None for a multi-leg parent
    qty: Decimal
    type: str
    time_in_force: str
    order_class: str  # simple | mleg
    created_at: dt.datetime
    status: str = "new"
    limit_price: Decimal | None = None
    position_intent: str | None = None
    intent_given: bool = False
    ratio_qty: int | None = None
    multiplier: int = 1
    tag: str | None = None
    source: str = "alpaca"
    tradier_type: str | None = None
    filled_qty: Decimal = ZERO
    filled_avg_price: Decimal | None = None
    last_fill_price: Decimal | None = None
    last_fill_qty: Decimal | None = None
    updated_at: dt.datetime | None = None
    filled_at: dt.datetime | None = None
    canceled_at: dt.datetime | None = None
    expired_at: dt.datetime | None = None
    failed_at: dt.datetime | None = None
    legs: list[SimOrder] = field(default_factory=list)
    parent: SimOrder | None = None
    replaces: str | None = None  # Alpaca: the id of the order this one replaced
    replaced_by: str | None = None  # Alpaca: the id of the order that replaced this one
    replaced_at: dt.datetime | None = None
    tradier_hidden_reads: int = 0  # Tradier quirk knob: reads that still show no fill price

    @property
    def is_multileg(self) -> bool:
        return self.order_class == "mleg" and self.parent is None

    @property
    def is_working(self) -> bool:
        return self.status in WORKING

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled_qty

    def parts(self) -> list[SimOrder]:
        """The instrument orders: the legs of a multi-leg order, else itself."""
        return self.legs if self.legs else [self]


@dataclass(slots=True)
class SimPosition:
    symbol: str
    qty: Decimal  # signed
    avg_entry: Decimal
    opened_at: dt.datetime
    tradier_id: int


@dataclass(frozen=True, slots=True)
class TradeEvent:
    """One ``trade_updates`` event, as it happened (rendered by the stream at once)."""

    account: int
    event: str  # new accepted fill partial_fill canceled expired
    order: SimOrder
    at: dt.datetime
    price: Decimal | None = None
    qty: Decimal | None = None
    position_qty: Decimal | None = None
    execution_id: str | None = None


@dataclass(frozen=True, slots=True)
class SimActivity:
    """One account activity of an option's expiry (Alpaca's non-trade activity vocabulary).

    ``OPEXP`` expired, ``OPASN`` assigned, ``OPEXC`` exercised (``qty``: the signed change of
    the option position), ``OPTRD`` the stock trade an assignment or exercise booked (``qty``
    the shares, signed; ``price`` the strike). The OPTRD shares its option event's id, as in
    Alpaca's documentation.
    """

    id: str
    activity_type: str
    date: dt.date
    symbol: str
    qty: Decimal
    net_amount: Decimal
    description: str
    at: dt.datetime
    price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class PositionView:
    """A position valued at the current market (what both dialects render)."""

    position: SimPosition
    instrument: Instrument
    current_price: Decimal
    lastday_price: Decimal
    market_value: Decimal
    cost_basis: Decimal
    unrealized_pl: Decimal
    unrealized_intraday_pl: Decimal
    qty_available: Decimal


@dataclass(frozen=True, slots=True)
class BalancesView:
    cash: Decimal
    long_market_value: Decimal
    short_market_value: Decimal
    stock_long_value: Decimal
    stock_short_value: Decimal
    option_long_value: Decimal
    option_short_value: Decimal
    equity: Decimal
    last_equity: Decimal
    buying_power: Decimal
    reserved: Decimal
    unrealized_pl: Decimal
    realized_pl: Decimal
    open_orders: int


class SimAccount:
    """One account at the simulated broker, reachable as Alpaca and as Tradier.

    Its book (cash and positions) is built on first use, so 1,000 accounts cost
    nothing until asked for. ``version`` bumps on every change (a cache key).
    """

    def __init__(self, index: int, seed: int, created_at: dt.datetime, builder: Callable[[SimAccount], None]):
        rng = random.Random(f"{seed}:account:{index}")
        self.index = index
        self.name = f"sim-{index}"
        self.id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.account_number = "PA" + "".join(rng.choices(_ALNUM_UP, k=10))
        self.api_key = "PK" + "".join(rng.choices(_ALNUM_UP, k=18))
        self.api_secret = "".join(rng.choices(_ALNUM, k=40))
        self.tradier_account_id = "VA" + "".join(rng.choices(string.digits, k=8))
        self.tradier_token = "".join(rng.choices(_ALNUM, k=28))
        self.created_at = created_at
        self.orders: list[SimOrder] = []  # parents, oldest first
        self.by_client_id: dict[str, SimOrder] = {}
        self.realized_pl = ZERO
        self.version = 0
        self._cash = ZERO
        self._positions: dict[str, SimPosition] = {}
        self._builder: Callable[[SimAccount], None] | None = builder
        self.next_position_id = 1
        self.activities: list[SimActivity] = []  # option expiries, assignments, exercises; oldest first

    def _ensure(self) -> None:
        if self._builder is not None:
            builder, self._builder = self._builder, None
            builder(self)

    @property
    def built(self) -> bool:
        return self._builder is None

    @property
    def positions(self) -> dict[str, SimPosition]:
        self._ensure()
        return self._positions

    @property
    def cash(self) -> Decimal:
        self._ensure()
        return self._cash

    @cash.setter
    def cash(self, value: Decimal) -> None:
        self._ensure()
        self._cash = value

    def init_book(self, cash: Decimal, positions: Iterable[SimPosition]) -> None:
        """Called once by the builder (bypasses ``_ensure``)."""
        self._cash = cash
        self._positions = {p.symbol: p for p in positions}

    def touch(self) -> None:
        self.version += 1

    def credentials(self) -> dict[str, str]:
        return {
            "name": self.name,
            "alpaca_key": self.api_key,
            "alpaca_secret": self.api_secret,
            "tradier_account_id": self.tradier_account_id,
            "tradier_token": self.tradier_token,
        }

    def __repr__(self) -> str:  # never the secrets
        return f"SimAccount({self.index}, {self.name!r})"


def _sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


def _q(x: Decimal) -> Decimal:
    return x.quantize(_PRICE_Q).normalize()


def _available(qty: Decimal, held: Decimal | None) -> Decimal:
    """A position's available quantity (signed like it): what working orders hold is not available."""
    if held is None:
        return qty
    free = max(ZERO, abs(qty) - held)
    return free if qty > 0 else -free


class Exchange:
    """Accounts, the order book and the matching engine."""

    def __init__(self, config: SimConfig, market: Market, builder: Callable[[SimAccount], None]):
        self.market = market
        self.clock = market.clock
        self.fill_on_submit = config.fill_on_submit
        self.partial_fills = config.partial_fills
        self.partial_fill_steps = config.partial_fill_steps
        self._ids = random.Random(f"{config.seed}:ids")
        self._next_tradier_id = 100_000 + self._ids.randrange(900_000)
        created = self.clock.start - dt.timedelta(days=90)
        self.accounts = [SimAccount(i, config.seed, created, builder) for i in range(config.accounts)]
        self._dedupe_credentials()
        self.by_key = {a.api_key: a for a in self.accounts}
        self.by_token = {a.tradier_token: a for a in self.accounts}
        self.by_tradier_id = {a.tradier_account_id: a for a in self.accounts}
        self._orders: dict[str, SimOrder] = {}  # uuid -> parent or leg
        self._by_tradier_id: dict[int, SimOrder] = {}
        self._working: dict[str, SimOrder] = {}  # parents that can still fill
        self._working_by_account: dict[int, dict[str, SimOrder]] = {}
        # account index -> (what its balances were computed from, the balances): see balances()
        self._balances_kept: dict[int, tuple[object, BalancesView]] = {}
        # the latest accounts' valued positions (an account's positions and balances are asked at once)
        self._views_kept: OrderedDict[int, tuple[object, list[PositionView]]] = OrderedDict()
        self.listeners: list[Callable[[TradeEvent], None]] = []
        self.events: deque[TradeEvent] = deque(maxlen=10_000)
        self._expired_until: dt.datetime | None = None  # the last close whose expiries were settled

    def _dedupe_credentials(self) -> None:
        seen: set[str] = set()
        for acct in self.accounts:
            for attr in ("api_key", "tradier_token", "tradier_account_id", "account_number"):
                value = getattr(acct, attr)
                n = 0
                while value in seen:  # astronomically rare; deterministic when it happens
                    n += 1
                    value = value[:-3] + f"{n:03d}"
                seen.add(value)
                setattr(acct, attr, value)

    def share_tradier_token(self, indices: Iterable[int]) -> str:
        """Give the accounts ``indices`` one Tradier token (the first one's): one Tradier user
        with several accounts, each reachable with that token (and its account id)."""
        chosen = [self.accounts[i] for i in indices]
        token = chosen[0].tradier_token
        for acct in chosen[1:]:
            if self.by_token.get(acct.tradier_token) is acct:
                del self.by_token[acct.tradier_token]
            acct.tradier_token = token
            acct.touch()
        return token

    def tradier_accounts(self, token: str) -> list[SimAccount]:
        """Every account the Tradier ``token`` reaches."""
        return [a for a in self.accounts if a.tradier_token == token]

    # -- ids -----------------------------------------------------------------------

    def new_uuid(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    def new_tradier_id(self) -> int:
        self._next_tradier_id += 1
        return self._next_tradier_id

    # -- lookups -------------------------------------------------------------------

    def account(self, which: int | str | SimAccount) -> SimAccount:
        """By index, name, Alpaca key, Tradier account id, or the account itself."""
        if isinstance(which, SimAccount):
            return which
        if isinstance(which, int):
            if not 0 <= which < len(self.accounts):
                raise KeyError(f"no simulated account {which} (there are {len(self.accounts)})")
            return self.accounts[which]
        for table in (self.by_key, self.by_tradier_id):
            if which in table:
                return table[which]
        for acct in self.accounts:
            if acct.name == which:
                return acct
        raise KeyError(f"no simulated account {which!r}")

    def order(self, order_id: str | int) -> SimOrder:
        """By uuid, Tradier id (int or digits) or client order id; ``KeyError`` if unknown."""
        if isinstance(order_id, int) or (isinstance(order_id, str) and order_id.isdigit()):
            found = self._by_tradier_id.get(int(order_id))
            if found is not None:
                return found
        if isinstance(order_id, str):
            if order_id in self._orders:
                return self._orders[order_id]
            for acct in self.accounts:
                if order_id in acct.by_client_id:
                    return acct.by_client_id[order_id]
        raise KeyError(f"no simulated order {order_id!r}")

    def find_order(self, acct: SimAccount, order_id: str) -> SimOrder:
        o = self._orders.get(order_id)
        if o is None or o.account != acct.index:
            raise SimReject("not_found", "order not found")
        return o

    def find_tradier_order(self, acct: SimAccount, tradier_id: int) -> SimOrder:
        o = self._by_tradier_id.get(tradier_id)
        if o is None or o.account != acct.index:
            raise SimReject("not_found", "order not found")
        return o

    # -- events --------------------------------------------------------------------

    def _emit(self, event: TradeEvent) -> None:
        self.events.append(event)
        for listener in list(self.listeners):
            listener(event)

    # -- placing -------------------------------------------------------------------

    def submit(self, acct: SimAccount, spec: OrderSpec) -> SimOrder:
        """Validate and accept an order; ``SimReject`` when the broker would refuse it.

        The order is not matched here: call ``after_submit`` once its acceptance has
        been rendered (that is when a broker's answer would leave).
        """
        _ = acct.positions  # build the book first
        parts = self._validate(spec)
        if spec.client_order_id is not None and spec.client_order_id in acct.by_client_id:
            raise SimReject("duplicate_client_order_id", "client_order_id must be unique")
        now = self.clock.stamp()
        order = self._build_order(acct, spec, parts, now)
        self._check_available(acct, order)
        need = self.requirement(acct, order, order.qty)
        if need > 0:
            power = self.balances(acct).buying_power
            if need > power:
                raise SimReject(
                    "buying_power",
                    "insufficient buying power",
                    buying_power=str(power.quantize(CENT)),
                    cost=str(need.quantize(CENT)),
                )
        self._register(acct, order)
        order.status = "new" if self.market.is_open else "accepted"
        for leg in order.legs:
            leg.status = order.status
        acct.touch()
        self._emit(TradeEvent(acct.index, order.status, order, now))
        return order

    def after_submit(self, order: SimOrder) -> None:
        """Match a just-accepted order (``fill_on_submit``), then apply IOC/FOK."""
        if not (self.fill_on_submit and self.market.is_open and order.is_working):
            return
        if order.time_in_force == "fok" and not self._fillable_now(order):
            self._end(order, "canceled")
            return
        self._match(order, whole=order.time_in_force in ("ioc", "fok"))
        if order.is_working and order.time_in_force in ("ioc", "fok"):
            self._end(order, "canceled")

    def _validate(self, spec: OrderSpec) -> list[tuple[Instrument, LegSpec]]:
        self._validate_shape(spec)
        if spec.is_multileg:
            legs = list(spec.legs)
        else:
            if not spec.symbol:
                raise SimReject("invalid", "symbol is required")
            if spec.side not in SIDES:
                raise SimReject("invalid", "side must be buy or sell")
            legs = [LegSpec(spec.symbol, spec.side, 1, spec.position_intent)]
        return [(self._validate_leg(spec, leg), leg) for leg in legs]

    @staticmethod
    def _validate_shape(spec: OrderSpec) -> None:
        if spec.qty <= 0:
            raise SimReject("invalid", "qty must be > 0")
        if spec.type not in ORDER_TYPES:
            raise SimReject("unsupported", f"order type {spec.type!r} is not supported by the simulator")
        if spec.time_in_force not in TIME_IN_FORCE:
            raise SimReject("invalid", f"invalid time_in_force {spec.time_in_force!r}")
        if spec.type == "limit" and spec.limit_price is None:
            raise SimReject("invalid", "limit_price is required for limit orders")
        if spec.type == "market" and spec.limit_price is not None:
            raise SimReject("invalid", "limit_price must not be set for market orders")
        if spec.limit_price is not None and not spec.is_multileg and spec.limit_price <= 0:
            raise SimReject("invalid", "limit_price must be > 0")
        if spec.is_multileg:
            if not 2 <= len(spec.legs) <= 4:
                raise SimReject("invalid", "a multi-leg order needs 2 to 4 legs")
            if len({leg.symbol for leg in spec.legs}) != len(spec.legs):
                raise SimReject("invalid", "each leg of a multi-leg order needs a distinct symbol")
            if any(leg.ratio < 1 for leg in spec.legs):
                raise SimReject("invalid", "ratio_qty must be a positive integer")
            if math.gcd(*(leg.ratio for leg in spec.legs)) != 1:
                raise SimReject("invalid", "leg ratio_qty must be in simplest form")

    def _validate_leg(self, spec: OrderSpec, leg: LegSpec) -> Instrument:
        if leg.side not in SIDES:
            raise SimReject("invalid", f"side must be buy or sell (leg {leg.symbol})")
        inst = self.market.instrument(leg.symbol)
        if inst is None:
            raise SimReject("invalid", f'asset "{leg.symbol}" not found')
        if inst.is_option and inst.expiration is not None and self.clock.now() >= expiry_time(inst.expiration):
            raise SimReject("invalid", f'asset "{leg.symbol}" has expired and is not tradable')
        if inst.is_option:
            if spec.qty != spec.qty.to_integral_value():
                raise SimReject("invalid", "qty must be a whole number for options")
            if spec.time_in_force != "day":
                raise SimReject("invalid", "options orders only support time_in_force day")
        elif spec.is_multileg:
            raise SimReject("unsupported", "multi-leg orders with a stock leg are not simulated")
        return inst

    def _build_order(
        self, acct: SimAccount, spec: OrderSpec, parts: list[tuple[Instrument, LegSpec]], now: dt.datetime
    ) -> SimOrder:
        cid = spec.client_order_id or self.new_uuid()
        underlying = parts[0][0].underlying

        def make(inst: Instrument, leg: LegSpec, qty: Decimal, ratio: int | None, order_class: str) -> SimOrder:
            intent = leg.position_intent or self._derive_intent(acct, inst, leg.side)
            return SimOrder(
                id=self.new_uuid(),
                tradier_id=self.new_tradier_id(),
                account=acct.index,
                client_order_id=cid if ratio is None else self.new_uuid(),
                symbol=inst.symbol,
                underlying=inst.underlying,
                asset_class=inst.asset_class,
                side=leg.side,
                qty=qty,
                type=spec.type,
                time_in_force=spec.time_in_force,
                order_class=order_class,
                created_at=now,
                updated_at=now,
                limit_price=spec.limit_price if ratio is None else None,
                position_intent=intent,
                intent_given=leg.position_intent is not None,
                ratio_qty=ratio,
                multiplier=inst.multiplier,
                tag=spec.tag,
                source=spec.source,
            )

        if not spec.is_multileg:
            inst, leg = parts[0]
            return make(inst, leg, spec.qty, None, "simple")
        parent = SimOrder(
            id=self.new_uuid(),
            tradier_id=self.new_tradier_id(),
            account=acct.index,
            client_order_id=cid,
            symbol="",
            underlying=underlying,
            asset_class="",
            side=None,
            qty=spec.qty,
            type=spec.type,
            time_in_force=spec.time_in_force,
            order_class="mleg",
            created_at=now,
            updated_at=now,
            limit_price=spec.limit_price,
            multiplier=100,
            tag=spec.tag,
            source=spec.source,
            tradier_type=spec.tradier_type,
        )
        for inst, leg in parts:
            child = make(inst, leg, spec.qty * leg.ratio, leg.ratio, "mleg")
            child.parent = parent
            child.tag = spec.tag
            parent.legs.append(child)
        return parent

    def _derive_intent(self, acct: SimAccount, inst: Instrument, side: str) -> str:
        pos = acct.positions.get(inst.symbol)
        held = pos.qty if pos else ZERO
        closing = (side == "buy" and held < 0) or (side == "sell" and held > 0)
        return f"{side}_to_{'close' if closing else 'open'}"

    def _unwork(self, order: SimOrder) -> None:
        self._working.pop(order.id, None)
        self._working_by_account.get(order.account, {}).pop(order.id, None)

    def _register(self, acct: SimAccount, order: SimOrder) -> None:
        acct.orders.append(order)
        acct.by_client_id[order.client_order_id] = order
        for o in [order, *order.legs]:
            self._orders[o.id] = o
            self._by_tradier_id[o.tradier_id] = o
        self._working[order.id] = order
        self._working_by_account.setdefault(acct.index, {})[order.id] = order

    # -- availability and buying power --------------------------------------------

    def held_for_orders(self, acct: SimAccount, exclude: SimOrder | None = None) -> dict[str, Decimal]:
        """Per symbol: remaining quantity of working orders that would reduce the position."""
        held: dict[str, Decimal] = {}
        positions = acct.positions
        for order in self._working_by_account.get(acct.index, {}).values():
            if order is exclude:
                continue
            for part in order.parts():
                pos = positions.get(part.symbol)
                if pos is None:
                    continue
                if (part.side == "sell" and pos.qty > 0) or (part.side == "buy" and pos.qty < 0):
                    held[part.symbol] = held.get(part.symbol, ZERO) + part.remaining
        return held

    def qty_available(self, acct: SimAccount, symbol: str, held: dict[str, Decimal] | None = None) -> Decimal:
        pos = acct.positions.get(symbol)
        if pos is None:
            return ZERO
        return _available(pos.qty, (held if held is not None else self.held_for_orders(acct)).get(symbol))

    def _check_available(self, acct: SimAccount, order: SimOrder) -> None:
        held = self.held_for_orders(acct)
        for part in order.parts():
            pos = acct.positions.get(part.symbol)
            wants_close = part.intent_given and (part.position_intent or "").endswith("_to_close")
            reduces = pos is not None and (
                (part.side == "sell" and pos.qty > 0) or (part.side == "buy" and pos.qty < 0)
            )
            if not reduces and not wants_close:
                continue
            existing = abs(pos.qty) if pos is not None else ZERO
            available = max(ZERO, existing - held.get(part.symbol, ZERO))
            needed = part.qty if wants_close else min(part.qty, existing)
            if needed > available:
                raise SimReject(
                    "qty_available",
                    f"insufficient qty available for order (requested: {needed.normalize():f}, "
                    f"available: {available.normalize():f})",
                    symbol=part.symbol,
                    available=f"{available.normalize():f}",
                    existing_qty=f"{existing.normalize():f}",
                    held_for_orders=f"{held.get(part.symbol, ZERO).normalize():f}",
                )

    def _est_price(self, symbol: str, side: str) -> Decimal:
        q = self.market.quote(symbol)
        if q is None:
            return ZERO
        px = q.ask if side == "buy" else q.bid
        return px if px > 0 else q.mid

    def requirement(self, acct: SimAccount, order: SimOrder, qty: Decimal) -> Decimal:
        """Buying power ``qty`` (parent units) of ``order`` needs to open positions."""
        positions = acct.positions
        need = ZERO
        debit = ZERO
        short_options: list[SimOrder] = []
        for part in order.parts():
            leg_qty = qty * (part.ratio_qty or 1)
            pos = positions.get(part.symbol)
            existing = pos.qty if pos else ZERO
            reducing = (part.side == "sell" and existing > 0) or (part.side == "buy" and existing < 0)
            opening = max(ZERO, leg_qty - abs(existing)) if reducing else leg_qty
            price = self._est_price(part.symbol, part.side or "buy")
            sign = 1 if part.side == "buy" else -1
            debit += sign * price * leg_qty * part.multiplier
            if opening <= 0:
                continue
            if part.side == "buy":
                need += opening * price * part.multiplier
            elif part.asset_class == "us_option":
                short_options.append(part)
            else:
                need += opening * price
        if order.is_multileg:
            if order.type == "limit" and order.limit_price is not None:
                debit = order.limit_price * qty * 100
            need = max(ZERO, debit) + self._short_option_risk(order, short_options, qty, debit)
        else:
            if order.type == "limit" and order.limit_price is not None and order.side == "buy":
                need = need / max(self._est_price(order.symbol, "buy"), CENT) * order.limit_price
            need += self._short_option_risk(order, short_options, qty, ZERO)
        return need

    def _short_option_risk(self, order: SimOrder, shorts: list[SimOrder], qty: Decimal, debit: Decimal) -> Decimal:
        if not shorts:
            return ZERO
        parts = order.parts()
        if order.is_multileg and len(parts) == 2 and len(shorts) == 1:
            a = self.market.instrument(parts[0].symbol)
            b = self.market.instrument(parts[1].symbol)
            if (
                a is not None
                and b is not None
                and a.option_type == b.option_type
                and a.expiration == b.expiration
                and a.strike is not None
                and b.strike is not None
            ):
                width = abs(a.strike - b.strike) * 100 * qty
                return max(ZERO, width + min(debit, ZERO))  # width minus the credit received
        risk = ZERO
        for part in shorts:
            inst = self.market.instrument(part.symbol)
            assert inst is not None and inst.strike is not None
            notional = inst.strike if inst.option_type == "put" else Decimal(f"{self.market.spot(inst.underlying):.2f}")
            risk += notional * 100 * qty * (part.ratio_qty or 1)
        return risk

    # -- valuation -----------------------------------------------------------------

    def position_views(self, acct: SimAccount) -> list[PositionView]:
        """The account's positions valued at the market; kept per account and given again while
        nothing they are made of changed (the market's version, every field of every position, what
        working orders hold): the positions answer and the balances both value them. The latest
        ``VIEWS_KEPT`` accounts' are kept."""
        held = self.held_for_orders(acct)
        key = (
            self.market.version,
            tuple((p.symbol, p.qty, p.avg_entry, p.opened_at, p.tradier_id) for p in acct.positions.values()),
            tuple(held.items()),
        )
        kept = self._views_kept.get(acct.index)
        if kept is not None and kept[0] == key:
            self._views_kept.move_to_end(acct.index)
            return list(kept[1])
        views = []
        for pos in acct.positions.values():
            view = self._view(acct, pos, held)
            if view is not None:
                views.append(view)
        self._views_kept[acct.index] = (key, views)
        self._views_kept.move_to_end(acct.index)
        if len(self._views_kept) > VIEWS_KEPT:
            self._views_kept.popitem(last=False)
        return list(views)

    def position_view(self, acct: SimAccount, symbol: str) -> PositionView | None:
        pos = acct.positions.get(symbol)
        return None if pos is None else self._view(acct, pos, self.held_for_orders(acct))

    def _view(self, acct: SimAccount, pos: SimPosition, held: dict[str, Decimal]) -> PositionView | None:
        inst = self.market.instrument(pos.symbol)
        q = self.market.quote(pos.symbol)
        if inst is None or q is None:
            return None
        price, qty, mult = q.mid, pos.qty, inst.multiplier
        mv = qty * price * mult
        basis = qty * pos.avg_entry * mult
        return PositionView(
            position=pos,
            instrument=inst,
            current_price=price,
            lastday_price=q.prev_close,
            market_value=mv,
            cost_basis=basis,
            unrealized_pl=mv - basis,
            unrealized_intraday_pl=qty * (price - q.prev_close) * mult,
            qty_available=_available(qty, held.get(pos.symbol)),
        )

    def balances(self, acct: SimAccount) -> BalancesView:
        """The account's balances; kept and served again while nothing they are made of changed
        (prices, cash, realized P&L, the positions) and no order is working (what working orders
        reserve is computed afresh every time)."""
        if self._working_by_account.get(acct.index):
            return self._compute_balances(acct)
        key = (
            self.market.version,
            acct.cash,
            acct.realized_pl,
            tuple((p.symbol, p.qty, p.avg_entry) for p in acct.positions.values()),
        )
        kept = self._balances_kept.get(acct.index)
        if kept is None or kept[0] != key:
            kept = self._balances_kept[acct.index] = (key, self._compute_balances(acct))
        return kept[1]

    def _compute_balances(self, acct: SimAccount) -> BalancesView:
        views = self.position_views(acct)
        stock_long = stock_short = opt_long = opt_short = upl = last = ZERO
        for v in views:
            mv = v.market_value
            upl += v.unrealized_pl
            last += v.position.qty * v.lastday_price * v.instrument.multiplier
            if v.instrument.is_option:
                if mv >= 0:
                    opt_long += mv
                else:
                    opt_short += mv
            elif mv >= 0:
                stock_long += mv
            else:
                stock_short += mv
        reserved = ZERO
        open_orders = 0
        for order in self._working_by_account.get(acct.index, {}).values():
            open_orders += 1
            reserved += self.requirement(acct, order, order.remaining)
        cash = acct.cash
        lmv, smv = stock_long + opt_long, stock_short + opt_short
        equity = cash + lmv + smv
        return BalancesView(
            cash=cash,
            long_market_value=lmv,
            short_market_value=smv,
            stock_long_value=stock_long,
            stock_short_value=stock_short,
            option_long_value=opt_long,
            option_short_value=opt_short,
            equity=equity,
            last_equity=cash + last,
            buying_power=max(ZERO, cash + smv - reserved),
            reserved=reserved,
            unrealized_pl=upl,
            realized_pl=acct.realized_pl,
            open_orders=open_orders,
        )

    # -- matching ------------------------------------------------------------------

    def match_all(self) -> None:
        """One matching pass over every working order (nothing fills while closed); options whose
        expiry passed since the last pass are settled first."""
        self.expire_due()
        if not self.market.is_open:
            return
        for order in list(self._working.values()):
            if order.is_working and order.status != "accepted":
                self._match(order)

    def _leg_prices(self, order: SimOrder) -> dict[str, Decimal] | None:
        prices: dict[str, Decimal] = {}
        for part in order.parts():
            q = self.market.quote(part.symbol)
            if q is None:
                return None
            px = q.ask if part.side == "buy" else q.bid
            if px <= 0:
                return None  # nobody to trade with
            prices[part.id] = px
        return prices

    def _net(self, order: SimOrder, prices: dict[str, Decimal]) -> Decimal:
        if not order.is_multileg:
            return prices[order.id]
        return sum(((1 if p.side == "buy" else -1) * (p.ratio_qty or 1) * prices[p.id] for p in order.legs), ZERO)

    def _crossed(self, order: SimOrder, net: Decimal) -> bool:
        if order.type != "limit" or order.limit_price is None:
            return True
        if order.is_multileg or order.side == "buy":
            return net <= order.limit_price
        return net >= order.limit_price

    def _fillable_now(self, order: SimOrder) -> bool:
        prices = self._leg_prices(order)
        return prices is not None and self._crossed(order, self._net(order, prices))

    def _slice(self, order: SimOrder, whole: bool) -> Decimal:
        remaining = order.remaining
        if whole or not self.partial_fills or self.partial_fill_steps == 1:
            return remaining
        step = (order.qty / self.partial_fill_steps).quantize(ONE, ROUND_CEILING)
        return min(remaining, max(ONE, step))

    def _match(self, order: SimOrder, whole: bool = False) -> bool:
        prices = self._leg_prices(order)
        if prices is None:
            return False
        net = self._net(order, prices)
        if not self._crossed(order, net):
            return False
        self._execute(order, self._slice(order, whole), prices)
        return True

    def force_fill(self, order: SimOrder, qty: Decimal | None = None, price: Decimal | None = None) -> SimOrder:
        """Fill ``order`` now, whatever the market (see ``Simulator.fill``)."""
        if order.parent is not None:
            order = order.parent
        if not order.is_working:
            raise SimReject("invalid", f"order is {order.status}; it cannot fill")
        qty = order.remaining if qty is None else min(Decimal(qty), order.remaining)
        if qty <= 0:
            raise SimReject("invalid", "fill qty must be > 0")
        prices: dict[str, Decimal] = {}
        for part in order.parts():
            q = self.market.quote(part.symbol)
            fallback = q.mid if q is not None else CENT
            px = self._est_price(part.symbol, part.side or "buy") if q is not None else fallback
            prices[part.id] = px if px > 0 else max(fallback, CENT)
        if price is not None:
            price = Decimal(price)
            if order.is_multileg:
                first = order.legs[0]
                sign = 1 if first.side == "buy" else -1
                gap = price - self._net(order, prices)
                prices[first.id] = max(CENT, prices[first.id] + gap / (sign * (first.ratio_qty or 1)))
            else:
                prices[order.id] = price
        self._execute(order, qty, prices)
        return order

    def _execute(self, order: SimOrder, qty: Decimal, prices: dict[str, Decimal]) -> None:
        acct = self.accounts[order.account]
        now = self.clock.stamp()
        position_qty: Decimal | None = None
        for part in order.parts():
            leg_qty = qty * (part.ratio_qty or 1)
            px = prices[part.id]
            position_qty = self._apply_fill(acct, part, leg_qty, px, now)
            if part is not order:
                self._record_fill(part, leg_qty, px, now)
        net = self._net(order, prices)
        self._record_fill(order, qty, net, now)
        if order.status == "filled":
            self._unwork(order)
        acct.touch()
        self._emit(
            TradeEvent(
                acct.index,
                "fill" if order.status == "filled" else "partial_fill",
                order,
                now,
                price=net,
                qty=qty,
                position_qty=None if order.is_multileg else position_qty,
                execution_id=self.new_uuid(),
            )
        )

    def _record_fill(self, o: SimOrder, qty: Decimal, price: Decimal, now: dt.datetime) -> None:
        before = o.filled_qty
        o.filled_qty = before + qty
        prev_avg = o.filled_avg_price or ZERO
        o.filled_avg_price = _q((prev_avg * before + price * qty) / o.filled_qty)
        o.last_fill_price, o.last_fill_qty = price, qty
        o.updated_at = now
        if o.filled_qty >= o.qty:
            o.status = "filled"
            o.filled_at = now
        else:
            o.status = "partially_filled"
        o.tradier_hidden_reads = 1 if o.status == "filled" else 0

    def _apply_fill(self, acct: SimAccount, part: SimOrder, qty: Decimal, price: Decimal, now: dt.datetime) -> Decimal:
        delta = qty if part.side == "buy" else -qty
        return self._book(acct, part.symbol, delta, price, part.multiplier, now)

    def _book(
        self, acct: SimAccount, symbol: str, delta: Decimal, price: Decimal, mult: int, now: dt.datetime
    ) -> Decimal:
        """``delta`` units of ``symbol`` bought (> 0) or sold at ``price``: cash and the position."""
        qty = abs(delta)
        positions = acct.positions
        acct.cash -= delta * price * mult
        pos = positions.get(symbol)
        if pos is None or pos.qty == 0:
            pos = SimPosition(symbol, delta, price, now, acct.next_position_id)
            acct.next_position_id += 1
            positions[symbol] = pos
            return pos.qty
        old = pos.qty
        new = old + delta
        if _sign(old) == _sign(delta):
            pos.avg_entry = _q((abs(old) * pos.avg_entry + qty * price) / abs(new))
        else:
            closed = min(abs(delta), abs(old))
            acct.realized_pl += (price - pos.avg_entry) * closed * mult * _sign(old)
            if new != 0 and _sign(new) != _sign(old):
                pos.avg_entry = price
                pos.opened_at = now
        pos.qty = new
        if new == 0:
            del positions[symbol]
        return new

    # -- replacing -------------------------------------------------------------------

    def _replaceable(self, order: SimOrder) -> None:
        if order.parent is not None:
            raise SimReject("invalid", "a leg cannot be replaced on its own: replace its order")
        if not order.is_working:
            raise SimReject("not_replaceable", f"order is {order.status}; it cannot be replaced")
        if order.type != "limit":
            raise SimReject("invalid", "only a limit order's limit_price or qty can be replaced here")

    def replace(
        self, order: SimOrder, *, qty: Decimal | None, limit_price: Decimal | None, client_order_id: str | None
    ) -> SimOrder:
        """Alpaca's replace: a NEW order for what is left (or ``qty``) at the new terms; the old
        one ends ``replaced`` (its fills stay its own), each naming the other."""
        self._replaceable(order)
        acct = self.accounts[order.account]
        if order.is_multileg:
            raise SimReject("unsupported", "replacing a multi-leg order is not simulated")
        if client_order_id is not None and client_order_id in acct.by_client_id:
            raise SimReject("duplicate_client_order_id", "client_order_id must be unique")
        spec = OrderSpec(
            qty=qty if qty is not None else order.remaining,
            type=order.type,
            time_in_force=order.time_in_force,
            limit_price=limit_price if limit_price is not None else order.limit_price,
            symbol=order.symbol,
            side=order.side,
            position_intent=order.position_intent if order.intent_given else None,
            client_order_id=client_order_id,
            tag=order.tag,
            source=order.source,
        )
        parts = self._validate(spec)
        now = self.clock.stamp()
        new = self._build_order(acct, spec, parts, now)
        new.replaces, new.position_intent = order.id, order.position_intent
        order.replaced_by, order.replaced_at = new.id, now
        self._end(order, "replaced")
        self._register(acct, new)
        new.status = "new" if self.market.is_open else "accepted"
        acct.touch()
        self._emit(TradeEvent(acct.index, new.status, new, now))
        return new

    def modify(self, order: SimOrder, *, limit_price: Decimal, tradier_type: str | None = None) -> SimOrder:
        """Tradier's modify: the same order, its limit changed in place (a multi-leg net: debit > 0)."""
        self._replaceable(order)
        if not order.is_multileg and limit_price <= 0:
            raise SimReject("invalid", "price must be > 0")
        now = self.clock.stamp()
        order.limit_price = limit_price
        if tradier_type is not None:
            order.tradier_type = tradier_type
        order.updated_at = now
        self.accounts[order.account].touch()
        self._emit(TradeEvent(order.account, "replaced", order, now))
        return order

    # -- option expiry ----------------------------------------------------------------

    def expire_due(self, force: bool = False) -> int:
        """Settle every held option whose expiry is at or before now; returns how many.

        Cheap between closes: the books are only looked at once per 16:00 New York that
        passed (or when ``force``, e.g. after a position in an old contract was added).
        """
        now = self.clock.now()
        cutoff = _last_cutoff(now)
        if not force and self._expired_until is not None and cutoff <= self._expired_until:
            return 0
        self._expired_until = cutoff
        settled = 0
        for acct in self.accounts:
            if not acct.built:
                continue
            for pos in list(acct.positions.values()):
                inst = self.market.instrument(pos.symbol)
                if inst is None or not inst.is_option or inst.expiration is None:
                    continue
                if now >= expiry_time(inst.expiration):
                    self._settle_option(acct, pos, inst)
                    settled += 1
        return settled

    def assign_early(self, acct: SimAccount, symbol: str) -> None:
        """Settle a held option before its expiry as the OCC would an American-style contract: a
        short one assigned, a long one exercised, the whole position, whatever the price. The
        records are those of an expiry (``OPASN``/``OPEXC`` with the ``OPTRD``), dated today
        (New York): Alpaca lists them at once, Tradier's history the next morning."""
        pos = acct.positions.get(symbol)
        inst = self.market.instrument(symbol)
        if pos is None or inst is None or not inst.is_option or inst.expiration is None:
            raise SimReject("not_found", f"no option position in {symbol!r} to assign")
        if self.clock.now() >= expiry_time(inst.expiration):
            raise SimReject("invalid", f"{symbol} has expired; expiry settles it")
        self._settle_option(acct, pos, inst, early=True)

    def _settle_option(self, acct: SimAccount, pos: SimPosition, inst: Instrument, *, early: bool = False) -> None:
        assert inst.strike is not None and inst.expiration is not None
        now = self.clock.stamp()
        quote = self.market.quote(inst.underlying)
        spot = quote.mid if quote is not None and quote.mid is not None else inst.strike
        intrinsic = spot - inst.strike if inst.option_type == "call" else inst.strike - spot
        mult = inst.multiplier
        contracts = pos.qty
        # Working orders on the contract end with it.
        for order in list(self._working_by_account.get(acct.index, {}).values()):
            if any(p.symbol == inst.symbol for p in order.parts()):
                self._end(order, "expired")
        del acct.positions[inst.symbol]
        acct.realized_pl -= pos.avg_entry * contracts * mult  # the premium paid (or kept) is realized
        activity_id = f"{now:%Y%m%d%H%M%S%f}"[:17] + "::" + self.new_uuid()
        day = now.astimezone(ET).date() if early else inst.expiration
        if early or intrinsic > ITM_BY:
            kind, words = ("OPEXC", "Option Exercise") if contracts > 0 else ("OPASN", "Option Assignment")
            call = inst.option_type == "call"
            shares = abs(contracts) * mult * (1 if call == (contracts > 0) else -1)
            acct.activities.append(SimActivity(activity_id, kind, day, inst.symbol, -contracts, ZERO, words, now))
            self._book(acct, inst.underlying, shares, inst.strike, 1, now)
            acct.activities.append(
                SimActivity(
                    activity_id,
                    "OPTRD",
                    day,
                    inst.underlying,
                    shares,
                    -shares * inst.strike,
                    "Option Trade",
                    now,
                    inst.strike,
                )
            )
        else:
            acct.activities.append(
                SimActivity(activity_id, "OPEXP", day, inst.symbol, -contracts, ZERO, "Option Expiry", now)
            )
        acct.touch()

    # -- cancel, expiry, open/close -----------------------------------------------

    def cancel(self, order: SimOrder) -> SimOrder:
        if order.parent is not None:
            order = order.parent
        if not order.is_working:
            raise SimReject("not_cancelable", f"order is {order.status}; it cannot be canceled")
        self._end(order, "canceled")
        return order

    def _end(self, order: SimOrder, status: str) -> None:
        now = self.clock.stamp()
        for o in [order, *order.legs]:
            if o.status in CLOSED:
                continue
            o.status = status
            o.updated_at = now
            if status == "canceled":
                o.canceled_at = now
            elif status == "expired":
                o.expired_at = now
        self._unwork(order)
        self.accounts[order.account].touch()
        self._emit(TradeEvent(order.account, status, order, now))

    def set_market_open(self, is_open: bool) -> None:
        """Open (accepted orders go live) or close (working day orders expire)."""
        if is_open == self.market.is_open:
            return
        self.market.is_open = is_open
        self.market.version += 1
        if is_open:
            now = self.clock.stamp()
            for order in list(self._working.values()):
                if order.status == "accepted":
                    for o in [order, *order.legs]:
                        o.status, o.updated_at = "new", now
                    self.accounts[order.account].touch()
                    self._emit(TradeEvent(order.account, "new", order, now))
        else:
            for order in list(self._working.values()):
                if order.time_in_force in ("day", "ioc", "fok"):
                    self._end(order, "expired")

    # -- books by hand -------------------------------------------------------------

    def add_position(self, acct: SimAccount, symbol: str, qty: Decimal, avg: Decimal) -> SimPosition:
        if self.market.instrument(symbol) is None:
            raise KeyError(f"{symbol}: not an instrument of the simulated market")
        now = self.clock.stamp()
        pos = acct.positions.get(symbol)
        if pos is None:
            pos = SimPosition(symbol, qty, avg, now, acct.next_position_id)
            acct.next_position_id += 1
            acct.positions[symbol] = pos
        else:
            pos.qty, pos.avg_entry = qty, avg
        if qty == 0:
            del acct.positions[symbol]
        acct.touch()
        return pos

    def remove_position(self, acct: SimAccount, symbol: str) -> None:
        if acct.positions.pop(symbol, None) is None:
            raise KeyError(f"{acct.name} holds no {symbol}")
        acct.touch()


def floor_qty(x: Decimal) -> Decimal:
    return x.quantize(ONE, ROUND_FLOOR)
