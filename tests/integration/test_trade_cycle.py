"""tradeCycle on real Postgres: the order/trade store directly, then whole passes against the simulator."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from syncd.brokers.types import AssetClass, Order, OrderClass, OrderStatus, OrderType, Side
from syncd.cycles import trade_cycle
from syncd.daemon.passes import run_pass
from syncd.db import create_pool, load_queries
from syncd.settings import DatabaseSettings
from syncd.sim import Simulator, occ_symbol
from syncd.trading.order_store import Link, Observation, apply_observations, lock_orders, reconcile_quantities
from syncd.trading.reconcile import Role
from tests.simfixtures import sim_fixture


@pytest_asyncio.fixture(loop_scope="function")
async def db_pool(dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool on this test's database, on the test's own event loop."""
    pool = await create_pool(DatabaseSettings(dsn=dsn))
    yield pool
    await pool.close()


T0 = dt.datetime(2025, 12, 3, 15, 0, tzinfo=dt.UTC)
Q = load_queries()


def order(
    bid: str,
    status: OrderStatus,
    filled: str = "0",
    avg: str | None = None,
    *,
    qty: str = "10",
    symbol: str = "AAPL",
    side: Side = Side.BUY,
    cid: str | None = None,
    legs: tuple[Order, ...] = (),
    reason: str | None = None,
) -> Order:
    return Order(
        broker_order_id=bid,
        client_order_id=cid,
        symbol=symbol,
        side=None if legs else side,
        type=OrderType.LIMIT,
        order_class=OrderClass.MLEG if legs else OrderClass.SIMPLE,
        qty=Decimal(qty),
        filled_qty=Decimal(filled),
        status=status,
        asset_class=AssetClass.US_OPTION if legs else AssetClass.US_EQUITY,
        filled_avg_price=Decimal(avg) if avg else None,
        limit_price=Decimal("150"),
        submitted_at=T0,
        updated_at=T0,
        filled_at=T0 if status == OrderStatus.FILLED else None,
        reject_reason=reason,
        legs=legs,
    )


async def make_account(conn: Any, name: str = "acct") -> int:
    return int(await conn.fetchval("INSERT INTO accounts (name, broker) VALUES ($1, 'alpaca') RETURNING id", name))


async def make_trade(
    conn: Any,
    account_id: int,
    legs: list[tuple[str, str, int]],
    quantity: str = "0",
    status: str = "pending",
    symbol: str = "AAPL",
) -> int:
    tid = int(
        await conn.fetchval(
            "INSERT INTO trades (account_id, symbol, status, quantity) VALUES ($1, $2, $3, $4) RETURNING id",
            account_id,
            symbol,
            status,
            Decimal(quantity),
        )
    )
    for i, (sym, side, ratio) in enumerate(legs):
        await conn.execute(
            "INSERT INTO trade_legs (trade_id, leg_index, symbol, side, ratio) VALUES ($1, $2, $3, $4, $5)",
            tid,
            i,
            sym,
            side,
            ratio,
        )
    return tid


async def apply(
    pool: asyncpg.Pool[Any], account_id: int, *obs: Observation, links: dict[str, Link] | None = None
) -> Any:
    async with pool.acquire() as conn, conn.transaction():
        await lock_orders(conn, Q, account_id)
        return await apply_observations(conn, Q, account_id, list(obs), links=links)


async def trade_row(pool: asyncpg.Pool[Any], tid: int) -> Any:
    return await pool.fetchrow("SELECT * FROM trades WHERE id = $1", tid)


async def test_partial_fills_then_filled_weighted_average(db_pool: asyncpg.Pool[Any]) -> None:
    """pending until the first fill; open with the filled quantity and the actual average price."""
    acct = await make_account(db_pool)
    tid = await make_trade(db_pool, acct, [("AAPL", "buy", 1)])
    link = {"o1": Link(tid, Role.ENTRY)}
    await apply(db_pool, acct, Observation(order("o1", OrderStatus.NEW)), links=link)
    assert (await trade_row(db_pool, tid))["status"] == "pending"
    await apply(db_pool, acct, Observation(order("o1", OrderStatus.PARTIALLY_FILLED, "4", "100")))
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["quantity"], t["entry_price"]) == ("open", 4, Decimal(100))
    await apply(db_pool, acct, Observation(order("o1", OrderStatus.FILLED, "10", "101.2")))
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["quantity"], t["broker_fill_price"]) == ("open", 10, Decimal("101.2"))
    events = await db_pool.fetch("SELECT event, qty, price FROM order_events ORDER BY id")
    assert [e["event"] for e in events] == ["new", "partial_fill", "fill"]
    assert events[2]["qty"] == 6 and events[2]["price"] == Decimal("102")  # (10*101.2 - 4*100) / 6


async def test_stale_and_repeated_observations_change_nothing(db_pool: asyncpg.Pool[Any]) -> None:
    acct = await make_account(db_pool)
    tid = await make_trade(db_pool, acct, [("AAPL", "buy", 1)])
    filled = Observation(order("o1", OrderStatus.FILLED, "10", "100"))
    await apply(db_pool, acct, filled, links={"o1": Link(tid, Role.ENTRY)})
    before = await trade_row(db_pool, tid)
    again = await apply(
        db_pool,
        acct,
        filled,
        Observation(order("o1", OrderStatus.PARTIALLY_FILLED, "3", "99")),
        Observation(order("o1", OrderStatus.NEW)),
    )
    assert again.orders == [] and again.events == 0
    assert await trade_row(db_pool, tid) == before
    assert await db_pool.fetchval("SELECT count(*) FROM order_events") == 1


async def test_cancel_after_partial_fill_keeps_open_trade(db_pool: asyncpg.Pool[Any]) -> None:
    acct = await make_account(db_pool)
    tid = await make_trade(db_pool, acct, [("AAPL", "buy", 1)])
    await apply(
        db_pool,
        acct,
        Observation(order("o1", OrderStatus.PARTIALLY_FILLED, "3", "100")),
        links={"o1": Link(tid, Role.ENTRY)},
    )
    await apply(db_pool, acct, Observation(order("o1", OrderStatus.CANCELED, "3", "100")))
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["quantity"], t["close_reason"]) == ("open", 3, None)


async def test_rejected_with_nothing_filled(db_pool: asyncpg.Pool[Any]) -> None:
    acct = await make_account(db_pool)
    tid = await make_trade(db_pool, acct, [("AAPL", "buy", 1)])
    await apply(
        db_pool,
        acct,
        Observation(order("o1", OrderStatus.REJECTED, reason="insufficient buying power")),
        links={"o1": Link(tid, Role.ENTRY)},
    )
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["close_reason"]) == ("rejected", "insufficient buying power")


async def test_linked_by_client_order_id_and_outside_orders_unlinked(db_pool: asyncpg.Pool[Any]) -> None:
    acct = await make_account(db_pool)
    tid = await make_trade(db_pool, acct, [("AAPL", "buy", 1)])
    await db_pool.execute(
        "INSERT INTO order_requests (account_id, kind, trade_id, client_order_id, state) "
        "VALUES ($1, 'open', $2, 'syncd-1-abc', 'submitting')",
        acct,
        tid,
    )
    await apply(
        db_pool,
        acct,
        Observation(order("o1", OrderStatus.FILLED, "10", "100", cid="syncd-1-abc")),
        Observation(order("x9", OrderStatus.FILLED, "5", "99", cid="by-hand", symbol="MSFT")),
    )
    rows = {r["broker_order_id"]: r for r in await db_pool.fetch("SELECT * FROM orders")}
    assert rows["o1"]["trade_id"] == tid and rows["o1"]["role"] == "entry"
    assert rows["x9"]["trade_id"] is None
    assert (await trade_row(db_pool, tid))["quantity"] == 10


async def test_spread_legs_are_child_rows_and_net_debit_price(db_pool: asyncpg.Pool[Any]) -> None:
    acct = await make_account(db_pool)
    long_c, short_c = "AAPL260116C00150000", "AAPL260116C00160000"
    tid = await make_trade(db_pool, acct, [(long_c, "buy", 1), (short_c, "sell", 1)])
    legs = (
        order("l1", OrderStatus.FILLED, "67", "5.00", qty="67", symbol=long_c, side=Side.BUY),
        order("l2", OrderStatus.FILLED, "67", "2.90", qty="67", symbol=short_c, side=Side.SELL),
    )
    await apply(
        db_pool,
        acct,
        Observation(order("m1", OrderStatus.FILLED, "67", "2.10", qty="67", legs=legs)),
        links={"m1": Link(tid, Role.ENTRY)},
    )
    children = await db_pool.fetch("SELECT symbol, parent_id FROM orders WHERE parent_id IS NOT NULL")
    assert {c["symbol"] for c in children} == {long_c, short_c}
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["quantity"], t["entry_price"]) == ("open", 67, Decimal("2.1"))
    # closing it: sell the long at 6.00, buy back the short at 3.50 -> exit 2.50, pnl 0.40 x 67 x 100
    exit_legs = (
        order("l3", OrderStatus.FILLED, "67", "6.00", qty="67", symbol=long_c, side=Side.SELL),
        order("l4", OrderStatus.FILLED, "67", "3.50", qty="67", symbol=short_c, side=Side.BUY),
    )
    await apply(
        db_pool,
        acct,
        Observation(order("m2", OrderStatus.FILLED, "67", "-2.50", qty="67", legs=exit_legs)),
        links={"m2": Link(tid, Role.EXIT)},
    )
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["quantity"], t["exit_price"], t["realized_pnl"]) == (
        "closed",
        0,
        Decimal("2.5"),
        Decimal("2680.00"),
    )


async def test_seed_trade_quantity_follows_held_positions(db_pool: asyncpg.Pool[Any]) -> None:
    """The seed's report: a BULL_CALL_DEBIT recorded with quantity 1 while the account held 67 of each leg."""
    acct = await make_account(db_pool)
    long_c, short_c = "AAPL260116C00150000", "AAPL260116C00160000"
    tid = await make_trade(db_pool, acct, [(long_c, "buy", 1), (short_c, "sell", 1)], quantity="1", status="open")
    for sym, qty in ((long_c, 67), (short_c, -67)):
        await db_pool.execute(
            "INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, option_type, quantity) "
            "VALUES ($1, $2, 'us_option', 'AAPL', 'call', $3)",
            acct,
            sym,
            qty,
        )
    await db_pool.execute("UPDATE accounts SET last_synced_at = now() WHERE id = $1", acct)
    async with db_pool.acquire() as conn, conn.transaction():
        assert await reconcile_quantities(conn, Q, acct) == [tid]
    assert (await trade_row(db_pool, tid))["quantity"] == 67
    # a second live trade on the same symbol: shared positions are verify's to report, not ours to set
    other = await make_trade(db_pool, acct, [(long_c, "buy", 1)], quantity="1", status="open")
    await db_pool.execute("UPDATE portfolio_positions SET quantity = 70 WHERE symbol = $1", long_c)
    async with db_pool.acquire() as conn, conn.transaction():
        assert await reconcile_quantities(conn, Q, acct) == []
    assert (await trade_row(db_pool, other))["quantity"] == 1


async def test_trade_whose_position_was_closed_outside_syncd_is_closed(db_pool: asyncpg.Pool[Any]) -> None:
    """docs/guarantees.md: a trade is `closed` when the position is flat, also when it was closed by hand at the broker.

    Only when every leg is flat and no other live trade claims the symbol; the exit price and
    realized P&L are unknown to syncd and stay NULL.
    """
    acct = await make_account(db_pool)
    long_c, short_c = "AAPL260116C00150000", "AAPL260116C00160000"
    flat = await make_trade(db_pool, acct, [("MSFT", "buy", 1)], quantity="3", status="open")
    half = await make_trade(db_pool, acct, [(long_c, "buy", 1), (short_c, "sell", 1)], quantity="2", status="open")
    await db_pool.execute(
        "INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, option_type, quantity) "
        "VALUES ($1, $2, 'us_option', 'AAPL', 'call', 2)",
        acct,
        long_c,
    )
    await db_pool.execute("UPDATE accounts SET last_synced_at = now() WHERE id = $1", acct)
    async with db_pool.acquire() as conn, conn.transaction():
        assert await reconcile_quantities(conn, Q, acct) == [flat]
    row = await trade_row(db_pool, flat)
    assert (row["status"], row["quantity"], row["close_reason"]) == ("closed", 0, "position closed outside syncd")
    assert row["closed_at"] is not None and row["exit_price"] is None and row["realized_pnl"] is None
    assert (await trade_row(db_pool, half))["status"] == "open"  # one leg still held: verify reports it
    # two live trades on one flat symbol: neither is closed by this rule
    a = await make_trade(db_pool, acct, [("IBM", "buy", 1)], quantity="1", status="open")
    b = await make_trade(db_pool, acct, [("IBM", "buy", 1)], quantity="1", status="open")
    async with db_pool.acquire() as conn, conn.transaction():
        assert await reconcile_quantities(conn, Q, acct) == []
    assert {(await trade_row(db_pool, t))["status"] for t in (a, b)} == {"open"}


@pytest.mark.parametrize("status", ["pending_review"])
async def test_alpaca_status_vocabulary_includes_pending_review(db_pool: asyncpg.Pool[Any], status: str) -> None:
    acct = await make_account(db_pool)
    await apply(db_pool, acct, Observation(order("o1", OrderStatus(status))))
    assert await db_pool.fetchval("SELECT status FROM orders") == status


# -- whole passes against the simulator ---------------------------------------------------------------------


sim = sim_fixture(seed=3, accounts=1, positions_per_account=0)


async def test_outside_orders_mirrored_unlinked_with_legs_and_idle_pass_writes_nothing(
    sim: Simulator, make_context: Any
) -> None:
    exp = sim.market.expirations()[0]  # a contract that has not expired (the simulator refuses those)
    long_c = occ_symbol("AAPL", exp, "call", Decimal(150))
    short_c = occ_symbol("AAPL", exp, "call", Decimal(160))
    async with make_context(accounts=[sim.account_settings(0)]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        stock = sim.place_outside_order(0, "MSFT", "buy", 5)
        spread = sim.place_outside_order(0, legs=[(long_c, "buy", 1), (short_c, "sell", 1)], qty=2)
        summary = await run_pass(ctx, "tradeCycle", trade_cycle.account_pass, [acct])
        assert summary.ok
        rows = {r["broker_order_id"]: r for r in await ctx.pool.fetch("SELECT * FROM orders")}
        assert rows[stock.id]["trade_id"] is None and rows[stock.id]["status"] == "filled"
        assert rows[spread.id]["order_class"] == "mleg" and rows[spread.id]["trade_id"] is None
        legs = [r for r in rows.values() if r["parent_id"] == rows[spread.id]["id"]]
        assert sorted(r["symbol"] for r in legs) == sorted([long_c, short_c])
        assert await ctx.pool.fetchval("SELECT count(*) FROM order_events WHERE source = 'poll'") >= 2

        async def snapshot() -> tuple[Any, ...]:
            return tuple(
                [
                    await ctx.pool.fetchval("SELECT max(updated_at) FROM orders"),
                    await ctx.pool.fetchval("SELECT count(*) FROM order_events"),
                    await ctx.pool.fetchval("SELECT updated_at FROM trade_cycle_state"),
                ]
            )

        before = await snapshot()
        stats = await trade_cycle.account_pass(ctx, acct)
        assert (stats["orders_written"], stats["order_events"], stats["trades_changed"]) == (0, 0, 0)
        assert await snapshot() == before  # an idle pass writes nothing


async def test_a_working_order_older_than_the_watermark_is_still_followed(sim: Simulator, make_context: Any) -> None:
    """Listing by submission time misses an old order that changes now: syncd asks for it by id."""
    async with make_context(accounts=[sim.account_settings(0)]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        old = sim.place_outside_order(0, "AAPL", "buy", 5, type="limit", limit_price=1)
        await trade_cycle.account_pass(ctx, acct)
        await ctx.pool.execute("UPDATE trade_cycle_state SET orders_watermark = now() + interval '1 day'")
        await ctx.pool.execute("UPDATE orders SET submitted_at = now() + interval '1 day'")  # as if long ago
        sim.fill(old.id, qty=2, price="1")
        await trade_cycle.account_pass(ctx, acct)
        row = await ctx.pool.fetchrow("SELECT status, filled_qty FROM orders WHERE broker_order_id = $1", old.id)
        assert (row["status"], row["filled_qty"]) == ("partially_filled", 2)


async def test_the_watermark_moves_once_it_is_a_step_old_and_is_not_sent_before(
    sim: Simulator, make_context: Any
) -> None:
    """A pass that read a watermark newer than ``WATERMARK_STEP`` does not send it (nothing would be
    written); one older than that is moved to the pass's start."""
    async with make_context(accounts=[sim.account_settings(0)]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await trade_cycle.account_pass(ctx, acct)
        first = await ctx.pool.fetchval("SELECT orders_watermark FROM trade_cycle_state")
        assert first is not None
        now = dt.datetime.now(dt.UTC)
        assert not trade_cycle.watermark_due(first, now)
        assert trade_cycle.watermark_due(None, now)
        assert trade_cycle.watermark_due(now - trade_cycle.WATERMARK_STEP - dt.timedelta(seconds=1), now)
        await trade_cycle.account_pass(ctx, acct)
        assert await ctx.pool.fetchval("SELECT orders_watermark FROM trade_cycle_state") == first
        await ctx.pool.execute("UPDATE trade_cycle_state SET orders_watermark = orders_watermark - interval '1 hour'")
        await trade_cycle.account_pass(ctx, acct)
        moved = await ctx.pool.fetchval("SELECT orders_watermark FROM trade_cycle_state")
        assert moved > first
