"""Issue 13: health never lies, through the real ``syncd run``, ``syncd health`` and ``syncd sync-once``.

- an account whose credentials are refused is failing for every task, monitorCycle included
  (with no stored positions that pass asks the broker nothing: the account's known auth state,
  or one ``get_account`` call when that is not known yet, decides);
- ``syncd health`` finds a running daemon from its ``replicas`` row (its listener's real address,
  even on port 0), and with no daemon running says when one was last seen and exits 1.
"""

from __future__ import annotations

import json
import re

import pytest

from syncd.sim import Simulator
from tests.acceptance.conftest import DaemonFactory, fetchval, run_cli
from tests.helpers import wait_for


def _failing_everywhere(body: dict[str, object], account: str) -> bool:
    tasks = body["tasks"]
    assert isinstance(tasks, dict)
    return all(t["accounts"].get(account, {}).get("last_error") for t in tasks.values())


@pytest.mark.slow
async def test_refused_credentials_are_not_ok_for_any_task(
    sim: Simulator, dsn: str, daemon_factory: DaemonFactory
) -> None:
    accounts = [sim.account_settings(0, "alpaca"), sim.account_settings(1, "alpaca")]
    sim.faults.fail_auth(0)
    daemon = daemon_factory(accounts, dsn=dsn)
    await daemon.start()

    async def refused_everywhere() -> dict[str, object] | None:
        got = await daemon.healthz()
        return got[1] if got and _failing_everywhere(got[1], "sim-alpaca-0") else None

    body = await wait_for(refused_everywhere, timeout=40, interval=0.2, what="sim-alpaca-0 failing in every task")
    assert body["status"] == "degraded"
    monitor = body["tasks"]["monitorCycle"]["accounts"]  # type: ignore[index]
    assert (
        # either the remembered refusal ("credentials refused ...") or monitorCycle's own cheap call's 401/403
        any(word in monitor["sim-alpaca-0"]["last_error"].lower() for word in ("credentials", "not authorised"))
    )
    assert monitor["sim-alpaca-1"]["last_error"] is None
    assert (
        await fetchval(
            dsn,
            "SELECT count(*) FROM portfolio_positions p JOIN accounts a ON a.id = p.account_id "
            "WHERE a.name = 'sim-alpaca-0'",
        )
        == 0
    )  # nothing stored: monitorCycle had nothing to quote

    # `syncd health` (finding the daemon by itself) says the same.
    code, out, err = await run_cli("--config", str(daemon.config), "health", "--json")
    assert code == 0, err
    assert _failing_everywhere(json.loads(out), "sim-alpaca-0")
    code, out, _err = await run_cli("--config", str(daemon.config), "health", "--strict")
    assert code == 1 and "monitorCycle/sim-alpaca-0 failing" in out

    # sync-once: a fresh process, every task, and monitorCycle alone (its credentials not yet known).
    code, out, _err = await run_cli("--config", str(daemon.config), "sync-once", "--account", "sim-alpaca-0")
    assert code == 1
    lines = [ln for ln in out.splitlines() if ln.startswith("sim-alpaca-0")]
    assert len(lines) == 3 and all("FAILED" in ln for ln in lines), out
    code, out, _err = await run_cli(
        "--config", str(daemon.config), "sync-once", "--account", "sim-alpaca-0", "--task", "monitor"
    )
    assert code == 1 and "monitorCycle" in out and "FAILED" in out, out

    # Credentials accepted again: every task recovers.
    sim.faults.fail_auth(0, on=False)
    await daemon.wait_status("ok", timeout=40)
    assert await daemon.stop() == 0

    # Every stderr line is one JSON object with a constant event (libraries' lines as library_log).
    lines = daemon.stderr().splitlines()
    assert lines
    for line in lines:
        event = json.loads(line)
        assert re.fullmatch(r"[a-z][a-z0-9_]*", event["event"]), line
        if event["event"] == "library_log":
            assert event["logger"] and isinstance(event["message"], str), line


@pytest.mark.slow
async def test_health_finds_the_daemon_on_port_0_and_never_reports_a_dead_one(
    sim: Simulator, dsn: str, daemon_factory: DaemonFactory
) -> None:
    accounts = [sim.account_settings(0, "alpaca")]
    daemon = daemon_factory(accounts, dsn=dsn, name="p0", health={"listen": "127.0.0.1:0"})
    await daemon.start()

    async def registered() -> str | None:
        assert daemon.alive(), daemon.stderr()[-3000:]
        url: str | None = await fetchval(dsn, "SELECT health_url FROM replicas WHERE instance = 'p0'")
        return url

    url = await wait_for(registered, timeout=30, interval=0.2, what="the replica registers its listener")
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    ready = [e for e in daemon.events() if e["event"] == "daemon_ready"]
    assert ready and ready[0]["listen"] == url.removeprefix("http://") and ready[0]["health_url"] == url
    daemon.health_url = url
    await daemon.wait_status("ok", timeout=40)

    code, out, err = await run_cli("--config", str(daemon.config), "health", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert body["status"] == "ok" and body["source"] == url and body["instance"] == "p0"

    # Killed: its replicas row remains (and task_health says the tasks ran moments ago), but its
    # lease session is gone, so no live instance: unreachable, exit 1, not `degraded`/0.
    await daemon.kill()
    code, out, _err = await run_cli("--config", str(daemon.config), "health")
    assert code == 1, out
    assert out.startswith("status: unhealthy")
    assert f"daemon not reachable at {url}" in out and "last seen at 20" in out and "(from the database)" in out

    # Started again and stopped cleanly (the row is removed): still exit 1, with when it was last seen.
    await daemon.start()
    old = url

    async def registered_again() -> str | None:
        got = await registered()
        return got if got != old else None  # the killed one's row stays until the new one's heartbeat

    url = await wait_for(registered_again, timeout=30, interval=0.2, what="registered again")
    daemon.health_url = url
    await daemon.wait_status("ok", timeout=40)
    assert await daemon.stop() == 0
    code, out, _err = await run_cli("--config", str(daemon.config), "health", "--json")
    body = json.loads(out)
    assert code == 1 and body["status"] == "unhealthy" and body["last_seen_at"]
    assert body["error"].startswith("daemon not reachable at ") and "(from the database)" in body["error"]
