"""``syncd demo`` as a subprocess: embedded Postgres, simulator, daemon; prints psql and the command lines
of the other commands against the config it wrote (which `status` and `verify` then use); Ctrl-C exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.acceptance.conftest import REPO, run_cli
from tests.helpers import wait_for

pgserver = pytest.importorskip("pgserver", reason="the demo needs the embedded extra (pgserver)")


@pytest.mark.slow
async def test_demo_runs_prints_psql_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    # 9108 taken (by this test, or by anyone else): the demo must move, log and register the real port.
    holder = socket.socket()
    with contextlib.suppress(OSError):
        holder.bind(("127.0.0.1", 9108))
        holder.listen()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "syncd",
            "demo",
            "--state-dir",
            str(tmp_path / "state"),
            stdout=stdout,
            stderr=stderr,
            cwd=REPO,
        )
    try:

        def printed() -> re.Match[str] | None:
            assert proc.returncode is None, err.read_text()[-3000:]
            return re.search(r'psql "([^"]+)"', out.read_text())

        match = await wait_for(printed, timeout=120, interval=0.2, what="the demo prints how to psql in")
        dsn = match.group(1)
        text = out.read_text()
        assert text.count("SELECT") >= 3

        async def mirrored() -> bool:
            conn = await asyncpg.connect(dsn)
            try:
                positions = await conn.fetchval("SELECT count(*) FROM syncd.portfolio_positions")
                trades = await conn.fetchval("SELECT count(*) FROM syncd.v_trade_monitor")
                accounts = await conn.fetchval("SELECT count(*) FROM syncd.accounts")
            finally:
                await conn.close()
            return bool(positions >= 3 * 6 and trades > 0 and accounts == 3)

        await wait_for(mirrored, timeout=60, interval=0.5, what="positions and trades mirrored")

        # The config it wrote, and the command lines it printed, work as printed.
        config = (tmp_path / "state" / "syncd.toml").resolve()
        assert config.stat().st_mode & 0o777 == 0o600
        for command in ("status", "verify", "import-positions"):
            assert f"syncd --config {config} {command}" in text
        code, status_out, status_err = await run_cli("--config", str(config), "status", "--json")
        assert code == 0, status_err
        body = json.loads(status_out)
        assert [a["name"] for a in body["accounts"]] == ["demo-alpaca-1", "demo-tradier", "demo-alpaca-2"]
        assert body["daemon"]["live"] == ["demo"] and all(a["positions"] == 6 for a in body["accounts"])
        code, verify_out, verify_err = await run_cli("--config", str(config), "verify")
        assert code == 0, verify_out + verify_err
        # `syncd health` finds the demo's daemon on its real port (from its replicas row).
        code, health_out, health_err = await run_cli("--config", str(config), "health", "--json")
        assert code == 0, health_out + health_err
        source = json.loads(health_out)["source"]
        assert source.startswith("http://127.0.0.1:") and not source.endswith((":9108", ":0"))
        assert f"Health:    curl -s {source}/healthz" in text

        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        logged = err.read_text()
        assert "demo_stopped" in logged
        # A quiet start (issue 13): no initdb/pg_ctl dumps, no RuntimeDirWarning, no calendar warnings,
        # no per-pass lines; the listen address logged is the real one.
        for noise in (
            "initdb",
            "pg_ctl",
            "Running commandline",
            "RuntimeDirWarning",
            "XDG_RUNTIME_DIR",
            "tradier_calendar_unavailable",
            "account_pass",
            "connected to: ws://",
        ):
            assert noise not in logged + text, noise
        ready = [ln for ln in logged.splitlines() if "daemon_ready" in ln]
        assert len(ready) == 1 and f"listen={source.removeprefix('http://')}" in ready[0]
        assert "listen=127.0.0.1:0" not in logged
        assert len(logged.splitlines()) < 60, logged
    finally:
        holder.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
