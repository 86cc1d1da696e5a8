"""Exits on live quotes (issue 15 part B): the quote watcher over the simulator's market-data streams.

Positions come from the simulator through an accountSync pass; trades are inserted directly
(as in test_monitor_cycle); quotes move at the simulator (``set_price``, what ``/_sim/price``
does) and arrive over the real websocket protocols: stocks as JSON, options as msgpack.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg

from syncd.context import Account, Context
from syncd.cycles import task_by_short
from syncd.daemon.passes import run_pass
from syncd.daemon.quotes import QuoteRegistry, QuoteWatcher
from syncd.settings import AccountSettings
from syncd.sim import Simulator
from syncd.sim.market import occ_symbol
from tests.helpers import wait_for
from tests.simfixtures import sim_fixture

sim = sim_fixture(seed=11, accounts=2, positions_per_account=0)

EXITS = {"enabled": True, "auto_exits": True}


async def add_trade(
    pool: asyncpg.Pool[Any],
    account_id: int,
    strategy: str,
    legs: list[tuple[str, str]],
    *,
    quantity: int,
    entry: str,
    tp: int | None = None,
    sl: int | None = None,
) -> int:
    trade_id: int = await pool.fetchval(
        """INSERT INTO trades (account_id, symbol, strategy, status, quantity, entry_price,
                               take_profit_pct, stop_loss_pct, opened_at)
           VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, now()) RETURNING id""",
        account_id,
        legs[0][0][:-15] if len(legs[0][0]) > 9 else legs[0][0],
        strategy,
        Decimal(quantity),
        Decimal(entry),
        None if tp is None else Decimal(tp),
        None if sl is None else Decimal(sl),
    )
    await pool.executemany(
        "INSERT INTO trade_legs (trade_id, leg_index, symbol, side, ratio) VALUES ($1, $2, $3, $4, 1)",
        [(trade_id, i, sym, side) for i, (sym, side) in enumerate(legs)],
    )
    return trade_id


async def close_requests(pool: asyncpg.Pool[Any], trade_id: int) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM order_requests WHERE trade_id = $1 AND kind = 'close' ORDER BY id", trade_id)


def syncd_orders(sim: Simulator, index: int = 0) -> list[Any]:
    return [o for o in sim.account(index).orders if o.source != "outside"]


@asynccontextmanager
async def watching(
    make_context: Any,
    sim: Simulator,
    *,
    index: int = 0,
    broker: str = "alpaca",
    trading: dict[str, Any] | None = None,
    **config: Any,
) -> AsyncIterator[tuple[Context, Account, QuoteWatcher]]:
    """A context on the simulator's account ``index`` (mirrored by one accountSync pass) and its watcher,
    not yet running (:func:`running` starts it, once the test's trades exist)."""
    settings = sim.account_settings(index, broker)  # type: ignore[arg-type]
    settings = AccountSettings(**{**settings.model_dump(), **config})
    async with make_context(accounts=[settings], trading=trading or EXITS) as ctx:
        acct = ctx.accounts[settings.name]
        assert (await run_pass(ctx, "accountSync", task_by_short("account").account_pass, [acct])).ok
        watcher = QuoteWatcher(ctx, acct, registry=QuoteRegistry())
        yield ctx, acct, watcher


@asynccontextmanager
async def running(watcher: QuoteWatcher) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_stock_stop_loss_fires_on_the_quote_and_is_placed_once(make_context: Any, sim: Simulator) -> None:
    sim.add_position(0, "AAPL", 10, "100.00")
    sim.set_price("AAPL", "100.00", "100.02")
    async with watching(make_context, sim) as (ctx, acct, watcher):
        trade_id = await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("AAPL", "buy")], quantity=10, entry="100", sl=5)
        async with running(watcher):
            await wait_for(lambda: "AAPL" in sim.quotes.subscribed(), what="AAPL subscribed at the simulator")
            await wait_for(lambda: "AAPL" in watcher.latest, what="a first quote")
            assert syncd_orders(sim) == []

            sim.set_price("AAPL", "94.00", "94.02")  # -6 %: the stop-loss at 5 % fires
            await wait_for(lambda: syncd_orders(sim), timeout=5, what="the close order at the simulator")
            order = syncd_orders(sim)[0]
            assert (order.symbol, order.side, order.qty) == ("AAPL", "sell", Decimal(10))

            async def submitted() -> bool:
                rows = await close_requests(ctx.pool, trade_id)
                return len(rows) == 1 and rows[0]["state"] == "submitted"

            await wait_for(submitted, what="the close request recorded as submitted")
            trade = await ctx.pool.fetchrow("SELECT status, close_reason FROM trades WHERE id = $1", trade_id)
            assert trade is not None and (trade["status"], trade["close_reason"]) == ("closing", "stop_loss")
            row = await ctx.pool.fetchrow("SELECT bid, ask FROM portfolio_positions WHERE symbol = 'AAPL'")
            assert row is not None and (row["bid"], row["ask"]) == (Decimal("94.00"), Decimal("94.02"))

            for price in ("93.00", "92.00", "91.00"):  # more quotes past the stop: no second exit
                sim.set_price("AAPL", price, f"{Decimal(price) + Decimal('0.02')}")
            await wait_for(lambda: "AAPL" not in sim.quotes.subscribed(), what="the closing trade's symbol dropped")
            assert len(await close_requests(ctx.pool, trade_id)) == 1
            assert len(syncd_orders(sim)) == 1
        hist = ctx.metrics.render()
        assert 'syncd_quote_exit_latency_seconds_count{account="sim-alpaca-0"} 1' in hist
        assert (ctx.metrics.value("syncd_quote_events_total", account=acct.name, stream="alpaca-stocks") or 0) >= 2


async def test_option_take_profit_fires_over_msgpack(make_context: Any, sim: Simulator) -> None:
    expiration = sim.market.expirations()[3]
    call = occ_symbol("MSFT", expiration, "call", Decimal(400))
    sim.add_position(0, call, 2, "5.00")
    sim.set_price(call, "5.00", "5.10")
    async with watching(make_context, sim) as (ctx, acct, watcher):
        trade_id = await add_trade(ctx.pool, acct.id, "LONG_CALL", [(call, "buy")], quantity=2, entry="5.00", tp=50)
        async with running(watcher):
            await wait_for(lambda: call in watcher.options.subscribed, what="the option subscribed")
            assert sim.quotes.connections(options=True) == 1
            sim.set_price(call, "7.60", "7.80")  # +54 %
            await wait_for(lambda: syncd_orders(sim), timeout=5, what="the close order at the simulator")
            order = syncd_orders(sim)[0]
            assert (order.symbol, order.side, order.qty) == (call, "sell", Decimal(2))
            trade = await ctx.pool.fetchrow("SELECT close_reason FROM trades WHERE id = $1", trade_id)
            assert trade is not None and trade["close_reason"] == "take_profit"


async def test_no_exit_without_a_two_sided_quote_and_none_when_exits_are_off(make_context: Any, sim: Simulator) -> None:
    """The same guards as monitorCycle: a one-sided quote judges nothing; trading.auto_exits off places nothing."""
    sim.add_position(0, "NVDA", 5, "100.00")
    sim.set_price("NVDA", "100.00", "100.02")
    async with watching(make_context, sim, trading={"enabled": True, "auto_exits": False}) as (ctx, acct, watcher):
        trade_id = await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("NVDA", "buy")], quantity=5, entry="100", sl=5)
        async with running(watcher):
            await wait_for(lambda: "NVDA" in watcher.latest, what="a first quote")
            sim.set_price("NVDA", "80.00", "80.02")

            async def written() -> bool:
                bid = await ctx.pool.fetchval("SELECT bid FROM portfolio_positions WHERE symbol = 'NVDA'")
                return bool(bid == Decimal("80.00"))

            await wait_for(written, what="the quote flushed to the database")
            assert await close_requests(ctx.pool, trade_id) == []
            assert syncd_orders(sim) == []


async def test_subscriptions_follow_the_open_trades(make_context: Any, sim: Simulator) -> None:
    for symbol in ("AAPL", "MSFT"):
        sim.add_position(0, symbol, 1, "100.00")
    async with watching(make_context, sim) as (ctx, acct, watcher):
        first = await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("AAPL", "buy")], quantity=1, entry="100", sl=50)
        await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("MSFT", "buy")], quantity=1, entry="100")  # no exit rule
        async with running(watcher):
            await wait_for(lambda: watcher.stocks.subscribed == {"AAPL"}, what="AAPL only (MSFT's trade has no rule)")
            await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("MSFT", "buy")], quantity=1, entry="100", tp=400)
            await wait_for(lambda: watcher.stocks.subscribed == {"AAPL", "MSFT"}, what="a new trade's leg added")
            await ctx.pool.execute("UPDATE trades SET status = 'closed' WHERE id = $1", first)
            await wait_for(lambda: watcher.stocks.subscribed == {"MSFT"}, what="a closed trade's leg dropped")
            assert sim.quotes.subscribed() == {"MSFT"}


async def test_quotes_are_coalesced_per_symbol(make_context: Any, sim: Simulator) -> None:
    """Sixty quotes in a burst become a flush or two, with the latest quote written."""
    sim.add_position(0, "AMZN", 3, "100.00")
    async with watching(make_context, sim, quote_flush_interval_s=0.5) as (ctx, acct, watcher):
        await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("AMZN", "buy")], quantity=3, entry="100", sl=90)
        async with running(watcher):
            await wait_for(lambda: "AMZN" in watcher.latest, what="a first quote")
            flushes = watcher.flushes
            before = watcher.stocks.received
            for i in range(60):
                sim.set_price("AMZN", f"{150 + i / 100:.2f}", f"{150.02 + i / 100:.2f}")
            await wait_for(lambda: watcher.stocks.received >= before + 60, what="every quote received")

            async def latest_written() -> bool:
                bid = await ctx.pool.fetchval("SELECT bid FROM portfolio_positions WHERE symbol = 'AMZN'")
                return bool(bid == Decimal("150.59"))

            await wait_for(latest_written, what="the latest quote written")
            assert watcher.flushes - flushes <= 3


async def test_symbols_beyond_the_limit_are_left_to_polling(make_context: Any, sim: Simulator) -> None:
    for symbol in ("AAPL", "MSFT", "NVDA"):
        sim.add_position(0, symbol, 1, "100.00")
    async with watching(make_context, sim, quote_symbols_limit=2) as (ctx, acct, watcher):
        for symbol in ("AAPL", "MSFT", "NVDA"):
            await add_trade(ctx.pool, acct.id, "LONG_STOCK", [(symbol, "buy")], quantity=1, entry="100", sl=50)
        async with running(watcher):
            await wait_for(lambda: len(watcher.stocks.subscribed) == 2, what="two symbols subscribed")
            assert watcher.stocks.subscribed == {"AAPL", "MSFT"}


async def test_wrong_keys_are_a_named_state_not_a_crash_loop(make_context: Any, sim: Simulator) -> None:
    sim.add_position(0, "AAPL", 1, "100.00")
    async with watching(make_context, sim) as (ctx, acct, watcher):
        sim.faults.auth_failed.add(0)  # the keys stop working (after accountSync mirrored the book)
        await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("AAPL", "buy")], quantity=1, entry="100", sl=50)
        async with running(watcher):
            view = await wait_for(lambda: watcher.views.get("alpaca-stocks"), what="the stream's view")
            await wait_for(lambda: view.state == "auth_failed", what="auth_failed")
            assert watcher.stocks.reconnects == 0
            assert watcher.registry.body()[acct.name]["alpaca-stocks"]["connected"] is False


async def test_a_plan_without_market_data_is_a_named_state(make_context: Any, sim: Simulator) -> None:
    sim.add_position(1, "AAPL", 1, "100.00")
    sim.quotes.denied.add(1)
    async with watching(make_context, sim, index=1) as (ctx, acct, watcher):
        await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("AAPL", "buy")], quantity=1, entry="100", sl=50)
        async with running(watcher):
            await wait_for(lambda: watcher.stocks.state == "no_data_plan", what="no_data_plan")
            assert watcher.stocks.reconnects == 0


async def test_reconnects_and_resubscribes_after_the_server_drops(make_context: Any, sim: Simulator) -> None:
    sim.add_position(0, "AAPL", 10, "100.00")
    sim.set_price("AAPL", "100.00", "100.02")
    async with watching(make_context, sim) as (ctx, acct, watcher):
        watcher.stocks._backoff_s = (0.05, 0.1)  # reconnect quickly in the test
        await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("AAPL", "buy")], quantity=10, entry="100", sl=5)
        async with running(watcher):
            await wait_for(lambda: "AAPL" in sim.quotes.subscribed(), what="subscribed")
            assert await sim.quotes.disconnect() == 1
            await wait_for(lambda: watcher.stocks.reconnects >= 1, what="a reconnect")
            await wait_for(lambda: "AAPL" in sim.quotes.subscribed(), what="subscribed again")
            sim.set_price("AAPL", "90.00", "90.02")
            await wait_for(lambda: syncd_orders(sim), timeout=5, what="the exit after the reconnect")
        assert (
            ctx.metrics.value("syncd_quote_stream_reconnects_total", account=acct.name, stream="alpaca-stocks") or 0
        ) >= 1


def test_quote_settings_defaults() -> None:
    base = AccountSettings(name="a", broker="alpaca", api_key="k", api_secret="s")
    assert (base.stream_quotes, base.data_feed, base.option_feed) == (True, "iex", "indicative")
    assert (base.quote_flush_interval_s, base.quote_symbols_limit, base.data_stream_url) == (1.0, 30, None)


async def test_tradier_stop_loss_over_the_market_events_stream(make_context: Any, sim: Simulator) -> None:
    """Tradier: a session, then the websocket; the same judgement and the same outbox."""
    expiration = sim.market.expirations()[3]
    put = occ_symbol("AAPL", expiration, "put", Decimal(180))
    sim.add_position(0, "AAPL", 10, "100.00")
    sim.add_position(0, put, 1, "4.00")
    sim.set_price("AAPL", "100.00", "100.02")
    sim.set_price(put, "4.00", "4.10")
    async with watching(make_context, sim, broker="tradier") as (ctx, acct, watcher):
        stock = await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("AAPL", "buy")], quantity=10, entry="100", sl=5)
        await add_trade(ctx.pool, acct.id, "LONG_PUT", [(put, "buy")], quantity=1, entry="4.00", tp=100)
        async with running(watcher):
            stream = watcher.by_name("tradier-market")
            await wait_for(lambda: stream.subscribed == {"AAPL", put}, what="stock and option on one stream")
            await wait_for(lambda: {"AAPL", put} <= set(watcher.latest), what="first quotes")
            sim.set_price("AAPL", "94.00", "94.02")
            await wait_for(lambda: syncd_orders(sim), timeout=5, what="the close order at the simulator")
            order = syncd_orders(sim)[0]
            assert (order.symbol, order.side, order.qty) == ("AAPL", "sell", Decimal(10))
            trade = await ctx.pool.fetchrow("SELECT status, close_reason FROM trades WHERE id = $1", stock)
            assert trade is not None and (trade["status"], trade["close_reason"]) == ("closing", "stop_loss")
            await wait_for(lambda: stream.subscribed == {put}, what="the closing trade's symbol dropped")
            assert sim.quotes.subscribed() == {put}
            assert watcher.registry.body()[acct.name]["tradier-market"]["connected"] is True


async def test_tradier_refused_token_is_a_named_state(make_context: Any, sim: Simulator) -> None:
    sim.add_position(1, "AAPL", 1, "100.00")
    async with watching(make_context, sim, index=1, broker="tradier") as (ctx, acct, watcher):
        sim.faults.auth_failed.add(1)
        await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("AAPL", "buy")], quantity=1, entry="100", sl=50)
        async with running(watcher):
            stream = watcher.by_name("tradier-market")
            await wait_for(lambda: stream.state == "auth_failed", what="auth_failed")
            assert stream.reconnects == 0
