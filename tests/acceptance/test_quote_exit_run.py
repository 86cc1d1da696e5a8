"""``syncd run`` closes a trade on a live quote: a stop-loss crossed at the simulator is placed within a second.

monitorCycle and tradeCycle run every 600 s here (their first passes happen at start-up, before the
trade exists), so the close order can only come from the live-quote path (``syncd.daemon.quotes``).
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from syncd.sim import Simulator
from tests.acceptance.conftest import DaemonFactory, fetch, fetchval, run_cli
from tests.helpers import wait_for


@pytest.mark.slow
async def test_a_quote_move_closes_the_trade_within_a_second(
    sim: Simulator, dsn: str, daemon_factory: DaemonFactory
) -> None:
    sim.add_position(0, "AAPL", 10, "100.00")
    sim.set_price("AAPL", "100.00", "100.02")
    account = sim.account_settings(0, "alpaca")
    daemon = daemon_factory(
        [account],
        dsn=dsn,
        cycles={"monitor_interval_s": 600, "trade_interval_s": 600, "closed_market_interval_s": 600},
        trading={"enabled": True, "auto_exits": True},
    )
    await daemon.start()

    async def mirrored() -> bool:
        return bool(await fetchval(dsn, "SELECT count(*) FROM portfolio_positions WHERE symbol = 'AAPL'"))

    await wait_for(mirrored, timeout=30, what="accountSync mirrored AAPL")
    account_id = await fetchval(dsn, "SELECT id FROM accounts WHERE name = $1", account.name)
    trade_id = await fetchval(
        dsn,
        """INSERT INTO trades (account_id, symbol, strategy, status, quantity, entry_price, stop_loss_pct, opened_at)
           VALUES ($1, 'AAPL', 'LONG_STOCK', 'open', 10, 100, 5, now()) RETURNING id""",
        account_id,
    )
    await fetchval(
        dsn, "INSERT INTO trade_legs (trade_id, leg_index, symbol, side) VALUES ($1, 0, 'AAPL', 'buy')", trade_id
    )
    await wait_for(lambda: "AAPL" in sim.quotes.subscribed(), timeout=15, what="the daemon subscribed AAPL")

    def placed() -> list[object]:
        return [o for o in sim.account(0).orders if o.source != "outside"]

    assert placed() == []
    started = time.monotonic()
    sim.set_price("AAPL", "94.00", "94.02")  # -6 %: past the 5 % stop-loss
    await wait_for(placed, timeout=1.0, what="the close order at the simulator within a second of the quote")
    elapsed = time.monotonic() - started
    order = placed()[0]
    assert (order.symbol, order.side, order.qty) == ("AAPL", "sell", Decimal(10))  # type: ignore[attr-defined]
    print(f"quote to exit order at the simulator: {elapsed * 1000:.0f} ms")

    rows = await fetch(dsn, "SELECT kind, state FROM order_requests WHERE trade_id = $1", trade_id)
    assert [r["kind"] for r in rows] == ["close"]

    async def stream_shown() -> dict[str, Any] | None:
        # /healthz is served from a snapshot renewed every second: the stream shows up in the next one.
        status, body = await daemon.healthz() or (0, {})
        stocks = (body.get("quote_streams") or {}).get(account.name, {}).get("alpaca-stocks") or {}
        shown = status == 200 and stocks.get("connected") and stocks.get("last_event_age_s") is not None
        return body if shown else None

    await wait_for(stream_shown, timeout=10, what="/healthz showing the connected quote stream")
    code, out, _err = await run_cli("health", "--url", daemon.health_url)
    assert code == 0 and f"quotes {account.name}/alpaca-stocks: connected" in out
    _status, metrics = await daemon.get("/metrics")
    assert f'syncd_quote_exit_latency_seconds_count{{account="{account.name}"}} 1' in metrics
    assert await daemon.stop(timeout=10) == 0
    events = [e["event"] for e in daemon.events()]
    assert "quote_exit_placed" in events and "quote_stream_connected" in events
    for secret in account.secret_values():
        assert secret not in daemon.stderr() and secret not in daemon.stdout()
