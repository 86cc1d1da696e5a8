"""Benchmark: requests/s of the Alpaca adapter against the simulator on this machine.

    python -m tests.bench.bench_alpaca_adapter [--accounts 50] [--positions 100]
        [--concurrency 1,8,32,128] [--seconds 2] [--external-sim]

For each operation (``list_positions``, ``get_account``, ``get_quotes`` of an account's
positions) and each concurrency level, that many workers call the adapter in a loop
for ``--seconds``, spread round-robin over the accounts; printed: calls/s, HTTP
requests/s (``get_quotes`` batches stocks and options separately), and latency p50/p99.

The adapters' per-account rate limiter is switched off here (``limiter=False``): with
it on, each account is held to Alpaca's budget (~3 requests/s sustained) and the
figure would measure the budget, not the adapter. Everything else is as in production:
one shared aiohttp session, timeouts, retries, alpaca-py model parsing, Decimal
conversion. By default the simulator shares this process and event loop, so its CPU
time is inside the figures (a lower bound for the adapter alone); ``--external-sim``
runs the simulator in a process of its own. No assertion: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from syncd.brokers.alpaca import AlpacaBroker
from syncd.settings import AccountSettings
from syncd.sim import SimConfig, start_simulator
from tests.bench.common import account_from_sim, free_port, quantile, sim_accounts, wait_serving

_SIM_SCRIPT = """
import asyncio, sys
from syncd.sim import SimConfig, start_simulator

async def serve() -> None:
    port, accounts, positions = (int(x) for x in sys.argv[1:4])
    await start_simulator(SimConfig(seed=1, port=port, accounts=accounts, positions_per_account=positions))
    await asyncio.Event().wait()

asyncio.run(serve())
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=50)
    p.add_argument("--positions", type=int, default=100)
    p.add_argument("--concurrency", default="1,8,32,128", help="comma-separated worker counts")
    p.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    p.add_argument("--external-sim", action="store_true", help="run the simulator in its own process")
    return p.parse_args()


@asynccontextmanager
async def simulator(args: argparse.Namespace) -> AsyncIterator[list[AccountSettings]]:
    if not args.external_sim:
        sim = await start_simulator(SimConfig(seed=1, accounts=args.accounts, positions_per_account=args.positions))
        try:
            yield [sim.account_settings(i) for i in range(args.accounts)]
        finally:
            await sim.stop()
        return
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIM_SCRIPT, str(port), str(args.accounts), str(args.positions)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_serving(http, url, timeout=20)
            accounts = await sim_accounts(http, url, args.accounts)
        stream_url = url.replace("http", "ws") + "/stream"
        yield [account_from_sim(url, a, "alpaca", f"bench-{i}", stream_url=stream_url) for i, a in enumerate(accounts)]
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


async def measure(
    brokers: list[AlpacaBroker], op: Callable[[AlpacaBroker], Awaitable[Any]], workers: int, seconds: float
) -> tuple[int, int, list[float]]:
    latencies: list[float] = []
    requests_before = sum(b.request_count for b in brokers)
    stop_at = time.perf_counter() + seconds
    counter = 0

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < stop_at:
            broker = brokers[counter % len(brokers)]
            counter += 1
            t0 = time.perf_counter()
            await op(broker)
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return len(latencies), sum(b.request_count for b in brokers) - requests_before, latencies


async def main() -> None:
    args = parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    async with simulator(args) as settings:
        connector = aiohttp.TCPConnector(limit=max(levels) * 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            brokers = [AlpacaBroker(s, session=session, timeout_s=30, limiter=False) for s in settings]
            symbols: dict[str, list[str]] = {}
            for b in brokers:  # set-up, not timed: each account's symbols for get_quotes
                symbols[b.account.name] = [p.symbol for p in await b.list_positions()]

            ops: dict[str, Callable[[AlpacaBroker], Awaitable[Any]]] = {
                "list_positions": lambda b: b.list_positions(),
                "get_account": lambda b: b.get_account(),
                "get_quotes": lambda b: b.get_quotes(symbols[b.account.name]),
            }
            where = "separate process" if args.external_sim else "same process and loop"
            print(
                f"Alpaca adapter vs simulator ({where}): {len(brokers)} accounts x {args.positions} positions, "
                f"{args.seconds:g}s per measurement, python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
            )
            print(f"{'operation':<16}{'workers':>8}{'calls/s':>10}{'HTTP req/s':>12}{'p50 ms':>9}{'p99 ms':>9}")
            for name, op in ops.items():
                await measure(brokers, op, 4, 0.2)  # warm-up: connections, caches
                for workers in levels:
                    calls, requests, lat = await measure(brokers, op, workers, args.seconds)
                    lat.sort()
                    p50 = statistics.median(lat) * 1000 if lat else 0.0
                    p99 = quantile(lat, 0.99) * 1000
                    print(
                        f"{name:<16}{workers:>8}{calls / args.seconds:>10.0f}{requests / args.seconds:>12.0f}"
                        f"{p50:>9.1f}{p99:>9.1f}"
                    )


if __name__ == "__main__":
    asyncio.run(main())
