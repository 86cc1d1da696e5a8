"""Benchmark: how fast ``syncd sim`` starts and serves a 1,000 x 100 book.

    python -m tests.bench.bench_sim [--accounts 1000] [--positions 100]
        [--concurrency 1,16,64] [--seconds 2]

Starts the real command (``python -m syncd sim --port 0``) as a subprocess and
prints: the time until it printed its URL (process start and imports included),
the time an in-process ``start_simulator`` takes, then requests/s and latency
p50/p99 from raw aiohttp clients in this process for:

- a cold pass: ``GET /v2/positions`` once per account (each builds that account's
  100-position book on first use),
- warm ``GET /v2/positions`` and Tradier ``GET /v1/accounts/{id}/positions`` spread
  round-robin over every account,
- ``GET /v2/account`` (valuation of the whole book plus buying power),
- ``GET /v1beta1/options/snapshots`` of 100 option symbols (greeks included).

No assertion: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from syncd.sim import SimConfig, start_simulator
from tests.bench.common import quantile


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--positions", type=int, default=100)
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated worker counts")
    p.add_argument("--seconds", type=float, default=2.0, help="duration of each warm measurement")
    return p.parse_args()


def start_cli(accounts: int, positions: int) -> tuple[subprocess.Popen[str], str, float]:
    cmd = [sys.executable, "-m", "syncd", "sim", "--port", "0", "--tick-s", "0"]
    cmd += ["--accounts", str(accounts), "--positions", str(positions), "--show", "0"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - t0
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"syncd sim did not start: {line!r}")
    url = line.split("listening on ", 1)[1].split()[0]
    return proc, url, elapsed


def report(name: str, latencies: list[float], seconds: float) -> None:
    if not latencies:
        print(f"  {name:<44} no requests")
        return
    ordered = sorted(latencies)
    p99 = quantile(ordered, 0.99)
    print(
        f"  {name:<44} {len(latencies) / seconds:>8.0f} req/s   p50 {statistics.median(ordered) * 1000:6.2f} ms"
        f"   p99 {p99 * 1000:6.2f} ms   ({len(latencies)} requests)"
    )


async def timed_get(http: aiohttp.ClientSession, url: str, headers: dict[str, str], sink: list[float]) -> None:
    t = time.perf_counter()
    async with http.get(url, headers=headers) as r:
        await r.read()
        if r.status != 200:
            raise SystemExit(f"{url}: HTTP {r.status}")
    sink.append(time.perf_counter() - t)


async def run_for(
    seconds: float, workers: int, next_request: Callable[[], tuple[str, dict[str, str]]], http: aiohttp.ClientSession
) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            url, headers = next_request()
            await timed_get(http, url, headers, latencies)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return latencies


async def bench(args: argparse.Namespace, url: str) -> None:
    concurrency = [int(c) for c in args.concurrency.split(",")]
    connector = aiohttp.TCPConnector(limit=max(concurrency))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(f"{url}/_sim/accounts", params={"limit": str(args.accounts)}) as r:
            accounts: list[dict[str, Any]] = await r.json()
        alpaca = [
            (f"{url}/v2/positions", {"APCA-API-KEY-ID": a["alpaca_key"], "APCA-API-SECRET-KEY": a["alpaca_secret"]})
            for a in accounts
        ]

        cold: list[float] = []
        t0 = time.perf_counter()
        queue = iter(alpaca)

        async def cold_worker() -> None:
            for u, h in queue:
                await timed_get(http, u, h, cold)

        await asyncio.gather(*(cold_worker() for _ in range(16)))
        print(f"cold pass, 16 workers (builds {len(accounts)} books of {args.positions} positions):")
        report("GET /v2/positions (first use)", cold, time.perf_counter() - t0)

        tradier = [
            (
                f"{url}/v1/accounts/{a['tradier_account_id']}/positions",
                {"Authorization": f"Bearer {a['tradier_token']}", "Accept": "application/json"},
            )
            for a in accounts
        ]
        account = [(f"{url}/v2/account", h) for _, h in alpaca]
        async with http.get(f"{url}/_sim/accounts/0") as r:
            book = await r.json()
        options = [p["symbol"] for p in book["positions"] if len(p["symbol"]) > 10]
        snapshots = [(f"{url}/v1beta1/options/snapshots?symbols={','.join(options[:100])}", alpaca[0][1])]
        cases = [
            ("GET /v2/positions", alpaca),
            ("GET /v1/accounts/{id}/positions (Tradier)", tradier),
            ("GET /v2/account", account),
            (f"GET /v1beta1/options/snapshots ({len(options[:100])} symbols)", snapshots),
        ]
        for workers in concurrency:
            print(f"warm, {workers} concurrent clients, {args.seconds:.0f} s each:")
            for name, requests in cases:
                cycle = itertools.cycle(requests)
                latencies = await run_for(args.seconds, workers, cycle.__next__, http)
                report(name, latencies, args.seconds)


async def in_process_start(accounts: int, positions: int) -> None:
    t0 = time.perf_counter()
    sim = await start_simulator(SimConfig(seed=1, accounts=accounts, positions_per_account=positions))
    started = time.perf_counter() - t0
    t1 = time.perf_counter()
    for acct in sim.accounts:
        _ = acct.positions
    built = time.perf_counter() - t1
    await sim.stop()
    print(f"in-process start_simulator: {started * 1000:.1f} ms; building every book: {built:.2f} s")


def main() -> None:
    args = parse_args()
    print(f"syncd sim bench: {args.accounts} accounts x {args.positions} positions")
    proc, url, startup = start_cli(args.accounts, args.positions)
    try:
        print(f"`syncd sim` startup (spawn to URL printed): {startup:.2f} s")
        asyncio.run(in_process_start(args.accounts, args.positions))
        asyncio.run(bench(args, url))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
