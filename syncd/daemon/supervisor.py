"""The composition root of ``syncd run``: tasks, cadence, restarts, leases, health, shutdown.

``serve(settings, stop=...)`` migrates, builds the ``Context``, takes account leases,
starts the health listener and three named task loops (accountSync, tradeCycle,
monitorCycle), tells systemd it is ready, and runs until ``stop`` is set (signal
handlers only set that Event). Then it stops in order: no new passes; passes in
flight may finish for ``cycles.shutdown_timeout_s``, the rest are cancelled (their
transactions roll back) and named in the log; streams stop; leases are given back;
the listener, the HTTP session and the pool close.

Each task loop: pick the active accounts this replica holds leases on, run one pass
(``syncd.daemon.passes.run_pass``: one transaction and one summary line per account), wait
its interval with jitter or until stop, whichever comes first. A pass never overlaps
itself (one loop per task). A loop that raises is logged, recorded in
``task_health`` and restarted with exponential backoff; the other loops never
notice. The database may go away at any time: every write of the supervisor's own
is best-effort with a deadline, and the loops retry until it is back.

The supervisor keeps the task loops and composes three small parts:
``syncd.daemon.streams.Streams`` (trade-update consumers that follow the leases),
``syncd.daemon.housekeeping.Housekeeping`` (gauges, retention) and
``syncd.daemon.watchdog.Watchdog`` (systemd pings while every loop is on schedule).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from syncd.context import Account, Context, open_context
from syncd.cycles import TASKS, AccountPass, TaskName
from syncd.cycles import task as task_spec
from syncd.daemon.aio import log_unretrieved as _log_unretrieved
from syncd.daemon.aio import stoppable_sleep as _stoppable_sleep
from syncd.daemon.health import DB_DOWN_ERRORS, DaemonMetrics, HealthServer, TaskView
from syncd.daemon.housekeeping import Housekeeping
from syncd.daemon.leases import HEARTBEAT_ERRORS, LeaseLost, LeaseManager
from syncd.daemon.passes import run_pass
from syncd.daemon.sdnotify import Notifier
from syncd.daemon.streams import StreamFn, Streams
from syncd.daemon.watchdog import WATCHDOG_GRACE_S, Watchdog, status_line
from syncd.errors import DB_UNAVAILABLE, describe
from syncd.errors import backoff as exponential_backoff
from syncd.settings import Settings
from syncd.trading.outbox import METRIC_OUTCOMES as OUTBOX_OUTCOMES

log = structlog.get_logger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
DB_WRITE_TIMEOUT_S = 5.0
ABORT_GRACE_S = 5.0  # after aborting passes at shutdown, how long their bookkeeping may take

# Errors that mean "the database is not there right now": wait and try again.
RETRYABLE_DB_ERRORS = DB_UNAVAILABLE


IntervalFn = Callable[[Context, TaskName, float], Awaitable[float]]


class Stopped(Exception):
    """``stop`` was set while waiting for something."""


class PassTimeout(Exception):
    """A whole pass of a task ran past its budget (``max(stale_after_s, 2 x interval)``)."""


class PassAborted(Exception):
    """Shutdown did not wait for this account's pass any longer; its transaction rolled back."""


# A task failing with these is logged without a traceback: the world, not a bug.
_EXPECTED_TASK_ERRORS: tuple[type[BaseException], ...] = (
    LeaseLost,
    PassTimeout,
    *RETRYABLE_DB_ERRORS,
    asyncpg.PostgresError,
    # A pooled connection still unwinding an operation the server's restart cut off ("cannot
    # switch to state 12; another operation (2) is in progress", see syncd.errors.DB_ERRORS): the
    # database going away, not a bug; the task restarts with backoff like any database outage.
    asyncpg.InternalClientError,
)


@dataclass(frozen=True, slots=True)
class TaskDef:
    name: TaskName
    fn: AccountPass


def default_tasks() -> list[TaskDef]:
    """The three cycles of ``syncd.cycles.TASKS``."""
    return [TaskDef(spec.name, spec.account_pass) for spec in TASKS]


def base_interval(settings: Settings, name: TaskName) -> float:
    return task_spec(name).interval(settings.cycles)


def jittered(interval: float, jitter_pct: float, rng: random.Random) -> float:
    """``interval`` moved by up to ``jitter_pct`` percent either way (replicas and tasks drift apart)."""
    if jitter_pct <= 0:
        return interval
    return max(0.0, interval * (1 + rng.uniform(-jitter_pct, jitter_pct) / 100))


def backoff(failures: int) -> float:
    """Delay before restarting a task after its ``failures``-th consecutive failure (1, 2, 4 ... 60 s)."""
    return exponential_backoff(failures, BACKOFF_BASE_S, BACKOFF_MAX_S)


def market_interval_fn() -> IntervalFn:
    """tradeCycle and monitorCycle slow to ``closed_market_interval_s`` while the market is closed."""
    from syncd.daemon.market_clock import Cadence

    return Cadence()


def stream_fn() -> StreamFn:
    """The tradeCycle's trade-update consumer (it reconnects by itself; returns when it cannot stream)."""
    from syncd.trading.stream import consume_trade_updates

    return consume_trade_updates


class Supervisor:
    """Runs the task loops and the lease heartbeat; composes ``streams``, ``housekeeping`` and ``watchdog``.

    ``restart_backoff(n)`` is the delay before restarting a loop or stream after its n-th
    consecutive failure; ``watchdog_grace_s`` is how far past its deadline a loop may be
    before the watchdog calls it stalled (``watchdog.grace_s``: tests move it while running).
    """

    def __init__(
        self,
        ctx: Context,
        *,
        stop: asyncio.Event,
        leases: LeaseManager,
        notifier: Notifier | None = None,
        tasks: Sequence[TaskDef] | None = None,
        interval_for: IntervalFn | None = None,
        stream: StreamFn | None = None,
        quotes: bool = False,
        rng: random.Random | None = None,
        restart_backoff: Callable[[int], float] = backoff,
        watchdog_grace_s: float = WATCHDOG_GRACE_S,
    ) -> None:
        self.ctx = ctx
        self._stop = stop
        self.leases = leases
        self._notifier = notifier or Notifier({})
        self._tasks = list(tasks) if tasks is not None else default_tasks()
        self._interval_for = interval_for
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._restart_backoff = restart_backoff
        self.views: dict[str, TaskView] = {t.name: TaskView(instance=ctx.instance) for t in self._tasks}
        self._in_flight: Counter[int] = Counter()
        self._in_flight_names: dict[str, set[str]] = {t.name: set() for t in self._tasks}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._leases_stop = asyncio.Event()
        self._abort = asyncio.Event()
        self.streams: Streams | None = None
        if stream is not None and ctx.settings.cycles.stream:
            self.streams = Streams(ctx, stream, restart_backoff=restart_backoff, spawn=self._spawn)
        # live quotes for exits (syncd.daemon.quotes): one watcher per held account that can stream quotes
        from syncd.daemon.quotes import QuoteRegistry, quote_stream_fn, quotes_supported

        self.quote_registry = QuoteRegistry()
        self.quote_streams: Streams | None = None
        if quotes:
            self.quote_streams = Streams(
                ctx,
                quote_stream_fn(self.quote_registry),
                restart_backoff=restart_backoff,
                spawn=self._spawn,
                can_stream=quotes_supported,
                kind="quotes",
            )
        self.housekeeping = Housekeeping(ctx, stop=stop)
        self.watchdog = Watchdog(
            self._notifier, stop=stop, loops=self._loops, status=self.status_line, grace_s=watchdog_grace_s
        )
        # Per task: accounts acquired since that task last passed over them, and the event that wakes it.
        self._fresh: dict[str, set[int]] = {t.name: set() for t in self._tasks}
        self._wake: dict[str, asyncio.Event] = {t.name: asyncio.Event() for t in self._tasks}
        self.leases.add_listener(self._on_leases)

    # --- lifecycle --------------------------------------------------------------------------

    def busy(self) -> frozenset[int]:
        """Accounts with a pass in flight (the lease balancer gives these back last)."""
        return frozenset(i for i, n in self._in_flight.items() if n > 0)

    async def start(self) -> None:
        """Take leases (one heartbeat, best-effort) and start every loop."""
        try:
            await self.leases.heartbeat()
        except HEARTBEAT_ERRORS as exc:
            log.warning("lease_heartbeat_failed", error=describe(exc))
        self._spawn(self.leases.run(self._leases_stop, on_error=self._lease_error), "leases")
        for td in self._tasks:
            self._loops[td.name] = self._spawn(self._supervise(td), td.name)
        self._spawn(self.housekeeping.run(), "housekeeping")
        self._spawn(self.watchdog.run(), "watchdog")
        self.ctx.metrics.set("syncd_up", 1.0)
        for td in self._tasks:  # counters start at 0, so rate() and alerts work before the first failure
            for name in self.ctx.accounts:
                self.ctx.metrics.inc("syncd_cycle_failures_total", 0.0, task=td.name, account=name)
        for name in self.ctx.accounts:
            for outcome in OUTBOX_OUTCOMES:
                self.ctx.metrics.inc("syncd_outbox_requests_total", 0.0, account=name, outcome=outcome)
        for change in ("acquired", "lost"):
            self.ctx.metrics.inc("syncd_lease_changes_total", 0.0, change=change)
        log.info("supervisor_started", tasks=[t.name for t in self._tasks], leases=len(self.leases.held()))

    async def shutdown(self, timeout_s: float) -> None:
        """Ordered stop: let passes finish up to ``timeout_s``, cancel the rest, stop streams, free leases."""
        self._stop.set()
        loops = list(self._loops.values())
        if loops:
            _done, pending = await asyncio.wait(loops, timeout=timeout_s)
            if pending:
                # Abort the account passes still running: each rolls back and is recorded as failed.
                for task in pending:
                    name = task.get_name()
                    log.warning(
                        "shutdown_cancelling_pass",
                        task=name,
                        accounts=sorted(self._in_flight_names.get(name, ())),
                        after_s=timeout_s,
                    )
                self._abort.set()
                _done, pending = await asyncio.wait(pending, timeout=ABORT_GRACE_S)
            for task in pending:  # not even in an account pass (a stuck query): cancel outright
                log.warning("shutdown_cancelling_task", task=task.get_name())
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.streams is not None:
            await self.streams.stop_all()
        if self.quote_streams is not None:
            await self.quote_streams.stop_all()
        self._leases_stop.set()
        others = [t for t in self._background if not t.done()]
        lease_tasks = [t for t in others if t.get_name() == "leases"]
        if lease_tasks:
            await asyncio.wait(lease_tasks, timeout=10.0)
        for task in others:
            if not task.done():
                task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.ctx.metrics.set("syncd_up", 0.0)
        log.info("supervisor_stopped")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_log_unretrieved)
        if name not in self.views:
            self._background.append(task)
        return task

    # --- the task loops -------------------------------------------------------------------

    async def _supervise(self, td: TaskDef) -> None:
        """Run the task's loop; when it raises, record it and restart it after a backoff."""
        view = self.views[td.name]
        view.started_at = dt.datetime.now(dt.UTC)
        await self._write("task_loop_started", self.ctx.instance, td.name)
        while not self._stop.is_set():
            try:
                await self._loop(td)
            except _EXPECTED_TASK_ERRORS as exc:
                self._task_failed(td.name, exc, traceback=False)
            except Exception as exc:  # noqa: BLE001  # any bug: restart this task, keep the others
                self._task_failed(td.name, exc, traceback=True)
            else:
                return
            await self._write("task_failed", self.ctx.instance, td.name, view.last_error)
            delay = self._restart_backoff(view.consecutive_failures)
            self.watchdog.expect(td.name, time.monotonic() + delay)
            log.info("task_restarting", task=td.name, in_s=delay, consecutive_failures=view.consecutive_failures)
            self.ctx.metrics.inc("syncd_task_restarts_total", task=td.name)
            if await _stoppable_sleep(self._stop, delay):
                return

    def _task_failed(self, name: str, exc: BaseException, *, traceback: bool) -> None:
        view = self.views[name]
        view.last_error = describe(exc)
        view.consecutive_failures += 1
        fields: dict[str, Any] = {
            "task": name,
            "error": view.last_error,
            "consecutive_failures": view.consecutive_failures,
        }
        if traceback:
            log.error("task_crashed", exc_info=exc, **fields)
        else:
            log.warning("task_failed", **fields)

    async def _loop(self, td: TaskDef) -> None:
        """Passes until stop; raises when something outside an account pass fails.

        Between two passes the loop also wakes when leases are acquired (a restart's first
        heartbeat, a dead replica's accounts): it runs a pass over just those accounts at
        once instead of leaving them unserved until the next regular pass.
        """
        guarded = self._guard(td)
        while not self._stop.is_set():
            interval = await self._interval(td.name)
            await self._pass(td, guarded, interval)
            due = time.monotonic() + jittered(interval, self.ctx.settings.cycles.jitter_pct, self._rng)
            while True:
                self.watchdog.expect(td.name, due)
                woke = await self._wait_until(td.name, due)
                if woke == "stop":
                    return
                if woke == "due":
                    break
                await self._pass(td, guarded, interval, only=frozenset(self._fresh[td.name]))

    async def _pass(
        self, td: TaskDef, guarded: AccountPass, interval: float, *, only: frozenset[int] | None = None
    ) -> None:
        """One pass over the held accounts (or only those of ``only``), with its bookkeeping."""
        view = self.views[td.name]
        budget = max(self.ctx.settings.health.stale_after_s, 2 * interval)
        view.interval_s = interval
        view.last_started_at = dt.datetime.now(dt.UTC)
        self.watchdog.expect(td.name, time.monotonic() + budget)
        await self._write("task_pass_started", self.ctx.instance, td.name, interval)
        try:
            async with asyncio.timeout(budget) as deadline:
                # Whatever this pass covers (or finds paused) is no longer waiting for a first pass.
                self._fresh[td.name].difference_update(self.leases.held() if only is None else only)
                accounts = await self._accounts(only)
                summary = await run_pass(self.ctx, td.name, guarded, accounts)
        except TimeoutError as exc:
            if deadline.expired():
                raise PassTimeout(f"the pass took longer than {budget:g}s and was cancelled") from exc
            raise
        finished = dt.datetime.now(dt.UTC)
        view.last_ok_at, view.last_error, view.consecutive_failures = finished, None, 0
        view.accounts_total, view.accounts_failed = len(summary.results), len(summary.failed)
        await self._write(
            "task_pass_finished", self.ctx.instance, td.name, finished, len(summary.results), len(summary.failed)
        )

    async def _wait_until(self, task: TaskName, due: float) -> str:
        """Sleep until ``due``: "stop" when stopped, "wake" when newly acquired accounts await a pass."""
        wake = self._wake[task]
        while True:
            if self._stop.is_set():
                return "stop"
            self._fresh[task].intersection_update(self.leases.held())
            if self._fresh[task]:
                return "wake"
            wake.clear()
            remaining = due - time.monotonic()
            if remaining <= 0:
                return "due"
            waiters = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(wake.wait())]
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def _interval(self, task: TaskName) -> float:
        normal = base_interval(self.ctx.settings, task)
        if self._interval_for is None:
            return normal
        try:
            async with asyncio.timeout(self.ctx.settings.cycles.broker_timeout_s * 2):
                return await self._interval_for(self.ctx, task, normal)
        except Exception as exc:  # noqa: BLE001  # the market clock is advisory: fall back to the normal cadence
            log.warning("market_clock_failed", task=task, error=describe(exc))
            return normal

    async def _accounts(self, only: frozenset[int] | None = None) -> list[Account]:
        """Active accounts this replica holds a lease on (of ``only``, when given)."""
        held = self.leases.held() if only is None else self.leases.held() & only
        if not held:
            return []
        return [a for a in await self.ctx.active_accounts() if a.id in held]

    def _guard(self, td: TaskDef) -> AccountPass:
        """The account pass, cancelled (rolled back) if this replica loses the account's lease meanwhile."""
        fn, in_flight_names = td.fn, self._in_flight_names[td.name]

        async def guarded(ctx: Context, account: Account) -> dict[str, Any]:
            if not self.leases.holds(account.id):
                raise LeaseLost(f"lease on {account.name} lapsed before the pass began")
            lost = self.leases.lost_event(account.id)
            self._in_flight[account.id] += 1
            in_flight_names.add(account.name)
            work = asyncio.ensure_future(fn(ctx, account))
            watch = asyncio.ensure_future(lost.wait())
            abort = asyncio.ensure_future(self._abort.wait())
            try:
                await asyncio.wait({work, watch, abort}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
                abort.cancel()
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
                self._in_flight[account.id] -= 1
                if self._in_flight[account.id] <= 0:
                    del self._in_flight[account.id]
                    in_flight_names.discard(account.name)
            if work.cancelled() and self._abort.is_set():
                raise PassAborted("stopped by shutdown before it finished; its transaction rolled back")
            if work.cancelled():
                raise LeaseLost(f"lease on {account.name} was lost during the pass; its transaction rolled back")
            return work.result()

        return guarded

    # --- best-effort bookkeeping -------------------------------------------------------------

    async def _write(self, query: str, *args: Any) -> None:
        try:
            async with asyncio.timeout(DB_WRITE_TIMEOUT_S):
                await self.ctx.pool.execute(self.ctx.queries[query], *args)
        except DB_DOWN_ERRORS as exc:
            log.warning("task_health_write_failed", query=query, error=describe(exc))

    def _lease_error(self, exc: BaseException) -> None:
        self.ctx.metrics.set("syncd_database_up", 0.0)

    # --- leases: wake the tasks, move the streams ---------------------------------------------

    def _on_leases(self, acquired: frozenset[int], lost: frozenset[int]) -> None:
        self.ctx.metrics.set("syncd_leases_held", float(len(self.leases.held())))
        self.ctx.metrics.set("syncd_replicas_live", float(self.leases.live_replicas))
        self.ctx.metrics.inc("syncd_lease_changes_total", float(len(acquired)), change="acquired")
        self.ctx.metrics.inc("syncd_lease_changes_total", float(len(lost)), change="lost")
        for name, fresh in self._fresh.items():  # every task serves newly acquired accounts at once
            fresh.difference_update(lost)
            fresh.update(acquired)
            if acquired:
                self._wake[name].set()
        if self.streams is not None and not self._stop.is_set():
            self.streams.follow(acquired, lost)
        if self.quote_streams is not None and not self._stop.is_set():
            self.quote_streams.follow(acquired, lost)

    def status_line(self) -> str:
        return status_line(len(self.leases.held()), len(self.ctx.accounts), self.views)


# --- the composition root ---------------------------------------------------------------------


async def retry_database(
    stop: asyncio.Event, what: str, fn: Callable[[], Awaitable[Any]], *, cap_s: float = 30.0
) -> Any:
    """``await fn()`` until it stops failing with a database-unavailable error; ``Stopped`` if asked to stop."""
    failures = 0
    while True:
        try:
            return await fn()
        except RETRYABLE_DB_ERRORS as exc:
            failures += 1
            delay = exponential_backoff(failures, 1.0, cap_s)
            log.warning("database_unavailable", during=what, error=describe(exc), retry_in_s=delay)
        if await _stoppable_sleep(stop, delay):
            raise Stopped(what)


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    stop: asyncio.Event,
    migrate: bool = True,
    notifier: Notifier | None = None,
    tasks: Sequence[TaskDef] | None = None,
    instance: str | None = None,
) -> AsyncIterator[tuple[Supervisor, HealthServer | None]]:
    """Everything of ``syncd run``, started; on exit the ordered shutdown. Raises ``Stopped`` if stopped early."""
    from syncd.db import apply_migrations, connect

    notifier = notifier or Notifier()
    if migrate:
        notifier.status("applying migrations")
        await retry_database(stop, "migrate", lambda: apply_migrations(settings.database))
    notifier.status("connecting")
    async with contextlib.AsyncExitStack() as stack:
        ctx: Context = await retry_database(
            stop,
            "connect",
            lambda: stack.enter_async_context(open_context(settings, instance=instance, metrics=DaemonMetrics())),
        )
        supervisor: Supervisor | None = None
        leases = LeaseManager(
            ctx.pool,
            ctx.queries,
            instance=ctx.instance,
            account_ids=[a.id for a in ctx.accounts.values()],
            heartbeat_s=settings.cycles.lease_heartbeat_s,
            busy=lambda: supervisor.busy() if supervisor is not None else frozenset(),
            connect=lambda: connect(settings.database),
        )
        supervisor = Supervisor(
            ctx,
            stop=stop,
            leases=leases,
            notifier=notifier,
            tasks=tasks,
            interval_for=market_interval_fn(),
            stream=stream_fn(),
            quotes=True,
        )
        server: HealthServer | None = None
        if settings.health.listen:
            server = HealthServer(
                pool=ctx.pool,
                queries=ctx.queries,
                metrics=ctx.metrics,
                tasks=lambda: supervisor.views,
                account_names=list(ctx.accounts),
                stale_after_s=settings.health.stale_after_s,
                instance=ctx.instance,
                quote_streams=supervisor.quote_registry.body,
            )
            host, port = await server.start(settings.health.listen)
            stack.push_async_callback(server.stop)
            leases.health_url = server.url  # the real address, in replicas.health_url for `syncd health`
        await supervisor.start()
        notifier.ready(supervisor.status_line())
        log.info(
            "daemon_ready",
            instance=ctx.instance,
            accounts=len(ctx.accounts),
            listen=f"{host}:{port}" if server is not None else "",
            health_url=server.url if server is not None else None,
        )
        try:
            yield supervisor, server
        finally:
            notifier.stopping("stopping")
            log.info("daemon_stopping", instance=ctx.instance)
            await supervisor.shutdown(settings.cycles.shutdown_timeout_s)


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event,
    migrate: bool = True,
    notifier: Notifier | None = None,
    instance: str | None = None,
) -> None:
    """``syncd run`` until ``stop`` is set. Returns normally on a clean stop (also when stopped while starting)."""
    try:
        async with running(settings, stop=stop, migrate=migrate, notifier=notifier, instance=instance):
            await stop.wait()
    except Stopped as exc:
        log.info("stopped_while_starting", during=str(exc))
    log.info("daemon_stopped")
