"""monitorCycle: quotes for what each account holds, P&L per position and per trade, exits.

One pass over one account reads as a story:

1. **fetch**: the instruments the account holds (``portfolio_positions``, mirrored by
   accountSync) and their quotes, in one ``quote_answer`` call (the adapters batch: one or
   two HTTP requests for a typical account, not one per position). When the answer's bytes
   and every held row are what they were when an earlier write of the same answer left them
   (:func:`rows_seen`), the answer is not decoded and step 2 is skipped;
2. **write the quotes**, in one statement, to the rows whose values changed: ``bid``,
   ``ask``, ``last``, ``current_price`` (mid, else last), ``market_value``,
   ``unrealized_pl``, ``quote_at``, greeks. Quantities, average prices and cost bases
   are accountSync's and never written here;
3. **evaluate every live trade** (unless every input of the exit rules is as the account's last
   judgement that queued nothing found it: :func:`judged_key`, kept in ``accounts.monitor_rest``
   with the quotes' :func:`rows_seen`) from its legs' positions (``v_trade_leg_positions``):
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

Everything from step 2 on is one transaction (with no quote to write, the trades are read
first and a transaction opens only for what their judgement writes). The exit rules use whatever quotes the broker
gives; while the market is closed the supervisor runs this cycle at
``closed_market_interval_s`` (see :mod:`syncd.daemon.market_clock`) and an exit queued then is
placed for the next session by tradeCycle.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import structlog
from asyncpg.pool import PoolConnectionProxy

from syncd import __version__
from syncd.brokers.base import QuoteAnswer, quote_answer
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
    """Quotes, trade P&L and exits for one account; returns the pass's stats.

    What the account's last pass kept (``accounts.monitor_rest``, migration 0021) spares the
    work that could change nothing: quotes already written (:func:`rows_seen`) are not decoded or
    sent again, and trades whose every input is as it was when judging them queued nothing
    (:func:`judged_key`) are not read or judged again (the pass reports that judgement's figures).
    """
    q = ctx.queries
    # one statement with the other accounts' passes that ask meanwhile (syncd.db.grouped)
    start = await ctx.grouped("monitor_pass_state").fetchrow(account.id)
    known = start["known"]
    kept: dict[str, Any] | None = start["monitor_rest"] if known else None
    # what the judgement reads (the noted changes, the rows held at 0), the schema its views are
    # of, and the code that judges: a kept judgement of another schema or code never matches
    inputs = f"{start['inputs']}/{start['schema_version']}/{judging_code(q['monitor_trade_legs'])}" if known else ""
    symbols: list[str] = list(start["symbols"]) if known else []
    t_quotes = time.perf_counter()
    answer = await quote_answer(account.broker, symbols) if symbols else None
    if not symbols and account.id not in ctx.auth:
        # Nothing to quote, and no call since start has shown the credentials work: one cheap
        # call does, so a refused account is not "ok" here (ctx.auth; syncd.daemon.passes).
        await account.broker.get_account()
    quotes_s = time.perf_counter() - t_quotes
    rows: list[dict[str, Any]] = []
    versions = dict(zip(symbols, start["xmins"], strict=True)) if known else {}
    seen = rows_seen(versions, answer)
    if answer is not None and (seen is None or kept is None or kept.get("seen") != seen):
        quotes = answer.decode()
        quoted = sum(1 for s in symbols if s in quotes)
        rows = quote_rows(symbols, quotes)
    else:
        quoted = int(kept.get("quoted", 0)) if kept is not None and answer is not None else 0
    trading = ctx.settings.trading
    rules = (today, trading.enabled and trading.auto_exits, trading.exit_days_before_expiration)
    stats = {"positions": len(symbols), "quoted": quoted, "quotes_ms": round(quotes_s * 1000, 1)}
    key = judged_key(inputs, versions, rules)
    if not rows and kept is not None and kept.get("judged") == key:
        # Nothing to write, and every input of the exit rules is as the kept judgement found it.
        return {**stats, **_judgement_stats(kept, 0, 0, 0, judged=False)}
    judged = await judge_quotes(ctx, account, rows, today=today)
    plan = judged.plan
    if rows:  # the rows as this pass leaves them: those it wrote in their new version, the others as read
        versions.update(judged.versions)
        seen = rows_seen(versions, answer)
        key = judged_key(inputs, versions, rules)
    found = {
        "trades": len(judged.trades),
        "monitorable": plan.monitorable,
        "blocked": dict(sorted(plan.blocked.items())),
    }
    # a judgement that queued an exit is not kept: the next pass judges again
    rest: dict[str, Any] | None = None  # kept only when a later pass could use it
    if seen is not None or not plan.exits:
        rest = {"seen": seen, "quoted": quoted, "judged": None if plan.exits else key, **found}
    if rest != kept:
        await ctx.pool.execute(q["monitor_keep_rest"], account.id, rest)
    written = (len(judged.written), len(judged.trades_written), len(judged.queued))
    return {**stats, **_judgement_stats(found, *written, judged=True)}


def _judgement_stats(
    found: dict[str, Any], positions_written: int, trades_written: int, exits_queued: int, *, judged: bool
) -> dict[str, Any]:
    blocked: dict[str, int] = found.get("blocked") or {}
    return {
        "positions_written": positions_written,
        "trades": int(found.get("trades", 0)),
        "monitorable": int(found.get("monitorable", 0)),
        "trades_written": trades_written,
        "exits_queued": exits_queued,
        "judged": judged,
        **{f"exits_blocked_{k}": int(v) for k, v in sorted(blocked.items())},
    }


@functools.cache
def judging_code(legs_query: str) -> str:
    """A digest of what judges a trade: this module, :mod:`syncd.trading.pnl` and the trades' query."""
    parts = [legs_query.encode()]
    for source in (__file__, pnl.__file__):
        try:
            parts.append(Path(source or "").read_bytes())
        except OSError:  # no source at hand: the version salts the digest (_digest) all the same
            parts.append(str(source).encode())
    return hashlib.blake2b(b"\0".join(parts), digest_size=16).hexdigest()


_PARTS = msgspec.msgpack.Encoder()


def _digest(*parts: object) -> str:
    """A BLAKE2b digest of ``parts`` (str, bytes, numbers, bools and dicts of them, encoded as
    MessagePack: a tenth of ``repr``'s time for an account's 50 row versions), salted with syncd's
    version: what another version kept never matches."""
    return hashlib.blake2b(_PARTS.encode((__version__, *parts)), digest_size=16).hexdigest()


def rows_seen(versions: dict[str, int], answer: QuoteAnswer | None) -> str | None:
    """What identifies one account's quote write: its held rows as stored (symbol -> row version)
    and the broker's answer (its fingerprint); None when the adapter keeps no fingerprint.

    After a pass has written an answer, every held row is at rest for it: written again, that
    answer changes nothing (the write is a function of the row's stored values and the quotes
    alone). The pass keeps what identifies the rows as it left them (``accounts.monitor_rest``):
    the versions its write made, the others' as read. A later pass that finds the same answer and
    the same versions sends no rows: its write could change nothing. A row version (``xmin``) is
    never reused, so any write to a held row -- accountSync's, a live quote's, a hand edit, one
    that raced this pass's write -- or a row held or no longer held makes a different value,
    even a write that puts the same values back. A digest (not Python's ``hash``): any process
    reads what another kept.
    """
    if answer is None or answer.fingerprint is None:
        return None
    return _digest(answer.fingerprint, versions)


def judged_key(inputs: str, versions: dict[str, int], rules: tuple[dt.date, bool, int]) -> str:
    """What identifies everything one judgement of an account's trades read: the held rows'
    versions, ``inputs`` (``monitor_pass_state``: every change noted to the account's trades,
    legs, orders and requests, and its rows held at 0) and ``rules``: the exchange's date, whether
    exits are enabled, ``exit_days_before_expiration``.

    Judging is a function of these alone (:func:`plan_trades`), so where the key is the one kept
    by a judgement that queued nothing, judging again would queue nothing and write nothing.
    A change committed between the read of ``inputs`` and the read of the trades makes the next
    key differ: it can make a pass judge once more, never skip a judgement it needed.
    """
    today, enabled, days = rules
    return _digest(inputs, versions, today.isoformat(), enabled, days)


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
    versions: dict[str, int]  # their new row versions (xmin), by symbol
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
    async with ctx.pool.acquire() as conn:
        if rows:
            async with conn.transaction():
                changed = await conn.fetch(q["monitor_write_quotes"], account.id, rows)
                versions = {r["symbol"]: r["xmin"] for r in changed}
                written = list(versions)
                trades, plan = await _judge_trades(conn, ctx, account, today)
                trades_written, queued = await _write_judgement(conn, ctx, account, written, plan)
            return Judged(written, versions, trades, plan, trades_written, queued)
        # No quote to write: the trades are read alone, and a transaction opens only for what their
        # judgement writes (each of those statements re-checks what it writes: sql/queries/monitor.sql).
        trades, plan = await _judge_trades(conn, ctx, account, today)
        trades_written, queued = [], []
        if plan.marks or plan.exits:
            async with conn.transaction():
                trades_written, queued = await _write_judgement(conn, ctx, account, [], plan)
    return Judged([], {}, trades, plan, trades_written, queued)


async def _judge_trades(
    conn: PoolConnectionProxy[Any], ctx: Context, account: Account, today: dt.date
) -> tuple[list[TradeRow], Plan]:
    """Step 3: the account's live trades as stored now, and what they call for."""
    trading = ctx.settings.trading
    trades = trades_from_rows(await conn.fetch(ctx.queries["monitor_trade_legs"], account.id))
    plan = plan_trades(
        trades,
        today=today,
        exit_days=trading.exit_days_before_expiration,
        exits_enabled=trading.enabled and trading.auto_exits,
    )
    return trades, plan


async def _write_judgement(
    conn: PoolConnectionProxy[Any], ctx: Context, account: Account, written: list[str], plan: Plan
) -> tuple[list[int], list[pnl.ExitDecision]]:
    """Steps 3-5's writes, in the caller's transaction: the trades' marks, the exits, the notifications."""
    trades_written: list[int] = []
    if plan.marks:
        marked = await conn.fetch(ctx.queries["monitor_write_trades"], account.id, plan.marks)
        trades_written = [r["id"] for r in marked]
    queued = await _queue_exits(conn, ctx, account, plan.exits)
    notes = _notifications(account.name, written, trades_written, queued)
    if notes:
        await conn.fetchval(ctx.queries["monitor_notify"], notes)
    return trades_written, queued


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
