"""Migrations: idempotent, safe when two processes race, and the documented schema exists."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from syncd.db import apply_migrations, discover_migrations
from syncd.settings import DatabaseSettings

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "schema.md"

# docs/schema.md "Required columns", pinned here too: the doc and this list must agree exactly, so a
# required column cannot leave the doc and the schema together unnoticed.
REQUIRED: dict[str, set[str]] = {
    "accounts": {"id", "name", "broker", "broker_account_id", "paper", "active", "last_synced_at", "last_error"},
    "account_snapshots": {
        "account_id",
        "taken_at",
        "equity",
        "cash",
        "buying_power",
        "long_market_value",
        "short_market_value",
    },
    "portfolio_positions": {
        "account_id",
        "symbol",
        "asset_class",
        "underlying",
        "option_type",
        "strike",
        "expiration",
        "multiplier",
        "quantity",
        "qty_available",
        "avg_entry_price",
        "cost_basis",
        "current_price",
        "bid",
        "ask",
        "market_value",
        "unrealized_pl",
        "quote_at",
        "first_seen_at",
        "updated_at",
    },
    "position_events": {"account_id", "symbol", "kind", "old_quantity", "new_quantity", "at"},
    "orders": {
        "id",
        "account_id",
        "broker_order_id",
        "client_order_id",
        "parent_id",
        "trade_id",
        "symbol",
        "side",
        "type",
        "order_class",
        "qty",
        "filled_qty",
        "filled_avg_price",
        "limit_price",
        "status",
        "submitted_at",
        "filled_at",
        "canceled_at",
        "updated_at",
    },
    "order_events": {"order_id", "event", "qty", "price", "at", "source"},
    "trades": {
        "id",
        "account_id",
        "symbol",
        "strategy",
        "status",
        "requested_quantity",
        "quantity",
        "entry_price",
        "broker_fill_price",
        "current_price",
        "floating_pnl",
        "realized_pnl",
        "exit_price",
        "take_profit_pct",
        "stop_loss_pct",
        "close_reason",
        "source",
        "opened_at",
        "closed_at",
        "updated_at",
    },
    "trade_legs": {"trade_id", "leg_index", "symbol", "side", "ratio"},
    "order_requests": {
        "id",
        "account_id",
        "kind",
        "trade_id",
        "payload",
        "client_order_id",
        "state",
        "attempts",
        "last_error",
        "broker_order_id",
        "created_at",
        "submitted_at",
    },
    "sync_runs": {"task", "account_id", "started_at", "finished_at", "ok", "error", "stats"},
    "task_health": {
        "instance",
        "task",
        "last_started_at",
        "last_ok_at",
        "last_error_at",
        "last_error",
        "consecutive_failures",
        "updated_at",
    },
    "schema_migrations": {"version", "name", "applied_at"},
}


async def _columns(dsn: str, schema: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = $1", schema
        )
    finally:
        await conn.close()
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r["table_name"], set()).add(r["column_name"])
    return found


def _assert_required_schema(found: dict[str, set[str]]) -> None:
    for table, columns in REQUIRED.items():
        assert table in found, f"table {table} missing"
        missing = columns - found[table]
        assert not missing, f"{table} lacks {sorted(missing)}"


def required_columns_from_doc(text: str) -> dict[str, set[str]]:
    """The "Required columns" table of docs/schema.md: table -> its required columns."""
    section = text.split("\n## Required columns\n", 1)[1].split("\n## ", 1)[0]
    found: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = line.split("|")
        if not line.startswith("| `") or len(cells) < 5:
            continue
        table = re.fullmatch(r"\s*`([a-z_]+)`\s*", cells[1])
        assert table is not None, f"not a table name: {cells[1]!r}"
        assert table.group(1) not in found, f"{table.group(1)} listed twice"
        found[table.group(1)] = set(re.findall(r"`([a-z_]+)`", cells[3]))
    return found


def test_required_list_matches_the_schema_doc() -> None:
    """The REQUIRED table above is docs/schema.md's "Required columns", table for table and column for column."""
    documented = required_columns_from_doc(SCHEMA_DOC.read_text())
    assert set(documented) == set(REQUIRED), f"tables differ: {sorted(set(documented) ^ set(REQUIRED))}"
    for table, columns in REQUIRED.items():
        assert documented[table] == columns, f"{table}: differs in {sorted(documented[table] ^ columns)}"


async def test_migrate_twice_is_idempotent(empty_dsn: str) -> None:
    db = DatabaseSettings(dsn=empty_dsn)
    first = await apply_migrations(db)
    assert [m.version for m in first] == [m.version for m in discover_migrations()]
    assert await apply_migrations(db) == []
    _assert_required_schema(await _columns(empty_dsn, "syncd"))


async def test_migrate_into_another_schema(empty_dsn: str) -> None:
    await apply_migrations(DatabaseSettings.model_validate({"dsn": empty_dsn, "schema": "tenant_b"}))
    _assert_required_schema(await _columns(empty_dsn, "tenant_b"))
    assert "accounts" not in await _columns(empty_dsn, "syncd")


async def test_two_migrations_at_once_in_process(empty_dsn: str) -> None:
    db = DatabaseSettings(dsn=empty_dsn)
    a, b = await asyncio.gather(apply_migrations(db), apply_migrations(db))
    assert sorted([len(a), len(b)])[0] == 0, "the second migrator must find nothing pending"
    _assert_required_schema(await _columns(empty_dsn, "syncd"))


def test_two_processes_migrate_at_once(empty_dsn: str) -> None:
    env = {**os.environ, "SYNCD_DATABASE__DSN": empty_dsn, "SYNCD_CONFIG": os.devnull}
    env.pop("SYNCD_TEST_DSN", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "syncd", "--config", os.devnull, "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    applied = [o for o, _ in outs if "0001_schema" in o]
    assert len(applied) == 1, outs
    from tests.pg import run_sync

    _assert_required_schema(run_sync(_columns(empty_dsn, "syncd")))


async def test_ledger_records_each_version(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version, name FROM syncd.schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in discover_migrations()]


async def test_trade_monitor_quantity_has_no_division_noise(db_pool: Any) -> None:
    """A stock trade's quantity in v_trade_monitor reads 118, not 118.0000000000000000 (numeric division scale)."""
    acct = await db_pool.fetchval("INSERT INTO accounts (name, broker) VALUES ('a', 'alpaca') RETURNING id")
    await db_pool.execute(
        "INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, quantity, qty_available)"
        " VALUES ($1, 'AAPL', 'us_equity', 'AAPL', 118, 118)",
        acct,
    )
    trade = await db_pool.fetchval(
        "INSERT INTO trades (account_id, symbol, strategy, status, quantity)"
        " VALUES ($1, 'AAPL', 'LONG_STOCK', 'open', 118) RETURNING id",
        acct,
    )
    await db_pool.execute("INSERT INTO trade_legs (trade_id, symbol, side) VALUES ($1, 'AAPL', 'buy')", trade)
    row = await db_pool.fetchrow("SELECT quantity::text AS q, available_quantity::text AS a FROM v_trade_monitor")
    assert (row["q"], row["a"]) == ("118", "118")


# docs/schema.md: "Money, prices and quantities are numeric; times are timestamptz."
NUMERIC: dict[str, set[str]] = {
    "account_snapshots": {"equity", "cash", "buying_power", "long_market_value", "short_market_value"},
    "portfolio_positions": {
        "strike",
        "multiplier",
        "quantity",
        "qty_available",
        "avg_entry_price",
        "cost_basis",
        "current_price",
        "bid",
        "ask",
        "market_value",
        "unrealized_pl",
    },
    "position_events": {"old_quantity", "new_quantity"},
    "orders": {"qty", "filled_qty", "filled_avg_price", "limit_price"},
    "order_events": {"qty", "price"},
    "trades": {
        "requested_quantity",
        "quantity",
        "entry_price",
        "broker_fill_price",
        "current_price",
        "floating_pnl",
        "realized_pnl",
        "exit_price",
        "take_profit_pct",
        "stop_loss_pct",
    },
}


async def test_money_is_numeric_and_times_are_timestamptz(db_pool: Any) -> None:
    rows = await db_pool.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'syncd'"
    )
    types = {(r["table_name"], r["column_name"]): r["data_type"] for r in rows}
    for table, columns in NUMERIC.items():
        for column in columns:
            assert types[(table, column)] == "numeric", f"{table}.{column} is {types[(table, column)]}"
    for table, columns in REQUIRED.items():
        for column in columns:
            if column == "at" or column.endswith("_at"):
                assert types[(table, column)] == "timestamp with time zone", f"{table}.{column}"


@pytest.mark.parametrize(
    ("table", "columns", "primary"),
    [
        ("portfolio_positions", ["account_id", "symbol"], True),
        ("orders", ["account_id", "broker_order_id"], False),
        ("order_requests", ["client_order_id"], False),
        ("accounts", ["name"], False),
    ],
)
async def test_keys(db_pool: Any, table: str, columns: list[str], primary: bool) -> None:
    """docs/schema.md's primary and unique keys, exactly on those columns (a unique index counts as unique)."""
    indexes = await db_pool.fetch(
        "SELECT i.indisprimary AS primary, array_agg(a.attname::text ORDER BY k.n) AS columns"
        "  FROM pg_index i"
        "  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
        "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indpred IS NULL"
        " GROUP BY i.indexrelid, i.indisprimary",
        table,
    )
    keys = [(list(r["columns"]), r["primary"]) for r in indexes]
    assert (columns, True) in keys if primary else any(cols == columns for cols, _ in keys), keys


async def test_app_inserts_naming_only_required_columns(db_pool: Any) -> None:
    """docs/schema.md: every column not required has a default, so an app can insert a trades, trade_legs or
    order_requests row naming only the required columns (here: the fewest an app would name)."""
    lacking = await db_pool.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'syncd' AND table_name = ANY($1::text[])"
        "   AND is_nullable = 'NO' AND column_default IS NULL AND is_identity = 'NO'",
        ["trades", "trade_legs", "order_requests"],
    )
    extra = [
        f"{r['table_name']}.{r['column_name']}" for r in lacking if r["column_name"] not in REQUIRED[r["table_name"]]
    ]
    assert extra == [], f"not required, NOT NULL and without a default: {extra}"

    acct = await db_pool.fetchval("INSERT INTO accounts (name, broker) VALUES ('app', 'alpaca') RETURNING id")
    trade = await db_pool.fetchrow(
        "INSERT INTO trades (account_id, symbol, strategy, requested_quantity) VALUES ($1, 'AAPL', 'LONG_STOCK', 10)"
        " RETURNING *",
        acct,
    )
    assert (trade["status"], trade["quantity"], trade["source"]) == ("pending", 0, "order")
    assert trade["updated_at"] is not None
    await db_pool.execute(
        "INSERT INTO trade_legs (trade_id, leg_index, symbol, side, ratio) VALUES ($1, 0, 'AAPL', 'buy', 1)",
        trade["id"],
    )
    req = await db_pool.fetchrow(
        "INSERT INTO order_requests (account_id, kind, payload) SELECT id, 'open',"
        ' \'{"symbol": "AAPL", "side": "buy", "qty": 10, "type": "market"}\' FROM accounts'
        " WHERE name = 'app' RETURNING *",
    )
    assert (req["state"], req["attempts"], req["client_order_id"], req["trade_id"]) == ("queued", 0, None, None)
    assert req["payload"] == {"symbol": "AAPL", "side": "buy", "qty": 10, "type": "market"}
    assert req["created_at"] is not None
