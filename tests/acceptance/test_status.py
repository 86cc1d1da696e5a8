"""``syncd status`` and ``syncd verify`` through the real CLI, on a database a sync-once filled from the simulator.

No daemon runs (one that ran and died is a stale ``replicas`` row): status reads the database
alone and never asks a broker (the simulator's request count does not move).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import asyncpg

from syncd.settings import AccountSettings
from syncd.sim import Simulator
from tests.acceptance.conftest import fetchval, free_port, run_cli, write_config

NUMBER_WITH_TRAILING_ZERO = re.compile(r"\d\.\d{2,}0\b|\b\d+\.0\b")


def _config(tmp_path: Path, dsn: str, accounts: list[AccountSettings], **cycles: Any) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "database": {"dsn": dsn, "pool_max": 3},
        "cycles": {"broker_timeout_s": 3, **cycles},
        "log": {"format": "json", "level": "warning"},
    }
    return write_config(tmp_path / "syncd.toml", sections, accounts)


async def _seed_outbox(dsn: str, account: str) -> None:
    """One queued and one failed outbox request (trading is off: nothing submits them)."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "syncd"})
    try:
        acct_id = await conn.fetchval("SELECT id FROM accounts WHERE name = $1", account)
        await conn.execute(
            "INSERT INTO order_requests (account_id, kind, state, last_error) VALUES"
            " ($1, 'open', 'queued', NULL), ($1, 'open', 'failed', 'broker said no')",
            acct_id,
        )
        await conn.execute(  # a daemon that ran and died: its heartbeat expired a minute ago
            "INSERT INTO replicas (instance, started_at, heartbeat_at, expires_at)"
            " VALUES ('gone', now() - interval '5 minutes', now() - interval '90 seconds', now() - interval '1 minute')"
        )
    finally:
        await conn.close()


async def test_status_text_json_account_and_unknown_account(sim: Simulator, dsn: str, tmp_path: Path) -> None:
    """status after a sync-once, daemon down: every account's state, 80 columns, consistent numbers, no broker call."""
    accounts = [sim.account_settings(0, "alpaca"), sim.account_settings(1, "tradier")]
    config = _config(tmp_path, dsn, accounts, auto_import=True)
    code, out, err = await run_cli("--config", str(config), "sync-once", timeout=60)
    assert code == 0, out + err
    await _seed_outbox(dsn, "sim-alpaca-0")
    positions = await fetchval(dsn, "SELECT count(*) FROM portfolio_positions")
    assert positions == 2 * 5
    asked = sim.request_count

    code, out, err = await run_cli("--config", str(config), "status")
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "from the database (no broker asked)" in lines[0]
    assert lines[1].startswith("daemon: not running (last heartbeat") and "gone" in lines[1]
    assert "sim-alpaca-0 (alpaca, paper)" in out and "sim-tradier-1 (tradier, paper)" in out
    assert out.count("5 position(s), 0 working order(s)") == 2
    assert "outbox     1 queued, 1 failed, 0 rejected" in out
    assert "outbox     0 queued, 0 failed, 0 rejected" in out
    assert out.count("stream     unknown, no stream event recorded") == 2  # alpaca and tradier, no daemon streamed
    assert re.search(r"trades     \d+ open, floating P&L [+-]?[\d,]+\.\d\d\b", out)
    assert "tasks ok   accountSync " in out
    assert not NUMBER_WITH_TRAILING_ZERO.search(out.replace(".00", "")), out

    code, out, err = await run_cli("--config", str(config), "status", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert set(body) == {"generated_at", "source", "daemon", "accounts"}
    assert body["source"] == "database" and body["daemon"]["live"] == []
    assert [a["name"] for a in body["accounts"]] == ["sim-alpaca-0", "sim-tradier-1"]
    first = body["accounts"][0]
    assert set(first) == {
        "name",
        "broker",
        "paper",
        "in_database",
        "active",
        "last_synced_at",
        "last_error",
        "equity",
        "cash",
        "positions",
        "open_trades",
        "working_orders",
        "outbox",
        "stream",
        "lease",
        "tasks",
    }
    assert first["positions"] == 5 and first["outbox"] == {"queued": 1, "failed": 1, "rejected": 0}
    assert first["stream"] == {"state": "unknown", "last_event_at": None}
    assert isinstance(first["equity"], (int, float)) and first["last_synced_at"]
    trades = first["open_trades"]
    assert trades["count"] == len(trades["trades"]) > 0
    assert all(isinstance(t["quantity"], int) for t in trades["trades"] if t["strategy"].endswith("STOCK"))
    assert set(first["tasks"]) == {"accountSync", "tradeCycle", "monitorCycle"}

    code, out, err = await run_cli("--config", str(config), "status", "--json", "--account", "sim-tradier-1")
    assert code == 0, err
    assert [a["name"] for a in json.loads(out)["accounts"]] == ["sim-tradier-1"]

    code, out, err = await run_cli("--config", str(config), "status", "--account", "ghost")
    assert code == 2 and out == ""
    assert "no account named ghost" in err

    assert sim.request_count == asked, "status asked a broker"


async def test_status_account_not_yet_in_the_database(sim: Simulator, dsn: str, tmp_path: Path) -> None:
    """A configured account nothing has synced yet is shown as such (exit 0), not as an error."""
    config = _config(tmp_path, dsn, [sim.account_settings(0, "alpaca", name="fresh")])
    code, out, err = await run_cli("--config", str(config), "status")
    assert code == 0, err
    assert "fresh (alpaca, paper)" in out and "not in the database yet" in out
    assert "daemon: never ran against this database" in out
    code, out, err = await run_cli("--config", str(config), "status", "--json")
    assert json.loads(out)["accounts"][0]["in_database"] is False


async def test_status_database_down_exits_1(sim: Simulator, tmp_path: Path) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    config = _config(tmp_path, dead, [sim.account_settings(0, "alpaca")], broker_timeout_s=1)
    code, out, err = await run_cli("--config", str(config), "status")
    assert code == 1 and out == ""
    assert "database unreachable" in err


async def test_status_unmigrated_database_says_migrate(empty_dsn: str, sim: Simulator, tmp_path: Path) -> None:
    config = _config(tmp_path, empty_dsn, [sim.account_settings(0, "alpaca")])
    code, _out, err = await run_cli("--config", str(config), "status")
    assert code == 1
    assert "syncd migrate" in err


async def test_status_and_verify_with_no_accounts_exit_2(dsn: str, tmp_path: Path) -> None:
    """Regression: verify with no accounts configured checked 0 accounts and exited 0; now both say so, exit 2."""
    config = _config(tmp_path, dsn, [])
    for command in ("verify", "status"):
        code, out, err = await run_cli("--config", str(config), command)
        assert code == 2, (command, out, err)
        assert "no accounts configured" in err


async def test_verify_all_untracked_suggests_import_positions(sim: Simulator, dsn: str, tmp_path: Path) -> None:
    """verify on an account no trade covers: exit 3, and the hint is the exact import-positions command line."""
    config = _config(tmp_path, dsn, [sim.account_settings(0, "alpaca")])
    code, out, err = await run_cli("--config", str(config), "sync-once", "--task", "account", timeout=60)
    assert code == 0, out + err
    code, out, err = await run_cli("--config", str(config), "verify")
    assert code == 3, out + err
    assert out.count("untracked_position") == 5
    assert f"`syncd --config {config} import-positions --account sim-alpaca-0` makes them trades" in out
