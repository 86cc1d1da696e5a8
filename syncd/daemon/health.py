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
and the accounts from ``account_health``, read once a second into a snapshot that
every request is served from (``HealthServer``); ``syncd health`` without a daemon
to ask but with a live instance's fresh heartbeat judges from ``task_health``, per
task taking the instance that ran it last. Every database read has a deadline, so
``/healthz`` answers 503 while Postgres is down rather than hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import asyncpg
import structlog

from syncd.db import Queries, discover_migrations
from syncd.errors import DB_ERRORS, describe
from syncd.metrics import Metrics, StreamView

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
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)  # by account: see stream_views
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
            "streams": self.streams,
            **({"quote_streams": self.quote_streams} if self.quote_streams is not None else {}),
        }


def stream_views(views: Mapping[str, StreamView], now: float) -> dict[str, dict[str, Any]]:
    """Each account's trade stream: state, connected, last event time and age, counts, last error.

    A stream's state does not change the verdict: polling carries every account whose stream
    is down or refused (the stream is the fast path, not the only one).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, v in sorted(views.items()):
        last = v.last_event_at
        out[name] = {
            "broker": v.broker,
            "state": v.state,
            "connected": v.state == "connected",
            "since": _iso(dt.datetime.fromtimestamp(v.since, dt.UTC)) if v.since else None,
            "last_event_at": _iso(dt.datetime.fromtimestamp(last, dt.UTC)) if last is not None else None,
            "last_event_age_s": round(max(0.0, now - last), 1) if last is not None else None,
            "events": v.events,
            "reconnects": v.reconnects,
            "last_error": v.last_error,
        }
    return out


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

SNAPSHOT_S = 1.0  # how often the daemon refreshes what /healthz and /readyz say
SNAPSHOT_STALE_S = 10.0  # a snapshot older than this (the refresher is stuck) is itself a 503
MAX_CONNECTIONS = 4096  # open connections at once (a few KB each); beyond that the listener sheds load
HEAD_TIMEOUT_S = 5.0  # a client must send its request line and headers within this
EVICT_AFTER_S = 0.5  # at the limit, a connection still silent after this is closed for a new one
MAX_HEAD_BYTES = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def listen_url(listen: str) -> str | None:
    """``host:port`` as a URL to connect to (a wildcard address becomes loopback)."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)  # noqa: S104
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True, slots=True)
class _Page:
    status: int
    body: bytes
    content_type: str = "application/json"


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``health.listen`` (asyncio streams, same event loop).

    A request never touches the database: a refresher reads the accounts' health and the
    schema state every ``SNAPSHOT_S`` and renders both answers once; each request is served
    those bytes (and ``/metrics`` a rendering at most ``SNAPSHOT_S`` old). The listener keeps
    at most ``MAX_CONNECTIONS`` open: a client has ``HEAD_TIMEOUT_S`` to send its request,
    and at the limit the oldest connection silent for ``EVICT_AFTER_S`` is closed to make room
    (else the newcomer gets a 503). Every answer closes its connection.
    """

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
        snapshot_s: float = SNAPSHOT_S,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout_s: float = HEAD_TIMEOUT_S,
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
        self._snapshot_s = snapshot_s
        self._max_connections = max_connections
        self._head_timeout_s = head_timeout_s
        self._quote_streams = quote_streams
        self._last_accounts: dict[str, dict[str, AccountView]] | None = None
        self._database = False
        self._slow_reads = 0  # snapshot reads in a row that ran past their deadline
        self._health: _Page | None = None
        self._ready: _Page | None = None
        self._metrics_page: tuple[float, _Page] | None = None
        self._snapshot_at = 0.0  # monotonic time of the latest snapshot
        self._first = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._open: set[asyncio.Task[None]] = set()
        self._writers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._silent: dict[asyncio.StreamWriter, float] = {}  # connections that have not sent their head yet
        self.shed = 0  # connections refused or evicted at the limit
        self.timed_out = 0  # connections closed for not sending a request in time
        self.bound: tuple[str, int] | None = None

    @property
    def url(self) -> str | None:
        """The bound address as a URL to connect to (what ``replicas.health_url`` holds)."""
        return listen_url(f"{self.bound[0]}:{self.bound[1]}") if self.bound else None

    async def start(self, listen: str) -> tuple[str, int]:
        """Bind ``host:port`` (port 0: any free one); return the address actually bound."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self._server = await asyncio.start_server(
            self._accept, host or None, int(port), reuse_address=True, backlog=4096, limit=MAX_HEAD_BYTES
        )
        sockets = self._server.sockets
        bound_port = sockets[0].getsockname()[1] if sockets else int(port)
        self.bound = (host, bound_port)
        self._refresher = asyncio.create_task(self._refresh_loop(), name="health-snapshot")
        log.info("health_listening", host=host, port=bound_port, url=self.url)
        return self.bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)

    # --- the snapshot -------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001  # keep refreshing; a stale snapshot turns into a 503
                log.error("health_snapshot_failed", error=describe(exc))
            await asyncio.sleep(self._snapshot_s)

    async def refresh(self) -> None:
        """Read the accounts' health and the schema state once; render /healthz and /readyz."""
        database = True
        try:
            async with asyncio.timeout(self._timeout_s):
                self._last_accounts = await read_accounts(self._pool, self._queries, self._names)
            self._slow_reads = 0
        except TimeoutError as exc:
            # One read past its deadline may be this process's own busy event loop, not the
            # database: unreachable only when two in a row time out (or it refuses us outright).
            self._slow_reads += 1
            database = self._slow_reads < 2 and self._database
            log.debug("health_database_slow", error=describe(exc), in_a_row=self._slow_reads)
        except DB_DOWN_ERRORS as exc:
            database = False
            log.debug("health_database_unreachable", error=describe(exc))
        self._database = database
        self._metrics.set("syncd_database_up", 1.0 if database else 0.0)
        state = (
            await schema_state(self._pool, self._queries, self._timeout_s)
            if database
            else SchemaState(False, None, 0, (), "database unreachable")
        )
        ready = {
            "ready": state.ready,
            "database": "ok" if state.reachable else "unreachable",
            "schema_version": state.current,
            "expected_version": state.expected if state.reachable else None,
            "missing_migrations": list(state.missing),
        }
        self._ready = _Page(200 if state.ready else 503, json.dumps(ready).encode())
        self._health = self._render_health()
        self._snapshot_at = time.monotonic()
        self._first.set()

    def _render_health(self) -> _Page:
        report = self.report_now()
        return _Page(report.http_status, json.dumps(report.body()).encode())

    def report_now(self) -> HealthReport:
        """This instance's verdict: its tasks from memory, the accounts as last read."""
        now = dt.datetime.now(dt.UTC)
        report = build_report(
            self._tasks(),
            self._last_accounts,
            now=now,
            stale_after_s=self._stale_after_s,
            database=self._database,
            instance=self._instance,
        )
        report.streams = stream_views(self._metrics.streams, now.timestamp())
        if self._quote_streams is not None:
            report.quote_streams = self._quote_streams()
        return report

    async def report(self) -> HealthReport:
        """A fresh verdict (refreshes the snapshot first)."""
        await self.refresh()
        return self.report_now()

    async def _page(self, path: str) -> _Page:
        if path == "/metrics":
            now = time.monotonic()
            if self._metrics_page is None or now - self._metrics_page[0] >= self._snapshot_s:
                text = self._metrics.render().encode()
                self._metrics_page = (now, _Page(200, text, "text/plain; version=0.0.4; charset=utf-8"))
            return self._metrics_page[1]
        if path not in ("/healthz", "/readyz"):
            return _Page(404, b'{"error": "not found"}')
        if not self._first.is_set():  # just started: wait for the first snapshot (bounded)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout_s * 2 + 1):
                    await self._first.wait()
        page = self._health if path == "/healthz" else self._ready
        age = time.monotonic() - self._snapshot_at
        if page is None or age > SNAPSHOT_STALE_S:
            reason = f"health snapshot is {age:.0f}s old"
            body = {"status": "unhealthy", "reasons": [reason], "instance": self._instance}
            return _Page(503, json.dumps(body).encode())
        return page

    # --- connections ----------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self._max_connections and not self._evict_one():
            self.shed += 1
            _write_page(writer, _Page(503, b'{"error": "too many connections"}'), head_only=False)
            writer.close()
            return
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._open.add(task)
        self._writers[task] = writer
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._open.discard(task)
        writer = self._writers.pop(task, None)
        if writer is not None and not writer.transport.is_closing():  # cancelled before it was served
            writer.close()

    def _evict_one(self) -> bool:
        """Close the oldest connection silent for ``EVICT_AFTER_S``; True if one was closed."""
        if not self._silent:
            return False
        writer, since = next(iter(self._silent.items()))
        if time.monotonic() - since < EVICT_AFTER_S:
            return False
        self._silent.pop(writer, None)
        self.shed += 1
        writer.transport.abort()
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._silent[writer] = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self._head_timeout_s):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                self.timed_out += 1
                return
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
                return
            finally:
                self._silent.pop(writer, None)
            method, path = _request_line(head)
            if method not in ("GET", "HEAD"):
                page = _Page(405 if method else 400, b'{"error": "only GET"}')
            else:
                page = await self._page(path)
            _write_page(writer, page, head_only=method == "HEAD")
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(self._head_timeout_s):
                    await writer.drain()
        finally:
            writer.close()


def _request_line(head: bytes) -> tuple[str, str]:
    """(method, path without the query) of an HTTP/1.x request head; ("", "") when it is not one."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return "", ""
    return parts[0], parts[1].split("?", 1)[0]


def _write_page(writer: asyncio.StreamWriter, page: _Page, *, head_only: bool) -> None:
    head = (
        f"HTTP/1.1 {page.status} {_REASONS.get(page.status, 'Unknown')}\r\n"
        f"Content-Type: {page.content_type}\r\nContent-Length: {len(page.body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write(head if head_only else head + page.body)


async def fetch_report(url: str, timeout_s: float = 5.0) -> tuple[int, dict[str, Any]]:
    """GET ``url``/healthz; (HTTP status, JSON body). Raises ``aiohttp.ClientError``/``TimeoutError``."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    target = url.rstrip("/") + "/healthz"
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(target) as resp:
        body = await resp.json(content_type=None)
        if not isinstance(body, dict) or "status" not in body:
            raise aiohttp.ContentTypeError(resp.request_info, resp.history, message="not a syncd health body")
        return resp.status, body
