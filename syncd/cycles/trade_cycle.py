"""tradeCycle: the outbox, the order mirror, and trades that follow their orders.

One pass over one account:

1. when ``trading.enabled``, drain the account's outbox (:mod:`syncd.trading.outbox`);
2. fetch the account's orders: everything submitted since the watermark (minus an
   overlap for clock skew, and reaching back to the oldest order still recorded as
   working), plus any recorded-working order the listing missed, asked for by id (and any
   recorded terminal in the last ``TERMINAL_RECHECK``, so a wrong final answer is corrected);
   on the first pass, the open orders and the last ``FIRST_PASS_LOOKBACK``;
3. in one transaction holding the account's orders lock: fold every order into
   ``orders``/``order_events`` and re-derive the trades they touch
   (:mod:`syncd.trading.order_store`, the same path the stream consumer uses), reconcile
   open trades' quantities with the broker's positions, move the watermark;
4. after commit, ``NOTIFY syncd_events``;
5. settle option trades whose legs vanished at expiry from the broker's expiry, assignment and
   exercise records (:mod:`syncd.trading.expiry_store`; accountSync does the same, each record
   is applied once).

Orders placed outside syncd are mirrored too, unlinked to any trade.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import structlog

from syncd.brokers.base import OrderNotFound
from syncd.brokers.types import Order
from syncd.context import Account, Context
from syncd.trading.expiry import PENDING_REASONS
from syncd.trading.expiry_store import settle_expirations
from syncd.trading.order_store import (
    Observation,
    apply_observations,
    lock_orders,
    reconcile_quantities,
    send_notifications,
)
from syncd.trading.outbox import drain_outbox

log = structlog.get_logger(__name__)

WATERMARK_OVERLAP = dt.timedelta(minutes=5)
WATERMARK_STEP = dt.timedelta(minutes=2)  # the watermark is rewritten only once it is this old
FIRST_PASS_LOOKBACK = dt.timedelta(days=7)
MAX_LOOKUPS = 8  # concurrent get_order calls for working orders the listing missed
# An order recorded terminal is asked for again (by id, when the listing misses it) this long
# after it was last written: a wrong final answer is then corrected by the next truthful one.
TERMINAL_RECHECK = dt.timedelta(minutes=10)


async def fetch_orders(
    ctx: Context, account: Account, started: dt.datetime
) -> tuple[list[Order], dt.datetime | None, bool]:
    """The orders this pass must look at (broker calls only; nothing written), the watermark read,
    and whether expiry settlement had a trade to look at then (``trade_watermark``'s ``expiry``)."""
    # one statement with the other accounts' passes that ask meanwhile (syncd.db.grouped)
    start = ctx.grouped("trade_watermark", shared=[TERMINAL_RECHECK, list(PENDING_REASONS)])
    row = await start.fetchrow(account.id)
    broker = account.broker
    watermark, oldest_working = row["watermark"], row["oldest_working"]
    working: list[str] = list(row["working"])
    orders: dict[str, Order] = {}
    if watermark is None:
        for o in await broker.list_orders("open"):
            orders[o.broker_order_id] = o
        since = started - FIRST_PASS_LOOKBACK
    else:
        since = min(watermark, oldest_working or watermark) - WATERMARK_OVERLAP
    for o in await broker.list_orders("all", since=since):
        orders[o.broker_order_id] = o
    missing = [bid for bid in working if bid not in orders]
    if missing:
        for o in await _get_orders(account, missing):
            orders[o.broker_order_id] = o
    return list(orders.values()), watermark, bool(row["expiry"])


def watermark_due(watermark: dt.datetime | None, started: dt.datetime) -> bool:
    """Whether ``trade_set_watermark`` could move the watermark read before this pass: it moves one
    unset or older than ``WATERMARK_STEP`` only, and nothing but a newer pass moves it, so one read
    newer than that is still too new to move when the pass writes."""
    return watermark is None or watermark < started - WATERMARK_STEP


async def _get_orders(account: Account, ids: list[str]) -> list[Order]:
    sem = asyncio.Semaphore(MAX_LOOKUPS)

    async def one(bid: str) -> Order | None:
        async with sem:
            try:
                return await account.broker.get_order(bid)
            except OrderNotFound:
                log.warning("working_order_not_found", broker_order_id=bid)
                return None

    return [o for o in await asyncio.gather(*(one(b) for b in ids)) if o is not None]


async def account_pass(ctx: Context, account: Account) -> dict[str, Any]:
    """One tradeCycle pass over one account; returns its stats (raises on failure)."""
    stats: dict[str, Any] = {}
    if ctx.settings.trading.enabled:
        stats.update((await drain_outbox(ctx, account)).as_dict())
    started = dt.datetime.now(dt.UTC)
    orders, watermark, expiry = await fetch_orders(ctx, account, started)
    q = ctx.queries
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            await lock_orders(conn, q, account.id)
            applied = await apply_observations(conn, q, account.id, [Observation(o, "poll") for o in orders])
            reconciled = await reconcile_quantities(conn, q, account.id, margin=ctx.reconcile_margin)
            if watermark_due(watermark, started):
                await conn.execute(q["trade_set_watermark"], account.id, started, WATERMARK_STEP)
        applied.trades += [t for t in reconciled if t not in applied.trades]
        await send_notifications(conn, q, applied.notifications(account.name))
    # Expiry settlement looks only where it could find a trade: one was a candidate when the pass
    # began, or the pass changed an order or a trade since.
    wrote = bool(applied.orders or applied.events or applied.trades)
    settled = await settle_expirations(ctx, account) if expiry or wrote else []
    applied.trades += [t for t in settled if t not in applied.trades]
    stats.update(
        orders_seen=len(orders),
        orders_written=len(applied.orders),
        order_events=applied.events,
        trades_changed=len(applied.trades),
    )
    return stats
