"""Postgres restarted under a running ``syncd run``: it keeps running, says unhealthy, and recovers by itself."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import asyncpg
import pytest

from syncd.sim import Simulator
from tests.acceptance.conftest import DaemonFactory, fetchval
from tests.acceptance.private_pg import PrivateCluster, why_unavailable
from tests.helpers import wait_for

_SKIP = why_unavailable()


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    if _SKIP:
        pytest.skip(_SKIP)
    pg = PrivateCluster()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


async def _create_db(pg: PrivateCluster) -> str:
    conn = await asyncpg.connect(pg.admin_dsn)
    try:
        await conn.execute("CREATE DATABASE syncd")
    finally:
        await conn.close()
    return pg.dsn("syncd")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_database_restart_under_load(
    mode: str, cluster: PrivateCluster, sim: Simulator, daemon_factory: DaemonFactory
) -> None:
    dsn = await _create_db(cluster)
    accounts = [sim.account_settings(i, "alpaca" if i % 2 == 0 else "tradier") for i in range(4)]
    daemon = daemon_factory(accounts, dsn=dsn, cycles={"concurrency": 4})
    await daemon.start()
    await daemon.wait_status("ok", timeout=40)

    cluster.stop(mode)
    seen_503 = 0

    async def reports_unhealthy() -> bool:
        nonlocal seen_503
        assert daemon.alive(), daemon.stderr()[-3000:]
        got = await daemon.healthz(timeout=8)  # must answer, not hang, while the database is gone
        assert got is not None, "/healthz did not answer while the database was down"
        status, body = got
        if status == 503 and body["status"] == "unhealthy" and body["database"] == "unreachable":
            seen_503 += 1
        return seen_503 >= 3

    await wait_for(reports_unhealthy, timeout=30, interval=0.3, what="503 while the database is down")
    cluster.start()
    back_at = dt.datetime.now(dt.UTC)

    async def synced_since_restart() -> bool:
        got = await daemon.healthz()
        if got is None or got[0] != 200:
            return False
        n = await fetchval(
            dsn,
            "SELECT count(DISTINCT account_id) FROM sync_runs WHERE ok AND started_at > $1 AND task = 'accountSync'",
            back_at,
        )
        return bool(n == len(accounts))

    await wait_for(synced_since_restart, timeout=60, interval=0.3, what="recovered by itself")
    assert daemon.alive()
    assert await daemon.stop() == 0
    events = daemon.events()
    crashes = [e for e in events if e["event"] in ("task_crashed", "background_task_crashed", "daemon_fatal")]
    assert crashes == [], crashes
    assert any(e["event"] in ("task_failed", "account_pass_failed", "lease_heartbeat_failed") for e in events)
