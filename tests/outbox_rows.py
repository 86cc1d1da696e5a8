"""The outbox's rows as an app writes and reads them, for the tests that drive the outbox on real Postgres."""

from __future__ import annotations

from typing import Any

from syncd.context import Context


async def queue(
    ctx: Context,
    kind: str,
    payload: Any,
    *,
    trade_id: int | None = None,
    cid: str | None = None,
    account: str | None = None,
    state: str = "queued",
    attempts: int = 0,
) -> int:
    """Insert an ``order_requests`` row as an app would (account: the context's first unless named); its id."""
    acct = ctx.accounts[account or next(iter(ctx.accounts))]
    return int(
        await ctx.pool.fetchval(
            "INSERT INTO order_requests (account_id, kind, trade_id, payload, client_order_id, state, attempts) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            acct.id,
            kind,
            trade_id,
            payload,
            cid,
            state,
            attempts,
        )
    )


async def request(ctx: Context, rid: int) -> Any:
    return await ctx.pool.fetchrow("SELECT * FROM order_requests WHERE id = $1", rid)


async def trade(ctx: Context, tid: int) -> Any:
    return await ctx.pool.fetchrow("SELECT * FROM trades WHERE id = $1", tid)
