"""Benchmark: accountSync with several replicas sharing the accounts (issue 14).

    python -m tests.bench.bench_replicas --accounts 10000 --positions 50 [--replicas 3] [--latency-ms 20]
        [--concurrency 100] [--pool 20]

Set-up (not timed): a scratch database with every migration, one simulator in a process of its
own (the broker every replica talks to), then ``--replicas`` processes, each a replica as
``syncd run`` makes one: its own pool, HTTP session and brokers for every configured account,
and a :class:`syncd.daemon.leases.LeaseManager` under its own instance name. Their heartbeats
run until the leases are balanced (every account held by exactly one replica, each holding its
fair share), as they would be after the replicas' first seconds.

Before the first pass, a bare client fetches what a pass fetches of every account, at the
replicas' combined concurrency (:func:`tests.bench.bench_account_sync.broker_service_s`), and
again after the last pass: the broker's own service time (the faster of the two), as the
single-process run measures it. The fetch before the first pass also takes the simulator's
one-time work on its first answers (about 1 ms of its CPU an account) out of that pass, as there.

Timed: two accountSync passes (``first``: an empty mirror; ``idle``: nothing changed at the
broker), each replica running ``run_pass`` over the accounts it holds, all started at once.
Printed per pass: each replica's share (accounts, positions, wall time, its own CPU) and the
total wall time (until the last replica finished), rows written, the CPU of the simulator and
of Postgres over the pass; at the end each replica's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import multiprocessing.connection as mpc
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from syncd.context import open_context
from syncd.cycles.account_sync import account_pass
from syncd.daemon.leases import LeaseManager
from syncd.daemon.passes import run_pass
from syncd.logs import configure_logging
from syncd.settings import DatabaseSettings, LogSettings, Settings
from tests.bench.bench_account_sync import (
    TABLES,
    SimHandle,
    account_settings,
    broker_service_s,
    flush_stats,
    postgres_cpu,
    table_writes,
)
from tests.bench.common import scratch_database


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--positions", type=int, default=50)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=100, help="cycles.concurrency of each replica")
    p.add_argument("--pool", type=int, default=20, help="database.pool_max of each replica")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args()


@dataclass
class ShareFigures:
    """One replica's part of one pass."""

    replica: str
    accounts: int
    positions: int
    seconds: float
    cpu: float
    failed: int
    same_answer: int


@dataclass
class ReplicaPass:
    name: str
    seconds: float  # from the start signal until the last replica answered
    shares: list[ShareFigures]
    written: int
    cpu_sim: float
    cpu_pg: float

    @property
    def cpu_syncd(self) -> float:
        return sum(s.cpu for s in self.shares)

    @property
    def positions(self) -> int:
        return sum(s.positions for s in self.shares)


@dataclass
class ReplicasResult:
    accounts: int
    replicas: int
    latency_s: float
    concurrency: int
    first: ReplicaPass
    idle: ReplicaPass
    rss_mb: list[float] = field(default_factory=list)
    service_s: float = 0.0  # the broker's own service time at the replicas' combined concurrency


# -- one replica, in a process of its own ---------------------------------------------------------------


def _settings(dsn: str, pool_max: int, concurrency: int, sim: SimHandle) -> Settings:
    db = DatabaseSettings(dsn=dsn, pool_max=pool_max, pool_min=min(pool_max, 10))
    return Settings(
        database=db,
        accounts=account_settings(sim, "alpaca"),
        cycles={"concurrency": concurrency, "broker_timeout_s": 30},
        log=LogSettings(level="warning", format="console"),
    )


async def _replica_serve(conn: mpc.Connection, setup: tuple[str, int, int, str, list[Any]], instance: str) -> None:
    configure_logging(LogSettings(level="warning", format="console"))
    dsn, pool_max, concurrency, url, infos = setup
    sim = SimHandle()
    sim.url, sim.infos = url, infos
    settings = _settings(dsn, pool_max, concurrency, sim)
    loop = asyncio.get_running_loop()
    async with open_context(settings, instance=instance) as ctx:
        accounts = list(ctx.accounts.values())
        leases = LeaseManager(
            ctx.pool, ctx.queries, instance=instance, account_ids=[a.id for a in accounts], heartbeat_s=60.0
        )
        conn.send("ready")
        try:
            while True:
                msg: tuple[str, ...] = await loop.run_in_executor(None, conn.recv)
                if msg[0] == "beat":
                    await leases.heartbeat()
                    conn.send(len(leases.held()))
                elif msg[0] == "pass":
                    mine = [a for a in accounts if leases.holds(a.id)]
                    cpu0 = time.process_time()
                    summary = await run_pass(ctx, "accountSync", account_pass, mine)
                    cpu = time.process_time() - cpu0
                    await flush_stats(ctx.pool, idle_only=True)  # so the statistics the bench reads include this pass
                    ok = [r for r in summary.results if r.ok]
                    conn.send(
                        ShareFigures(
                            instance,
                            len(mine),
                            sum(r.stats.get("positions", 0) for r in ok),
                            summary.duration_s,
                            cpu,
                            len(summary.results) - len(ok),
                            sum(r.stats.get("same_answer", 0) for r in ok),
                        )
                    )
                else:
                    break
        finally:
            await leases.release_all()
    conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _replica_main(conn: mpc.Connection, setup: tuple[str, int, int, str, list[Any]], instance: str) -> None:
    asyncio.run(_replica_serve(conn, setup, instance))


class Replicas:
    """The replica processes as the bench drives them: every command goes to all, answers are gathered."""

    def __init__(self, setup: tuple[str, int, int, str, list[Any]], n: int) -> None:
        ctx = mp.get_context("spawn")
        self._conns: list[mpc.Connection] = []
        self._procs: list[Any] = []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_replica_main, args=(child, setup, f"bench-replica-{i + 1}"), daemon=True)
            self._conns.append(parent)
            self._procs.append(proc)

    async def _recv(self, conn: mpc.Connection) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    async def start(self) -> None:
        for proc, conn in zip(self._procs, self._conns, strict=True):  # one at a time: each registers the accounts
            proc.start()
            assert await self._recv(conn) == "ready"

    async def ask(self, *msg: str) -> list[Any]:
        for conn in self._conns:
            conn.send(msg)
        return list(await asyncio.gather(*(self._recv(c) for c in self._conns)))

    async def stop(self) -> list[float]:
        rss = await self.ask("stop")
        for proc in self._procs:
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 20)
        self._procs = []
        return [float(r) for r in rss]

    def kill(self) -> None:
        """After a failure: whatever is still running goes."""
        for proc in self._procs:
            proc.kill()

    async def balance(self, accounts: int) -> list[int]:
        """Heartbeats, one replica after another, until every account is held once and shares are fair."""
        n = len(self._conns)
        held: list[int] = []
        for _ in range(4 * n + 4):
            held = []
            for conn in self._conns:
                conn.send(("beat",))
                held.append(int(await self._recv(conn)))
            if sum(held) == accounts and max(held) <= -(-accounts // n):  # each at most its fair share
                return held
        raise RuntimeError(f"leases did not balance: {held} of {accounts}")


async def _timed(
    replicas: Replicas, dsn: str, pool: asyncpg.Pool[Any], sim: SimHandle, name: str, accounts: int
) -> ReplicaPass:
    before = await table_writes(dsn, pool)
    sim0 = (await sim.stats())[2]
    pg0 = await postgres_cpu(pool)
    t0 = time.perf_counter()
    shares: list[ShareFigures] = await replicas.ask("pass")
    seconds = time.perf_counter() - t0
    cpu_sim = (await sim.stats())[2] - sim0
    cpu_pg = await postgres_cpu(pool) - pg0
    after = await table_writes(dsn, pool)
    result = ReplicaPass(
        name, seconds, shares, sum(after.get(t, 0) - before.get(t, 0) for t in TABLES), cpu_sim, cpu_pg
    )
    show(result, accounts)
    return result


def show(p: ReplicaPass, accounts: int) -> None:
    held = sum(s.accounts for s in p.shares)
    print(
        f"{p.name:<6} {len(p.shares)} replicas: total {p.seconds:6.2f} s over {held} of {accounts} accounts, "
        f"{p.positions} positions, rows written {p.written}; CPU replicas {p.cpu_syncd:.2f} s, "
        f"simulator {p.cpu_sim:.2f} s, postgres {p.cpu_pg:.2f} s",
        flush=True,
    )
    for s in p.shares:
        print(
            f"    {s.replica}: {s.accounts} accounts, {s.positions} positions, {s.seconds:6.2f} s, CPU {s.cpu:.2f} s"
            f" ({s.cpu / max(s.positions, 1) * 1e6:.1f} us/position), same answer {s.same_answer}"
            + (f", FAILED {s.failed}" if s.failed else ""),
            flush=True,
        )


async def run_replicas(
    accounts: int, positions: int, replicas: int, latency_ms: float, concurrency: int, pool_max: int, seed: int = 42
) -> ReplicasResult:
    sim = SimHandle()
    sim_args = argparse.Namespace(
        accounts=accounts, positions=positions, latency_ms=latency_ms, sim="process", seed=seed
    )
    t_setup = time.perf_counter()
    async with scratch_database("syncd_bench_replicas") as dsn:
        await sim.start(sim_args)
        procs = Replicas((dsn, pool_max, concurrency, sim.url, sim.infos), replicas)
        try:
            await procs.start()
            held = await procs.balance(accounts)
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, server_settings={"search_path": "syncd"})
            try:
                print(
                    f"accountSync bench, {replicas} replicas: {accounts} accounts x {positions} positions (alpaca), "
                    f"latency {latency_ms:g} ms, concurrency {concurrency} and pool {pool_max} each, leases {held}, "
                    f"simulator in its own process; set-up {time.perf_counter() - t_setup:.1f} s",
                    flush=True,
                )
                fetched = account_settings(sim, "alpaca")  # what the replicas hold, for the bare fetches
                service_s, service_n = await broker_service_s(fetched, concurrency * replicas)
                print(
                    f"bare fetch at concurrency {concurrency * replicas}, before the first pass: {service_s:.2f} s for "
                    f"{service_n} requests (a bare client, bodies read, nothing decoded; the simulator's one-time work "
                    "on its first answers included)",
                    flush=True,
                )
                first = await _timed(procs, dsn, pool, sim, "first", accounts)
                idle = await _timed(procs, dsn, pool, sim, "idle", accounts)
                # the floor takes the faster of the fetch before the first pass and one after the last
                again, _ = await broker_service_s(fetched, concurrency * replicas)
                print(f"bare fetch again, after the passes: {again:.2f} s (the service time: the faster)", flush=True)
                service_s = min(service_s, again)
            finally:
                await pool.close()
            rss = await procs.stop()
        finally:
            procs.kill()
            await sim.stop()
    print("peak RSS of each replica: " + ", ".join(f"{r:.0f} MB" for r in rss), flush=True)
    return ReplicasResult(accounts, replicas, latency_ms / 1000, concurrency, first, idle, rss, service_s)


async def main() -> None:
    args = parse_args()
    configure_logging(LogSettings(level="warning", format="console"))
    await run_replicas(
        args.accounts, args.positions, args.replicas, args.latency_ms, args.concurrency, args.pool, args.seed
    )


if __name__ == "__main__":
    asyncio.run(main())
