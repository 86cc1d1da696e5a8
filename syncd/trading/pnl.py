"""The money arithmetic of monitorCycle, as pure functions (no I/O, no clock, no database).

Conventions (docs/schema.md, docs/guarantees.md):

* **Positions** carry a signed quantity (short < 0). ``market_value`` is
  ``price x quantity x multiplier`` (so negative for a short) and
  ``unrealized_pl = market_value - cost_basis`` with the cost basis given the
  position's sign, whatever sign the broker reported it with.
* **Mid**: ``(bid + ask) / 2`` when the quote is *two-sided* (both sides known,
  ``ask > 0``, not crossed; a zero bid is a real bid for a far out-of-the-money
  option), else the last trade price.
* **A trade** is one or more legs (``buy``/``sell`` x ``ratio``). Its net value
  per unit is ``sum(+mid x ratio for buy legs, -mid x ratio for sell legs)``: positive
  for a debit position (long stock, a debit spread), negative for a credit one.
  ``current_price`` is quoted the way entry prices are: the price to close one
  unit, as a positive number (``direction x net``), and the entry price is taken
  by its magnitude (Alpaca reports a credit spread's fill as a negative net
  price, Tradier as a positive credit). Then per unit
  ``pnl = direction x (current_price - entry)``: debit gains when the price
  rises, credit when it falls.
* **Quantities come from the positions, capped by what the trade owns**: a trade
  with a fill record (an entry order linked to it) holds at most its own
  ``trades.quantity x ratio`` of each leg, never shares bought outside it; a trade
  without one (imported, or the seed's trade recorded as 1 while 67 were held)
  holds ``|position|`` when it is the only open trade on that symbol, else at most
  its own share; a position of the wrong sign for the leg's side is not this leg's.
  What is available to close is what is held minus what working closing orders
  already hold; a trade's units are the minimum over legs of
  ``leg quantity / ratio``, floored to whole units except for a lone stock or crypto
  leg (fractional shares are real).
* **Exit rules** (checked in this order): ``stop_loss`` (loss >= ``stop_loss_pct`` %
  of the entry debit/credit), ``take_profit`` (gain >= ``take_profit_pct`` %),
  ``days_before_expiration`` (an option leg expires within
  ``trading.exit_days_before_expiration`` days; 0 = off). A rule may only fire for
  an ``open`` trade whose every leg has a two-sided quote and that has something
  available to close, and no exit already works for it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Literal

from syncd.brokers.parse import exact

ZERO = Decimal(0)
HUNDRED = Decimal(100)

LegSide = Literal["buy", "sell"]
ExitRule = Literal["stop_loss", "take_profit", "days_before_expiration"]

# Strategy-name fragments that say "this position was opened for a credit".
_CREDIT_MARKERS = ("CREDIT", "SHORT", "IRON_CONDOR", "IRON_BUTTERFLY", "STRANGLE_SELL", "STRADDLE_SELL")
_DEBIT_MARKERS = ("DEBIT", "LONG")
_FRACTIONAL_CLASSES = frozenset({"us_equity", "crypto"})


# -- quotes and positions ---------------------------------------------------------------------


def two_sided(bid: Decimal | None, ask: Decimal | None) -> bool:
    """A usable two-sided quote: both sides known, a positive ask, not crossed (bid may be 0)."""
    return bid is not None and ask is not None and bid >= ZERO and ask > ZERO and ask >= bid


def mid_wide(bid: Decimal | None, ask: Decimal | None, last: Decimal | None = None) -> Decimal | None:
    """:func:`mid` for a caller already under :data:`~syncd.brokers.parse.WIDE` (one context for many quotes)."""
    if two_sided(bid, ask):
        assert bid is not None
        assert ask is not None
        return (bid + ask) / 2
    return last


mid = exact(mid_wide)
mid.__doc__ = """Mid of a two-sided quote, else ``last`` (which may be None)."""


@exact
def market_value(price: Decimal, quantity: Decimal, multiplier: Decimal) -> Decimal:
    """Signed value of a position: negative for a short."""
    return price * quantity * multiplier


@exact
def unrealized_pl(value: Decimal, quantity: Decimal, cost_basis: Decimal | None) -> Decimal | None:
    """``market_value - cost_basis``, the cost basis taken with the position's sign.

    Brokers disagree on the sign of a short's cost basis; a short sold for 200 has a
    cost basis of -200 here, so buying it back cheaper (value -150) shows +50.
    """
    if cost_basis is None:
        return None
    signed_cost = abs(cost_basis) if quantity >= 0 else -abs(cost_basis)
    return value - signed_cost


# -- trades -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg of a trade, with what the account holds of it and what is already committed."""

    symbol: str
    side: LegSide
    ratio: int = 1
    position_quantity: Decimal | None = None  # signed; None: the account holds none
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None
    multiplier: Decimal = Decimal(1)
    asset_class: str = "us_equity"
    expiration: dt.date | None = None
    claimants: int = 1  # open trades with a leg on this symbol (this one included)
    committed: Decimal = ZERO  # what working closing orders hold of this symbol, all trades
    committed_by_trade: Decimal = ZERO  # ... of which this trade's own orders

    @property
    def sign(self) -> int:
        return 1 if self.side == "buy" else -1

    @property
    def mid(self) -> Decimal | None:
        return mid(self.bid, self.ask, self.last)

    @property
    def quoted(self) -> bool:
        return two_sided(self.bid, self.ask)


@dataclass(frozen=True, slots=True)
class Trade:
    """An open trade as monitorCycle reads it."""

    id: int
    strategy: str
    legs: tuple[Leg, ...]
    status: str = "open"
    quantity: Decimal = ZERO  # trades.quantity: a cap when it has own fills or shares a symbol
    entry_price: Decimal | None = None
    take_profit_pct: Decimal | None = None
    stop_loss_pct: Decimal | None = None
    exit_pending: bool = False  # a close request or closing order already works for it
    own_fills: bool = False  # an entry order is linked to it: it holds only what it filled


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What monitoring concludes about one trade."""

    quantity: Decimal  # units held, from the positions
    available_quantity: Decimal  # units that may still be closed
    can_monitor: bool  # every leg held, each with a two-sided quote
    can_exit: bool  # every leg held and something available to close
    direction: int  # +1 debit (long) position, -1 credit (short) position
    current_price: Decimal | None  # per unit, in the entry price's convention
    floating_pnl: Decimal | None  # in money: per-unit P&L x units held x multiplier
    pnl_per_unit: Decimal | None


def leg_held(leg: Leg, trade_quantity: Decimal, own_fills: bool = False) -> Decimal:
    """The instrument quantity this leg holds (>= 0).

    The whole position only for a trade without a fill record that is the only claim on the
    symbol (the seed's trade recorded as 1 while 67 were held); a trade with own fills, or one
    sharing the symbol, holds at most its own quantity x ratio: never shares bought outside it.
    """
    pos = leg.position_quantity
    if pos is None or pos == ZERO or (pos > ZERO) != (leg.side == "buy"):
        return ZERO
    if leg.claimants > 1 or own_fills:
        return min(abs(pos), max(trade_quantity, ZERO) * leg.ratio)
    return abs(pos)


def leg_available(leg: Leg, trade_quantity: Decimal, own_fills: bool = False) -> Decimal:
    """What this leg may still close: held, minus what working closing orders already hold."""
    held = leg_held(leg, trade_quantity, own_fills)
    if held == ZERO:
        return ZERO
    assert leg.position_quantity is not None  # held > 0 implies a position
    free_of_trade = held - leg.committed_by_trade
    free_of_account = abs(leg.position_quantity) - leg.committed
    return max(ZERO, min(free_of_trade, free_of_account))


def whole_units(legs: tuple[Leg, ...]) -> bool:
    """Trades count in whole units, except a lone stock or crypto leg (fractional shares)."""
    return not (len(legs) == 1 and legs[0].asset_class in _FRACTIONAL_CLASSES)


def units(leg_quantity: Decimal, ratio: int, *, whole: bool) -> Decimal:
    q = leg_quantity / ratio
    return q.to_integral_value(rounding=ROUND_FLOOR) if whole else q


def trade_units(legs: tuple[Leg, ...], per_leg: list[Decimal]) -> Decimal:
    """Minimum over legs of ``per_leg / ratio`` (0 for no legs)."""
    if not legs:
        return ZERO
    whole = whole_units(legs)
    return min(units(q, leg.ratio, whole=whole) for leg, q in zip(legs, per_leg, strict=True))


def net_value(legs: tuple[Leg, ...]) -> Decimal | None:
    """Per unit: long legs' mids minus short legs' mids, each times its ratio; None if a mid is unknown."""
    total = ZERO
    for leg in legs:
        m = leg.mid
        if m is None:
            return None
        total += leg.sign * leg.ratio * m
    return total


def direction(strategy: str, legs: tuple[Leg, ...], entry_price: Decimal | None) -> int:
    """+1 for a position opened for a debit, -1 for one opened for a credit.

    By the strategy's name first (``*_CREDIT``, ``SHORT_*``, iron condors are credit;
    ``*_DEBIT``, ``LONG_*`` debit), then a negative entry price (Alpaca's net price of
    a credit fill), then a lone leg's side, then the sign of the legs' net value.
    """
    name = strategy.upper()
    if any(m in name for m in _CREDIT_MARKERS):
        return -1
    if any(m in name for m in _DEBIT_MARKERS):
        return 1
    if entry_price is not None and entry_price < ZERO:
        return -1
    if len(legs) == 1:
        return legs[0].sign
    net = net_value(legs)
    return -1 if net is not None and net < ZERO else 1


def multiplier(legs: tuple[Leg, ...]) -> Decimal:
    """The contract multiplier of the trade's unit (legs of one trade share it; 1 for none)."""
    return max((leg.multiplier for leg in legs), default=Decimal(1))


@exact
def evaluate(trade: Trade) -> Evaluation:
    """Held and available units, monitorability, price and floating P&L of one trade."""
    legs = trade.legs
    per_leg = [leg_held(leg, trade.quantity, trade.own_fills) for leg in legs]
    held = trade_units(legs, per_leg)
    available = trade_units(legs, [leg_available(leg, trade.quantity, trade.own_fills) for leg in legs])
    every_leg_held = bool(legs) and all(q > ZERO for q in per_leg)
    can_monitor = every_leg_held and all(leg.quoted for leg in legs)
    can_exit = every_leg_held and available > ZERO
    sign = direction(trade.strategy, legs, trade.entry_price)
    net = net_value(legs) if every_leg_held else None
    price = sign * net if net is not None else None
    per_unit: Decimal | None = None
    pnl: Decimal | None = None
    if price is not None and trade.entry_price is not None:
        per_unit = sign * (price - abs(trade.entry_price))
        pnl = per_unit * held * multiplier(legs)
    return Evaluation(
        quantity=held,
        available_quantity=available,
        can_monitor=can_monitor,
        can_exit=can_exit,
        direction=sign,
        current_price=price,
        floating_pnl=pnl,
        pnl_per_unit=per_unit,
    )


# -- exit rules -------------------------------------------------------------------------------


@exact
def pnl_pct(state: Evaluation, entry_price: Decimal | None) -> Decimal | None:
    """P&L per unit as a percentage of the entry debit/credit (None when either is unknown or 0)."""
    if state.pnl_per_unit is None or entry_price is None or entry_price == ZERO:
        return None
    return state.pnl_per_unit / abs(entry_price) * HUNDRED


def hits_take_profit(pct: Decimal | None, take_profit_pct: Decimal | None) -> bool:
    return pct is not None and take_profit_pct is not None and take_profit_pct > ZERO and pct >= take_profit_pct


def hits_stop_loss(pct: Decimal | None, stop_loss_pct: Decimal | None) -> bool:
    return pct is not None and stop_loss_pct is not None and stop_loss_pct > ZERO and pct <= -stop_loss_pct


def days_to_expiration(legs: tuple[Leg, ...], today: dt.date) -> int | None:
    """Days until the earliest option leg expires; None for a trade without an expiring leg."""
    dates = [leg.expiration for leg in legs if leg.expiration is not None]
    return (min(dates) - today).days if dates else None


def hits_expiration(days_left: int | None, exit_days_before_expiration: int) -> bool:
    return exit_days_before_expiration > 0 and days_left is not None and days_left <= exit_days_before_expiration


def fired_rule(trade: Trade, state: Evaluation, *, today: dt.date, exit_days_before_expiration: int) -> ExitRule | None:
    """The exit rule that fires for this trade now, if any (rules only; not whether it may exit)."""
    pct = pnl_pct(state, trade.entry_price)
    if hits_stop_loss(pct, trade.stop_loss_pct):
        return "stop_loss"
    if hits_take_profit(pct, trade.take_profit_pct):
        return "take_profit"
    if hits_expiration(days_to_expiration(trade.legs, today), exit_days_before_expiration):
        return "days_before_expiration"
    return None


@dataclass(frozen=True, slots=True)
class ExitDecision:
    trade_id: int
    rule: ExitRule
    quantity: Decimal


BlockReason = Literal["not_open", "exit_pending", "no_two_sided_quote", "nothing_available"]


def exit_blocker(trade: Trade, state: Evaluation) -> BlockReason | None:
    """Why this trade may not queue an exit now (None: it may)."""
    if trade.status != "open":
        return "not_open"
    if trade.exit_pending:
        return "exit_pending"
    if not state.can_monitor:
        return "no_two_sided_quote"
    if not state.can_exit:
        return "nothing_available"
    return None


@exact
def decide_exit(
    trade: Trade, state: Evaluation, *, today: dt.date, exit_days_before_expiration: int
) -> ExitDecision | BlockReason | None:
    """An exit to queue, the reason a fired rule is held back, or None when no rule fires."""
    rule = fired_rule(trade, state, today=today, exit_days_before_expiration=exit_days_before_expiration)
    if rule is None:
        return None
    blocker = exit_blocker(trade, state)
    if blocker is not None:
        return blocker
    return ExitDecision(trade.id, rule, state.available_quantity)
