"""Housekeeping: the positions gauges every minute, and retention every hour.

``Housekeeping.run()`` loops until ``stop`` (first round after 5 s, then every
``HOUSEKEEPING_S``): it refreshes ``syncd_positions`` per account, and every
``RETENTION_EVERY`` rounds runs :meth:`Housekeeping.purge_old_rows`. A database that is
away makes a round log ``housekeeping_failed`` and nothing more.
"""

from __future__ import annotations

import asyncio

import structlog

from syncd.context import Context
from syncd.daemon.aio import stoppable_sleep
from syncd.errors import DB_ERRORS, describe

log = structlog.get_logger("syncd.daemon.supervisor")  # the events' logger name is unchanged

HOUSEKEEPING_S = 60.0
RETENTION_EVERY = 60  # housekeeping rounds between retention runs (an hour)
RETENTION_BATCH = 5_000
RETENTION_MAX_BATCHES = 200
DB_WRITE_TIMEOUT_S = 5.0
# trade_input_changes (0021) older than this go with retention, into their accounts' totals
# (trade_input_purged): what monitorCycle compares, rows plus totals, is unchanged by it.
INPUT_CHANGES_KEPT_S = 3_600.0


class Housekeeping:
    def __init__(self, ctx: Context, *, stop: asyncio.Event) -> None:
        self.ctx = ctx
        self._stop = stop

    async def run(self) -> None:
        rounds = 0
        while not await stoppable_sleep(self._stop, HOUSEKEEPING_S if rounds else 5.0):
            try:
                await self.refresh_gauges()
                if rounds % RETENTION_EVERY == 1:
                    await self.purge_old_rows()
            except DB_ERRORS as exc:
                log.warning("housekeeping_failed", error=describe(exc))
            rounds += 1

    async def refresh_gauges(self) -> None:
        async with asyncio.timeout(DB_WRITE_TIMEOUT_S):
            rows = await self.ctx.pool.fetch(self.ctx.queries["positions_per_account"], list(self.ctx.accounts))
            waiting = await self.ctx.pool.fetch(self.ctx.queries["outbox_waiting_per_account"], list(self.ctx.accounts))
        for row in rows:
            self.ctx.metrics.set("syncd_positions", float(row["n"]), account=row["name"])
        for row in waiting:
            self.ctx.metrics.set("syncd_outbox_waiting", float(row["waiting"]), account=row["name"])
            self.ctx.metrics.set("syncd_outbox_oldest_waiting_seconds", float(row["oldest_s"]), account=row["name"])

    async def purge_old_rows(self, *, batch: int = RETENTION_BATCH) -> int:
        """Retention: ``sync_runs`` older than ``database.retention_days``, ``batch`` at a time; stale health
        rows; the exit rules' noted input changes older than an hour."""
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
            await self.ctx.pool.execute(self.ctx.queries["trade_input_changes_purge"], INPUT_CHANGES_KEPT_S)
        if total:
            self.ctx.metrics.inc("syncd_sync_runs_purged_total", float(total))
            log.info("retention_purged", table="sync_runs", rows=total, older_than_days=days)
        return total
