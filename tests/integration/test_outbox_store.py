"""OutboxStore (issue 12): the outbox's one place for its database operations, typed rows on real Postgres."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from syncd.brokers.types import LegRequest, Side
from syncd.trading.outbox import OUTBOX_LOCK_CLASS
from syncd.trading.outbox_store import CloseInput, OutboxStore, Request, Trade, has_work
from tests.simfixtures import sim_fixture

D = Decimal
sim = sim_fixture(seed=12, accounts=1, positions_per_account=0, fill_on_submit=False)


async def test_store_reads_and_writes_typed_rows(sim: Any, make_context: Any) -> None:
    """Guards the store's row mapping: a claimed request is a Request (payload as text), a trade a Trade."""
    async with make_context(accounts=[sim.account_settings(0)]) as ctx:
        account = next(iter(ctx.accounts.values()))
        assert not await has_work(ctx.pool, ctx.queries, account.id)
        rid = int(
            await ctx.pool.fetchval(
                "INSERT INTO order_requests (account_id, kind, payload) VALUES ($1, 'open', $2) RETURNING id",
                account.id,
                {"qty": 1.5},
            )
        )
        assert await has_work(ctx.pool, ctx.queries, account.id)
        async with ctx.pool.acquire() as conn, ctx.pool.acquire() as other:
            store, rival = OutboxStore(conn, ctx.queries), OutboxStore(other, ctx.queries)
            assert await store.pending(account.id) == [rid]
            async with store.transaction():
                req = await store.claim(rid)
                assert req == Request(rid, account.id, "open", None, '{"qty": 1.5}', None, "queued", 0, None, None)
                async with rival.transaction():
                    assert await rival.claim(rid) is None  # held by this transaction: skipped, not waited on
                tid = await store.create_trade(account.id, "AAPL", "CUSTOM", D(2), None, D(10))
                await store.insert_legs(tid, [LegRequest("AAPL", Side.BUY), LegRequest("MSFT", Side.SELL, 2)])
                assert await store.mark_submitting(rid, tid) == 1
            assert await store.trade(tid) == Trade(tid, account.id, "pending", D(0))
            assert await store.trade(tid + 1000) is None
            assert await store.close_inputs(tid, account.id) == []  # pending: neither open nor closing
            await ctx.pool.execute("UPDATE trades SET status = 'open', quantity = 2 WHERE id = $1", tid)
            inputs = await store.close_inputs(tid, account.id)
            assert [(i.leg_index, i.symbol, i.side, i.ratio) for i in inputs] == [
                (0, "AAPL", Side.BUY, 1),
                (1, "MSFT", Side.SELL, 2),
            ]
            assert all(isinstance(i, CloseInput) and i.position_quantity == 0 for i in inputs)
            assert await store.working_orders(tid) == []
            assert await store.end_trade(tid, "cancelled", "x", account.id) is None  # not pending
            assert await store.reopen_trade(tid, account.id + 1) is None  # another account's: never touched
            await store.mark_final(rid, "failed", "bad request: test")
            assert not await has_work(ctx.pool, ctx.queries, account.id)
            assert await store.try_lock(OUTBOX_LOCK_CLASS, account.id)
            assert not await rival.try_lock(OUTBOX_LOCK_CLASS, account.id)
            await store.unlock(OUTBOX_LOCK_CLASS, account.id)
            assert await rival.try_lock(OUTBOX_LOCK_CLASS, account.id)
            await rival.unlock(OUTBOX_LOCK_CLASS, account.id)
