"""Fills from the trade_updates stream, on real Postgres with the simulator: applied at once, counted once."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, MutableMapping
from decimal import Decimal
from typing import Any

from structlog.testing import capture_logs

from syncd.brokers.types import TradeUpdate
from syncd.context import Account, Context
from syncd.cycles import trade_cycle
from syncd.sim import Simulator
from syncd.trading.stream import apply_update, consume_trade_updates
from tests.helpers import wait_for
from tests.simfixtures import sim_fixture

D = Decimal
BUY = {"symbol": "AAPL", "side": "buy", "qty": 10, "type": "market", "strategy": "LONG_STOCK"}


sim = sim_fixture(seed=5, accounts=1, positions_per_account=0, fill_on_submit=False)


@contextlib.asynccontextmanager
async def streaming(ctx: Context, account: Account, sim: Simulator) -> AsyncIterator[asyncio.Event]:
    """Run the consumer until the block ends; wait until the simulator sees it listening."""
    stop = asyncio.Event()
    task = asyncio.create_task(consume_trade_updates(ctx, account, stop))
    try:
        await wait_for(lambda: sim.streams.listening(0), timeout=10, what="stream listening")
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def queue_open(ctx: Context, account: Account, payload: dict[str, Any]) -> int:
    return int(
        await ctx.pool.fetchval(
            "INSERT INTO order_requests (account_id, kind, payload) VALUES ($1, 'open', $2) RETURNING id",
            account.id,
            payload,
        )
    )


async def trade_of(ctx: Context, rid: int) -> Any:
    return await ctx.pool.fetchrow(
        "SELECT t.* FROM trades t JOIN order_requests r ON r.trade_id = t.id WHERE r.id = $1", rid
    )


async def test_stream_and_poll_both_deliver_a_fill_counted_once(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        async with streaming(ctx, acct, sim):
            rid = await queue_open(ctx, acct, BUY)
            await trade_cycle.account_pass(ctx, acct)
            cid = (await ctx.pool.fetchrow("SELECT client_order_id FROM order_requests WHERE id = $1", rid))[0]
            sim.fill(cid, qty=4, price="100")

            async def opened() -> bool:
                t = await trade_of(ctx, rid)
                return t is not None and t["quantity"] == 4

            await wait_for(opened, timeout=10, what="partial fill applied from the stream")
            sources = await ctx.pool.fetch("SELECT source, event FROM order_events WHERE qty IS NOT NULL")
            assert [(r["source"], r["event"]) for r in sources] == [("stream", "partial_fill")]

            await trade_cycle.account_pass(ctx, acct)  # the poll sees the same fill
            t = await trade_of(ctx, rid)
            assert (t["status"], t["quantity"], t["entry_price"]) == ("open", 4, D(100))

            sim.fill(cid, price="103")  # the rest; this time the poll gets there first ...
        await trade_cycle.account_pass(ctx, acct)
        order = await acct.broker.get_order_by_client_id(cid)
        assert order is not None
        late = TradeUpdate(
            "fill",
            order,
            at=order.updated_at or dt.datetime.now(dt.UTC),
            price=D(103),
            qty=D(6),
            execution_id="exec-late-1",
        )
        applied = await apply_update(ctx, acct, late)  # ... and the stream delivers it afterwards
        assert applied.orders == [] and applied.trades == []
        t = await trade_of(ctx, rid)
        assert (t["status"], t["quantity"], t["entry_price"]) == ("open", 10, D("101.8"))
        fills = await ctx.pool.fetchval("SELECT sum(qty) FROM order_events WHERE event IN ('fill', 'partial_fill')")
        assert fills == 10  # every contract counted once, whichever path saw it first
        assert ctx.metrics.value("syncd_stream_connected", account=acct.name) == 0  # stopped


async def test_outside_order_arrives_by_stream(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        async with streaming(ctx, acct, sim):
            assert ctx.metrics.value("syncd_stream_connected", account=acct.name) == 1
            placed = sim.place_outside_order(0, "MSFT", "buy", 3)

            async def seen() -> Any:
                return await ctx.pool.fetchrow("SELECT * FROM orders WHERE broker_order_id = $1", placed.id)

            row = await wait_for(seen, timeout=10, what="outside order mirrored")
            assert row["trade_id"] is None and row["symbol"] == "MSFT"


async def test_reconnects_after_disconnect_and_poll_closes_the_gap(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        async with streaming(ctx, acct, sim):
            rid = await queue_open(ctx, acct, {**BUY, "qty": 6})
            await trade_cycle.account_pass(ctx, acct)
            cid = (await ctx.pool.fetchrow("SELECT client_order_id FROM order_requests WHERE id = $1", rid))[0]
            await sim.disconnect_streams(0)
            sim.fill(cid, qty=2, price="50")  # may happen while nobody listens
            await wait_for(lambda: sim.streams.listening(0), timeout=20, what="stream reconnected")
            await trade_cycle.account_pass(ctx, acct)  # the backstop
            t = await trade_of(ctx, rid)
            assert (t["status"], t["quantity"]) == ("open", 2)
            sim.fill(cid, price="52")

            async def filled() -> bool:
                t = await trade_of(ctx, rid)
                return bool(t["quantity"] == 6)

            await wait_for(filled, timeout=10, what="fill after reconnect applied from the stream")
            t = await trade_of(ctx, rid)
            assert t["entry_price"] == D("51.333333")


async def test_no_stream_when_turned_off(sim: Simulator, make_context: Any) -> None:
    tradier = sim.account_settings(0, broker="tradier")
    async with make_context(accounts=[tradier], cycles={"stream": False}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await asyncio.wait_for(consume_trade_updates(ctx, acct, asyncio.Event()), timeout=5)  # returns at once
        assert sim.tradier_events.sessions_created == 0
    async with make_context(accounts=[sim.account_settings(0)], cycles={"stream": False}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await asyncio.wait_for(consume_trade_updates(ctx, acct, asyncio.Event()), timeout=5)
        assert sim.streams.connected(0) == 0


async def test_stream_connected_is_logged_by_the_consumer_only(sim: Simulator, make_context: Any) -> None:
    """stream_connected/stream_disconnected come once each from the consumer (syncd.trading.stream); the Alpaca
    adapter's websocket reconnects underneath log alpaca_ws_connected (debug) and alpaca_ws_dropped."""
    async with make_context(accounts=[sim.account_settings(0)]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        with capture_logs() as logs:
            async with streaming(ctx, acct, sim):
                await wait_for(lambda: any(e["event"] == "alpaca_ws_connected" for e in logs), timeout=10)
                assert await sim.disconnect_streams(0) == 1
                await wait_for(lambda: sum(e["event"] == "alpaca_ws_connected" for e in logs) >= 2, timeout=20)
        by_event: dict[str, list[MutableMapping[str, Any]]] = {}
        for e in logs:
            by_event.setdefault(e["event"], []).append(e)
        assert len(by_event["stream_connected"]) == 1
        assert [e.get("reason") for e in by_event["stream_disconnected"]] == ["stopping"]
        assert {e["log_level"] for e in by_event["alpaca_ws_connected"]} == {"debug"}
        dropped = by_event["alpaca_ws_dropped"]
        assert len(dropped) == 1 and dropped[0]["log_level"] == "warning" and dropped[0]["account"] == acct.name
