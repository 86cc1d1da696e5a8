"""Benchmark: accountSync over N accounts x M positions on the simulator.

    python -m tests.bench.bench_account_sync --accounts 1000 --positions 50 [--latency-ms 20]
        [--concurrency 100] [--pool 20] [--broker alpaca|tradier|mixed] [--sim inprocess|process]

Set-up (not timed): a scratch database on the test Postgres (``$SYNCD_TEST_DSN`` or
127.0.0.1:5432) with every migration; the simulator -- by default in a process of its
own, so its CPU time is not syncd's (``--sim inprocess`` shares this event loop) -- with
a manual clock, so prices move only when told; ``--latency-ms`` added to every answer; every
account's book generated (the simulator makes one up on an account's first request) and priced
(its quotes computed: again after each price move, between passes; see ``price_book``).

Timed: accountSync passes over every account (``run_pass``, as the daemon runs them):

1. ``first``: an empty mirror, every position inserted;
2. ``idle``: nothing changed at the broker: nothing may be written (every answer recognised);
3. ``compared``: the same, with the recorded answers forgotten: every answer decoded and compared;
4. ``quoted``: every row quoted (as monitorCycle leaves them), prices moved at the broker: every
   answer differs, the positions compare equal, a balances snapshot is written per account;
5. ``moved``: prices moved again, the steady state of a market day (the rows are known by their
   fingerprint from the pass before, so they are not read back).

Printed per pass: wall time, positions/s, rows written (from ``pg_stat_user_tables`` of
portfolio_positions, position_events and account_snapshots, flushed on every pooled
connection; cross-checked against the passes' own counts), broker requests per account
(mean and max), per-account latency p50/p99. At the end: peak RSS of this process (and
of the simulator's), and the floor: the broker's own service time at full concurrency (measured:
a bare client GETs what a pass fetches of every account, ``--concurrency`` accounts at a time,
reading the bodies and decoding nothing; the faster of a run before the first pass and one after
the last; never below latency x accounts / concurrency, an account's requests going at once)
+ one bulk write of all rows (measured: one INSERT ... unnest of N x M rows into a scratch table).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import resource
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from syncd.context import Account, Context, open_context, settle_heap
from syncd.cycles.account_sync import account_pass
from syncd.daemon.passes import PassSummary, run_pass
from syncd.db import apply_migrations
from syncd.logs import configure_logging
from syncd.settings import AccountSettings, DatabaseSettings, LogSettings, Settings
from tests.pg import create_database, drop_database, find_admin_dsn, with_database

TABLES = ("portfolio_positions", "position_events", "account_snapshots")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--positions", type=int, default=50)
    p.add_argument("--latency-ms", type=float, default=0.0, help="added by the simulator to every answer")
    p.add_argument("--broker", choices=("alpaca", "tradier", "mixed"), default="alpaca")
    p.add_argument("--concurrency", type=int, default=100, help="cycles.concurrency")
    p.add_argument("--pool", type=int, default=20, help="database pool size")
    p.add_argument("--sim", choices=("process", "inprocess"), default="process")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--profile", metavar="FILE", help="write a pyinstrument HTML profile of the first pass")
    p.add_argument("--keep-db", action="store_true", help="keep the scratch database (its name is printed)")
    return p.parse_args()


# -- the simulator, in a process of its own ------------------------------------------------------------


@dataclass(frozen=True)
class SimAccountInfo:
    index: int
    api_key: str
    api_secret: str
    tradier_account_id: str
    tradier_token: str


def _sim_config(args: argparse.Namespace) -> Any:
    from syncd.sim import SimConfig

    return SimConfig(
        seed=args.seed,
        accounts=args.accounts,
        positions_per_account=args.positions,
        clock="manual",
        start_time=dt.datetime(2025, 12, 3, 16, 0, tzinfo=dt.UTC),
    )


async def _sim_serve(conn: mpc.Connection, config: Any, latency_s: float) -> None:
    from syncd.sim import start_simulator

    configure_logging(LogSettings(level="warning", format="console"))
    sim = await start_simulator(config)
    sim.faults.latency_s = latency_s
    build_books(sim)
    # The books (500,000 positions at 10,000 x 50) live as long as the simulator: out of the cyclic
    # collector's generations, as syncd's own start-up does with what it built (settle_heap).
    settle_heap()
    infos = [
        SimAccountInfo(i, a.api_key, a.api_secret, a.tradier_account_id, a.tradier_token)
        for i, a in enumerate(sim.accounts)
    ]
    conn.send((sim.url, infos))
    loop = asyncio.get_running_loop()
    # $SYNCD_BENCH_SIM_PROFILE=DIR: a cProfile of the simulator between each two "stats" asks
    # (so one file per pass and one per gap between passes), written to DIR/sim-N.prof.
    profile_dir = os.environ.get("SYNCD_BENCH_SIM_PROFILE")
    profiler: Any = None
    profiles = 0
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        while True:
            msg = await loop.run_in_executor(None, conn.recv)
            if msg == "stop":
                break
            if msg == "stats" and profiler is not None:
                profiler.disable()
                profiler.dump_stats(os.path.join(str(profile_dir), f"sim-{profiles}.prof"))
                profiles += 1
                profiler.enable()
            if msg == "stats":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                conn.send((sim.request_count, usage.ru_maxrss, usage.ru_utime + usage.ru_stime))
            if msg == "tick":
                sim.tick()
                price_book(sim)
                conn.send("ticked")
    finally:
        await sim.stop()


def build_books(sim: Any) -> None:
    """Make the simulator generate every account's book now (it does so lazily, on an account's first
    request), and price it: set-up, not the first pass. Composing and encoding its answers stays in
    the passes."""
    for acct in sim.accounts:
        acct.positions  # noqa: B018 -- the property builds the book
    price_book(sim)


def price_book(sim: Any) -> None:
    """Compute the market's quotes of every held symbol at its current prices now. The simulator
    prices a symbol lazily, on the first request after the market moved; a broker's prices move
    whether or not anyone asks, so this is the market's work, done when it moves (set-up, or the
    tick between two passes), not the answers' (valuing and encoding the positions stay in the pass)."""
    held = {symbol for acct in sim.accounts for symbol in acct.positions}
    for symbol in held:
        sim.market.quote(symbol)


def _sim_process_main(conn: mpc.Connection, config: Any, latency_s: float) -> None:
    asyncio.run(_sim_serve(conn, config, latency_s))


class SimHandle:
    """The simulator as the bench sees it, wherever it runs."""

    def __init__(self) -> None:
        self.url = ""
        self.infos: list[SimAccountInfo] = []
        self._proc: Any = None
        self._conn: mpc.Connection | None = None
        self._sim: Any = None

    async def start(self, args: argparse.Namespace) -> None:
        latency = args.latency_ms / 1000
        if args.sim == "inprocess":
            from syncd.sim import start_simulator

            self._sim = await start_simulator(_sim_config(args))
            self._sim.faults.latency_s = latency
            build_books(self._sim)
            self.url = self._sim.url
            self.infos = [
                SimAccountInfo(i, a.api_key, a.api_secret, a.tradier_account_id, a.tradier_token)
                for i, a in enumerate(self._sim.accounts)
            ]
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_sim_process_main, args=(child, _sim_config(args), latency), daemon=True)
        self._proc.start()
        self._conn = parent
        self.url, self.infos = await asyncio.get_running_loop().run_in_executor(None, parent.recv)

    async def stats(self) -> tuple[int, int, float]:
        """(requests served, simulator peak RSS in KiB, its CPU seconds; both 0 when in-process)."""
        if self._sim is not None:
            return self._sim.request_count, 0, 0.0
        assert self._conn is not None
        self._conn.send("stats")
        result: tuple[int, int, float] = await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)
        return result

    async def tick(self) -> None:
        """One market step: prices walk (every answer changes)."""
        if self._sim is not None:
            self._sim.tick()
            price_book(self._sim)
            return
        assert self._conn is not None
        self._conn.send("tick")
        await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)

    async def stop(self) -> None:
        if self._sim is not None:
            await self._sim.stop()
        if self._conn is not None:
            self._conn.send("stop")
            await asyncio.get_running_loop().run_in_executor(None, self._proc.join, 10)


def account_settings(sim: SimHandle, broker: str) -> list[AccountSettings]:
    out = []
    for info in sim.infos:
        kind = broker if broker != "mixed" else ("alpaca" if info.index % 2 == 0 else "tradier")
        name = f"bench-{info.index:05d}"
        if kind == "alpaca":
            out.append(
                AccountSettings(
                    name=name,
                    broker="alpaca",
                    api_key=info.api_key,
                    api_secret=info.api_secret,
                    base_url=sim.url,
                    data_url=sim.url,
                )
            )
        else:
            out.append(
                AccountSettings(
                    name=name,
                    broker="tradier",
                    account_id=info.tradier_account_id,
                    token=info.tradier_token,
                    base_url=sim.url,
                )
            )
    return out


# -- measuring -------------------------------------------------------------------------------------------


async def flush_stats(pool: asyncpg.Pool[Any], *, idle_only: bool = False) -> None:
    """Make every pooled backend publish its pending table statistics (PG15: pg_stat_force_next_flush).

    ``idle_only``: only the connections idle now (a replica's lease connection stays held)."""
    conns = [await pool.acquire() for _ in range(pool.get_idle_size() if idle_only else pool.get_size())]
    try:
        for conn in conns:
            await conn.execute("SELECT pg_stat_force_next_flush()")
    finally:
        for conn in conns:
            await pool.release(conn)


async def table_writes(dsn: str, pool: asyncpg.Pool[Any]) -> dict[str, int]:
    """Rows inserted + updated + deleted so far, per table, as the statistics system counts them."""
    await flush_stats(pool)
    conn = await asyncpg.connect(dsn)
    try:
        last: dict[str, int] | None = None
        for _ in range(50):  # the flushes land as each backend goes idle: wait until the counts settle
            rows = await conn.fetch(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS n FROM pg_stat_user_tables"
                " WHERE schemaname = 'syncd' AND relname = ANY($1::text[])",
                list(TABLES),
            )
            now = {r["relname"]: r["n"] for r in rows}
            if now == last:
                return now
            last = now
            await asyncio.sleep(0.1)
        return last or {}
    finally:
        await conn.close()


async def bulk_write_floor(pool: asyncpg.Pool[Any], n_rows: int) -> float:
    """Seconds for ONE bulk write of ``n_rows`` position rows (unnest into a scratch copy of the table)."""
    syms = [f"S{i:07d}" for i in range(n_rows)]
    one = Decimal("12.34")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE bench_floor (LIKE portfolio_positions INCLUDING DEFAULTS INCLUDING INDEXES)"
            " ON COMMIT DROP"
        )
        t0 = time.perf_counter()
        await conn.execute(
            "INSERT INTO bench_floor (account_id, symbol, asset_class, underlying, multiplier, quantity,"
            " qty_available, avg_entry_price, cost_basis, current_price, market_value, unrealized_pl)"
            " SELECT 1, s, 'us_equity', s, 1, q, q, p, p, p, p, p"
            " FROM unnest($1::text[], $2::numeric[], $3::numeric[]) AS t(s, q, p)",
            syms,
            [one] * n_rows,
            [one] * n_rows,
        )
        return time.perf_counter() - t0


def _requests_of(a: AccountSettings) -> list[tuple[str, dict[str, str]]]:
    """The GETs a pass makes of ``a`` (its balances and its positions), with the headers its adapter sends."""
    base = (a.base_url or "").rstrip("/")
    if a.broker == "alpaca":
        key = a.api_key.get_secret_value() if a.api_key else ""
        secret = a.api_secret.get_secret_value() if a.api_secret else ""
        headers = {"APCA-API-KEY-ID": key, "APCA-API-SECRET-KEY": secret}
        return [(f"{base}/v2/account", headers), (f"{base}/v2/positions", headers)]
    token = a.token.get_secret_value() if a.token else ""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    acct = f"{base}/v1/accounts/{a.account_id}"
    return [(f"{acct}/balances", headers), (f"{acct}/positions", headers)]


async def broker_service_s(accounts: list[AccountSettings], concurrency: int) -> tuple[float, int]:
    """The broker's own service time at full concurrency: seconds a bare client takes to GET what a
    pass fetches of every account (both requests at once, ``concurrency`` accounts at a time, as a
    pass runs them), the bodies read and nothing decoded; and how many requests that was."""
    import aiohttp

    gate = asyncio.Semaphore(concurrency)
    n = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def get(url: str, headers: dict[str, str]) -> None:
            nonlocal n
            async with session.get(url, headers=headers) as r:
                await r.read()
                r.raise_for_status()
                n += 1

        async def one(a: AccountSettings) -> None:
            async with gate:
                await asyncio.gather(*(get(u, h) for u, h in _requests_of(a)))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(a) for a in accounts))
        return time.perf_counter() - t0, n


async def postgres_cpu(pool: asyncpg.Pool[Any]) -> float:
    """CPU seconds used so far by this database's backends (Postgres on this machine; 0 when unreadable)."""
    pids = [r["pid"] for r in await pool.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


@dataclass
class PassFigures:
    name: str
    seconds: float
    positions: int
    written: int
    written_by_stats: int
    requests: int
    max_requests: int
    failed: int
    p50_ms: float
    p99_ms: float
    first_error: str | None
    same_answer: int = 0  # accounts whose answer was recognised unchanged (0019): nothing decoded
    cpu_syncd: float = 0.0
    cpu_sim: float = 0.0
    cpu_pg: float = 0.0


def figures(
    name: str, summary: PassSummary, before: dict[str, int], after: dict[str, int], requests: int
) -> PassFigures:
    n = len(summary.results)
    ok = [r for r in summary.results if r.ok]
    durations = sorted(r.duration_s for r in summary.results)
    written_by_stats = sum(
        r.stats.get("upserted", 0) + r.stats.get("deleted", 0) + r.stats.get("events", 0) + r.stats.get("snapshot", 0)
        for r in ok
    )
    return PassFigures(
        name=name,
        seconds=summary.duration_s,
        positions=sum(r.stats.get("positions", 0) for r in ok),
        written=sum(after.get(t, 0) - before.get(t, 0) for t in TABLES),
        written_by_stats=written_by_stats,
        requests=requests,
        max_requests=max((r.stats.get("broker_requests", 0) for r in summary.results), default=0),
        failed=n - len(ok),
        p50_ms=durations[n // 2] * 1000 if n else 0.0,
        p99_ms=durations[min(n - 1, int(n * 0.99))] * 1000 if n else 0.0,
        first_error=summary.failed[0].error if summary.failed else None,
        same_answer=sum(r.stats.get("same_answer", 0) for r in ok),
    )


def show(f: PassFigures, accounts: int) -> None:
    print(
        f"{f.name:<8} {f.seconds:7.2f} s  {f.positions / f.seconds:9.0f} positions/s  "
        f"rows written {f.written:6d} (passes say {f.written_by_stats})  "
        f"requests {f.requests} ({f.requests / max(accounts, 1):.2f}/account, max {f.max_requests})  "
        f"account p50 {f.p50_ms:6.1f} ms  p99 {f.p99_ms:6.1f} ms  same answer {f.same_answer}  "
        f"CPU syncd {f.cpu_syncd:.2f} s, simulator {f.cpu_sim:.2f} s, postgres {f.cpu_pg:.2f} s"
        + (f"  FAILED {f.failed}: {f.first_error}" if f.failed else ""),
        flush=True,
    )


async def timed_pass(
    ctx: Context, dsn: str, sim: SimHandle, accounts: list[Account], name: str, profile: str | None = None
) -> PassFigures:
    before = await table_writes(dsn, ctx.pool)
    req0 = sum(a.broker.request_count for a in accounts)
    sim_cpu0 = (await sim.stats())[2]
    pg_cpu0 = await postgres_cpu(ctx.pool)
    cpu0 = time.process_time()
    profiler: Any = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="enabled")
        profiler.start()
    # $SYNCD_BENCH_CPROFILE=DIR: a cProfile of this process per pass, to DIR/syncd-<pass>.prof
    cprofile_dir = os.environ.get("SYNCD_BENCH_CPROFILE")
    cprofiler: Any = None
    if cprofile_dir:
        import cProfile

        cprofiler = cProfile.Profile()
        cprofiler.enable()
    summary = await run_pass(ctx, "accountSync", account_pass, accounts)
    cpu = time.process_time() - cpu0
    if cprofiler is not None:
        cprofiler.disable()
        cprofiler.dump_stats(os.path.join(str(cprofile_dir), f"syncd-{name}.prof"))
    sim_cpu = (await sim.stats())[2] - sim_cpu0
    pg_cpu = await postgres_cpu(ctx.pool) - pg_cpu0
    if profiler is not None and profile:
        profiler.stop()
        with open(profile, "w", encoding="utf-8") as fh:
            fh.write(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False)[:6000])
    requests = sum(a.broker.request_count for a in accounts) - req0
    after = await table_writes(dsn, ctx.pool)
    f = figures(name, summary, before, after, requests)
    f.cpu_syncd, f.cpu_sim, f.cpu_pg = cpu, sim_cpu, pg_cpu
    show(f, len(accounts))
    return f


@dataclass
class BenchResult:
    """One run of the bench: both passes and what the floor is made of."""

    accounts: int
    positions_per_account: int
    latency_s: float
    concurrency: int
    first: PassFigures
    idle: PassFigures
    compared: PassFigures  # idle again, with the recorded answers forgotten: every answer decoded and compared
    quoted: PassFigures  # prices moved, every row quoted (as monitorCycle leaves them): compared, snapshots written
    moved: PassFigures  # prices moved again: the steady state of a market day
    rows: int
    write_s: float
    rss_mb: float
    sim_rss_mb: float

    service_s: float = 0.0  # the broker's own service time at full concurrency (broker_service_s; 0: not measured)

    @property
    def latency_bound(self) -> float:
        """latency x accounts / concurrency: what the added latency alone costs a pass (an account's
        requests go at once, so each account waits one latency)."""
        return self.latency_s * self.accounts / self.concurrency

    @property
    def broker_floor(self) -> float:
        """The broker's own service time at full concurrency (measured; never below the latency bound)."""
        return max(self.service_s, self.latency_bound)

    def floor(self, f: PassFigures) -> float:
        """The broker's floor + one bulk write of every row for the first pass."""
        return self.broker_floor + (self.write_s if f is self.first else 0.0)

    def cpu_us_per_position(self, f: PassFigures) -> float:
        return f.cpu_syncd / max(f.positions, 1) * 1e6


async def run_bench(args: argparse.Namespace) -> BenchResult:
    """Set up, run the first and the idle pass, print their lines; tear down."""
    admin, server = find_admin_dsn()
    name = f"syncd_bench_account_{uuid.uuid4().hex[:8]}"
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
            print(
                f"accountSync bench: {args.accounts} accounts x {args.positions} positions ({args.broker}), "
                f"latency {args.latency_ms:g} ms, concurrency {args.concurrency}, pool {args.pool}, "
                f"simulator {'in this process' if args.sim == 'inprocess' else 'in its own process'}; "
                f"set-up {time.perf_counter() - t_setup:.1f} s",
                flush=True,
            )
            # the broker's own service time, measured before the first pass and after the last one
            # (the floor takes the faster: a floor is what the broker cannot do better than)
            service_s, service_n = await broker_service_s(settings.accounts, args.concurrency)
            first = await timed_pass(ctx, dsn, sim, accounts, "first", args.profile)
            idle = await timed_pass(ctx, dsn, sim, accounts, "idle")
            # The same idle pass when no answer is recognised (as when the broker's prices moved but
            # nothing syncd owns did): every answer decoded and compared with the stored rows.
            await ctx.pool.execute("UPDATE accounts SET sync_answer = NULL")
            compared = await timed_pass(ctx, dsn, sim, accounts, "compared")
            # A market day: monitorCycle has quoted every row (its marks from now on), and prices move
            # between passes, so every answer differs and the balances change: each pass compares the
            # positions and writes a balances snapshot. The first such pass reads the rows back; the
            # next ones find them by their fingerprint (what this process last found equal).
            await ctx.pool.execute("UPDATE portfolio_positions SET quote_at = now()")
            await sim.tick()
            quoted = await timed_pass(ctx, dsn, sim, accounts, "quoted")
            await sim.tick()
            moved = await timed_pass(ctx, dsn, sim, accounts, "moved")
            service_s = min(service_s, (await broker_service_s(settings.accounts, args.concurrency))[0])
            rows = await ctx.pool.fetchval("SELECT count(*) FROM portfolio_positions")
            write_s = await bulk_write_floor(ctx.pool, max(rows, 1))
        sim_requests, sim_rss, _ = await sim.stats()
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"mirrored {rows} positions; peak RSS {rss_mb:.0f} MB (syncd side)"
            + (f", simulator {sim_rss / 1024:.0f} MB" if sim_rss else "")
            + f"; simulator served {sim_requests} requests",
            flush=True,
        )
        result = BenchResult(
            args.accounts,
            args.positions,
            args.latency_ms / 1000,
            args.concurrency,
            first,
            idle,
            compared,
            quoted,
            moved,
            rows,
            write_s,
            rss_mb,
            sim_rss / 1024,
            service_s,
        )
        cores = os.cpu_count() or 1
        for f in (first, idle, compared, quoted, moved):
            busy = f.cpu_syncd + f.cpu_sim + f.cpu_pg
            print(
                f"{f.name:<8} CPU of syncd + simulator + postgres {busy:.2f} s over {cores} cores: "
                f"CPU floor {busy / cores:.2f} s; pass is {f.seconds / (busy / cores):.2f}x that; "
                f"syncd CPU {result.cpu_us_per_position(f):.1f} us/position",
                flush=True,
            )
        print(
            f"broker service time at concurrency {args.concurrency}: {service_s:.2f} s for {service_n} requests"
            f" (a bare client, bodies read, nothing decoded; the faster of two runs);"
            f" latency x accounts / concurrency {result.latency_bound:.2f} s",
            flush=True,
        )
        for f in (first, idle, compared, quoted, moved):
            floor = result.floor(f)
            print(
                f"{f.name:<8} floor {floor:.2f} s (broker service time {result.broker_floor:.2f} s"
                f" + bulk write {write_s if f.name == 'first' else 0.0:.2f} s): "
                f"pass is {f.seconds / floor:.2f}x the floor",
                flush=True,
            )
        print(f"one bulk write of {rows} rows: {write_s:.2f} s", flush=True)
        return result
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
    await run_bench(args)


if __name__ == "__main__":
    asyncio.run(main())
