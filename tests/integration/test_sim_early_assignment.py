"""The simulator's early assignment (``sim.assign_early``, ``POST /_sim/assign``) and, end to end on real
Postgres, syncd settling a short put assigned before its expiry: Alpaca at once, Tradier the next
morning (``assignment pending`` until then).

The simulator's clock starts now (manual), so its contracts are before expiry for syncd's clock too.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D
from typing import Any

import aiohttp
import pytest

from syncd.brokers.alpaca import AlpacaBroker
from syncd.brokers.types import OptionEventKind
from syncd.cycles import account_sync
from syncd.sim import SimReject, Simulator, occ_symbol
from syncd.sim.market import ET
from tests.simfixtures import http_fixture, sim_fixture

START = dt.datetime.now(dt.UTC).replace(microsecond=0)
sim = sim_fixture(seed=12, accounts=2, positions_per_account=0, clock="manual", start_time=START)
http = http_fixture()


def far_put(sim: Simulator, strike: int) -> str:
    """A put of the last expiration the simulator lists (well before its expiry); AAPL pinned at 150."""
    sim.set_price("AAPL", "149.99", "150.01")
    return occ_symbol("AAPL", sim.market.expirations()[-1], "put", D(strike))


async def test_assign_early_books_the_records_of_an_assignment_dated_today(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    put = far_put(sim, 140)  # out of the money: assigned anyway (the holder's choice)
    call = occ_symbol("AAPL", sim.market.expirations()[-1], "call", D(160))
    sim.add_position(0, put, -2, "1.00")
    sim.add_position(0, call, 1, "0.50")
    cash = sim.accounts[0].cash
    async with http.post(f"{sim.url}/_sim/assign", json={"account": 0, "symbol": put}) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["assigned"] == put
    sim.assign_early(0, call)  # a long one is exercised
    acct = sim.accounts[0]
    assert {s: p.qty for s, p in acct.positions.items()} == {"AAPL": D(300)}  # +200 at 140, +100 at 160
    assert acct.cash == cash - 200 * D(140) - 100 * D(160)
    day = sim.clock.now().astimezone(ET).date()
    broker = AlpacaBroker(sim.account_settings(0), session=http, timeout_s=5)
    got = sorted((e.kind.value, e.symbol, e.quantity, e.price) for e in await broker.list_option_events(day))
    assert got == sorted(
        [
            ("assigned", put, D(2), None),
            ("stock", "AAPL", D(200), D(140)),
            ("exercised", call, D(-1), None),
            ("stock", "AAPL", D(100), D(160)),
        ]
    )
    assert {a.date for a in acct.activities} == {day}


async def test_assign_early_refuses_bad_input(sim: Simulator, http: aiohttp.ClientSession) -> None:
    put = far_put(sim, 140)
    with pytest.raises(SimReject, match="no option position"):
        sim.assign_early(0, put)
    sim.add_position(0, "AAPL", 10, "150")
    with pytest.raises(SimReject, match="no option position"):
        sim.assign_early(0, "AAPL")
    async with http.post(f"{sim.url}/_sim/assign", json={"account": 0}) as resp:
        assert resp.status == 400 and "symbol" in (await resp.json())["error"]
    async with http.post(f"{sim.url}/_sim/assign", json={"account": 0, "symbol": put}) as resp:
        assert resp.status == 400
    assert sim.accounts[0].activities == []


@pytest.mark.parametrize(("index", "broker"), [(0, "alpaca"), (1, "tradier")])
async def test_early_assignment_end_to_end(sim: Simulator, make_context: Any, index: int, broker: Any) -> None:
    put = far_put(sim, 155)
    sim.add_position(index, put, -1, "7.00")
    async with make_context(accounts=[sim.account_settings(index, broker=broker)], cycles={"auto_import": True}) as ctx:
        account = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, account)  # the short put is imported as a trade
        tid = await ctx.pool.fetchval("SELECT id FROM trades WHERE symbol = 'AAPL' AND status = 'open'")
        assert tid is not None
        sim.assign_early(index, put)
        await account_sync.account_pass(ctx, account)
        row = await ctx.pool.fetchrow("SELECT * FROM trades WHERE id = $1", tid)
        assert row is not None
        if broker == "tradier":
            assert (row["status"], row["close_reason"], row["exit_price"]) == ("closing", "assignment pending", None)
            await sim.advance(24 * 3600)  # the next morning: the history has the record
            await account_sync.account_pass(ctx, account)
            row = await ctx.pool.fetchrow("SELECT * FROM trades WHERE id = $1", tid)
            assert row is not None
        assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"]) == (
            "closed",
            "assigned",
            0,
            D("700.00"),
        )
        child = await ctx.pool.fetchrow("SELECT * FROM trades WHERE parent_trade_id = $1", tid)
        assert child is not None
        assert (child["symbol"], child["strategy"], child["quantity"], child["entry_price"], child["source"]) == (
            "AAPL",
            "LONG_STOCK",
            100,
            155,
            "assignment",
        )
        kinds = await ctx.pool.fetch("SELECT kind FROM trade_events WHERE trade_id = $1", tid)
        assert OptionEventKind.ASSIGNED.value in {k["kind"] for k in kinds}
        assert await ctx.pool.fetchval("SELECT count(*) FROM trades WHERE status IN ('open', 'closing')") == 1
