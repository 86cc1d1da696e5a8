"""One conformance suite, run against every adapter: Alpaca + simulator, Tradier + simulator.

Each case drives the adapter through the ``Broker`` Protocol only, over loopback HTTP
to the built-in simulator, and checks the answer against the simulator's own book.
Nothing waits by sleeping: conditions are polled with a deadline (``wait_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
import pytest
import pytest_asyncio

from syncd.brokers.alpaca import AlpacaBroker
from syncd.brokers.base import Broker, BrokerAuthFailed, BrokerRejected, OrderNotFound
from syncd.brokers.factory import build_broker
from syncd.brokers.occ import option_spec_or_none
from syncd.brokers.types import (
    AssetClass,
    Intent,
    LegRequest,
    Order,
    OrderClass,
    OrderRequest,
    OrderStatus,
    OrderType,
    ReplaceRequest,
    Side,
    TradeUpdate,
)
from syncd.sim import Simulator
from tests.helpers import wait_for
from tests.simfixtures import sim_fixture

CENT = Decimal("0.01")


@dataclass
class Env:
    kind: str
    sim: Simulator
    broker: Broker
    session: aiohttp.ClientSession
    hook: list[tuple[str, str, str]]

    @property
    def account(self):  # type: ignore[no-untyped-def]
        return self.sim.accounts[0]


def _add_stocks(s: Simulator) -> None:
    """Seed 7 gives account 0 options only (one vertical spread among them); add stocks, long and short."""
    s.add_position(0, "AAPL", 10, "150.00")
    s.add_position(0, "TSLA", -5, "240.00")


sim = sim_fixture(seed=7, accounts=2, positions_per_account=6, setup=_add_stocks)


@pytest_asyncio.fixture(loop_scope="function", params=["alpaca", "tradier"])
async def env(request: pytest.FixtureRequest, sim: Simulator) -> AsyncIterator[Env]:
    hook: list[tuple[str, str, str]] = []
    async with aiohttp.ClientSession() as session:
        broker = build_broker(
            sim.account_settings(0, broker=request.param),
            session=session,
            timeout_s=5,
            on_request=lambda *a: hook.append(a),
        )
        yield Env(request.param, sim, broker, session, hook)
        await broker.aclose()


def cid(prefix: str = "conf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def spread_legs(sim: Simulator) -> tuple[str, str]:
    """The long and short leg of account 0's initial vertical call spread."""
    positions = list(sim.accounts[0].positions.values())
    short = next(p for p in positions if p.qty < 0 and option_spec_or_none(p.symbol) and p.symbol[-9] == "C")
    long = next(p for p in positions if p.qty == -short.qty and p.symbol[:-8] == short.symbol[:-8])
    return long.symbol, short.symbol


async def settled(broker: Broker, order_id: str, *statuses: OrderStatus) -> Order:
    async def check() -> Order | None:
        order = await broker.get_order(order_id)
        return order if order.status in statuses else None

    return await wait_for(check, timeout=10, what=f"order {order_id} reaching {statuses}")


# -- account and positions --------------------------------------------------------------


async def test_protocol(env: Env) -> None:
    assert isinstance(env.broker, Broker)
    assert env.broker.kind == env.kind
    assert env.broker.supports_stream  # Alpaca trade_updates, Tradier account events


async def test_get_account(env: Env) -> None:
    bal = await env.broker.get_account()
    want = env.sim.exchange.balances(env.account)
    expected_id = env.account.account_number if env.kind == "alpaca" else env.account.tradier_account_id
    assert bal.broker_account_id == expected_id
    assert abs(bal.cash - want.cash) <= CENT
    assert abs(bal.equity - want.equity) <= CENT
    assert abs(bal.long_market_value - want.long_market_value) <= CENT
    assert bal.buying_power >= 0


async def test_list_positions_stocks_and_options(env: Env) -> None:
    positions = {p.symbol: p for p in await env.broker.list_positions()}
    book = env.account.positions
    assert set(positions) == set(book)
    for symbol, sim_pos in book.items():
        pos = positions[symbol]
        assert pos.quantity == sim_pos.qty, symbol
        assert abs(pos.avg_entry_price - sim_pos.avg_entry) <= CENT, symbol
        assert abs(pos.qty_available) <= abs(pos.quantity)
        spec = option_spec_or_none(symbol)
        if spec is None:
            assert pos.asset_class == AssetClass.US_EQUITY and pos.option is None
        else:
            assert pos.asset_class == AssetClass.US_OPTION
            assert pos.option == spec and pos.multiplier == 100
    assert any(p.option for p in positions.values()) and any(not p.option for p in positions.values())
    assert any(p.quantity < 0 for p in positions.values())  # the spread's short leg


async def test_qty_available_excludes_working_closing_orders(env: Env) -> None:
    stock = next(p for p in await env.broker.list_positions() if p.option is None and p.quantity >= 2)
    far = (stock.current_price or stock.avg_entry_price) * 10
    await env.broker.submit_order(
        OrderRequest(
            cid(),
            qty=Decimal(1),
            type=OrderType.LIMIT,
            limit_price=far.quantize(CENT),
            symbol=stock.symbol,
            side=Side.SELL,
            intent=Intent.CLOSE,
        )
    )
    after = {p.symbol: p for p in await env.broker.list_positions()}[stock.symbol]
    assert after.qty_available == stock.qty_available - 1


# -- orders ----------------------------------------------------------------------------


async def test_submit_market_then_get_order_and_position(env: Env) -> None:
    before = {p.symbol: p.quantity for p in await env.broker.list_positions()}
    client_id = cid("mkt")
    order = await env.broker.submit_order(OrderRequest(client_id, qty=Decimal(3), symbol="MSFT", side=Side.BUY))
    assert order.client_order_id == client_id
    assert order.symbol == "MSFT" and order.side == Side.BUY and order.type == OrderType.MARKET
    filled = await settled(env.broker, order.broker_order_id, OrderStatus.FILLED)
    assert filled.filled_qty == 3
    assert filled.filled_avg_price is not None and filled.filled_avg_price > 0
    after = {p.symbol: p.quantity for p in await env.broker.list_positions()}
    assert after["MSFT"] == before.get("MSFT", Decimal(0)) + 3


async def test_submit_limit_find_by_client_id_and_cancel(env: Env) -> None:
    client_id = cid("lmt")
    order = await env.broker.submit_order(
        OrderRequest(
            client_id, qty=Decimal(1), type=OrderType.LIMIT, limit_price=Decimal("1.00"), symbol="AAPL", side=Side.BUY
        )
    )
    assert order.limit_price == Decimal("1.00")
    assert not order.status.is_terminal
    found = await env.broker.get_order_by_client_id(client_id)
    assert found is not None and found.broker_order_id == order.broker_order_id
    await env.broker.cancel_order(order.broker_order_id)
    canceled = await settled(env.broker, order.broker_order_id, OrderStatus.CANCELED)
    assert canceled.filled_qty == 0


async def test_replace_a_working_limit_order(env: Env) -> None:
    """Alpaca answers a new order that replaces the old; Tradier changes the order in place."""
    placed = await env.broker.submit_order(
        OrderRequest(cid("rep"), qty=Decimal(2), type=OrderType.LIMIT, limit_price=Decimal("1.00"), symbol="AAPL",
                     side=Side.BUY)
    )  # fmt: skip
    change = ReplaceRequest(placed.broker_order_id, cid("rep"), limit_price=Decimal("1.10"))
    now = await env.broker.replace_order(change)
    assert now.limit_price == Decimal("1.10") and not now.status.is_terminal
    old = await env.broker.get_order(placed.broker_order_id)
    if env.kind == "alpaca":
        assert now.broker_order_id != placed.broker_order_id and now.replaces == placed.broker_order_id
        assert now.client_order_id == change.client_order_id and now.qty == Decimal(2)
        assert old.status == OrderStatus.REPLACED and old.replaced_by == now.broker_order_id
    else:
        assert now.broker_order_id == placed.broker_order_id and old.limit_price == Decimal("1.10")
    await env.broker.cancel_order(now.broker_order_id)
    await settled(env.broker, now.broker_order_id, OrderStatus.CANCELED)
    with pytest.raises(BrokerRejected):  # no longer working: the broker's refusal, with its reason
        await env.broker.replace_order(ReplaceRequest(now.broker_order_id, cid("rep"), limit_price=Decimal("1.2")))


async def test_fill_price_arriving_after_filled_status(env: Env) -> None:
    """Tradier quirk: the first read of a just-filled order shows avg_fill_price 0 -- unknown, never 0."""
    env.sim.faults.tradier_late_fill_price = True
    order = await env.broker.submit_order(OrderRequest(cid("late"), qty=Decimal(1), symbol="AAPL", side=Side.BUY))
    first = await settled(env.broker, order.broker_order_id, OrderStatus.FILLED)
    assert first.filled_avg_price is None or first.filled_avg_price > 0
    later = await wait_for(lambda: _priced(env.broker, order.broker_order_id), timeout=10, what="the fill price")
    assert later.filled_avg_price is not None and later.filled_avg_price > 0


async def _priced(broker: Broker, order_id: str) -> Order | None:
    order = await broker.get_order(order_id)
    return order if order.filled_avg_price is not None else None


async def test_get_order_by_client_id_not_found(env: Env) -> None:
    assert await env.broker.get_order_by_client_id(cid("never")) is None


async def test_get_unknown_order(env: Env) -> None:
    unknown = str(uuid.uuid4()) if env.kind == "alpaca" else "999999999"
    with pytest.raises(OrderNotFound):
        await env.broker.get_order(unknown)


async def test_reused_client_id_is_rejected(env: Env) -> None:
    client_id = cid("dup")
    await env.broker.submit_order(OrderRequest(client_id, qty=Decimal(1), symbol="AAPL", side=Side.BUY))
    if env.kind == "tradier":
        pytest.skip("Tradier does not enforce unique tags; syncd looks the tag up before any retry")
    with pytest.raises(BrokerRejected):
        await env.broker.submit_order(OrderRequest(client_id, qty=Decimal(1), symbol="AAPL", side=Side.BUY))


async def test_submit_mleg_debit_spread(env: Env) -> None:
    long_leg, short_leg = spread_legs(env.sim)
    before = {p.symbol: p.quantity for p in await env.broker.list_positions()}
    client_id = cid("mleg")
    order = await env.broker.submit_order(
        OrderRequest(
            client_id,
            qty=Decimal(2),
            type=OrderType.MARKET,
            legs=(LegRequest(long_leg, Side.BUY), LegRequest(short_leg, Side.SELL)),
        )
    )
    assert order.order_class == OrderClass.MLEG
    assert order.symbol == option_spec_or_none(long_leg).underlying  # type: ignore[union-attr]
    filled = await settled(env.broker, order.broker_order_id, OrderStatus.FILLED)
    assert {leg.symbol for leg in filled.legs} == {long_leg, short_leg}
    assert {(leg.symbol, leg.side) for leg in filled.legs} == {(long_leg, Side.BUY), (short_leg, Side.SELL)}
    assert all(leg.ratio_qty == 1 for leg in filled.legs)
    after = {p.symbol: p.quantity for p in await env.broker.list_positions()}
    assert after[long_leg] == before[long_leg] + 2
    assert after[short_leg] == before[short_leg] - 2
    by_client = await env.broker.get_order_by_client_id(client_id)
    assert by_client is not None and len(by_client.legs) == 2


async def test_list_orders_since(env: Env) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    ids = [cid("list") for _ in range(3)]
    for client_id in ids:
        await env.broker.submit_order(OrderRequest(client_id, qty=Decimal(1), symbol="NVDA", side=Side.BUY))
    orders = await env.broker.list_orders("all", since=start)
    assert [o.client_order_id for o in orders if o.client_order_id in ids] == ids  # oldest first
    later = await env.broker.list_orders("all", since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert not [o for o in later if o.client_order_id in ids]
    open_ids = {o.client_order_id for o in await env.broker.list_orders("open")}
    closed_ids = {o.client_order_id for o in await env.broker.list_orders("closed")}
    for client_id in ids:
        assert (client_id in open_ids) != (client_id in closed_ids)


# -- market data ----------------------------------------------------------------------------


async def test_get_quotes_batched(env: Env) -> None:
    symbols = [p.symbol for p in await env.broker.list_positions()] + ["AAPL", "MSFT", "SPY"]
    before = env.sim.request_count
    quotes = await env.broker.get_quotes(symbols)
    assert set(symbols) <= set(quotes)
    for symbol in symbols:
        q = quotes[symbol]
        assert q.bid is not None and q.ask is not None and 0 < q.bid <= q.ask, symbol
        if option_spec_or_none(symbol):
            assert q.greeks is not None and q.greeks.delta is not None, symbol
    assert env.sim.request_count - before <= 2  # one request per kind, not one per symbol


async def test_get_quotes_unknown_symbol_is_absent(env: Env) -> None:
    quotes = await env.broker.get_quotes(["AAPL", "ZZZZZ"])
    assert "AAPL" in quotes and "ZZZZZ" not in quotes


async def test_get_clock(env: Env) -> None:
    clock = await env.broker.get_clock()
    assert clock.is_open is True
    assert clock.next_close > clock.timestamp
    assert clock.next_open > clock.timestamp
    env.sim.set_market_open(False)
    assert (await env.broker.get_clock()).is_open is False


async def test_metrics_hook_sees_route_templates(env: Env) -> None:
    order = await env.broker.submit_order(OrderRequest(cid(), qty=Decimal(1), symbol="AAPL", side=Side.BUY))
    await env.broker.get_order(order.broker_order_id)
    endpoints = {e for _, e, _ in env.hook}
    assert all(order.broker_order_id not in e for e in endpoints)
    assert all(b == env.kind for b, _, _ in env.hook)
    assert env.broker.request_count == len(env.hook)


# -- streams ------------------------------------------------------------------------------


async def _collect(it: AsyncIterator[TradeUpdate], out: list[TradeUpdate]) -> None:
    async for update in it:
        out.append(update)


async def test_trade_updates(env: Env) -> None:
    hub = env.sim.streams if env.kind == "alpaca" else env.sim.tradier_events
    updates: list[TradeUpdate] = []
    task = asyncio.create_task(_collect(env.broker.trade_updates(), updates))
    try:
        if env.kind == "alpaca":
            await wait_for(lambda: env.sim.streams.listening(0), timeout=10, what="stream listening")
        else:
            await wait_for(lambda: env.sim.tradier_events.connected(0), timeout=10, what="account events subscribed")
        client_id = cid("stream")
        await env.broker.submit_order(OrderRequest(client_id, qty=Decimal(2), symbol="AAPL", side=Side.BUY))
        fill = await wait_for(
            lambda: next((u for u in updates if u.order.client_order_id == client_id and u.event == "fill"), None),
            timeout=10,
            what="fill event",
        )
        assert fill.qty == 2 and fill.price is not None and fill.price > 0
        assert fill.order.status == OrderStatus.FILLED and fill.order.filled_qty == 2
        assert fill.order.symbol == "AAPL" and fill.order.side == Side.BUY
        if env.kind == "alpaca":
            assert fill.position_qty is not None
        else:
            assert fill.cumulative and fill.order.filled_avg_price is not None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert hub.connected(0) == 0 or await wait_for(lambda: hub.connected(0) == 0, timeout=5, what="stream closed")


async def test_trade_updates_reconnects_and_keeps_one_connection(sim: Simulator) -> None:
    """Alpaca allows one trade_updates connection per account: we reconnect (jittered backoff), never double up."""
    async with aiohttp.ClientSession() as session:
        broker = AlpacaBroker(sim.account_settings(0), session=session, timeout_s=5, stream_backoff=(0.01, 0.05))
        updates: list[TradeUpdate] = []
        task = asyncio.create_task(_collect(broker.trade_updates(), updates))
        try:
            await wait_for(lambda: sim.streams.listening(0), timeout=10, what="first connection")
            assert await sim.disconnect_streams(0) == 1
            await wait_for(lambda: sim.streams.listening(0), timeout=10, what="reconnected")
            assert sim.streams.connected() == 1
            client_id = cid("again")
            await broker.submit_order(OrderRequest(client_id, qty=Decimal(1), symbol="AMD", side=Side.BUY))
            await wait_for(
                lambda: any(u.order.client_order_id == client_id and u.event == "fill" for u in updates),
                timeout=10,
                what="fill after reconnect",
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_trade_updates_mleg_fill_carries_legs(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as session:
        broker = build_broker(sim.account_settings(0), session=session, timeout_s=5)
        updates: list[TradeUpdate] = []
        task = asyncio.create_task(_collect(broker.trade_updates(), updates))
        try:
            await wait_for(lambda: sim.streams.listening(0), timeout=10, what="stream listening")
            long_leg, short_leg = spread_legs(sim)
            client_id = cid("smleg")
            await broker.submit_order(
                OrderRequest(
                    client_id, qty=Decimal(1), legs=(LegRequest(long_leg, Side.BUY), LegRequest(short_leg, Side.SELL))
                )
            )
            fill = await wait_for(
                lambda: next((u for u in updates if u.order.client_order_id == client_id and u.event == "fill"), None),
                timeout=10,
                what="mleg fill event",
            )
            assert fill.order.order_class == OrderClass.MLEG
            assert {leg.symbol for leg in fill.order.legs} == {long_leg, short_leg}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_trade_updates_refused_login_ends_with_auth_failure(sim: Simulator) -> None:
    """A login refused several times in a row (wrong keys) ends the iterator with BrokerAuthFailed."""
    sim.faults.fail_auth(0)
    async with aiohttp.ClientSession() as session:
        broker = AlpacaBroker(sim.account_settings(0), session=session, timeout_s=5, stream_backoff=(0.01, 0.02))
        with pytest.raises(BrokerAuthFailed, match="login refused"):
            await asyncio.wait_for(anext(broker.trade_updates()), timeout=10)
    assert sim.streams.connected(0) == 0
