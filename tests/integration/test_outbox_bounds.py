"""Issue 10 item 3: no outbox row can stall an account.

Each request is read (``payload::text``, decoded by syncd with its bounds) and validated on its
own: one that cannot be read ends ``failed`` with a readable ``last_error``, and the pass goes on.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from syncd.context import Context
from syncd.cycles import trade_cycle
from syncd.daemon.passes import run_pass
from syncd.sim import Simulator
from syncd.trading.outbox import MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH
from tests.simfixtures import sim_fixture

D = Decimal
sim = sim_fixture(seed=29, accounts=1, positions_per_account=0, fill_on_submit=False)

BUY = '{"symbol": "AAPL", "side": "buy", "qty": 3, "type": "limit", "limit_price": %s}'


async def queue_text(ctx: Context, kind: str, text: str, trade_id: int | None = None) -> int:
    """A request whose payload is given as JSON text, stored as Postgres parses it (no Python codec)."""
    return int(
        await ctx.pool.fetchval(
            "INSERT INTO order_requests (account_id, kind, trade_id, payload) VALUES ($1, $2, $3, $4::text::jsonb) "
            "RETURNING id",
            next(iter(ctx.accounts.values())).id,
            kind,
            trade_id,
            text,
        )
    )


async def request(ctx: Context, rid: int) -> Any:
    row = await ctx.pool.fetchrow(
        "SELECT state, last_error, client_order_id, trade_id FROM order_requests WHERE id = $1", rid
    )
    return row


def posts(sim: Simulator) -> int:
    return sim.requests("/v2/orders", method="POST")


async def test_a_5000_deep_payload_fails_alone_and_the_pass_goes_on(sim: Simulator, make_context: Any) -> None:
    """Seen: a jsonb payload nested 5,000 deep (valid to Postgres) made the pool's JSON decoder raise on every
    pass: the row stayed queued, later valid requests were never placed, hand-placed orders were no longer
    mirrored. Now the deep one ends failed, the valid one after it is placed, the pass is ok and mirrors."""
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        deep = await queue_text(ctx, "open", "[" * 5000 + "]" * 5000)
        wide = await queue_text(ctx, "open", '{"strategy": "%s"}' % ("x" * MAX_PAYLOAD_BYTES))
        good = await queue_text(ctx, "open", BUY % "1.25")
        hand = sim.place_outside_order(0, "MSFT", "buy", 1, type="limit", limit_price="1")
        summary = await run_pass(ctx, "tradeCycle", trade_cycle.account_pass, list(ctx.accounts.values()))
        assert summary.ok, summary.failed
        d = await request(ctx, deep)
        assert d["state"] == "failed"
        assert d["last_error"] == (
            f"bad request: payload nests arrays/objects more than {MAX_PAYLOAD_DEPTH} deep, more than syncd accepts"
        )
        w = await request(ctx, wide)
        assert w["state"] == "failed" and f"more than the {MAX_PAYLOAD_BYTES} syncd accepts" in w["last_error"]
        g = await request(ctx, good)
        assert g["state"] == "submitted", g["last_error"]
        assert sim.order(g["client_order_id"]).limit_price == D("1.25")
        assert posts(sim) == 1
        mirrored = await ctx.pool.fetchval("SELECT count(*) FROM orders WHERE broker_order_id = $1", hand.id)
        assert mirrored == 1
        assert await ctx.pool.fetchval("SELECT last_error FROM accounts") is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        # Decimal("5_0") == 50: 50 shares were placed
        ('{"symbol": "AAPL", "side": "buy", "qty": "5_0", "type": "market"}', "qty must be a number"),
        # "\u017fpy".upper() == "SPY": it was placed as SPY
        ('{"symbol": "\\u017fpy", "side": "buy", "qty": 1, "type": "market"}', "symbol must be a ticker"),
        # a 20-decimal limit went out as 1.1234567890123457 through a float
        (BUY % "1.12345678901234567890", "limit_price has more than 4 decimal places: 1.12345678901234567890"),
        (BUY % "100.125", "limit_price 100.125 has more than 2 decimal places"),
        # a regex `$` matched before the newline; the newline reached the broker
        (
            '{"symbol": "AAPL", "side": "buy", "qty": 1, "type": "market", "strategy": "LONG_STOCK\\n"}',
            "strategy must be",
        ),
        (
            '{"symbol": "AAPL", "side": "buy", "qty": 1, "type": "market", "strategy": "' + "X" * 50000 + '"}',
            "bytes as JSON",
        ),
        (
            '{"symbol": "AAPL", "side": "buy", "type": "market", "qty": ' + "9" * 5000 + "}",
            "payload is not readable JSON",
        ),
    ],
)
async def test_refused_payloads_end_failed_and_nothing_is_sent(
    sim: Simulator, make_context: Any, text: str, error: str
) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = await queue_text(ctx, "open", text)
        good = await queue_text(ctx, "open", BUY % "0.1234")  # a sub-dollar stock takes 4 decimals
        summary = await run_pass(ctx, "tradeCycle", trade_cycle.account_pass, list(ctx.accounts.values()))
        assert summary.ok, summary.failed
        req = await request(ctx, rid)
        assert req["state"] == "failed" and error in req["last_error"], req["last_error"]
        assert req["trade_id"] is None
        g = await request(ctx, good)
        assert g["state"] == "submitted" and sim.order(g["client_order_id"]).limit_price == D("0.1234")
        assert posts(sim) == 1


async def test_a_client_id_with_a_trailing_newline_is_refused(sim: Simulator, make_context: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        rid = int(
            await ctx.pool.fetchval(
                "INSERT INTO order_requests (account_id, kind, payload, client_order_id) VALUES ($1, 'open', $2, $3) "
                "RETURNING id",
                next(iter(ctx.accounts.values())).id,
                {"symbol": "AAPL", "side": "buy", "qty": 1, "type": "market"},
                "my-order-1\n",
            )
        )
        await trade_cycle.account_pass(ctx, next(iter(ctx.accounts.values())))
        req = await request(ctx, rid)
        assert req["state"] == "failed" and "client_order_id" in req["last_error"]
        assert posts(sim) == 0


async def test_a_close_limit_with_more_decimals_than_the_option_takes_fails_and_reopens(
    sim: Simulator, make_context: Any
) -> None:
    """A close's limit is checked against its trade's instrument: an option takes 2 decimals (a stock below $1
    would take 4); the refused close leaves its trade open, nothing sent."""
    async with make_context(accounts=[sim.account_settings(0)], trading={"enabled": True}) as ctx:
        acct = next(iter(ctx.accounts.values()))
        tid = int(
            await ctx.pool.fetchval(
                "INSERT INTO trades (account_id, symbol, status, quantity) VALUES ($1, 'AAPL', 'closing', 1) "
                "RETURNING id",
                acct.id,
            )
        )
        await ctx.pool.execute(
            "INSERT INTO trade_legs (trade_id, symbol, side) VALUES ($1, 'AAPL260116C00150000', 'buy')", tid
        )
        rid = await queue_text(ctx, "close", '{"type": "limit", "limit_price": 0.125}', trade_id=tid)
        await trade_cycle.account_pass(ctx, acct)
        req = await request(ctx, rid)
        assert req["state"] == "failed", req["last_error"]
        assert "limit_price 0.125 has more than 2 decimal places (an option or multi-leg price" in req["last_error"]
        assert await ctx.pool.fetchval("SELECT status FROM trades WHERE id = $1", tid) == "open"
        assert posts(sim) == 0
