"""accountSync on real Postgres: scripted broker answers (a fake implementing the Protocol) and the simulator.

The database is never mocked. The fake broker only scripts what a broker answers, so
each case can say exactly what the broker held and how it failed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from syncd.brokers.base import (
    BadBrokerData,
    BrokerAuthFailed,
    BrokerError,
    BrokerUnavailable,
    OrderStatusFilter,
)
from syncd.brokers.occ import option_spec_or_none
from syncd.brokers.types import (
    AssetClass,
    Balances,
    Clock,
    OptionEvent,
    Order,
    OrderRequest,
    Position,
    Quote,
    ReplaceRequest,
    TradeUpdate,
)
from syncd.context import Account, Context
from syncd.cycles import account_sync
from syncd.daemon.passes import run_pass
from syncd.db import connect
from syncd.settings import AccountSettings, DatabaseSettings
from tests.helpers import wait_for

D = Decimal


# -- a scripted broker ------------------------------------------------------------------------------------


class ScriptedBroker:
    """Answers what the test put in ``positions``/``balances``; raises ``fail`` if set; hangs if ``hang``."""

    kind = "alpaca"
    supports_stream = False

    def __init__(self, account_number: str = "PA0001") -> None:
        self.balances = Balances(account_number, D("10000"), D("5000"), D("20000"), D("5000"), D("0"))
        self.positions: list[Position] = []
        self.fail: BrokerError | None = None
        self.fail_positions_only = False
        self.hang = False
        self.request_count = 0

    async def _answer(self, what: str) -> None:
        self.request_count += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None and (what == "positions" or not self.fail_positions_only):
            raise self.fail

    async def get_account(self) -> Balances:
        await self._answer("account")
        return self.balances

    async def list_positions(self) -> list[Position]:
        await self._answer("positions")
        return list(self.positions)

    # The rest of the Protocol: accountSync never calls these.
    async def list_orders(self, status: OrderStatusFilter = "all", since: dt.datetime | None = None) -> list[Order]:
        raise NotImplementedError

    async def get_order(self, broker_order_id: str) -> Order:
        raise NotImplementedError

    async def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        raise NotImplementedError

    async def submit_order(self, request: OrderRequest) -> Order:
        raise NotImplementedError

    async def cancel_order(self, broker_order_id: str) -> None:
        raise NotImplementedError

    async def replace_order(self, request: ReplaceRequest) -> Order:
        raise NotImplementedError

    async def get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        raise NotImplementedError

    async def get_clock(self) -> Clock:
        raise NotImplementedError

    async def list_option_events(self, since: dt.date) -> list[OptionEvent]:
        return []

    async def trade_updates(self) -> AsyncIterator[TradeUpdate]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def aclose(self) -> None:
        return None

    # scripting helpers
    def hold(self, symbol: str, qty: str, avg: str = "10", **kw: Any) -> None:
        self.positions = [p for p in self.positions if p.symbol != symbol]
        spec = option_spec_or_none(symbol)
        q = D(qty)
        mult = spec.multiplier if spec else 1
        self.positions.append(
            Position(
                symbol=symbol,
                asset_class=AssetClass.US_OPTION if spec else AssetClass.US_EQUITY,
                quantity=q,
                qty_available=kw.pop("qty_available", q),
                avg_entry_price=D(avg),
                cost_basis=q * D(avg) * mult,
                option=spec,
                **kw,
            )
        )

    def drop(self, symbol: str) -> None:
        self.positions = [p for p in self.positions if p.symbol != symbol]


def alpaca_settings(name: str) -> AccountSettings:
    # Never contacted: each test swaps in a ScriptedBroker.
    return AccountSettings(
        name=name, broker="alpaca", api_key="k-test", api_secret="s-test", base_url="http://127.0.0.1:9"
    )


@pytest_asyncio.fixture(loop_scope="function")
async def scripted(make_context: Any) -> AsyncIterator[Callable[..., Any]]:
    """``ctx, brokers = await scripted(n=1, **sections)``: a Context whose accounts answer from ScriptedBrokers."""
    stack: list[Any] = []

    async def build(n: int = 1, **sections: dict[str, Any]) -> tuple[Context, list[ScriptedBroker]]:
        sections.setdefault("database", {"pool_max": 4})
        cm = make_context(accounts=[alpaca_settings(f"acct-{i}") for i in range(n)], **sections)
        ctx: Context = await cm.__aenter__()
        stack.append(cm)
        brokers = []
        for i in range(n):
            name = f"acct-{i}"
            broker = ScriptedBroker(f"PA{i:04d}")
            ctx.accounts[name] = replace(ctx.accounts[name], broker=broker)
            brokers.append(broker)
        return ctx, brokers

    yield build
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


async def positions(ctx: Context, account: Account) -> dict[str, asyncpg.Record]:
    rows = await ctx.pool.fetch(
        "SELECT *, xmin::text AS xmin FROM portfolio_positions WHERE account_id = $1", account.id
    )
    return {r["symbol"]: r for r in rows}


async def events(ctx: Context, account: Account) -> list[tuple[str, str, Decimal, Decimal]]:
    rows = await ctx.pool.fetch(
        "SELECT symbol, kind, old_quantity, new_quantity FROM position_events WHERE account_id = $1 ORDER BY id",
        account.id,
    )
    return [(r["symbol"], r["kind"], r["old_quantity"], r["new_quantity"]) for r in rows]


async def account_row(ctx: Context, account: Account) -> asyncpg.Record:
    row: asyncpg.Record | None = await ctx.pool.fetchrow("SELECT * FROM accounts WHERE id = $1", account.id)
    assert row is not None
    return row


def only(ctx: Context) -> Account:
    return ctx.accounts["acct-0"]


# -- add, change, remove, flip ------------------------------------------------------------------------------


async def test_first_pass_mirrors_positions_balances_and_account(scripted: Any) -> None:
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    broker.hold("AAPL", "10", "150", current_price=D("155"), market_value=D("1550"), unrealized_pl=D("50"))
    broker.hold("TSLA", "-5", "200")
    stats = await account_sync.account_pass(ctx, acct)
    assert stats["positions"] == 2
    assert (stats["upserted"], stats["deleted"], stats["events"], stats["snapshot"]) == (2, 0, 2, 1)

    rows = await positions(ctx, acct)
    aapl = rows["AAPL"]
    assert (aapl["asset_class"], aapl["underlying"], aapl["multiplier"], aapl["quantity"]) == (
        "us_equity",
        "AAPL",
        D(1),
        D(10),
    )
    assert (aapl["avg_entry_price"], aapl["cost_basis"], aapl["current_price"], aapl["market_value"]) == (
        D(150),
        D(1500),
        D(155),
        D(1550),
    )
    assert aapl["option_type"] is None
    assert rows["TSLA"]["quantity"] == D(-5)
    assert sorted(await events(ctx, acct)) == [("AAPL", "opened", D(0), D(10)), ("TSLA", "opened", D(0), D(-5))]

    snaps = await ctx.pool.fetch("SELECT * FROM account_snapshots WHERE account_id = $1", acct.id)
    assert [(s["equity"], s["cash"], s["buying_power"]) for s in snaps] == [(D(10000), D(5000), D(20000))]
    row = await account_row(ctx, acct)
    assert row["broker_account_id"] == "PA0000"
    assert row["last_synced_at"] is not None
    assert broker.request_count == 2


async def test_changes_write_only_changed_rows_and_keep_first_seen(scripted: Any) -> None:
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    for sym in ("AAPL", "MSFT", "NVDA", "AMD", "TSLA"):
        broker.hold(sym, "10")
    await account_sync.account_pass(ctx, acct)
    before = await positions(ctx, acct)

    broker.hold("AAPL", "15")  # increased
    broker.hold("MSFT", "4")  # reduced
    broker.hold("NVDA", "-3")  # flipped
    broker.drop("AMD")  # closed
    broker.hold("TSLA", "10", qty_available=D(0))  # held by an order: no quantity change
    broker.hold("META", "7")  # opened
    stats = await account_sync.account_pass(ctx, acct)
    assert (stats["upserted"], stats["deleted"], stats["events"], stats["unchanged"]) == (5, 1, 5, 0)

    after = await positions(ctx, acct)
    assert set(after) == {"AAPL", "MSFT", "NVDA", "TSLA", "META"}
    assert [after[s]["quantity"] for s in ("AAPL", "MSFT", "NVDA", "TSLA")] == [D(15), D(4), D(-3), D(10)]
    assert after["TSLA"]["qty_available"] == D(0)
    for sym in ("AAPL", "MSFT", "NVDA", "TSLA"):
        assert after[sym]["first_seen_at"] == before[sym]["first_seen_at"]
        assert after[sym]["updated_at"] > before[sym]["updated_at"]
    assert sorted((await events(ctx, acct))[5:]) == [
        ("AAPL", "increased", D(10), D(15)),
        ("AMD", "closed", D(10), D(0)),
        ("META", "opened", D(0), D(7)),
        ("MSFT", "reduced", D(10), D(4)),
        ("NVDA", "flipped", D(10), D(-3)),
    ]


async def test_flip_long_to_short(scripted: Any) -> None:
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    broker.hold("AAPL", "100", "150")
    await account_sync.account_pass(ctx, acct)
    broker.hold("AAPL", "-20", "151")
    await account_sync.account_pass(ctx, acct)
    row = (await positions(ctx, acct))["AAPL"]
    assert (row["quantity"], row["avg_entry_price"]) == (D(-20), D(151))
    assert (await events(ctx, acct))[-1] == ("AAPL", "flipped", D(100), D(-20))


async def test_option_fields(scripted: Any) -> None:
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    broker.hold("AAPL260116C00150000", "2", "4.10")
    broker.hold("SPY251219P00400500", "-1", "2.00")
    await account_sync.account_pass(ctx, acct)
    rows = await positions(ctx, acct)
    call, put = rows["AAPL260116C00150000"], rows["SPY251219P00400500"]
    assert (call["asset_class"], call["underlying"], call["option_type"], call["strike"], call["expiration"]) == (
        "us_option",
        "AAPL",
        "call",
        D(150),
        dt.date(2026, 1, 16),
    )
    assert (call["multiplier"], call["cost_basis"]) == (D(100), D(820))
    assert (put["option_type"], put["strike"], put["quantity"]) == ("put", D("400.5"), D(-1))


async def test_vanishing_all_positions_empties_the_mirror(scripted: Any) -> None:
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    broker.hold("AAPL", "1")
    broker.hold("MSFT", "2")
    await account_sync.account_pass(ctx, acct)
    broker.positions = []
    stats = await account_sync.account_pass(ctx, acct)
    assert (stats["deleted"], stats["positions"]) == (2, 0)
    assert await positions(ctx, acct) == {}


# -- what accountSync must not touch ------------------------------------------------------------------------


async def test_monitor_columns_survive_a_position_change(scripted: Any) -> None:
    """bid/ask/quote_at/greeks are monitorCycle's: accountSync never overwrites them."""
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    broker.hold("AAPL", "10", current_price=D("150"))
    await account_sync.account_pass(ctx, acct)
    await ctx.pool.execute(
        "UPDATE portfolio_positions SET bid = 149, ask = 151, last = 150.5, delta = 1, quote_at = now(),"
        " current_price = 150 WHERE account_id = $1",
        acct.id,
    )
    broker.hold("AAPL", "12", current_price=D("152"))
    await account_sync.account_pass(ctx, acct)
    row = (await positions(ctx, acct))["AAPL"]
    assert (row["quantity"], row["bid"], row["ask"], row["last"], row["delta"]) == (
        D(12),
        D(149),
        D(151),
        D("150.5"),
        D(1),
    )
    assert row["quote_at"] is not None
    assert row["current_price"] == D(152)  # written with the position change: the broker's mark


async def test_price_only_change_is_left_to_monitor_once_quoted(scripted: Any) -> None:
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    broker.hold("AAPL", "10", current_price=D("150"))
    await account_sync.account_pass(ctx, acct)
    broker.hold("AAPL", "10", current_price=D("151"))
    stats = await account_sync.account_pass(ctx, acct)  # not quoted yet: the broker's marks are ours
    assert stats["upserted"] == 1
    await ctx.pool.execute("UPDATE portfolio_positions SET quote_at = now(), current_price = 151.2")
    broker.hold("AAPL", "10", current_price=D("153"))
    stats = await account_sync.account_pass(ctx, acct)
    assert stats["upserted"] == 0
    assert (await positions(ctx, acct))["AAPL"]["current_price"] == D("151.2")


async def test_marks_the_broker_omits_are_kept(scripted: Any) -> None:
    """Tradier positions carry no current price: a change must not null the stored mark."""
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    await account_sync.account_pass(ctx, acct)
    broker.hold("AAPL", "10")
    await account_sync.account_pass(ctx, acct)
    await ctx.pool.execute("UPDATE portfolio_positions SET current_price = 99, quote_at = now()")
    broker.hold("AAPL", "11")
    await account_sync.account_pass(ctx, acct)
    row = (await positions(ctx, acct))["AAPL"]
    assert (row["quantity"], row["current_price"]) == (D(11), D(99))


# -- an idle pass writes nothing ---------------------------------------------------------------------------


async def _flushed_stats(ctx: Context, table: str) -> tuple[int, int, int]:
    row = await ctx.pool.fetchrow(
        "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = $1 AND schemaname = 'syncd'",
        table,
    )
    assert row is not None
    return row["n_tup_ins"], row["n_tup_upd"], row["n_tup_del"]


async def test_idle_pass_writes_no_position_row(scripted: Any) -> None:
    # One pooled connection: the pass and pg_stat_force_next_flush() run in the same backend.
    ctx, (broker,) = await scripted(database={"pool_max": 1, "pool_min": 1})
    acct = only(ctx)
    for i in range(20):
        broker.hold(f"S{i:02d}", str(i + 1), current_price=D(i + 10))
    broker.hold("AAPL260116C00150000", "-3")
    await account_sync.account_pass(ctx, acct)
    before = await positions(ctx, acct)
    synced_before = (await account_row(ctx, acct))["last_synced_at"]

    async def accounts_updates() -> int:
        await ctx.pool.execute("SELECT pg_stat_force_next_flush()")
        return (await _flushed_stats(ctx, "accounts"))[1]

    baseline_acct_upd = await wait_for(accounts_updates, what="first pass's stats flushed")
    base = {t: await _flushed_stats(ctx, t) for t in ("portfolio_positions", "position_events", "account_snapshots")}

    stats = await account_sync.account_pass(ctx, acct)
    assert (stats["upserted"], stats["deleted"], stats["events"], stats["snapshot"]) == (0, 0, 0, 0)
    assert stats["unchanged"] == 21

    # The idle pass updates accounts.last_synced_at: once that shows in pg_stat, so does everything else it did.
    async def idle_pass_flushed() -> bool:
        return await accounts_updates() > baseline_acct_upd

    await wait_for(idle_pass_flushed, what="idle pass's stats flushed")
    for table, counts in base.items():
        assert await _flushed_stats(ctx, table) == counts, table
    after = await positions(ctx, acct)
    assert {s: (r["xmin"], r["updated_at"]) for s, r in after.items()} == {
        s: (r["xmin"], r["updated_at"]) for s, r in before.items()
    }
    assert (await account_row(ctx, acct))["last_synced_at"] > synced_before


# -- errors of every kind change nothing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "positions_only", "needle"),
    [
        (BrokerUnavailable("HTTP 503 after 4 attempts"), False, "BrokerUnavailable"),
        (BrokerUnavailable("connection reset"), True, "BrokerUnavailable"),
        (BadBrokerData("positions[3].qty is missing", field="positions[3].qty"), True, "BadBrokerData"),
        (BrokerAuthFailed("401 unauthorized"), False, "BrokerAuthFailed"),
        (None, False, "timed out"),
    ],
    ids=["unavailable", "positions-unavailable", "bad-data", "auth", "timeout"],
)
async def test_failed_fetch_changes_nothing_and_records_the_error(
    scripted: Any, failure: Any, positions_only: bool, needle: str
) -> None:
    ctx, (broker,) = await scripted(cycles={"broker_timeout_s": 0.05})
    acct = only(ctx)
    broker.hold("AAPL", "10")
    broker.hold("MSFT", "-2")
    ok = await run_pass(ctx, "accountSync", account_sync.account_pass, [acct])
    assert ok.ok
    before = await positions(ctx, acct)
    synced = (await account_row(ctx, acct))["last_synced_at"]

    broker.drop("MSFT")  # the broker's state moved on; a failed pass must not delete MSFT
    broker.hold("AAPL", "20")
    broker.balances = replace(broker.balances, equity=D(1))
    if isinstance(failure, BrokerError):
        broker.fail, broker.fail_positions_only = failure, positions_only
    else:
        broker.hang = True

    summary = await run_pass(ctx, "accountSync", account_sync.account_pass, [acct])
    assert not summary.ok
    assert needle in (summary.results[0].error or "")
    after = await positions(ctx, acct)
    assert {s: (r["xmin"], r["quantity"]) for s, r in after.items()} == {
        s: (r["xmin"], r["quantity"]) for s, r in before.items()
    }
    row = await account_row(ctx, acct)
    assert row["last_synced_at"] == synced
    assert row["last_error"].startswith("accountSync: ")
    assert needle in row["last_error"]
    assert len(await events(ctx, acct)) == 2
    assert await ctx.pool.fetchval("SELECT count(*) FROM account_snapshots") == 1
    run = await ctx.pool.fetchrow("SELECT ok, error FROM sync_runs ORDER BY id DESC LIMIT 1")
    assert run is not None
    assert (run["ok"], needle in run["error"]) == (False, True)

    # The next good pass catches up and clears the error.
    broker.fail, broker.hang = None, False
    broker.positions = [p for p in broker.positions if p.symbol in ("AAPL",)][:1]
    assert (await run_pass(ctx, "accountSync", account_sync.account_pass, [acct])).ok
    assert (await account_row(ctx, acct))["last_error"] is None
    assert set(await positions(ctx, acct)) == {"AAPL"}


async def test_one_failing_account_does_not_stop_the_others(scripted: Any) -> None:
    ctx, brokers = await scripted(n=3)
    for b in brokers:
        b.hold("AAPL", "1")
    brokers[1].fail = BrokerUnavailable("down")
    summary = await run_pass(ctx, "accountSync", account_sync.account_pass, list(ctx.accounts.values()))
    assert [r.ok for r in summary.results] == [True, False, True]
    counts = await ctx.pool.fetch(
        "SELECT a.name, count(p.symbol) AS n FROM accounts a LEFT JOIN portfolio_positions p ON p.account_id = a.id"
        " GROUP BY a.name ORDER BY a.name"
    )
    assert [(r["name"], r["n"]) for r in counts] == [("acct-0", 1), ("acct-1", 0), ("acct-2", 1)]


# -- pause, many accounts ---------------------------------------------------------------------------------------


async def test_paused_account_is_skipped(scripted: Any) -> None:
    ctx, brokers = await scripted(n=2)
    for b in brokers:
        b.hold("AAPL", "1")
    await ctx.pool.execute("UPDATE accounts SET active = false WHERE name = 'acct-1'")
    active = await ctx.active_accounts()
    assert [a.name for a in active] == ["acct-0"]
    await run_pass(ctx, "accountSync", account_sync.account_pass, active)
    assert brokers[1].request_count == 0
    assert (
        await ctx.pool.fetchval(
            "SELECT count(*) FROM portfolio_positions p JOIN accounts a ON a.id = p.account_id WHERE a.name = 'acct-1'"
        )
        == 0
    )
    await ctx.pool.execute("UPDATE accounts SET active = true WHERE name = 'acct-1'")
    assert [a.name for a in await ctx.active_accounts()] == ["acct-0", "acct-1"]


async def test_many_accounts_at_once(scripted: Any) -> None:
    n = 40
    ctx, brokers = await scripted(n=n, cycles={"concurrency": 16}, database={"pool_max": 8})
    for i, b in enumerate(brokers):
        for j in range(25):
            b.hold(f"S{j:02d}", str(i + j + 1))
    summary = await run_pass(ctx, "accountSync", account_sync.account_pass, list(ctx.accounts.values()))
    assert summary.ok
    assert await ctx.pool.fetchval("SELECT count(*) FROM portfolio_positions") == n * 25
    assert await ctx.pool.fetchval("SELECT count(*) FROM position_events") == n * 25
    assert all(b.request_count == 2 for b in brokers)
    again = await run_pass(ctx, "accountSync", account_sync.account_pass, list(ctx.accounts.values()))
    assert all(r.stats["upserted"] == 0 and r.stats["events"] == 0 for r in again.results)


async def test_concurrent_passes_over_one_account_write_events_once(scripted: Any) -> None:
    """Two replicas syncing one account at once: the advisory lock keeps events single."""
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    broker.hold("AAPL", "10")
    await asyncio.gather(account_sync.account_pass(ctx, acct), account_sync.account_pass(ctx, acct))
    assert await events(ctx, acct) == [("AAPL", "opened", D(0), D(10))]


# -- NOTIFY ------------------------------------------------------------------------------------------------------


async def test_notify_payloads(scripted: Any, dsn: str) -> None:
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    listener = await connect(DatabaseSettings(dsn=dsn))
    got: list[dict[str, Any]] = []
    await listener.add_listener("syncd_events", lambda *args: got.append(json.loads(args[3])))
    try:
        for i in range(600):  # many changes: one "*" payload stands for them
            broker.hold(f"SYM{i:04d}", "1")
        await account_sync.account_pass(ctx, acct)
        await wait_for(lambda: len(got) == 2, what="position and account notifications")
        assert sorted(got, key=lambda p: p["kind"]) == [
            {"kind": "account", "account": "acct-0", "key": "acct-0"},
            {"kind": "position", "account": "acct-0", "key": "*", "count": 600},
        ]

        got.clear()
        await account_sync.account_pass(ctx, acct)  # idle: nothing to say
        broker.drop("SYM0007")
        broker.hold("SYM0008", "2")
        await account_sync.account_pass(ctx, acct)
        await wait_for(lambda: len(got) == 2, what="notification of the two changes")
        assert sorted(got, key=lambda p: p["key"]) == [
            {"kind": "position", "account": "acct-0", "key": "SYM0007"},
            {"kind": "position", "account": "acct-0", "key": "SYM0008"},
        ]
    finally:
        await listener.close()


async def test_failed_pass_notifies_nothing(scripted: Any, dsn: str) -> None:
    ctx, (broker,) = await scripted()
    acct = only(ctx)
    listener = await connect(DatabaseSettings(dsn=dsn))
    got: list[str] = []
    await listener.add_listener("syncd_events", lambda *args: got.append(args[3]))
    try:
        broker.hold("AAPL", "1")
        broker.fail = BrokerUnavailable("down")
        with pytest.raises(BrokerUnavailable):
            await account_sync.account_pass(ctx, acct)
        broker.fail = None
        broker.hold("MSFT", "1")  # a marker pass after the failed one
        await account_sync.account_pass(ctx, acct)
        await wait_for(lambda: any("MSFT" in g for g in got), what="marker notification")
        assert all(json.loads(g)["kind"] in ("position", "account") for g in got)
        # the good pass wrote AAPL and MSFT and said so once each; the failed one said nothing
        assert sorted(json.loads(g)["key"] for g in got if json.loads(g)["kind"] == "position") == ["AAPL", "MSFT"]
    finally:
        await listener.close()


# -- auto import -------------------------------------------------------------------------------------------------


async def test_auto_import_makes_trades_after_the_pass(scripted: Any) -> None:
    ctx, (broker,) = await scripted(cycles={"auto_import": True})
    acct = only(ctx)
    broker.hold("AAPL260116C00150000", "2", "4.10")
    broker.hold("AAPL260116C00160000", "-2", "1.60")
    broker.hold("MSFT", "5", "300")
    stats = await account_sync.account_pass(ctx, acct)
    assert stats["imported"] == 2
    rows = await ctx.pool.fetch("SELECT strategy, source, status FROM trades ORDER BY strategy")
    assert [tuple(r) for r in rows] == [("BULL_CALL_DEBIT", "import", "open"), ("LONG_STOCK", "import", "open")]
    stats = await account_sync.account_pass(ctx, acct)
    assert stats["imported"] == 0


# -- against the simulator ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="function")
async def sim() -> AsyncIterator[Any]:
    from syncd.sim import SimConfig, start_simulator

    simulator = await start_simulator(SimConfig(seed=11, accounts=3, positions_per_account=6))
    yield simulator
    await simulator.stop()


def sim_accounts(sim: Any) -> list[AccountSettings]:
    return [
        sim.account_settings(0, broker="alpaca"),
        sim.account_settings(1, broker="tradier"),
        sim.account_settings(2, broker="alpaca"),
    ]


async def _book(ctx: Context, name: str) -> dict[str, Decimal]:
    rows = await ctx.pool.fetch(
        "SELECT p.symbol, p.quantity FROM portfolio_positions p JOIN accounts a ON a.id = p.account_id"
        " WHERE a.name = $1",
        name,
    )
    return {r["symbol"]: r["quantity"] for r in rows}


def _sim_book(sim: Any, i: int) -> dict[str, Decimal]:
    return {s: p.qty for s, p in sim.accounts[i].positions.items() if p.qty != 0}


@pytest.mark.parametrize("broker_index", [0, 1], ids=["alpaca", "tradier"])
async def test_simulator_mirror_follows_the_broker(make_context: Any, sim: Any, broker_index: int) -> None:
    cfg = sim_accounts(sim)[broker_index]
    async with make_context(accounts=[cfg]) as ctx:
        acct = ctx.accounts[cfg.name]
        first = await account_sync.account_pass(ctx, acct)
        assert first["positions"] == len(_sim_book(sim, broker_index)) > 0
        assert await _book(ctx, cfg.name) == _sim_book(sim, broker_index)

        idle = await account_sync.account_pass(ctx, acct)
        assert (idle["upserted"], idle["deleted"], idle["events"]) == (0, 0, 0)

        victim, held = next(iter(_sim_book(sim, broker_index).items()))
        sim.remove_position(broker_index, victim)
        sim.add_position(broker_index, "AAPL260116C00150000", 3, "4.20")
        stats = await account_sync.account_pass(ctx, acct)
        assert (stats["deleted"], stats["upserted"]) == (1, 1)
        assert await _book(ctx, cfg.name) == _sim_book(sim, broker_index)
        evs = await events(ctx, acct)
        assert (victim, "closed", held, D(0)) in evs
        assert ("AAPL260116C00150000", "opened", D(0), D(3)) in evs
        opt = (await positions(ctx, acct))["AAPL260116C00150000"]
        assert (opt["underlying"], opt["option_type"], opt["strike"], opt["multiplier"]) == (
            "AAPL",
            "call",
            D(150),
            D(100),
        )
        row = await account_row(ctx, acct)
        assert row["broker_account_id"]
        assert row["last_error"] is None


async def test_simulator_auth_failure_and_outage_change_nothing(make_context: Any, sim: Any) -> None:
    accounts = sim_accounts(sim)
    async with make_context(accounts=accounts, cycles={"broker_timeout_s": 0.5}) as ctx:
        everyone = list(ctx.accounts.values())
        assert (await run_pass(ctx, "accountSync", account_sync.account_pass, everyone)).ok
        books = {a.name: await _book(ctx, a.name) for a in everyone}

        sim.faults.fail_auth(0)
        sim.faults.fail_next("/v1/accounts", 503, count=50)  # Tradier: 5xx past every retry
        sim.remove_position(0, next(iter(_sim_book(sim, 0))))
        sim.remove_position(1, next(iter(_sim_book(sim, 1))))
        summary = await run_pass(ctx, "accountSync", account_sync.account_pass, everyone)
        assert [r.ok for r in summary.results] == [False, False, True]
        assert "BrokerAuthFailed" in (summary.results[0].error or "")
        assert "BrokerUnavailable" in (summary.results[1].error or "")
        for a in everyone[:2]:
            assert await _book(ctx, a.name) == books[a.name]
            assert (await account_row(ctx, a))["last_error"].startswith("accountSync: ")

        sim.faults.clear()
        sim.faults.fail_auth(0, on=False)
        assert (await run_pass(ctx, "accountSync", account_sync.account_pass, everyone)).ok
        for i, a in enumerate(everyone):
            assert await _book(ctx, a.name) == _sim_book(sim, i)
            assert (await account_row(ctx, a))["last_error"] is None


async def test_simulator_timeout_changes_nothing(make_context: Any, sim: Any) -> None:
    cfg = sim_accounts(sim)[0]
    async with make_context(accounts=[cfg], cycles={"broker_timeout_s": 0.2}) as ctx:
        acct = ctx.accounts[cfg.name]
        await account_sync.account_pass(ctx, acct)
        before = await positions(ctx, acct)
        sim.faults.latency_s = 5.0
        sim.remove_position(0, next(iter(_sim_book(sim, 0))))
        summary = await run_pass(ctx, "accountSync", account_sync.account_pass, [acct])
        assert not summary.ok
        assert "BrokerUnavailable" in (summary.results[0].error or "")
        assert {s: r["xmin"] for s, r in (await positions(ctx, acct)).items()} == {
            s: r["xmin"] for s, r in before.items()
        }
        sim.faults.latency_s = 0.0


# -- the sync-once command, as a subprocess ---------------------------------------------------------------------


def write_config(path: Any, dsn: str, accounts: Sequence[AccountSettings], **cycles: Any) -> Any:
    lines = [
        "[database]",
        f'dsn = "{dsn}"',
        "[log]",
        'level = "warning"',
        "[health]",
        'listen = ""',
        "[cycles]",
        *(f"{k} = {json.dumps(v)}" for k, v in cycles.items()),
    ]
    for a in accounts:
        lines += ["[[accounts]]", f'name = "{a.name}"', f'broker = "{a.broker}"', f'base_url = "{a.base_url}"']
        if a.broker == "alpaca":
            assert a.api_key is not None
            assert a.api_secret is not None
            lines += [
                f'api_key = "{a.api_key.get_secret_value()}"',
                f'api_secret = "{a.api_secret.get_secret_value()}"',
            ]
            if a.data_url:
                lines.append(f'data_url = "{a.data_url}"')
        else:
            assert a.token is not None
            lines += [f'token = "{a.token.get_secret_value()}"', f'account_id = "{a.account_id}"']
    path.write_text("\n".join(lines) + "\n")
    return path


async def run_cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncd", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_sync_once_cli(tmp_path: Any, empty_dsn: str, sim: Any) -> None:
    """sync-once migrates a fresh database, syncs every account, prints a line each, exits 0."""
    config = write_config(tmp_path / "syncd.toml", empty_dsn, sim_accounts(sim))
    code, out, err = await run_cli("--config", str(config), "sync-once", "--task", "account")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for line, name in zip(lines, ("sim-alpaca-0", "sim-tradier-1", "sim-alpaca-2"), strict=True):
        assert line.split()[:3] == [name, "accountSync", "ok"]
        assert "positions=6" in line

    conn = await asyncpg.connect(empty_dsn, server_settings={"search_path": "syncd"})
    try:
        assert await conn.fetchval("SELECT count(*) FROM portfolio_positions") == 18
        assert await conn.fetchval("SELECT count(*) FROM sync_runs WHERE task = 'accountSync' AND ok") == 3

        # One account paused, one failing: exit 1, the failing one named, the paused one skipped.
        await conn.execute("UPDATE accounts SET active = false WHERE name = 'sim-alpaca-2'")
        sim.faults.fail_auth(0)
        code, out, err = await run_cli("--config", str(config), "sync-once", "--task", "account", "--no-migrate")
        assert code == 1, err
        by_name = {ln.split()[0]: ln for ln in out.strip().splitlines()}
        assert "FAILED" in by_name["sim-alpaca-0"]
        assert "BrokerAuthFailed" in by_name["sim-alpaca-0"]
        assert by_name["sim-tradier-1"].split()[2] == "ok"
        assert "paused" in by_name["sim-alpaca-2"]
        assert await conn.fetchval("SELECT count(*) FROM portfolio_positions") == 18
        assert (await conn.fetchval("SELECT last_error FROM accounts WHERE name = 'sim-alpaca-0'")).startswith(
            "accountSync: BrokerAuthFailed"
        )

        # Only the named account; the failure gone: exit 0.
        sim.faults.fail_auth(0, on=False)
        code, out, _ = await run_cli(
            "--config", str(config), "sync-once", "--account", "sim-alpaca-0", "--task", "account"
        )
        assert code == 0
        assert [ln.split()[0] for ln in out.strip().splitlines()] == ["sim-alpaca-0"]
        assert await conn.fetchval("SELECT last_error FROM accounts WHERE name = 'sim-alpaca-0'") is None
    finally:
        await conn.close()


async def test_sync_once_cli_bad_arguments(tmp_path: Any, dsn: str, sim: Any) -> None:
    config = write_config(tmp_path / "syncd.toml", dsn, sim_accounts(sim)[:1])
    code, _, err = await run_cli("--config", str(config), "sync-once", "--account", "nope", "--no-migrate")
    assert code == 2
    assert "no account named nope" in err
    code, _, err = await run_cli("--config", str(config), "sync-once", "--task", "account,bogus", "--no-migrate")
    assert code == 2
    assert "unknown task" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[cycles]\nconcurrency = 0\n")
    code, _, err = await run_cli("--config", str(bad), "sync-once")
    assert code == 2
    assert "concurrency" in err


async def test_sync_once_cli_unreachable_broker_exits_1(tmp_path: Any, dsn: str) -> None:
    cfg = AccountSettings(
        name="nowhere", broker="alpaca", api_key="k-test", api_secret="s-test", base_url="http://127.0.0.1:9"
    )
    config = write_config(tmp_path / "syncd.toml", dsn, [cfg], broker_timeout_s=0.5)
    code, out, err = await run_cli("--config", str(config), "sync-once", "--task", "account", "--no-migrate")
    assert code == 1, err
    assert "FAILED" in out
    assert "k-test" not in out + err
    assert "s-test" not in out + err
