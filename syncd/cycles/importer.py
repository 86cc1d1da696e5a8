"""Import of outside positions: what of the broker's positions no live trade claims becomes trades.

A position is *covered* when a live trade (status ``pending``, ``open`` or
``closing``) of its account has a leg on its symbol, or, for a trade an app inserted
without legs, has it as its ``symbol``. A trade that owns its fills (an entry order is
linked to it) claims only its own quantity, so a position it shares with shares bought
by hand has an *untracked surplus* (254 WMT held, a trade of 4: 250), imported once the
trade is settled (nothing of it working, positions synced after its last fill). So does a
position several trades share, whether they own fills or not (none of them follows the
broker: shares bought by hand after an import are a surplus of their own). A symbol a
trade just ended on waits for a sync newer than its last fill (the mirror may still show
what its close sold). Every
uncovered position, and every such surplus, becomes part of a trade with
``source = 'import'`` and ``status = 'open'``:

- a **vertical spread** recognisable from the positions alone -- same underlying,
  option type and expiration, equal and opposite quantities, different strikes --
  becomes one two-leg trade (:func:`spread_strategy` names it: ``BULL_CALL_DEBIT``,
  ``BEAR_CALL_CREDIT``, ``BEAR_PUT_DEBIT``, ``BULL_PUT_CREDIT``), its ``entry_price``
  the net per unit, long average minus short average (positive = debit);
- anything else becomes one trade per position (``LONG_STOCK``, ``SHORT_STOCK``,
  ``LONG_CALL``, ``SHORT_CALL``, ``LONG_PUT``, ``SHORT_PUT``; crypto ``LONG_CRYPTO``,
  ``SHORT_CRYPTO``), its ``entry_price`` the position's average entry price.

Where several pairings are possible the narrowest spreads are formed first (ties
broken by symbol), so the plan depends only on the set of positions, not their order.
``trades.quantity`` is the number of units held (positive); the direction is in the
strategy and the legs' sides. Importing is idempotent: what it imports is covered the
next time. Two importers of one account at once are serialised by an advisory lock,
and the second finds nothing left to do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import groupby

import asyncpg
import structlog

from syncd.context import Account, Context
from syncd.db import events
from syncd.db.locks import IMPORT_LOCK_CLASS as IMPORT_LOCK_CLASS

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Holding:
    """An uncovered position, as the importer sees it."""

    symbol: str
    asset_class: str
    underlying: str
    quantity: Decimal  # signed: short < 0
    avg_entry_price: Decimal | None = None
    option_type: str | None = None  # call | put
    strike: Decimal | None = None
    expiration: dt.date | None = None
    first_seen_at: dt.datetime | None = None

    @property
    def is_option(self) -> bool:
        return self.option_type is not None and self.strike is not None and self.expiration is not None


@dataclass(frozen=True, slots=True)
class PlannedLeg:
    symbol: str
    side: str  # buy | sell
    ratio: int = 1


@dataclass(frozen=True, slots=True)
class PlannedTrade:
    symbol: str  # the underlying
    strategy: str
    quantity: Decimal  # units held, positive
    entry_price: Decimal | None
    legs: tuple[PlannedLeg, ...]
    opened_at: dt.datetime | None = None

    def describe(self) -> str:
        legs = " ".join(f"{'+' if leg.side == 'buy' else '-'}{leg.symbol}" for leg in self.legs)
        price = "" if self.entry_price is None else f" @ {self.entry_price.normalize():f}"
        return f"{self.strategy} {self.symbol} x{self.quantity.normalize():f}{price} ({legs})"


# -- the pure part: pairing and naming ------------------------------------------------------------------


def spread_strategy(option_type: str, long_strike: Decimal, short_strike: Decimal) -> str:
    """The name of a vertical spread from its long and short strikes."""
    if long_strike == short_strike:
        raise ValueError("a vertical spread has two different strikes")
    if option_type == "call":
        return "BULL_CALL_DEBIT" if long_strike < short_strike else "BEAR_CALL_CREDIT"
    if option_type == "put":
        return "BEAR_PUT_DEBIT" if long_strike > short_strike else "BULL_PUT_CREDIT"
    raise ValueError(f"unknown option type {option_type!r}")


def single_strategy(h: Holding) -> str:
    """The name of a one-position trade."""
    direction = "LONG" if h.quantity > 0 else "SHORT"
    if h.is_option:
        return f"{direction}_{'CALL' if h.option_type == 'call' else 'PUT'}"
    if h.asset_class == "crypto":
        return f"{direction}_CRYPTO"
    return f"{direction}_STOCK"


def _earliest(*times: dt.datetime | None) -> dt.datetime | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _option_parts(h: Holding) -> tuple[str, Decimal, dt.date]:
    """Option type, strike, expiration of an option holding."""
    if h.option_type is None or h.strike is None or h.expiration is None:
        raise ValueError(f"{h.symbol!r} is not an option holding")
    return h.option_type, h.strike, h.expiration


def _spread(long: Holding, short: Holding) -> PlannedTrade:
    option_type, long_strike, _ = _option_parts(long)
    short_strike = _option_parts(short)[1]
    entry = None
    if long.avg_entry_price is not None and short.avg_entry_price is not None:
        entry = long.avg_entry_price - short.avg_entry_price
    return PlannedTrade(
        symbol=long.underlying,
        strategy=spread_strategy(option_type, long_strike, short_strike),
        quantity=abs(long.quantity),
        entry_price=entry,
        legs=(PlannedLeg(long.symbol, "buy"), PlannedLeg(short.symbol, "sell")),
        opened_at=_earliest(long.first_seen_at, short.first_seen_at),
    )


def _single(h: Holding) -> PlannedTrade:
    return PlannedTrade(
        symbol=h.underlying,
        strategy=single_strategy(h),
        quantity=abs(h.quantity),
        entry_price=h.avg_entry_price,
        legs=(PlannedLeg(h.symbol, "buy" if h.quantity > 0 else "sell"),),
        opened_at=h.first_seen_at,
    )


def _group_key(h: Holding) -> tuple[str, str, dt.date]:
    option_type, _, expiration = _option_parts(h)
    return (h.underlying, option_type, expiration)


def pair_verticals(options: Iterable[Holding]) -> tuple[list[tuple[Holding, Holding]], list[Holding]]:
    """Vertical spreads ``(long, short)`` among option holdings, and the holdings left unpaired.

    Within one (underlying, type, expiration), a long and a short of equal and opposite
    quantity and different strikes pair up; the narrowest candidates pair first, ties
    broken by symbols, so the result does not depend on the input's order.
    """
    pairs: list[tuple[Holding, Holding]] = []
    used: set[str] = set()
    ordered = sorted((h for h in options if h.is_option and h.quantity != 0), key=lambda h: (_group_key(h), h.symbol))
    for _, group_iter in groupby(ordered, key=_group_key):
        group = list(group_iter)
        longs = [h for h in group if h.quantity > 0]
        shorts = [h for h in group if h.quantity < 0]
        candidates = sorted(
            (
                (abs(_option_parts(lg)[1] - _option_parts(sh)[1]), lg.symbol, sh.symbol, lg, sh)
                for lg in longs
                for sh in shorts
                if lg.quantity == -sh.quantity and lg.strike != sh.strike
            ),
            key=lambda c: (c[0], c[1], c[2]),
        )
        for _, _, _, lg, sh in candidates:
            if lg.symbol not in used and sh.symbol not in used:
                used.update((lg.symbol, sh.symbol))
                pairs.append((lg, sh))
    leftovers = [h for h in ordered if h.symbol not in used]
    return pairs, leftovers


def plan_imports(holdings: Iterable[Holding]) -> list[PlannedTrade]:
    """The trades that uncovered ``holdings`` become (symbols unique; flat ones ignored), in a stable order."""
    live = [h for h in holdings if h.quantity != 0]
    pairs, leftover_options = pair_verticals(h for h in live if h.is_option)
    plans = [_spread(lg, sh) for lg, sh in pairs]
    plans += [_single(h) for h in leftover_options]
    plans += [_single(h) for h in live if not h.is_option]
    return sorted(plans, key=lambda p: (p.symbol, p.legs[0].symbol))


# -- the database part -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportedTrade:
    trade_id: int
    plan: PlannedTrade


def _holding(r: asyncpg.Record) -> Holding:
    return Holding(
        symbol=r["symbol"],
        asset_class=r["asset_class"],
        underlying=r["underlying"],
        quantity=r["quantity"],
        avg_entry_price=r["avg_entry_price"],
        option_type=r["option_type"],
        strike=r["strike"],
        expiration=r["expiration"],
        first_seen_at=r["first_seen_at"],
    )


def _insert_args(plans: Sequence[PlannedTrade]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The ``import_trade_row`` and ``import_leg_row`` arrays (0012), by attribute name; ord is 1-based."""
    trades: list[dict[str, object]] = [
        {
            "ord": i,
            "symbol": p.symbol,
            "strategy": p.strategy,
            "quantity": p.quantity,
            "entry_price": p.entry_price,
            "opened_at": p.opened_at,
        }
        for i, p in enumerate(plans, start=1)
    ]
    legs: list[dict[str, object]] = [
        {"ord": i, "leg_index": j, "symbol": leg.symbol, "side": leg.side, "ratio": leg.ratio}
        for i, p in enumerate(plans, start=1)
        for j, leg in enumerate(p.legs)
    ]
    return trades, legs


async def import_positions(ctx: Context, account: Account) -> list[ImportedTrade]:
    """Make trades of ``account``'s uncovered positions (from ``portfolio_positions``); return what was made."""
    q = ctx.queries
    if not await ctx.pool.fetch(q["import_untracked_positions"], account.id, ctx.reconcile_margin):
        return []  # the usual case, without a transaction or a lock
    async with ctx.pool.acquire() as conn, conn.transaction():
        await conn.execute(q["import_lock"], IMPORT_LOCK_CLASS, account.id)
        rows = await conn.fetch(q["import_untracked_positions"], account.id, ctx.reconcile_margin)
        plans = plan_imports(_holding(r) for r in rows)
        if not plans:
            return []
        rows = await conn.fetch(q["import_insert_trades"], account.id, *_insert_args(plans))
        imported = [ImportedTrade(r["id"], plans[r["ord"] - 1]) for r in rows]
        payloads = events.payloads("trade", account.name, [t.trade_id for t in imported])
        await conn.execute(q["account_sync_notify"], payloads)
    for t in imported:
        log.info(
            "position_imported",
            trade_id=t.trade_id,
            strategy=t.plan.strategy,
            symbol=t.plan.symbol,
            quantity=str(t.plan.quantity),
            legs=[leg.symbol for leg in t.plan.legs],
        )
    return imported


__all__ = [
    "Holding",
    "ImportedTrade",
    "PlannedLeg",
    "PlannedTrade",
    "import_positions",
    "pair_verticals",
    "plan_imports",
    "single_strategy",
    "spread_strategy",
]
