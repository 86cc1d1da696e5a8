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
