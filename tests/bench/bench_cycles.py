"""Benchmark: tradeCycle and monitorCycle passes over many accounts, against their floors (issue 14).

    python -m tests.bench.bench_cycles --accounts 1000 --positions 50 [--latency-ms 20]
        [--concurrency 32] [--broker alpaca|tradier|mixed] [--profile monitor|trade]

Set-up (not timed): a scratch database with every migration; the simulator in a process of
its own (so its CPU is not syncd's; manual clock: prices move only when told) adding
``--latency-ms`` to every answer; one accountSync pass to mirror the books; one open
BULL_CALL_DEBIT trade per account on its book's spread (``bench_monitor.add_spread_trades``).

Timed, each a ``run_pass`` over every account exactly as the daemon runs it (same checks,
same rows, same transactions and NOTIFYs):

1. ``accountSync idle``: the reference an idle monitorCycle pass must not be slower than;
2. ``tradeCycle first`` (no watermark: open orders and the last week) and ``tradeCycle idle``;
3. ``monitorCycle first`` (every quote written), ``moved`` (after a tick of the simulator's
   prices) and ``monitorCycle idle`` (nothing moved: nothing may be written).

Printed per pass: wall time; CPU of syncd (this process), the simulator and Postgres; broker
requests; rows written, from ``pg_stat_user_tables`` (every table of the schema except the
bookkeeping ones, ``sync_runs``, ``account_health``, ``task_health``, ``accounts``, which are
listed apart). Then each pass's floor: the broker's latency x accounts x rounds / concurrency
(the time the answers take to arrive at full concurrency; ``rounds``: the requests an account's
pass makes one after the other, 1 where they go at once) plus the database floor (the CPU
Postgres spent on the pass, spread over the machine's cores), and the pass's ratio to it;
beside it the CPU floor (syncd, simulator and Postgres together over the cores: on a 2-core
machine shared by all three, no pass can be faster). ``--profile monitor|trade`` prints a cProfile of that idle pass.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from syncd.context import Account, Context, open_context
from syncd.cycles import task_by_short
from syncd.daemon.passes import PassSummary, run_pass
from syncd.db import apply_migrations
from syncd.logs import configure_logging
from syncd.settings import DatabaseSettings, LogSettings, Settings
from tests.bench.bench_account_sync import SimHandle, account_settings, flush_stats, postgres_cpu
from tests.bench.bench_monitor import add_spread_trades
from tests.pg import create_database, drop_database, find_admin_dsn, with_database

BOOKKEEPING = ("sync_runs", "account_health", "task_health", "accounts", "replicas", "schema_migrations")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--positions", type=int, default=50)
    p.add_argument("--latency-ms", type=float, default=20.0, help="added by the simulator to every answer")
    p.add_argument("--broker", choices=("alpaca", "tradier", "mixed"), default="alpaca")
    p.add_argument("--concurrency", type=int, default=32, help="cycles.concurrency")
    p.add_argument("--pool", type=int, default=20, help="database pool size")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--profile", choices=("monitor", "trade"), help="print a cProfile of that cycle's idle pass")
    p.add_argument("--keep-db", action="store_true", help="keep the scratch database (its name is printed)")
    args = p.parse_args(argv)
    args.sim = "process"  # SimHandle's switch: the simulator always runs in its own process here
    return args


async def table_writes(dsn: str, pool: asyncpg.Pool[Any]) -> dict[str, int]:
    """Rows inserted + updated + deleted so far in every table of the schema, as the statistics count them."""
    await flush_stats(pool)
    conn = await asyncpg.connect(dsn)
    try:
        last: dict[str, int] | None = None
        for _ in range(50):  # each backend's flush lands as it goes idle: wait until the counts settle
            rows = await conn.fetch(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS n FROM pg_stat_user_tables"
                " WHERE schemaname = 'syncd'"
            )
            now = {r["relname"]: r["n"] for r in rows}
            if now == last:
                return now
            last = now
            await asyncio.sleep(0.1)
        return last or {}
    finally:
        await conn.close()


@dataclass
class Figures:
    label: str
    seconds: float
    cpu_syncd: float
    cpu_sim: float
    cpu_pg: float
    requests: int
    written: dict[str, int]
    bookkeeping: dict[str, int]
    failed: int
    first_error: str | None
    judged: int | None = None  # monitorCycle: accounts whose trades were read and judged

    @property
    def rows(self) -> int:
        return sum(self.written.values())


async def timed(
    ctx: Context, dsn: str, sim: SimHandle, accounts: list[Account], task: str, label: str, profile: bool
) -> Figures:
    spec = task_by_short(task)
    before = await table_writes(dsn, ctx.pool)
    req0 = sum(a.broker.request_count for a in accounts)
    sim_cpu0 = (await sim.stats())[2]
    pg_cpu0 = await postgres_cpu(ctx.pool)
    profiler = cProfile.Profile() if profile else None
    cpu0 = time.process_time()
    if profiler is not None:
        profiler.enable()
    summary: PassSummary = await run_pass(ctx, spec.name, spec.account_pass, accounts)
    if profiler is not None:
        profiler.disable()
    cpu = time.process_time() - cpu0
    sim_cpu = (await sim.stats())[2] - sim_cpu0
    pg_cpu = await postgres_cpu(ctx.pool) - pg_cpu0
    requests = sum(a.broker.request_count for a in accounts) - req0
    after = await table_writes(dsn, ctx.pool)
    delta = {t: after.get(t, 0) - before.get(t, 0) for t in after}
    f = Figures(
        label=label,
        seconds=summary.duration_s,
        cpu_syncd=cpu,
        cpu_sim=sim_cpu,
        cpu_pg=pg_cpu,
        requests=requests,
        written={t: n for t, n in sorted(delta.items()) if n and t not in BOOKKEEPING},
        bookkeeping={t: n for t, n in sorted(delta.items()) if n and t in BOOKKEEPING},
        failed=len(summary.failed),
        first_error=summary.failed[0].error if summary.failed else None,
        judged=sum(1 for r in summary.results if r.stats.get("judged")) if task == "monitor" else None,
    )
    where = ", ".join(f"{t} {n}" for t, n in f.written.items()) or "none"
    books = ", ".join(f"{t} {n}" for t, n in f.bookkeeping.items())
    print(
        f"{label:<20} {f.seconds:6.2f} s  CPU syncd {f.cpu_syncd:5.2f} s, simulator {f.cpu_sim:5.2f} s, "
        f"postgres {f.cpu_pg:5.2f} s  requests {requests} ({requests / max(len(accounts), 1):.2f}/account)  "
        f"rows written {f.rows} ({where}; bookkeeping: {books})"
        + (f"  trades judged in {f.judged} accounts" if f.judged is not None else "")
        + (f"  FAILED {f.failed}: {f.first_error}" if f.failed else ""),
        flush=True,
    )
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats("syncd|asyncpg|json", 40)
        print(out.getvalue()[:16000], flush=True)
    return f


async def tick(url: str) -> None:
    """Move the simulator's prices one step (its ``/_sim/tick``)."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(f"{url}/_sim/tick", json={"n": 1}) as r:
        r.raise_for_status()


# Broker requests an account's pass makes one after the other (each waits a latency): accountSync
# asks for the balances and the positions at once, monitorCycle for its stock and option quotes at
# once; tradeCycle's first pass lists the open orders, then the recent ones (its idle pass: one list).
AT_ONCE = ("accountSync", "monitorCycle")


def rounds(f: Figures, accounts: int) -> float:
    """How many latencies one account's pass waits, one after the other."""
    return 1.0 if f.label.startswith(AT_ONCE) else f.requests / max(accounts, 1)


def floor_s(f: Figures, latency_s: float, concurrency: int, accounts: int) -> float:
    """The pass's floor: the broker's answers at full concurrency plus the database's own work."""
    return latency_s * accounts * rounds(f, accounts) / concurrency + f.cpu_pg / (os.cpu_count() or 1)


def floors(f: Figures, latency_s: float, concurrency: int, accounts: int) -> str:
    """The pass against its floor (:func:`floor_s`), each part named."""
    cores = os.cpu_count() or 1
    r = rounds(f, accounts)
    latency_floor = latency_s * accounts * r / concurrency
    db_floor = f.cpu_pg / cores
    floor = floor_s(f, latency_s, concurrency, accounts)
    cpu_floor = (f.cpu_syncd + f.cpu_sim + f.cpu_pg) / cores
    return (
        f"{f.label:<20} floor {floor:5.2f} s (latency x {accounts} accounts x {r:g} round(s) / {concurrency} = "
        f"{latency_floor:.2f} s + Postgres CPU / {cores} cores {db_floor:.2f} s): pass is "
        f"{f.seconds / floor if floor else float('inf'):.2f}x its floor; CPU floor (syncd + simulator + "
        f"Postgres over {cores} cores) {cpu_floor:.2f} s: {f.seconds / cpu_floor if cpu_floor else 0:.2f}x"
    )


@dataclass
class CyclesResult:
    """One run: every timed pass, and what their floors are made of."""

    accounts: int
    latency_s: float
    concurrency: int
    passes: dict[str, Figures]  # by label

    def floor(self, label: str) -> float:
        return floor_s(self.passes[label], self.latency_s, self.concurrency, self.accounts)


def cycles_args(accounts: int, concurrency: int) -> argparse.Namespace:
    """The arguments of a run at ``accounts`` x 50 positions, 20 ms (bench_issue14's)."""
    return parse_args(["--accounts", str(accounts), "--concurrency", str(concurrency)])


async def run_cycles(args: argparse.Namespace) -> CyclesResult:
    """Set up, time every pass (printing each line and the floors); tear down."""
    admin, server = find_admin_dsn()
    name = f"syncd_bench_cycles_{os.getpid()}"
    await create_database(admin, name)
    dsn = with_database(admin, name)
    sim = SimHandle()
    t_setup = time.perf_counter()
    await sim.start(args)
    try:
        db = DatabaseSettings(dsn=dsn, pool_max=args.pool, pool_min=min(args.pool, 10))
        await apply_migrations(db)
        settings = Settings(
            database=db,
            accounts=account_settings(sim, args.broker),
            cycles={"concurrency": args.concurrency, "broker_timeout_s": 30},
            log=LogSettings(level="warning", format="console"),
        )
        async with open_context(settings, instance="bench") as ctx:
            accounts = [ctx.accounts[a.name] for a in settings.accounts]
            synced = await run_pass(ctx, "accountSync", task_by_short("account").account_pass, accounts)
            trades = await add_spread_trades(ctx)
            print(
                f"cycles bench: {args.accounts} accounts x {args.positions} positions ({args.broker}), latency "
                f"{args.latency_ms:g} ms, concurrency {args.concurrency}, pool {args.pool}, simulator in its own "
                f"process; set-up {time.perf_counter() - t_setup:.1f} s ({len(synced.failed)} sync failures, "
                f"{trades} trades)",
                flush=True,
            )
            passes: list[Figures] = []

            async def one(task: str, label: str, profile: bool = False) -> None:
                passes.append(await timed(ctx, dsn, sim, accounts, task, label, profile))

            await one("account", "accountSync idle")
            await one("trade", "tradeCycle first")
            await one("trade", "tradeCycle idle", args.profile == "trade")
            await one("monitor", "monitorCycle first")
            await tick(sim.url)
            await one("monitor", "monitorCycle moved")
            await one("monitor", "monitorCycle idle", args.profile == "monitor")
            print()
            for f in passes:
                print(floors(f, args.latency_ms / 1000, args.concurrency, len(accounts)), flush=True)
            by = {f.label: f for f in passes}
            ref, mon = by["accountSync idle"], by["monitorCycle idle"]
            print(
                f"idle monitorCycle {mon.seconds:.2f} s ({mon.cpu_syncd:.2f} s CPU) vs idle accountSync "
                f"{ref.seconds:.2f} s ({ref.cpu_syncd:.2f} s CPU): {mon.seconds / ref.seconds:.2f}x",
                flush=True,
            )
            return CyclesResult(len(accounts), args.latency_ms / 1000, args.concurrency, by)
    finally:
        await sim.stop()
        if args.keep_db:
            print(f"kept database {name}")
        else:
            await drop_database(admin, name)
        if server is not None:
            server.stop()


async def main() -> None:
    args = parse_args()
    configure_logging(LogSettings(level="warning", format="console"))
    await run_cycles(args)


if __name__ == "__main__":
    asyncio.run(main())
