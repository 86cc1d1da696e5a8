"""Benchmark: exits on live quotes (issue 15 part B).

    python -m tests.bench.bench_quote_exit [--exits 200] [--accounts 10] [--rate 20]
                                           [--symbols 1000] [--quote-rate 10] [--load-s 20]
                                           [--broker alpaca|tradier]

Set-up (not timed): a scratch database on the test Postgres with every migration; the simulator in
a process of its own (wall clock); ``--exits`` stock positions spread over ``--accounts`` Alpaca
accounts, each mirrored by one accountSync pass and given an open ``LONG_STOCK`` trade with a 5 %
stop-loss; one :class:`syncd.daemon.quotes.QuoteWatcher` per account (as ``syncd run`` runs it),
waited for until every symbol is subscribed at the simulator.

1. **Quote to exit.** At ``--rate`` per second, in a random order, the simulator moves one symbol
   6 % down (``set_price``, what ``/_sim/price`` does). Latency: from the moment the simulator set
   that quote to the moment it received syncd's close order (both on the simulator's clock), over
   every exit. Target: p99 < 1 s. Also checked: one close request and one order per trade.
2. **Quote load.** One account with ``--symbols`` subscribed symbols (each leg of an open trade
   whose rule never fires); the simulator sends ``--quote-rate`` quotes a second for every one of
   them for ``--load-s`` seconds. Sampled each second: quotes sent by the simulator and received
   by syncd (the difference is the backlog: it must not grow), syncd's CPU (this process) and the
   simulator's, and this process's resident memory; and the database flushes made.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import multiprocessing.connection as mpc
import random
import resource
import statistics
import threading
import time
from decimal import Decimal
from typing import Any

from pydantic import SecretStr

from syncd.context import Context, open_context
from syncd.cycles import task_by_short
from syncd.daemon.passes import run_pass
from syncd.daemon.quotes import QuoteRegistry, QuoteWatcher
from syncd.logs import configure_logging
from syncd.settings import AccountSettings, DatabaseSettings, LogSettings, Settings
from tests.bench.common import scratch_database


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exits", type=int, default=200, help="trades whose stop-loss is crossed (one each)")
    p.add_argument("--accounts", type=int, default=10)
    p.add_argument("--rate", type=float, default=20.0, help="stop-loss crossings per second, all accounts")
    p.add_argument("--symbols", type=int, default=1000, help="subscribed symbols in the load test (0: skip it)")
    p.add_argument("--quote-rate", type=float, default=10.0, help="quotes per second per symbol in the load test")
    p.add_argument("--load-s", type=float, default=20.0, help="seconds of quote load")
    p.add_argument("--broker", choices=("alpaca", "tradier"), default="alpaca", help="whose quote stream")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args()


def letters(n: int, width: int = 3) -> str:
    out = ""
    for _ in range(width):
        n, r = divmod(n, 26)
        out = chr(65 + r) + out
    return out


# -- the simulator, in a process of its own, answering commands over a pipe -------------------------------


async def _sim_serve(conn: mpc.Connection, args: argparse.Namespace) -> None:
    from syncd.sim import SimConfig, start_simulator

    configure_logging(LogSettings(level="warning", format="console"))
    sim = await start_simulator(SimConfig(seed=args.seed, accounts=args.accounts + 1, positions_per_account=0))
    loop = asyncio.get_running_loop()
    crossed: dict[str, float] = {}
    orders: dict[str, float] = {}

    def on_event(event: Any) -> None:
        symbol = event.order.symbol
        if symbol is not None and symbol not in orders and event.order.source != "outside":
            orders[symbol] = time.time()

    sim.exchange.listeners.append(on_event)
    per_account: list[list[str]] = [[] for _ in range(args.accounts)]
    for k in range(args.exits):
        symbol = "E" + letters(k)
        sim.set_price(symbol, "100.00", "100.02")
        sim.add_position(k % args.accounts, symbol, 10, "100.00")
        per_account[k % args.accounts].append(symbol)
    load = args.accounts
    load_symbols = []
    for k in range(args.symbols):
        symbol = "L" + letters(k)
        sim.set_price(symbol, "50.00", "50.02")
        sim.add_position(load, symbol, 1, "50.00")
        load_symbols.append(symbol)
    creds = [
        (a.api_key, a.api_secret) if args.broker == "alpaca" else (a.tradier_account_id, a.tradier_token)
        for a in sim.accounts
    ]
    conn.send((sim.url, sim.stream_url, sim.data_stream_url, creds, per_account, load_symbols))

    def command(cmd: tuple[Any, ...]) -> Any:
        if cmd[0] == "cross":
            crossed[cmd[1]] = time.time()
            sim.set_price(cmd[1], "94.00", "94.02")
            return None
        if cmd[0] == "times":
            return crossed, orders
        if cmd[0] == "flood":
            sim.quotes.flood(cmd[1])
            return None
        if cmd[0] == "sent":
            return sim.quotes.sent, time.process_time()
        raise ValueError(cmd)

    done = asyncio.Event()

    def reader() -> None:
        while True:
            cmd = conn.recv()
            if cmd == "stop":
                loop.call_soon_threadsafe(done.set)
                return
            fut = asyncio.run_coroutine_threadsafe(_call(command, cmd), loop)
            conn.send(fut.result())

    threading.Thread(target=reader, daemon=True).start()
    await done.wait()
    await sim.stop()


async def _call(fn: Any, cmd: tuple[Any, ...]) -> Any:
    return fn(cmd)


def _sim_main(conn: mpc.Connection, args: argparse.Namespace) -> None:
    asyncio.run(_sim_serve(conn, args))


class SimProcess:
    def __init__(self, conn: mpc.Connection) -> None:
        self.conn = conn
        self.lock = asyncio.Lock()

    async def ask(self, *cmd: Any) -> Any:
        async with self.lock:
            loop = asyncio.get_running_loop()
            self.conn.send(cmd)
            return await loop.run_in_executor(None, self.conn.recv)


# -- the run -------------------------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def wait_until(what: str, cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not happen within {timeout}s")
        await asyncio.sleep(0.05)


async def add_trades(ctx: Context, account_id: int, symbols: list[str], entry: str, sl: int) -> None:
    rows = await ctx.pool.fetch(
        """INSERT INTO trades (account_id, symbol, strategy, status, quantity, entry_price, stop_loss_pct, opened_at)
           SELECT $1, s, 'LONG_STOCK', 'open', p.quantity, $3::numeric, $4::numeric, now()
             FROM unnest($2::text[]) AS s JOIN portfolio_positions p ON p.account_id = $1 AND p.symbol = s
           RETURNING id, symbol""",
        account_id,
        symbols,
        Decimal(entry),
        Decimal(sl),
    )
    await ctx.pool.executemany(
        "INSERT INTO trade_legs (trade_id, leg_index, symbol, side) VALUES ($1, 0, $2, 'buy')",
        [(r["id"], r["symbol"]) for r in rows],
    )
    await ctx.pool.execute("ANALYZE")  # fresh tables: give the planner the statistics a live database has


def account_settings(
    args: argparse.Namespace, i: int, key: str, secret: str, url: str, stream_url: str, data_stream_url: str
) -> AccountSettings:
    name = f"bench-{i:03d}" if i < args.accounts else "bench-load"
    limit = max(30, args.exits, args.symbols)
    if args.broker == "tradier":
        return AccountSettings(
            name=name,
            broker="tradier",
            account_id=key,
            token=SecretStr(secret),
            base_url=url,
            market_stream_url=f"{data_stream_url}/v1/markets/events",
            quote_symbols_limit=limit,
        )
    return AccountSettings(
        name=name,
        broker="alpaca",
        api_key=SecretStr(key),
        api_secret=SecretStr(secret),
        base_url=url,
        data_url=url,
        stream_url=stream_url,
        data_stream_url=data_stream_url,
        quote_symbols_limit=limit,
    )


def settings_for(args: argparse.Namespace, dsn: str, info: tuple[Any, ...]) -> Settings:
    url, stream_url, data_stream_url, creds, _per_account, _load = info
    return Settings(
        database=DatabaseSettings(dsn=dsn, pool_max=20),
        trading={"enabled": True, "auto_exits": True},
        log=LogSettings(level="warning", format="console"),
        accounts=[account_settings(args, i, k, s, url, stream_url, data_stream_url) for i, (k, s) in enumerate(creds)],
    )


async def exits_phase(ctx: Context, args: argparse.Namespace, sim: SimProcess, per_account: list[list[str]]) -> None:
    accounts = [ctx.accounts[f"bench-{i:03d}"] for i in range(args.accounts)]
    for acct, symbols in zip(accounts, per_account, strict=True):
        await add_trades(ctx, acct.id, symbols, "100.00", 5)
    syncd_latency: list[float] = []
    registry = QuoteRegistry()
    watchers = [
        QuoteWatcher(ctx, a, registry=registry, on_exit=lambda _t, s: syncd_latency.append(s)) for a in accounts
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in watchers]
    try:
        await wait_until(
            "every symbol subscribed",
            lambda: all(w.stocks.subscribed == set(s) for w, s in zip(watchers, per_account, strict=True)),
            60,
        )
        plan = [s for symbols in per_account for s in symbols]
        random.Random(args.seed).shuffle(plan)
        t0 = time.perf_counter()
        for n, symbol in enumerate(plan):
            delay = t0 + n / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await sim.ask("cross", symbol)
        await wait_until("every exit placed", lambda: len(syncd_latency) >= len(plan), 60)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    crossed, orders = await sim.ask("times")
    ms = [(orders[s] - crossed[s]) * 1000 for s in plan if s in orders]
    requests = await ctx.pool.fetchval("SELECT count(*) FROM order_requests WHERE kind = 'close'")
    per_trade = await ctx.pool.fetchval(
        "SELECT count(*) FROM (SELECT trade_id FROM order_requests GROUP BY trade_id HAVING count(*) > 1) x"
    )
    print(
        f"quote to exit ({args.broker}): {len(ms)} stop-losses crossed at the simulator over "
        f"{len(accounts)} accounts ({args.rate:g}/s)"
    )
    print(
        f"  simulator quote set -> close order received by the simulator: p50 {percentile(ms, 50):.1f} ms   "
        f"p90 {percentile(ms, 90):.1f} ms   p99 {percentile(ms, 99):.1f} ms   max {max(ms):.1f} ms   "
        f"mean {statistics.fmean(ms):.1f} ms"
    )
    sl = [x * 1000 for x in syncd_latency]
    print(
        f"  inside syncd (quote received -> order accepted): p50 {percentile(sl, 50):.1f} ms   "
        f"p99 {percentile(sl, 99):.1f} ms"
    )
    print(f"  target p99 < 1 s: {'met' if percentile(ms, 99) < 1000 else 'NOT met'}")
    print(f"  close requests {requests} for {len(plan)} trades; trades with more than one request: {per_trade}")


async def load_phase(ctx: Context, args: argparse.Namespace, sim: SimProcess, symbols: list[str]) -> None:
    acct = ctx.accounts["bench-load"]
    await add_trades(ctx, acct.id, symbols, "50.00", 90)  # a 90 % stop: never fires under a one-cent wobble
    watcher = QuoteWatcher(ctx, acct, registry=QuoteRegistry())
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    samples: list[tuple[float, int, int, float, float, float]] = []
    try:
        await wait_until("every load symbol subscribed", lambda: len(watcher.stocks.subscribed) == len(symbols), 60)
        await wait_until("the first quotes", lambda: watcher.stocks.received >= len(symbols), 60)
        flushes0 = watcher.flushes
        await sim.ask("flood", args.quote_rate)
        base_sent, base_sim_cpu = await sim.ask("sent")
        base_recv, base_cpu, start = watcher.stocks.received, time.process_time(), time.monotonic()
        while time.monotonic() - start < args.load_s:
            await asyncio.sleep(1.0)
            sent, sim_cpu = await sim.ask("sent")
            samples.append(
                (
                    time.monotonic() - start,
                    sent - base_sent,
                    watcher.stocks.received - base_recv,
                    time.process_time() - base_cpu,
                    sim_cpu - base_sim_cpu,
                    rss_mb(),
                )
            )
        await sim.ask("flood", 0)
        flushes = watcher.flushes - flushes0
        flush_s = watcher.flush_seconds
    finally:
        stop.set()
        await task
    wall, sent, received, cpu, sim_cpu, rss = samples[-1]
    backlogs = [s - r for _, s, r, *_ in samples]
    half = len(backlogs) // 2
    first_half = statistics.fmean(backlogs[:half]) if half else 0
    second_half = statistics.fmean(backlogs[half:])
    print(
        f"quote load ({args.broker}): {len(symbols)} subscribed symbols x {args.quote_rate:g} quotes/s "
        f"for {wall:.0f} s (target {len(symbols) * args.quote_rate:,.0f} quotes/s)"
    )
    print(f"  sent by the simulator {sent / wall:,.0f}/s, received by syncd {received / wall:,.0f}/s")
    print(
        f"  backlog (sent - received) per second: {' '.join(str(b) for b in backlogs)}; "
        f"mean first half {first_half:,.0f}, second half {second_half:,.0f}"
    )
    print(
        f"  syncd CPU {cpu / wall * 100:.0f} % of one core, simulator CPU {sim_cpu / wall * 100:.0f} %; "
        f"syncd RSS {rss:.0f} MB (max {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)"
    )
    print(
        f"  database flushes {flushes} ({flushes / wall:.1f}/s, each the latest quote of every symbol that moved; "
        f"{flush_s / max(1, watcher.flushes) * 1000:.0f} ms each on average)"
    )


async def main() -> None:
    args = parse_args()
    configure_logging(LogSettings(level="warning", format="console"))
    async with scratch_database("syncd_bench_quotes") as dsn:
        spawn = mp.get_context("spawn")
        parent, child = spawn.Pipe()
        proc = spawn.Process(target=_sim_main, args=(child, args), daemon=True)
        proc.start()
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(None, parent.recv)
            sim = SimProcess(parent)
            async with open_context(settings_for(args, dsn, info), instance="bench") as ctx:
                accounts = list(ctx.accounts.values())
                summary = await run_pass(ctx, "accountSync", task_by_short("account").account_pass, accounts)
                if not summary.ok:
                    raise SystemExit(f"bench: accountSync failed: {[r.error for r in summary.failed]}")
                if args.exits:
                    await exits_phase(ctx, args, sim, info[4])
                if args.symbols:
                    await load_phase(ctx, args, sim, info[5])
        finally:
            parent.send("stop")
            await loop.run_in_executor(None, proc.join, 10)


if __name__ == "__main__":
    asyncio.run(main())
