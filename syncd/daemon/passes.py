"""One pass of a task over many accounts: concurrency, isolation, bookkeeping, the summary line.

A cycle supplies ``fn(ctx, account) -> stats``: it does its work for one account
(in its own transaction) and returns a small JSON-able dict of what it did, or
raises. ``run_pass`` runs it for every account with at most
``cycles.concurrency`` at once; one account's failure never stops the others.
Afterwards one statement records every account's outcome (``sync_runs``,
``account_health``, ``accounts.last_error``), and one JSON line per account
(the canonical log line) says what changed, how long, how many requests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from syncd.brokers.base import BrokerAuthFailed, BrokerError
from syncd.brokers.guard import PassBroker
from syncd.context import Account, Context
from syncd.cycles import AccountPass, TaskName
from syncd.errors import DB_ERRORS, describe

log = structlog.get_logger(__name__)

_DB_ERRORS = DB_ERRORS


@dataclass(slots=True)
class PassResult:
    account: str
    account_id: int
    ok: bool
    started_at: dt.datetime
    finished_at: dt.datetime
    duration_s: float
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    recorded: bool = False  # written to the database already (failures are, as they happen)


@dataclass(slots=True)
class PassSummary:
    task: TaskName
    results: list[PassResult]
    duration_s: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[PassResult]:
        return [r for r in self.results if not r.ok]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _one(ctx: Context, task: TaskName, fn: AccountPass, acct: Account, sem: asyncio.Semaphore) -> PassResult:
    async with sem:
        # Each call runs in a task of its own (run_pass gathers them), whose context dies with it:
        # the binding needs no reset.
        structlog.contextvars.bind_contextvars(task=task, account=acct.name)
        started, t0, req0 = _now(), time.perf_counter(), acct.broker.request_count
        error: str | None = None
        stats: dict[str, Any] = {}
        broker = PassBroker(acct.broker)
        try:
            # Once the broker hung in this pass, the pass asks it nothing more (syncd.brokers.guard).
            stats = await fn(ctx, Account(id=acct.id, name=acct.name, config=acct.config, broker=broker))
            if broker.answered == 0:
                _credentials_accepted(ctx, acct)
        except BrokerError as exc:
            error = describe(exc)
            log.warning("account_pass_failed", error=error)
            if isinstance(exc, BrokerAuthFailed) and not isinstance(exc, CredentialsRefused):
                ctx.auth[acct.id] = f"{task} at {_now().isoformat(timespec='seconds')}: {error}"
        except _DB_ERRORS as exc:
            error = describe(exc)
            log.error("account_pass_failed", error=error)
        except Exception as exc:  # an account's bug must not stop the others
            error = describe(exc)
            log.exception("account_pass_crashed", error=error)
        duration = time.perf_counter() - t0
        stats["broker_requests"] = acct.broker.request_count - req0
        if broker.answered > 0:
            ctx.auth[acct.id] = None  # the broker answered this account's call: the credentials work
        log.info(
            "account_pass",
            ok=error is None,
            duration_ms=round(duration * 1000, 1),
            **({"error": error} if error else {}),
            **stats,
        )
        ctx.metrics.account_pass(task, acct.name, error is None)
        result = PassResult(acct.name, acct.id, error is None, started, _now(), duration, error, stats)
        if error is not None:
            # A failure is recorded at once (accounts.last_error), not when the slowest
            # account of the pass is done: whoever watches the table sees it now.
            result.recorded = await _record_quietly(ctx, task, [result])
        return result


class CredentialsRefused(BrokerAuthFailed):
    """A pass that made no broker call, over an account whose broker refused its credentials."""


def _credentials_accepted(ctx: Context, acct: Account) -> None:
    """A pass that asked the broker nothing proves nothing: it fails while the account's broker is
    known to refuse its credentials (a 401/403 in any task, and no call has succeeded since)."""
    refused = ctx.auth.get(acct.id)
    if refused:
        raise CredentialsRefused(f"credentials refused ({refused}); no broker call has succeeded since")


async def run_pass(ctx: Context, task: TaskName, fn: AccountPass, accounts: Sequence[Account]) -> PassSummary:
    """Run ``fn`` for every account concurrently; record and log the outcome of each."""
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(ctx.settings.cycles.concurrency)
    results = list(await asyncio.gather(*(_one(ctx, task, fn, a, sem) for a in accounts)))
    summary = PassSummary(task, results, time.perf_counter() - t0)
    await _record_quietly(ctx, task, [r for r in results if not r.recorded])
    # The task succeeded when it completed a pass that reached the broker for someone: one failing
    # account is counted in syncd_cycle_failures_total, it must not freeze the task's last success.
    completed = not results or any(r.ok for r in results)
    ctx.metrics.cycle_finished(task, summary.duration_s, time.time(), ok=completed)
    return summary


async def _record_quietly(ctx: Context, task: TaskName, results: Sequence[PassResult]) -> bool:
    """``record``, shielded from cancellation; a database error is logged. True when written."""
    try:
        await asyncio.shield(record(ctx, task, results))
    except _DB_ERRORS as exc:
        log.error("pass_record_failed", task=task, error=describe(exc))
        return False
    return True


def pass_row(r: PassResult) -> dict[str, Any]:
    """One ``pass_row`` (0013) by attribute name."""
    return {
        "account_id": r.account_id,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "ok": r.ok,
        "error": r.error,
        "stats": json.dumps(r.stats),  # JSON text: see pass_row in sql/0013
    }


async def record(ctx: Context, task: TaskName, results: Sequence[PassResult]) -> None:
    """One statement for the whole pass: ``sync_runs``, ``account_health``, ``accounts.last_error``."""
    if not results:
        return
    await ctx.pool.execute(
        ctx.queries["record_passes"],
        task,
        ctx.instance,
        [pass_row(r) for r in results],
    )
