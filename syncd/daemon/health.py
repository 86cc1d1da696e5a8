"""Health: what ``/healthz`` and ``syncd health`` say, and the HTTP listener that says it.

The verdict (docs/operations.md):

- ``unhealthy`` (503): the database is unreachable, or a task has not completed a
  pass within its staleness limit;
- ``degraded`` (200): every task runs, but some active account is failing (or has
  not succeeded within the limit);
- ``ok`` (200): every task passed over every active account within the limit.

A task's staleness limit is ``health.stale_after_s``, or twice its current interval
when that is longer (the closed-market cadence is 300 s by default, as long as the
default ``stale_after_s``; without this a healthy daemon would flap every evening).
Before its first pass, a task is measured from when its loop started.

The daemon judges its own tasks from memory (``TaskView`` kept by the supervisor)
and the accounts from ``account_health``; ``syncd health`` without a daemon to ask
judges from ``task_health``, per task taking the instance that ran it last. Every
database read has a deadline, so ``/healthz`` answers 503 while Postgres is down
rather than hang.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from syncd.db import Queries, discover_migrations
from syncd.errors import DB_ERRORS, describe
from syncd.metrics import Metrics

log = structlog.get_logger(__name__)

Status = Literal["ok", "degraded", "unhealthy"]
TASK_NAMES = ("accountSync", "tradeCycle", "monitorCycle")
DB_TIMEOUT_S = 3.0

# What asyncpg and the OS raise while the server is down, restarting or refusing us.
DB_DOWN_ERRORS = DB_ERRORS  # (OSError, InterfaceError, PostgresError): see syncd.errors


class DaemonMetrics(Metrics):
    """The cycles' metrics plus the supervisor's own."""

    def __init__(self) -> None:
        super().__init__()
        self._declare("syncd_task_restarts_total", "counter", "Task loops restarted after a failure, by task")
        self._declare("syncd_leases_held", "gauge", "Accounts this replica holds a lease on")
        self._declare("syncd_replicas_live", "gauge", "Replicas with a live heartbeat, as this one last saw")
        self._declare("syncd_database_up", "gauge", "1 when the last database check succeeded")
        self._declare("syncd_sync_runs_purged_total", "counter", "sync_runs rows removed by retention")
        self._declare("syncd_up", "gauge", "1 while the supervisor runs")
        self._declare("syncd_lease_changes_total", "counter", "Account leases this replica acquired or lost")
        self._declare("syncd_outbox_waiting", "gauge", "Outbox requests queued or submitting, per account")
        self._declare("syncd_outbox_oldest_waiting_seconds", "gauge", "Age of the oldest queued or submitting request")


@dataclass(slots=True)
class AccountView:
    last_ok_at: dt.datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0


@dataclass(slots=True)
class TaskView:
    """One task as health sees it. The supervisor keeps one per task and updates it in place."""

    started_at: dt.datetime | None = None  # the loop began (or restarted)
    last_started_at: dt.datetime | None = None  # the latest pass began
    last_ok_at: dt.datetime | None = None  # the latest pass completed
    last_error: str | None = None  # the loop's own failure (cleared by a completed pass)
    consecutive_failures: int = 0
    interval_s: float | None = None  # the current cadence
    accounts_total: int = 0
    accounts_failed: int = 0
    instance: str | None = None
    accounts: dict[str, AccountView] = field(default_factory=dict)


@dataclass(slots=True)
class HealthReport:
    status: Status
    tasks: dict[str, TaskView]
    database: bool
    reasons: list[str]
    instance: str | None = None
    quote_streams: dict[str, Any] | None = None  # account -> stream -> state (syncd.daemon.quotes)

    @property
    def http_status(self) -> int:
        return 503 if self.status == "unhealthy" else 200

    def body(self) -> dict[str, Any]:
        """The JSON body of docs/operations.md (with ``instance``, ``database`` and ``reasons``)."""
        return {
            "status": self.status,
            "tasks": {
                name: {
                    "last_ok_at": _iso(t.last_ok_at),
                    "last_error": t.last_error,
                    "consecutive_failures": t.consecutive_failures,
                    "accounts": {
                        acct: {"last_ok_at": _iso(a.last_ok_at), "last_error": a.last_error}
                        for acct, a in sorted(t.accounts.items())
                    },
                }
                for name, t in self.tasks.items()
            },
            "database": "ok" if self.database else "unreachable",
            "instance": self.instance,
            "reasons": self.reasons,
            **({"quote_streams": self.quote_streams} if self.quote_streams is not None else {}),
        }


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value is not None else None


def stale_limit(task: TaskView, stale_after_s: float) -> float:
    """Seconds a task may go without completing a pass."""
    return max(stale_after_s, 2 * task.interval_s) if task.interval_s else stale_after_s


def evaluate(
    tasks: Mapping[str, TaskView], *, now: dt.datetime, stale_after_s: float, database: bool
) -> tuple[Status, list[str]]:
    """The verdict and the reasons for it (empty when ok)."""
    unhealthy: list[str] = []
    degraded: list[str] = []
    if not database:
        unhealthy.append("database unreachable")
    if not tasks:
        unhealthy.append("no task has reported")
    for name, task in tasks.items():
        limit = stale_limit(task, stale_after_s)
        since = task.last_ok_at or task.started_at
        if since is None or (now - since).total_seconds() > limit:
            what = "has never completed a pass" if task.last_ok_at is None else "has not completed a pass"
            unhealthy.append(f"{name} {what} within {limit:g}s")
        task_old_enough = task.started_at is not None and (now - task.started_at).total_seconds() > limit
        for acct, view in task.accounts.items():
            if view.consecutive_failures > 0 or view.last_error:
                degraded.append(f"{name}/{acct} failing")
            elif task_old_enough and (view.last_ok_at is None or (now - view.last_ok_at).total_seconds() > limit):
                degraded.append(f"{name}/{acct} not synced within {limit:g}s")
    if unhealthy:
        return "unhealthy", unhealthy + degraded
    if degraded:
        return "degraded", degraded
    return "ok", []


def build_report(
    tasks: Mapping[str, TaskView],
    accounts: Mapping[str, Mapping[str, AccountView]] | None,
    *,
    now: dt.datetime,
    stale_after_s: float,
    database: bool,
    instance: str | None = None,
) -> HealthReport:
    """Attach per-account detail (task -> account -> view) to copies of ``tasks`` and judge them."""
    merged: dict[str, TaskView] = {}
    for name, task in tasks.items():
        copy = TaskView(
            started_at=task.started_at,
            last_started_at=task.last_started_at,
            last_ok_at=task.last_ok_at,
            last_error=task.last_error,
            consecutive_failures=task.consecutive_failures,
            interval_s=task.interval_s,
            accounts_total=task.accounts_total,
            accounts_failed=task.accounts_failed,
            instance=task.instance,
            accounts=dict((accounts or {}).get(name, task.accounts)),
        )
        merged[name] = copy
    status, reasons = evaluate(merged, now=now, stale_after_s=stale_after_s, database=database)
    return HealthReport(status, merged, database, reasons, instance)


# --- database reads ---------------------------------------------------------------------


async def read_accounts(
    pool: asyncpg.Pool[Any], queries: Queries, names: Sequence[str], tasks: Iterable[str] = TASK_NAMES
) -> dict[str, dict[str, AccountView]]:
    """Per task, every active account among ``names`` (with no outcome yet: an empty view)."""
    active = [r["name"] for r in await pool.fetch(queries["active_accounts_named"], list(names))]
    out: dict[str, dict[str, AccountView]] = {t: {n: AccountView() for n in active} for t in tasks}
    for row in await pool.fetch(queries["health_accounts"], active):
        if row["task"] in out:
            out[row["task"]][row["name"]] = AccountView(
                row["last_ok_at"], row["last_error"], row["consecutive_failures"]
            )
    return out


async def read_tasks(pool: asyncpg.Pool[Any], queries: Queries, instance: str | None = None) -> dict[str, TaskView]:
    """``task_health`` rows: one instance's, or per task the instance that ran it most recently."""
    out: dict[str, TaskView] = {}
    for row in await pool.fetch(queries["health_tasks"], instance):
        if row["task"] in out:
            continue  # rows come newest first per task
        out[row["task"]] = TaskView(
            started_at=row["started_at"],
            last_started_at=row["last_started_at"],
            last_ok_at=row["last_ok_at"],
            last_error=row["last_error"],
            consecutive_failures=row["consecutive_failures"],
            interval_s=row["interval_s"],
            accounts_total=row["accounts_total"],
            accounts_failed=row["accounts_failed"],
            instance=row["instance"],
        )
    return {t: out[t] for t in sorted(out, key=lambda t: TASK_NAMES.index(t) if t in TASK_NAMES else 99)}


async def report_from_db(
    pool: asyncpg.Pool[Any],
    queries: Queries,
    *,
    account_names: Sequence[str],
    stale_after_s: float,
    instance: str | None = None,
    timeout_s: float = DB_TIMEOUT_S,
) -> HealthReport:
    """The verdict from the tables alone (``syncd health`` with no daemon to ask)."""
    now = dt.datetime.now(dt.UTC)
    try:
        async with asyncio.timeout(timeout_s):
            tasks = await read_tasks(pool, queries, instance)
            accounts = await read_accounts(pool, queries, account_names, tasks)
            now = await pool.fetchval(queries["db_now"])
    except DB_DOWN_ERRORS as exc:
        log.warning("health_database_unreachable", error=describe(exc))
        return build_report({}, None, now=now, stale_after_s=stale_after_s, database=False, instance=instance)
    return build_report(tasks, accounts, now=now, stale_after_s=stale_after_s, database=True, instance=instance)


@dataclass(frozen=True, slots=True)
class SchemaState:
    reachable: bool
    current: int | None  # the highest applied version
    expected: int  # the newest migration this code ships
    missing: tuple[int, ...] = ()  # shipped versions not applied
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.reachable and not self.missing


async def schema_state(pool: asyncpg.Pool[Any], queries: Queries, timeout_s: float = DB_TIMEOUT_S) -> SchemaState:
    """Is the database reachable, and has every migration this code ships been applied?"""
    shipped = [m.version for m in discover_migrations()]
    expected = shipped[-1] if shipped else 0
    try:
        async with asyncio.timeout(timeout_s):
            applied = {r["version"] for r in await pool.fetch(queries["schema_versions"])}
    except DB_DOWN_ERRORS as exc:
        return SchemaState(False, None, expected, tuple(shipped), describe(exc))
    return SchemaState(True, max(applied, default=0), expected, tuple(v for v in shipped if v not in applied))


# --- the HTTP listener ------------------------------------------------------------------


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``health.listen`` (aiohttp, same event loop)."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool[Any],
        queries: Queries,
        metrics: Metrics,
        tasks: Callable[[], Mapping[str, TaskView]],
        account_names: Sequence[str],
        stale_after_s: float,
        instance: str,
        timeout_s: float = DB_TIMEOUT_S,
        quote_streams: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._pool = pool
        self._queries = queries
        self._metrics = metrics
        self._tasks = tasks
        self._names = list(account_names)
        self._stale_after_s = stale_after_s
        self._instance = instance
        self._timeout_s = timeout_s
        self._quote_streams = quote_streams
        self._last_accounts: dict[str, dict[str, AccountView]] | None = None
        self._runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_text)
        return app

    async def start(self, listen: str) -> tuple[str, int]:
        """Bind ``host:port`` (port 0: any free one); return the address actually bound."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port), reuse_address=True)
        await site.start()
        server = site._server  # aiohttp exposes the bound socket only here
        sockets = getattr(server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else int(port)
        self.bound = (host, bound_port)
        log.info("health_listening", host=host, port=bound_port)
        return self.bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def report(self) -> HealthReport:
        """This instance's verdict: its tasks from memory, the accounts from the database."""
        database = True
        try:
            async with asyncio.timeout(self._timeout_s):
                self._last_accounts = await read_accounts(self._pool, self._queries, self._names)
        except DB_DOWN_ERRORS as exc:
            database = False
            log.debug("health_database_unreachable", error=describe(exc))
        self._metrics.set("syncd_database_up", 1.0 if database else 0.0)
        report = build_report(
            self._tasks(),
            self._last_accounts,
            now=dt.datetime.now(dt.UTC),
            stale_after_s=self._stale_after_s,
            database=database,
            instance=self._instance,
        )
        if self._quote_streams is not None:
            report.quote_streams = self._quote_streams()
        return report

    async def _healthz(self, request: web.Request) -> web.Response:
        report = await self.report()
        return web.json_response(report.body(), status=report.http_status)

    async def _readyz(self, request: web.Request) -> web.Response:
        state = await schema_state(self._pool, self._queries, self._timeout_s)
        body = {
            "ready": state.ready,
            "database": "ok" if state.reachable else "unreachable",
            "schema_version": state.current,
            "expected_version": state.expected,
            "missing_migrations": list(state.missing),
        }
        return web.json_response(body, status=200 if state.ready else 503)

    async def _metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render().encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )


async def fetch_report(url: str, timeout_s: float = 5.0) -> tuple[int, dict[str, Any]]:
    """GET ``url``/healthz; (HTTP status, JSON body). Raises ``aiohttp.ClientError``/``TimeoutError``."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    target = url.rstrip("/") + "/healthz"
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(target) as resp:
        body = await resp.json(content_type=None)
        if not isinstance(body, dict) or "status" not in body:
            raise aiohttp.ContentTypeError(resp.request_info, resp.history, message="not a syncd health body")
        return resp.status, body
