"""The cycles: what one pass does for one account, and the registry that describes each task once.

Each cycle module defines ``async def account_pass(ctx, account) -> dict`` (its stats):
:mod:`.account_sync`, :mod:`.trade_cycle`, :mod:`.monitor_cycle`. Beside them the
passes' relatives that run on demand: :mod:`.importer` (outside positions -> trades) and
:mod:`.verify` (live positions against the mirror).

:data:`TASKS` is the one description of the three tasks: the short name of
``sync-once --task``, the task name of ``sync_runs.task``/``task_health.task``/metrics, the
``[cycles]`` key of its interval, whether the market clock paces it, and its pass function,
in the order a full ``sync-once`` runs them. The supervisor, the market cadence and the CLI
all read it.

May import: trading, db, brokers, context, settings, logs, errors, metrics. Never the
daemon or the CLI (they import this).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the registry stays cheap to import: ``syncd --help`` reads it
    from syncd.context import Account, Context
    from syncd.settings import CyclesSettings

TaskName = Literal["accountSync", "tradeCycle", "monitorCycle"]
AccountPass = Callable[["Context", "Account"], Awaitable[dict[str, Any]]]
IntervalKey = Literal["account_interval_s", "trade_interval_s", "monitor_interval_s"]


@dataclass(frozen=True, slots=True)
class TaskSpec:
    short: str  # sync-once --task name
    name: TaskName  # sync_runs.task, task_health.task, metrics label
    interval_key: IntervalKey  # its [cycles] interval
    market_paced: bool  # closed_market_interval_s while every broker's market is closed
    module: str  # the cycle module (under syncd.cycles) whose ``account_pass`` runs the task

    @property
    def account_pass(self) -> AccountPass:
        """The task's pass function, its module imported on first use (not by ``--help``)."""
        fn: AccountPass = importlib.import_module(f"syncd.cycles.{self.module}").account_pass
        return fn

    def interval(self, cycles: CyclesSettings) -> float:
        """The task's regular interval (the market cadence may stretch it)."""
        value: float = getattr(cycles, self.interval_key)
        return value


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("account", "accountSync", "account_interval_s", False, "account_sync"),
    TaskSpec("trade", "tradeCycle", "trade_interval_s", True, "trade_cycle"),
    TaskSpec("monitor", "monitorCycle", "monitor_interval_s", True, "monitor_cycle"),
)


def task_by_short(short: str) -> TaskSpec:
    for spec in TASKS:
        if spec.short == short:
            return spec
    raise KeyError(f"unknown task {short!r}; choose from {', '.join(t.short for t in TASKS)}")


def task(name: str) -> TaskSpec:
    """A task by its name (``tradeCycle``) or short name (``trade``)."""
    for spec in TASKS:
        if name in (spec.name, spec.short):
            return spec
    raise KeyError(f"unknown task {name!r}; choose from {', '.join(t.name for t in TASKS)}")


__all__ = ["TASKS", "AccountPass", "TaskName", "TaskSpec", "task", "task_by_short"]
