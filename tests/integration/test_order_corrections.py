"""A wrong order stored from an earlier lying answer is corrected by the next truthful one (issue 10 item 5).

The lie passes every check (a plausible but wrong fill price, status or fill quantity), so it
is stored; the broker's next (truthful) final answer must then correct the order AND the
trade derived from it. Before, a terminal order was frozen: a merge kept the larger
``filled_qty`` and the first known price, and tradeCycle never asked for a terminal order again.
Repeated and stale answers must still change nothing (stream/poll idempotency).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from aioresponses import aioresponses

from syncd.brokers.types import OrderStatus, Side
from syncd.cycles import trade_cycle
from syncd.settings import AccountSettings
from syncd.trading.order_store import Link, Observation
from syncd.trading.reconcile import Role
from tests.integration.test_trade_cycle import apply, db_pool, make_account, make_trade, order, trade_row
from tests.unit import test_alpaca_wire as aw
from tests.unit.aiohttp_mock import MockHTTP
from tests.unit.broker_wire import calls

__all__ = ["db_pool"]  # the fixture, imported for this module's tests

D = Decimal


async def opened(pool: asyncpg.Pool[Any]) -> tuple[int, int]:
    acct = await make_account(pool)
    tid = await make_trade(pool, acct, [("AAPL", "buy", 1)])
    return acct, tid


async def order_row(pool: asyncpg.Pool[Any], bid: str) -> Any:
    return await pool.fetchrow("SELECT * FROM orders WHERE broker_order_id = $1", bid)


async def test_a_wrong_fill_price_is_corrected_with_the_trade(db_pool: asyncpg.Pool[Any]) -> None:
    acct, tid = await opened(db_pool)
    link = {"e1": Link(tid, Role.ENTRY)}
    await apply(db_pool, acct, Observation(order("e1", OrderStatus.FILLED, "10", "999")), links=link)
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["quantity"], t["entry_price"]) == ("open", D(10), D(999))

    await apply(db_pool, acct, Observation(order("e1", OrderStatus.FILLED, "10", "150.25")))
    assert (await order_row(db_pool, "e1"))["filled_avg_price"] == D("150.25")
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["quantity"], t["entry_price"], t["broker_fill_price"]) == (
        "open",
        D(10),
        D("150.25"),
        D("150.25"),
    )
    events = await db_pool.fetchval(
        "SELECT count(*) FROM order_events e JOIN orders o ON o.id = e.order_id WHERE o.broker_order_id = 'e1'"
    )
    # the same truthful answer again (stream and poll): nothing more is written
    await apply(
        db_pool, acct, Observation(order("e1", OrderStatus.FILLED, "10", "150.25"), source="stream", event="fill")
    )
    assert await db_pool.fetchval("SELECT count(*) FROM order_events") == events


async def test_a_wrong_fill_is_taken_back_when_the_order_really_was_cancelled(db_pool: asyncpg.Pool[Any]) -> None:
    acct, tid = await opened(db_pool)
    await apply(
        db_pool, acct, Observation(order("e1", OrderStatus.FILLED, "10", "150")), links={"e1": Link(tid, Role.ENTRY)}
    )
    assert (await trade_row(db_pool, tid))["status"] == "open"

    await apply(db_pool, acct, Observation(order("e1", OrderStatus.CANCELED, "0")))
    o = await order_row(db_pool, "e1")
    assert (o["status"], o["filled_qty"], o["filled_avg_price"], o["filled_at"]) == ("canceled", D(0), None, None)
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["quantity"], t["entry_price"]) == ("cancelled", D(0), None)


async def test_a_larger_wrong_exit_fill_is_corrected_and_reopens_the_trade(db_pool: asyncpg.Pool[Any]) -> None:
    """The lie closed the trade (the exit "filled" 10); the truth: the exit was cancelled after 4."""
    acct, tid = await opened(db_pool)
    await apply(
        db_pool, acct, Observation(order("e1", OrderStatus.FILLED, "10", "100")), links={"e1": Link(tid, Role.ENTRY)}
    )
    await apply(
        db_pool,
        acct,
        Observation(order("x1", OrderStatus.FILLED, "10", "110", side=Side.SELL)),
        links={"x1": Link(tid, Role.EXIT)},
    )
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["quantity"], t["realized_pnl"]) == ("closed", D(0), D("100.00"))

    await apply(db_pool, acct, Observation(order("x1", OrderStatus.CANCELED, "4", "110", side=Side.SELL)))
    assert (await order_row(db_pool, "x1"))["filled_qty"] == D(4)
    t = await trade_row(db_pool, tid)
    assert (t["status"], t["quantity"], t["closed_at"]) == ("open", D(6), None)
    assert t["realized_pnl"] == D("40.00")  # on the 4 really sold


async def test_a_stale_working_answer_never_reopens_a_terminal_order(db_pool: asyncpg.Pool[Any]) -> None:
    acct, tid = await opened(db_pool)
    await apply(
        db_pool, acct, Observation(order("e1", OrderStatus.FILLED, "10", "150")), links={"e1": Link(tid, Role.ENTRY)}
    )
    before = await order_row(db_pool, "e1")
    applied = await apply(db_pool, acct, Observation(order("e1", OrderStatus.PARTIALLY_FILLED, "4", "150")))
    assert applied.orders == []
    assert (await order_row(db_pool, "e1"))["updated_at"] == before["updated_at"]
    assert (await trade_row(db_pool, tid))["quantity"] == D(10)


# -- through a tradeCycle pass: a terminal order is asked for again -------------------------------------------

CFG = AccountSettings(
    name="acct", broker="alpaca", api_key="k-corr", api_secret="s-corr", base_url="http://alpaca.invalid"
)


@pytest.fixture
def wire() -> Iterator[aioresponses]:
    with MockHTTP() as m:
        yield m


def _alpaca_order(bid: str, avg: str) -> dict[str, Any]:
    return aw.order_json(
        id=bid,
        client_order_id="cid-e1",
        status="filled",
        qty="10",
        filled_qty="10",
        filled_avg_price=avg,
        submitted_at="2025-12-03T15:00:00Z",
        updated_at="2025-12-03T15:00:01Z",
        filled_at="2025-12-03T15:00:01Z",
    )


async def test_trade_cycle_asks_again_for_an_order_recorded_terminal_and_corrects_it(
    make_context: Any, wire: aioresponses
) -> None:
    """A terminal order older than the listing window: before, never asked for again (frozen on the lie)."""
    bid = "b2c3d4e5-0000-4000-8000-000000000001"
    base = "http://alpaca.invalid"
    async with make_context(accounts=[CFG]) as ctx:
        acct = ctx.accounts[CFG.name]
        tid = await make_trade(ctx.pool, acct.id, [("AAPL", "buy", 1)])
        await ctx.pool.execute(
            "INSERT INTO trade_cycle_state (account_id, orders_watermark) VALUES ($1, now())", acct.id
        )
        listing = re.compile("^" + re.escape(base + "/v2/orders") + r"\?.*$")
        by_id = re.compile("^" + re.escape(f"{base}/v2/orders/{bid}") + r"(\?.*)?$")
        # pass 1: the (lying) answer says it filled at 999
        wire.get(listing, payload=[])
        wire.get(by_id, payload=_alpaca_order(bid, "999"))
        await apply(ctx.pool, acct.id, Observation(order(bid, OrderStatus.NEW)), links={bid: Link(tid, Role.ENTRY)})
        await trade_cycle.account_pass(ctx, acct)
        assert (await trade_row(ctx.pool, tid))["entry_price"] == D(999)
        # pass 2: the truthful answer, asked for by id although the order is terminal now
        wire.get(listing, payload=[])
        wire.get(by_id, payload=_alpaca_order(bid, "150.5"))
        stats = await trade_cycle.account_pass(ctx, acct)
        assert stats["orders_written"] == 1
        t = await trade_row(ctx.pool, tid)
        assert (t["status"], t["quantity"], t["entry_price"]) == ("open", D(10), D("150.5"))
        # pass 3: the same answer again writes nothing
        wire.get(listing, payload=[])
        wire.get(by_id, payload=_alpaca_order(bid, "150.5"))
        stats = await trade_cycle.account_pass(ctx, acct)
        assert (stats["orders_written"], stats["order_events"]) == (0, 0)
        # long after it ended, a terminal order is not asked for any more (no answer is mocked for it)
        await ctx.pool.execute("UPDATE orders SET updated_at = now() - interval '1 hour'")
        wire.get(listing, payload=[])
        await trade_cycle.account_pass(ctx, acct)
        assert sum(1 for _, u, _ in calls(wire, "GET") if f"/v2/orders/{bid}" in u) == 3
