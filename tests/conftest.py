"""Real PostgreSQL for every test that needs one.

One session-scoped template database is migrated once; each test gets its own
clone (``CREATE DATABASE … TEMPLATE``), dropped ``WITH (FORCE)`` afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from syncd.db import apply_migrations, create_pool
from syncd.settings import DatabaseSettings
from tests.pg import (
    EmbeddedServer,
    create_database,
    drop_database,
    drop_stale_databases,
    find_admin_dsn,
    run_sync,
    with_database,
)


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    dsn, server = find_admin_dsn()
    if not os.environ.get("SYNCD_TEST_DSN"):  # pids in names mean something only on this machine
        run_sync(drop_stale_databases(dsn))
    yield dsn
    if isinstance(server, EmbeddedServer):
        server.stop()


def _unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> Iterator[str]:
    """A database with every migration applied to schema ``syncd``; cloned per test."""
    name = _unique("syncd_test_tpl")
    run_sync(create_database(pg_admin_dsn, name))
    run_sync(apply_migrations(DatabaseSettings(dsn=with_database(pg_admin_dsn, name))))
    yield name
    run_sync(drop_database(pg_admin_dsn, name))


@pytest.fixture
def dsn(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = _unique("syncd_test")
    run_sync(create_database(pg_admin_dsn, name, template=template_db))
    yield with_database(pg_admin_dsn, name)
    run_sync(drop_database(pg_admin_dsn, name))


@pytest.fixture
def empty_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh database with nothing in it (for migration tests)."""
    name = _unique("syncd_test_empty")
    run_sync(create_database(pg_admin_dsn, name))
    yield with_database(pg_admin_dsn, name)
    run_sync(drop_database(pg_admin_dsn, name))


@pytest.fixture
def db_settings(dsn: str) -> DatabaseSettings:
    return DatabaseSettings(dsn=dsn)


@pytest.fixture
async def db_pool(db_settings: DatabaseSettings) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await create_pool(db_settings)
    yield pool
    await pool.close()


@pytest.fixture
def make_context(dsn: str) -> Any:
    """Build a ``Context`` on this test's database: ``async with make_context(accounts=[...], trading={...}) as ctx``.

    ``accounts`` is a list of ``AccountSettings`` (e.g. from ``sim.account_settings(i, broker=...)``); any other
    keyword is a settings section given as a dict (``cycles={"concurrency": 4}``).
    """
    from syncd.context import open_context
    from syncd.settings import Settings

    def factory(accounts: list[Any] | None = None, **sections: dict[str, Any]) -> Any:
        database = {"dsn": dsn, **sections.pop("database", {})}
        settings = Settings(database=database, accounts=accounts or [], **sections)
        return open_context(settings, instance="test")

    return factory
