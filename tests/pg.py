"""Where the tests' PostgreSQL is, and database create/clone/drop on it.

Order: ``$SYNCD_TEST_DSN``; else the machine's server at 127.0.0.1:5432 (user
postgres); else an embedded server started with pgserver under a temp dir.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import tempfile
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

T = TypeVar("T")
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread.

    Sync fixtures use this so they never disturb the event loop pytest-asyncio runs tests on.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def with_database(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


async def _reachable(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


class EmbeddedServer:
    """pgserver, for machines with no PostgreSQL listening."""

    def __init__(self) -> None:
        from pgserver.postgres_server import get_server  # the package re-exports it without __all__

        self._dir = tempfile.TemporaryDirectory(prefix="syncd-test-pg-")
        self._server = get_server(self._dir.name, cleanup_mode="stop")
        self.dsn: str = self._server.get_uri()

    def stop(self) -> None:
        self._server.cleanup()
        self._dir.cleanup()


def find_admin_dsn() -> tuple[str, EmbeddedServer | None]:
    """A DSN for administrative work (CREATE/DROP DATABASE), and the embedded server if one was started."""
    explicit = os.environ.get("SYNCD_TEST_DSN")
    if explicit:
        return explicit, None
    if run_sync(_reachable(LOCAL_DSN)):
        return LOCAL_DSN, None
    server = EmbeddedServer()
    return server.dsn, server


_OURS = re.compile(r"^syncd_test(?:_tpl|_empty)?_(\d+)_[0-9a-f]{8}$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def drop_stale_databases(admin_dsn: str) -> list[str]:
    """Drop test databases left by test runs on this machine that were killed before their teardown.

    Names carry the creating process's pid; only those whose process is gone are dropped.
    """
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'syncd_test%'")
        names = [r["datname"] for r in rows]
        stale = [n for n in names if (m := _OURS.match(n)) and not _pid_alive(int(m.group(1)))]
        for name in stale:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    return stale


async def create_database(admin_dsn: str, name: str, template: str | None = None) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
