"""Fills as they happen: one account's trade-update stream, applied at once.

``consume_trade_updates`` runs beside the polling cycles (the supervisor starts
one per account it holds; ``sync-once`` does not stream). Each event goes through
the same idempotent path as a poll (:func:`syncd.trading.order_store.apply_observations`
under the account's orders lock), with ``source = 'stream'``: the same fill seen
by the stream and by a poll counts once (the order's fill progress is monotonic,
and a stream execution id is stored once), and events repeated or out of order
change nothing wrong. When the stream drops, the consumer reconnects with
jittered backoff; whatever happened meanwhile the next poll pass picks up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from syncd.brokers.base import BadBrokerData, BrokerAuthFailed, BrokerError, StreamNotSupported
from syncd.brokers.sanity import Bad, check_update
from syncd.brokers.types import TradeUpdate
from syncd.context import Account, Context
from syncd.errors import DB_ERRORS, backoff, describe
from syncd.trading.order_store import Applied, Observation, apply_observations, lock_orders, send_notifications

log = structlog.get_logger(__name__)

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0  # a connection that lasted this long resets the backoff
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

FillLatency = Callable[[float], None]


def backoff_delay(failures: int, low: float = BACKOFF_MIN_S, high: float = BACKOFF_MAX_S) -> float:
    """Jittered exponential backoff: somewhere in [cap/2, cap], cap doubling per failure."""
    return backoff(failures, low, high, jitter="half")


async def apply_update(
    ctx: Context, account: Account, update: TradeUpdate, on_fill: FillLatency | None = None
) -> Applied:
    """Apply one stream event in its own transaction; observe fill latency after commit."""
    obs = Observation(
        order=update.order,
        source="stream",
        event=None if update.cumulative else update.event,
        at=update.at,
        execution_id=update.execution_id,
        fill_qty=update.qty,
        fill_price=update.price,
    )
    q = ctx.queries
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            await lock_orders(conn, q, account.id)
            applied = await apply_observations(conn, q, account.id, [obs])
        committed = time.time()
        await send_notifications(conn, q, applied.notifications(account.name))
    for at in applied.fill_times:
        latency = max(0.0, committed - at.timestamp())
        ctx.metrics.observe("syncd_fill_latency_seconds", latency, LATENCY_BUCKETS, account=account.name)
        if on_fill is not None:
            on_fill(latency)
    if applied.orders:
        log.info(
            "stream_event_applied",
            stream_event=update.event,
            broker_order_id=update.order.broker_order_id,
            trades=applied.trades,
        )
    return applied


async def refuse_update(ctx: Context, account: Account, exc: BadBrokerData) -> None:
    """An event that cannot be true is not applied; ``accounts.last_error`` says so at once.

    The error is tradeCycle's (the stream is its fast path): its next pass clears it when the
    broker's order listing, the backstop, is truthful, or keeps it when it says the same.
    """
    error = describe(exc)
    log.warning("stream_event_refused", error=error)
    await ctx.pool.execute(ctx.queries["stream_set_error"], account.id, f"tradeCycle: stream event refused: {error}")


async def _consume(ctx: Context, account: Account, on_fill: FillLatency | None) -> None:
    async for update in account.broker.trade_updates():
        ctx.metrics.stream_event(account.name, account.broker.kind, time.time())
        try:
            check_update(update, "trade_update", _refusal(account))
        except BadBrokerData as exc:
            try:
                await refuse_update(ctx, account, exc)
            except DB_ERRORS as db_exc:
                log.error("stream_event_failed", error=describe(db_exc))
            continue
        try:
            await apply_update(ctx, account, update, on_fill)
        except DB_ERRORS as exc:
            # the database hiccuped: this event is lost to the stream, not to syncd (the poll has it)
            log.error("stream_event_failed", broker_order_id=update.order.broker_order_id, error=describe(exc))


async def consume_trade_updates(
    ctx: Context, account: Account, stop: asyncio.Event, *, on_fill: FillLatency | None = None
) -> None:
    """Consume ``account``'s trade updates until ``stop`` is set; reconnect on failure.

    Returns at once when the broker has no stream or ``cycles.stream`` is off.
    ``on_fill`` receives each fill's latency in seconds (benchmarks).
    """
    if not (account.broker.supports_stream and ctx.settings.cycles.stream):
        return
    failures = 0
    kind = account.broker.kind
    with structlog.contextvars.bound_contextvars(task="stream", account=account.name):
        while not stop.is_set():
            started = time.monotonic()
            ctx.metrics.stream_state(account.name, kind, "connected", time.time())
            log.info("stream_connected")
            task = asyncio.create_task(_consume(ctx, account, on_fill), name=f"stream:{account.name}")
            stopper = asyncio.create_task(stop.wait(), name=f"stream-stop:{account.name}")
            try:
                await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (stopper, task):
                    if not t.done():
                        t.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await t
            error = await _outcome(task)
            if stop.is_set():
                ctx.metrics.stream_state(account.name, kind, "stopped", time.time())
                log.info("stream_disconnected", reason="stopping")
                return
            if isinstance(error, (StreamNotSupported, BrokerAuthFailed)):
                # a named state, not a crash loop: this account is polled only until syncd restarts
                ctx.metrics.stream_state(account.name, kind, "refused", time.time(), describe(error))
                log.error("stream_refused", error=describe(error), retry=False)
                return
            failures = 1 if time.monotonic() - started > HEALTHY_AFTER_S else failures + 1
            delay = backoff_delay(failures)
            reason = describe(error) if error else "stream ended"
            ctx.metrics.stream_state(account.name, kind, "reconnecting", time.time(), reason)
            log.warning(
                "stream_disconnected",
                error=reason,
                attempt=failures,
                retry_in_s=round(delay, 2),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


def _refusal(account: Account) -> Bad:
    def bad(message: str, field: str) -> BadBrokerData:
        return BadBrokerData(
            f"{account.broker.kind}: {message}", field=field, broker=account.broker.kind, account=account.name
        )

    return bad


async def _outcome(task: asyncio.Task[None]) -> BaseException | None:
    """Wait for the consumer task; its exception, if any (a cancellation is not one)."""
    try:
        await task
    except asyncio.CancelledError:
        return None
    except BrokerError as exc:
        return exc
    except Exception as exc:  # any failure of the stream means: log it, reconnect
        log.exception("stream_crashed", error=describe(exc))
        return exc
    return None
