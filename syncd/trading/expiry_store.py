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

Early assignment or exercise: a trade whose legs are all options and vanished *before* their
expiry (the last ``position_events`` ``closed`` row of a leg is older than the expiry) takes
part too, once its positions were synced ``ctx.reconcile_margin`` after its last fill (a fill
not yet in the positions is not a vanished leg). Records covering its legs settle it as at
expiry (``assigned`` / ``exercised``); without them :func:`.expiry.early_verdict` decides: Alpaca
waits for one more sync, then closes it outside syncd; Tradier makes it ``closing`` with
``assignment pending`` only when the stock in the underlying changed as a delivery would,
else closes it outside syncd. tradeCycle's ``reconcile_quantities`` leaves such trades to this.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import structlog

from syncd.brokers.base import BrokerError
from syncd.brokers.occ import option_spec_or_none
from syncd.brokers.types import OptionEvent, OptionEventKind, Side
from syncd.context import RECONCILE_MARGIN, Account, Context
from syncd.db import Queries
from syncd.db.events import payloads as event_payloads
from syncd.trading.expiry import (
    ASSIGNMENT_PENDING,
    EARLY_LOOKBACK,
    ET,
    PENDING_REASONS,
    Candidate,
    EarlyVerdict,
    Settlement,
    all_options,
    early_verdict,
    expiry_applies,
    expiry_time,
    settle,
)
from syncd.trading.order_store import Conn, lock_orders, send_notifications, trade_state, write_trades
from syncd.trading.reconcile import CLOSED_OUTSIDE, TradeLeg, TradeSpec, TradeState, TradeStatus

log = structlog.get_logger(__name__)

LOOKBACK = dt.timedelta(days=1)  # records are asked for from the day before the earliest expiration
NIGHTLY_RECORDS = frozenset({"tradier"})  # brokers whose records come the next morning


@dataclass(frozen=True, slots=True)
class Found:
    """A candidate with what its store read: its earliest expiration and, for an early one, when
    its legs were last seen to vanish and whether a later sync still found them gone."""

    candidate: Candidate
    first_expiration: dt.date
    vanished_at: dt.datetime | None = None
    synced_since_vanished: bool = False

    @property
    def trade_id(self) -> int:
        return self.candidate.trade_id


def _candidates(
    rows: Sequence[Mapping[str, Any]], now: dt.datetime, margin: dt.timedelta = RECONCILE_MARGIN
) -> list[Found]:
    """Trades whose legs are all options past expiry, synced after it; and trades whose option legs
    vanished before their expiry (early), synced ``margin`` after their last fill, on symbols no
    other live trade claims. With their earliest expiration."""
    legs: dict[int, list[Mapping[str, Any]]] = {}
    for r in rows:
        legs.setdefault(r["trade_id"], []).append(r)
    out: list[Found] = []
    for tid, rs in legs.items():
        spec = TradeSpec.of(TradeLeg(r["symbol"], Side(r["side"]), r["ratio"]) for r in rs)
        if not all_options(spec):
            continue
        expirations = [s.expiration for s in (option_spec_or_none(leg.symbol) for leg in spec.legs) if s]
        r = rs[0]
        synced: dt.datetime | None = r["last_synced_at"]
        if synced is None:
            continue
        state = trade_state(r)
        vanished = [x["vanished_at"] for x in rs if x["vanished_at"] is not None]
        vanished_at = max(vanished) if vanished else None
        first = min(expirations)
        early_gone = vanished_at is not None and vanished_at < expiry_time(first)
        if not early_gone and expiry_applies(spec, now):
            if synced < expiry_time(max(expirations)):
                continue  # no sync since the expiry
            if state.close_reason != ASSIGNMENT_PENDING:
                out.append(Found(Candidate(tid, spec, state), first))
                continue
        # early: the legs vanished before expiry (or, never seen held, are gone before it)
        if state.status == TradeStatus.CLOSING and state.close_reason != ASSIGNMENT_PENDING:
            continue  # an expiration pending at expiry is the expiry's
        if any(x["claims"] > 1 for x in rs):
            continue  # a symbol another live trade claims: verify reports it
        last_order = r["last_order_at"]
        if last_order is not None and last_order > synced - margin:
            continue  # a fill newer than the positions: not a vanished leg (yet)
        seen = vanished_at if vanished_at is not None else synced
        out.append(
            Found(
                Candidate(tid, spec, state, vanished_on=seen.astimezone(ET).date()),
                first,
                vanished_at,
                synced_since_vanished=vanished_at is None or synced > vanished_at,
            )
        )
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
    rows = await ctx.pool.fetch(q["expiry_candidates"], account.id, list(PENDING_REASONS))
    found = _candidates(rows, now, ctx.reconcile_margin)
    if not found:
        return []
    since = min(_since(f) for f in found)
    try:
        events = await account.broker.list_option_events(since)
        answered = True
    except BrokerError as exc:
        log.warning("option_events_unavailable", error=str(exc))
        events, answered = [], False
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            await lock_orders(conn, q, account.id)
            changed = await _apply(conn, q, account, events, now, ctx.reconcile_margin, answered)
        await send_notifications(conn, q, event_payloads("trade", account.name, changed))
    return changed


def _since(f: Found) -> dt.date:
    """The first day of records a candidate asks for."""
    if f.candidate.vanished_on is not None:
        return min(f.first_expiration, f.candidate.vanished_on - EARLY_LOOKBACK) - LOOKBACK
    return f.first_expiration - LOOKBACK


async def _apply(
    conn: Conn,
    q: Queries,
    account: Account,
    events: Sequence[OptionEvent],
    now: dt.datetime,
    margin: dt.timedelta = RECONCILE_MARGIN,
    answered: bool = True,
) -> list[int]:
    if events:
        await conn.fetchrow(q["expiry_record_events"], account.id, [_event_row(e) for e in events])
    found = _candidates(await conn.fetch(q["expiry_candidates"], account.id, list(PENDING_REASONS)), now, margin)
    if not found:
        return []
    stored = [_stored_event(r) for r in await conn.fetch(q["expiry_unapplied_events"], account.id)]
    stock = {r["symbol"]: r["quantity"] for r in await conn.fetch(q["expiry_stock_held"], account.id)}
    settlements = settle([f.candidate for f in found], stored, stock, now)
    changed: list[int] = []
    if settlements:
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
    if answered:  # a broker that could not answer leaves early trades as they are
        settled = {s.trade_id for s in settlements}
        unexplained = [f for f in found if f.candidate.early and f.trade_id not in settled]
        changed += await _early(conn, q, account, unexplained, now)
    return changed


async def _early(conn: Conn, q: Queries, account: Account, found: Sequence[Found], now: dt.datetime) -> list[int]:
    """Early-vanished trades no record explains: wait, ``assignment pending``, or closed outside."""
    if not found:
        return []
    nightly = account.broker.kind in NIGHTLY_RECORDS
    pending: list[tuple[int, TradeState]] = []
    outside: list[int] = []
    for f in found:
        c = f.candidate
        assert c.vanished_on is not None
        changes: dict[str, list[Decimal]] = {}
        if nightly:
            underlyings = sorted({s.underlying for s in (option_spec_or_none(x.symbol) for x in c.spec.legs) if s})
            # the sign of an assignment: shares seen by the sync that saw the leg gone, or a later one
            since = f.vanished_at or now
            for r in await conn.fetch(q["expiry_stock_changes"], account.id, underlyings, since):
                changes.setdefault(r["symbol"], []).append(r["change"])
        verdict = early_verdict(
            c.spec,
            nightly_records=nightly,
            synced_since_vanished=f.synced_since_vanished,
            stock_changes=changes,
            vanished_on=c.vanished_on,
            today=now.astimezone(ET).date(),
        )
        if verdict == EarlyVerdict.CLOSED_OUTSIDE:
            outside.append(c.trade_id)
            log.info("trade_closed_outside", trade_id=c.trade_id, old=str(c.state.quantity), early=True)
        elif verdict == EarlyVerdict.PENDING and c.state.close_reason != ASSIGNMENT_PENDING:
            pending.append(
                (
                    c.trade_id,
                    replace(
                        c.state,
                        status=TradeStatus.CLOSING,
                        close_reason=ASSIGNMENT_PENDING,
                        exit_price=None,
                        realized_pnl=None,
                        closed_at=None,
                    ),
                )
            )
            log.info("trade_assignment_pending", trade_id=c.trade_id)
    if pending:
        await write_trades(conn, q, pending)
    if outside:
        await conn.execute(q["expiry_close_outside"], outside, CLOSED_OUTSIDE, list(PENDING_REASONS))
    return [tid for tid, _ in pending] + outside


async def _children(conn: Conn, q: Queries, account: Account, s: Settlement, found: Sequence[Found]) -> list[int]:
    """The stock trades of a settlement (an importer's trade of the same shares is adopted)."""
    if not s.children:
        return []
    f = next(f for f in found if f.trade_id == s.trade_id)
    first = f.first_expiration
    if f.candidate.vanished_on is not None:  # early: the shares came the day the leg vanished
        first = min(first, f.candidate.vanished_on - EARLY_LOOKBACK)
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
