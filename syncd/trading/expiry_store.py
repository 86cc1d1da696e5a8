"""The database side of option expiry, assignment and exercise (the pure core: :mod:`.expiry`).

:func:`settle_expirations` runs in accountSync's and tradeCycle's passes alike; whichever runs
first applies a record, the other finds nothing left to do:

1. read the account's live trades whose every leg is flat (``expiry_candidates``); keep those
   whose legs are all options past expiry, synced after that expiry. None: done, no broker call
   (the usual pass costs one query);
2. ask the broker for its records since the earliest expiration (Alpaca's account activities,
   Tradier's account history); a broker that cannot answer now leaves the trades pending;
3. in one transaction holding the account's orders lock (the lock every writer of the account's
   trades holds): record the records in ``trade_events`` (each once: the broker's id and kind are
   unique), read the candidates again and the records no trade has taken, :func:`.expiry.settle`,
   and write the trades, the records' ``trade_id``, and the stock trades assignments left
   (``source`` ``assignment``, ``parent_trade_id``); then ``NOTIFY`` the changed trades.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from syncd.brokers.base import BrokerError
from syncd.brokers.occ import option_spec_or_none
from syncd.brokers.types import OptionEvent, OptionEventKind, Side
from syncd.context import Account, Context
from syncd.db import Queries
from syncd.db.events import payloads as event_payloads
from syncd.trading.expiry import (
    EXPIRATION_PENDING,
    Candidate,
    Settlement,
    expiry_applies,
    expiry_time,
    settle,
)
from syncd.trading.order_store import Conn, lock_orders, send_notifications, write_trades
from syncd.trading.reconcile import TradeLeg, TradeSpec, TradeState, TradeStatus

log = structlog.get_logger(__name__)

LOOKBACK = dt.timedelta(days=1)  # records are asked for from the day before the earliest expiration


def _candidates(rows: Sequence[Mapping[str, Any]], now: dt.datetime) -> list[tuple[Candidate, dt.date]]:
    """Trades whose legs are all options past expiry, synced after it; with their earliest expiration."""
    legs: dict[int, list[Mapping[str, Any]]] = {}
    for r in rows:
        legs.setdefault(r["trade_id"], []).append(r)
    out: list[tuple[Candidate, dt.date]] = []
    for tid, rs in legs.items():
        spec = TradeSpec.of(TradeLeg(r["symbol"], Side(r["side"]), r["ratio"]) for r in rs)
        if not expiry_applies(spec, now):
            continue
        expirations = [s.expiration for s in (option_spec_or_none(leg.symbol) for leg in spec.legs) if s]
        synced = rs[0]["last_synced_at"]
        if synced is None or synced < expiry_time(max(expirations)):
            continue  # the positions vanished before the expiry, or no sync since: not an expiry
        r = rs[0]
        state = TradeState(
            status=TradeStatus(r["status"]),
            quantity=r["quantity"],
            entry_price=r["entry_price"],
            broker_fill_price=r["broker_fill_price"],
            exit_price=r["exit_price"],
            realized_pnl=r["realized_pnl"],
            close_reason=r["close_reason"],
            opened_at=r["opened_at"],
            closed_at=r["closed_at"],
        )
        out.append((Candidate(tid, spec, state), min(expirations)))
    return out


def _event_row(e: OptionEvent) -> dict[str, Any]:
    """One ``trade_event_row`` (0018)."""
    return {
        "broker_event_id": e.event_id,
        "kind": e.kind.value,
        "symbol": e.symbol,
        "quantity": e.quantity,
        "price": e.price,
        "event_date": e.on,
        "description": e.description,
    }


def _stored_event(r: Mapping[str, Any]) -> OptionEvent:
    return OptionEvent(
        event_id=r["broker_event_id"],
        kind=OptionEventKind(r["kind"]),
        on=r["event_date"],
        quantity=r["quantity"],
        symbol=r["symbol"],
        price=r["price"],
        description=r["description"],
    )


async def settle_expirations(ctx: Context, account: Account, now: dt.datetime | None = None) -> list[int]:
    """Apply the broker's expiry, assignment and exercise records to the account's trades.

    Returns the ids of the trades changed (closed, pending, or created for delivered stock).
    """
    now = now or dt.datetime.now(dt.UTC)
    q = ctx.queries
    found = _candidates(await ctx.pool.fetch(q["expiry_candidates"], account.id, EXPIRATION_PENDING), now)
    if not found:
        return []
    since = min(first for _, first in found) - LOOKBACK
    try:
        events = await account.broker.list_option_events(since)
    except BrokerError as exc:
        log.warning("option_events_unavailable", error=str(exc))
        events = []
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            await lock_orders(conn, q, account.id)
            changed = await _apply(conn, q, account, events, now)
        await send_notifications(conn, q, event_payloads("trade", account.name, changed))
    return changed


async def _apply(
    conn: Conn, q: Queries, account: Account, events: Sequence[OptionEvent], now: dt.datetime
) -> list[int]:
    if events:
        await conn.fetchrow(q["expiry_record_events"], account.id, [_event_row(e) for e in events])
    found = _candidates(await conn.fetch(q["expiry_candidates"], account.id, EXPIRATION_PENDING), now)
    if not found:
        return []
    stored = [_stored_event(r) for r in await conn.fetch(q["expiry_unapplied_events"], account.id)]
    stock = {r["symbol"]: r["quantity"] for r in await conn.fetch(q["expiry_stock_held"], account.id)}
    settlements = settle([c for c, _ in found], stored, stock, now)
    if not settlements:
        return []
    await write_trades(conn, q, [(s.trade_id, s.state) for s in settlements])
    taken = [(eid, kind, s.trade_id) for s in settlements for eid, kind in s.events]
    if taken:
        await conn.execute(
            q["expiry_apply_events"],
            account.id,
            [t[0] for t in taken],
            [t[1] for t in taken],
            [t[2] for t in taken],
        )
    changed = [s.trade_id for s in settlements]
    for s in settlements:
        changed += await _children(conn, q, account, s, found)
        log.info(
            "trade_expiry_settled" if s.state.status == TradeStatus.CLOSED else "trade_expiration_pending",
            trade_id=s.trade_id,
            close_reason=s.state.close_reason,
            realized_pnl=None if s.state.realized_pnl is None else str(s.state.realized_pnl),
            stock_trades=len(s.children),
        )
    return changed


async def _children(
    conn: Conn, q: Queries, account: Account, s: Settlement, found: Sequence[tuple[Candidate, dt.date]]
) -> list[int]:
    """The stock trades of a settlement (an importer's trade of the same shares is adopted)."""
    if not s.children:
        return []
    first = next(exp for c, exp in found if c.trade_id == s.trade_id)
    ids: list[int] = []
    for child in s.children:
        row = await conn.fetchrow(q["expiry_adopt_import"], account.id, child.symbol, s.trade_id, expiry_time(first))
        if row is None:
            row = await conn.fetchrow(
                q["expiry_insert_child"],
                account.id,
                child.symbol,
                child.strategy,
                child.quantity,
                child.entry_price,
                child.side.value,
                s.trade_id,
            )
        assert row is not None
        child_id: int = row["id"]
        ids.append(child_id)
        await conn.execute(q["expiry_link_stock_events"], account.id, child.symbol, first, s.trade_id, child_id)
        log.info(
            "assignment_trade_opened",
            trade_id=child_id,
            parent_trade_id=s.trade_id,
            symbol=child.symbol,
            quantity=str(child.quantity),
            entry_price=str(child.entry_price),
        )
    return ids
