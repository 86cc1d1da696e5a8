"""``syncd verify``: the comparison (pure) and the command as a subprocess against the simulator.

The database is filled directly from the simulator's books (mirror rows and one trade per
position), so these tests depend on no other cycle.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from syncd.brokers.factory import build_broker
from syncd.cycles.verify import AccountReport, Finding, compare, render_text
from syncd.settings import AccountSettings
from syncd.sim import SimConfig, Simulator, start_simulator

D = Decimal


# -- the comparison ----------------------------------------------------------------------------


def test_compare_clean() -> None:
    book = {"AAPL": D(10), "AAPL260116C00150000": D(-2)}
    assert compare("a", book, book, book) == []


def test_compare_every_kind() -> None:
    live = {"AAPL": D(10), "MSFT": D(5), "TSLA": D(-3), "ZERO": D(0)}
    mirrored = {"AAPL": D(10), "MSFT": D(4), "GONE": D(7)}
    expected = {"AAPL": D(1), "NVDA": D(2), "TSLA": D(-3)}
    got = {
        (f.against, f.symbol): (f.kind, f.broker_quantity, f.db_quantity)
        for f in compare("a", live, mirrored, expected)
    }
    assert got == {
        ("mirror", "GONE"): ("extra", D(0), D(7)),
        ("mirror", "MSFT"): ("quantity_mismatch", D(5), D(4)),
        ("mirror", "TSLA"): ("missing", D(-3), D(0)),
        ("trades", "AAPL"): ("quantity_mismatch", D(10), D(1)),
        ("trades", "MSFT"): ("untracked_position", D(5), D(0)),
        ("trades", "NVDA"): ("missing_position", D(0), D(2)),
    }


def test_untracked_surplus_of_a_position() -> None:
    """What the broker holds beyond what the trades claim (on the position's side) is untracked (issue 10)."""

    def untracked(held: str, claimed: str, against: str = "trades") -> Decimal:
        return Finding("a", "WMT", against, "quantity_mismatch", D(held), D(claimed)).untracked  # type: ignore[arg-type]

    assert untracked("254", "4") == 250
    assert untracked("-7", "-2") == -5
    assert untracked("3", "6") == 0  # the trades claim more: no surplus
    assert untracked("5", "-2") == 5  # the trades are short, the account long: all of it untracked
    assert untracked("254", "4", against="mirror") == 0
    text = render_text(
        [AccountReport("a", positions=1, findings=[Finding("a", "WMT", "trades", "quantity_mismatch", D(254), D(4))])]
    )
    assert "untracked=250" in text and "import-positions" in text


def test_finding_json_numbers() -> None:
    f = Finding("a", "AAPL", "trades", "quantity_mismatch", D("67"), D("2.5"))
    assert f.as_dict()["broker_quantity"] == 67
    assert f.as_dict()["db_quantity"] == 2.5


def test_finding_json_says_what_is_untracked() -> None:
    """Regression: `verify` printed untracked=250 for 254 WMT held against a trade of 4, but `verify --json` had
    no such field, so a script could not tell the untracked surplus (issue 10) from a trade claiming too much."""
    assert Finding("a", "WMT", "trades", "quantity_mismatch", D(254), D(4)).as_dict()["untracked"] == 250
    assert Finding("a", "WMT", "trades", "quantity_mismatch", D(3), D(6)).as_dict()["untracked"] == 0
    assert Finding("a", "WMT", "mirror", "quantity_mismatch", D(254), D(4)).as_dict()["untracked"] == 0


# -- the command -------------------------------------------------------------------------------


@dataclass
class Env:
    sim: Simulator
    config: Path
    dsn: str
    accounts: list[AccountSettings]


async def mirror(pool: asyncpg.Pool[Any], settings: AccountSettings, session: aiohttp.ClientSession) -> None:
    """Make the database agree with the broker: its positions mirrored, one trade per position."""
    account_id = await pool.fetchval(
        "INSERT INTO accounts (name, broker) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name"
        " RETURNING id",
        settings.name,
        settings.broker,
    )
    broker = build_broker(settings, session=session, timeout_s=5)
    try:
        positions = await broker.list_positions()
    finally:
        await broker.aclose()
    for p in positions:
        await pool.execute(
            "INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, option_type, multiplier,"
            " quantity) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            account_id,
            p.symbol,
            str(p.asset_class),
            p.underlying,
            str(p.option.option_type) if p.option else None,
            D(p.multiplier),
            p.quantity,
        )
        trade_id = await pool.fetchval(
            "INSERT INTO trades (account_id, symbol, status, quantity) VALUES ($1, $2, 'open', $3) RETURNING id",
            account_id,
            p.underlying,
            abs(p.quantity),
        )
        await pool.execute(
            "INSERT INTO trade_legs (trade_id, symbol, side) VALUES ($1, $2, $3)",
            trade_id,
            p.symbol,
            "buy" if p.quantity > 0 else "sell",
        )


def toml_account(a: AccountSettings) -> str:
    lines = ["[[accounts]]", f'name = "{a.name}"', f'broker = "{a.broker}"']
    for key in ("api_key", "api_secret", "token"):
        secret = getattr(a, key)
        if secret is not None:
            lines.append(f'{key} = "{secret.get_secret_value()}"')
    for key in ("account_id", "base_url", "data_url"):
        if getattr(a, key):
            lines.append(f'{key} = "{getattr(a, key)}"')
    return "\n".join(lines)


@asynccontextmanager
async def environment(dsn: str, tmp_path: Path) -> AsyncIterator[Env]:
    sim = await start_simulator(SimConfig(seed=11, accounts=2, positions_per_account=6))
    try:
        accounts = [sim.account_settings(0, "alpaca", "sim-alpaca"), sim.account_settings(1, "tradier", "sim-tradier")]
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, server_settings={"search_path": "syncd"})
        try:
            async with aiohttp.ClientSession() as session:
                for a in accounts:
                    await mirror(pool, a, session)
        finally:
            await pool.close()
        config = tmp_path / "syncd.toml"
        config.write_text(
            f'[database]\ndsn = "{dsn}"\n\n[log]\nlevel = "warning"\n\n'
            + "\n\n".join(toml_account(a) for a in accounts)
            + "\n"
        )
        yield Env(sim, config, dsn, accounts)
    finally:
        await sim.stop()


async def syncd(env: Env, *args: str) -> tuple[int, str, str]:
    """Run the real CLI as a subprocess (asynchronously: the simulator serves meanwhile)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd",
        "--config",
        str(env.config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_verify_clean_exits_0(dsn: str, tmp_path: Path) -> None:
    async with environment(dsn, tmp_path) as env:
        code, out, err = await syncd(env, "verify", "--json")
        assert code == 0, err
        body = json.loads(out)  # stdout is the result alone
        assert body["ok"] is True
        assert [a["account"] for a in body["accounts"]] == ["sim-alpaca", "sim-tradier"]
        assert all(a["positions"] == 6 for a in body["accounts"])
        code, out, _ = await syncd(env, "verify")
        assert code == 0
        assert "0 mismatch(es), 0 error(s)" in out


async def test_verify_mismatches_exit_3(dsn: str, tmp_path: Path) -> None:
    async with environment(dsn, tmp_path) as env:
        env.sim.add_position(0, "MSFT", "10", "400")  # opened by hand after the last sync
        pool = await asyncpg.create_pool(env.dsn, min_size=1, max_size=1, server_settings={"search_path": "syncd"})
        try:  # the seed's stale trade quantity, on the Tradier account
            symbol = await pool.fetchval(
                "UPDATE trades SET quantity = 1 WHERE id = (SELECT min(t.id) FROM trades t JOIN accounts a"
                " ON a.id = t.account_id WHERE a.name = 'sim-tradier' AND t.quantity > 1)"
                " RETURNING (SELECT symbol FROM trade_legs WHERE trade_id = trades.id)"
            )
        finally:
            await pool.close()
        code, out, err = await syncd(env, "verify", "--json")
        assert code == 3, err
        findings = {
            (f["account"], f["symbol"], f["against"], f["kind"])
            for a in json.loads(out)["accounts"]
            for f in a["findings"]
        }
        assert findings == {
            ("sim-alpaca", "MSFT", "mirror", "missing"),
            ("sim-alpaca", "MSFT", "trades", "untracked_position"),
            ("sim-tradier", symbol, "trades", "quantity_mismatch"),
        }
        code, out, _ = await syncd(env, "verify", "--account", "sim-tradier")
        assert code == 3
        assert "quantity_mismatch" in out
        assert "sim-alpaca" not in out


async def test_verify_broker_error_exits_1(dsn: str, tmp_path: Path) -> None:
    async with environment(dsn, tmp_path) as env:
        env.sim.faults.fail_auth(1)
        code, out, err = await syncd(env, "verify", "--json")
        assert code == 1
        by_name = {a["account"]: a for a in json.loads(out)["accounts"]}
        assert by_name["sim-alpaca"]["ok"] is True
        assert by_name["sim-tradier"]["ok"] is False
        assert "BrokerAuthFailed" in by_name["sim-tradier"]["error"]
        assert env.accounts[1].token is not None
        assert env.accounts[1].token.get_secret_value() not in out + err


async def test_verify_unknown_account_exits_2(dsn: str, tmp_path: Path) -> None:
    async with environment(dsn, tmp_path) as env:
        code, out, err = await syncd(env, "verify", "--account", "nope")
        assert code == 2
        assert out == ""
        assert "no account named nope" in err


@pytest.mark.parametrize("paused", ["sim-alpaca"])
async def test_verify_skips_paused_accounts(dsn: str, tmp_path: Path, paused: str) -> None:
    async with environment(dsn, tmp_path) as env:
        env.sim.add_position(0, "MSFT", "10", "400")
        conn = await asyncpg.connect(env.dsn, server_settings={"search_path": "syncd"})
        try:
            await conn.execute("UPDATE accounts SET active = false WHERE name = $1", paused)
        finally:
            await conn.close()
        code, out, _ = await syncd(env, "verify", "--json")
        assert code == 0
        body = json.loads(out)
        assert body["paused"] == [paused]
        assert [a["account"] for a in body["accounts"]] == ["sim-tradier"]


async def test_sync_once_task_monitor(dsn: str, tmp_path: Path) -> None:
    """``syncd sync-once --task monitor`` runs monitorCycle through the task registry."""
    async with environment(dsn, tmp_path) as env:
        code, out, err = await syncd(env, "sync-once", "--task", "monitor")
        assert code == 0, err
        assert out.count("monitorCycle") == 2
        assert "positions=6" in out
        conn = await asyncpg.connect(env.dsn, server_settings={"search_path": "syncd"})
        try:
            quoted = await conn.fetchval("SELECT count(*) FROM portfolio_positions WHERE bid IS NOT NULL")
            runs = await conn.fetchval("SELECT count(*) FROM sync_runs WHERE task = 'monitorCycle' AND ok")
        finally:
            await conn.close()
        assert quoted == 12
        assert runs == 2
