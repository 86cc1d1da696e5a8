"""``syncd demo``: zero set-up. Embedded Postgres, the simulator with live prices, and the daemon.

Everything runs in this process (Postgres as pgserver's child process): an
embedded PostgreSQL whose data lives under a state directory (``./.syncd-demo/``
by default), the broker simulator on loopback with three accounts (two speaking
Alpaca's protocol, one Tradier's; stocks, options and a bull call spread) and a
price ticker, and the same supervisor ``syncd run`` uses, with trading enabled:
every account points at the simulator, which is checked before anything starts.
It prints how to ``psql`` in and a few queries; Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import asyncpg
import structlog

from syncd.settings import SECRET_KEYS, AccountSettings, Settings, to_toml
from syncd.sim import SimConfig, Simulator, start_simulator

log = structlog.get_logger(__name__)

DEMO_DATABASE = "syncd"
HEALTH_PORT = 9108


class DemoError(Exception):
    """The demo cannot start (no pgserver, an unusable state directory)."""


def default_state_dir(env: dict[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/syncd`` when that is set, else ``./.syncd-demo``."""
    env = dict(os.environ) if env is None else env
    xdg = env.get("XDG_STATE_HOME")
    return Path(xdg) / "syncd" if xdg else Path(".syncd-demo")


@dataclass(frozen=True, slots=True)
class EmbeddedPostgres:
    admin_dsn: str
    bindir: Path | None

    def dsn(self, database: str) -> str:
        parts = urlsplit(self.admin_dsn)
        return parts._replace(path="/" + database).geturl()


@contextlib.contextmanager
def embedded_postgres(state_dir: Path) -> Iterator[EmbeddedPostgres]:
    """pgserver's PostgreSQL with its data in ``state_dir/pg``; stopped on exit (the data stays)."""
    try:
        from pgserver.postgres_server import get_server
    except ImportError:
        raise DemoError("the demo needs the embedded extra: pip install 'syncd[embedded]' (or: make demo)") from None
    pgdata = (state_dir / "pg").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    bindir: Path | None = None
    with contextlib.suppress(ImportError, AttributeError):
        from pgserver._commands import POSTGRES_BIN_PATH

        bindir = Path(POSTGRES_BIN_PATH)
    try:
        yield EmbeddedPostgres(server.get_uri(), bindir)
    finally:
        server.cleanup()


async def ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')  # name is our constant
    finally:
        await conn.close()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def demo_accounts(sim: Simulator) -> list[AccountSettings]:
    return [
        sim.account_settings(0, "alpaca", name="demo-alpaca-1"),
        sim.account_settings(1, "tradier", name="demo-tradier"),
        sim.account_settings(2, "alpaca", name="demo-alpaca-2"),
    ]


def demo_settings(dsn: str, sim: Simulator, *, listen: str) -> Settings:
    accounts = demo_accounts(sim)
    for acct in accounts:  # trading is enabled: every byte must go to the simulator
        for url in (acct.base_url, acct.data_url, acct.stream_url, acct.data_stream_url, acct.market_stream_url):
            host = urlsplit(url).hostname if url else "127.0.0.1"
            if host not in ("127.0.0.1", "localhost"):
                raise DemoError(f"account {acct.name} does not point at the simulator")
    data: dict[str, Any] = {
        "database": {"dsn": dsn, "pool_max": 8},
        "cycles": {
            "account_interval_s": 5,
            "trade_interval_s": 5,
            "monitor_interval_s": 5,
            "closed_market_interval_s": 30,
            "lease_heartbeat_s": 5,
            "auto_import": True,  # the simulator's positions become trades, so v_trade_monitor has rows
        },
        "trading": {"enabled": True},
        "health": {"listen": listen, "stale_after_s": 60, "instance": "demo"},
        "log": {"format": "console", "level": "info"},
        "accounts": accounts,
    }
    return Settings(**data)


CONFIG_NAME = "syncd.toml"


def config_toml(settings: Settings) -> str:
    """``settings`` as a config file the other commands accept, secrets included (they are the simulator's)."""
    data = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["database"]["dsn"] = settings.database.dsn
    for acct, model in zip(data["accounts"], settings.accounts, strict=True):
        for key in SECRET_KEYS:
            secret = getattr(model, key)
            if secret is not None:
                acct[key] = secret.get_secret_value()
    header = (
        "# Written by `syncd demo` at each start: its database, its simulator (a new port each time)\n"
        "# and the simulator's own credentials. Valid while the demo runs.\n\n"
    )
    return header + to_toml(data)


def write_config(state_dir: Path, settings: Settings) -> Path:
    """``state_dir/syncd.toml``, readable by its owner only (it holds the simulator's secrets)."""
    path = (state_dir / CONFIG_NAME).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(config_toml(settings))
    os.chmod(path, 0o600)
    return path


def syncd_command(argv0: str | None = None, which: Callable[[str], str | None] = shutil.which) -> str:
    """How to run this syncd from another terminal: ``syncd`` when that is on PATH and the same program,
    else the script's absolute path (``make demo`` runs ``.venv/bin/syncd``), else ``python -m syncd``."""
    script = Path(sys.argv[0] if argv0 is None else argv0)
    if script.name != "syncd":
        return f"{shlex.quote(sys.executable)} -m syncd"
    found = which("syncd")
    if found and Path(found).resolve() == script.resolve():
        return "syncd"
    return shlex.quote(str(script.resolve()))


def instructions(
    dsn: str, psql: str, health_url: str, sim_url: str, config: Path | None = None, syncd: str = "syncd"
) -> str:
    """What the demo prints once everything runs."""
    q = f'{psql} "{dsn}"'
    commands = ""
    if config is not None:
        syncd = f"{syncd} --config {shlex.quote(str(config))}"
        commands = f"""
In another terminal (the config the demo wrote: {config}):

  {syncd} status
  {syncd} verify
  {syncd} import-positions
  {syncd} health
"""
    return f"""
syncd demo is running: the daemon, a simulated broker at {sim_url} and PostgreSQL.

  Connect:   {q}
  Health:    curl -s {health_url}/healthz      Metrics: curl -s {health_url}/metrics
{commands}
Try (the schema is syncd; prices move every second, positions sync every 5 s):

  -- 1. what each account holds, priced
  SELECT a.name, p.symbol, p.quantity, p.current_price, p.unrealized_pl
    FROM syncd.portfolio_positions p JOIN syncd.accounts a ON a.id = p.account_id ORDER BY 1, 2;

  -- 2. the spread and other trades as monitoring sees them
  SELECT trade_id, symbol, strategy, quantity, can_exit, floating_pnl FROM syncd.v_trade_monitor;

  -- 3. the daemon's own record: one row per task, account and pass
  SELECT task, a.name, finished_at, ok, error, stats FROM syncd.sync_runs s
    JOIN syncd.accounts a ON a.id = s.account_id ORDER BY s.id DESC LIMIT 10;

  -- and place an order through the outbox (trading is enabled, on the simulator only):
  INSERT INTO syncd.order_requests (account_id, kind, payload)
  SELECT id, 'open', '{{"symbol": "AAPL", "side": "buy", "qty": 10, "type": "market", "strategy": "LONG_STOCK"}}'
    FROM syncd.accounts WHERE name = 'demo-alpaca-1';

Ctrl-C stops everything (the data stays in the state directory for next time).
"""


def _psql(bindir: Path | None) -> str:
    found = shutil.which("psql")
    if found:
        return "psql"
    if bindir is not None and (bindir / "psql").is_file():
        return str(bindir / "psql")
    return "psql"


async def run_demo(state_dir: Path, out: TextIO, *, seed: int = 7) -> None:
    """The whole demo until SIGINT/SIGTERM."""
    from syncd.daemon.supervisor import running

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        pg_cm = embedded_postgres(state_dir)
        pg = await asyncio.to_thread(pg_cm.__enter__)
        try:
            await ensure_database(pg.admin_dsn, DEMO_DATABASE)
            dsn = pg.dsn(DEMO_DATABASE)
            sim = await start_simulator(SimConfig(seed=seed, accounts=3, positions_per_account=6, tick_s=1.0, port=0))
            try:
                listen = f"127.0.0.1:{HEALTH_PORT if _free(HEALTH_PORT) else 0}"
                settings = demo_settings(dsn, sim, listen=listen)
                async with running(settings, stop=stop, instance="demo") as (_sup, server):
                    host, port = server.bound if server and server.bound else ("127.0.0.1", HEALTH_PORT)
                    health_url = f"http://{host}:{port}"
                    if settings.health.listen.endswith(":0"):  # `syncd health` must find the real port
                        settings = settings.model_copy(
                            update={"health": settings.health.model_copy(update={"listen": f"{host}:{port}"})}
                        )
                    config = write_config(state_dir, settings)
                    text = instructions(dsn, _psql(pg.bindir), health_url, sim.url, config, syncd_command())
                    print(text, file=out, flush=True)
                    await stop.wait()
            finally:
                await sim.stop()
        finally:
            await asyncio.to_thread(pg_cm.__exit__, None, None, None)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("demo_stopped")
