"""The composition root of ``syncd run``: tasks, cadence, restarts, leases, streams, health, shutdown.

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
from syncd.daemon.health import DB_DOWN_ERRORS, DaemonMetrics, HealthServer, TaskView
from syncd.daemon.leases import InstanceInUse, LeaseLost, LeaseManager
from syncd.daemon.passes import run_pass
from syncd.daemon.sdnotify import Notifier
from syncd.errors import describe
from syncd.settings import Settings
from syncd.trading.outbox import METRIC_OUTCOMES as OUTBOX_OUTCOMES

log = structlog.get_logger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
WATCHDOG_GRACE_S = 30.0
HOUSEKEEPING_S = 60.0
RETENTION_EVERY = 60  # housekeeping rounds between retention runs (an hour)
RETENTION_BATCH = 5_000
RETENTION_MAX_BATCHES = 200
DB_WRITE_TIMEOUT_S = 5.0
STREAM_STOP_TIMEOUT_S = 5.0
ABORT_GRACE_S = 5.0  # after aborting passes at shutdown, how long their bookkeeping may take

# Errors that mean "the database is not there right now": wait and try again.
RETRYABLE_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.ConnectionFailureError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)

# A lease heartbeat that fails with these is retried by the lease loop; the daemon carries on.
HEARTBEAT_ERRORS: tuple[type[BaseException], ...] = (*DB_DOWN_ERRORS, asyncpg.PostgresError, InstanceInUse)

IntervalFn = Callable[[Context, TaskName, float], Awaitable[float]]
StreamFn = Callable[[Context, Account, asyncio.Event], Coroutine[Any, Any, None]]


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


def backoff(failures: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_MAX_S) -> float:
    """Delay before restarting a task after its ``failures``-th consecutive failure (1, 2, 4 ... cap)."""
    return float(min(cap, base * 2 ** max(0, failures - 1)))


def market_interval_fn() -> IntervalFn:
    """tradeCycle and monitorCycle slow to ``closed_market_interval_s`` while the market is closed."""
    from syncd.daemon.market_clock import Cadence

    return Cadence()


def stream_fn() -> StreamFn:
    """The tradeCycle's trade-update consumer (it reconnects by itself; returns when it cannot stream)."""
    from syncd.trading.stream import consume_trade_updates

    return consume_trade_updates


async def _stoppable_sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop``; True when stopped."""
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


def _log_unretrieved(task: asyncio.Task[Any]) -> None:
    """Done-callback: no exception of a background task goes unseen."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background_task_crashed", name=task.get_name(), error=describe(exc), exc_info=exc)


class Supervisor:
    """Runs the task loops, the lease heartbeat, the streams, housekeeping and the watchdog.

    ``restart_backoff(n)`` is the delay before restarting a loop or stream after its n-th
    consecutive failure; ``watchdog_grace_s`` is how far past its deadline a loop may be
    before the watchdog calls it stalled (a public attribute: tests move it while running).
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
        self._stream = stream if ctx.settings.cycles.stream else None
        self._rng = rng or random.Random()  # noqa: S311  # jitter, not cryptography
        self._restart_backoff = restart_backoff
        self.watchdog_grace_s = watchdog_grace_s
        self.views: dict[str, TaskView] = {t.name: TaskView(instance=ctx.instance) for t in self._tasks}
        self._deadlines: dict[str, float] = {}
        self._in_flight: Counter[int] = Counter()
        self._in_flight_names: dict[str, set[str]] = {t.name: set() for t in self._tasks}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._leases_stop = asyncio.Event()
        self._abort = asyncio.Event()
        self._streams: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._by_id = {a.id: a for a in ctx.accounts.values()}
        # Per task: accounts acquired since that task last passed over them, and the event that wakes it.
        self._fresh: dict[str, set[int]] = {t.name: set() for t in self._tasks}
        self._wake: dict[str, asyncio.Event] = {t.name: asyncio.Event() for t in self._tasks}
        self._watchdog_withheld = False
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
        self._spawn(self._housekeeping(), "housekeeping")
        self._spawn(self._watchdog(), "watchdog")
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
        await self._stop_all_streams()
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
            self._deadlines[td.name] = time.monotonic() + delay + self.watchdog_grace_s
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
                self._deadlines[td.name] = due + self.watchdog_grace_s
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
        self._deadlines[td.name] = time.monotonic() + budget + self.watchdog_grace_s
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

    # --- streams follow the leases -------------------------------------------------------------

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
        if self._stream is None or self._stop.is_set():
            return
        for account_id in lost:
            self._stop_stream(account_id)
        for account_id in acquired:
            account = self._by_id.get(account_id)
            if account is not None and account.broker.supports_stream and account_id not in self._streams:
                stop = asyncio.Event()
                task = asyncio.create_task(self._stream_loop(account, stop), name=f"stream:{account.name}")
                task.add_done_callback(_log_unretrieved)
                self._streams[account_id] = (task, stop)

    async def _stream_loop(self, account: Account, stop: asyncio.Event) -> None:
        """Consume the account's trade updates until told to stop.

        The consumer reconnects by itself and returns when the account cannot stream
        (no stream, credentials refused): then the tradeCycle's polling is all there is.
        If it raises (a bug), it is restarted with backoff.
        """
        assert self._stream is not None
        failures = 0
        with structlog.contextvars.bound_contextvars(task="stream", account=account.name):
            while not stop.is_set():
                try:
                    await self._stream(self.ctx, account, stop)
                except Exception as exc:  # a stream's failure must not touch the tasks
                    failures += 1
                    log.error("stream_crashed", error=describe(exc), consecutive_failures=failures, exc_info=exc)
                else:
                    return
                if await _stoppable_sleep(stop, self._restart_backoff(failures)):
                    return

    def _stop_stream(self, account_id: int) -> None:
        entry = self._streams.pop(account_id, None)
        if entry is None:
            return
        task, stop = entry
        stop.set()
        self._spawn(self._reap_stream(task), f"reap:{task.get_name()}")

    async def _reap_stream(self, task: asyncio.Task[None]) -> None:
        _done, pending = await asyncio.wait({task}, timeout=STREAM_STOP_TIMEOUT_S)
        for t in pending:
            t.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _stop_all_streams(self) -> None:
        entries = list(self._streams.values())
        self._streams.clear()
        for _task, stop in entries:
            stop.set()
        tasks = [t for t, _ in entries]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=STREAM_STOP_TIMEOUT_S)
            for t in pending:
                log.warning("stream_cancelled", name=t.get_name())
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("streams_stopped", count=len(tasks))

    # --- housekeeping: gauges and retention --------------------------------------------------

    async def _housekeeping(self) -> None:
        rounds = 0
        while not await _stoppable_sleep(self._stop, HOUSEKEEPING_S if rounds else 5.0):
            try:
                await self._refresh_gauges()
                if rounds % RETENTION_EVERY == 1:
                    await self.purge_old_rows()
            except DB_DOWN_ERRORS as exc:
                log.warning("housekeeping_failed", error=describe(exc))
            rounds += 1

    async def _refresh_gauges(self) -> None:
        async with asyncio.timeout(DB_WRITE_TIMEOUT_S):
            rows = await self.ctx.pool.fetch(self.ctx.queries["positions_per_account"], list(self.ctx.accounts))
            waiting = await self.ctx.pool.fetch(self.ctx.queries["outbox_waiting_per_account"], list(self.ctx.accounts))
        for row in rows:
            self.ctx.metrics.set("syncd_positions", float(row["n"]), account=row["name"])
        for row in waiting:
            self.ctx.metrics.set("syncd_outbox_waiting", float(row["waiting"]), account=row["name"])
            self.ctx.metrics.set("syncd_outbox_oldest_waiting_seconds", float(row["oldest_s"]), account=row["name"])

    async def purge_old_rows(self, *, batch: int = RETENTION_BATCH) -> int:
        """Retention: ``sync_runs`` older than ``database.retention_days``, ``batch`` at a time; stale health rows."""
        days = self.ctx.settings.database.retention_days
        total = 0
        for _ in range(RETENTION_MAX_BATCHES):
            async with asyncio.timeout(30):
                n = int(await self.ctx.pool.fetchval(self.ctx.queries["sync_runs_purge_batch"], days, batch))
            total += n
            if n < batch or self._stop.is_set():
                break
            await asyncio.sleep(0)  # let the passes have the loop between batches
        async with asyncio.timeout(30):
            await self.ctx.pool.execute(self.ctx.queries["task_health_purge"], days)
            await self.ctx.pool.execute(self.ctx.queries["replicas_purge"], float(days * 86_400))
        if total:
            self.ctx.metrics.inc("syncd_sync_runs_purged_total", float(total))
            log.info("retention_purged", table="sync_runs", rows=total, older_than_days=days)
        return total

    # --- systemd watchdog --------------------------------------------------------------------

    def alive(self) -> tuple[bool, list[str]]:
        """Every task loop running and within its deadline (pass budget or wait, plus grace)?

        While shutting down the answer is yes: the loops are meant to end, and systemd's
        ``TimeoutStopSec`` bounds the shutdown.
        """
        stalled: list[str] = []
        if self._stop.is_set():
            return True, stalled
        now = time.monotonic()
        for name, task in self._loops.items():
            if task.done():
                stalled.append(f"{name} exited")
            elif now > self._deadlines.get(name, now + 1):
                stalled.append(f"{name} stalled")
        return not stalled, stalled

    async def _watchdog(self) -> None:
        interval = self._notifier.watchdog_interval_s
        status_every = max(1, int(30 / interval)) if interval else 0
        ticks = 0
        while interval is not None:  # cancelled at the very end of the shutdown
            ok, stalled = self.alive()
            if ok:
                self._notifier.watchdog()
                self._watchdog_withheld = False
            elif not self._watchdog_withheld:
                log.error("watchdog_withheld", stalled=stalled)
                self._watchdog_withheld = True
            if ticks % status_every == 0:
                self._notifier.status(self.status_line())
            ticks += 1
            await asyncio.sleep(interval)

    def status_line(self) -> str:
        parts = [f"leases {len(self.leases.held())}/{len(self.ctx.accounts)}"]
        for name, view in self.views.items():
            state = "ok" if view.consecutive_failures == 0 else f"failing x{view.consecutive_failures}"
            parts.append(f"{name} {state}")
        return "; ".join(parts)


# --- the composition root ---------------------------------------------------------------------


async def retry_database(
    stop: asyncio.Event, what: str, fn: Callable[[], Awaitable[Any]], *, cap_s: float = 30.0
) -> Any:
    """``await fn()`` until it stops failing with a database-unavailable error; ``Stopped`` if asked to stop."""
    delay = 1.0
    while True:
        try:
            return await fn()
        except RETRYABLE_DB_ERRORS as exc:
            log.warning("database_unavailable", during=what, error=describe(exc), retry_in_s=delay)
        if await _stoppable_sleep(stop, delay):
            raise Stopped(what)
        delay = min(cap_s, delay * 2)


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
            )
            await server.start(settings.health.listen)
            stack.push_async_callback(server.stop)
        await supervisor.start()
        notifier.ready(supervisor.status_line())
        log.info("daemon_ready", instance=ctx.instance, accounts=len(ctx.accounts), listen=settings.health.listen)
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
