"""What the benchmark scripts share: a scratch database, a simulator in another process, figures.

Set-up helpers only: nothing here is timed.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from pydantic import SecretStr

from syncd.db import apply_migrations
from syncd.settings import AccountSettings, DatabaseSettings
from tests.pg import create_database, drop_database, find_admin_dsn, with_database


@asynccontextmanager
async def scratch_database(prefix: str, *, keep: bool = False) -> AsyncIterator[str]:
    """A new database ``<prefix>_<random>`` on the test Postgres (``$SYNCD_TEST_DSN`` or 127.0.0.1:5432,
    else an embedded one), every migration applied; its DSN. Dropped afterwards unless ``keep``
    (then its name is printed)."""
    admin, server = find_admin_dsn()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await create_database(admin, name)
    try:
        dsn = with_database(admin, name)
        await apply_migrations(DatabaseSettings(dsn=dsn))
        yield dsn
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            await drop_database(admin, name)
        if server is not None:
            server.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (for a simulator started in another process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_serving(
    http: aiohttp.ClientSession, url: str, *, timeout: float = 30, check: Callable[[], None] | None = None
) -> None:
    """Poll a simulator's ``/_sim/state`` until it answers 200 (a deadline, never a fixed sleep).

    ``check()`` runs after each refused connection and raises if the simulator's process died.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with http.get(f"{url}/_sim/state") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            if check is not None:
                check()
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def sim_accounts(http: aiohttp.ClientSession, url: str, n: int, page: int = 500) -> list[dict[str, Any]]:
    """The credentials of a simulator's first ``n`` accounts, from ``/_sim/accounts`` page by page."""
    creds: list[dict[str, Any]] = []
    while len(creds) < n:
        params = {"offset": str(len(creds)), "limit": str(min(page, n - len(creds)))}
        async with http.get(f"{url}/_sim/accounts", params=params) as r:
            got: list[dict[str, Any]] = await r.json()
        if not got:
            break
        creds += got
    return creds


def account_from_sim(
    url: str, creds: dict[str, Any], broker: str, name: str, *, stream_url: str | None = None
) -> AccountSettings:
    """``AccountSettings`` of a simulator account (one ``/_sim/accounts`` entry) in ``broker``'s dialect."""
    if broker == "alpaca":
        return AccountSettings(
            name=name,
            broker="alpaca",
            api_key=SecretStr(creds["alpaca_key"]),
            api_secret=SecretStr(creds["alpaca_secret"]),
            base_url=url,
            data_url=url,
            stream_url=stream_url,
        )
    return AccountSettings(
        name=name,
        broker="tradier",
        account_id=creds["tradier_account_id"],
        token=SecretStr(creds["tradier_token"]),
        base_url=url,
    )


def quantile(ordered: Sequence[float], q: float) -> float:
    """The value at rank ``int(n * q)`` of sorted ``ordered`` (the last one for q = 1); 0.0 when empty."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]
