"""The simulator's option expiry (ITM by more than $0.01 exercised or assigned, else expired), its
Alpaca activities and Tradier history endpoints read by syncd's adapters, and end to end: syncd's
accountSync settles the trades from them on real Postgres.

The simulator's clock starts in the past (2025-12-03, manual), so the contracts it expires are past
expiry for syncd's own clock too.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D
from typing import Any

import aiohttp
import pytest

from syncd.brokers.alpaca import AlpacaBroker
from syncd.brokers.tradier import TradierBroker
from syncd.brokers.types import OptionEventKind
from syncd.cycles import account_sync
from syncd.sim import SimReject, Simulator, occ_symbol
from tests.simfixtures import http_fixture, sim_fixture

START = dt.datetime(2025, 12, 3, 15, 0, tzinfo=dt.UTC)
sim = sim_fixture(seed=11, accounts=2, positions_per_account=0, clock="manual", start_time=START)
http = http_fixture()


def contracts(sim: Simulator) -> tuple[dt.date, str, str, str, str]:
    """The first expiration; AAPL pinned at 150: a 140 put and 160 call OTM, a 145 call and 155 put ITM."""
    exp = sim.market.expirations()[0]
    sim.set_price("AAPL", "149.99", "150.01")
    return (
        exp,
        occ_symbol("AAPL", exp, "put", D(140)),
        occ_symbol("AAPL", exp, "call", D(160)),
        occ_symbol("AAPL", exp, "call", D(145)),
        occ_symbol("AAPL", exp, "put", D(155)),
    )


async def test_expiry_exercise_assignment_and_the_alpaca_activities(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    exp, otm_put, otm_call, itm_call, itm_put = contracts(sim)
    sim.add_position(0, otm_put, -1, "1.20")
    sim.add_position(0, otm_call, 2, "0.50")
    sim.add_position(0, itm_call, 1, "6.00")  # long ITM: exercised, buys 100 at 145
    sim.add_position(0, itm_put, -2, "5.50")  # short ITM: assigned, buys 200 at 155
    cash = sim.accounts[0].cash
    assert sim.expire() == 4
    acct = sim.accounts[0]
    assert {s: p.qty for s, p in acct.positions.items()} == {"AAPL": D(300)}
    assert acct.cash == cash - 100 * D(145) - 200 * D(155)
    assert acct.positions["AAPL"].avg_entry == D("151.666667")
    broker = AlpacaBroker(sim.account_settings(0), session=http, timeout_s=5)
    events = await broker.list_option_events(exp)
    got = sorted((e.kind.value, e.symbol, e.quantity, e.price) for e in events)
    assert got == sorted(
        [
            ("expired", otm_put, D(1), None),
            ("expired", otm_call, D(-2), None),
            ("exercised", itm_call, D(-1), None),
            ("stock", "AAPL", D(100), D(145)),
            ("assigned", itm_put, D(2), None),
            ("stock", "AAPL", D(200), D(155)),
        ]
    )
    # expired contracts can no longer be traded
    with pytest.raises(SimReject, match="expired"):
        sim.place_outside_order(0, otm_call, "buy", 1)
    # nothing more to settle
    assert sim.expire(exp) == 0


async def test_at_the_money_by_a_cent_expires(sim: Simulator) -> None:
    exp = sim.market.expirations()[0]
    sim.set_price("AAPL", "150.00", "150.02")  # mid 150.01: a 150 call is ITM by only $0.01
    call = occ_symbol("AAPL", exp, "call", D(150))
    sim.add_position(0, call, 1, "1")
    sim.expire(exp)
    assert [a.activity_type for a in sim.accounts[0].activities] == ["OPEXP"]


async def test_expiry_happens_as_the_clock_passes_the_close(sim: Simulator) -> None:
    exp, otm_put, *_ = contracts(sim)
    sim.add_position(0, otm_put, 1, "1")
    close = dt.datetime.combine(exp, dt.time(21, 0), dt.UTC)  # 16:00 New York in winter
    await sim.advance((close - sim.clock.now()).total_seconds() - 60)
    assert otm_put in sim.accounts[0].positions
    await sim.advance(120)
    assert otm_put not in sim.accounts[0].positions


async def test_tradier_history_is_nightly_and_has_no_symbol(sim: Simulator, http: aiohttp.ClientSession) -> None:
    exp, otm_put, _, _, itm_put = contracts(sim)
    sim.add_position(1, otm_put, 1, "1")
    sim.add_position(1, itm_put, -1, "5")
    sim.expire(exp)
    broker = TradierBroker(sim.account_settings(1, broker="tradier"), session=http, timeout_s=5)
    assert await broker.list_option_events(exp) == []  # the evening of the expiry: not in the history yet
    await sim.advance(12 * 3600)  # the next morning
    events = await broker.list_option_events(exp)
    assert sorted((e.kind, e.quantity, e.symbol, e.on) for e in events) == [
        (OptionEventKind.ASSIGNED, D(1), None, exp),
        (OptionEventKind.EXPIRED, D(-1), None, exp),
    ]


async def test_admin_expire_over_http(sim: Simulator, http: aiohttp.ClientSession) -> None:
    exp, otm_put, *_ = contracts(sim)
    sim.add_position(0, otm_put, 1, "1")
    async with http.post(f"{sim.url}/_sim/expire", json={"date": exp.isoformat()}) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["settled"] == 1
    async with http.get(f"{sim.url}/_sim/accounts/0/activities") as resp:
        (activity,) = await resp.json()
    assert (activity["activity_type"], activity["symbol"], activity["qty"]) == ("OPEXP", otm_put, "-1")


@pytest.mark.parametrize(("index", "broker"), [(0, "alpaca"), (1, "tradier")])
async def test_half_assigned_spread_end_to_end(sim: Simulator, make_context: Any, index: int, broker: Any) -> None:
    """A put credit spread, short 155 put assigned, long 145 put expired: Alpaca at once, Tradier the next morning."""
    exp = sim.market.expirations()[0]
    sim.set_price("AAPL", "149.99", "150.01")
    short, long = occ_symbol("AAPL", exp, "put", D(155)), occ_symbol("AAPL", exp, "put", D(145))
    sim.add_position(index, short, -1, "4.00")
    sim.add_position(index, long, 1, "2.50")
    async with make_context(accounts=[sim.account_settings(index, broker=broker)], cycles={"auto_import": True}) as ctx:
        account = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, account)  # the spread is imported as one trade
        tid = await ctx.pool.fetchval("SELECT id FROM trades WHERE strategy = 'BULL_PUT_CREDIT'")
        assert (await ctx.pool.fetchval("SELECT entry_price FROM trades WHERE id = $1", tid)) == D("-1.5")
        sim.expire(exp)
        await account_sync.account_pass(ctx, account)
        row = await ctx.pool.fetchrow("SELECT * FROM trades WHERE id = $1", tid)
        assert row is not None
        if broker == "tradier":
            assert (row["status"], row["close_reason"], row["exit_price"]) == ("closing", "expiration pending", None)
            await sim.advance(12 * 3600)
            await account_sync.account_pass(ctx, account)
            row = await ctx.pool.fetchrow("SELECT * FROM trades WHERE id = $1", tid)
            assert row is not None
        assert (row["status"], row["close_reason"], row["exit_price"], row["realized_pnl"]) == (
            "closed",
            "assigned",
            0,
            D("150.00"),
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
        assert await ctx.pool.fetchval("SELECT count(*) FROM trades WHERE status IN ('open', 'closing')") == 1


async def test_bad_input_is_refused_clearly(sim: Simulator, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.url}/_sim/expire", json={"date": "soon"}) as resp:
        assert resp.status == 400 and "soon" in (await resp.json())["error"]
    acct = sim.accounts[0]
    headers = {"APCA-API-KEY-ID": acct.api_key, "APCA-API-SECRET-KEY": acct.api_secret}
    for query in ("page_size=0", "direction=up", "after=yesterday"):
        async with http.get(f"{sim.url}/v2/account/activities?{query}", headers=headers) as resp:
            assert resp.status == 422, query
    tradier = {"Authorization": f"Bearer {acct.tradier_token}", "Accept": "application/json"}
    url = f"{sim.url}/v1/accounts/{acct.tradier_account_id}/history?start=nope"
    async with http.get(url, headers=tradier) as resp:
        assert resp.status == 400
    # nothing held: expiring settles nothing and the clock stays
    before = sim.clock.now()
    assert sim.expire() == 0 and sim.clock.now() == before
