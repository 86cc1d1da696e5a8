"""The real ``syncd run`` as a subprocess, against a simulator in the test's own event loop.

``daemon_factory`` writes a config file (accounts from the simulator, the test's
database, fast cadences, a free health port) and starts ``python -m syncd run``
with stdout and stderr captured to files, so a test can grep them for secrets.
The tests are async: the simulator serves on the same loop while the test polls.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from syncd.settings import AccountSettings
from tests.helpers import wait_for
from tests.simfixtures import sim_fixture

REPO = Path(__file__).resolve().parents[2]
SECRET_KEYS = ("api_key", "api_secret", "token")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def account_toml(acct: AccountSettings) -> dict[str, Any]:
    data: dict[str, Any] = {"name": acct.name, "broker": acct.broker}
    if acct.broker == "alpaca":
        data["paper"] = acct.paper
    else:
        data["sandbox"] = acct.sandbox
        data["account_id"] = acct.account_id
    for key in SECRET_KEYS:
        secret = getattr(acct, key)
        if secret is not None:
            data[key] = secret.get_secret_value()
    for key in ("base_url", "data_url", "stream_url", "data_stream_url", "market_stream_url"):
        if getattr(acct, key):
            data[key] = getattr(acct, key)
    return data


def write_config(path: Path, sections: dict[str, dict[str, Any]], accounts: Sequence[AccountSettings]) -> Path:
    lines: list[str] = []
    for section, body in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in body.items())
        lines.append("")
    for acct in accounts:
        lines.append("[[accounts]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in account_toml(acct).items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def secrets_of(accounts: Sequence[AccountSettings]) -> list[str]:
    return [s for a in accounts for s in a.secret_values()]


def all_visited(body: dict[str, Any]) -> bool:
    """Every task has an outcome (ok or error) for every account in a /healthz body."""
    return all(
        task["last_ok_at"] and all(a["last_ok_at"] or a["last_error"] for a in task["accounts"].values())
        for task in body["tasks"].values()
    )


@dataclass
class Daemon:
    """One ``syncd run`` subprocess."""

    name: str
    config: Path
    health_url: str
    workdir: Path
    proc: asyncio.subprocess.Process | None = None
    runs: int = 0
    outputs: list[tuple[Path, Path]] = field(default_factory=list)

    async def start(self, *extra: str, env: dict[str, str] | None = None) -> Daemon:
        self.runs += 1
        out = self.workdir / f"{self.name}.{self.runs}.stdout"
        err = self.workdir / f"{self.name}.{self.runs}.stderr"
        self.outputs.append((out, err))
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCD_", "NOTIFY_", "WATCHDOG_"))}
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "syncd",
                "--config",
                str(self.config),
                "run",
                *extra,
                stdout=stdout,
                stderr=stderr,
                cwd=REPO,
                env={**base, **(env or {})},
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def healthz(self, timeout: float = 5.0) -> tuple[int, dict[str, Any]] | None:
        """(status, body) of /healthz, or None when the listener does not answer."""
        try:
            client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
            async with client as http, http.get(self.health_url + "/healthz") as resp:
                return resp.status, await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def get(self, path: str) -> tuple[int, str]:
        client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        async with client as http, http.get(self.health_url + path) as resp:
            return resp.status, await resp.text()

    async def wait_status(self, *statuses: str, timeout: float = 30.0, synced: bool = True) -> dict[str, Any]:
        """Poll /healthz until its status is one of ``statuses`` (and, with ``synced``, every task has
        visited every account at least once, so the verdict is about real passes)."""

        async def check() -> dict[str, Any] | None:
            code = self.proc and self.proc.returncode
            assert self.alive(), f"{self.name} exited with {code}: {self.stderr()[-3000:]}"
            got = await self.healthz()
            if got is None or got[1].get("status") not in statuses:
                return None
            if synced and not all_visited(got[1]):
                return None
            return got[1]

        result: dict[str, Any] = await wait_for(check, timeout=timeout, interval=0.2, what=f"{self.name} {statuses}")
        return result

    async def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; the exit status (fails the test if it takes longer than ``timeout``)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    def stderr(self) -> str:
        return "".join(err.read_text(errors="replace") for _, err in self.outputs if err.exists())

    def stdout(self) -> str:
        return "".join(out.read_text(errors="replace") for out, _ in self.outputs if out.exists())

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line of stderr (all runs)."""
        out = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


sim = sim_fixture(seed=11, accounts=4, positions_per_account=5)


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    """``make(accounts, dsn=..., name=..., **sections)`` -> an unstarted ``Daemon`` with its config written."""
    made: list[Daemon] = []

    def make(accounts: Sequence[AccountSettings], *, dsn: str, name: str = "d", **sections: dict[str, Any]) -> Daemon:
        port = free_port()
        merged: dict[str, dict[str, Any]] = {
            "database": {"dsn": dsn, "pool_max": 5},
            "cycles": {
                "account_interval_s": 1,
                "trade_interval_s": 1,
                "monitor_interval_s": 1,
                "closed_market_interval_s": 5,
                "lease_heartbeat_s": 0.5,
                "jitter_pct": 0,
                "broker_timeout_s": 3,
                "shutdown_timeout_s": 5,
            },
            "trading": {"enabled": True},
            "health": {"listen": f"127.0.0.1:{port}", "stale_after_s": 30, "instance": name},
            "log": {"format": "json", "level": "info"},
        }
        for section, body in sections.items():
            merged.setdefault(section, {}).update(body)
        config = write_config(tmp_path / f"{name}.toml", merged, accounts)
        daemon = Daemon(name, config, f"http://127.0.0.1:{port}", tmp_path)
        made.append(daemon)
        return daemon

    yield make
    for d in made:
        if d.proc is not None and d.proc.returncode is None:
            d.proc.kill()


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "syncd"})
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    rows = await fetch(dsn, sql, *args)
    return rows[0][0] if rows else None


async def run_cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """``python -m syncd ARGS``: (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
