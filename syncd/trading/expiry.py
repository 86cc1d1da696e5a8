"""The pure core of option expiry, assignment and exercise: broker records -> closed trades.

No I/O, no clock (``now`` is passed in). :mod:`syncd.trading.expiry_store` reads the live
trades, what the account holds and the broker's records (``trade_events``), calls
:func:`settle`, and writes what changed.

A trade takes part once every leg is flat at the broker and every leg is an option past its
expiry (the close, 16:00 New York, of the OCC expiration date), or every leg is an option that
vanished before its expiry (an early assignment or exercise: :attr:`Candidate.early`, which takes
only assignment and exercise records, and :func:`early_verdict` for one no record explains yet).
Its legs are then matched with the broker's records (:class:`syncd.brokers.types.OptionEvent`):

- by symbol (Alpaca names the contract), or, for a record without one (Tradier's history), by
  what syncd knows: a record dated from the leg's expiration day to a week after it whose
  quantity closes the leg's side (a long leg: negative, a short leg: positive). Between two legs
  that fit, an assignment or exercise goes to the leg whose stock delivery has the sign of the
  stock position the account now holds in the underlying (a short put assigned: long shares).
- A leg with a record covering its contracts is settled; while a leg has none the trade is
  ``closing`` with ``close_reason`` ``expiration pending`` and no exit price.
- Settled: a leg that expired is worth 0. A leg assigned or exercised delivers shares at its
  strike (a long call exercised or a short put assigned: bought; a short call assigned or a long
  put exercised: sold). Per underlying, shares delivered that net to zero (both legs of a vertical
  in the money) are cash at the strikes and part of the trade's exit value; shares that do not
  become a trade of their own (``source`` ``assignment``, linked by ``parent_trade_id``) opened at
  the strike (the delivery's average), and the option legs' exit value is 0.
- The trade closes with ``close_reason`` ``assigned`` (any leg assigned), else ``exercised`` (any
  leg exercised), else ``expired``; ``exit_price`` is the exit value per unit (in the opening
  orientation: for a single leg the contract's own value, 0) and ``realized_pnl`` the trade's
  whole result, ``(exit - entry) x direction x quantity x multiplier``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from syncd.brokers.occ import option_spec_or_none
from syncd.brokers.parse import exact
from syncd.brokers.types import OptionEvent, OptionEventKind, OptionType, Side
from syncd.trading.reconcile import PRICE_PLACES, ZERO, TradeLeg, TradeSpec, TradeState, TradeStatus

ET = ZoneInfo("America/New_York")
EXPIRY_CLOSE = dt.time(16, 0)
MATCH_WINDOW = dt.timedelta(days=7)  # a record without a symbol may be dated this long after expiry
EXPIRATION_PENDING = "expiration pending"
ASSIGNMENT_PENDING = "assignment pending"  # a leg vanished before expiry, a stock change says assigned
PENDING_REASONS = (EXPIRATION_PENDING, ASSIGNMENT_PENDING)
# A leg that vanished before its expiry (early assignment or exercise): a record without a symbol
# may be dated this long before the day syncd saw the leg gone (assigned on a Friday, seen Monday).
EARLY_LOOKBACK = dt.timedelta(days=4)
EARLY_KINDS = frozenset({OptionEventKind.ASSIGNED, OptionEventKind.EXERCISED})
OPTION_KINDS = frozenset({OptionEventKind.EXPIRED, OptionEventKind.ASSIGNED, OptionEventKind.EXERCISED})

EventKey = tuple[str, str]  # (event_id, kind): trade_events' key within an account


def expiry_time(expiration: dt.date) -> dt.datetime:
    """When a contract expiring on ``expiration`` expires: that day's close in New York."""
    return dt.datetime.combine(expiration, EXPIRY_CLOSE, tzinfo=ET)


def past_expiry(symbol: str, now: dt.datetime) -> bool:
    """True for an OCC option symbol whose expiry is at or before ``now``."""
    spec = option_spec_or_none(symbol)
    return spec is not None and now >= expiry_time(spec.expiration)


def key_of(event: OptionEvent) -> EventKey:
    return (event.event_id, event.kind.value)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A live trade whose every leg is flat at the broker.

    ``vanished_on``: the New York day syncd first saw its legs gone, when that was before the
    legs' expiry (an early assignment or exercise); ``None`` at expiry.
    """

    trade_id: int
    spec: TradeSpec
    state: TradeState
    vanished_on: dt.date | None = None

    @property
    def early(self) -> bool:
        return self.vanished_on is not None


@dataclass(frozen=True, slots=True)
class ChildTrade:
    """The stock an assignment or exercise left: a trade of its own (``source`` ``assignment``)."""

    symbol: str
    side: Side
    quantity: Decimal
    entry_price: Decimal

    @property
    def strategy(self) -> str:
        return "LONG_STOCK" if self.side == Side.BUY else "SHORT_STOCK"


@dataclass(frozen=True, slots=True)
class LegOutcome:
    """What the records say happened to one option leg."""

    symbol: str
    events: tuple[EventKey, ...]
    converted: Decimal  # contracts assigned or exercised
    kind: OptionEventKind  # expired, assigned or exercised (the leg's strongest record)


@dataclass(frozen=True, slots=True)
class Settlement:
    trade_id: int
    state: TradeState
    legs: tuple[LegOutcome, ...] = ()
    children: tuple[ChildTrade, ...] = ()

    @property
    def events(self) -> tuple[EventKey, ...]:
        return tuple(k for leg in self.legs for k in leg.events)


def _sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


def _delivery_sign(leg: TradeLeg) -> int:
    """+1 when assigning/exercising this leg delivers shares bought, -1 sold."""
    spec = option_spec_or_none(leg.symbol)
    call = spec is not None and spec.option_type == OptionType.CALL
    long = leg.side == Side.BUY
    return 1 if call == long else -1


def _fits(event: OptionEvent, leg: TradeLeg, vanished_on: dt.date | None = None) -> bool:
    """A record that may be this leg's: by symbol, or without one by date and quantity sign. A leg
    that vanished before its expiry (``vanished_on``) takes only an assignment or exercise, dated
    from ``EARLY_LOOKBACK`` before that day to ``MATCH_WINDOW`` after it."""
    if event.kind not in (EARLY_KINDS if vanished_on is not None else OPTION_KINDS):
        return False
    if event.symbol is not None:
        return event.symbol == leg.symbol
    spec = option_spec_or_none(leg.symbol)
    if spec is None:
        return False
    if vanished_on is not None:
        if not vanished_on - EARLY_LOOKBACK <= event.on <= vanished_on + MATCH_WINDOW:
            return False
    elif not spec.expiration <= event.on <= spec.expiration + MATCH_WINDOW:
        return False
    closing = -1 if leg.side == Side.BUY else 1  # the record's quantity closes the leg's side
    return _sign(event.quantity) == closing


def _match_legs(
    legs: Sequence[TradeLeg],
    quantity: Decimal,
    pool: list[OptionEvent],
    stock_held: Mapping[str, Decimal],
    vanished_on: dt.date | None = None,
) -> dict[str, list[OptionEvent]] | None:
    """Each leg's records, taken from ``pool``; ``None`` (pool untouched) when a leg has too few."""
    taken: dict[str, list[OptionEvent]] = {}
    left = list(pool)
    # Named records first, so a record without a symbol is never taken by a leg a named one covers.
    for named in (True, False):
        for leg in legs:
            need = quantity * leg.ratio - sum((abs(e.quantity) for e in taken.get(leg.symbol, [])), ZERO)
            if need <= 0:
                continue
            for event in _ranked(left, leg, legs, stock_held, vanished_on):
                if (event.symbol is not None) != named or not _fits(event, leg, vanished_on):
                    continue
                taken.setdefault(leg.symbol, []).append(event)
                left.remove(event)
                need -= abs(event.quantity)
                if need <= 0:
                    break
    for leg in legs:
        if sum((abs(e.quantity) for e in taken.get(leg.symbol, [])), ZERO) < quantity * leg.ratio:
            return None
    pool[:] = left
    return taken


def _ranked(
    events: list[OptionEvent],
    leg: TradeLeg,
    legs: Sequence[TradeLeg],
    stock_held: Mapping[str, Decimal],
    vanished_on: dt.date | None = None,
) -> list[OptionEvent]:
    """Records in the order a leg should take them: for a record without a symbol that two legs fit,
    an assignment/exercise whose delivery matches the stock now held first, an expiry otherwise."""
    spec = option_spec_or_none(leg.symbol)
    held = _sign(stock_held.get(spec.underlying, ZERO)) if spec else 0
    delivers = _delivery_sign(leg)
    shared = sum(1 for other in legs if other is not leg and _fits_any(events, other, vanished_on))

    def rank(e: OptionEvent) -> int:
        if e.symbol is not None or not shared:
            return 0
        converted = e.kind != OptionEventKind.EXPIRED
        if held == 0:
            return 1 if converted else 0
        return 0 if converted == (delivers == held) else 1

    return sorted(events, key=rank)


def _fits_any(events: Iterable[OptionEvent], leg: TradeLeg, vanished_on: dt.date | None = None) -> bool:
    return any(e.symbol is None and _fits(e, leg, vanished_on) for e in events)


def _strongest(events: Sequence[OptionEvent]) -> OptionEventKind:
    kinds = {e.kind for e in events}
    for kind in (OptionEventKind.ASSIGNED, OptionEventKind.EXERCISED):
        if kind in kinds:
            return kind
    return OptionEventKind.EXPIRED


@exact
def _close(c: Candidate, taken: Mapping[str, list[OptionEvent]], now: dt.datetime) -> Settlement:
    spec, state = c.spec, c.state
    qty = state.quantity
    outcomes: list[LegOutcome] = []
    delivered: dict[str, tuple[Decimal, Decimal]] = {}  # underlying -> (shares, sum of shares x strike)
    for leg in spec.legs:
        events = taken[leg.symbol]
        need = qty * leg.ratio
        converted = min(need, sum((abs(e.quantity) for e in events if e.kind != OptionEventKind.EXPIRED), ZERO))
        outcomes.append(LegOutcome(leg.symbol, tuple(key_of(e) for e in events), converted, _strongest(events)))
        option = option_spec_or_none(leg.symbol)
        if converted > 0 and option is not None:
            shares = converted * option.multiplier * _delivery_sign(leg)
            old_shares, old_value = delivered.get(option.underlying, (ZERO, ZERO))
            delivered[option.underlying] = (old_shares + shares, old_value + shares * option.strike)
    cash = ZERO  # received by the trade from deliveries that net to zero
    children: list[ChildTrade] = []
    for underlying, (shares, value) in sorted(delivered.items()):
        if shares == 0:
            cash -= value
        else:
            price = (value / shares).quantize(PRICE_PLACES)
            children.append(ChildTrade(underlying, Side.BUY if shares > 0 else Side.SELL, abs(shares), price))
    units = qty * spec.multiplier
    exit_value = (cash / units).quantize(PRICE_PLACES) if units > 0 else ZERO
    exit_price = exit_value if spec.multileg or spec.direction > 0 else -exit_value
    realized = None
    if state.entry_price is not None and qty > 0:
        realized = ((exit_price - state.entry_price) * spec.direction * units).quantize(Decimal("0.01"))
    kinds = {o.kind for o in outcomes}
    reason = next(
        (k.value for k in (OptionEventKind.ASSIGNED, OptionEventKind.EXERCISED) if k in kinds),
        OptionEventKind.EXPIRED.value,
    )
    closed = replace(
        state,
        status=TradeStatus.CLOSED,
        quantity=ZERO,
        exit_price=exit_price + 0,  # normalise -0
        realized_pnl=realized,
        close_reason=reason,
        closed_at=now,
    )
    return Settlement(c.trade_id, closed, tuple(outcomes), tuple(children))


def settle(
    candidates: Sequence[Candidate],
    events: Sequence[OptionEvent],
    stock_held: Mapping[str, Decimal],
    now: dt.datetime,
) -> list[Settlement]:
    """What the broker's records (not yet applied) do to flat trades with an option leg past expiry.

    ``candidates`` are live trades whose every leg is flat (oldest first: an older trade takes a
    record first); ``stock_held`` the account's stock positions by symbol. Returns the trades that
    change: closed, or ``closing`` with ``expiration pending`` while a record is missing. A trade
    with a leg that is not an option past expiry is not this module's (:func:`expiry_applies`):
    it closes as closed outside syncd.

    An early candidate (its option legs vanished before expiry, :attr:`Candidate.early`) is
    settled the same way when assignment or exercise records cover its legs; without them it is
    left out of the answer (:func:`early_verdict` says what becomes of it).
    """
    pool = [e for e in events if e.kind in OPTION_KINDS]
    out: list[Settlement] = []
    for c in candidates:
        if c.state.quantity <= 0 or c.state.status not in (TradeStatus.OPEN, TradeStatus.CLOSING):
            continue
        if c.early:
            if not all_options(c.spec):
                continue
            taken = _match_legs(c.spec.legs, c.state.quantity, pool, stock_held, c.vanished_on)
            if taken is not None:
                out.append(_close(c, taken, now))
            continue
        if not expiry_applies(c.spec, now):
            continue
        taken = _match_legs(c.spec.legs, c.state.quantity, pool, stock_held)
        if taken is not None:
            out.append(_close(c, taken, now))
            continue
        pending = replace(
            c.state, status=TradeStatus.CLOSING, close_reason=EXPIRATION_PENDING, exit_price=None, realized_pnl=None
        )
        if pending != c.state:
            out.append(Settlement(c.trade_id, replace(pending, closed_at=None)))
    return out


def expiry_applies(spec: TradeSpec, now: dt.datetime) -> bool:
    """A trade whose legs are all options past expiry: once flat, it waits for the broker's records
    instead of closing as "position closed outside syncd"."""
    return bool(spec.legs) and all(past_expiry(leg.symbol, now) for leg in spec.legs)


def all_options(spec: TradeSpec) -> bool:
    """A trade whose every leg is an OCC option: its legs vanishing may be an assignment or exercise."""
    return bool(spec.legs) and all(option_spec_or_none(leg.symbol) is not None for leg in spec.legs)


class EarlyVerdict(StrEnum):
    """What becomes of a trade whose option legs vanished before expiry with no record covering them."""

    WAIT = "wait"  # ask again after the next sync (Alpaca books its activities at once)
    PENDING = "pending"  # closing, "assignment pending", until the broker's record (Tradier: nightly)
    CLOSED_OUTSIDE = "closed outside"  # position closed outside syncd, as before


def early_verdict(
    spec: TradeSpec,
    *,
    nightly_records: bool,
    synced_since_vanished: bool,
    stock_changes: Mapping[str, Sequence[Decimal]],
    vanished_on: dt.date,
    today: dt.date,
) -> EarlyVerdict:
    """The rule for an early-vanished trade the broker's records do not (yet) explain.

    - Alpaca (``nightly_records`` false) books an assignment's activities at once: the trade
      waits until a later sync still shows the legs gone (``synced_since_vanished``) and the
      activities still show nothing, then it is closed outside syncd.
    - Tradier (``nightly_records``) writes its history overnight: the trade is ``closing`` with
      ``assignment pending`` only when there is a sign of an assignment or exercise, a change of
      the stock position in the underlying since the leg vanished in the direction a leg's
      delivery would move it (``stock_changes``: each underlying's signed changes), and for no
      longer than ``MATCH_WINDOW`` after the day it vanished; otherwise closed outside syncd.
    """
    if not nightly_records:
        return EarlyVerdict.CLOSED_OUTSIDE if synced_since_vanished else EarlyVerdict.WAIT
    if today > vanished_on + MATCH_WINDOW:
        return EarlyVerdict.CLOSED_OUTSIDE
    for leg in spec.legs:
        option = option_spec_or_none(leg.symbol)
        if option is None:
            continue
        delivers = _delivery_sign(leg)
        if any(_sign(change) == delivers for change in stock_changes.get(option.underlying, ())):
            return EarlyVerdict.PENDING
    return EarlyVerdict.CLOSED_OUTSIDE
