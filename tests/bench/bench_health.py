"""Benchmark: the health listener of a real ``syncd run`` under a request storm and a half-open storm.

    python -m tests.bench.bench_health [--accounts 1000] [--requests 2000] [--half-open 3000]
        [--hold-s 8] [--heartbeat-s 2]

Set-up (not timed): a scratch database on the test Postgres (``$SYNCD_TEST_DSN`` or
127.0.0.1:5432) with every migration; ``syncd sim`` with ``--accounts`` accounts (3 positions
each) in a process of its own; ``syncd run`` in another process over all of them (Alpaca
dialect, every cadence 5 s, leases renewed every ``--heartbeat-s`` so a starved event loop
loses them), logging at warning. The bench waits until /healthz has judged every account.

Then, from this process (which shares the machine's cores with the daemon: the figures are
what a noisy neighbour costs, not a clean-room latency):

1. ``storm``: ``--requests`` concurrent ``GET /healthz`` at once (one connection each);
2. ``half-open``: ``--half-open`` connections that send half a request head and nothing
   more, held ``--hold-s`` seconds while one probe ``GET /healthz`` runs every 0.25 s.

Printed per phase: answered 200 / 503 / other errors, latency p50/p99/max; for the half-open
phase, how many of those connections the daemon closed within the hold and the probes'
answers. At the end: account passes that failed during the storms (``sync_runs``, by error
class: PassAborted, LeaseLost, PassTimeout, other), leases lost (``syncd_lease_changes_total``),
and the daemon's RSS before, at the peak of the half-open phase, and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg

from syncd.cli.demo_stack import config_toml
from syncd.settings import Settings
from tests.bench.common import account_from_sim, free_port, quantile, scratch_database, sim_accounts, wait_serving

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--requests", type=int, default=2000, help="concurrent GET /healthz")
    p.add_argument("--half-open", type=int, default=3000, help="connections that never finish their request")
    p.add_argument("--hold-s", type=float, default=8.0, help="how long the half-open connections are held")
    p.add_argument("--heartbeat-s", type=float, default=2.0, help="cycles.lease_heartbeat_s (TTL is 3x)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where the config and logs go")
    return p.parse_args()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def spawn(*args: str, stderr: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    with stderr.open("wb") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "syncd", *args, stdout=asyncio.subprocess.DEVNULL, stderr=err, cwd=REPO, env=env
        )


async def healthz(host: str, port: int) -> tuple[int | str, float, bytes]:
    """One ``GET /healthz`` over a raw connection (a light client: the bench shares the cores):
    (HTTP status or the error's class name, seconds, the first bytes of the body)."""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(30):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            answer = await reader.read()  # the daemon closes after each answer
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), time.perf_counter() - t0, body
    except (OSError, TimeoutError, ValueError, IndexError) as exc:
        return type(exc).__name__, time.perf_counter() - t0, b""


async def wait_judged(http: aiohttp.ClientSession, url: str, accounts: int, proc: asyncio.subprocess.Process) -> None:
    """Until /healthz has an outcome for every account in every task (a deadline, not a sleep)."""
    deadline = time.monotonic() + 300
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"syncd run exited with {proc.returncode}")
        try:
            async with http.get(url + "/healthz") as resp:
                body = await resp.json()
            tasks = body.get("tasks") or {}
            if len(tasks) == 3 and all(
                len(t["accounts"]) == accounts
                and all(a["last_ok_at"] or a["last_error"] for a in t["accounts"].values())
                for t in tasks.values()
            ):
                return
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the daemon did not judge every account within 300 s")
        await asyncio.sleep(0.5)


def _why(body: bytes) -> str:
    """What a 503 said: the listener shed the connection, or the verdict's first reason."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return "not JSON"
    if "error" in parsed and "status" not in parsed:
        return str(parsed["error"])
    reasons = parsed.get("reasons") or ["unhealthy"]
    return str(reasons[0])


def show(name: str, results: list[tuple[int | str, float, bytes]]) -> None:
    counts = Counter(str(code) for code, _, _ in results)
    lat = sorted(t for code, t, _ in results if code == 200)
    errors = {k: v for k, v in counts.items() if k not in ("200", "503")}
    why = Counter(_why(body) for code, _, body in results if code == 503)
    print(
        f"{name:<10} {len(results):>6} sent  {counts.get('200', 0):>6} answered 200  {counts.get('503', 0):>5} 503"
        f"{' ' + str(dict(why)) if why else ''}  {sum(errors.values()):>5} errors{' ' + str(errors) if errors else ''}"
    )
    if lat:
        size = max(len(body) for code, _, body in results if code == 200)
        print(
            f"{'':<10} latency of the 200s: p50 {quantile(lat, 0.5) * 1000:.1f} ms  "
            f"p99 {quantile(lat, 0.99) * 1000:.1f} ms  max {lat[-1] * 1000:.1f} ms  (body {size / 1024:.0f} KiB)"
        )


async def metric(http: aiohttp.ClientSession, url: str, sample: str) -> float:
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


async def half_open(host: str, port: int, n: int) -> list[asyncio.StreamReader]:
    """``n`` connections that send half a request head and then nothing."""
    readers: list[asyncio.StreamReader] = []

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line that ends it
        readers.append(reader)

    for i in range(0, n, 500):
        await asyncio.gather(*(one() for _ in range(min(500, n - i))))
    return readers


async def closed_count(readers: list[asyncio.StreamReader]) -> int:
    async def closed(r: asyncio.StreamReader) -> bool:
        try:
            async with asyncio.timeout(0.01):
                await r.read(65536)
        except TimeoutError:
            return False
        except OSError:
            return True
        return r.at_eof()

    return sum(await asyncio.gather(*(closed(r) for r in readers)))


async def main() -> None:
    args = parse_args()
    work = args.workdir / f"bench_health_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    sim_port, health_port = free_port(), free_port()
    sim_url, health_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{health_port}"
    async with scratch_database("bench_health") as dsn:
        sim = await spawn(
            "sim", "--port", str(sim_port), "--accounts", str(args.accounts), "--positions", "3", "--show", "0",
            stderr=work / "sim.stderr",
        )  # fmt: skip
        daemon: asyncio.subprocess.Process | None = None
        timeout = aiohttp.ClientTimeout(total=30)
        try:
            async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
                await wait_serving(http, sim_url, timeout=60)
                creds = await sim_accounts(http, sim_url, args.accounts)
                accounts = [account_from_sim(sim_url, c, "alpaca", f"b{i:04d}") for i, c in enumerate(creds)]
                settings = Settings(
                    database={"dsn": dsn, "pool_max": 10},
                    cycles={
                        "account_interval_s": 5,
                        "trade_interval_s": 5,
                        "monitor_interval_s": 5,
                        "closed_market_interval_s": 5,
                        "lease_heartbeat_s": args.heartbeat_s,
                        "concurrency": 100,
                        "stream": False,
                    },
                    health={"listen": f"127.0.0.1:{health_port}", "stale_after_s": 60, "instance": "bench"},
                    log={"format": "json", "level": "warning"},
                    accounts=accounts,
                )
                config = work / "syncd.toml"
                config.write_text(config_toml(settings), encoding="utf-8")
                daemon = await spawn("--config", str(config), "run", stderr=work / "daemon.stderr")
                t0 = time.monotonic()
                await wait_judged(http, health_url, args.accounts, daemon)
                print(
                    f"syncd run over {args.accounts} accounts judged by /healthz after {time.monotonic() - t0:.1f} s "
                    f"(lease heartbeat {args.heartbeat_s:g} s, TTL {3 * args.heartbeat_s:g} s)"
                )
                rss_before = rss_mb(daemon.pid)
                lost_before = await metric(http, health_url, 'syncd_lease_changes_total{change="lost"}')
                conn = await asyncpg.connect(dsn, server_settings={"search_path": "syncd"})
                storm_from = await conn.fetchval("SELECT now()")

                # 1. the request storm
                t0 = time.perf_counter()
                storm = (healthz("127.0.0.1", health_port) for _ in range(args.requests))
                results = list(await asyncio.gather(*storm))
                wall = time.perf_counter() - t0
                show("storm", results)
                print(f"{'':<10} all {args.requests} done in {wall:.2f} s")

                # 2. half-open connections, held, with a probe every 0.25 s
                t0 = time.monotonic()
                readers = await half_open("127.0.0.1", health_port, args.half_open)
                opened = len(readers)
                rss_peak = rss_mb(daemon.pid)
                probes: list[tuple[int | str, float, bytes]] = []
                while time.monotonic() - t0 < args.hold_s:
                    probes.append(await healthz("127.0.0.1", health_port))
                    rss_peak = max(rss_peak, rss_mb(daemon.pid))
                    await asyncio.sleep(0.25)
                closed = await closed_count(readers)
                show("half-open", probes)
                print(
                    f"{'':<10} {opened} half-open connections opened; {closed} closed by the daemon "
                    f"within {args.hold_s:g} s"
                )
                for r in readers:
                    r.feed_eof()
                del readers

                # after: what the storms cost the daemon's work
                await asyncio.sleep(10)  # let the passes in flight during the storms record their outcome
                rows = await conn.fetch(
                    "SELECT split_part(error, ':', 1) AS kind, count(*) FROM sync_runs "
                    "WHERE NOT ok AND finished_at >= $1 GROUP BY 1",
                    storm_from,
                )
                passes = await conn.fetchval("SELECT count(*) FROM sync_runs WHERE finished_at >= $1", storm_from)
                await conn.close()
                lost = await metric(http, health_url, 'syncd_lease_changes_total{change="lost"}') - lost_before
                failed = {r["kind"]: r["count"] for r in rows}
                print(
                    f"during the storms: {passes} account passes, failed {sum(failed.values())} "
                    f"{json.dumps(failed) if failed else ''}; leases lost {lost:g}"
                )
                print(
                    f"daemon RSS: before {rss_before:.0f} MB, peak {rss_peak:.0f} MB, after {rss_mb(daemon.pid):.0f} MB"
                )
        finally:
            for proc in (daemon, sim):
                if proc is not None and proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(proc.wait(), 30)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
