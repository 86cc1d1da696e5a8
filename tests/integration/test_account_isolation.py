"""Issue 10 item 2: one account's request never touches another account's trades.

The database refuses any row that links across accounts (0008's composite keys); the outbox
refuses such a request too (tested with the keys dropped, as an older schema or a future bug
would leave them), and a refused request changes nothing of the other account.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from syncd.context import Context
from syncd.cycles import trade_cycle
from syncd.db import apply_migrations, discover_migrations
from syncd.db.migrate import MigrationError
from syncd.settings import DatabaseSettings
from syncd.sim import Simulator
from tests.outbox_rows import request
from tests.simfixtures import sim_fixture

D = Decimal
sim = sim_fixture(seed=23, accounts=2, positions_per_account=0, fill_on_submit=False)

BUY = {"symbol": "AAPL", "side": "buy", "qty": 2, "type": "market", "strategy": "LONG_STOCK"}
WORKING = {**BUY, "type": "limit", "limit_price": 1}
KEYS = ("order_requests", "order_requests_trade_same_account"), ("orders", "orders_trade_same_account")
TRADE_COLUMNS = "status, quantity, requested_quantity, close_reason, entry_price, closed_at"


def two_accounts(sim: Simulator) -> list[Any]:
    return [sim.account_settings(0, name="a"), sim.account_settings(1, name="b")]


async def queue(ctx: Context, account: str, kind: str, payload: Any, trade_id: int | None = None) -> int:
    return int(
        await ctx.pool.fetchval(
            "INSERT INTO order_requests (account_id, kind, trade_id, payload) VALUES ($1, $2, $3, $4) RETURNING id",
            ctx.accounts[account].id,
            kind,
            trade_id,
            payload,
        )
    )


async def trade_state(ctx: Context, tid: int) -> tuple[Any, ...]:
    row = await ctx.pool.fetchrow(f"SELECT {TRADE_COLUMNS} FROM trades WHERE id = $1", tid)
    legs = await ctx.pool.fetch("SELECT leg_index, symbol, side, ratio FROM trade_legs WHERE trade_id = $1", tid)
    orders = await ctx.pool.fetch(
        "SELECT broker_order_id, role, status FROM orders WHERE trade_id = $1 ORDER BY id", tid
    )
    assert row is not None
    return tuple(row), [tuple(r) for r in legs], [tuple(r) for r in orders]


async def one_pass(ctx: Context, account: str) -> dict[str, Any]:
    return await trade_cycle.account_pass(ctx, ctx.accounts[account])


async def b_trade(ctx: Context, sim: Simulator, *, filled: bool) -> tuple[int, str]:
    """A trade of account b (open with 2 filled, or pending with its order working) and its order's client id."""
    rid = await queue(ctx, "b", "open", BUY if filled else WORKING)
    await one_pass(ctx, "b")
    req = await request(ctx, rid)
    assert req["state"] == "submitted"
    if filled:
        sim.fill(req["client_order_id"], price="100")
        await one_pass(ctx, "b")
    return int(req["trade_id"]), str(req["client_order_id"])


async def drop_account_keys(ctx: Context) -> None:
    """What an older schema (or a future bug) would leave: the composite keys gone, old plain ones back."""
    for table, key in KEYS:
        await ctx.pool.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {key}")
        await ctx.pool.execute(f"ALTER TABLE {table} ADD FOREIGN KEY (trade_id) REFERENCES trades (id)")


def posts(sim: Simulator) -> int:
    return sim.requests("/v2/orders", method="POST")


# -- the database refuses ------------------------------------------------------------------------


async def test_database_refuses_a_request_naming_another_accounts_trade(sim: Simulator, make_context: Any) -> None:
    """Each seen defect started with such a row: the insert itself is refused, for every kind."""
    async with make_context(accounts=two_accounts(sim), trading={"enabled": True}) as ctx:
        tid, _ = await b_trade(ctx, sim, filled=True)
        before = await trade_state(ctx, tid)
        for kind, payload in (("open", BUY), ("open", {"bogus": 1}), ("close", {"type": "market"}), ("cancel", {})):
            with pytest.raises(asyncpg.ForeignKeyViolationError, match="order_requests_trade_same_account"):
                await queue(ctx, "a", kind, payload, trade_id=tid)
        await one_pass(ctx, "a")
        assert await trade_state(ctx, tid) == before


async def test_raw_insert_and_update_across_accounts_are_refused(sim: Simulator, make_context: Any) -> None:
    """No code path, present or future, can link across accounts: raw SQL is refused by the keys themselves."""
    async with make_context(accounts=two_accounts(sim), trading={"enabled": True}) as ctx:
        tid, cid = await b_trade(ctx, sim, filled=True)
        a, b = ctx.accounts["a"].id, ctx.accounts["b"].id
        pool = ctx.pool
        mine = int(
            await pool.fetchval(
                "INSERT INTO trades (account_id, symbol, status) VALUES ($1, 'MSFT', 'open') RETURNING id", a
            )
        )
        rid = await queue(ctx, "a", "close", {"type": "market"}, trade_id=mine)
        order_b = await pool.fetchval("SELECT id FROM orders WHERE account_id = $1 AND trade_id = $2", b, tid)
        order_a = int(
            await pool.fetchval(
                "INSERT INTO orders (account_id, broker_order_id, status) VALUES ($1, 'hand-1', 'new') RETURNING id", a
            )
        )
        refused = [
            ("UPDATE order_requests SET trade_id = $1 WHERE id = $2", (tid, rid)),
            ("UPDATE order_requests SET account_id = $1 WHERE id = $2", (b, rid)),
            (
                "INSERT INTO orders (account_id, broker_order_id, status, trade_id) VALUES ($1, 'x', 'new', $2)",
                (a, tid),
            ),
            ("UPDATE orders SET trade_id = $1 WHERE id = $2", (tid, order_a)),
            ("UPDATE orders SET account_id = $1 WHERE id = $2", (a, order_b)),
            # a leg row under another account's parent order
            (
                "INSERT INTO orders (account_id, broker_order_id, status, parent_id) VALUES ($1, 'leg', 'new', $2)",
                (a, order_b),
            ),
            # a trade (and with it its trade_legs) cannot move while its account's rows refer to it
            ("UPDATE trades SET account_id = $1 WHERE id = $2", (a, tid)),
            ("UPDATE trades SET account_id = $1 WHERE id = $2", (b, mine)),
        ]
        for sql, args in refused:
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await pool.execute(sql, *args)
        # the same links within one account are fine
        await pool.execute("UPDATE orders SET trade_id = $1 WHERE id = $2", mine, order_a)
        await pool.execute(
            "INSERT INTO orders (account_id, broker_order_id, status, parent_id) VALUES ($1, 'leg', 'new', $2)",
            a,
            order_a,
        )
        # deleting a trade still unlinks its rows (and only that column)
        await pool.execute("DELETE FROM trades WHERE id = $1", mine)
        req = await request(ctx, rid)
        assert (req["account_id"], req["trade_id"]) == (a, None)
        assert await pool.fetchval("SELECT (account_id, trade_id) FROM orders WHERE id = $1", order_a) == (a, None)
        assert cid  # b's order untouched
        assert await pool.fetchval("SELECT trade_id FROM orders WHERE id = $1", order_b) == tid


async def test_deleting_an_account_still_cascades(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=two_accounts(sim), trading={"enabled": True}) as ctx:
        tid, _ = await b_trade(ctx, sim, filled=True)
        await queue(ctx, "b", "close", {"type": "limit", "limit_price": 500}, trade_id=tid)
        await one_pass(ctx, "b")
        b = ctx.accounts["b"].id
        await ctx.pool.execute("DELETE FROM accounts WHERE id = $1", b)
        for table in ("trades", "orders", "order_requests"):
            assert await ctx.pool.fetchval(f"SELECT count(*) FROM {table} WHERE account_id = $1", b) == 0


# -- the outbox refuses too (keys dropped) ---------------------------------------------------------


async def test_open_naming_another_accounts_open_trade_fails_and_places_nothing(
    sim: Simulator, make_context: Any
) -> None:
    """Seen: the open placed an order at a's broker and linked it to b's trade (its quantity went 2 -> 9)."""
    async with make_context(accounts=two_accounts(sim), trading={"enabled": True}) as ctx:
        tid, _ = await b_trade(ctx, sim, filled=True)
        await drop_account_keys(ctx)
        before, sent = await trade_state(ctx, tid), posts(sim)
        rid = await queue(ctx, "a", "open", {**BUY, "qty": 7}, trade_id=tid)
        stats = await one_pass(ctx, "a")
        req = await request(ctx, rid)
        assert stats["outbox_failed"] == 1
        assert req["state"] == "failed" and "trade_id" in req["last_error"]
        assert "not a trade of this account" in req["last_error"]
        assert posts(sim) == sent
        await one_pass(ctx, "b")
        assert await trade_state(ctx, tid) == before


async def test_bad_open_naming_another_accounts_pending_trade_leaves_it_pending(
    sim: Simulator, make_context: Any
) -> None:
    """Seen: an open with a bad payload and b's pending trade's id cancelled b's trade."""
    async with make_context(accounts=two_accounts(sim), trading={"enabled": True}) as ctx:
        tid, cid = await b_trade(ctx, sim, filled=False)
        await drop_account_keys(ctx)
        before = await trade_state(ctx, tid)
        assert before[0][0] == "pending"
        for payload in ({"bogus": 1}, BUY):
            rid = await queue(ctx, "a", "open", payload, trade_id=tid)
            await one_pass(ctx, "a")
            assert (await request(ctx, rid))["state"] == "failed"
        assert await trade_state(ctx, tid) == before
        assert sim.order(cid).status == "new"


async def test_refused_close_naming_another_accounts_closing_trade_leaves_it_closing(
    sim: Simulator, make_context: Any
) -> None:
    """Seen: a refused close naming b's closing trade reopened it."""
    async with make_context(accounts=two_accounts(sim), trading={"enabled": True}) as ctx:
        tid, _ = await b_trade(ctx, sim, filled=True)
        await ctx.pool.execute("UPDATE trades SET status = 'closing', close_reason = 'stop_loss' WHERE id = $1", tid)
        await drop_account_keys(ctx)
        before, sent = await trade_state(ctx, tid), posts(sim)
        for payload in ({"type": "market"}, {"type": "market", "bogus": 1}):
            rid = await queue(ctx, "a", "close", payload, trade_id=tid)
            await one_pass(ctx, "a")
            req = await request(ctx, rid)
            assert req["state"] == "failed" and "not a trade of this account" in req["last_error"]
        assert await trade_state(ctx, tid) == before
        assert before[0][:1] == ("closing",) and posts(sim) == sent


async def test_cancel_naming_another_accounts_trade_cancels_nothing(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=two_accounts(sim), trading={"enabled": True}) as ctx:
        tid, cid = await b_trade(ctx, sim, filled=False)
        await drop_account_keys(ctx)
        before = await trade_state(ctx, tid)
        rid = await queue(ctx, "a", "cancel", {}, trade_id=tid)
        await one_pass(ctx, "a")
        req = await request(ctx, rid)
        assert req["state"] == "failed" and "not a trade of this account" in req["last_error"]
        assert sim.requests("/v2/orders", method="DELETE") == 0 and sim.order(cid).status == "new"
        assert await trade_state(ctx, tid) == before


# -- an open never names a trade, even its own account's ------------------------------------------


async def test_open_naming_a_trade_of_its_own_account_is_refused(sim: Simulator, make_context: Any) -> None:
    """The policy: an open creates its own trade. Naming one (here the account's own pending trade, with a good
    and a bad payload) ends failed, places nothing and leaves that trade as it was (a bad payload used to
    cancel it)."""
    async with make_context(accounts=two_accounts(sim), trading={"enabled": True}) as ctx:
        tid, cid = await b_trade(ctx, sim, filled=False)
        before, sent = await trade_state(ctx, tid), posts(sim)
        for payload in (BUY, {"bogus": 1}):
            rid = await queue(ctx, "b", "open", payload, trade_id=tid)
            await one_pass(ctx, "b")
            req = await request(ctx, rid)
            assert req["state"] == "failed", req["last_error"]
            assert "an open request creates its own trade: trade_id must be NULL" in req["last_error"]
            assert req["trade_id"] == tid  # the app's value is kept for it to see; nothing links to it
        assert posts(sim) == sent and sim.order(cid).status == "new"
        assert await trade_state(ctx, tid) == before


async def test_close_of_own_trade_still_works_and_its_refusal_still_reopens(sim: Simulator, make_context: Any) -> None:
    """The account's own trades keep their behaviour: a close that cannot place (nothing synced as held) reopens
    its closing trade."""
    async with make_context(accounts=two_accounts(sim), trading={"enabled": True}) as ctx:
        tid, _ = await b_trade(ctx, sim, filled=True)
        await ctx.pool.execute("UPDATE trades SET status = 'closing', close_reason = 'stop_loss' WHERE id = $1", tid)
        rid = await queue(ctx, "b", "close", {"type": "market"}, trade_id=tid)
        await one_pass(ctx, "b")
        req = await request(ctx, rid)
        assert req["state"] == "failed" and "nothing to close" in req["last_error"]
        row = await ctx.pool.fetchrow("SELECT status, close_reason FROM trades WHERE id = $1", tid)
        assert tuple(row) == ("open", None)


# -- migrating a database that already holds cross-account links -----------------------------------


async def _schema_before_0008(dsn: str) -> asyncpg.Connection[Any]:
    """A database at version 7 (every migration before 0008 applied and recorded), schema syncd."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn, server_settings={"search_path": "syncd"})
    await conn.execute("CREATE SCHEMA syncd")
    await conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
        "checksum text NOT NULL DEFAULT '', applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for m in discover_migrations():
        if m.version < 8:
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
    await conn.execute("INSERT INTO accounts (id, name, broker) VALUES (1, 'a', 'alpaca'), (2, 'b', 'alpaca')")
    await conn.execute(
        "INSERT INTO trades (id, account_id, symbol, status, quantity) "
        "VALUES (10, 1, 'AAPL', 'open', 2), (20, 2, 'MSFT', 'pending', 0)"
    )
    return conn


async def test_migration_unlinks_existing_cross_account_rows(empty_dsn: str) -> None:
    """0008 on a database holding what the defect wrote: the cross-account links are set NULL (a queued request
    ends failed, saying why), same-account links are kept, and the keys then hold."""
    conn = await _schema_before_0008(empty_dsn)
    try:
        await conn.execute("""
            INSERT INTO order_requests (id, account_id, kind, trade_id, state, client_order_id, last_error) VALUES
              (1, 1, 'open',   20, 'submitted',  'c1', NULL),   -- a's open linked to b's trade (placed)
              (2, 1, 'close',  20, 'queued',     'c2', NULL),   -- a's close naming b's trade, not yet worked
              (3, 1, 'cancel', 20, 'submitting', 'c3', 'outcome unknown'),
              (4, 1, 'close',  10, 'queued',     'c4', NULL)    -- a's own trade: kept
        """)
        await conn.execute("""
            INSERT INTO orders (id, account_id, broker_order_id, client_order_id, trade_id, role, status) VALUES
              (1, 1, 'o1', 'c1', 20, 'entry', 'filled'),         -- a's order linked to b's trade
              (2, 1, 'o2', NULL, 10, 'entry', 'filled'),         -- a's own: kept
              (3, 2, 'o3', NULL, 20, 'entry', 'new')             -- b's own: kept
        """)
    finally:
        await conn.close()
    applied = await apply_migrations(DatabaseSettings(dsn=empty_dsn))
    assert applied[0].version == 8  # (and any later ones)
    conn = await asyncpg.connect(empty_dsn, server_settings={"search_path": "syncd"})
    try:
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM order_requests ORDER BY id")}
        assert [(rows[i]["trade_id"], rows[i]["state"]) for i in (1, 2, 3, 4)] == [
            (None, "submitted"),
            (None, "failed"),
            (None, "submitting"),
            (10, "queued"),
        ]
        assert rows[2]["last_error"] == "trade_id 20 named a trade of another account: unlinked by migration 0008"
        assert rows[3]["last_error"].endswith("unlinked by migration 0008; outcome unknown")
        assert rows[4]["last_error"] is None
        orders = [tuple(r) for r in await conn.fetch("SELECT id, trade_id, role FROM orders ORDER BY id")]
        assert orders == [(1, None, None), (2, 10, "entry"), (3, 20, "entry")]
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("UPDATE orders SET trade_id = 20 WHERE id = 1")
    finally:
        await conn.close()


async def test_migration_stops_on_a_leg_under_another_accounts_parent(empty_dsn: str) -> None:
    """Such a row cannot come from syncd: the migration says what is wrong and changes nothing."""
    conn = await _schema_before_0008(empty_dsn)
    try:
        await conn.execute("INSERT INTO orders (id, account_id, broker_order_id, status) VALUES (1, 1, 'p', 'new')")
        await conn.execute(
            "INSERT INTO orders (id, account_id, broker_order_id, status, parent_id) VALUES (2, 2, 'leg', 'new', 1)"
        )
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match=r"1 order leg row\(s\) have a parent order of another account"):
        await apply_migrations(DatabaseSettings(dsn=empty_dsn))
    conn = await asyncpg.connect(empty_dsn, server_settings={"search_path": "syncd"})
    try:
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 7
    finally:
        await conn.close()
