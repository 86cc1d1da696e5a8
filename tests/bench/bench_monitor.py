"""Benchmark: monitorCycle passes over many accounts on the simulator.

    python -m tests.bench.bench_monitor --accounts 1000 --positions 50 [--broker alpaca|tradier|mixed]

Set-up (not timed): a scratch database on the test Postgres (``$SYNCD_TEST_DSN`` or
127.0.0.1:5432), every migration, the simulator in this process (manual clock, so prices
move only when told), one accountSync pass to mirror the books, and one trade per account
(its bull call debit spread). Then three timed monitorCycle passes over every account:

1. ``first``: every position gets its first quote (every row written);
2. ``moved``: after ``sim.tick()`` (prices walk): the rows whose quote changed;
3. ``idle``: nothing moved: nothing may be written.

Printed per pass: wall time, accounts/s, broker HTTP requests (total and per account:
batching shows as ~1-2 per account, not one per position), rows written, per-account
time (p50/p99) and the part of it spent waiting for quotes. By default the simulator
shares this process and event loop, so its CPU time is inside the figures;
``--external-sim`` runs it as ``syncd sim`` in its own process (prices then stand still
but option values still decay with the wall clock, so ``idle`` may write a few rows).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from syncd.context import Account, Context, open_context
from syncd.cycles import task_by_short
from syncd.cycles.monitor_cycle import account_pass
from syncd.daemon.passes import PassSummary, run_pass
from syncd.logs import configure_logging
from syncd.settings import AccountSettings, DatabaseSettings, LogSettings, Settings
from syncd.sim import SimConfig, Simulator, start_simulator
from tests.bench.common import account_from_sim, free_port, quantile, scratch_database, sim_accounts, wait_serving


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--positions", type=int, default=50)
    p.add_argument("--broker", choices=("alpaca", "tradier", "mixed"), default="mixed")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--pool", type=int, default=20, help="database pool size")
    p.add_argument("--external-sim", action="store_true", help="run the simulator in its own process")
    p.add_argument("--keep-db", action="store_true", help="keep the scratch database (its name is printed)")
    return p.parse_args()


def kind_of(i: int, broker: str) -> str:
    return broker if broker != "mixed" else ("alpaca" if i % 2 == 0 else "tradier")


@dataclass
class SimHandle:
    """What the bench needs of a simulator, in this process or another."""

    accounts: list[AccountSettings]
    request_count: Callable[[], Awaitable[int]]
    tick: Callable[[], Awaitable[None]]


@asynccontextmanager
async def in_process_sim(n: int, positions: int, broker: str) -> AsyncIterator[SimHandle]:
    sim: Simulator = await start_simulator(
        SimConfig(
            seed=42,
            accounts=n,
            positions_per_account=positions,
            clock="manual",
            start_time=dt.datetime(2025, 12, 3, 16, 0, tzinfo=dt.UTC),
        )
    )

    async def count() -> int:
        return sim.request_count

    async def tick() -> None:
        sim.tick()

    try:
        accounts = [sim.account_settings(i, kind_of(i, broker), f"bench-{i:05d}") for i in range(n)]  # type: ignore[arg-type]
        yield SimHandle(accounts, count, tick)
    finally:
        await sim.stop()


@asynccontextmanager
async def external_sim(n: int, positions: int, broker: str) -> AsyncIterator[SimHandle]:
    """``syncd sim`` in a child process; credentials and counters over its ``/_sim`` API."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # ``syncd sim``'s own command module, run directly (works whether or not the CLI lists it yet).
    runner = (
        "import argparse, sys; from syncd import cli_sim; p = argparse.ArgumentParser(); "
        "cli_sim.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))"
    )
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", runner, "sim", "--port", str(port), "--seed", "42", "--accounts", str(n),
            "--positions", str(positions), "--tick-s", "0", "--show", "0",
            stdout=asyncio.subprocess.DEVNULL, stderr=log,  # a file: a full pipe would stall the child
        )  # fmt: skip

        def check() -> None:
            if proc.returncode is not None:
                log.seek(0)
                err = log.read()
                raise SystemExit(f"the simulator exited ({proc.returncode}): {err.decode()[-500:]}")

        try:
            async with aiohttp.ClientSession() as http:
                await wait_serving(http, url, check=check)
                creds = await sim_accounts(http, url, n)
                accounts = [account_from_sim(url, c, kind_of(i, broker), f"bench-{i:05d}") for i, c in enumerate(creds)]

                async def count() -> int:
                    async with http.get(f"{url}/_sim/state") as r:
                        total: int = (await r.json())["requests"]
                        return total

                async def tick() -> None:
                    async with http.post(f"{url}/_sim/tick", json={"n": 1}) as r:
                        r.raise_for_status()

                yield SimHandle(accounts, count, tick)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()


async def add_spread_trades(ctx: Context) -> int:
    """One BULL_CALL_DEBIT trade per account on its book's spread (a long and a short call, same expiry)."""
    rows = await ctx.pool.fetch(
        """SELECT DISTINCT ON (l.account_id) l.account_id, l.underlying, l.symbol AS long_call, s.symbol AS short_call
             FROM portfolio_positions l
             JOIN portfolio_positions s ON s.account_id = l.account_id AND s.underlying = l.underlying
                  AND s.expiration = l.expiration AND s.option_type = 'call' AND s.quantity = -l.quantity
            WHERE l.option_type = 'call' AND l.quantity > 0 AND s.strike > l.strike
            ORDER BY l.account_id, l.symbol"""
    )
    await ctx.pool.execute(
        """WITH t AS (
               INSERT INTO trades (account_id, symbol, strategy, status, quantity, entry_price, take_profit_pct)
               SELECT a, u, 'BULL_CALL_DEBIT', 'open', 1, 0.01, 100000
                 FROM unnest($1::bigint[], $2::text[]) AS x(a, u)
               RETURNING id, account_id)
           INSERT INTO trade_legs (trade_id, leg_index, symbol, side)
           SELECT t.id, l.i, l.sym, l.side
             FROM t JOIN unnest($1::bigint[], $3::text[], $4::text[]) AS x(a, lc, sc) ON x.a = t.account_id
             CROSS JOIN LATERAL (VALUES (0, x.lc, 'buy'), (1, x.sc, 'sell')) AS l(i, sym, side)""",
        [r["account_id"] for r in rows],
        [r["underlying"] for r in rows],
        [r["long_call"] for r in rows],
        [r["short_call"] for r in rows],
    )
    return len(rows)


def report(name: str, summary: PassSummary, requests: int) -> None:
    n = len(summary.results)
    written = sum(r.stats.get("positions_written", 0) for r in summary.results)
    trades = sum(r.stats.get("trades_written", 0) for r in summary.results)
    positions = sum(r.stats.get("positions", 0) for r in summary.results)
    failed = len(summary.failed)
    per_account = sorted(r.duration_s for r in summary.results)
    p50 = quantile(per_account, 0.5) * 1000
    p99 = quantile(per_account, 0.99) * 1000
    q50 = quantile(sorted(r.stats.get("quotes_ms", 0.0) for r in summary.results), 0.5)
    print(
        f"{name:<6} {summary.duration_s:7.2f} s  {n / summary.duration_s:7.0f} accounts/s  "
        f"requests {requests:6d} ({requests / max(n, 1):.2f}/account)  positions {positions}  "
        f"written {written:6d}  trades written {trades:5d}  account p50 {p50:6.1f} ms (quotes {q50:5.1f}) "
        f"p99 {p99:6.1f} ms" + (f"  FAILED {failed}: {summary.failed[0].error}" if failed else ""),
        flush=True,
    )


async def main() -> None:
    args = parse_args()
    configure_logging(LogSettings(level="warning", format="console"))
    start = external_sim if args.external_sim else in_process_sim
    async with (
        scratch_database("syncd_bench_monitor", keep=args.keep_db) as dsn,
        start(args.accounts, args.positions, args.broker) as sim,
    ):
        await bench(args, dsn, sim)


async def bench(args: argparse.Namespace, dsn: str, sim: SimHandle) -> None:
    db = DatabaseSettings(dsn=dsn, pool_max=args.pool)
    settings = Settings(
        database=db,
        accounts=sim.accounts,
        cycles={"concurrency": args.concurrency},
        log=LogSettings(level="warning", format="console"),
    )
    async with open_context(settings, instance="bench") as ctx:
        accounts: list[Account] = [ctx.accounts[a.name] for a in settings.accounts]
        t0 = time.perf_counter()
        synced = await run_pass(ctx, "accountSync", task_by_short("account").account_pass, accounts)
        trades = await add_spread_trades(ctx)
        held = await ctx.pool.fetchval("SELECT count(*) FROM portfolio_positions")
        where = "its own process" if args.external_sim else "this process"
        print(
            f"monitorCycle bench: {args.accounts} accounts x {args.positions} positions ({args.broker}), "
            f"simulator in {where}, concurrency {args.concurrency}, pool {args.pool}; "
            f"set-up {time.perf_counter() - t0:.1f} s ({held} positions mirrored, {len(synced.failed)} sync "
            f"failures, {trades} trades)",
            flush=True,
        )

        async def timed(label: str) -> None:
            before = await sim.request_count()
            summary = await run_pass(ctx, "monitorCycle", account_pass, accounts)
            report(label, summary, await sim.request_count() - before)

        await timed("first")
        await sim.tick()
        await timed("moved")
        await timed("idle")


if __name__ == "__main__":
    asyncio.run(main())


__all__: list[Any] = []
