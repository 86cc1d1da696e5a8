"""The supervisor on a real Postgres: cadence, restarts with backoff, ordered shutdown, leases, health, retention.

The account passes here are small stand-ins (the real cycles have their own tests);
everything else (leases, task_health, sync_runs, the listener) is the real thing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

import syncd.daemon.supervisor as supervisor_mod
from syncd.context import Account, Context
from syncd.cycles import TaskName
from syncd.daemon.health import HealthServer
from syncd.daemon.leases import LeaseManager
from syncd.daemon.passes import run_pass
from syncd.daemon.sdnotify import Notifier
from syncd.daemon.supervisor import Supervisor, TaskDef
from syncd.settings import AccountSettings
from tests.helpers import wait_for

TASK_NAMES: tuple[TaskName, ...] = ("accountSync", "tradeCycle", "monitorCycle")


def account(name: str) -> AccountSettings:
    # Never contacted: the passes below do not call the broker.
    return AccountSettings(
        name=name, broker="alpaca", api_key="k-test", api_secret="s-test", base_url="http://127.0.0.1:9"
    )


async def fast(ctx: Context, task: TaskName, normal: float) -> float:
    return 0.05


class Recorder:
    """Account passes that count calls and watch for a pass overlapping itself."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.running: Counter[tuple[str, str]] = Counter()
        self.max_running = 0

    def fn(self, task: str, delay: float = 0.0) -> Callable[[Context, Account], Awaitable[dict[str, Any]]]:
        async def account_pass(ctx: Context, acct: Account) -> dict[str, Any]:
            key = (task, acct.name)
            self.running[key] += 1
            self.max_running = max(self.max_running, self.running[key])
            try:
                await asyncio.sleep(delay)
                self.calls[key] += 1
                return {"n": self.calls[key]}
            finally:
                self.running[key] -= 1

        return account_pass

    def passes(self, task: str) -> int:
        return min((n for (t, _), n in self.calls.items() if t == task), default=0)


@pytest_asyncio.fixture(loop_scope="function")
async def ctx(make_context: Any) -> AsyncIterator[Context]:
    async with make_context(accounts=[account("a1"), account("a2")], cycles={"jitter_pct": 0}) as context:
        yield context


def build(
    ctx: Context,
    tasks: list[TaskDef],
    *,
    instance: str | None = None,
    heartbeat_s: float = 5.0,
    notifier: Notifier | None = None,
    interval_for: Callable[[Context, TaskName, float], Awaitable[float]] = fast,
    restart_backoff: Callable[[int], float] = supervisor_mod.backoff,
) -> tuple[Supervisor, asyncio.Event]:
    if instance is not None:
        ctx = dataclasses.replace(ctx, instance=instance)
    stop = asyncio.Event()
    holder: list[Supervisor] = []
    leases = LeaseManager(
        ctx.pool,
        ctx.queries,
        instance=ctx.instance,
        account_ids=[a.id for a in ctx.accounts.values()],
        heartbeat_s=heartbeat_s,
        busy=lambda: holder[0].busy() if holder else frozenset(),
    )
    sup = Supervisor(
        ctx,
        stop=stop,
        leases=leases,
        tasks=tasks,
        interval_for=interval_for,
        stream=None,
        notifier=notifier,
        restart_backoff=restart_backoff,
    )
    holder.append(sup)
    return sup, stop


async def test_three_tasks_pass_over_leased_accounts_and_record_health(ctx: Context) -> None:
    rec = Recorder()
    sup, _stop = build(ctx, [TaskDef(t, rec.fn(t, 0.01)) for t in TASK_NAMES])
    await sup.start()
    try:
        await wait_for(lambda: all(rec.passes(t) >= 3 for t in TASK_NAMES), timeout=10, what="3 passes per task")
    finally:
        await sup.shutdown(5)
    assert rec.max_running == 1, "a pass overlapped itself"
    rows = await ctx.pool.fetch("SELECT * FROM task_health WHERE instance = $1 ORDER BY task", ctx.instance)
    assert [r["task"] for r in rows] == sorted(TASK_NAMES)
    for row in rows:
        assert row["last_ok_at"] is not None
        assert row["consecutive_failures"] == 0
        assert row["accounts_total"] == 2
        assert row["started_at"] is not None
    runs = await ctx.pool.fetchval("SELECT count(*) FROM sync_runs WHERE ok")
    assert runs >= 3 * 3 * 2
    assert await ctx.pool.fetchval("SELECT count(*) FROM account_leases") == 0  # given back on shutdown


async def test_a_crashing_task_is_restarted_with_backoff_without_touching_the_others(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    real_run_pass = run_pass
    crashes = {"n": 0}

    async def flaky_run_pass(c: Context, task: TaskName, fn: Any, accounts: Any) -> Any:
        if task == "tradeCycle" and crashes["n"] < 3:
            crashes["n"] += 1
            raise RuntimeError("boom in the loop")
        return await real_run_pass(c, task, fn, accounts)

    monkeypatch.setattr(supervisor_mod, "run_pass", flaky_run_pass)
    sup, _stop = build(ctx, [TaskDef(t, rec.fn(t)) for t in TASK_NAMES], restart_backoff=lambda n: n / 20)
    with capture_logs() as logs:
        await sup.start()
        try:
            await wait_for(lambda: rec.passes("tradeCycle") >= 2, timeout=10, what="tradeCycle recovers")
            failed_row = await ctx.pool.fetchrow(
                "SELECT * FROM task_health WHERE instance = $1 AND task = 'tradeCycle'", ctx.instance
            )
        finally:
            await sup.shutdown(5)
    crashed = [e for e in logs if e["event"] == "task_crashed"]
    assert len(crashed) == 3
    assert crashed[0]["task"] == "tradeCycle" and "boom in the loop" in crashed[0]["error"]
    assert [e["in_s"] for e in logs if e["event"] == "task_restarting"] == [1 / 20, 2 / 20, 3 / 20]
    assert rec.passes("accountSync") >= 2 and rec.passes("monitorCycle") >= 2
    assert ctx.metrics.value("syncd_task_restarts_total", task="tradeCycle") == 3
    assert failed_row is not None and failed_row["last_error_at"] is not None
    assert sup.views["tradeCycle"].consecutive_failures == 0  # a completed pass reset it


async def test_shutdown_lets_short_passes_finish_and_cancels_long_ones(ctx: Context) -> None:
    rec = Recorder()
    release = asyncio.Event()
    started = asyncio.Event()

    async def stuck(c: Context, acct: Account) -> dict[str, Any]:
        started.set()
        await release.wait()  # never set: longer than the shutdown timeout
        return {}

    tasks = [TaskDef("accountSync", stuck), TaskDef("tradeCycle", rec.fn("tradeCycle", 0.3))]
    sup, _stop = build(ctx, tasks)
    await sup.start()
    await asyncio.wait_for(started.wait(), 5)
    await wait_for(lambda: any(rec.running.values()), timeout=5, what="a tradeCycle pass in flight")
    before = rec.passes("tradeCycle")
    with capture_logs() as logs:
        await sup.shutdown(1.0)
    assert rec.passes("tradeCycle") == before + 1, "the short pass in flight finished"
    cancelled = [e for e in logs if e["event"] == "shutdown_cancelling_pass"]
    assert [(e["task"], e["accounts"]) for e in cancelled] == [("accountSync", ["a1", "a2"])]
    aborted = await ctx.pool.fetch("SELECT ok, error FROM sync_runs WHERE task = 'accountSync'")
    assert len(aborted) == 2
    assert all(not r["ok"] and r["error"].startswith("PassAborted: stopped by shutdown") for r in aborted)
    assert all(t.done() for t in asyncio.all_tasks() if t.get_name() in ("accountSync", "tradeCycle", "leases"))


async def test_losing_a_lease_mid_pass_cancels_that_account_only(ctx: Context) -> None:
    entered: dict[str, asyncio.Event] = {"a1": asyncio.Event(), "a2": asyncio.Event()}
    cancelled: list[str] = []
    gate = asyncio.Event()

    async def slow(c: Context, acct: Account) -> dict[str, Any]:
        entered[acct.name].set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.append(acct.name)
            raise
        return {}

    sup, _stop = build(ctx, [TaskDef("accountSync", slow)])
    await sup.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in entered.values())), 5)
        a1 = ctx.accounts["a1"].id
        # Another replica "steals" a1 (as if ours had lapsed): the next heartbeat finds it gone.
        await ctx.pool.execute(
            "UPDATE account_leases SET holder = 'thief', expires_at = now() + interval '1 hour' WHERE account_id = $1",
            a1,
        )
        await sup.leases.heartbeat()
        await wait_for(lambda: cancelled == ["a1"], timeout=5, what="a1's pass cancelled")
        gate.set()
        row = await wait_for(
            lambda: ctx.pool.fetchrow(
                "SELECT ok, error FROM sync_runs s JOIN accounts a ON a.id = s.account_id WHERE a.name = 'a1'"
            ),
            timeout=5,
        )
    finally:
        await sup.shutdown(5)
    assert row["ok"] is False and "LeaseLost" in row["error"]
    assert await ctx.pool.fetchval(
        "SELECT ok FROM sync_runs s JOIN accounts a ON a.id = s.account_id WHERE a.name = 'a2' ORDER BY s.id LIMIT 1"
    )


async def test_two_supervisors_share_the_accounts(ctx: Context) -> None:
    seen: dict[str, Counter[str]] = {"r1": Counter(), "r2": Counter()}
    concurrent: Counter[str] = Counter()
    overlaps: list[str] = []

    def fn(instance: str) -> Callable[[Context, Account], Awaitable[dict[str, Any]]]:
        async def account_pass(c: Context, acct: Account) -> dict[str, Any]:
            concurrent[acct.name] += 1
            if concurrent[acct.name] > 1:
                overlaps.append(acct.name)
            try:
                await asyncio.sleep(0.01)
                seen[instance][acct.name] += 1
            finally:
                concurrent[acct.name] -= 1
            return {}

        return account_pass

    s1, _ = build(ctx, [TaskDef("accountSync", fn("r1"))], instance="r1", heartbeat_s=0.5)
    s2, _ = build(ctx, [TaskDef("accountSync", fn("r2"))], instance="r2", heartbeat_s=0.5)
    await s1.start()
    await s2.start()
    try:
        await wait_for(
            lambda: seen["r2"] and len(s1.leases.held()) == len(s2.leases.held()) == 1,
            timeout=10,
            what="one account each",
        )
        assert s1.leases.held().isdisjoint(s2.leases.held())
        await s1.shutdown(5)  # r1 leaves cleanly: r2 takes everything at its next heartbeat
        await wait_for(lambda: len(s2.leases.held()) == 2, timeout=5, what="r2 holds both")
    finally:
        await s2.shutdown(5)
    assert not overlaps


async def test_health_server_answers_and_reports_metrics(ctx: Context) -> None:
    rec = Recorder()
    sup, _stop = build(ctx, [TaskDef(t, rec.fn(t)) for t in TASK_NAMES])
    server = HealthServer(
        pool=ctx.pool,
        queries=ctx.queries,
        metrics=ctx.metrics,
        tasks=lambda: sup.views,
        account_names=list(ctx.accounts),
        stale_after_s=300,
        instance=ctx.instance,
    )
    host, port = await server.start("127.0.0.1:0")
    await sup.start()
    base = f"http://{host}:{port}"
    try:
        await wait_for(lambda: all(rec.passes(t) >= 1 for t in TASK_NAMES), timeout=10)
        async with aiohttp.ClientSession() as http:

            async def healthy() -> dict[str, Any] | None:
                async with http.get(base + "/healthz") as resp:
                    got: dict[str, Any] = await resp.json()
                    return got if resp.status == 200 and got["status"] == "ok" else None

            body = await wait_for(healthy, timeout=10, interval=0.1, what="/healthz ok")
            async with http.get(base + "/readyz") as resp:
                ready = await resp.json()
                assert resp.status == 200, ready

            async def metrics_text() -> str | None:
                async with http.get(base + "/metrics") as resp:
                    assert resp.headers["Content-Type"].startswith("text/plain")
                    got = await resp.text()
                    return got if 'syncd_last_success_timestamp_seconds{task="accountSync"}' in got else None

            text = await wait_for(metrics_text, timeout=10, interval=0.1, what="last-success gauge")
    finally:
        await sup.shutdown(5)
        await server.stop()
    assert body["status"] == "ok"
    assert set(body["tasks"]) == set(TASK_NAMES)
    assert set(body["tasks"]["accountSync"]["accounts"]) == {"a1", "a2"}
    assert ready["ready"] is True and ready["missing_migrations"] == []
    for name in (
        "syncd_cycle_duration_seconds",
        "syncd_cycle_failures_total",
        "syncd_broker_requests_total",
        "syncd_positions",
        "syncd_last_success_timestamp_seconds",
    ):
        assert f"# TYPE {name} " in text
    assert 'syncd_last_success_timestamp_seconds{task="accountSync"}' in text


async def test_healthz_answers_503_quickly_when_the_database_is_unreachable(ctx: Context) -> None:
    dead: asyncpg.Pool[Any] = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:1/none", min_size=0)
    server = HealthServer(
        pool=dead,
        queries=ctx.queries,
        metrics=ctx.metrics,
        tasks=dict,
        account_names=["a1"],
        stale_after_s=300,
        instance="x",
        timeout_s=2,
    )
    host, port = await server.start("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"http://{host}:{port}/healthz") as resp:
                assert resp.status == 503
                assert (await resp.json())["database"] == "unreachable"
            async with http.get(f"http://{host}:{port}/readyz") as resp:
                assert resp.status == 503
    finally:
        await server.stop()
        await dead.close()


async def test_retention_deletes_old_sync_runs_in_batches(ctx: Context) -> None:
    a1 = ctx.accounts["a1"].id
    await ctx.pool.execute(
        "INSERT INTO sync_runs (task, account_id, started_at, ok) "
        "SELECT 'accountSync', $1, now() - interval '8 days' - g * interval '1 second', true "
        "FROM generate_series(1, 25) g",
        a1,
    )
    await ctx.pool.execute(
        "INSERT INTO sync_runs (task, account_id, started_at, ok) VALUES ('accountSync', $1, now(), true)", a1
    )
    sup, _stop = build(ctx, [])
    assert await sup.housekeeping.purge_old_rows(batch=10) == 25
    assert await ctx.pool.fetchval("SELECT count(*) FROM sync_runs") == 1
    assert ctx.metrics.value("syncd_sync_runs_purged_total") == 25


async def test_watchdog_pings_only_while_every_task_is_on_schedule(ctx: Context) -> None:
    short_dir = Path(tempfile.mkdtemp(prefix="wd-"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_dir / "n.sock"))
    sock.setblocking(False)
    pings: list[bytes] = []

    def drain() -> int:
        while True:
            try:
                pings.append(sock.recv(256))
            except BlockingIOError:
                return sum(p == b"WATCHDOG=1" for p in pings)

    never = asyncio.Event()
    calls = [0]
    hang_from = [10**9]  # the first call that hangs

    async def maybe_stuck(c: Context, acct: Account) -> dict[str, Any]:
        calls[0] += 1
        if calls[0] >= hang_from[0]:
            await never.wait()
        return {}

    notifier = Notifier({"NOTIFY_SOCKET": str(short_dir / "n.sock"), "WATCHDOG_USEC": "100000"})
    sup, _stop = build(ctx, [TaskDef("accountSync", maybe_stuck)], notifier=notifier)
    try:
        with capture_logs() as logs:
            await sup.start()
            await wait_for(lambda: drain() >= 3, timeout=5, what="pings while healthy")
            assert sup.watchdog.alive() == (True, [])
            # From now on a pass that starts is already past its deadline. The one that hangs is two calls on:
            # a pass in flight now took its deadline before the change, the one after it surely after.
            sup.watchdog.grace_s = -3600.0
            hang_from[0] = calls[0] + 2
            await wait_for(lambda: any(e["event"] == "watchdog_withheld" for e in logs), timeout=5)
        withheld = next(e for e in logs if e["event"] == "watchdog_withheld")
        assert withheld["stalled"] == ["accountSync stalled"]
        assert sup.watchdog.alive()[0] is False
    finally:
        await sup.shutdown(0.5)
        sock.close()
        shutil.rmtree(short_dir, ignore_errors=True)


async def test_a_pass_past_its_budget_is_cancelled_and_the_task_restarted(make_context: Any) -> None:
    """A pass that hangs (a broker that never answers despite timeouts) must not stall its task forever."""
    calls: Counter[str] = Counter()
    never = asyncio.Event()

    async def hangs_once(c: Context, acct: Account) -> dict[str, Any]:
        calls[acct.name] += 1
        if calls[acct.name] == 1:
            await never.wait()
        return {}

    async with make_context(accounts=[account("a1")], health={"stale_after_s": 5}) as context:
        sup, _stop = build(context, [TaskDef("accountSync", hangs_once)], restart_backoff=lambda n: 0.05)
        with capture_logs() as logs:
            await sup.start()
            try:
                await wait_for(lambda: calls["a1"] >= 2, timeout=15, what="the task runs again after the hang")
            finally:
                await sup.shutdown(2)
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert failed and failed[0]["error"].startswith("PassTimeout: the pass took longer than 5s")


async def slow_cadence(ctx: Context, task: TaskName, normal: float) -> float:
    return 600.0


async def test_accounts_acquired_between_passes_are_served_at_once(ctx: Context, dsn: str) -> None:
    """Guards issue 10 item 4: an account taken over from a dead holder waited for the task's next
    regular pass (up to its interval); now every task passes over it as soon as it is acquired, and
    only over it (the others keep their cadence)."""
    recorder = Recorder()
    a1 = ctx.accounts["a1"].id
    dead = await asyncpg.connect(dsn)  # another replica's lease session, holding a1
    try:
        await dead.execute("SELECT pg_advisory_lock(1818583411, 424242)")
        await dead.execute(
            "INSERT INTO syncd.account_leases (account_id, holder, holder_session, expires_at) "
            "VALUES ($1, 'other', 424242, now() + interval '1 hour')",
            a1,
        )
        tasks = [TaskDef(name, recorder.fn(name)) for name in TASK_NAMES]
        sup, _stop = build(ctx, tasks, heartbeat_s=30, interval_for=slow_cadence)
        await sup.start()
        try:
            await wait_for(lambda: all(recorder.calls[(t, "a2")] == 1 for t in TASK_NAMES), timeout=5)
            assert all(recorder.calls[(t, "a1")] == 0 for t in TASK_NAMES)  # held by a live session
            await dead.close()  # that replica dies: its session and lock go
            await wait_for(
                lambda: all(recorder.calls[(t, "a1")] == 1 for t in TASK_NAMES),
                timeout=5,
                what="every task passes over a1 within seconds, not at its 600 s interval",
            )
            assert all(recorder.calls[(t, "a2")] == 1 for t in TASK_NAMES)
        finally:
            await sup.shutdown(5)
    finally:
        await dead.close()
