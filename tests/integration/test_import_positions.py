"""Import of outside positions on real Postgres: trades, legs, idempotency, concurrency, the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from syncd.brokers.occ import option_spec_or_none
from syncd.context import Account, Context
from syncd.cycles.importer import import_positions
from syncd.db import connect
from syncd.settings import AccountSettings, DatabaseSettings
from tests.helpers import wait_for
from tests.integration.test_account_sync import run_cli, sim_accounts, write_config

D = Decimal


def _settings(name: str) -> AccountSettings:
    return AccountSettings(
        name=name, broker="alpaca", api_key="k-test", api_secret="s-test", base_url="http://127.0.0.1:9"
    )


@pytest_asyncio.fixture(loop_scope="function")
async def ctx(make_context: Any) -> AsyncIterator[Context]:
    async with make_context(accounts=[_settings("acct-0"), _settings("acct-1")], database={"pool_max": 6}) as c:
        yield c


async def hold(ctx: Context, account: Account, symbol: str, qty: str, avg: str = "1") -> None:
    """A mirrored position, written straight into portfolio_positions (as accountSync would)."""
    spec = option_spec_or_none(symbol)
    await ctx.pool.execute(
        "INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, option_type, strike,"
        " expiration, multiplier, quantity, qty_available, avg_entry_price, cost_basis)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9::numeric, $9, $10::numeric, $9 * $10 * $8)",
        account.id,
        symbol,
        "us_option" if spec else "us_equity",
        spec.underlying if spec else symbol,
        spec.option_type.value if spec else None,
        spec.strike if spec else None,
        spec.expiration if spec else None,
        D(100) if spec else D(1),
        D(qty),
        D(avg),
    )


async def trades(ctx: Context, account: Account) -> list[dict[str, Any]]:
    rows = await ctx.pool.fetch(
        "SELECT t.*, (SELECT json_agg(json_build_array(l.leg_index, l.symbol, l.side, l.ratio) ORDER BY l.leg_index)"
        "              FROM trade_legs l WHERE l.trade_id = t.id) AS legs"
        "  FROM trades t WHERE t.account_id = $1 ORDER BY t.symbol, t.strategy",
        account.id,
    )
    return [dict(r) for r in rows]


async def test_import_makes_spreads_and_singles(ctx: Context) -> None:
    acct = ctx.accounts["acct-0"]
    await hold(ctx, acct, "AAPL260116C00150000", "5", "4.10")
    await hold(ctx, acct, "AAPL260116C00160000", "-5", "1.60")
    await hold(ctx, acct, "SPY260116P00400000", "2", "1.00")
    await hold(ctx, acct, "SPY260116P00410000", "-2", "2.25")
    await hold(ctx, acct, "MSFT", "10", "300")
    await hold(ctx, acct, "TSLA", "-3", "200")
    await hold(ctx, acct, "NVDA260116C00100000", "-1", "5")

    imported = await import_positions(ctx, acct)
    assert len(imported) == 5
    got = {(t["symbol"], t["strategy"]): t for t in await trades(ctx, acct)}
    assert set(got) == {
        ("AAPL", "BULL_CALL_DEBIT"),
        ("SPY", "BULL_PUT_CREDIT"),
        ("MSFT", "LONG_STOCK"),
        ("TSLA", "SHORT_STOCK"),
        ("NVDA", "SHORT_CALL"),
    }
    spread = got[("AAPL", "BULL_CALL_DEBIT")]
    assert (spread["status"], spread["source"], spread["quantity"], spread["entry_price"]) == (
        "open",
        "import",
        D(5),
        D("2.50"),
    )
    assert spread["legs"] == [[0, "AAPL260116C00150000", "buy", 1], [1, "AAPL260116C00160000", "sell", 1]]
    assert spread["opened_at"] is not None
    assert got[("SPY", "BULL_PUT_CREDIT")]["entry_price"] == D("-1.25")
    short = got[("TSLA", "SHORT_STOCK")]
    assert (short["quantity"], short["entry_price"], short["legs"]) == (D(3), D(200), [[0, "TSLA", "sell", 1]])
    assert {t.trade_id for t in imported} == {t["id"] for t in got.values()}


async def test_import_twice_creates_nothing_new(ctx: Context) -> None:
    acct = ctx.accounts["acct-0"]
    await hold(ctx, acct, "AAPL", "10")
    await hold(ctx, acct, "AAPL260116C00150000", "1")
    assert len(await import_positions(ctx, acct)) == 2
    assert await import_positions(ctx, acct) == []
    assert len(await trades(ctx, acct)) == 2
    # A new position later is imported alone.
    await hold(ctx, acct, "MSFT", "1")
    again = await import_positions(ctx, acct)
    assert [t.plan.strategy for t in again] == ["LONG_STOCK"]
    assert len(await trades(ctx, acct)) == 3


async def test_concurrent_importers_import_once(ctx: Context) -> None:
    acct = ctx.accounts["acct-0"]
    for i in range(30):
        await hold(ctx, acct, f"S{i:02d}", str(i + 1))
    results = await asyncio.gather(*(import_positions(ctx, acct) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, 30]
    assert len(await trades(ctx, acct)) == 30
    assert await ctx.pool.fetchval("SELECT count(*) FROM trade_legs") == 30


async def test_live_trades_cover_positions_and_closed_ones_do_not(ctx: Context) -> None:
    acct = ctx.accounts["acct-0"]
    for sym in ("AAPL", "MSFT", "NVDA", "TSLA", "AMD"):
        await hold(ctx, acct, sym, "5")
    for sym, status in (("AAPL", "open"), ("MSFT", "pending"), ("NVDA", "closing"), ("TSLA", "closed")):
        trade_id = await ctx.pool.fetchval(
            "INSERT INTO trades (account_id, symbol, strategy, status) VALUES ($1, $2, 'LONG_STOCK', $3) RETURNING id",
            acct.id,
            sym,
            status,
        )
        await ctx.pool.execute("INSERT INTO trade_legs (trade_id, symbol, side) VALUES ($1, $2, 'buy')", trade_id, sym)
    # A trade an app inserted with no legs covers the position named by its symbol.
    await ctx.pool.execute("INSERT INTO trades (account_id, symbol, status) VALUES ($1, 'AMD', 'open')", acct.id)
    imported = await import_positions(ctx, acct)
    assert [t.plan.legs[0].symbol for t in imported] == ["TSLA"]


async def test_one_leg_of_a_spread_covered_leaves_the_other_single(ctx: Context) -> None:
    acct = ctx.accounts["acct-0"]
    await hold(ctx, acct, "AAPL260116C00150000", "5")
    await hold(ctx, acct, "AAPL260116C00160000", "-5")
    trade_id = await ctx.pool.fetchval(
        "INSERT INTO trades (account_id, symbol, status) VALUES ($1, 'AAPL', 'open') RETURNING id", acct.id
    )
    await ctx.pool.execute(
        "INSERT INTO trade_legs (trade_id, symbol, side) VALUES ($1, 'AAPL260116C00150000', 'buy')", trade_id
    )
    imported = await import_positions(ctx, acct)
    assert [(t.plan.strategy, t.plan.legs[0].symbol) for t in imported] == [("SHORT_CALL", "AAPL260116C00160000")]


async def test_accounts_are_separate(ctx: Context) -> None:
    a0, a1 = ctx.accounts["acct-0"], ctx.accounts["acct-1"]
    await hold(ctx, a0, "AAPL", "1")
    await hold(ctx, a1, "AAPL", "2")
    assert len(await import_positions(ctx, a0)) == 1
    assert [t.plan.quantity for t in await import_positions(ctx, a1)] == [D(2)]


async def test_nothing_to_import(ctx: Context) -> None:
    assert await import_positions(ctx, ctx.accounts["acct-0"]) == []


async def test_import_notifies_trade_ids(ctx: Context, dsn: str) -> None:
    acct = ctx.accounts["acct-0"]
    listener = await connect(DatabaseSettings(dsn=dsn))
    got: list[dict[str, Any]] = []
    await listener.add_listener("syncd_events", lambda *args: got.append(json.loads(args[3])))
    try:
        await hold(ctx, acct, "AAPL", "1")
        await hold(ctx, acct, "MSFT", "1")
        imported = await import_positions(ctx, acct)
        await wait_for(lambda: len(got) == len(imported), what="trade notifications")
        assert got == [{"kind": "trade", "account": "acct-0", "key": t.trade_id} for t in imported]
    finally:
        await listener.close()


# -- the import-positions command, as a subprocess ----------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="function")
async def sim() -> AsyncIterator[Any]:
    from syncd.sim import SimConfig, start_simulator

    simulator = await start_simulator(SimConfig(seed=5, accounts=3, positions_per_account=6))
    yield simulator
    await simulator.stop()


async def test_import_positions_cli(tmp_path: Any, dsn: str, sim: Any) -> None:
    """import-positions fetches, imports (the simulator's books hold a bull call spread), and is idempotent."""
    config = write_config(tmp_path / "syncd.toml", dsn, sim_accounts(sim)[:2])
    code, out, err = await run_cli("--config", str(config), "import-positions")
    assert code == 0, err
    assert "sim-alpaca-0" in out
    assert "sim-tradier-1" in out
    assert "BULL_CALL_DEBIT" in out
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "syncd"})
    try:
        n_trades = await conn.fetchval("SELECT count(*) FROM trades WHERE source = 'import'")
        assert n_trades > 0
        uncovered = await conn.fetchval(
            "SELECT count(*) FROM portfolio_positions p WHERE NOT EXISTS ("
            " SELECT 1 FROM trade_legs l JOIN trades t ON t.id = l.trade_id"
            " WHERE t.account_id = p.account_id AND l.symbol = p.symbol)"
        )
        assert uncovered == 0
        # The spread is one two-leg trade.
        legs = await conn.fetch(
            "SELECT t.id, count(*) AS n FROM trades t JOIN trade_legs l ON l.trade_id = t.id"
            " WHERE t.strategy = 'BULL_CALL_DEBIT' GROUP BY t.id"
        )
        assert legs
        assert all(r["n"] == 2 for r in legs)

        code, out, err = await run_cli("--config", str(config), "import-positions", "--account", "sim-alpaca-0")
        assert code == 0, err
        assert out.split() == ["sim-alpaca-0", "nothing", "to", "import"]
        assert await conn.fetchval("SELECT count(*) FROM trades") == n_trades

        # A failing account: exit 1, the other still imports (from --no-sync, the stored mirror).
        sim.faults.fail_auth(1)
        sim.add_position(0, "AAPL", 7, "180")
        code, out, err = await run_cli("--config", str(config), "import-positions")
        assert code == 1, err
        lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith(" ")}
        assert "FAILED" in lines["sim-tradier-1"]
        assert "imported 1" in lines["sim-alpaca-0"]
        assert await conn.fetchval("SELECT count(*) FROM trades") == n_trades + 1
    finally:
        await conn.close()


async def test_import_positions_cli_no_sync_uses_the_mirror(tmp_path: Any, dsn: str) -> None:
    cfg = _settings("offline")
    config = write_config(tmp_path / "syncd.toml", dsn, [cfg])
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "syncd"})
    try:
        acct_id = await conn.fetchval("INSERT INTO accounts (name, broker) VALUES ('offline', 'alpaca') RETURNING id")
        await conn.execute(
            "INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, quantity, avg_entry_price)"
            " VALUES ($1, 'AAPL', 'us_equity', 'AAPL', 3, 150)",
            acct_id,
        )
        code, out, err = await run_cli("--config", str(config), "import-positions", "--no-sync")
        assert code == 0, err
        assert "LONG_STOCK AAPL x3 @ 150" in out
        code, out, err = await run_cli("--config", str(config), "import-positions", "--account", "ghost")
        assert code == 2
        assert "no account named ghost" in err
    finally:
        await conn.close()


@pytest.mark.parametrize("when", [dt.datetime(2025, 1, 2, tzinfo=dt.UTC)])
async def test_opened_at_is_when_the_position_was_first_seen(ctx: Context, when: dt.datetime) -> None:
    acct = ctx.accounts["acct-0"]
    await hold(ctx, acct, "AAPL", "1")
    await ctx.pool.execute("UPDATE portfolio_positions SET first_seen_at = $1", when)
    await import_positions(ctx, acct)
    assert (await trades(ctx, acct))[0]["opened_at"] == when


def test_import_positions_migrates_an_empty_database_first(empty_dsn: str, tmp_path: Any) -> None:
    """Like sync-once it writes, so it applies pending migrations first (no bare 'relation does not exist')."""
    import os
    import subprocess
    import sys

    cfg = tmp_path / "syncd.toml"
    cfg.write_text(f'[database]\ndsn = "{empty_dsn}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    result = subprocess.run(
        [sys.executable, "-m", "syncd", "--config", str(cfg), "import-positions", "--no-sync"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "migration_applied" in result.stderr
