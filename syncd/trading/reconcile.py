"""The pure reconciliation core: broker order observations -> order and trade state.

No I/O here, nothing asynchronous, no clock: the cycle, the outbox and the stream
consumer read the stored state, call these functions, and write what changed.
Everything is monotonic, so the same observation arriving twice (poll and
stream), arriving late, or arriving out of order changes nothing wrong:

- :func:`merge_order` folds an observation into what is known of an order. While the
  order works, fill progress (``filled_qty``) never goes backwards and a status never
  moves from a later working status to an earlier one (a stale or repeated answer changes
  nothing); a working answer never reopens a terminal order. A terminal answer is the
  broker's final word: it replaces what was recorded, so an earlier wrong answer (a lying
  proxy's fill price, status or quantity) is corrected by the next truthful one instead of
  being frozen forever, and the trade follows (its quantity moves by the correction).
- :func:`apply_orders` derives a trade from all of its orders. Its quantity moves
  by the fill *delta* of each order (what the merge added), so a fill is counted
  exactly once however often it is seen; prices are weighted averages over every
  fill so far.
- :func:`reconcile_quantity` sets an open trade's quantity to what the broker
  holds when nothing else claims those positions (the seed's trade that said 1
  while the account held 67 contracts).

Prices. A single-instrument trade keeps prices as the broker reports them (a
short stock's entry price is positive) and its P&L carries the direction: long
``(exit - entry)``, short ``(entry - exit)``. A multi-leg trade's price is the net
per unit of the legs' fills in the orientation of the opening order, positive =
debit (``sum(+avg for buy legs, -avg for sell legs) x ratio``); its exit price is
the same net of the closing fills seen from the opening side, so P&L is always
``(exit - entry) x quantity x multiplier``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum

from syncd.brokers.occ import option_spec_or_none
from syncd.brokers.parse import exact
from syncd.brokers.types import Order, OrderStatus, Side

ZERO = Decimal(0)
PRICE_PLACES = Decimal("0.000001")


class TradeStatus(StrEnum):
    PENDING = "pending"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class Role(StrEnum):
    """What an order does for its trade."""

    ENTRY = "entry"
    EXIT = "exit"


# -- orders -------------------------------------------------------------------------------

# How far along an order is. A status observed with a lower rank than the one
# recorded is stale and ignored; terminal statuses are the highest.
_EARLY = frozenset(
    {
        OrderStatus.PENDING_NEW,
        OrderStatus.ACCEPTED,
        OrderStatus.NEW,
        OrderStatus.ACCEPTED_FOR_BIDDING,
        OrderStatus.HELD,
        OrderStatus.PENDING_REVIEW,
        OrderStatus.CALCULATED,
    }
)


def status_rank(status: OrderStatus) -> int:
    """0 not yet working or working untouched, 1 working with activity, 2 terminal."""
    if status.is_terminal:
        return 2
    return 0 if status in _EARLY else 1


def is_working(status: OrderStatus) -> bool:
    """Not terminal (``OrderStatus.is_terminal``); SQL's ``order_is_working`` is the same list."""
    return not status.is_terminal


@dataclass(frozen=True, slots=True)
class LegFill:
    """One leg of a multi-leg order, as far as it is filled."""

    symbol: str
    side: Side | None
    ratio: int
    filled_qty: Decimal = ZERO
    avg_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class OrderSnapshot:
    """What is known of one broker order (stored, or just observed)."""

    status: OrderStatus
    qty: Decimal | None  # None: the broker gave none (a notional order)
    filled_qty: Decimal = ZERO
    filled_avg_price: Decimal | None = None
    side: Side | None = None
    legs: tuple[LegFill, ...] = ()
    reject_reason: str | None = None
    filled_at: dt.datetime | None = None
    canceled_at: dt.datetime | None = None
    # a bracket/OCO/OTO order's legs, (broker id, status, filled qty) each: what they are now,
    # compared so a change of a leg alone is written (they are no part of this order's fill)
    children: tuple[tuple[str, str, Decimal], ...] = ()

    @property
    def working(self) -> bool:
        return is_working(self.status)

    @classmethod
    def of(cls, order: Order) -> OrderSnapshot:
        """The snapshot of a broker order (a multi-leg order's legs as ``LegFill``; a bracket/OCO/OTO
        order's legs are orders of their own, not parts of its fill)."""
        return cls(
            status=order.status,
            qty=order.qty,
            filled_qty=order.filled_qty,
            filled_avg_price=order.filled_avg_price,
            side=order.side,
            legs=tuple(
                LegFill(
                    symbol=leg.symbol,
                    side=leg.side,
                    ratio=leg.ratio_qty or 1,
                    filled_qty=leg.filled_qty,
                    avg_price=leg.filled_avg_price,
                )
                for leg in (() if order.contingent else order.legs)
            ),
            reject_reason=order.reject_reason,
            filled_at=order.filled_at,
            canceled_at=order.canceled_at,
            children=tuple(
                sorted((leg.broker_order_id, leg.status.value, leg.filled_qty) for leg in order.legs)
                if order.contingent
                else ()
            ),
        )


def _later(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _merge_leg(prev: LegFill, obs: LegFill) -> LegFill:
    if obs.filled_qty > prev.filled_qty:
        return obs
    if obs.filled_qty == prev.filled_qty and prev.avg_price is None and obs.avg_price is not None:
        return replace(prev, avg_price=obs.avg_price)  # Tradier: the price arrives after the quantity
    return prev


def _merge_legs(prev: tuple[LegFill, ...], obs: tuple[LegFill, ...]) -> tuple[LegFill, ...]:
    if not prev:
        return obs
    if not obs:
        return prev
    by_symbol = {leg.symbol: leg for leg in obs}
    merged = [(_merge_leg(leg, by_symbol[leg.symbol]) if leg.symbol in by_symbol else leg) for leg in prev]
    known = {leg.symbol for leg in prev}
    merged += [leg for leg in obs if leg.symbol not in known]
    return tuple(merged)


def _merged_status(prev: OrderSnapshot, obs: OrderSnapshot) -> OrderStatus:
    rp, ro = status_rank(prev.status), status_rank(obs.status)
    if ro > rp:
        return obs.status
    if ro == rp and ro < 2 and obs.filled_qty >= prev.filled_qty:
        return obs.status
    if ro == rp == 2 and obs.status == OrderStatus.FILLED and obs.filled_qty > prev.filled_qty:
        return obs.status  # the fuller answer wins between two final words
    return prev.status


def _final_legs(prev: tuple[LegFill, ...], obs: tuple[LegFill, ...]) -> tuple[LegFill, ...]:
    """A terminal answer's legs replace the recorded ones (in the recorded order); a leg price it
    does not know yet (Tradier: the price comes after the quantity) is kept."""
    if not obs:
        return prev
    by_symbol = {leg.symbol: leg for leg in obs}

    def final(old: LegFill) -> LegFill:
        new = by_symbol.get(old.symbol)
        if new is None:
            return old
        if new.avg_price is None and new.filled_qty == old.filled_qty:
            return replace(new, avg_price=old.avg_price)
        return new

    known = {leg.symbol for leg in prev}
    return tuple(final(leg) for leg in prev) + tuple(leg for leg in obs if leg.symbol not in known)


def _given(qty: Decimal | None) -> bool:
    return qty is not None and qty > 0


def _final(prev: OrderSnapshot, obs: OrderSnapshot) -> OrderSnapshot:
    """``prev`` corrected by a terminal observation ``obs`` (the broker's final word on the order)."""
    same_fill = obs.filled_qty == prev.filled_qty
    return OrderSnapshot(
        status=obs.status,
        qty=obs.qty if _given(obs.qty) else prev.qty,
        filled_qty=obs.filled_qty,
        # Tradier may say "filled" before it knows the price: a price not given yet is not a correction.
        filled_avg_price=obs.filled_avg_price
        if obs.filled_avg_price is not None or not same_fill
        else prev.filled_avg_price,
        side=obs.side or prev.side,
        legs=_final_legs(prev.legs, obs.legs),
        reject_reason=obs.reject_reason or (prev.reject_reason if obs.status == prev.status else None),
        filled_at=obs.filled_at or (prev.filled_at if obs.filled_qty > 0 else None),
        canceled_at=obs.canceled_at or (prev.canceled_at if obs.status == prev.status else None),
        children=obs.children or prev.children,
    )


def merge_order(prev: OrderSnapshot | None, obs: OrderSnapshot) -> OrderSnapshot:
    """Fold an observation into what is known; stale parts of it change nothing.

    A terminal observation replaces what is known (see the module docstring): the same final
    answer seen twice (stream and poll) changes nothing, a different one corrects the record.
    Returns ``prev`` itself (``is``-identical) when the observation adds nothing.
    """
    if prev is None:
        return obs
    if obs.status.is_terminal:
        final = _final(prev, obs)
        return prev if final == prev else final
    if obs.filled_qty > prev.filled_qty:
        filled, avg = obs.filled_qty, obs.filled_avg_price
    else:
        filled, avg = prev.filled_qty, prev.filled_avg_price
        if avg is None and obs.filled_qty == prev.filled_qty:
            avg = obs.filled_avg_price
    merged = OrderSnapshot(
        status=_merged_status(prev, obs),
        qty=obs.qty if _given(obs.qty) and status_rank(obs.status) >= status_rank(prev.status) else prev.qty,
        filled_qty=filled,
        filled_avg_price=avg,
        side=prev.side or obs.side,
        legs=_merge_legs(prev.legs, obs.legs),
        reject_reason=prev.reject_reason or obs.reject_reason,
        filled_at=_later(prev.filled_at, obs.filled_at),
        canceled_at=prev.canceled_at or obs.canceled_at,
        children=obs.children or prev.children,
    )
    return prev if merged == prev else merged


# -- trades -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TradeLeg:
    symbol: str
    side: Side
    ratio: int = 1


@dataclass(frozen=True, slots=True)
class TradeSpec:
    """What does not change about a trade: its legs and their multiplier."""

    legs: tuple[TradeLeg, ...]
    multiplier: Decimal = Decimal(1)

    @property
    def multileg(self) -> bool:
        return len(self.legs) > 1

    @property
    def direction(self) -> int:
        """+1 long (or any multi-leg trade, whose prices are signed nets), -1 short."""
        if self.multileg or not self.legs:
            return 1
        return 1 if self.legs[0].side == Side.BUY else -1

    @classmethod
    def of(cls, legs: Iterable[TradeLeg]) -> TradeSpec:
        """Legs, with the multiplier of an OCC option leg (100), else 1."""
        legs = tuple(legs)
        mult = Decimal(1)
        for leg in legs:
            spec = option_spec_or_none(leg.symbol)
            if spec is not None:
                mult = Decimal(spec.multiplier)
                break
        return cls(legs, mult)


@dataclass(frozen=True, slots=True)
class TradeState:
    status: TradeStatus
    quantity: Decimal = ZERO
    entry_price: Decimal | None = None
    broker_fill_price: Decimal | None = None
    exit_price: Decimal | None = None
    realized_pnl: Decimal | None = None
    close_reason: str | None = None
    opened_at: dt.datetime | None = None
    closed_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class LinkedOrder:
    """One order of a trade: what was recorded before this step and what is known now."""

    role: Role
    before: OrderSnapshot | None
    after: OrderSnapshot

    @property
    def delta(self) -> Decimal:
        """Quantity filled by this step; negative only when a final answer corrected a wrong earlier one."""
        return self.after.filled_qty - (self.before.filled_qty if self.before else ZERO)

    @property
    def corrected(self) -> bool:
        """This step took back fills recorded from a wrong earlier answer."""
        return self.delta < 0


def _sign(side: Side | None) -> int:
    return -1 if side == Side.SELL else 1


@exact
def order_unit_price(order: OrderSnapshot) -> Decimal | None:
    """Per-unit fill price of an order in its own orientation (a multi-leg order: net, debit > 0)."""
    if not order.legs:
        return order.filled_avg_price
    if all(leg.avg_price is not None and leg.filled_qty > 0 for leg in order.legs):
        return sum(
            (_sign(leg.side) * (leg.avg_price or ZERO) * leg.ratio for leg in order.legs),
            ZERO,
        )
    return order.filled_avg_price


@exact
def _average(orders: Sequence[OrderSnapshot], sign: int) -> tuple[Decimal, Decimal | None]:
    """Total filled and the weighted average unit price (``None`` if a filled order has no price yet)."""
    filled = sum((o.filled_qty for o in orders), ZERO)
    if filled <= 0:
        return filled, None
    total = ZERO
    for o in orders:
        if o.filled_qty <= 0:
            continue
        price = order_unit_price(o)
        if price is None:
            return filled, None
        total += price * o.filled_qty
    return filled, (sign * total / filled).quantize(PRICE_PLACES)


def _entry_outcome(entries: Sequence[OrderSnapshot]) -> tuple[TradeStatus, str]:
    """Why a trade ended with nothing filled: the last entry order's final word."""
    last = entries[-1]
    if any(o.status == OrderStatus.REJECTED for o in entries):
        rejected = next(o for o in reversed(entries) if o.status == OrderStatus.REJECTED)
        return TradeStatus.REJECTED, rejected.reject_reason or "rejected by the broker"
    return TradeStatus.CANCELLED, last.reject_reason or f"order {last.status.value}"


def _exit_price(spec: TradeSpec, exits: Sequence[OrderSnapshot]) -> Decimal | None:
    # A closing order of a multi-leg trade runs the other way: its net seen from the opening side.
    return _average(exits, -1 if spec.multileg else 1)[1]


@exact
def _realized(spec: TradeSpec, entry: Decimal | None, exit_: Decimal | None, qty: Decimal) -> Decimal | None:
    if entry is None or exit_ is None or qty <= 0:
        return None
    return ((exit_ - entry) * spec.direction * qty * spec.multiplier).quantize(Decimal("0.01"))


@exact
def apply_orders(
    spec: TradeSpec,
    trade: TradeState,
    orders: Sequence[LinkedOrder],
    now: dt.datetime,
    *,
    exit_pending: bool = False,
) -> TradeState:
    """The trade after this step, from all of its orders (the status rules of docs/guarantees.md).

    ``orders`` lists every order linked to the trade, oldest first; an unchanged one
    has ``before == after``. ``quantity`` moves by the fill deltas (entries add,
    exits subtract), so repeated observations count once. ``exit_pending``: a close
    request is queued or being placed, so a ``closing`` trade stays closing even
    before its exit order exists.
    """
    entries = [o.after for o in orders if o.role == Role.ENTRY]
    exits = [o.after for o in orders if o.role == Role.EXIT]
    delta = sum((o.delta if o.role == Role.ENTRY else -o.delta for o in orders), ZERO)
    # No clamping: an exit's fill applied before its entry's (stream events across orders
    # out of order) leaves a transient negative quantity that the entry's fill then cancels.
    quantity = trade.quantity + delta
    entry_filled, entry_avg = _average(entries, 1)
    exit_filled = sum((o.filled_qty for o in exits), ZERO)
    corrected = any(o.corrected for o in orders)  # a final answer took back wrongly recorded fills
    entry_price, fill_price = trade.entry_price, trade.broker_fill_price
    if entry_avg is not None:
        entry_price = fill_price = entry_avg
    elif corrected and entries and entry_filled <= 0:
        entry_price = fill_price = None  # the fills that priced it were never made
    exit_price, realized = trade.exit_price, trade.realized_pnl
    if exit_filled > 0:
        exit_price = _exit_price(spec, exits)
        realized = _realized(spec, entry_price, exit_price, exit_filled)
    elif corrected and exits:
        exit_price = realized = None
    new = replace(
        trade,
        quantity=quantity,
        entry_price=entry_price,
        broker_fill_price=fill_price,
        exit_price=exit_price,
        realized_pnl=realized,
    )
    if trade.status == TradeStatus.CLOSED and not corrected:
        return new  # final: fills may still firm up its prices; only a corrected fill reopens it
    exit_working = exit_pending and trade.status == TradeStatus.CLOSING
    return _with_status(new, entries, exits, entry_filled, exit_filled, now, orders, exit_working)


def _first_fill(orders: Sequence[LinkedOrder]) -> dt.datetime | None:
    times = [o.after.filled_at for o in orders if o.role == Role.ENTRY and o.after.filled_at is not None]
    return min(times) if times else None


def _with_status(
    new: TradeState,
    entries: Sequence[OrderSnapshot],
    exits: Sequence[OrderSnapshot],
    entry_filled: Decimal,
    exit_filled: Decimal,
    now: dt.datetime,
    orders: Sequence[LinkedOrder],
    exit_pending: bool,
) -> TradeState:
    entry_working = any(o.working for o in entries)
    exit_working = exit_pending or any(o.working for o in exits)
    if entry_filled <= 0 and new.quantity <= 0 and exit_filled <= 0:
        if new.status in (TradeStatus.OPEN, TradeStatus.CLOSING) and not entries:
            return new  # a trade with no entry orders (imported, or the app's own): not ours to judge
        if entries and not entry_working:
            status, reason = _entry_outcome(entries)
            return replace(new, status=status, close_reason=reason, closed_at=new.closed_at or now)
        return replace(new, status=TradeStatus.PENDING, close_reason=None, closed_at=None)
    opened = new.opened_at or _first_fill(orders) or now
    if new.quantity > 0 or entry_working:
        if exit_working:
            return replace(new, status=TradeStatus.CLOSING, opened_at=opened, closed_at=None)
        return replace(new, status=TradeStatus.OPEN, opened_at=opened, close_reason=None, closed_at=None)
    if exit_working:
        return replace(new, status=TradeStatus.CLOSING, opened_at=opened)
    return replace(
        new,
        status=TradeStatus.CLOSED,
        quantity=ZERO,  # flat: an exit that sold more than the trade counted (a stale quantity) ends at 0
        opened_at=opened,
        close_reason=new.close_reason or "exit filled",
        closed_at=new.closed_at or now,
    )


CLOSED_OUTSIDE = "position closed outside syncd"


def closed_outside(
    spec: TradeSpec, trade: TradeState, held: Mapping[str, Decimal], claimed_elsewhere: Iterable[str] = ()
) -> bool:
    """True when an open trade's every leg is flat at the broker and no other live trade claims them.

    The account's position was closed by hand (or by the broker: an assignment, a
    liquidation), so the trade is flat and closes (docs/guarantees.md). A leg still held, a
    shared symbol or a trade without legs is left alone (``verify`` reports those).
    The caller only asks after a complete sync newer than the trade's last fill.
    """
    if trade.status != TradeStatus.OPEN or not spec.legs:
        return False
    others = set(claimed_elsewhere)
    return all(leg.symbol not in others and held.get(leg.symbol, ZERO) == 0 for leg in spec.legs)


def reconcile_quantity(
    spec: TradeSpec,
    trade: TradeState,
    held: Mapping[str, Decimal],
    claimed_elsewhere: Iterable[str] = (),
    *,
    own_fills: bool = False,
) -> Decimal | None:
    """The quantity an open trade should have by what the broker holds, or ``None`` to leave it.

    A trade with a fill record (``own_fills``: an entry order is linked to it) holds what its
    own orders filled; the broker only caps it: where a leg's position on the trade's side
    (``|position| / ratio``, 0 on the wrong side) is smaller, the trade shrinks to the
    smallest leg (shares sold by hand). It never grows: a position larger than the trade's
    claim is an untracked holding. A leg at 0 while another is still held is left to
    ``verify`` (a spread half closed by hand is not a smaller spread).

    A trade without a fill record (imported, or written by an app) follows the broker both
    ways, but only when every leg is held on the trade's side (long for buy legs, short for
    sell legs), no other live trade claims any leg's symbol, and every leg agrees on
    ``|position| / ratio``. Disagreeing legs or a missing position are left for ``verify`` to
    report. Sharing a symbol with another live trade, it is only capped, as a trade with its
    own fills (an import next to a syncd trade keeps its quantity, shrunk by a hand sale).
    """
    if trade.status != TradeStatus.OPEN or not spec.legs:
        return None
    others = set(claimed_elsewhere)
    if own_fills or any(leg.symbol in others for leg in spec.legs):
        return _capped_quantity(spec, trade, held)
    units: set[Decimal] = set()
    for leg in spec.legs:
        position = held.get(leg.symbol, ZERO)
        if position == 0 or (position > 0) != (leg.side == Side.BUY):
            return None
        units.add(abs(position) / leg.ratio)
    if len(units) != 1:
        return None
    (quantity,) = units
    return None if quantity == trade.quantity else quantity


def _held_units(leg: TradeLeg, held: Mapping[str, Decimal]) -> Decimal:
    """Trade units a leg's position covers on the leg's side (0 for none or the wrong side)."""
    position = held.get(leg.symbol, ZERO)
    if position == 0 or (position > 0) != (leg.side == Side.BUY):
        return ZERO
    return abs(position) / leg.ratio


def _capped_quantity(spec: TradeSpec, trade: TradeState, held: Mapping[str, Decimal]) -> Decimal | None:
    units = [_held_units(leg, held) for leg in spec.legs]
    cap = min(units)
    if cap <= 0 or cap >= trade.quantity:
        return None
    if spec.multileg:
        cap = cap.to_integral_value(rounding=ROUND_FLOOR)  # a spread is whole units
        if cap <= 0:
            return None
    return cap
