"""monitorCycle's unchanged-quotes check (``monitor_cycle.rows_seen``), on real Postgres and the simulator.

A quote answer byte for byte the one last written, over held rows in the versions that
write left them, is neither decoded nor sent; any write to a held row (a hand edit, even one
that puts the same values back, accountSync's, a position held or let go) or any change in
the answer makes the pass decode and send every row again. The trades are judged whenever an
input of their rules changed, rows sent or not (``test_monitor_rest``).
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from syncd.brokers.base import QuoteAnswer, quote_answer
from syncd.context import Account, Context
from syncd.cycles import account_sync, monitor_cycle
from tests.integration.test_monitor_cycle import add_trade, close_requests
from tests.simfixtures import sim_fixture

D = Decimal


sim = sim_fixture(seed=31, accounts=1, positions_per_account=6)


class Decodes:
    """Counts the answers the adapter decodes (each page or batch of snapshots)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, acct: Account) -> None:
        self.count = 0
        own = acct.broker._snapshot_quotes  # type: ignore[attr-defined]

        def counted(*args: Any) -> Any:
            self.count += 1
            return own(*args)

        monkeypatch.setattr(acct.broker, "_snapshot_quotes", counted)


async def _quotes(ctx: Context, acct: Account) -> dict[str, tuple[Any, ...]]:
    rows = await ctx.pool.fetch(
        "SELECT symbol, bid, ask, current_price, market_value FROM portfolio_positions WHERE account_id = $1",
        acct.id,
    )
    return {r["symbol"]: tuple(r)[1:] for r in rows}


def _mirrored(make_context: Any, sim: Any, **kw: Any) -> Any:
    return make_context(accounts=[sim.account_settings(0, broker="alpaca")], **kw)


async def test_an_answer_already_written_is_neither_decoded_nor_sent(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _mirrored(make_context, sim) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        first = await monitor_cycle.account_pass(ctx, acct)
        assert first["positions_written"] == first["positions"] == 6
        written = await _quotes(ctx, acct)

        decodes = Decodes(monkeypatch, acct)
        for _ in range(2):
            idle = await monitor_cycle.account_pass(ctx, acct)
            assert decodes.count == 0
            assert (idle["positions"], idle["quoted"], idle["positions_written"]) == (6, first["quoted"], 0)
        assert await _quotes(ctx, acct) == written


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE portfolio_positions SET bid = 0.01, current_price = 0.01 WHERE symbol = $2 AND account_id = $1",
        "UPDATE portfolio_positions SET market_value = market_value + 1 WHERE symbol = $2 AND account_id = $1",
        # the same values written back: a new row version all the same
        "UPDATE portfolio_positions SET bid = bid WHERE symbol = $2 AND account_id = $1",
    ],
)
async def test_any_write_to_a_held_row_is_seen(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    async with _mirrored(make_context, sim) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        await monitor_cycle.account_pass(ctx, acct)
        written = await _quotes(ctx, acct)
        symbol = sorted(written)[0]

        await ctx.pool.execute(edit, acct.id, symbol)
        decodes = Decodes(monkeypatch, acct)
        stats = await monitor_cycle.account_pass(ctx, acct)
        decoded = decodes.count
        assert decoded > 0
        assert stats["positions_written"] == (0 if "bid = bid" in edit else 1)
        assert await _quotes(ctx, acct) == written
        assert (await monitor_cycle.account_pass(ctx, acct))["positions_written"] == 0
        assert decodes.count == decoded  # at rest again: not decoded


async def test_a_moved_price_and_a_changed_book_are_decoded_and_written(make_context: Any, sim: Any) -> None:
    async with _mirrored(make_context, sim) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        await monitor_cycle.account_pass(ctx, acct)
        symbol = sorted(await _quotes(ctx, acct))[0]

        sim.set_price(symbol, "1.01", "1.03")
        moved = await monitor_cycle.account_pass(ctx, acct)
        assert moved["positions_written"] == 1
        assert (await _quotes(ctx, acct))[symbol][:3] == (D("1.01"), D("1.03"), D("1.02"))

        # accountSync changes a held quantity: the market value follows on the next monitor pass
        held = sim.account(0).positions[symbol]
        sim.add_position(0, symbol, held.qty + 1, str(held.avg_entry))
        await account_sync.account_pass(ctx, acct)
        await monitor_cycle.account_pass(ctx, acct)
        row = await ctx.pool.fetchrow(
            "SELECT quantity, multiplier, market_value FROM portfolio_positions WHERE account_id = $1 AND symbol = $2",
            acct.id,
            symbol,
        )
        assert row["market_value"] == D("1.02") * row["quantity"] * row["multiplier"]


async def test_the_trades_are_judged_on_a_pass_that_sends_no_rows(make_context: Any, sim: Any) -> None:
    trading = {"enabled": True, "auto_exits": True}
    async with _mirrored(make_context, sim, trading=trading) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        long_call, short_call = [s for s in sim.account(0).positions if len(s) > 6][:2]
        trade_id = await add_trade(
            ctx.pool, acct.id, "BULL_CALL_DEBIT", [(long_call, "buy"), (short_call, "sell")], entry="1000", tp=None
        )
        await monitor_cycle.account_pass(ctx, acct)
        await monitor_cycle.account_pass(ctx, acct)
        assert await close_requests(ctx.pool, trade_id) == []

        # Nothing about the quotes or the rows changes; the trade's own rule does.
        await ctx.pool.execute("UPDATE trades SET entry_price = 0.01, take_profit_pct = 10 WHERE id = $1", trade_id)
        stats = await monitor_cycle.account_pass(ctx, acct)
        assert stats["positions_written"] == 0 and stats["trades_written"] == 1
        assert stats["exits_queued"] == 1
        assert [r["payload"]["reason"] for r in await close_requests(ctx.pool, trade_id)] == ["take_profit"]


async def test_an_adapter_without_fingerprints_always_sends_its_rows(make_context: Any, sim: Any) -> None:
    async with _mirrored(make_context, sim) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        inner = acct.broker

        class Plain:
            """The adapter seen through get_quotes alone (no quote_answer)."""

            kind = inner.kind

            async def get_quotes(self, symbols: Any) -> Any:
                return await inner.get_quotes(symbols)

        answer = await quote_answer(Plain(), ["AAPL"])  # type: ignore[arg-type]
        assert isinstance(answer, QuoteAnswer) and answer.fingerprint is None
        assert monitor_cycle.rows_seen({"AAPL": 1}, answer) is None
        plain = dataclasses.replace(acct, broker=Plain())
        rest = "SELECT monitor_rest FROM accounts WHERE id = $1"
        for _ in range(2):
            stats = await monitor_cycle.account_pass(ctx, plain)
            assert stats["quoted"] > 0 and stats["judged"]  # rows sent: the trades are judged too
            assert (await ctx.pool.fetchval(rest, acct.id))["seen"] is None  # nothing to recognise it by
        await monitor_cycle.account_pass(ctx, acct)
        assert (await ctx.pool.fetchval(rest, acct.id))["seen"]  # the simulator's adapter keeps fingerprints


async def test_fingerprints_tell_symbols_and_bodies_apart(make_context: Any, sim: Any) -> None:
    async with _mirrored(make_context, sim) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        symbols = sorted(await _quotes(ctx, acct))
        a = await acct.broker.quote_answer(symbols)
        b = await acct.broker.quote_answer(symbols)
        fewer = await acct.broker.quote_answer(symbols[1:])
        assert a.fingerprint == b.fingerprint != fewer.fingerprint
        sim.set_price(symbols[0], "1.01", "1.03")
        moved = await acct.broker.quote_answer(symbols)
        assert moved.fingerprint != a.fingerprint
        assert a.decode() == b.decode() != moved.decode()
        assert monitor_cycle.rows_seen({"X": 1}, a) != monitor_cycle.rows_seen({"X": 2}, a)


async def test_a_tradier_answer_already_written_is_neither_decoded_nor_sent(make_context: Any, sim: Any) -> None:
    """Tradier's adapter keeps its quote bodies too: the same answer over the same rows is at rest."""
    async with make_context(accounts=[sim.account_settings(0, broker="tradier")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        symbols = sorted(await _quotes(ctx, acct))
        a = await acct.broker.quote_answer(symbols)
        b = await acct.broker.quote_answer(symbols)
        assert a.fingerprint is not None and a.fingerprint == b.fingerprint
        assert a.fingerprint != (await acct.broker.quote_answer(symbols[1:])).fingerprint
        assert a.decode() == await acct.broker.get_quotes(symbols)
        first = await monitor_cycle.account_pass(ctx, acct)
        assert first["positions_written"] == first["positions"] == 6
        idle = await monitor_cycle.account_pass(ctx, acct)
        assert (idle["positions_written"], idle["quoted"], idle["judged"]) == (0, first["quoted"], False)
        sim.set_price(symbols[0], "1.01", "1.03")
        moved = await monitor_cycle.account_pass(ctx, acct)
        assert moved["positions_written"] >= 1 and moved["judged"]
