"""alpaca-py's own clients, unmodified, against the simulator: proof it speaks real Alpaca.

The synchronous ``TradingClient`` blocks, so it runs in a worker thread
(``asyncio.to_thread``) while the simulator serves on the test's event loop;
``TradingStream.run`` starts its own loop, so it gets a thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

import pytest
from alpaca.common.exceptions import APIError
from alpaca.data.historical.option import OptionHistoricalDataClient
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import OptionSnapshotRequest, StockLatestQuoteRequest, StockSnapshotRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.models import Clock, Order, Position, TradeAccount, TradeUpdate
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    OptionLegRequest,
)
from alpaca.trading.stream import TradingStream

from syncd.sim import Simulator
from tests.helpers import wait_for
from tests.simfixtures import sim_fixture

sim = sim_fixture(seed=7, accounts=2, positions_per_account=6)  # on the tests' loop: it serves while they run


def _client(sim: Simulator, i: int = 0) -> TradingClient:
    a = sim.accounts[i]
    return TradingClient(a.api_key, a.api_secret, paper=True, url_override=sim.url)


def _spread(sim: Simulator, i: int = 0) -> tuple[str, str]:
    """The long and the short leg of the account's initial vertical spread."""
    positions = sim.accounts[i].positions.values()
    short = next(p for p in positions if p.qty < 0 and len(p.symbol) > 10 and "C" in p.symbol[-9:])
    long = next(p for p in positions if p.qty == -short.qty and p.symbol[:-8] == short.symbol[:-8])
    return long.symbol, short.symbol


async def test_get_account(sim: Simulator) -> None:
    account = await asyncio.to_thread(_client(sim).get_account)
    assert isinstance(account, TradeAccount)
    assert account.account_number == sim.accounts[0].account_number
    assert account.cash is not None and Decimal(account.cash) == sim.accounts[0].cash
    assert account.equity is not None and Decimal(account.equity) > 0


async def test_get_all_positions_matches_the_book(sim: Simulator) -> None:
    positions = await asyncio.to_thread(_client(sim).get_all_positions)
    assert isinstance(positions, list)
    assert all(isinstance(p, Position) for p in positions)
    book = sim.accounts[0].positions
    assert {p.symbol: Decimal(p.qty) for p in positions} == {s: p.qty for s, p in book.items()}
    shorts = [p for p in positions if p.side == "short"]
    assert shorts and all(Decimal(p.qty) < 0 and Decimal(p.market_value or "0") <= 0 for p in shorts)
    long_leg, _ = _spread(sim)
    one = next(p for p in positions if p.symbol == long_leg)
    assert one.asset_class == "us_option" and one.qty_available == one.qty


async def test_submit_market_order_and_find_it_by_client_id(sim: Simulator) -> None:
    client = _client(sim)
    request = MarketOrderRequest(
        symbol="AAPL", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, client_order_id="syncd-mkt-1"
    )
    placed = await asyncio.to_thread(client.submit_order, request)
    assert isinstance(placed, Order)
    assert placed.client_order_id == "syncd-mkt-1" and placed.status == OrderStatus.NEW
    found = await asyncio.to_thread(client.get_order_by_client_id, "syncd-mkt-1")
    assert isinstance(found, Order)
    assert found.id == placed.id and found.status == OrderStatus.FILLED
    assert found.filled_qty == "3" and found.filled_avg_price is not None
    assert sim.accounts[0].positions["AAPL"].qty >= 3


async def test_limit_order_rests_then_cancel(sim: Simulator) -> None:
    client = _client(sim)
    quote = sim.market.quote("MSFT")
    assert quote is not None
    far = float((quote.bid * Decimal("0.5")).quantize(Decimal("0.01")))
    request = LimitOrderRequest(
        symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=far
    )
    placed = await asyncio.to_thread(client.submit_order, request)
    assert isinstance(placed, Order)
    await asyncio.to_thread(client.cancel_order_by_id, placed.id)
    after = await asyncio.to_thread(client.get_order_by_id, placed.id)
    assert isinstance(after, Order)
    assert after.status == OrderStatus.CANCELED and after.canceled_at is not None


async def test_submit_mleg_order(sim: Simulator) -> None:
    client = _client(sim)
    long_leg, short_leg = _spread(sim)
    request = LimitOrderRequest(
        qty=2,
        order_class=OrderClass.MLEG,
        time_in_force=TimeInForce.DAY,
        limit_price=50.0,  # a debit no vertical costs: fills at once
        legs=[
            OptionLegRequest(symbol=long_leg, ratio_qty=1, side=OrderSide.BUY),
            OptionLegRequest(symbol=short_leg, ratio_qty=1, side=OrderSide.SELL),
        ],
        client_order_id="syncd-mleg-1",
    )
    placed = await asyncio.to_thread(client.submit_order, request)
    assert isinstance(placed, Order)
    assert placed.order_class == OrderClass.MLEG and placed.symbol is None and placed.side is None
    assert placed.legs is not None and [leg.symbol for leg in placed.legs] == [long_leg, short_leg]
    found = await asyncio.to_thread(client.get_order_by_client_id, "syncd-mleg-1")
    assert isinstance(found, Order) and found.status == OrderStatus.FILLED
    nested = await asyncio.to_thread(client.get_orders, GetOrdersRequest(status=QueryOrderStatus.ALL, nested=True))
    assert isinstance(nested, list)
    assert [o.client_order_id for o in nested] == ["syncd-mleg-1"]


async def test_reused_client_order_id_is_422(sim: Simulator) -> None:
    client = _client(sim)
    request = MarketOrderRequest(
        symbol="KO", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, client_order_id="dup-1"
    )
    await asyncio.to_thread(client.submit_order, request)
    with pytest.raises(APIError) as err:
        await asyncio.to_thread(client.submit_order, request)
    assert err.value.status_code == 422 and err.value.code == 40010001
    assert "client_order_id" in err.value.message


async def test_insufficient_buying_power_is_403(sim: Simulator) -> None:
    request = MarketOrderRequest(symbol="AAPL", qty=1_000_000, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
    with pytest.raises(APIError) as err:
        await asyncio.to_thread(_client(sim).submit_order, request)
    assert err.value.status_code == 403 and err.value.code == 40310000
    assert err.value.message == "insufficient buying power"


async def test_close_position_partially(sim: Simulator) -> None:
    client = _client(sim)
    long_leg, _ = _spread(sim)
    before = sim.accounts[0].positions[long_leg].qty
    order = await asyncio.to_thread(client.close_position, long_leg, ClosePositionRequest(qty="1"))
    assert isinstance(order, Order) and order.side == OrderSide.SELL
    assert sim.accounts[0].positions[long_leg].qty == before - 1


async def test_get_clock(sim: Simulator) -> None:
    clock = await asyncio.to_thread(_client(sim).get_clock)
    assert isinstance(clock, Clock)
    assert clock.is_open is True and clock.next_close > clock.timestamp


async def test_bad_credentials_are_401(sim: Simulator) -> None:
    client = TradingClient("PKNOTAKEY00000000000", "nope", paper=True, url_override=sim.url)
    with pytest.raises(APIError) as err:
        await asyncio.to_thread(client.get_account)
    assert err.value.status_code == 401


async def test_market_data_clients(sim: Simulator) -> None:
    a = sim.accounts[0]
    long_leg, short_leg = _spread(sim)
    stocks = StockHistoricalDataClient(a.api_key, a.api_secret, url_override=sim.url)
    snaps: Any = await asyncio.to_thread(
        stocks.get_stock_snapshot, StockSnapshotRequest(symbol_or_symbols=["AAPL", "SPY"])
    )
    assert set(snaps) == {"AAPL", "SPY"} and snaps["AAPL"].latest_quote.ask_price > 0
    quotes: Any = await asyncio.to_thread(
        stocks.get_stock_latest_quote, StockLatestQuoteRequest(symbol_or_symbols="MSFT")
    )
    assert quotes["MSFT"].bid_price > 0
    options = OptionHistoricalDataClient(a.api_key, a.api_secret, url_override=sim.url)
    osnaps: Any = await asyncio.to_thread(
        options.get_option_snapshot, OptionSnapshotRequest(symbol_or_symbols=[long_leg, short_leg])
    )
    assert set(osnaps) == {long_leg, short_leg}
    assert osnaps[long_leg].greeks.delta > osnaps[short_leg].greeks.delta > 0
    assert osnaps[long_leg].implied_volatility > 0


async def test_trading_stream_receives_fills(sim: Simulator) -> None:
    """TradingStream (JSON auth + listen) gets a stock fill and a multi-leg fill it can parse.

    Regression guard: an mleg event carries empty ``symbol``/``side`` at the top level,
    which once broke alpaca-py's stream handler.
    """
    a = sim.accounts[0]
    stream = TradingStream(a.api_key, a.api_secret, paper=True, url_override=sim.stream_url)
    received: list[TradeUpdate] = []
    lock = threading.Lock()

    async def on_update(update: TradeUpdate) -> None:
        with lock:
            received.append(update)

    def events(kind: str) -> list[TradeUpdate]:
        with lock:
            return [u for u in received if u.event == kind]

    stream.subscribe_trade_updates(on_update)
    thread = threading.Thread(target=stream.run, name="alpaca-trading-stream", daemon=True)
    thread.start()
    try:
        await wait_for(lambda: sim.streams.listening(0), what="TradingStream listening")
        order = sim.place_outside_order(0, "NVDA", "buy", 4, client_order_id="by-hand-1")
        fills = await wait_for(lambda: events("fill"), what="a fill event")
        fill = fills[0]
        assert str(fill.order.id) == order.id and fill.order.client_order_id == "by-hand-1"
        assert fill.qty == 4 and fill.price is not None and fill.price > 0
        assert fill.position_qty == float(sim.accounts[0].positions["NVDA"].qty)
        assert fill.execution_id is not None

        long_leg, short_leg = _spread(sim)
        mleg = sim.place_outside_order(0, legs=[(long_leg, "buy", 1), (short_leg, "sell", 1)], qty=1)
        mleg_fills = await wait_for(lambda: [u for u in events("fill") if str(u.order.id) == mleg.id], what="mleg fill")
        parsed = mleg_fills[0].order
        assert parsed.order_class == OrderClass.MLEG and parsed.symbol is None
        assert parsed.legs is not None and len(parsed.legs) == 2
    finally:
        await asyncio.to_thread(stream.stop)
        await sim.disconnect_streams()
        await asyncio.to_thread(thread.join, 15)
    assert not thread.is_alive()
