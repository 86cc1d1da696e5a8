"""The database side of orders and trades: one idempotent path for poll, stream and outbox.

``apply_observations`` takes what a broker said about some orders, folds each
observation into the stored order with :func:`syncd.trading.reconcile.merge_order`, writes
the orders that changed (a multi-leg order's legs as rows with ``parent_id``) and
one ``order_events`` row per change, then re-derives every trade those orders
belong to with :func:`syncd.trading.reconcile.apply_orders`. It runs inside the caller's
transaction, after :func:`lock_orders`: every writer of an account's orders
(the poll pass, the stream consumer, the outbox, on any replica) holds the same
transaction-scoped advisory lock, so a fill seen by the stream and by a poll at
the same moment is merged once, and counted once.

Orders are linked to trades by their client id (``order_requests.client_order_id``):
an ``open`` request's orders are the trade's entries, a ``close`` request's its
exits. Orders placed outside syncd stay unlinked (``trade_id`` NULL).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal, Union

import asyncpg
import structlog

from syncd.brokers.parse import exact
from syncd.brokers.types import CONTINGENT, Order, OrderStatus, Side
from syncd.context import RECONCILE_MARGIN
from syncd.db import Queries
from syncd.db.events import payloads as event_payloads
from syncd.db.locks import ORDERS_LOCK_CLASS as ORDERS_LOCK_CLASS
from syncd.trading.expiry import PENDING_REASONS, all_options
from syncd.trading.reconcile import (
    CLOSED_OUTSIDE,
    ZERO,
    LegFill,
    LinkedOrder,
    OrderSnapshot,
    Role,
    TradeLeg,
    TradeSpec,
    TradeState,
    TradeStatus,
    apply_orders,
    closed_outside,
    merge_order,
    order_unit_price,
    reconcile_quantity,
)

log = structlog.get_logger(__name__)


Source = Literal["poll", "stream"]
# A runtime alias (asyncpg's classes are not subscriptable at run time): a connection or a pooled one.
Conn = Union["asyncpg.Connection[Any]", "asyncpg.pool.PoolConnectionProxy[Any]"]


@dataclass(frozen=True, slots=True)
class Observation:
    """What a broker said about one order: a poll's answer or a stream event."""

    order: Order
    source: Source = "poll"
    event: str | None = None  # the stream's event name (fill, partial_fill, canceled, ...)
    at: dt.datetime | None = None  # the broker's time of the event
    execution_id: str | None = None
    fill_qty: Decimal | None = None
    fill_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """An order's trade, when the caller knows it (the outbox, right after placing it)."""

    trade_id: int
    role: Role


@dataclass(slots=True)
class Applied:
    """What one application wrote."""

    orders: list[str] = field(default_factory=list)  # broker ids of orders written
    events: int = 0
    trades: list[int] = field(default_factory=list)  # trades whose row changed
    fill_times: list[dt.datetime] = field(default_factory=list)  # broker time of each new fill

    def notifications(self, account: str) -> list[str]:
        """The ``syncd_events`` payloads for what changed."""
        return event_payloads("order", account, self.orders) + event_payloads("trade", account, self.trades)

    def extend(self, other: Applied) -> None:
        self.orders += other.orders
        self.events += other.events
        self.trades += [t for t in other.trades if t not in self.trades]
        self.fill_times += other.fill_times


async def lock_orders(conn: Conn, q: Queries, account_id: int) -> None:
    """Take the account's orders lock for the rest of the transaction."""
    await conn.execute(q["trade_orders_lock"], ORDERS_LOCK_CLASS, account_id)


async def send_notifications(conn: Conn | asyncpg.Pool[Any], q: Queries, payloads: Sequence[str]) -> None:
    if payloads:
        await conn.execute(q["trade_notify"], list(payloads))


# -- reading stored orders ------------------------------------------------------------------


@dataclass(slots=True)
class _Stored:
    id: int
    broker_order_id: str
    client_order_id: str | None
    trade_id: int | None
    role: Role | None
    snapshot: OrderSnapshot
    terms: tuple[Decimal | None, Decimal | None] | None = None  # (limit, stop) as stored, where read


def _terms(order: Order) -> tuple[Decimal | None, Decimal | None]:
    return (order.limit_price, order.stop_price)


def _dec(v: Any) -> Decimal | None:
    return None if v is None else Decimal(v)


def _snapshots(rows: Iterable[Mapping[str, Any]]) -> dict[str, _Stored]:
    """Top-level orders by broker id, each with its legs folded into the snapshot."""
    tops: dict[int, _Stored] = {}
    legs: dict[int, list[LegFill]] = {}
    contingent: set[int] = set()  # a bracket/OCO/OTO order's legs are orders of their own, not its fill
    children: dict[int, list[tuple[str, str, Decimal]]] = {}
    for r in rows:
        if r["parent_id"] is None and r["order_class"] in CONTINGENT:
            contingent.add(r["id"])
        if r["parent_id"] is None:
            tops[r["id"]] = _Stored(
                id=r["id"],
                broker_order_id=r["broker_order_id"],
                client_order_id=r["client_order_id"],
                trade_id=r["trade_id"],
                role=Role(r["role"]) if r["role"] else None,
                terms=(_dec(r["limit_price"]), _dec(r["stop_price"])) if "limit_price" in r else None,
                snapshot=OrderSnapshot(
                    status=OrderStatus(r["status"]),
                    qty=r["qty"],
                    filled_qty=r["filled_qty"],
                    filled_avg_price=_dec(r["filled_avg_price"]),
                    side=Side(r["side"]) if r["side"] else None,
                    reject_reason=r["reject_reason"],
                    filled_at=r["filled_at"],
                    canceled_at=r["canceled_at"],
                ),
            )
        elif r["parent_id"] in contingent:
            children.setdefault(r["parent_id"], []).append((r["broker_order_id"], r["status"], r["filled_qty"]))
        else:
            legs.setdefault(r["parent_id"], []).append(
                LegFill(
                    symbol=r["symbol"],
                    side=Side(r["side"]) if r["side"] else None,
                    ratio=r["ratio_qty"] or 1,
                    filled_qty=r["filled_qty"],
                    avg_price=_dec(r["filled_avg_price"]),
                )
            )
    out: dict[str, _Stored] = {}
    for top_id, top in tops.items():
        if top_id in legs:
            top.snapshot = _with_legs(top.snapshot, legs[top_id])
        if top_id in children:
            top.snapshot = replace(top.snapshot, children=tuple(sorted(children[top_id])))
        out[top.broker_order_id] = top
    return out


def _with_legs(snap: OrderSnapshot, legs: Sequence[LegFill]) -> OrderSnapshot:
    return OrderSnapshot(
        status=snap.status,
        qty=snap.qty,
        filled_qty=snap.filled_qty,
        filled_avg_price=snap.filled_avg_price,
        side=snap.side,
        legs=tuple(legs),
        reject_reason=snap.reject_reason,
        filled_at=snap.filled_at,
        canceled_at=snap.canceled_at,
    )


# -- applying observations -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Event:
    """One ``order_events`` row."""

    name: str
    qty: Decimal | None  # this fill's quantity (fills only)
    price: Decimal | None  # this fill's price (fills only)
    state: OrderSnapshot  # the order after it
    execution_id: str | None
    at: dt.datetime
    source: Source


@dataclass(slots=True)
class _Change:
    order: Order  # the latest observation (descriptive fields)
    before: OrderSnapshot | None  # as the order's trade has counted it so far
    after: OrderSnapshot
    trade_id: int | None
    role: Role | None
    client_order_id: str | None
    events: list[_Event] = field(default_factory=list)


@exact
def _fill_price(prev: OrderSnapshot | None, new: OrderSnapshot, delta: Decimal) -> Decimal | None:
    """The price of the fills between two snapshots, from their averages (poll answers)."""
    p_new = order_unit_price(new)
    if p_new is None or delta <= 0:
        return None
    if prev is None or prev.filled_qty <= 0:
        return p_new
    p_old = order_unit_price(prev)
    if p_old is None:
        return None
    return ((new.filled_qty * p_new - prev.filled_qty * p_old) / delta).quantize(Decimal("0.000001"))


def _event_name(prev: OrderSnapshot | None, new: OrderSnapshot) -> str:
    if new.filled_qty > (prev.filled_qty if prev else ZERO):
        return "fill" if new.status == OrderStatus.FILLED else "partial_fill"
    if prev is None or new.status != prev.status:
        return new.status.value
    return "update"


def _observe(change: _Change, obs: Observation, now: dt.datetime) -> bool:
    """Fold ``obs`` into ``change``; False when it added nothing."""
    prev = change.after
    new = merge_order(prev, OrderSnapshot.of(obs.order))
    if new is prev:
        return False
    delta = new.filled_qty - prev.filled_qty
    if obs.source == "stream" and obs.event:
        name, qty, price = obs.event, obs.fill_qty if delta > 0 else None, obs.fill_price
    else:
        name, qty, price = _event_name(prev, new), delta if delta > 0 else None, _fill_price(prev, new, delta)
    at = obs.at or obs.order.updated_at or now
    change.events.append(_Event(name, qty, price, new, obs.execution_id, at, obs.source))
    change.after = new
    change.order = obs.order
    return True


async def apply_observations(
    conn: Conn,
    q: Queries,
    account_id: int,
    observations: Sequence[Observation],
    *,
    links: Mapping[str, Link] | None = None,
    now: dt.datetime | None = None,
) -> Applied:
    """Fold observations into ``orders``/``order_events`` and re-derive the trades they touch.

    Call inside a transaction holding :func:`lock_orders`. ``links`` (by broker order id)
    names the trade of an order the caller just placed.
    """
    now = now or dt.datetime.now(dt.UTC)
    if not observations:
        return Applied()
    ids = list(dict.fromkeys(o.order.broker_order_id for o in observations))
    # an order that replaced another (Alpaca's ``replaces``) inherits its trade: read that one too
    ids += [r for r in dict.fromkeys(o.order.replaces for o in observations if o.order.replaces) if r not in ids]
    stored = _snapshots(await conn.fetch(q["trade_stored_orders"], account_id, ids))
    changes = await _changes(conn, q, account_id, observations, stored, links or {}, now)
    if not changes:
        return Applied()
    applied = await _write_orders(conn, q, account_id, changes)
    applied.fill_times = [e.at for c in changes.values() for e in c.events if e.qty and e.source == "stream"]
    trade_ids = sorted({c.trade_id for c in changes.values() if c.trade_id is not None})
    if trade_ids:
        applied.trades = await _derive_trades(conn, q, trade_ids, changes, now)
    return applied


async def _changes(
    conn: Conn,
    q: Queries,
    account_id: int,
    observations: Sequence[Observation],
    stored: Mapping[str, _Stored],
    links: Mapping[str, Link],
    now: dt.datetime,
) -> dict[str, _Change]:
    unlinked = {
        o.order.client_order_id
        for o in observations
        if o.order.client_order_id
        and o.order.broker_order_id not in links
        and (o.order.broker_order_id not in stored or stored[o.order.broker_order_id].trade_id is None)
    }
    requests: dict[str, tuple[int | None, Role]] = {}
    if unlinked:
        for r in await conn.fetch(q["trade_requests_by_client_ids"], account_id, sorted(unlinked)):
            requests[r["client_order_id"]] = (r["trade_id"], Role.ENTRY if r["kind"] == "open" else Role.EXIT)
    work: dict[str, _Change] = {}
    dirty: set[str] = set()
    for obs in observations:
        bid = obs.order.broker_order_id
        change = work.get(bid)
        if change is None:
            known = stored.get(bid)
            link = links.get(bid) or _inherited(obs.order, stored)
            change = work[bid] = _new_change(obs, known, link, requests)
            if known is None:
                change.events.append(_first_event(obs, change.after, now))
                dirty.add(bid)
                continue
            if known.trade_id is None and change.trade_id is not None:
                dirty.add(bid)  # linked to its trade now
            if known.terms is not None and known.terms != _terms(obs.order):
                limit, stop = known.terms
                if (limit is not None and limit != obs.order.limit_price) or (
                    stop is not None and stop != obs.order.stop_price
                ):
                    # changed in place (Tradier's modify): the same order at new terms
                    at = obs.at or obs.order.updated_at or now
                    change.events.append(_Event("replaced", None, None, change.after, None, at, obs.source))
                dirty.add(bid)  # a term not stored yet (a row from before 0017) is written, no event
        if _observe(change, obs, now):
            dirty.add(bid)
    return {bid: work[bid] for bid in work if bid in dirty}


def _inherited(order: Order, stored: Mapping[str, _Stored]) -> Link | None:
    """The trade and role of the order ``order`` replaced, when that one is linked: the new order inherits them."""
    old = stored.get(order.replaces) if order.replaces else None
    if old is None or old.trade_id is None:
        return None
    return Link(old.trade_id, old.role or Role.ENTRY)


def _new_change(
    obs: Observation,
    stored: _Stored | None,
    link: Link | None,
    requests: Mapping[str, tuple[int | None, Role]],
) -> _Change:
    trade_id = stored.trade_id if stored else None
    role = stored.role if stored else None
    cid = obs.order.client_order_id
    if trade_id is None:
        if link is not None:
            trade_id, role = link.trade_id, link.role
        elif cid is not None and cid in requests:
            trade_id, role = requests[cid]
    known = stored.snapshot if stored else None
    # ``before`` is what the trade has counted: nothing, when the order is linked only now.
    counted = known if stored is not None and stored.trade_id is not None else None
    return _Change(
        order=obs.order,
        before=counted,
        after=known if known is not None else OrderSnapshot.of(obs.order),
        trade_id=trade_id,
        role=role,
        client_order_id=(stored.client_order_id if stored else None) or obs.order.client_order_id,
    )


def _first_event(obs: Observation, snap: OrderSnapshot, now: dt.datetime) -> _Event:
    at = obs.at or obs.order.updated_at or obs.order.submitted_at or now
    if obs.source == "stream" and obs.event:
        qty = obs.fill_qty if snap.filled_qty > 0 else None
        return _Event(obs.event, qty, obs.fill_price, snap, obs.execution_id, at, obs.source)
    qty = snap.filled_qty if snap.filled_qty > 0 else None
    return _Event(_event_name(None, snap), qty, order_unit_price(snap) if qty else None, snap, None, at, obs.source)


def _leg_fill(leg: Order, merged: OrderSnapshot) -> LegFill | None:
    return next((lf for lf in merged.legs if lf.symbol == leg.symbol), None)


def _value(e: Any) -> Any:
    return None if e is None else e.value


def _type(o: Order) -> str:
    assert o.type is not None, "sanity.check_order refuses an order without a type"
    return o.type.value


def _order_row(bid: str, c: _Change) -> dict[str, Any]:
    """One ``order_row`` (0012, 0017) by attribute name: the latest observation's description, the merged state."""
    o, s = c.order, c.after
    return {
        "broker_order_id": bid,
        "client_order_id": c.client_order_id,
        "trade_id": c.trade_id,
        "role": _value(c.role),
        "symbol": o.symbol,
        "asset_class": o.asset_class.value,
        "side": _value(o.side),
        "intent": _value(o.intent),
        "type": _type(o),
        "order_class": o.order_class.value,
        "time_in_force": o.time_in_force.value,
        "qty": s.qty,
        "ratio_qty": o.ratio_qty,
        "filled_qty": s.filled_qty,
        "filled_avg_price": s.filled_avg_price,
        "limit_price": o.limit_price,
        "status": s.status.value,
        "reject_reason": s.reject_reason,
        "submitted_at": o.submitted_at,
        "filled_at": s.filled_at,
        "canceled_at": s.canceled_at,
        "notional": o.notional,
        "stop_price": o.stop_price,
        "replaces": o.replaces,
        "replaced_by": o.replaced_by,
    }


def _leg_row(bid: str, parent: Order, leg: Order, s: OrderSnapshot) -> dict[str, Any]:
    """One ``order_leg_row`` (0012, 0017): a leg of order ``bid``.

    A multi-leg order's leg: its fill as the merged parent counts it, the parent's status. A
    bracket/OCO/OTO order's leg is an order of its own: its own status, fills and times.
    """
    own = parent.contingent
    fill = None if own else _leg_fill(leg, s)
    return {
        "parent_broker_order_id": bid,
        "broker_order_id": leg.broker_order_id,
        "client_order_id": leg.client_order_id,
        "symbol": leg.symbol,
        "asset_class": leg.asset_class.value,
        "side": _value(leg.side),
        "intent": _value(leg.intent),
        "type": _type(leg),
        "order_class": leg.order_class.value,
        "time_in_force": leg.time_in_force.value,
        "qty": leg.qty,
        "ratio_qty": leg.ratio_qty,
        "filled_qty": fill.filled_qty if fill else leg.filled_qty,
        "filled_avg_price": fill.avg_price if fill else leg.filled_avg_price,
        "limit_price": leg.limit_price,
        "status": leg.status.value if own else s.status.value,
        "reject_reason": leg.reject_reason,
        "submitted_at": leg.submitted_at,
        "filled_at": leg.filled_at if own or s.status != OrderStatus.FILLED else s.filled_at,
        "canceled_at": leg.canceled_at if own else s.canceled_at,
        "notional": leg.notional,
        "stop_price": leg.stop_price,
    }


def _event_row(order_id: int, e: _Event) -> dict[str, Any]:
    """One ``order_event_row`` (0012)."""
    return {
        "order_id": order_id,
        "event": e.name,
        "qty": e.qty,
        "price": e.price,
        "filled_qty": e.state.filled_qty,
        "status": e.state.status.value,
        "execution_id": e.execution_id,
        "at": e.at,
        "source": e.source,
    }


async def _write_orders(conn: Conn, q: Queries, account_id: int, changes: Mapping[str, _Change]) -> Applied:
    top = [_order_row(bid, c) for bid, c in changes.items()]
    legs = [_leg_row(bid, c.order, leg, c.after) for bid, c in changes.items() for leg in c.order.legs]
    rows = await conn.fetch(q["trade_upsert_orders"], account_id, top, legs)
    order_ids = {r["broker_order_id"]: r["id"] for r in rows}
    events = [_event_row(order_ids[bid], e) for bid, c in changes.items() for e in c.events]
    if events:
        await conn.execute(q["trade_insert_order_events"], events)
    return Applied(orders=list(changes), events=len(events))


# -- trades ---------------------------------------------------------------------------------


def trade_state(r: Mapping[str, Any]) -> TradeState:
    """A stored ``trades`` row (by column name) as the reconcile core's ``TradeState``."""
    return TradeState(
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


def trade_specs(rows: Iterable[Mapping[str, Any]]) -> dict[int, TradeSpec]:
    legs: dict[int, list[TradeLeg]] = {}
    for r in rows:
        legs.setdefault(r["trade_id"], []).append(TradeLeg(r["symbol"], Side(r["side"]), r["ratio"]))
    return {tid: TradeSpec.of(ls) for tid, ls in legs.items()}


async def _derive_trades(
    conn: Conn, q: Queries, trade_ids: Sequence[int], changes: Mapping[str, _Change], now: dt.datetime
) -> list[int]:
    rows = await conn.fetch(q["trade_trades_for_apply"], trade_ids)
    trades = {r["id"]: trade_state(r) for r in rows}
    exit_pending = {r["id"] for r in rows if r["exit_pending"]}
    specs = trade_specs(await conn.fetch(q["trade_legs_of"], trade_ids))
    orders_by_trade: dict[int, list[_Stored]] = {}
    order_rows = await conn.fetch(q["trade_orders_of"], trade_ids)
    stored = _snapshots(order_rows)
    for bid in [r["broker_order_id"] for r in order_rows if r["parent_id"] is None]:
        s = stored[bid]
        if s.trade_id is not None:
            orders_by_trade.setdefault(s.trade_id, []).append(s)
    updates: list[tuple[int, TradeState]] = []
    for tid, state in trades.items():
        linked = [
            LinkedOrder(
                role=s.role or Role.ENTRY,
                before=changes[s.broker_order_id].before if s.broker_order_id in changes else s.snapshot,
                after=s.snapshot,
            )
            for s in orders_by_trade.get(tid, [])
        ]
        new = apply_orders(specs.get(tid, TradeSpec(())), state, linked, now, exit_pending=tid in exit_pending)
        pending = state.close_reason in PENDING_REASONS and state.status == TradeStatus.CLOSING
        if pending and new.status == TradeStatus.OPEN:  # its legs vanished at expiry or by an assignment
            new = replace(new, status=TradeStatus.CLOSING, close_reason=state.close_reason)
        if new != state:
            updates.append((tid, new))
            log.info("trade_updated", trade_id=tid, status=new.status.value, quantity=str(new.quantity))
    if updates:
        await write_trades(conn, q, updates)
    return [tid for tid, _ in updates]


def _quantity_row(trade_id: int, quantity: Decimal) -> dict[str, Any]:
    """One ``trade_quantity_row`` (0013) by attribute name."""
    return {"id": trade_id, "quantity": quantity}


def _trade_row(trade_id: int, t: TradeState) -> dict[str, Any]:
    """One ``trade_row`` (0012) by attribute name."""
    return {
        "id": trade_id,
        "status": t.status.value,
        "quantity": t.quantity,
        "entry_price": t.entry_price,
        "broker_fill_price": t.broker_fill_price,
        "exit_price": t.exit_price,
        "realized_pnl": t.realized_pnl,
        "close_reason": t.close_reason,
        "opened_at": t.opened_at,
        "closed_at": t.closed_at,
    }


async def write_trades(conn: Conn, q: Queries, updates: Sequence[tuple[int, TradeState]]) -> None:
    await conn.execute(q["trade_update_trades"], [_trade_row(tid, t) for tid, t in updates])


async def reconcile_quantities(
    conn: Conn,
    q: Queries,
    account_id: int,
    *,
    margin: dt.timedelta = RECONCILE_MARGIN,
    now: dt.datetime | None = None,
) -> list[int]:
    """Open trades follow what the broker holds: capped by it, or, with no fill record and alone
    on their symbols, set to it (an app's trade without trade_legs rows too, as its one leg on its
    symbol); flat ones with legs close (:func:`syncd.trading.reconcile.reconcile_quantity`).

    Only trades whose positions were synced at least ``margin`` after their last fill take part.
    A flat trade whose legs are all options (past expiry, or vanished before it: an early
    assignment or exercise) is left to :func:`syncd.trading.expiry_store.settle_expirations`: it
    looks for the broker's expiry, assignment or exercise record before it calls the trade
    closed outside syncd.
    Returns the ids of the trades changed.
    """
    now = now or dt.datetime.now(dt.UTC)
    rows = await conn.fetch(q["trade_reconcile_candidates"], account_id, margin)
    by_trade: dict[int, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_trade.setdefault(r["trade_id"], []).append(r)
    ids: list[int] = []
    quantity_rows: list[dict[str, Any]] = []  # trade_quantity_row (0013)
    closed: list[int] = []
    for tid, legs in by_trade.items():
        spec = TradeSpec.of(TradeLeg(r["symbol"], Side(r["side"]), r["ratio"]) for r in legs)
        state = TradeState(status=TradeStatus.OPEN, quantity=legs[0]["quantity"])
        held = {r["symbol"]: r["position_quantity"] for r in legs}
        shared = [r["symbol"] for r in legs if r["claims"] > 1]
        # a trade without trade_legs rows is only read as a leg on its symbol: never closed by its absence
        if legs[0]["has_legs"] and closed_outside(spec, state, held, shared):
            if all_options(spec):
                continue  # expired, assigned, exercised or closed by hand: the broker's records say which
            closed.append(tid)
            log.info("trade_closed_outside", trade_id=tid, old=str(state.quantity))
            continue
        quantity = reconcile_quantity(spec, state, held, shared, own_fills=legs[0]["own_fills"])
        if quantity is not None:
            ids.append(tid)
            quantity_rows.append(_quantity_row(tid, quantity))
            log.info("trade_quantity_reconciled", trade_id=tid, old=str(state.quantity), new=str(quantity))
    if quantity_rows:
        await conn.execute(q["trade_set_quantities"], quantity_rows)
    if closed:
        await conn.execute(q["trade_close_outside"], closed, CLOSED_OUTSIDE)
    return ids + closed
