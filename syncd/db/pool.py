"""asyncpg connections whose ``search_path`` is syncd's schema, so no query names it."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from syncd.settings import DatabaseSettings

APPLICATION_NAME = "syncd"


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    """jsonb/json in and out as Python objects."""
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _server_settings(schema: str) -> dict[str, str]:
    return {"search_path": schema, "application_name": APPLICATION_NAME, "timezone": "UTC"}


async def create_pool(db: DatabaseSettings, *, max_size: int | None = None) -> asyncpg.Pool[Any]:
    """The process's pool. Every connection has ``search_path`` set to ``db.schema_``."""
    pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
        db.url,
        min_size=min(db.pool_min, max_size or db.pool_max),
        max_size=max_size or db.pool_max,
        timeout=db.connect_timeout_s,
        command_timeout=60,
        server_settings=_server_settings(db.schema_),
        init=_init_connection,
    )
    return pool


async def connect(db: DatabaseSettings) -> asyncpg.Connection[Any]:
    """One dedicated connection (migrations, LISTEN, session advisory locks)."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        db.url, timeout=db.connect_timeout_s, server_settings=_server_settings(db.schema_)
    )
    await _init_connection(conn)
    return conn
