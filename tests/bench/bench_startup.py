"""Benchmark: how long ``syncd`` takes to start (issue 14: ``--help`` instant, start-up <= 0.3 s).

    python -m tests.bench.bench_startup [--runs 11]

Each figure is one whole command in a fresh process (``.venv/bin/syncd``, as an operator
runs it), timed from spawn to exit; printed: the median and the fastest of ``--runs`` runs,
wall and the child's CPU (user + system), so a busy machine shows as wall above CPU:

* ``python -c pass``: the interpreter alone, the floor under everything;
* ``syncd --help`` and ``syncd sync-once --help``;
* ``syncd config check`` (settings and logging only);
* ``syncd sync-once`` with no accounts (start-up): settings, logging, a connection and the
  migrations check against a scratch database whose migrations are already applied.

Set-up (not timed): the scratch database on the test Postgres and a config file naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from syncd.logs import configure_logging
from syncd.settings import LogSettings
from tests.bench.common import scratch_database

TARGET_S = 0.3  # issue 14: sync-once with no accounts
NO_ACCOUNTS = "syncd sync-once (no accounts)"


def syncd_command() -> list[str]:
    """The console script beside this interpreter (``.venv/bin/syncd``), else ``python -m syncd``."""
    script = Path(sys.executable).with_name("syncd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "syncd"]


def measure(argv: list[str], runs: int) -> tuple[list[float], list[float]]:
    """Wall and child CPU seconds of ``runs`` runs of ``argv`` (each must exit 0)."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        walls.append(wall)
        cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return walls, cpus


def line(label: str, walls: list[float], cpus: list[float], note: str = "") -> str:
    return (
        f"  {label:<34} median {statistics.median(walls):6.3f} s (cpu {statistics.median(cpus):5.3f} s)"
        f"   fastest {min(walls):6.3f} s{note}"
    )


Times = dict[str, tuple[list[float], list[float]]]  # label -> (walls, CPUs)


async def startup_times(syncd: list[str], runs: int, *, show: bool = True) -> Times:
    """Wall and CPU seconds of each start-up case (``runs`` runs each), by label; printed as measured."""
    out: Times = {}
    async with scratch_database("bench_startup") as dsn:
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "syncd.toml"
            config.write_text(f'[database]\ndsn = "{dsn}"\n', encoding="utf-8")
            env_note = f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
            if show:
                print(f"start-up, {runs} runs each ({env_note}); command: {' '.join(syncd)}")
            cases: list[tuple[str, list[str]]] = [
                ("python -c pass", [sys.executable, "-c", "pass"]),
                ("syncd --help", [*syncd, "--help"]),
                ("syncd sync-once --help", [*syncd, "sync-once", "--help"]),
                ("syncd config check", [*syncd, "--config", str(config), "config", "check"]),
                (NO_ACCOUNTS, [*syncd, "--config", str(config), "sync-once"]),
            ]
            for label, argv in cases:
                # run in a thread: the scratch database's event loop stays responsive
                walls, cpus = await asyncio.to_thread(measure, argv, runs)
                out[label] = (walls, cpus)
                note = ""
                if label == NO_ACCOUNTS:
                    median = statistics.median(walls)
                    note = f"   target {TARGET_S} s: {median / TARGET_S:.2f}x"
                if show:
                    print(line(label, walls, cpus, note), flush=True)
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=11)
    p.add_argument("--syncd", help="the syncd command to time (default: the one beside this interpreter)")
    args = p.parse_args()
    configure_logging(LogSettings(level="warning"))
    await startup_times(args.syncd.split() if args.syncd else syncd_command(), args.runs)


if __name__ == "__main__":
    asyncio.run(main())
