"""``syncd run`` as a subprocess: health endpoints, metrics, ``syncd health``, SIGTERM, auth failures, secrets."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from syncd.sim import Simulator
from tests.acceptance.conftest import DaemonFactory, fetchval, run_cli, secrets_of
from tests.helpers import wait_for

CONTRACT_METRICS = (
    "syncd_cycle_duration_seconds",
    "syncd_cycle_failures_total",
    "syncd_broker_requests_total",
    "syncd_positions",
    "syncd_last_success_timestamp_seconds",
)

CONTRACT_LABELS = {
    "syncd_cycle_duration_seconds_count": frozenset({"task"}),
    "syncd_cycle_failures_total": frozenset({"task", "account"}),
    "syncd_broker_requests_total": frozenset({"broker", "endpoint", "status"}),
    "syncd_positions": frozenset({"account"}),
    "syncd_last_success_timestamp_seconds": frozenset({"task"}),
}


def label_sets(text: str, sample: str) -> set[frozenset[str]]:
    """The label names of every ``sample{...}`` line of a Prometheus text page."""
    return {
        frozenset(re.findall(r'(\w+)="', labels))
        for labels in re.findall(rf"^{re.escape(sample)}{{([^}}]*)}} ", text, re.MULTILINE)
    }


@pytest.mark.slow
async def test_health_metrics_health_command_and_sigterm(
    sim: Simulator, dsn: str, daemon_factory: DaemonFactory
) -> None:
    accounts = [sim.account_settings(0, "alpaca"), sim.account_settings(1, "tradier")]
    daemon = daemon_factory(accounts, dsn=dsn)
    await daemon.start()
    body = await daemon.wait_status("ok", timeout=40)
    assert set(body["tasks"]) == {"accountSync", "tradeCycle", "monitorCycle"}
    for task in body["tasks"].values():
        assert set(task) >= {"last_ok_at", "last_error", "consecutive_failures", "accounts"}
        assert set(task["accounts"]) == {"sim-alpaca-0", "sim-tradier-1"}
        assert all(a["last_error"] is None and a["last_ok_at"] for a in task["accounts"].values())

    status, ready = await daemon.get("/readyz")
    assert status == 200 and json.loads(ready)["ready"] is True
    status, metrics = await daemon.get("/metrics")
    assert status == 200
    for name in CONTRACT_METRICS:
        assert f"\n{name}" in metrics, f"{name} has no sample"
    assert 'syncd_positions{account="sim-alpaca-0"} 5' in metrics
    for sample, keys in CONTRACT_LABELS.items():  # docs/operations.md: exactly these label sets
        assert label_sets(metrics, sample) == {keys}, sample
    assert await fetchval(dsn, "SELECT count(*) FROM portfolio_positions") == 10

    code, out, _err = await run_cli("health", "--url", daemon.health_url, "--json")
    assert code == 0 and json.loads(out)["status"] == "ok"
    code, out, _err = await run_cli("--config", str(daemon.config), "health")
    assert code == 0 and out.startswith("status: ok")

    t0 = time.monotonic()
    assert await daemon.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 10

    # After it stopped: `syncd health` says so from the database and exits 1 (never `degraded`/0).
    code, out, _err = await run_cli("--config", str(daemon.config), "health", "--json")
    assert code == 1 and json.loads(out)["source"] == "database"
    assert "daemon not reachable at" in json.loads(out)["error"]

    events = daemon.events()
    names = [e["event"] for e in events]
    assert "daemon_ready" in names and "daemon_stopped" in names
    assert all({"timestamp", "level", "event"} <= set(e) for e in events)
    passes = [e for e in events if e["event"] == "account_pass"]
    assert passes and all("task" in e and "account" in e and "duration_ms" in e for e in passes)
    assert daemon.stdout() == ""  # stdout is for results; a daemon has none
    for secret in secrets_of(accounts):
        assert secret not in daemon.stderr()


@pytest.mark.slow
async def test_one_account_failing_auth_keeps_the_other_syncing(
    sim: Simulator, dsn: str, daemon_factory: DaemonFactory
) -> None:
    accounts = [sim.account_settings(0, "alpaca"), sim.account_settings(1, "alpaca")]
    sim.faults.fail_auth(0)
    daemon = daemon_factory(accounts, dsn=dsn)
    await daemon.start()
    body = await daemon.wait_status("degraded", timeout=40)
    bad = body["tasks"]["accountSync"]["accounts"]["sim-alpaca-0"]
    assert bad["last_error"] and "auth" in bad["last_error"].lower()

    count_ok = (
        "SELECT count(*) FROM sync_runs s JOIN accounts a ON a.id = s.account_id "
        "WHERE a.name = $1 AND s.ok AND s.task = 'accountSync'"
    )
    first = await fetchval(dsn, count_ok, "sim-alpaca-1")
    await wait_for(
        lambda: _more(dsn, count_ok, first + 6),
        timeout=30,
        what="the healthy account keeps syncing",
    )
    assert await fetchval(dsn, count_ok, "sim-alpaca-0") == 0
    last_error = await fetchval(dsn, "SELECT last_error FROM accounts WHERE name = 'sim-alpaca-0'")
    assert last_error and last_error.split(":")[0] in ("accountSync", "tradeCycle", "monitorCycle")
    assert await fetchval(dsn, "SELECT last_error FROM accounts WHERE name = 'sim-alpaca-1'") is None

    code, _out, _err = await run_cli("health", "--url", daemon.health_url)
    assert code == 0  # degraded is still healthy for Docker
    code, _out, _err = await run_cli("health", "--url", daemon.health_url, "--strict")
    assert code == 1

    sim.faults.fail_auth(0, on=False)
    await daemon.wait_status("ok", timeout=40)
    assert await daemon.stop() == 0
    for secret in secrets_of(accounts):
        assert secret not in daemon.stderr() + daemon.stdout()


async def _more(dsn: str, sql: str, at_least: int) -> bool:
    return bool(await fetchval(dsn, sql, "sim-alpaca-1") >= at_least)


async def test_bad_config_exits_2_and_names_the_key(tmp_path: object, dsn: str, daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory([], dsn=dsn, cycles={"account_interval_s": 0})
    await daemon.start()
    assert daemon.proc is not None
    assert await daemon.proc.wait() == 2
    assert "cycles.account_interval_s" in daemon.stderr()


async def test_unreachable_database_at_start_waits_then_stops_cleanly(daemon_factory: DaemonFactory) -> None:
    from tests.acceptance.conftest import free_port

    daemon = daemon_factory([], dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/nope")
    await daemon.start()
    await wait_for(lambda: "database_unavailable" in daemon.stderr(), timeout=15, what="it says it waits")
    assert daemon.alive()
    assert await daemon.stop(timeout=10) == 0


async def test_a_database_that_does_not_exist_is_fatal_exit_1(pg_admin_dsn: str, daemon_factory: DaemonFactory) -> None:
    """Not an outage to wait out: the DSN names no database. Exit 1 at once, saying why."""
    from tests.pg import with_database

    daemon = daemon_factory([], dsn=with_database(pg_admin_dsn, "syncd_no_such_database"))
    await daemon.start()
    assert daemon.proc is not None
    assert await asyncio.wait_for(daemon.proc.wait(), 30) == 1
    err = daemon.stderr()
    assert "syncd_no_such_database" in err
    assert any(e["event"] == "daemon_fatal" for e in daemon.events())
    assert [line for line in err.splitlines() if not line.startswith("{")] == []  # JSON lines only
