"""Every order shape, from the broker's JSON (through the adapters) to ``orders`` rows on real Postgres.

Alpaca notional orders keep ``qty`` NULL and their ``notional``; a bracket placed by hand is mirrored
with its take-profit and stop legs as child rows of their own, which count as closing orders once
(one cancels the other) when syncd computes what is available to close; a Tradier multileg order's
legs do not carry the parent's net price.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
from pydantic import SecretStr

from syncd.brokers.alpaca import AlpacaBroker
from syncd.brokers.tradier import TradierBroker
from syncd.brokers.types import Order
from syncd.db import load_queries
from syncd.settings import AccountSettings
from syncd.trading.expiry import PENDING_REASONS
from syncd.trading.order_store import Observation, apply_observations, lock_orders
from tests.integration.test_closing_holds import _account, _committed, _position, _trade
from tests.unit import test_order_shapes as shapes
from tests.unit import test_tradier_wire as tw

D = Decimal


@pytest.fixture
async def brokers() -> AsyncIterator[tuple[AlpacaBroker, TradierBroker]]:
    async with aiohttp.ClientSession() as session:
        alpaca = AlpacaBroker(
            AccountSettings(name="a", broker="alpaca", api_key=SecretStr("k"), api_secret=SecretStr("s")),
            session=session,
            timeout_s=1,
            limiter=False,
        )
        tradier = TradierBroker(
            AccountSettings(name="t", broker="tradier", account_id="VA1", token=SecretStr("t")),
            session=session,
            timeout_s=1,
            limiter=False,
        )
        yield alpaca, tradier


async def _apply(pool: asyncpg.Pool[Any], account_id: int, *orders: Order) -> None:
    q = load_queries()
    async with pool.acquire() as conn, conn.transaction():
        await lock_orders(conn, q, account_id)
        await apply_observations(conn, q, account_id, [Observation(o, "poll") for o in orders])


async def _rows(pool: asyncpg.Pool[Any], account_id: int) -> list[Any]:
    return list(
        await pool.fetch(
            "SELECT broker_order_id, parent_id IS NOT NULL AS leg, type, order_class, status, qty, notional, "
            "filled_qty, limit_price, stop_price, time_in_force FROM orders WHERE account_id = $1 ORDER BY id",
            account_id,
        )
    )


async def test_notional_order_keeps_qty_null_and_its_fills_as_sent(
    db_pool: asyncpg.Pool[Any], brokers: tuple[AlpacaBroker, TradierBroker]
) -> None:
    alpaca, _ = brokers
    acct = await _account(db_pool)
    accepted = alpaca._order(shapes.notional(), "order")
    await _apply(db_pool, acct, accepted)
    (row,) = await _rows(db_pool, acct)
    assert (row["qty"], row["notional"], row["filled_qty"], row["status"]) == (None, D(500), 0, "accepted")
    filled = alpaca._order(
        shapes.notional(status="filled", filled_qty="2.857142857", filled_avg_price="175.00"), "order"
    )
    await _apply(db_pool, acct, filled)
    (row,) = await _rows(db_pool, acct)
    assert (row["qty"], row["notional"], row["filled_qty"], row["status"]) == (None, D(500), D("2.857142857"), "filled")
    event = await db_pool.fetchrow("SELECT event, qty FROM order_events WHERE event = 'fill'")
    assert event is not None and event["qty"] == D("2.857142857")


async def test_bracket_by_hand_is_mirrored_with_its_legs_and_they_hold_once(
    db_pool: asyncpg.Pool[Any], brokers: tuple[AlpacaBroker, TradierBroker]
) -> None:
    alpaca, _ = brokers
    acct = await _account(db_pool)
    await _position(db_pool, acct, "AAPL", 30)
    tid = await _trade(db_pool, acct, [("AAPL", "buy")])

    # not yet filled: the legs are held and hold nothing
    body = shapes.bracket(status="new", filled_qty="0", filled_avg_price=None, filled_at=None)
    for leg in body["legs"]:
        leg["status"] = "held"
    await _apply(db_pool, acct, alpaca._order(body, "order"))
    parent, tp, sl = await _rows(db_pool, acct)
    assert (parent["leg"], parent["order_class"], parent["limit_price"]) == (False, "bracket", D(150))
    assert (tp["leg"], tp["type"], tp["limit_price"], tp["status"]) == (True, "limit", D(160), "held")
    assert (sl["leg"], sl["type"], sl["stop_price"], sl["status"]) == (True, "stop", D(145), "held")
    assert await _committed(db_pool, acct, tid) == {"AAPL": 0}

    # the entry filled (terminal), its exits work on: they hold the 10 shares once, not 20
    filled = json.loads(json.dumps(body))
    filled.update(status="filled", filled_qty="10", filled_avg_price="149.9", filled_at="2026-01-05T15:00:02Z")
    filled["legs"][0]["status"] = "new"
    await _apply(db_pool, acct, alpaca._order(filled, "order"))
    _, tp, sl = await _rows(db_pool, acct)
    assert (tp["status"], sl["status"]) == ("new", "held")
    assert await _committed(db_pool, acct, tid) == {"AAPL": 10}
    view = await db_pool.fetchrow("SELECT available_quantity FROM v_trade_monitor WHERE trade_id = $1", tid)
    assert view is not None and view["available_quantity"] == 20
    # the filled entry is terminal, yet tradeCycle keeps asking for it while its exits work
    q = load_queries()
    start = await db_pool.fetchrow(q["trade_watermark"], [acct], dt.timedelta(0), list(PENDING_REASONS))
    assert start is not None and start["ord"] == 1 and set(start["working"]) == {filled["id"]}
    assert start["oldest_working"] is not None

    # the take-profit filled, the stop was cancelled: nothing is held any more
    done = json.loads(json.dumps(filled))
    done["legs"][0].update(status="filled", filled_qty="10", filled_avg_price="160")
    done["legs"][1]["status"] = "canceled"
    await _apply(db_pool, acct, alpaca._order(done, "order"))
    _, tp, sl = await _rows(db_pool, acct)
    assert (tp["status"], tp["filled_qty"], sl["status"]) == ("filled", 10, "canceled")
    assert await _committed(db_pool, acct, tid) == {"AAPL": 0}


async def test_tradier_otoco_and_multileg_rows(
    db_pool: asyncpg.Pool[Any], brokers: tuple[AlpacaBroker, TradierBroker]
) -> None:
    _, tradier = brokers
    acct = await _account(db_pool)
    await _position(db_pool, acct, "AAPL", 10)
    tid = await _trade(db_pool, acct, [("AAPL", "buy")])
    mleg = tw.multileg_json(status="open", exec_quantity=0.0, avg_fill_price=0.0, duration="post")
    for leg in mleg["leg"]:
        leg.update(price=2.1, status="open", exec_quantity=0.0, avg_fill_price=0.0)
    await _apply(db_pool, acct, tradier._order(shapes.otoco(), "order"), tradier._order(mleg, "order"))
    rows = {r["broker_order_id"]: r for r in await _rows(db_pool, acct)}
    assert rows["300"]["order_class"] == "bracket"
    assert (rows["302"]["limit_price"], rows["303"]["stop_price"], rows["301"]["status"]) == (D(160), D(145), "filled")
    assert (rows["229063"]["limit_price"], rows["229063"]["time_in_force"]) == (D("2.1"), "post")
    assert [rows[i]["limit_price"] for i in ("229064", "229065")] == [None, None]
    # the OTOCO's take-profit and stop hold the 10 shares once
    assert await _committed(db_pool, acct, tid) == {"AAPL": 10}


async def test_an_order_that_replaced_a_linked_one_inherits_its_trade_from_any_path(
    db_pool: asyncpg.Pool[Any], brokers: tuple[AlpacaBroker, TradierBroker]
) -> None:
    """However syncd first sees the new order (the stream here; a replace made by hand at the broker
    too), ``replaces`` names a linked order, so the new one is that trade's, in the same role."""
    alpaca, _ = brokers
    acct = await _account(db_pool)
    tid = await _trade(db_pool, acct, [("AAPL", "buy")])
    old_id = "61e69015-8549-4bfd-b9c3-01e75843f47d"
    await db_pool.execute(
        "INSERT INTO orders (account_id, broker_order_id, symbol, side, qty, status, type, trade_id, role) "
        "VALUES ($1, $2, 'AAPL', 'buy', 10, 'new', 'limit', $3, 'entry')",
        acct,
        old_id,
        tid,
    )
    new = alpaca._order(json.loads(shapes.ALPACA_REPLACED), "order")
    q = load_queries()
    async with db_pool.acquire() as conn, conn.transaction():
        await lock_orders(conn, q, acct)
        await apply_observations(conn, q, acct, [Observation(new, "stream", event="new", at=new.updated_at)])
    row = await db_pool.fetchrow(
        "SELECT trade_id, role, replaces, qty, limit_price FROM orders WHERE broker_order_id = $1", new.broker_order_id
    )
    assert row is not None
    assert (row["trade_id"], row["role"], row["replaces"], row["qty"], row["limit_price"]) == (
        tid,
        "entry",
        old_id,
        D(5),
        D("151.5"),
    )
