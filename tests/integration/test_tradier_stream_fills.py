"""Tradier fills from the account events stream, on real Postgres with the simulator.

The consumer (``syncd.trading.stream.consume_trade_updates``, as the daemon runs it) over the
real adapter and the simulator's session endpoint and websocket: fills applied at once with
``source = 'stream'``, counted once whichever of stream and poll sees them first, repeated or
stale events change nothing, a dropped stream reconnects with a fresh session, a refused token
is a named state and not a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from structlog.testing import capture_logs

from syncd.brokers.tradier import TradierBroker
from syncd.brokers.types import TradeUpdate
from syncd.context import Account, Context
from syncd.cycles import trade_cycle
from syncd.sim import Simulator
from syncd.trading.stream import apply_update, consume_trade_updates
from tests.helpers import wait_for
from tests.simfixtures import sim_fixture

D = Decimal
BUY = {"symbol": "AAPL", "side": "buy", "qty": 10, "type": "market", "strategy": "LONG_STOCK"}

sim = sim_fixture(seed=15, accounts=1, positions_per_account=0, fill_on_submit=False)


@contextlib.asynccontextmanager
async def streaming(ctx: Context, account: Account, sim: Simulator) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(consume_trade_updates(ctx, account, stop))
    try:
        await wait_for(lambda: sim.tradier_events.connected(0), timeout=10, what="account events subscribed")
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def queue_open(ctx: Context, account: Account, payload: dict[str, Any]) -> tuple[int, str]:
    rid = int(
        await ctx.pool.fetchval(
            "INSERT INTO order_requests (account_id, kind, payload) VALUES ($1, 'open', $2) RETURNING id",
            account.id,
            payload,
        )
    )
    await trade_cycle.account_pass(ctx, account)
    bid = await ctx.pool.fetchval(
        "SELECT o.broker_order_id FROM orders o JOIN order_requests r USING (client_order_id) WHERE r.id = $1", rid
    )
    return rid, str(bid)  # the simulator finds a Tradier order by its id (syncd's id is its tag)


async def trade_of(ctx: Context, rid: int) -> Any:
    return await ctx.pool.fetchrow(
        "SELECT t.* FROM trades t JOIN order_requests r ON r.trade_id = t.id WHERE r.id = $1", rid
    )


async def wait_quantity(ctx: Context, rid: int, qty: int, what: str) -> Any:
    async def reached() -> Any:
        t = await trade_of(ctx, rid)
        return t if t is not None and t["quantity"] == qty else None

    return await wait_for(reached, timeout=10, what=what)


async def test_stream_and_poll_both_deliver_a_fill_counted_once(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, "tradier")], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        async with streaming(ctx, acct, sim):
            rid, bid = await queue_open(ctx, acct, BUY)
            polls_before = sim.requests("/v1/accounts", "GET")
            sim.fill(bid, qty=4, price="100")
            await wait_quantity(ctx, rid, 4, "partial fill applied from the stream")
            rows = await ctx.pool.fetch("SELECT source, event, qty, price FROM order_events WHERE qty IS NOT NULL")
            assert [tuple(r) for r in rows] == [("stream", "partial_fill", 4, D(100))]
            # the stream's cost: nothing, for an order the adapter has seen (it placed this one)
            assert sim.requests("/v1/accounts", "GET") == polls_before

            await trade_cycle.account_pass(ctx, acct)  # the poll sees the same fill
            t = await trade_of(ctx, rid)
            assert (t["status"], t["quantity"], t["entry_price"]) == ("open", 4, D(100))

            sim.fill(bid, price="103")
            t = await wait_quantity(ctx, rid, 10, "the rest applied from the stream")
            assert t["entry_price"] == D("101.8")
            await trade_cycle.account_pass(ctx, acct)
        fills = await ctx.pool.fetchval("SELECT sum(qty) FROM order_events WHERE event IN ('fill', 'partial_fill')")
        assert fills == 10  # every share counted once, whichever path saw it first
        sources = await ctx.pool.fetch("SELECT DISTINCT source FROM order_events WHERE qty IS NOT NULL")
        assert {r["source"] for r in sources} == {"stream"}
        view = ctx.metrics.streams[acct.name]
        assert view.state == "stopped" and view.events >= 2 and view.broker == "tradier"
        assert ctx.metrics.value("syncd_stream_events_total", account=acct.name) == view.events


async def test_repeated_and_stale_events_change_nothing(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, "tradier")], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        broker = acct.broker
        assert isinstance(broker, TradierBroker)
        async with streaming(ctx, acct, sim):
            rid, bid = await queue_open(ctx, acct, BUY)
            sim.fill(bid, qty=4, price="100")
            await wait_quantity(ctx, rid, 4, "partial fill")
            partial = await broker.get_order(bid)
            sim.fill(bid, price="103")
            await wait_quantity(ctx, rid, 10, "the whole fill")
        filled = await broker.get_order(bid)
        events_before = await ctx.pool.fetchval("SELECT count(*) FROM order_events")
        at = filled.updated_at
        assert at is not None
        for order in (filled, partial):  # the last event again, then an older one, out of order
            stale = TradeUpdate("fill", order, at=at, cumulative=True)
            applied = await apply_update(ctx, acct, stale)
            assert applied.orders == [] and applied.trades == []
        t = await trade_of(ctx, rid)
        assert (t["status"], t["quantity"], t["entry_price"]) == ("open", 10, D("101.8"))
        assert await ctx.pool.fetchval("SELECT count(*) FROM order_events") == events_before


async def test_outside_order_arrives_by_stream_without_a_poll(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, "tradier")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        async with streaming(ctx, acct, sim):
            assert ctx.metrics.value("syncd_stream_connected", account=acct.name) == 1
            placed = sim.place_outside_order(0, "MSFT", "buy", 3)
            sim.fill(placed.id, price="300")

            async def seen() -> Any:
                return await ctx.pool.fetchrow(
                    "SELECT * FROM orders WHERE broker_order_id = $1 AND status = 'filled'", str(placed.tradier_id)
                )

            row = await wait_for(seen, timeout=10, what="outside order mirrored, filled")
            assert row["trade_id"] is None and row["symbol"] == "MSFT" and row["filled_qty"] == 3
        assert sim.requests("/v1/accounts/" + sim.accounts[0].tradier_account_id + "/orders", "GET") >= 1
        listed = sim.request_counts.get(f"GET /v1/accounts/{sim.accounts[0].tradier_account_id}/orders", 0)
        assert listed == 0  # no poll listed the orders: the stream brought it


async def test_reconnects_with_a_fresh_session_after_a_drop(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, "tradier")], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        async with streaming(ctx, acct, sim):
            rid, bid = await queue_open(ctx, acct, {**BUY, "qty": 6})
            sessions = sim.tradier_events.sessions_created
            with capture_logs() as logs:
                assert await sim.disconnect_streams(0) == 1
                sim.fill(bid, qty=2, price="50")  # while nobody listens: the poll's to find
                await wait_for(
                    lambda: sim.tradier_events.connected(0) and sim.tradier_events.sessions_created > sessions,
                    timeout=20,
                    what="reconnected with a new session",
                )
            assert any(e["event"] == "stream_disconnected" and e["log_level"] == "warning" for e in logs)
            await trade_cycle.account_pass(ctx, acct)  # the backstop
            assert (await trade_of(ctx, rid))["quantity"] == 2
            sim.fill(bid, price="52")
            t = await wait_quantity(ctx, rid, 6, "fill after the reconnect, from the stream")
            assert t["entry_price"] == D("51.333333")
        view = ctx.metrics.streams[acct.name]
        assert view.reconnects == 1
        assert ctx.metrics.value("syncd_stream_reconnects_total", account=acct.name) == 1


async def test_refused_token_is_a_named_state_not_a_loop(sim: Simulator, make_context: Any) -> None:
    sim.faults.fail_auth(0)
    async with make_context(accounts=[sim.account_settings(0, "tradier")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        with capture_logs() as logs:
            await asyncio.wait_for(consume_trade_updates(ctx, acct, asyncio.Event()), timeout=10)  # gives up
        refused = [e for e in logs if e["event"] == "stream_refused"]
        assert len(refused) == 1 and refused[0]["log_level"] == "error" and "401" in refused[0]["error"]
        assert sim.requests("/v1/accounts/events/session", "POST") == 1
        view = ctx.metrics.streams[acct.name]
        assert (
            view.state == "refused"
            and view.last_error
            and ctx.metrics.value("syncd_stream_connected", account=acct.name) == 0
        )
    sim.faults.fail_auth(0, on=False)


async def test_the_sim_emits_the_same_events_for_both_protocols(sim: Simulator) -> None:
    """Every trade event the simulator makes reaches both streams: one event each, same order."""
    from syncd.sim.tradier_stream import account_event_json

    placed = sim.place_outside_order(0, "AAPL", "buy", 2)
    sim.fill(placed.id, qty=1, price="10")
    events = [e for e in sim.events if e.order is placed]
    assert [e.event for e in events] == ["new", "partial_fill"]
    rendered = [account_event_json(e, e.order, sim.accounts[0].tradier_account_id, sim.exchange) for e in events]
    assert {r["id"] for r in rendered} == {placed.tradier_id}
    last = dataclasses.replace(events[-1])
    assert rendered[-1]["exec_quantity"] == 1.0 and rendered[-1]["last_fill_quantity"] == float(last.qty or 0)
    assert rendered[-1]["status"] == "partially_filled" and rendered[-1]["event"] == "order"


shared_sim = sim_fixture(name="shared_sim", seed=16, accounts=3, positions_per_account=0)


async def test_accounts_under_one_token_share_one_session(shared_sim: Simulator, make_context: Any) -> None:
    """Tradier allows one streaming session per user: two accounts of one token, one connection."""
    sim = shared_sim
    sim.share_tradier_token(0, 1)
    settings = [
        sim.account_settings(0, "tradier"),
        sim.account_settings(1, "tradier"),
        sim.account_settings(2, "tradier"),
    ]
    async with make_context(accounts=settings) as ctx:
        a, b, c = ctx.accounts.values()
        stop_a, stop_b, stop_c = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(consume_trade_updates(ctx, acct, stop))
            for acct, stop in ((a, stop_a), (b, stop_b), (c, stop_c))
        ]
        try:
            await wait_for(
                lambda: all(sim.tradier_events.connected(i) for i in range(3)), timeout=10, what="all subscribed"
            )
            assert sim.tradier_events.connected() == 2  # two tokens, two connections
            assert sim.tradier_events.sessions_created == 2
            placed = [sim.place_outside_order(i, "AAPL", "buy", i + 1) for i in range(3)]  # fill at once

            async def all_landed() -> bool:
                rows = await ctx.pool.fetch(
                    "SELECT a.name, o.filled_qty FROM orders o JOIN accounts a ON a.id = o.account_id "
                    "WHERE o.status = 'filled' AND o.broker_order_id = ANY($1)",
                    [str(p.tradier_id) for p in placed],
                )
                return {r["name"]: r["filled_qty"] for r in rows} == {a.name: 1, b.name: 2, c.name: 3}

            await wait_for(all_landed, timeout=10, what="each account's fill, on its own account")
            stop_a.set()  # account a's lease moves away: b keeps the token's connection
            await asyncio.wait_for(tasks[0], timeout=10)
            later = sim.place_outside_order(1, "MSFT", "buy", 4)

            async def b_got_it() -> Any:
                return await ctx.pool.fetchval(
                    "SELECT filled_qty FROM orders WHERE broker_order_id = $1 AND status = 'filled'",
                    str(later.tradier_id),
                )

            assert await wait_for(b_got_it, timeout=10, what="b's fill after a left") == 4
            assert sim.tradier_events.sessions_created == 2  # no new session for b
        finally:
            for stop in (stop_a, stop_b, stop_c):
                stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
        await wait_for(lambda: sim.tradier_events.connected() == 0, timeout=10, what="connections closed")
