"""Apply ``sql/NNNN_name.sql`` in order, each in its own transaction, under an advisory lock.

Two processes migrating at once serialise on ``pg_advisory_lock``: the second waits,
then finds nothing pending. Applied versions are recorded in ``schema_migrations``
with a checksum; a changed file that was already applied is reported, never re-run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from syncd.db.locks import MIGRATE_LOCK_CLASS
from syncd.db.pool import connect
from syncd.db.queries import sql_dir
from syncd.settings import DatabaseSettings

log = structlog.get_logger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or sql_dir()
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations share version {version}: {found[version].path.name}, {path.name}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL DEFAULT '',
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def _applied(conn: asyncpg.Connection[Any]) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def current_version(conn: asyncpg.Connection[Any]) -> int:
    """The highest applied version on this connection's schema (0 when none)."""
    applied = await _applied(conn)
    return max(applied, default=0)


async def pending_migrations(conn: asyncpg.Connection[Any]) -> list[Migration]:
    applied = await _applied(conn)
    return [m for m in discover() if m.version not in applied]


async def apply_migrations(db: DatabaseSettings) -> list[Migration]:
    """Bring ``db.schema_`` up to date; return what was applied (empty when current)."""
    conn = await connect(db)
    try:
        await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", MIGRATE_LOCK_CLASS, db.schema_)
        try:
            return await _apply_locked(conn, db.schema_)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", MIGRATE_LOCK_CLASS, db.schema_)
    finally:
        await conn.close()


async def _apply_locked(conn: asyncpg.Connection[Any], schema: str) -> list[Migration]:
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')  # schema is validated [a-z_][a-z0-9_]*
    await conn.execute(_CREATE_LEDGER)
    applied = await _applied(conn)
    done: list[Migration] = []
    for migration in discover():
        if migration.version in applied:
            if applied[migration.version] not in ("", migration.checksum):
                log.warning("migration_changed_after_apply", version=migration.version, name=migration.name)
            continue
        async with conn.transaction():
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"{migration.path.name}: {exc}") from exc
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        log.info("migration_applied", version=migration.version, name=migration.name, schema=schema)
        done.append(migration)
    return done
