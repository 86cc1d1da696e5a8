"""monitorCycle's kept judgement (``accounts.monitor_rest``, migration 0021), on real Postgres and the simulator.

A pass whose quotes are at rest (``rows_seen``) and whose exit rules' every input is as the kept
judgement found it (``judged_key``) neither reads nor judges the trades, in this process or any
other. Every input change -- to a trade, a leg, an order, a request, a held row or a row held at
0, the date, a truncated table -- makes the next pass judge, whoever made it and under whatever
``search_path``; so does a change that lands between a pass's first read and its read of the
trades. A judgement that queued an exit is not kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from syncd.context import Account, Context
from syncd.cycles import account_sync, monitor_cycle
from syncd.daemon.housekeeping import INPUT_CHANGES_KEPT_S
from syncd.db import apply_migrations
from syncd.settings import DatabaseSettings
from tests.integration.test_monitor_cycle import add_trade, close_requests
from tests.simfixtures import sim_fixture

sim = sim_fixture(seed=37, accounts=1, positions_per_account=6)

TRADING = {"enabled": True, "auto_exits": True}
REST = "SELECT monitor_rest FROM accounts WHERE id = $1"


@asynccontextmanager
async def _spread(make_context: Any, sim: Any) -> AsyncIterator[tuple[Context, Account, int, list[str]]]:
    """The simulator's book mirrored, one open spread on two of its options (no rule fires), judged once."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")], trading=TRADING) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        legs = [s for s in sim.account(0).positions if len(s) > 6][:2]
        trade_id = await add_trade(ctx.pool, acct.id, "BULL_CALL_DEBIT", [(legs[0], "buy"), (legs[1], "sell")], tp=None)
        first = await monitor_cycle.account_pass(ctx, acct)
        assert first["judged"] and first["trades"] == 1 and first["exits_queued"] == 0
        yield ctx, acct, trade_id, legs


async def test_an_account_at_rest_is_not_judged_again_in_any_process(make_context: Any, sim: Any) -> None:
    async with _spread(make_context, sim) as (ctx, acct, _trade, _legs):
        kept = await ctx.pool.fetchval(REST, acct.id)
        assert kept["seen"] and kept["judged"] and kept["trades"] == 1
        again = await monitor_cycle.account_pass(ctx, acct)
        assert not again["judged"]
        assert (again["trades"], again["monitorable"], again["positions_written"]) == (1, 1, 0)
        assert await ctx.pool.fetchval(REST, acct.id) == kept  # a pass at rest writes nothing
        # A new process (a later `syncd sync-once`) reads what this one kept.
        async with make_context(accounts=[sim.account_settings(0, broker="alpaca")], trading=TRADING) as fresh:
            other = next(iter(fresh.accounts.values()))
            assert not (await monitor_cycle.account_pass(fresh, other))["judged"]


Change = Callable[["asyncpg.Connection[Any]", int, int, list[str]], Awaitable[Any]]

# Each statement runs on a connection of its own with the server's default search_path (the
# tables named with their schema), as a user's hand edit or another program would.
CHANGES: dict[str, Change] = {
    "a trade's rule": lambda c, a, t, legs: c.execute("UPDATE syncd.trades SET take_profit_pct = 900 WHERE id = $1", t),
    "a trade's status": lambda c, a, t, legs: c.execute("UPDATE syncd.trades SET status = 'closing' WHERE id = $1", t),
    "a leg": lambda c, a, t, legs: c.execute("UPDATE syncd.trade_legs SET ratio = 2 WHERE trade_id = $1", t),
    "a working order": lambda c, a, t, legs: c.execute(
        """INSERT INTO syncd.orders (account_id, broker_order_id, symbol, asset_class, side, intent, qty, status)
           VALUES ($1, 'hand-1', $2, 'us_option', 'sell', 'close', 1, 'new')""",
        a,
        legs[0],
    ),
    "a close request": lambda c, a, t, legs: c.execute(
        "INSERT INTO syncd.order_requests (account_id, kind, trade_id) VALUES ($1, 'close', $2)", a, t
    ),
    "a held row": lambda c, a, t, legs: c.execute(
        "UPDATE syncd.portfolio_positions SET bid = bid WHERE account_id = $1 AND symbol = $2", a, legs[1]
    ),
    "a row held at 0": lambda c, a, t, legs: c.execute(
        """INSERT INTO syncd.portfolio_positions (account_id, symbol, asset_class, underlying, quantity)
           VALUES ($1, 'ZZZ', 'us_equity', 'ZZZ', 0)""",
        a,
    ),
    "a truncated table": lambda c, a, t, legs: c.execute("TRUNCATE syncd.order_requests"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_every_input_of_the_rules_makes_the_next_pass_judge(
    make_context: Any, sim: Any, dsn: str, change: str
) -> None:
    async with _spread(make_context, sim) as (ctx, acct, trade_id, legs):
        assert not (await monitor_cycle.account_pass(ctx, acct))["judged"]
        conn = await asyncpg.connect(dsn)
        try:
            await CHANGES[change](conn, acct.id, trade_id, legs)
        finally:
            await conn.close()
        assert (await monitor_cycle.account_pass(ctx, acct))["judged"]
        assert not (await monitor_cycle.account_pass(ctx, acct))["judged"]  # at rest again


async def test_a_new_day_is_judged(make_context: Any, sim: Any) -> None:
    async with _spread(make_context, sim) as (ctx, acct, _trade, _legs):
        today = monitor_cycle.market_today()
        assert not (await monitor_cycle.monitor_account(ctx, acct, today=today))["judged"]
        tomorrow = today + dt.timedelta(days=1)
        assert (await monitor_cycle.monitor_account(ctx, acct, today=tomorrow))["judged"]


async def test_a_trades_marks_alone_are_monitorcycles_own(make_context: Any, sim: Any) -> None:
    """The one write not noted: current_price and floating_pnl, monitorCycle's output and no rule's input."""
    async with _spread(make_context, sim) as (ctx, acct, trade_id, _legs):
        await ctx.pool.execute("UPDATE trades SET current_price = 1, floating_pnl = 1 WHERE id = $1", trade_id)
        assert not (await monitor_cycle.account_pass(ctx, acct))["judged"]
        assert await ctx.pool.fetchval("SELECT count(*) FROM trade_input_changes WHERE account_id = $1", acct.id) == 2


async def test_a_change_between_the_first_read_and_the_trades_is_judged_again(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass whose trades changed after it read what identifies them keeps what it read first, so the
    next pass judges what it saw too: it may judge once more, never skip a judgement it needed."""
    async with _spread(make_context, sim) as (ctx, acct, trade_id, _legs):
        await ctx.pool.execute("UPDATE portfolio_positions SET bid = bid WHERE account_id = $1", acct.id)
        own = monitor_cycle._judge_trades

        async def racing(conn: Any, ctx: Context, account: Account, today: dt.date) -> Any:
            await ctx.pool.execute("UPDATE trades SET stop_loss_pct = 900 WHERE id = $1", trade_id)
            return await own(conn, ctx, account, today)

        monkeypatch.setattr(monitor_cycle, "_judge_trades", racing)
        assert (await monitor_cycle.account_pass(ctx, acct))["judged"]
        monkeypatch.setattr(monitor_cycle, "_judge_trades", own)
        assert (await monitor_cycle.account_pass(ctx, acct))["judged"]
        assert not (await monitor_cycle.account_pass(ctx, acct))["judged"]


async def test_a_judgement_that_queued_an_exit_is_not_kept(make_context: Any, sim: Any) -> None:
    async with _spread(make_context, sim) as (ctx, acct, trade_id, _legs):
        await ctx.pool.execute("UPDATE trades SET entry_price = 0.01, take_profit_pct = 10 WHERE id = $1", trade_id)
        fired = await monitor_cycle.account_pass(ctx, acct)
        assert fired["judged"] and fired["exits_queued"] == 1
        assert (await ctx.pool.fetchval(REST, acct.id))["judged"] is None
        after = await monitor_cycle.account_pass(ctx, acct)  # the trade is closing, its exit pending
        assert after["judged"] and after["exits_queued"] == 0
        assert len(await close_requests(ctx.pool, trade_id)) == 1
        assert not (await monitor_cycle.account_pass(ctx, acct))["judged"]


async def test_housekeeping_forgets_old_changes_and_no_purge_brings_back_a_kept_key(
    make_context: Any, sim: Any
) -> None:
    """Purged changes go into their account's totals in the same statement: what a pass compares is
    unchanged by a purge (no judgement more), and only ever grows, so a change made, then purged
    before any pass judged it, is still judged (the count never returns to a kept value)."""
    async with _spread(make_context, sim) as (ctx, acct, trade_id, _legs):
        old = "UPDATE trade_input_changes SET at = now() - make_interval(secs => $2) WHERE account_id = $1"
        purge = ctx.queries["trade_input_changes_purge"]
        await ctx.pool.execute(old, acct.id, INPUT_CHANGES_KEPT_S + 60)
        assert await ctx.pool.fetchval(purge, INPUT_CHANGES_KEPT_S) == 2  # the trade's and its legs' inserts
        assert await ctx.pool.fetchval("SELECT count(*) FROM trade_input_changes") == 0
        assert await ctx.pool.fetchval("SELECT n FROM trade_input_purged WHERE account_id = $1", acct.id) == 2
        assert not (await monitor_cycle.account_pass(ctx, acct))["judged"]  # the purge changed nothing
        # A change no pass has judged, purged before the next pass: still judged.
        await ctx.pool.execute("UPDATE trades SET stop_loss_pct = 900 WHERE id = $1", trade_id)
        await ctx.pool.execute(old, acct.id, INPUT_CHANGES_KEPT_S + 60)
        assert await ctx.pool.fetchval(purge, INPUT_CHANGES_KEPT_S) == 1
        assert (await monitor_cycle.account_pass(ctx, acct))["judged"]
        assert not (await monitor_cycle.account_pass(ctx, acct))["judged"]


async def test_another_schema_or_judging_code_never_matches(make_context: Any, sim: Any) -> None:
    async with _spread(make_context, sim) as (ctx, acct, _trade, _legs):
        assert monitor_cycle.judging_code("SELECT 1") != monitor_cycle.judging_code("SELECT 2")
        await ctx.pool.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'x', 'x')")
        assert (await monitor_cycle.account_pass(ctx, acct))["judged"]
        assert not (await monitor_cycle.account_pass(ctx, acct))["judged"]


async def test_changes_are_noted_under_any_search_path_and_after_a_schema_rename(empty_dsn: str) -> None:
    db = DatabaseSettings.model_validate({"dsn": empty_dsn, "schema": "tenant_x"})
    await apply_migrations(db)
    conn = await asyncpg.connect(empty_dsn)  # the server's default search_path
    try:
        acct = await conn.fetchval("INSERT INTO tenant_x.accounts (name, broker) VALUES ('a', 'alpaca') RETURNING id")
        await conn.execute(
            "INSERT INTO tenant_x.orders (account_id, broker_order_id, status) VALUES ($1, 'o1', 'new')", acct
        )
        await conn.execute("ALTER SCHEMA tenant_x RENAME TO tenant_y")
        await conn.execute("UPDATE tenant_y.orders SET status = 'filled'")
        await conn.execute("TRUNCATE tenant_y.order_requests")
        assert await conn.fetchval("SELECT count(*) FROM tenant_y.trade_input_changes WHERE account_id = $1", acct) == 3
    finally:
        await conn.close()
