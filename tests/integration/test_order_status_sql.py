"""The Python and SQL definitions of a working order agree, status by status.

Python: ``OrderStatus.is_terminal`` (``_TERMINAL`` in syncd/brokers/types.py), which
``syncd.trading.reconcile.is_working`` negates. SQL: ``order_is_working(status)`` (sql/0006), used by
the views, the partial indexes and the named queries.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from syncd.brokers.types import OrderStatus
from syncd.trading.reconcile import is_working


async def test_sql_order_is_working_matches_python(db_pool: asyncpg.Pool[Any]) -> None:
    rows = await db_pool.fetch(
        "SELECT s, order_is_working(s) AS working FROM unnest($1::text[]) AS s", [s.value for s in OrderStatus]
    )
    sql = {r["s"]: r["working"] for r in rows}
    python = {s.value: is_working(s) for s in OrderStatus}
    assert sql == python
    assert all(is_working(s) is not s.is_terminal for s in OrderStatus)


async def test_orders_accept_every_status_and_nothing_else(db_pool: asyncpg.Pool[Any]) -> None:
    """The orders.status CHECK constraint is OrderStatus's vocabulary, no more and no less."""
    account_id = await db_pool.fetchval("INSERT INTO accounts (name, broker) VALUES ('st', 'alpaca') RETURNING id")
    await db_pool.execute(
        "INSERT INTO orders (account_id, broker_order_id, status) SELECT $1, s, s FROM unnest($2::text[]) AS s",
        account_id,
        [s.value for s in OrderStatus],
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await db_pool.execute(
            "INSERT INTO orders (account_id, broker_order_id, status) VALUES ($1, 'x', 'open')", account_id
        )
