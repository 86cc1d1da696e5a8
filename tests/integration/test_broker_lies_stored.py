"""A lying broker answer stores nothing and sets ``accounts.last_error`` at once (issue 10 item 5), on real Postgres.

The adapters' refusals themselves are in tests/unit/test_broker_lies.py; here the whole
path: a pass (or a stream event) meets the lie, nothing of it reaches a table, and
``last_error`` says what was refused. The wire is aioresponses (the database is real).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from aioresponses import aioresponses

from syncd.brokers.types import Order, OrderClass, OrderStatus, OrderType, Side, TradeUpdate
from syncd.context import Context
from syncd.cycles import account_sync, trade_cycle
from syncd.daemon.passes import run_pass
from syncd.settings import AccountSettings
from syncd.trading.stream import _consume
from tests.unit import test_alpaca_wire as aw
from tests.unit import test_tradier_wire as tw
from tests.unit.aiohttp_mock import MockHTTP

ALPACA = AccountSettings(
    name="lies-a",
    broker="alpaca",
    api_key="k-lies",
    api_secret="s-lies",
    base_url="http://alpaca.invalid",
    data_url="http://alpaca.invalid",
)
TRADIER = AccountSettings(
    name="lies-t", broker="tradier", token="t-lies", account_id="VA1", base_url="http://tradier.invalid"
)


def u(base: str, path: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(base + path) + r"(\?.*)?$")


@pytest.fixture
def wire() -> Iterator[aioresponses]:
    with MockHTTP() as m:
        yield m


async def last_error(ctx: Context, name: str) -> str:
    return str(await ctx.pool.fetchval("SELECT last_error FROM accounts WHERE name = $1", name))


async def counts(ctx: Context) -> tuple[int, int, int]:
    return (
        await ctx.pool.fetchval("SELECT count(*) FROM portfolio_positions"),
        await ctx.pool.fetchval("SELECT count(*) FROM account_snapshots"),
        await ctx.pool.fetchval("SELECT count(*) FROM orders"),
    )


@pytest.mark.parametrize("kind", ["alpaca", "tradier"])
async def test_account_sync_stores_nothing_of_a_lie(make_context: Any, wire: aioresponses, kind: str) -> None:
    if kind == "alpaca":
        cfg = ALPACA
        wire.get(u("http://alpaca.invalid", "/v2/account"), payload=aw.ACCOUNT_JSON)
        wire.get(u("http://alpaca.invalid", "/v2/positions"), payload=[aw.position_json(avg_entry_price="-1")])
        needle = "avg_entry_price is negative"
    else:
        cfg = TRADIER
        base = "http://tradier.invalid/v1/accounts/VA1"
        wire.get(u(base, "/balances"), payload={"balances": {"total_equity": 100, "total_cash": 100}})
        wire.get(
            u(base, "/positions"),
            payload={
                "positions": {"position": {"cost_basis": 10, "id": 1, "symbol": "AAPL", "quantity": "1" + "0" * 29}}
            },
        )
        wire.get(u(base, "/orders"), payload={"orders": "null"})
        needle = "more digits than syncd keeps exactly"
    async with make_context(accounts=[cfg]) as ctx:
        summary = await run_pass(ctx, "accountSync", account_sync.account_pass, list(ctx.accounts.values()))
        assert not summary.ok
        error = await last_error(ctx, cfg.name)
        assert error.startswith("accountSync: BadBrokerData") and needle in error
        assert await counts(ctx) == (0, 0, 0)


MALFORMED_POSITIONS = {
    "reported-twice": (
        [aw.position_json(symbol="AAPL"), aw.position_json(symbol="AAPL")],
        [{"cost_basis": 10, "id": 1, "symbol": "AAPL", "quantity": 1}] * 2,
        "reported twice",
    ),
    "nan-quantity": (
        [aw.position_json(qty="NaN", qty_available="NaN")],
        [{"cost_basis": 10, "id": 1, "symbol": "AAPL", "quantity": "NaN"}],
        "positions[0].q",
    ),
    "empty-symbol": (
        [aw.position_json(symbol="")],
        [{"cost_basis": 10, "id": 1, "symbol": "", "quantity": 1}],
        "positions[0].symbol is missing",
    ),
}


@pytest.mark.parametrize("kind", ["alpaca", "tradier"])
@pytest.mark.parametrize("lie", sorted(MALFORMED_POSITIONS))
async def test_account_sync_stores_nothing_of_malformed_positions(
    make_context: Any, wire: aioresponses, kind: str, lie: str
) -> None:
    """Guards issue 12: the adapters' refusal (accountSync checks nothing again) still stores nothing."""
    alpaca_rows, tradier_rows, needle = MALFORMED_POSITIONS[lie]
    if kind == "alpaca":
        cfg = ALPACA
        wire.get(u("http://alpaca.invalid", "/v2/account"), payload=aw.ACCOUNT_JSON)
        wire.get(u("http://alpaca.invalid", "/v2/positions"), payload=alpaca_rows)
    else:
        cfg = TRADIER
        base = "http://tradier.invalid/v1/accounts/VA1"
        wire.get(u(base, "/balances"), payload={"balances": {"total_equity": 100, "total_cash": 100}})
        wire.get(u(base, "/positions"), payload={"positions": {"position": tradier_rows}})
        wire.get(u(base, "/orders"), payload={"orders": "null"})
    async with make_context(accounts=[cfg]) as ctx:
        summary = await run_pass(ctx, "accountSync", account_sync.account_pass, list(ctx.accounts.values()))
        assert not summary.ok
        error = await last_error(ctx, cfg.name)
        assert error.startswith("accountSync: BadBrokerData") and needle in error
        assert await counts(ctx) == (0, 0, 0)


async def test_account_sync_stores_nothing_of_a_non_occ_option(make_context: Any, wire: aioresponses) -> None:
    """Guards issue 12: Alpaca's option position with a non-OCC symbol is refused by the adapter, nothing stored."""
    wire.get(u("http://alpaca.invalid", "/v2/account"), payload=aw.ACCOUNT_JSON)
    option = aw.position_json(symbol="AAPL 150C", asset_class="us_option")
    wire.get(u("http://alpaca.invalid", "/v2/positions"), payload=[aw.position_json(symbol="MSFT"), option])
    async with make_context(accounts=[ALPACA]) as ctx:
        summary = await run_pass(ctx, "accountSync", account_sync.account_pass, list(ctx.accounts.values()))
        assert not summary.ok
        error = await last_error(ctx, ALPACA.name)
        assert error.startswith("accountSync: BadBrokerData") and "not an OCC option symbol" in error
        assert await counts(ctx) == (0, 0, 0)


@pytest.mark.parametrize("kind", ["alpaca", "tradier"])
async def test_trade_cycle_stores_nothing_of_a_lying_order_listing(
    make_context: Any, wire: aioresponses, kind: str
) -> None:
    if kind == "alpaca":
        cfg = ALPACA
        lie = aw.order_json(qty="10", filled_qty="11", status="partially_filled")
        wire.get(u("http://alpaca.invalid", "/v2/orders"), payload=[aw.order_json(), lie], repeat=True)
    else:
        cfg = TRADIER
        lie = tw.order_json(id=2, create_date="2099-01-01T00:00:00Z")
        wire.get(
            u("http://tradier.invalid/v1/accounts/VA1", "/orders"),
            payload={"orders": {"order": [tw.order_json(id=1), lie]}},
            repeat=True,
        )
    async with make_context(accounts=[cfg]) as ctx:
        summary = await run_pass(ctx, "tradeCycle", trade_cycle.account_pass, list(ctx.accounts.values()))
        assert not summary.ok
        assert (await last_error(ctx, cfg.name)).startswith("tradeCycle: BadBrokerData")
        assert await counts(ctx) == (0, 0, 0)  # not even the truthful order of the same answer


# -- the stream ---------------------------------------------------------------------------------------------


def _order(bid: str, qty: str, filled: str, status: OrderStatus, price: str | None = None) -> Order:
    now = dt.datetime.now(dt.UTC)
    return Order(
        broker_order_id=bid,
        client_order_id=None,
        symbol="AAPL",
        side=Side.BUY,
        type=OrderType.MARKET,
        order_class=OrderClass.SIMPLE,
        qty=Decimal(qty),
        filled_qty=Decimal(filled),
        status=status,
        filled_avg_price=Decimal(price) if price else None,
        submitted_at=now,
        updated_at=now,
    )


class StreamingBroker:
    """Yields the scripted trade updates, then ends (what _consume reads)."""

    kind = "alpaca"
    supports_stream = True
    request_count = 0

    def __init__(self, updates: list[TradeUpdate]) -> None:
        self.updates = updates

    async def trade_updates(self) -> AsyncIterator[TradeUpdate]:
        for update in self.updates:
            yield update


async def test_a_lying_stream_event_is_not_applied_and_sets_last_error_at_once(make_context: Any) -> None:
    now = dt.datetime.now(dt.UTC)
    lies = [
        TradeUpdate(
            "partial_fill",
            _order("o-lie-1", "10", "11", OrderStatus.PARTIALLY_FILLED, "5"),
            now,
            Decimal("5"),
            Decimal("11"),
        ),
        TradeUpdate("fill", _order("o-lie-2", "10", "10", OrderStatus.FILLED, "5"), now, Decimal("-5"), Decimal("10")),
        TradeUpdate(
            "fill",
            _order("o-lie-3", "10", "10", OrderStatus.FILLED, "5"),
            now + dt.timedelta(days=30),
            Decimal("5"),
            Decimal("10"),
        ),
    ]
    truth = TradeUpdate("fill", _order("o-true", "10", "10", OrderStatus.FILLED, "5"), now, Decimal("5"), Decimal("10"))
    async with make_context(accounts=[ALPACA]) as ctx:
        acct = ctx.accounts[ALPACA.name]
        acct = replace(acct, broker=StreamingBroker([*lies, truth]))
        await _consume(ctx, acct, None)
        stored = [r["broker_order_id"] for r in await ctx.pool.fetch("SELECT broker_order_id FROM orders")]
        assert stored == ["o-true"]
        error = await last_error(ctx, ALPACA.name)
        assert error.startswith("tradeCycle: stream event refused: BadBrokerData")
        assert "more than a day in the future" in error  # the last refusal's reason
