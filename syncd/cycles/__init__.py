"""The three cycles. Each module defines ``async def account_pass(ctx, account) -> dict`` (its stats).

The registry maps the short names of ``sync-once --task`` to the task names of
``sync_runs.task``, in the order a full ``sync-once`` runs them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import cast

from syncd.passes import AccountPass, TaskName


@dataclass(frozen=True, slots=True)
class TaskSpec:
    short: str  # sync-once --task name
    name: TaskName  # sync_runs.task, task_health.task, metrics label
    module: str

    def account_pass(self) -> AccountPass:
        return cast(AccountPass, importlib.import_module(self.module).account_pass)


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("account", "accountSync", "syncd.cycles.account_sync"),
    TaskSpec("trade", "tradeCycle", "syncd.cycles.trade_cycle"),
    TaskSpec("monitor", "monitorCycle", "syncd.cycles.monitor_cycle"),
)


def task_by_short(short: str) -> TaskSpec:
    for spec in TASKS:
        if spec.short == short:
            return spec
    raise KeyError(f"unknown task {short!r}; choose from {', '.join(t.short for t in TASKS)}")
