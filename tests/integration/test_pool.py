"""The pool's connections work in the configured schema without queries naming it."""

from __future__ import annotations

from syncd.db import apply_migrations, create_pool, load_queries
from syncd.settings import DatabaseSettings


async def test_queries_run_in_a_non_default_schema(empty_dsn: str) -> None:
    db = DatabaseSettings.model_validate({"dsn": empty_dsn, "schema": "tenant_x"})
    await apply_migrations(db)
    pool = await create_pool(db)
    try:
        await pool.execute(
            load_queries()["upsert_accounts"],
            [{"name": "a", "broker": "alpaca", "broker_account_id": None, "paper": True}],
        )
        assert await pool.fetchval("SELECT count(*) FROM tenant_x.accounts") == 1
        assert await pool.fetchval("SHOW search_path") == "tenant_x"
        assert await pool.fetchval("SELECT '{\"k\": [1, 2]}'::jsonb") == {"k": [1, 2]}
    finally:
        await pool.close()


async def test_a_connection_that_took_a_session_lock_is_reset_on_release(dsn: str) -> None:
    """Releases skip asyncpg's reset query, except for a connection marked as holding session state:
    a session advisory lock its holder failed to release is dropped with the release, and an open
    transaction is still rolled back for every connection."""
    from syncd.db.pool import keeps_session_state

    pool = await create_pool(DatabaseSettings(dsn=dsn, pool_min=1, pool_max=1))
    locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 424242"
    try:
        async with pool.acquire() as conn:
            keeps_session_state(conn)
            assert await conn.fetchval("SELECT pg_try_advisory_lock(7, 424242)")
        assert await pool.fetchval(locks) == 0  # the same (only) connection, reset in full
        assert await pool.fetchval("SHOW plan_cache_mode") == "force_generic_plan"  # its settings kept

        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("CREATE TEMP TABLE leftover (x int)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.leftover')") is None
    finally:
        await pool.close()


async def test_statements_are_planned_once_per_connection(dsn: str) -> None:
    """Each prepared statement gets its generic plan at once: never five custom plans first."""
    pool = await create_pool(DatabaseSettings(dsn=dsn, pool_min=1, pool_max=1))
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            stmt = await conn.prepare("SELECT count(*) FROM pg_class WHERE relname = $1")
            await stmt.fetchval("pg_class")
            plans = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE '%relname = $1%'"
            )
            assert plans is not None and (plans["generic_plans"], plans["custom_plans"]) == (1, 0)
    finally:
        await pool.close()
