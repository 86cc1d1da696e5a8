"""monitorCycle: quotes for what each account holds, P&L per position and per trade, exits.

One pass over one account reads as a story:

1. **fetch**: the instruments the account holds (``portfolio_positions``, mirrored by
   accountSync) and their quotes, in one ``broker.get_quotes`` call (the adapters batch:
   one or two HTTP requests for a typical account, not one per position);
2. **write the quotes**, in one statement, to the rows whose values changed: ``bid``,
   ``ask``, ``last``, ``current_price`` (mid, else last), ``market_value``,
   ``unrealized_pl``, ``quote_at``, greeks. Quantities, average prices and cost bases
   are accountSync's and never written here;
3. **evaluate every live trade** from its legs' positions (``v_trade_leg_positions``):
   held and available units, ``can_monitor``, ``can_exit``, the net price per unit and
   the floating P&L on the quantity actually held (a trade with its own fills never more
   than it owns: :mod:`syncd.trading.pnl` holds the arithmetic), and write the trades whose price or
   P&L changed;
4. **exits**: with ``trading.enabled`` and ``trading.auto_exits``, a trade whose
   take-profit, stop-loss or days-before-expiration rule fires gets ONE ``close`` request
   queued in ``order_requests`` for its available quantity and goes ``closing`` (the
   rule in ``close_reason``), unless an exit already works for it or a leg lacks a
   two-sided quote. tradeCycle's outbox places the request;
5. **notify** ``syncd_events`` (inside the transaction, so delivered on commit).

Everything from step 2 on is one transaction. The exit rules use whatever quotes the broker
gives; while the market is closed the supervisor runs this cycle at
``closed_market_interval_s`` (see :mod:`syncd.daemon.market_clock`) and an exit queued then is
placed for the next session by tradeCycle.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from syncd.brokers.parse import WIDE
from syncd.brokers.types import Quote
from syncd.context import Account, Context
from syncd.db import events
from syncd.trading import pnl

log = structlog.get_logger(__name__)

MARKET_TZ = ZoneInfo("America/New_York")
# Beyond this many position rows changed in one pass, one summary notification ("key": "*")
# replaces the per-symbol ones (a listener re-reads the account).


def market_today(now: dt.datetime | None = None) -> dt.date:
    """The exchange's calendar date (what days-before-expiration counts in)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(MARKET_TZ).date()


async def account_pass(ctx: Context, account: Account) -> dict[str, Any]:
    """One monitorCycle pass over ``account`` (the ``syncd.cycles`` registry's entry point)."""
    return await monitor_account(ctx, account, today=market_today())


# -- quotes -----------------------------------------------------------------------------------


def quote_row(symbol: str, q: Quote | None) -> dict[str, Any]:
    """One ``quote_row`` (0013) by attribute name; a symbol the broker did not quote gets no bid/ask.

    The mid is exact in any context for accepted broker prices (at most 20 digits); ``quote_rows``
    computes the whole list under WIDE, one context switch for all of them.
    """
    g = q.greeks if q is not None else None
    bid = q.bid if q is not None else None
    ask = q.ask if q is not None else None
    last = q.last if q is not None else None
    return {
        "symbol": symbol,
        "bid": bid,
        "ask": ask,
        "last": last,
        "price": pnl.mid_wide(bid, ask, last),  # quote_rows holds WIDE for the whole list
        "quote_at": q.at if q is not None else None,
        "delta": g.delta if g else None,
        "gamma": g.gamma if g else None,
        "theta": g.theta if g else None,
        "vega": g.vega if g else None,
        "iv": g.implied_volatility if g else None,
    }


def quote_rows(symbols: Sequence[str], quotes: dict[str, Quote]) -> list[dict[str, Any]]:
    """``monitor_write_quotes``'s rows, one per held symbol (the mids computed exactly, under WIDE)."""
    with localcontext(WIDE):
        return [quote_row(symbol, quotes.get(symbol)) for symbol in symbols]


# -- trades -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TradeRow:
    """A live trade as read back from the database, with what is stored for it now."""

    trade: pnl.Trade
    stored_price: Decimal | None
    stored_pnl: Decimal | None


def trades_from_rows(rows: Sequence[asyncpg.Record]) -> list[TradeRow]:
    """Group ``monitor_trade_legs`` rows (ordered by trade, leg) into trades."""
    out: list[TradeRow] = []
    legs: list[pnl.Leg] = []
    for i, r in enumerate(rows):
        legs.append(
            pnl.Leg(
                symbol=r["symbol"],
                side=r["side"],
                ratio=r["ratio"],
                position_quantity=r["position_quantity"],
                bid=r["bid"],
                ask=r["ask"],
                last=r["last"],
                multiplier=r["multiplier"],
                asset_class=r["asset_class"],
                expiration=r["expiration"],
                claimants=r["claimants"],
                committed=r["committed_quantity"],
                committed_by_trade=r["committed_by_trade"],
            )
        )
        if i + 1 < len(rows) and rows[i + 1]["trade_id"] == r["trade_id"]:
            continue
        trade = pnl.Trade(
            id=r["trade_id"],
            strategy=r["strategy"],
            legs=tuple(legs),
            status=r["status"],
            quantity=r["quantity"],
            entry_price=r["entry_price"],
            take_profit_pct=r["take_profit_pct"],
            stop_loss_pct=r["stop_loss_pct"],
            exit_pending=r["exit_pending"],
            own_fills=r["own_fills"],
        )
        out.append(TradeRow(trade, r["current_price"], r["floating_pnl"]))
        legs = []
    return out


@dataclass(slots=True)
class Plan:
    """What one pass will write for the account's trades."""

    marks: list[dict[str, Any]]  # trade_mark_row (0013) of each trade whose price or P&L changed
    exits: list[pnl.ExitDecision]
    blocked: Counter[str]
    monitorable: int


def trade_mark_row(trade_id: int, current_price: Decimal | None, floating_pnl: Decimal | None) -> dict[str, Any]:
    """One ``trade_mark_row`` (0013) by attribute name."""
    return {"id": trade_id, "current_price": current_price, "floating_pnl": floating_pnl}


def trade_exit_row(e: pnl.ExitDecision) -> dict[str, Any]:
    """One ``trade_exit_row`` (0013) by attribute name."""
    return {"trade_id": e.trade_id, "reason": e.rule, "qty": e.quantity}


def plan_trades(
    trades: Sequence[TradeRow], *, today: dt.date, exit_days: int, exits_enabled: bool, log_blocked: bool = True
) -> Plan:
    """Evaluate every trade; collect the changed prices/P&L and the exits to queue.

    The one place exit rules are judged: a monitorCycle pass and each live quote
    (:mod:`syncd.daemon.quotes`, ``log_blocked=False`` there: it runs on every tick) both call it.
    """
    plan = Plan([], [], Counter(), 0)
    for row in trades:
        state = pnl.evaluate(row.trade)
        plan.monitorable += state.can_monitor
        if state.current_price is not None and (state.current_price, state.floating_pnl) != (
            row.stored_price,
            row.stored_pnl,
        ):
            plan.marks.append(trade_mark_row(row.trade.id, state.current_price, state.floating_pnl))
        if not exits_enabled:
            continue
        decision = pnl.decide_exit(row.trade, state, today=today, exit_days_before_expiration=exit_days)
        if isinstance(decision, pnl.ExitDecision):
            plan.exits.append(decision)
        elif decision is not None:
            plan.blocked[decision] += 1
            if log_blocked and decision in ("no_two_sided_quote", "nothing_available"):
                log.info("exit_blocked", trade_id=row.trade.id, reason=decision)
    return plan


# -- the pass ---------------------------------------------------------------------------------


async def monitor_account(ctx: Context, account: Account, *, today: dt.date) -> dict[str, Any]:
    """Quotes, trade P&L and exits for one account; returns the pass's stats."""
    q = ctx.queries
    symbols = [r["symbol"] for r in await ctx.pool.fetch(q["monitor_held_symbols"], account.id)]
    t_quotes = time.perf_counter()
    quotes = await account.broker.get_quotes(symbols) if symbols else {}
    if not symbols and account.id not in ctx.auth:
        # Nothing to quote, and no call since start has shown the credentials work: one cheap
        # call does, so a refused account is not "ok" here (ctx.auth; syncd.daemon.passes).
        await account.broker.get_account()
    quotes_s = time.perf_counter() - t_quotes
    judged = await judge_quotes(ctx, account, quote_rows(symbols, quotes), today=today)
    plan = judged.plan
    return {
        "positions": len(symbols),
        "quoted": sum(1 for s in symbols if s in quotes),
        "positions_written": len(judged.written),
        "trades": len(judged.trades),
        "monitorable": plan.monitorable,
        "trades_written": len(judged.trades_written),
        "exits_queued": len(judged.queued),
        **{f"exits_blocked_{k}": v for k, v in sorted(plan.blocked.items())},
        "quotes_ms": round(quotes_s * 1000, 1),
    }


async def write_quotes(ctx: Context, account: Account, rows: list[dict[str, Any]]) -> list[str]:
    """Step 2 alone (and its ``position`` notifications): the live-quote path's coalesced flush.

    Trades are not re-read here (on a large account that read is the expensive part of a pass):
    their marks stay monitorCycle's, and an exit the quotes fire goes through :func:`judge_quotes`.
    """
    q = ctx.queries
    async with ctx.pool.acquire() as conn, conn.transaction():
        written = [r["symbol"] for r in await conn.fetch(q["monitor_write_quotes"], account.id, rows)]
        notes = events.payloads("position", account.name, written)
        if notes:
            await conn.fetchval(q["monitor_notify"], notes)
    return written


@dataclass(slots=True)
class Judged:
    """What :func:`judge_quotes` wrote and decided."""

    written: list[str]  # symbols whose position rows changed
    trades: list[TradeRow]  # the live trades as read (after the quotes were written)
    plan: Plan
    trades_written: list[int]
    queued: list[pnl.ExitDecision]


async def judge_quotes(ctx: Context, account: Account, rows: list[dict[str, Any]], *, today: dt.date) -> Judged:
    """Steps 2-5 in one transaction: write ``rows`` (``quote_row``), evaluate every trade, queue exits, notify.

    A monitorCycle pass gives one row per held symbol; the live-quote path
    (:mod:`syncd.daemon.quotes`) only the symbols that moved since its last flush.
    """
    q = ctx.queries
    trading = ctx.settings.trading
    exits_enabled = trading.enabled and trading.auto_exits
    async with ctx.pool.acquire() as conn, conn.transaction():
        written = [r["symbol"] for r in await conn.fetch(q["monitor_write_quotes"], account.id, rows)] if rows else []
        trades = trades_from_rows(await conn.fetch(q["monitor_trade_legs"], account.id))
        plan = plan_trades(
            trades, today=today, exit_days=trading.exit_days_before_expiration, exits_enabled=exits_enabled
        )
        trades_written: list[int] = []
        if plan.marks:
            marked = await conn.fetch(q["monitor_write_trades"], account.id, plan.marks)
            trades_written = [r["id"] for r in marked]
        queued = await _queue_exits(conn, ctx, account, plan.exits)
        notes = _notifications(account.name, written, trades_written, queued)
        if notes:
            await conn.fetchval(q["monitor_notify"], notes)
    return Judged(written, trades, plan, trades_written, queued)


async def _queue_exits(
    conn: PoolConnectionProxy[Any], ctx: Context, account: Account, exits: Sequence[pnl.ExitDecision]
) -> list[pnl.ExitDecision]:
    if not exits:
        return []
    rows = await conn.fetch(
        ctx.queries["monitor_queue_exits"],
        account.id,
        [trade_exit_row(e) for e in exits],
    )
    by_trade = {e.trade_id: e for e in exits}
    queued = [by_trade[r["trade_id"]] for r in rows]
    for r in rows:
        e = by_trade[r["trade_id"]]
        log.info("exit_queued", trade_id=e.trade_id, rule=e.rule, qty=str(e.quantity), request_id=r["id"])
    return queued


def _notifications(
    account: str, symbols: Sequence[str], trade_ids: Sequence[int], exits: Sequence[pnl.ExitDecision]
) -> list[str]:
    notes = events.payloads("position", account, symbols)
    exited = {e.trade_id: e.rule for e in exits}
    for trade_id in dict.fromkeys([*trade_ids, *exited]):
        extra = {"exit": exited[trade_id]} if trade_id in exited else {}
        notes.append(events.payload("trade", account, trade_id, **extra))
    return notes
