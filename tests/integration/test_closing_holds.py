"""One definition of what working closing orders already hold (sql/0006_unify_holds.sql).

The outbox (``outbox_close_inputs``, when it places a close) and monitorCycle
(``v_trade_leg_positions`` / ``v_trade_monitor``) read the same view, so for every case here
the two must agree, and agree with the rules:

* working: ``order_is_working`` (stopped, suspended and pending_review included), for a leg
  its parent too;
* closing: intent ``close``, role ``exit`` (on the parent for a leg), or the reducing side;
* an order with legs holds through its legs; a leg reported with qty 0 holds parent x ratio.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from syncd.db import load_queries

D = Decimal
CALL = "AAPL260116C00150000"
SHORT_CALL = "AAPL260116C00160000"


async def _account(pool: asyncpg.Pool[Any]) -> int:
    account_id: int = await pool.fetchval("INSERT INTO accounts (name, broker) VALUES ('holds', 'alpaca') RETURNING id")
    return account_id


async def _position(pool: asyncpg.Pool[Any], account_id: int, symbol: str, qty: int) -> None:
    option = len(symbol) > 6
    await pool.execute(
        """INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, option_type, strike,
                                            expiration, multiplier, quantity)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        account_id,
        symbol,
        "us_option" if option else "us_equity",
        symbol[:-15] if option else symbol,
        "call" if option else None,
        D(symbol[-8:]) / 1000 if option else None,
        dt.date(2026, 1, 16) if option else None,
        D(100) if option else D(1),
        D(qty),
    )


async def _trade(
    pool: asyncpg.Pool[Any],
    account_id: int,
    legs: list[tuple[str, str]] | None,
    symbol: str = "AAPL",
    strategy: str = "LONG_STOCK",
) -> int:
    trade_id: int = await pool.fetchval(
        """INSERT INTO trades (account_id, symbol, strategy, status, quantity)
           VALUES ($1, $2, $3, 'open', 1) RETURNING id""",
        account_id,
        symbol,
        strategy,
    )
    for i, (sym, side) in enumerate(legs or []):
        await pool.execute(
            "INSERT INTO trade_legs (trade_id, leg_index, symbol, side, ratio) VALUES ($1, $2, $3, $4, 1)",
            trade_id,
            i,
            sym,
            side,
        )
    return trade_id


async def _order(
    pool: asyncpg.Pool[Any],
    account_id: int,
    bid: str,
    symbol: str,
    *,
    side: str | None,
    qty: int,
    status: str = "new",
    filled: int = 0,
    intent: str | None = None,
    role: str | None = None,
    trade_id: int | None = None,
    parent_id: int | None = None,
    order_class: str = "simple",
    ratio: int | None = None,
) -> int:
    order_id: int = await pool.fetchval(
        """INSERT INTO orders (account_id, broker_order_id, symbol, side, qty, filled_qty, status, intent,
                               role, trade_id, parent_id, order_class, ratio_qty)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id""",
        account_id,
        bid,
        symbol,
        side,
        D(qty),
        D(filled),
        status,
        intent,
        role,
        trade_id,
        parent_id,
        order_class,
        ratio,
    )
    return order_id


async def _committed(pool: asyncpg.Pool[Any], account_id: int, trade_id: int) -> dict[str, Decimal]:
    """What the outbox sees per leg, checked against what the monitor's view sees."""
    q = load_queries()
    outbox = {r["symbol"]: r["committed"] for r in await pool.fetch(q["outbox_close_inputs"], trade_id, account_id)}
    monitor = {
        r["symbol"]: r["committed_quantity"]
        for r in await pool.fetch(
            "SELECT symbol, committed_quantity FROM v_trade_leg_positions WHERE trade_id = $1", trade_id
        )
    }
    assert outbox == monitor
    return outbox


async def test_every_working_status_holds_and_terminal_ones_do_not(db_pool: asyncpg.Pool[Any]) -> None:
    acct = await _account(db_pool)
    await _position(db_pool, acct, "AAPL", 100)
    tid = await _trade(db_pool, acct, [("AAPL", "buy")])
    for i, status in enumerate(["stopped", "suspended", "pending_review", "new", "filled", "canceled"]):
        await _order(db_pool, acct, f"o{i}", "AAPL", side="sell", qty=1, status=status)
    assert await _committed(db_pool, acct, tid) == {"AAPL": 4}


async def test_role_exit_intent_close_and_reducing_side_hold(db_pool: asyncpg.Pool[Any]) -> None:
    acct = await _account(db_pool)
    await _position(db_pool, acct, "AAPL", 100)
    tid = await _trade(db_pool, acct, [("AAPL", "buy")])
    await _order(db_pool, acct, "exit", "AAPL", side=None, qty=10, role="exit", trade_id=tid)
    await _order(db_pool, acct, "intent", "AAPL", side=None, qty=5, intent="close")
    await _order(db_pool, acct, "by-hand", "AAPL", side="sell", qty=3, status="partially_filled", filled=1)
    await _order(db_pool, acct, "adds", "AAPL", side="buy", qty=50)  # adds to the long: holds nothing
    assert await _committed(db_pool, acct, tid) == {"AAPL": 17}
    view = await db_pool.fetchrow("SELECT available_quantity FROM v_trade_monitor WHERE trade_id = $1", tid)
    assert view is not None and view["available_quantity"] == 83


async def test_mleg_legs_with_qty_zero_hold_parent_times_ratio(db_pool: asyncpg.Pool[Any]) -> None:
    """Alpaca quirk: an mleg order's legs may come with qty 0; each holds the parent's qty x its ratio.
    The parent (order_class mleg, symbol = the underlying) holds nothing itself."""
    acct = await _account(db_pool)
    await _position(db_pool, acct, CALL, 67)
    await _position(db_pool, acct, SHORT_CALL, -67)
    tid = await _trade(db_pool, acct, [(CALL, "buy"), (SHORT_CALL, "sell")], strategy="BULL_CALL_DEBIT")
    parent = await _order(
        db_pool, acct, "mleg", "AAPL", side=None, qty=20, order_class="mleg", role="exit", trade_id=tid
    )
    await _order(db_pool, acct, "leg-1", CALL, side="sell", qty=0, parent_id=parent, order_class="mleg", ratio=1)
    await _order(db_pool, acct, "leg-2", SHORT_CALL, side="buy", qty=0, parent_id=parent, order_class="mleg", ratio=1)
    assert await _committed(db_pool, acct, tid) == {CALL: 20, SHORT_CALL: 20}
    # The parent ended: its legs (still marked working) hold nothing.
    await db_pool.execute("UPDATE orders SET status = 'canceled' WHERE id = $1", parent)
    assert await _committed(db_pool, acct, tid) == {CALL: 0, SHORT_CALL: 0}


async def test_an_order_with_legs_holds_through_its_legs_only(db_pool: asyncpg.Pool[Any]) -> None:
    """An OCO exit (two orders for the same shares, one cancels the other) holds its shares once."""
    acct = await _account(db_pool)
    await _position(db_pool, acct, "AAPL", 100)
    tid = await _trade(db_pool, acct, [("AAPL", "buy")])
    parent = await _order(db_pool, acct, "oco-tp", "AAPL", side="sell", qty=40, order_class="oco")
    await _order(
        db_pool, acct, "oco-sl", "AAPL", side="sell", qty=40, status="held", parent_id=parent, order_class="oco"
    )
    assert await _committed(db_pool, acct, tid) == {"AAPL": 40}


@pytest.mark.parametrize(("strategy", "qty", "side"), [("LONG_STOCK", 30, "sell"), ("SHORT_STOCK", -30, "buy")])
async def test_a_trade_without_legs_is_its_one_leg(
    db_pool: asyncpg.Pool[Any], strategy: str, qty: int, side: str
) -> None:
    """A trade inserted without trade_legs rows: the outbox closes it like monitorCycle sees it."""
    acct = await _account(db_pool)
    await _position(db_pool, acct, "AAPL", qty)
    tid = await _trade(db_pool, acct, None, strategy=strategy)
    await _order(db_pool, acct, "part", "AAPL", side=side, qty=10)
    rows = await db_pool.fetch(load_queries()["outbox_close_inputs"], tid, acct)
    assert [(r["symbol"], r["side"], r["ratio"], r["position_quantity"], r["committed"]) for r in rows] == [
        ("AAPL", "buy" if qty > 0 else "sell", 1, qty, 10)
    ]
    assert await _committed(db_pool, acct, tid) == {"AAPL": 10}


async def test_a_close_takes_only_its_trades_share_of_a_shared_symbol(db_pool: asyncpg.Pool[Any]) -> None:
    """Two trades hold AAPL (10 + 5 of a 15-share position): closing the first closes 10, never all 15."""
    from syncd.brokers.types import Side
    from syncd.trading.outbox import CloseLeg, closable_quantity

    acct = await _account(db_pool)
    await _position(db_pool, acct, "AAPL", 15)
    first = await _trade(db_pool, acct, [("AAPL", "buy")])
    second = await _trade(db_pool, acct, [("AAPL", "buy")])
    await db_pool.execute("UPDATE trades SET quantity = 10 WHERE id = $1", first)
    await db_pool.execute("UPDATE trades SET quantity = 5 WHERE id = $1", second)
    q = load_queries()
    for trade_id, expected in ((first, 10), (second, 5)):
        rows = await db_pool.fetch(q["outbox_close_inputs"], trade_id, acct)
        legs = [
            CloseLeg(r["symbol"], Side(r["side"]), r["ratio"], r["position_quantity"], r["committed"], r["available"])
            for r in rows
        ]
        assert closable_quantity(legs, None, whole=False) == expected
        monitor = await db_pool.fetchval("SELECT available_quantity FROM v_trade_monitor WHERE trade_id = $1", trade_id)
        assert monitor == expected  # the outbox and the monitor agree
