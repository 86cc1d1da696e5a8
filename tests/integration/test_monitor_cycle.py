"""monitorCycle on a real database: quotes, trade P&L, the views, exits.

Positions, trades and legs are inserted directly (precise fixtures); quotes come from a
small in-process broker (``QuoteBroker``) that counts its calls. The end-to-end run over
the simulator is at the end of this file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from syncd.brokers.types import Balances, Clock, Greeks, Quote
from syncd.context import Account, Context
from syncd.cycles import task_by_short
from syncd.cycles.monitor_cycle import account_pass, monitor_account
from syncd.daemon.passes import run_pass
from syncd.settings import AccountSettings

D = Decimal
TODAY = dt.date(2025, 12, 3)
LONG_CALL = "AAPL260116C00150000"
SHORT_CALL = "AAPL260116C00160000"
SPY_SHORT = "SPY260116C00600000"
SPY_LONG = "SPY260116C00610000"
QQQ_SHORT_PUT = "QQQ260116P00500000"
QQQ_LONG_PUT = "QQQ260116P00490000"


class QuoteBroker:
    """Just enough of a ``Broker`` for monitorCycle: quotes from a dict, calls counted."""

    kind = "alpaca"
    supports_stream = False

    def __init__(self) -> None:
        self.quotes: dict[str, Quote] = {}
        self.calls: list[list[str]] = []

    @property
    def request_count(self) -> int:
        return len(self.calls)

    async def get_account(self) -> Balances:
        self.calls.append(["account"])
        z = D("0")
        return Balances("acct", z, z, z, z, z)

    def set(
        self, symbol: str, bid: str | None, ask: str | None, last: str | None = None, delta: str | None = None
    ) -> None:
        self.quotes[symbol] = Quote(
            symbol=symbol,
            bid=None if bid is None else D(bid),
            ask=None if ask is None else D(ask),
            last=None if last is None else D(last),
            at=dt.datetime(2025, 12, 3, 16, 48, 40, tzinfo=dt.UTC),
            greeks=Greeks(delta=D(delta)) if delta else None,
        )

    async def get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        self.calls.append(list(symbols))
        return {s: self.quotes[s] for s in symbols if s in self.quotes}

    async def get_clock(self) -> Clock:  # pragma: no cover - not used here
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


ALPACA = AccountSettings(
    name="tradier-main", broker="alpaca", api_key="k", api_secret="s", base_url="http://127.0.0.1:9"
)


@asynccontextmanager
async def environment(make_context: Any, **trading: Any) -> AsyncIterator[tuple[Context, Account, QuoteBroker]]:
    """A Context on the test database whose one account answers quotes from a ``QuoteBroker``.

    Opened inside the test (not in a fixture) so the pool lives on the test's event loop.
    """
    async with make_context(accounts=[ALPACA], trading=trading or {"enabled": True, "auto_exits": True}) as ctx:
        broker = QuoteBroker()
        acct = dataclasses.replace(ctx.accounts[ALPACA.name], broker=broker)
        ctx.accounts[ALPACA.name] = acct
        yield ctx, acct, broker


async def add_position(
    pool: asyncpg.Pool[Any], account_id: int, symbol: str, qty: int | str, cost_basis: str | None = None
) -> None:
    is_option = len(symbol) > 6
    await pool.execute(
        """INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, option_type,
                                            expiration, multiplier, quantity, qty_available, cost_basis)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)""",
        account_id,
        symbol,
        "us_option" if is_option else "us_equity",
        symbol[:-15] if is_option else symbol,
        ("call" if symbol[-9] == "C" else "put") if is_option else None,
        dt.date(2000 + int(symbol[-15:-13]), int(symbol[-13:-11]), int(symbol[-11:-9])) if is_option else None,
        D(100) if is_option else D(1),
        D(qty),
        None if cost_basis is None else D(cost_basis),
    )


async def add_trade(
    pool: asyncpg.Pool[Any],
    account_id: int,
    strategy: str,
    legs: list[tuple[str, str]],
    *,
    quantity: int = 1,
    entry: str = "2.10",
    tp: int | None = 50,
    sl: int | None = None,
    status: str = "open",
) -> int:
    trade_id: int = await pool.fetchval(
        """INSERT INTO trades (account_id, symbol, strategy, status, quantity, entry_price,
                               take_profit_pct, stop_loss_pct, opened_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now()) RETURNING id""",
        account_id,
        legs[0][0][:-15] if len(legs[0][0]) > 6 else legs[0][0],
        strategy,
        status,
        D(quantity),
        D(entry),
        None if tp is None else D(tp),
        None if sl is None else D(sl),
    )
    await pool.executemany(
        "INSERT INTO trade_legs (trade_id, leg_index, symbol, side, ratio) VALUES ($1, $2, $3, $4, 1)",
        [(trade_id, i, sym, side) for i, (sym, side) in enumerate(legs)],
    )
    return trade_id


async def seed(ctx: Context, acct: Account, broker: QuoteBroker, *, entry: str = "1.60") -> int:
    """The seed report: AAPL BULL_CALL_DEBIT recorded with quantity 1; 67 of each leg held."""
    await add_position(ctx.pool, acct.id, LONG_CALL, 67, cost_basis="10720")
    await add_position(ctx.pool, acct.id, SHORT_CALL, -67, cost_basis="-0")
    broker.set(LONG_CALL, "4.90", "5.10", delta="0.62")
    broker.set(SHORT_CALL, "2.40", "2.60", delta="0.41")
    return await add_trade(
        ctx.pool, acct.id, "BULL_CALL_DEBIT", [(LONG_CALL, "buy"), (SHORT_CALL, "sell")], entry=entry
    )


async def monitor_row(pool: asyncpg.Pool[Any], trade_id: int) -> asyncpg.Record:
    row: asyncpg.Record | None = await pool.fetchrow("SELECT * FROM v_trade_monitor WHERE trade_id = $1", trade_id)
    assert row is not None
    return row


async def close_requests(pool: asyncpg.Pool[Any], trade_id: int) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM order_requests WHERE trade_id = $1 AND kind = 'close' ORDER BY id", trade_id)


# -- the seed case -----------------------------------------------------------------------------


async def test_seed_case_monitors_and_exits_the_67_held(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        trade_id = await seed(ctx, acct, broker)

        stats = await monitor_account(ctx, acct, today=TODAY)

        assert broker.calls == [sorted([LONG_CALL, SHORT_CALL])]  # one batched call for every held symbol
        assert stats["exits_queued"] == 1
        expected_pnl = (D("5.00") - D("2.50") - D("1.60")) * 67 * 100
        trade = await ctx.pool.fetchrow("SELECT * FROM trades WHERE id = $1", trade_id)
        assert trade is not None
        assert trade["current_price"] == D("2.50")
        assert trade["floating_pnl"] == expected_pnl
        assert trade["status"] == "closing"
        assert trade["close_reason"] == "take_profit"
        assert trade["quantity"] == 1  # never rewritten by monitoring

        view = await monitor_row(ctx.pool, trade_id)
        assert view["quantity"] == 67
        assert view["trade_quantity"] == 1
        assert view["available_quantity"] == 67
        assert view["can_monitor"] is True
        assert view["can_exit"] is True
        assert view["floating_pnl"] == expected_pnl
        assert view["exit_pending"] is True

        requests = await close_requests(ctx.pool, trade_id)
        assert len(requests) == 1
        assert requests[0]["payload"] == {"type": "market", "qty": 67, "reason": "take_profit"}
        assert requests[0]["client_order_id"] is None
        assert requests[0]["state"] == "queued"
        assert requests[0]["account_id"] == acct.id


async def test_quotes_written_to_positions(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        await seed(ctx, acct, broker)
        await monitor_account(ctx, acct, today=TODAY)
        rows = {
            r["symbol"]: r
            for r in await ctx.pool.fetch("SELECT * FROM portfolio_positions WHERE account_id = $1", acct.id)
        }
        long, short = rows[LONG_CALL], rows[SHORT_CALL]
        assert (long["bid"], long["ask"], long["current_price"]) == (D("4.90"), D("5.10"), D("5.00"))
        assert long["market_value"] == D(33500)
        assert long["unrealized_pl"] == D(33500 - 10720)
        assert long["delta"] == D("0.62")
        assert long["quote_at"] == dt.datetime(2025, 12, 3, 16, 48, 40, tzinfo=dt.UTC)
        assert short["market_value"] == D(-16750)  # a short's value is negative
        assert short["quantity"] == -67  # quantities are accountSync's: untouched


async def test_views_columns_and_leg_keys(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        trade_id = await seed(ctx, acct, broker)
        await monitor_account(ctx, acct, today=TODAY)
        view = await monitor_row(ctx.pool, trade_id)
        required = [
            "trade_id",
            "account_id",
            "symbol",
            "strategy",
            "quantity",
            "available_quantity",
            "can_monitor",
            "can_exit",
            "current_price",
            "floating_pnl",
            "legs",
        ]
        assert list(view.keys())[: len(required)] == required
        legs = view["legs"]
        assert [set(leg) for leg in legs] == [{"symbol", "side", "ratio", "position_quantity", "bid", "ask"}] * 2
        assert legs[0] == {
            "symbol": LONG_CALL,
            "side": "buy",
            "ratio": 1,
            "position_quantity": 67,
            "bid": 4.9,
            "ask": 5.1,
        }
        assert legs[1]["position_quantity"] == -67

        cols = [
            r["column_name"]
            for r in await ctx.pool.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'v_position_mismatches' "
                "AND table_schema = current_schema() ORDER BY ordinal_position"
            )
        ]
        assert cols == ["account_id", "symbol", "kind", "position_quantity", "trade_quantity"]


async def test_position_mismatches(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        await seed(ctx, acct, broker)
        await add_position(ctx.pool, acct.id, "MSFT", 10)  # no trade: untracked
        await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("NVDA", "buy")], quantity=5)  # nothing held: missing
        rows = await ctx.pool.fetch(
            "SELECT symbol, kind, position_quantity, trade_quantity FROM v_position_mismatches WHERE account_id = $1 "
            "ORDER BY symbol",
            acct.id,
        )
        assert [tuple(r) for r in rows] == [
            (LONG_CALL, "quantity_mismatch", 67, 1),  # the seed's stale trades.quantity
            (SHORT_CALL, "quantity_mismatch", -67, -1),
            ("MSFT", "untracked_position", 10, 0),
            ("NVDA", "missing_position", 0, 5),
        ]
        await ctx.pool.execute("UPDATE trades SET quantity = 67 WHERE strategy = 'BULL_CALL_DEBIT'")
        left = await ctx.pool.fetch("SELECT symbol FROM v_position_mismatches WHERE account_id = $1", acct.id)
        assert sorted(r["symbol"] for r in left) == ["MSFT", "NVDA"]


async def test_shared_symbol_and_legless_trades(make_context: Any) -> None:
    """Two trades on one position each hold their own share; a trade without legs is its symbol, bought."""
    async with environment(make_context) as (ctx, acct, broker):
        await add_position(ctx.pool, acct.id, "AAPL", 100, cost_basis="18000")
        broker.set("AAPL", "189.90", "190.10")
        a = await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("AAPL", "buy")], quantity=30, entry="180", tp=None)
        b = await add_trade(ctx.pool, acct.id, "LONG_STOCK", [("AAPL", "buy")], quantity=70, entry="180", tp=None)
        await add_position(ctx.pool, acct.id, "MSFT", "2.5", cost_basis="1000")
        broker.set("MSFT", "409.90", "410.10")
        legless: int = await ctx.pool.fetchval(
            "INSERT INTO trades (account_id, symbol, strategy, status, quantity, entry_price)"
            " VALUES ($1, 'MSFT', 'LONG_STOCK', 'open', 2.5, 400) RETURNING id",
            acct.id,
        )
        await monitor_account(ctx, acct, today=TODAY)
        rows = {r["trade_id"]: r for r in await ctx.pool.fetch("SELECT * FROM v_trade_monitor")}
        assert (rows[a]["quantity"], rows[a]["available_quantity"], rows[a]["floating_pnl"]) == (30, 30, D(300))
        assert (rows[b]["quantity"], rows[b]["available_quantity"], rows[b]["floating_pnl"]) == (70, 70, D(700))
        assert rows[legless]["quantity"] == D("2.5")  # fractional shares are kept
        assert rows[legless]["floating_pnl"] == D(25)
        assert [leg["symbol"] for leg in rows[legless]["legs"]] == ["MSFT"]
        assert await ctx.pool.fetch("SELECT * FROM v_position_mismatches") == []
        await ctx.pool.execute("UPDATE trades SET quantity = 50 WHERE id = $1", b)
        mismatch = await ctx.pool.fetchrow("SELECT kind, position_quantity, trade_quantity FROM v_position_mismatches")
        assert mismatch is not None
        assert tuple(mismatch) == ("quantity_mismatch", 100, 80)
        assert (await monitor_row(ctx.pool, b))["quantity"] == 50  # capped at its own share


# -- signs -------------------------------------------------------------------------------------


async def test_credit_spreads_signs(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        await add_position(ctx.pool, acct.id, SPY_SHORT, -10)
        await add_position(ctx.pool, acct.id, SPY_LONG, 10)
        broker.set(SPY_SHORT, "1.40", "1.60")
        broker.set(SPY_LONG, "0.50", "0.70")
        bear = await add_trade(
            ctx.pool,
            acct.id,
            "BEAR_CALL_CREDIT",
            [(SPY_SHORT, "sell"), (SPY_LONG, "buy")],
            quantity=10,
            entry="2.00",
            tp=None,
        )
        await add_position(ctx.pool, acct.id, QQQ_SHORT_PUT, -35)
        await add_position(ctx.pool, acct.id, QQQ_LONG_PUT, 35)
        broker.set(QQQ_SHORT_PUT, "3.90", "4.10")
        broker.set(QQQ_LONG_PUT, "0.90", "1.10")
        bull = await add_trade(
            ctx.pool,
            acct.id,
            "BULL_PUT_CREDIT",
            [(QQQ_SHORT_PUT, "sell"), (QQQ_LONG_PUT, "buy")],
            quantity=35,
            entry="2.50",
            tp=None,
        )

        await monitor_account(ctx, acct, today=TODAY)

        bear_row = await monitor_row(ctx.pool, bear)
        assert bear_row["current_price"] == D("0.90")  # what buying it back costs, per unit
        assert bear_row["floating_pnl"] == D("1.10") * 10 * 100  # credit 2.00 kept down to 0.90: a gain
        bull_row = await monitor_row(ctx.pool, bull)
        assert bull_row["current_price"] == D("3.00")
        assert bull_row["floating_pnl"] == D("-0.50") * 35 * 100  # dearer than the 2.50 credit: a loss


# -- exits -------------------------------------------------------------------------------------


async def test_one_sided_quote_blocks_the_exit(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        trade_id = await seed(ctx, acct, broker)
        broker.set(SHORT_CALL, None, "2.60", last="2.50")  # no bid
        stats = await monitor_account(ctx, acct, today=TODAY)
        assert stats["exits_queued"] == 0
        assert stats["exits_blocked_no_two_sided_quote"] == 1
        assert await close_requests(ctx.pool, trade_id) == []
        view = await monitor_row(ctx.pool, trade_id)
        assert view["can_monitor"] is False
        assert view["can_exit"] is True
        assert (await ctx.pool.fetchval("SELECT status FROM trades WHERE id = $1", trade_id)) == "open"


async def test_unquoted_symbol_loses_its_bid_and_ask(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        trade_id = await seed(ctx, acct, broker, entry="2.40")  # no rule fires
        await monitor_account(ctx, acct, today=TODAY)
        del broker.quotes[SHORT_CALL]
        stats = await monitor_account(ctx, acct, today=TODAY)
        assert stats["quoted"] == 1
        row = await ctx.pool.fetchrow(
            "SELECT bid, ask, current_price, quote_at FROM portfolio_positions WHERE symbol = $1", SHORT_CALL
        )
        assert row is not None
        assert (row["bid"], row["ask"]) == (None, None)
        assert row["current_price"] == D("2.50")  # the last mark is kept
        assert row["quote_at"] is not None
        assert (await monitor_row(ctx.pool, trade_id))["can_monitor"] is False


async def test_working_closing_order_reduces_available_quantity(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        trade_id = await seed(ctx, acct, broker)
        # Orders placed by hand at the broker (no trade): they hold 20 of each leg.
        await ctx.pool.executemany(
            """INSERT INTO orders (account_id, broker_order_id, symbol, asset_class, side, qty, filled_qty, status)
               VALUES ($1, $2, $3, 'us_option', $4, 25, 5, 'partially_filled')""",
            [(acct.id, "hand-1", LONG_CALL, "sell"), (acct.id, "hand-2", SHORT_CALL, "buy")],
        )
        # A filled or opening order holds nothing.
        await ctx.pool.execute(
            """INSERT INTO orders (account_id, broker_order_id, symbol, side, qty, status)
               VALUES ($1, 'done', $2, 'sell', 30, 'filled'), ($1, 'opening', $2, 'buy', 30, 'new')""",
            acct.id,
            LONG_CALL,
        )
        view = await monitor_row(ctx.pool, trade_id)
        assert view["quantity"] == 67
        assert view["available_quantity"] == 47

        await monitor_account(ctx, acct, today=TODAY)
        requests = await close_requests(ctx.pool, trade_id)
        assert [r["payload"] for r in requests] == [{"type": "market", "qty": 47, "reason": "take_profit"}]


async def test_working_closing_order_of_the_trade_means_no_exit(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        trade_id = await seed(ctx, acct, broker)
        parent = await ctx.pool.fetchval(
            """INSERT INTO orders (account_id, broker_order_id, trade_id, symbol, order_class, qty, status, intent)
               VALUES ($1, 'mleg-1', $2, 'AAPL', 'mleg', 67, 'accepted', 'close') RETURNING id""",
            acct.id,
            trade_id,
        )
        await ctx.pool.executemany(
            """INSERT INTO orders (account_id, broker_order_id, parent_id, symbol, asset_class, side, intent,
                                   qty, ratio_qty, status)
               VALUES ($1, $2, $3, $4, 'us_option', $5, 'close', 0, 1, 'accepted')""",
            [(acct.id, "leg-1", parent, LONG_CALL, "sell"), (acct.id, "leg-2", parent, SHORT_CALL, "buy")],
        )
        view = await monitor_row(ctx.pool, trade_id)
        assert view["available_quantity"] == 0  # the legs' quantity comes from the parent x ratio
        assert view["can_exit"] is False
        assert view["exit_pending"] is True
        stats = await monitor_account(ctx, acct, today=TODAY)
        assert stats["exits_queued"] == 0
        assert await close_requests(ctx.pool, trade_id) == []


async def test_no_second_exit_while_one_works(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        trade_id = await seed(ctx, acct, broker)
        await monitor_account(ctx, acct, today=TODAY)
        await monitor_account(ctx, acct, today=TODAY)  # the trade is closing
        # Even if something put the trade back to open, the queued request still blocks.
        await ctx.pool.execute("UPDATE trades SET status = 'open' WHERE id = $1", trade_id)
        stats = await monitor_account(ctx, acct, today=TODAY)
        assert stats["exits_blocked_exit_pending"] == 1
        # Submitted, and its order still works (or is not yet mirrored): still blocked.
        await ctx.pool.execute(
            "UPDATE order_requests SET state = 'submitted', client_order_id = 'c-1', broker_order_id = 'b-1'"
        )
        await monitor_account(ctx, acct, today=TODAY)
        assert len(await close_requests(ctx.pool, trade_id)) == 1
        # Its order was canceled: the rule may fire again.
        await ctx.pool.execute(
            "INSERT INTO orders (account_id, broker_order_id, client_order_id, trade_id, symbol, order_class, qty,"
            " status) VALUES ($1, 'b-1', 'c-1', $2, 'AAPL', 'mleg', 67, 'canceled')",
            acct.id,
            trade_id,
        )
        stats = await monitor_account(ctx, acct, today=TODAY)
        assert stats["exits_queued"] == 1
        assert len(await close_requests(ctx.pool, trade_id)) == 2


async def test_concurrent_passes_queue_one_exit(make_context: Any) -> None:
    """Two instances (or sync-once beside the daemon) racing over one account: one exit."""
    async with environment(make_context) as (ctx, acct, broker):
        trade_id = await seed(ctx, acct, broker)
        await asyncio.gather(*(monitor_account(ctx, acct, today=TODAY) for _ in range(4)))
        assert len(await close_requests(ctx.pool, trade_id)) == 1


async def test_exits_need_trading_enabled_and_auto_exits(make_context: Any) -> None:
    for trading in ({"enabled": False, "auto_exits": True}, {"enabled": True, "auto_exits": False}):
        async with make_context(accounts=[ALPACA], trading=trading) as ctx:
            broker = QuoteBroker()
            acct = dataclasses.replace(ctx.accounts[ALPACA.name], broker=broker)
            trade_id = await seed(ctx, acct, broker)
            stats = await monitor_account(ctx, acct, today=TODAY)
            assert stats["exits_queued"] == 0
            assert await close_requests(ctx.pool, trade_id) == []
            assert (await monitor_row(ctx.pool, trade_id))["floating_pnl"] == D("0.90") * 6700
            await ctx.pool.execute("DELETE FROM trades; DELETE FROM portfolio_positions")


async def test_days_before_expiration_rule(make_context: Any) -> None:
    async with make_context(
        accounts=[ALPACA], trading={"enabled": True, "auto_exits": True, "exit_days_before_expiration": 50}
    ) as ctx:
        broker = QuoteBroker()
        acct = dataclasses.replace(ctx.accounts[ALPACA.name], broker=broker)
        trade_id = await seed(ctx, acct, broker, entry="2.40")  # no P&L rule fires
        await monitor_account(ctx, acct, today=TODAY)  # 44 days left <= 50
        assert (await ctx.pool.fetchval("SELECT close_reason FROM trades WHERE id = $1", trade_id)) == (
            "days_before_expiration"
        )


# -- writes ------------------------------------------------------------------------------------


async def test_only_changed_rows_are_written(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        await seed(ctx, acct, broker, entry="2.40")
        await add_position(ctx.pool, acct.id, "MSFT", 10, cost_basis="4000")
        broker.set("MSFT", "409.90", "410.10")
        first = await monitor_account(ctx, acct, today=TODAY)
        assert (first["positions_written"], first["trades_written"]) == (3, 1)
        stamps = await ctx.pool.fetch("SELECT symbol, updated_at FROM portfolio_positions ORDER BY symbol")
        trade_stamp = await ctx.pool.fetchval("SELECT updated_at FROM trades")

        idle = await monitor_account(ctx, acct, today=TODAY)
        assert (idle["positions_written"], idle["trades_written"]) == (0, 0)
        assert await ctx.pool.fetch("SELECT symbol, updated_at FROM portfolio_positions ORDER BY symbol") == stamps
        assert await ctx.pool.fetchval("SELECT updated_at FROM trades") == trade_stamp

        broker.set("MSFT", "409.80", "410.10")  # one quote moves; no trade holds MSFT
        moved = await monitor_account(ctx, acct, today=TODAY)
        assert (moved["positions_written"], moved["trades_written"]) == (1, 0)


async def test_no_positions_no_broker_request(make_context: Any) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        ctx.auth[acct.id] = None  # an earlier call showed the credentials work
        stats = await monitor_account(ctx, acct, today=TODAY)
        assert broker.calls == []
        assert stats["positions"] == 0


async def test_no_positions_and_credentials_not_yet_proven_asks_for_the_account_once(make_context: Any) -> None:
    """Issue 13: with nothing to quote the pass would ask the broker nothing, and "ok" would prove
    nothing; until some call shows the credentials work, it makes one cheap call (get_account)."""
    async with environment(make_context) as (ctx, acct, broker):
        assert acct.id not in ctx.auth
        await monitor_account(ctx, acct, today=TODAY)
        assert broker.calls == [["account"]]


async def test_notifications_on_commit(make_context: Any, dsn: str) -> None:
    async with environment(make_context) as (ctx, acct, broker):
        trade_id = await seed(ctx, acct, broker)
        got: list[dict[str, Any]] = []
        listener = await asyncpg.connect(dsn)
        try:
            await listener.add_listener("syncd_events", lambda *a: got.append(json.loads(a[3])))
            await monitor_account(ctx, acct, today=TODAY)
            from tests.helpers import wait_for

            await wait_for(lambda: len(got) >= 3, timeout=5)
        finally:
            await listener.close()
        assert {"kind": "trade", "account": acct.name, "key": trade_id, "exit": "take_profit"} in got
        assert {"kind": "position", "account": acct.name, "key": LONG_CALL} in got


async def test_pass_through_the_registry(make_context: Any) -> None:
    """``sync-once --task monitor`` finds ``account_pass`` through the task registry."""
    async with environment(make_context) as (ctx, acct, broker):
        await seed(ctx, acct, broker)
        spec = task_by_short("monitor")
        assert spec.account_pass is account_pass
        summary = await run_pass(ctx, spec.name, spec.account_pass, [acct])
        assert summary.ok, summary.failed
        run = await ctx.pool.fetchrow("SELECT ok, stats FROM sync_runs WHERE task = 'monitorCycle'")
        assert run is not None
        assert run["ok"] is True
        assert run["stats"]["broker_requests"] == 1


# -- end to end, on the simulator --------------------------------------------------------------


@pytest.mark.parametrize("broker_kind", ["alpaca", "tradier"])
async def test_seed_case_end_to_end_on_the_simulator(make_context: Any, broker_kind: str) -> None:
    """accountSync mirrors the simulator's book, monitorCycle quotes it over the wire, exits for 67."""
    from syncd.sim import SimConfig, start_simulator

    sim = await start_simulator(SimConfig(seed=5, accounts=1, positions_per_account=6))
    try:
        long_call, short_call = list(sim.account(0).positions)[:2]  # the book's bull call debit spread
        sim.add_position(0, long_call, 67, "3.00")
        sim.add_position(0, short_call, -67, "1.40")
        sim.set_price(long_call, "4.90", "5.10")
        sim.set_price(short_call, "2.40", "2.60")
        settings = sim.account_settings(0, broker_kind)  # type: ignore[arg-type]
        async with make_context(accounts=[settings], trading={"enabled": True, "auto_exits": True}) as ctx:
            acct = ctx.accounts[settings.name]
            synced = await run_pass(ctx, "accountSync", task_by_short("account").account_pass, [acct])
            assert synced.ok, synced.failed
            trade_id = await add_trade(
                ctx.pool, acct.id, "BULL_CALL_DEBIT", [(long_call, "buy"), (short_call, "sell")], entry="1.60"
            )

            summary = await run_pass(ctx, "monitorCycle", account_pass, [acct])

            assert summary.ok, summary.failed
            stats = summary.results[0].stats
            assert stats["positions"] == 6
            assert stats["quoted"] == 6
            assert stats["broker_requests"] <= 2  # batched: stocks and options, not one per position
            view = await monitor_row(ctx.pool, trade_id)
            assert (view["quantity"], view["trade_quantity"]) == (67, 1)
            assert view["can_monitor"] is True
            assert view["can_exit"] is True
            assert view["floating_pnl"] == (D("5.00") - D("2.50") - D("1.60")) * 67 * 100
            assert [r["payload"] for r in await close_requests(ctx.pool, trade_id)] == [
                {"type": "market", "qty": 67, "reason": "take_profit"}
            ]
            greeks = await ctx.pool.fetchval("SELECT delta FROM portfolio_positions WHERE symbol = $1", long_call)
            assert greeks is not None
    finally:
        await sim.stop()


async def test_exit_goes_through_the_outbox_to_the_broker(make_context: Any) -> None:
    """The whole story: monitorCycle queues the exit, tradeCycle places it for the 67 held, the book goes flat."""
    from syncd.sim import SimConfig, start_simulator

    sim = await start_simulator(SimConfig(seed=5, accounts=1, positions_per_account=6))
    try:
        long_call, short_call = list(sim.account(0).positions)[:2]
        sim.add_position(0, long_call, 67, "3.00")
        sim.add_position(0, short_call, -67, "1.40")
        sim.set_price(long_call, "4.90", "5.10")
        sim.set_price(short_call, "2.40", "2.60")
        settings = sim.account_settings(0, "alpaca")
        async with make_context(accounts=[settings], trading={"enabled": True, "auto_exits": True}) as ctx:
            acct = ctx.accounts[settings.name]
            account_sync, trade_cycle = task_by_short("account").account_pass, task_by_short("trade").account_pass
            assert (await run_pass(ctx, "accountSync", account_sync, [acct])).ok
            trade_id = await add_trade(
                ctx.pool, acct.id, "BULL_CALL_DEBIT", [(long_call, "buy"), (short_call, "sell")], entry="1.60"
            )
            assert (await run_pass(ctx, "monitorCycle", account_pass, [acct])).ok
            assert (await run_pass(ctx, "tradeCycle", trade_cycle, [acct])).ok

            placed = [o for o in sim.account(0).orders if o.source != "outside"]
            assert len(placed) == 1
            assert placed[0].qty == 67
            request = (await close_requests(ctx.pool, trade_id))[0]
            assert request["state"] == "submitted"
            assert request["client_order_id"] is not None

            for name, fn in (("accountSync", account_sync), ("tradeCycle", trade_cycle)):
                assert (await run_pass(ctx, name, fn, [acct])).ok  # type: ignore[arg-type]
            assert long_call not in sim.account(0).positions
            assert short_call not in sim.account(0).positions
            trade = await ctx.pool.fetchrow("SELECT status, close_reason FROM trades WHERE id = $1", trade_id)
            assert trade is not None
            assert trade["close_reason"] == "take_profit"
            assert trade["status"] == "closed"
            stats = (await run_pass(ctx, "monitorCycle", account_pass, [acct])).results[0].stats
            assert stats["exits_queued"] == 0
            assert len(await close_requests(ctx.pool, trade_id)) == 1
    finally:
        await sim.stop()
