"""Benchmark: fill-to-database latency through Tradier's account events stream.

    python -m tests.bench.bench_tradier_fill_latency [--orders 100] [--accounts 20] [--rate 50] [--steps 2]

Beside ``bench_fill_latency`` (Alpaca's ``trade_updates``), with the same set-up: a scratch
database on the test Postgres (``$SYNCD_TEST_DSN`` or 127.0.0.1:5432) with every migration; the
simulator in a process of its own (wall clock, nothing fills until told); ``--orders`` open
requests spread over ``--accounts`` Tradier accounts (one token each), placed by one tradeCycle
pass (the outbox); one stream consumer per account (``syncd.trading.stream.consume_trade_updates``,
as the daemon runs it: session, websocket, then per event a GET of the order), warmed up by one
outside order per account seen arriving in ``orders``.

Timed: each order is filled in ``--steps`` slices through the simulator's ``/_sim/fill``
(``--rate`` fills per second across all accounts, in a random order). For every fill, the
latency is the broker's time of the event (its ``transaction_date``, milliseconds) to the commit
of the transaction that wrote the order, its events and the trade row.

Printed: fills, p50/p90/p99/max latency in ms, and a check that every trade ended ``open`` with
its whole quantity (each fill counted once). Target: p99 < 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import multiprocessing.connection as mpc
import statistics
import time

import aiohttp
from pydantic import SecretStr

from syncd.context import Context, open_context
from syncd.cycles import trade_cycle
from syncd.daemon.passes import run_pass
from syncd.logs import configure_logging
from syncd.settings import AccountSettings, DatabaseSettings, LogSettings, Settings
from syncd.trading.stream import consume_trade_updates
from tests.bench.bench_fill_latency import fire, percentile, wait_until
from tests.bench.common import scratch_database


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=100, help="open requests (each filled in --steps slices)")
    p.add_argument("--accounts", type=int, default=20)
    p.add_argument("--steps", type=int, default=2, help="fills per order")
    p.add_argument("--rate", type=float, default=50.0, help="fills per second, all accounts together")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args()


async def _sim_serve(conn: mpc.Connection, accounts: int, seed: int) -> None:
    from syncd.sim import SimConfig, start_simulator

    configure_logging(LogSettings(level="warning", format="console"))
    sim = await start_simulator(SimConfig(seed=seed, accounts=accounts, positions_per_account=0, fill_on_submit=False))
    conn.send((sim.url, sim.tradier_stream_url, [(a.tradier_account_id, a.tradier_token) for a in sim.accounts]))
    try:
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
    finally:
        await sim.stop()


def _sim_main(conn: mpc.Connection, accounts: int, seed: int) -> None:
    asyncio.run(_sim_serve(conn, accounts, seed))


async def place_orders(ctx: Context, orders: int) -> list[str]:
    """Queue ``orders`` open requests round-robin; one tradeCycle pass places them; their Tradier ids."""
    accounts = list(ctx.accounts.values())
    for i in range(orders):
        acct = accounts[i % len(accounts)]
        await ctx.pool.execute(
            "INSERT INTO order_requests (account_id, kind, payload) VALUES ($1, 'open', $2)",
            acct.id,
            {"symbol": "AAPL", "side": "buy", "qty": 10, "type": "market", "strategy": "LONG_STOCK"},
        )
    summary = await run_pass(ctx, "tradeCycle", trade_cycle.account_pass, accounts)
    if not summary.ok:
        raise SystemExit(f"bench: placing orders failed: {[r.error for r in summary.failed]}")
    rows = await ctx.pool.fetch(
        "SELECT o.broker_order_id FROM order_requests r JOIN orders o USING (client_order_id) "
        "WHERE r.state = 'submitted' ORDER BY r.id"
    )
    if len(rows) != orders:
        raise SystemExit(f"bench: only {len(rows)} of {orders} requests were submitted")
    return [r["broker_order_id"] for r in rows]


async def warm_up(ctx: Context, http: aiohttp.ClientSession, url: str) -> None:
    """An outside order per account until each is seen in ``orders``: every stream subscribed and applying."""
    names = list(ctx.accounts)
    deadline = time.monotonic() + 60
    waiting = set(range(len(names)))
    while waiting:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: streams of {sorted(waiting)} never delivered")
        for i in sorted(waiting):
            body = {"account": i, "symbol": "MSFT", "side": "buy", "qty": 1}
            async with http.post(f"{url}/_sim/orders", json=body) as r:
                r.raise_for_status()
        await asyncio.sleep(0.5)  # a stream that was not yet subscribed missed it: post again
        rows = await ctx.pool.fetch(
            "SELECT DISTINCT a.name FROM orders o JOIN accounts a ON a.id = o.account_id WHERE o.symbol = 'MSFT'"
        )
        seen = {r["name"] for r in rows}
        waiting = {i for i in waiting if names[i] not in seen}


async def run(args: argparse.Namespace, dsn: str, url: str, stream_url: str, creds: list[tuple[str, str]]) -> None:
    settings = Settings(
        database=DatabaseSettings(dsn=dsn, pool_max=20),
        trading={"enabled": True},
        log=LogSettings(level="warning", format="console"),
        accounts=[
            AccountSettings(
                name=f"bench-{i:03d}",
                broker="tradier",
                account_id=account_id,
                token=SecretStr(token),
                base_url=url,
                stream_url=stream_url,
            )
            for i, (account_id, token) in enumerate(creds)
        ],
    )
    latencies: list[float] = []
    async with open_context(settings, instance="bench") as ctx, aiohttp.ClientSession() as http:
        ids = await place_orders(ctx, args.orders)
        stop = asyncio.Event()
        consumers = [
            asyncio.create_task(consume_trade_updates(ctx, a, stop, on_fill=latencies.append))
            for a in ctx.accounts.values()
        ]
        try:
            await warm_up(ctx, http, url)
            latencies.clear()
            expected: int = len(ids) * args.steps
            started = time.perf_counter()
            await fire(http, url, ids, args.steps, args.rate, args.seed)

            async def all_applied() -> bool:
                return len(latencies) >= expected

            try:
                await wait_until("every fill applied", all_applied, 60)
            except SystemExit:
                print(f"bench: {len(latencies)} of {expected} fills applied")
                for name, v in ctx.metrics.streams.items():
                    print(name, v)
                rows = await ctx.pool.fetch("SELECT quantity, count(*) FROM trades GROUP BY 1")
                print([tuple(r) for r in rows])
                rows = await ctx.pool.fetch("SELECT source, event, count(*) FROM order_events GROUP BY 1, 2")
                print([tuple(r) for r in rows])
                raise
            wall = time.perf_counter() - started
        finally:
            stop.set()
            await asyncio.gather(*consumers)
        bad = await ctx.pool.fetchval(
            "SELECT count(*) FROM trades WHERE status <> 'open' OR quantity <> 10 OR requested_quantity <> 10"
        )
        sessions = sum(1 for a in ctx.accounts.values() if ctx.metrics.streams[a.name].events > 0)
    ms = [x * 1000 for x in latencies]
    print(
        f"tradier fill latency through the account events stream: {len(ms)} fills over "
        f"{len(ctx.accounts)} accounts ({sessions} streaming) in {wall:.1f} s ({len(ms) / wall:.0f} fills/s)"
    )
    print(
        f"  p50 {percentile(ms, 50):.1f} ms   p90 {percentile(ms, 90):.1f} ms   "
        f"p99 {percentile(ms, 99):.1f} ms   max {max(ms):.1f} ms   mean {statistics.fmean(ms):.1f} ms"
    )
    print(f"  target p99 < 250 ms: {'met' if percentile(ms, 99) < 250 else 'NOT met'}")
    print(f"  trades not open with their whole quantity: {bad} (each fill counted once)")


async def main() -> None:
    args = parse_args()
    configure_logging(LogSettings(level="warning", format="console"))
    async with scratch_database("syncd_bench_tradier_fill") as dsn:
        spawn = mp.get_context("spawn")
        parent, child = spawn.Pipe()
        proc = spawn.Process(target=_sim_main, args=(child, args.accounts, args.seed), daemon=True)
        proc.start()
        try:
            url, stream_url, creds = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
            await run(args, dsn, url, stream_url, creds)
        finally:
            parent.send("stop")
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 10)


if __name__ == "__main__":
    asyncio.run(main())
