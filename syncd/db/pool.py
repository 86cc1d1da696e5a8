"""asyncpg connections whose ``search_path`` is syncd's schema, so no query names it."""

from __future__ import annotations

import json
import weakref
from typing import Any

import asyncpg

from syncd.settings import DatabaseSettings

APPLICATION_NAME = "syncd"


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    """jsonb/json in and out as Python objects."""
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _server_settings(schema: str) -> dict[str, str]:
    """Every connection's session settings.

    ``plan_cache_mode``: each prepared statement is planned once per connection (its generic plan)
    instead of five custom plans and then, nearly always, the same generic one. syncd's statements
    filter on an account id and join arrays it sends; their generic plans are what the default mode
    settles on after five executions, and the views behind monitorCycle cost several milliseconds
    of planning each time (a fresh ``syncd sync-once`` planned every statement six times per
    connection).
    """
    return {
        "search_path": schema,
        "application_name": APPLICATION_NAME,
        "timezone": "UTC",
        "plan_cache_mode": "force_generic_plan",
    }


# Pooled connections that took session state (a session advisory lock): their release resets them
# in full. Every other release skips asyncpg's reset query (a round trip per release: advisory
# unlock, CLOSE ALL, UNLISTEN, RESET ALL) -- syncd sets no session variable, opens no cursor and
# LISTENs only on dedicated connections; asyncpg still rolls back an open transaction first.
_SESSION_STATE: weakref.WeakSet[asyncpg.Connection[Any]] = weakref.WeakSet()


def keeps_session_state(conn: Any) -> None:
    """Mark a pooled connection (or its pool proxy) as holding session state: its release resets it in full."""
    _SESSION_STATE.add(getattr(conn, "_con", None) or conn)  # a pool's proxy holds its connection in _con


async def _reset_connection(conn: asyncpg.Connection[Any]) -> None:
    """On release, after asyncpg rolled back any open transaction: the full reset where it is needed."""
    if conn in _SESSION_STATE:
        _SESSION_STATE.discard(conn)
        await conn.reset()


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
        reset=_reset_connection,
    )
    return pool


async def connect(db: DatabaseSettings) -> asyncpg.Connection[Any]:
    """One dedicated connection (migrations, LISTEN, session advisory locks)."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        db.url, timeout=db.connect_timeout_s, server_settings=_server_settings(db.schema_)
    )
    await _init_connection(conn)
    return conn
