"""accountSync's unchanged-answer check (migration 0019), on real Postgres and the simulator.

An answer byte for byte the recorded one, over a stored state with the recorded
fingerprints, is idle without decoding; anything that changed the stored rows (a hand
edit, a deleted row or snapshot, monitorCycle's first quote) makes the next pass compare
in full and repair what differs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any, cast

import asyncpg
import pytest
import pytest_asyncio

from syncd.brokers.base import answer_fingerprint
from syncd.context import Account, Context
from syncd.cycles import account_sync
from syncd.db.locks import SYNC_LOCK_CLASS
from tests.helpers import wait_for

D = Decimal


@pytest_asyncio.fixture(loop_scope="function")
async def sim() -> AsyncIterator[Any]:
    from syncd.sim import SimConfig, start_simulator

    simulator = await start_simulator(SimConfig(seed=23, accounts=2, positions_per_account=5))
    yield simulator
    await simulator.stop()


async def _book(ctx: Context, acct: Account) -> dict[str, Decimal]:
    rows = await ctx.pool.fetch("SELECT symbol, quantity FROM portfolio_positions WHERE account_id = $1", acct.id)
    return {r["symbol"]: r["quantity"] for r in rows}


def _sim_book(sim: Any, i: int) -> dict[str, Decimal]:
    return {s: p.qty for s, p in sim.accounts[i].positions.items() if p.qty != 0}


def _undecodable(*_: Any) -> Any:
    raise AssertionError("the answer was decoded")


async def test_the_same_answer_is_idle_without_decoding(make_context: Any, sim: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        first = await account_sync.account_pass(ctx, acct)
        assert first["same_answer"] == 0 and first["upserted"] == len(_sim_book(sim, 0)) > 0
        row = await ctx.pool.fetchrow("SELECT sync_answer, last_synced_at FROM accounts WHERE id = $1", acct.id)
        assert row["sync_answer"] is not None

        acct.broker._positions = _undecodable
        acct.broker._balances = _undecodable
        idle = await account_sync.account_pass(ctx, acct)
        assert idle["same_answer"] == 1
        assert (idle["positions"], idle["unchanged"]) == (first["positions"], first["positions"])
        assert (idle["upserted"], idle["deleted"], idle["events"], idle["snapshot"]) == (0, 0, 0, 0)
        synced = await ctx.pool.fetchval("SELECT last_synced_at FROM accounts WHERE id = $1", acct.id)
        assert synced > row["last_synced_at"]
        assert ctx.metrics.value("syncd_positions", account=acct.name) == first["positions"]


async def test_a_change_at_the_broker_is_compared_in_full(make_context: Any, sim: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        sim.add_position(0, "AAPL260116C00150000", 2, "3.10")
        stats = await account_sync.account_pass(ctx, acct)
        assert (stats["same_answer"], stats["upserted"]) == (0, 1)
        assert await _book(ctx, acct) == _sim_book(sim, 0)
        assert (await account_sync.account_pass(ctx, acct))["same_answer"] == 1


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE portfolio_positions SET quantity = quantity + 1 WHERE account_id = $1"
        " AND symbol = (SELECT min(symbol) FROM portfolio_positions WHERE account_id = $1)",
        "UPDATE portfolio_positions SET avg_entry_price = 1 WHERE account_id = $1",
        "DELETE FROM portfolio_positions WHERE account_id = $1"
        " AND symbol = (SELECT min(symbol) FROM portfolio_positions WHERE account_id = $1)",
        "INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, quantity, qty_available)"
        " VALUES ($1, 'ZZZZ', 'us_equity', 'ZZZZ', 5, 5)",
        "UPDATE portfolio_positions SET current_price = 1 WHERE account_id = $1",
    ],
    ids=["quantity", "price", "deleted-row", "extra-row", "unquoted-mark"],
)
async def test_a_hand_edit_of_the_mirror_is_repaired(make_context: Any, sim: Any, edit: str) -> None:
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        before = await ctx.pool.fetch(
            "SELECT symbol, quantity, avg_entry_price, current_price FROM portfolio_positions"
            " WHERE account_id = $1 ORDER BY symbol",
            acct.id,
        )
        await ctx.pool.execute(edit, acct.id)
        stats = await account_sync.account_pass(ctx, acct)
        assert stats["same_answer"] == 0
        after = await ctx.pool.fetch(
            "SELECT symbol, quantity, avg_entry_price, current_price FROM portfolio_positions"
            " WHERE account_id = $1 ORDER BY symbol",
            acct.id,
        )
        assert [tuple(r) for r in after] == [tuple(r) for r in before]
        assert (await account_sync.account_pass(ctx, acct))["same_answer"] == 1


async def test_a_deleted_snapshot_is_written_again(make_context: Any, sim: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        await ctx.pool.execute("DELETE FROM account_snapshots WHERE account_id = $1", acct.id)
        stats = await account_sync.account_pass(ctx, acct)
        assert (stats["same_answer"], stats["snapshot"]) == (0, 1)
        assert await ctx.pool.fetchval("SELECT count(*) FROM account_snapshots WHERE account_id = $1", acct.id) == 1


async def test_a_first_quote_makes_one_full_comparison_that_writes_nothing(make_context: Any, sim: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        # monitorCycle quotes every row: the marks are its own from now on
        await ctx.pool.execute(
            "UPDATE portfolio_positions SET quote_at = now(), current_price = current_price + 1 WHERE account_id = $1",
            acct.id,
        )
        stats = await account_sync.account_pass(ctx, acct)
        assert (stats["same_answer"], stats["upserted"]) == (0, 0)
        assert (await account_sync.account_pass(ctx, acct))["same_answer"] == 1
        # monitorCycle moving the marks of quoted rows again does not cost a full comparison
        await ctx.pool.execute(
            "UPDATE portfolio_positions SET quote_at = now(), current_price = current_price + 1 WHERE account_id = $1",
            acct.id,
        )
        assert (await account_sync.account_pass(ctx, acct))["same_answer"] == 1


async def test_the_state_of_no_positions_is_the_one_accountsync_assumes(make_context: Any, sim: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        state = await ctx.pool.fetchval("SELECT account_positions_state($1)", acct.id)
        assert state == account_sync._NO_POSITIONS_STATE


async def test_numbers_equal_as_numbers_keep_the_state(make_context: Any, sim: Any) -> None:
    """The fingerprint hashes values as accountSync compares them: 12.5 and 12.50 are the same number."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        before = await ctx.pool.fetchval("SELECT account_positions_state($1)", acct.id)
        await ctx.pool.execute(
            "UPDATE portfolio_positions SET avg_entry_price = round(avg_entry_price, 6) WHERE account_id = $1", acct.id
        )
        assert await ctx.pool.fetchval("SELECT account_positions_state($1)", acct.id) == before
        await ctx.pool.execute(
            "UPDATE portfolio_positions SET avg_entry_price = avg_entry_price + 0.01 WHERE account_id = $1", acct.id
        )
        assert await ctx.pool.fetchval("SELECT account_positions_state($1)", acct.id) != before


async def test_a_compared_pass_that_writes_nothing_asks_expiry_only_with_a_candidate(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The expiry hint read with the unchanged-answer check holds for a comparison that writes nothing;
    a pass that writes reads it in its own transaction, after the write."""
    asked: list[int] = []

    async def settle(ctx: Context, account: Account) -> list[int]:
        asked.append(account.id)
        return []

    monkeypatch.setattr(account_sync, "settle_expirations", settle)
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        stats = await account_sync.account_pass(ctx, acct)
        assert stats["upserted"] > 0
        assert asked == []  # a pass that wrote, no candidate in what it wrote: not asked
        await ctx.pool.execute("UPDATE accounts SET sync_answer = NULL WHERE id = $1", acct.id)
        stats = await account_sync.account_pass(ctx, acct)
        assert (stats["same_answer"], stats["upserted"]) == (0, 0)
        assert asked == []  # compared, nothing written, no candidate: not asked
        trade = await ctx.pool.fetchval(
            "INSERT INTO trades (account_id, symbol, status) VALUES ($1, 'GONE', 'open') RETURNING id", acct.id
        )
        await ctx.pool.execute(
            "INSERT INTO trade_legs (trade_id, leg_index, symbol, side, ratio) VALUES ($1, 0, 'GONE', 'buy', 1)",
            trade,
        )
        await ctx.pool.execute("UPDATE accounts SET sync_answer = NULL WHERE id = $1", acct.id)
        await account_sync.account_pass(ctx, acct)
        assert asked == [acct.id]  # a trade whose legs are all flat: asked
        one = await ctx.pool.fetchval("SELECT min(symbol) FROM portfolio_positions WHERE account_id = $1", acct.id)
        await ctx.pool.execute("DELETE FROM portfolio_positions WHERE account_id = $1 AND symbol = $2", acct.id, one)
        stats = await account_sync.account_pass(ctx, acct)
        assert stats["upserted"] == 1
        assert asked == [acct.id, acct.id]  # a pass that wrote, a candidate in what it wrote: asked


def _no_row_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the passes that read the stored rows back (account_sync.stored_rows)."""
    reads: list[int] = []
    real = account_sync.stored_rows

    def counting(records: Any) -> Any:
        reads.append(len(records))
        return real(records)

    monkeypatch.setattr(account_sync, "stored_rows", counting)
    return reads


async def _quoted_mirror(ctx: Context, sim: Any, acct: Account) -> None:
    """A first pass, then monitorCycle's quotes on every row: the marks are monitorCycle's."""
    await account_sync.account_pass(ctx, acct)
    await ctx.pool.execute("UPDATE portfolio_positions SET quote_at = now() WHERE account_id = $1", acct.id)


async def test_moved_prices_compare_without_reading_the_rows_back(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prices move at the broker, every mark is monitorCycle's: after one comparison that found the
    rows equal, the next answers compare equal by the rows' fingerprint, and only balances are written."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await _quoted_mirror(ctx, sim, acct)
        reads = _no_row_reads(monkeypatch)
        sim.tick(3)
        moved = await account_sync.account_pass(ctx, acct)
        assert (moved["same_answer"], moved["upserted"], moved["events"]) == (0, 0, 0)
        assert len(reads) == 1  # compared and remembered; under the lock (a snapshot is due) it holds
        book = await _book(ctx, acct)
        for _ in range(2):
            sim.tick(3)
            again = await account_sync.account_pass(ctx, acct)
            assert (again["same_answer"], again["upserted"], again["snapshot"]) == (0, 0, 1)
        assert len(reads) == 1  # the rows were not read back again
        assert await _book(ctx, acct) == book == _sim_book(sim, 0)


async def test_a_balances_only_write_records_the_positions_state_it_read(make_context: Any, sim: Any) -> None:
    """A pass that writes only balances records the positions' fingerprint it compared against,
    checked under the lock: the true one, so the same answer next time is idle; a row quoted
    meanwhile makes it compare."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await _quoted_mirror(ctx, sim, acct)
        sim.tick(3)
        moved = await account_sync.account_pass(ctx, acct)
        assert (moved["upserted"], moved["snapshot"]) == (0, 1)
        row = await ctx.pool.fetchrow(
            "SELECT sync_positions_state = account_positions_state(id) AS p,"
            " sync_account_state = account_balances_state(id) AS a FROM accounts WHERE id = $1",
            acct.id,
        )
        assert row is not None and (row["p"], row["a"]) == (True, True)
        assert (await account_sync.account_pass(ctx, acct))["same_answer"] == 1
        await ctx.pool.execute(
            "UPDATE portfolio_positions SET quote_at = NULL WHERE account_id = $1 AND symbol = $2",
            acct.id,
            min(_sim_book(sim, 0)),
        )
        again = await account_sync.account_pass(ctx, acct)
        assert again["same_answer"] == 0  # the state changed: compared in full
        assert await _book(ctx, acct) == _sim_book(sim, 0)


async def _remembered(ctx: Context, sim: Any, acct: Account) -> None:
    """A quoted mirror, then prices moved once: the comparison that found the rows equal to the
    broker's positions is remembered, with the answer's positions key."""
    await _quoted_mirror(ctx, sim, acct)
    sim.tick(3)
    await account_sync.account_pass(ctx, acct)


async def test_moved_prices_are_not_decoded_again(make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prices move, the positions are the ones last found equal to the stored rows (by the adapter's
    key: everything but the marks, as the broker wrote them): only the balances are decoded."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await _remembered(ctx, sim, acct)
        book = await _book(ctx, acct)
        real_positions = acct.broker._positions
        acct.broker._positions = _undecodable
        for _ in range(2):
            sim.tick(3)
            moved = await account_sync.account_pass(ctx, acct)
            assert (moved["same_answer"], moved["upserted"], moved["snapshot"]) == (0, 0, 1)
            assert moved["positions"] == moved["unchanged"] == len(book)
        assert await _book(ctx, acct) == book
        # a changed position at the broker changes the key: decoded, compared, written
        acct.broker._positions = real_positions
        one = min(_sim_book(sim, 0))
        sim.accounts[0].positions[one].qty += 1
        sim.tick(3)
        changed = await account_sync.account_pass(ctx, acct)
        assert changed["upserted"] == 1
        assert await _book(ctx, acct) == _sim_book(sim, 0)


async def test_a_key_match_then_a_write_before_the_lock_decodes_in_the_transaction(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The positions were not decoded (their key matched); another writer changes a row before the
    pass takes the lock: in its transaction the pass decodes them, compares, and repairs the row."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await _remembered(ctx, sim, acct)
        decoded: list[int] = []
        real_positions = acct.broker._positions

        def counting(*a: Any) -> Any:
            decoded.append(1)
            return real_positions(*a)

        acct.broker._positions = counting
        one = min(_sim_book(sim, 0))
        calls = _write_before_the_recheck(
            monkeypatch,
            ctx,
            "UPDATE portfolio_positions SET quantity = 7777 WHERE account_id = $1 AND symbol = $2",
            acct.id,
            one,
        )
        sim.tick(3)
        stats = await account_sync.account_pass(ctx, acct)
        assert calls[0] == (-1, False) and (-1, True) in calls
        assert decoded == [1]  # not before the lock: in the transaction, once the rows changed
        assert (stats["upserted"], stats["snapshot"]) == (1, 1)
        assert await _book(ctx, acct) == _sim_book(sim, 0)


async def test_a_remembered_comparison_still_sees_every_change(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await _quoted_mirror(ctx, sim, acct)
        sim.tick(3)
        await account_sync.account_pass(ctx, acct)  # remembered
        symbol = next(iter(_sim_book(sim, 0)))
        # the broker's quantity changes: the digest differs, the rows are read and the change written
        sim.add_position(
            0, symbol, sim.accounts[0].positions[symbol].qty + 1, sim.accounts[0].positions[symbol].avg_entry
        )
        changed = await account_sync.account_pass(ctx, acct)
        assert (changed["upserted"], changed["events"]) == (1, 1)
        assert await _book(ctx, acct) == _sim_book(sim, 0)
        # the mirror is edited by hand: its fingerprint differs, the rows are read and repaired
        await ctx.pool.execute("UPDATE portfolio_positions SET quote_at = now() WHERE account_id = $1", acct.id)
        sim.tick(3)
        await account_sync.account_pass(ctx, acct)  # remembered again
        await ctx.pool.execute(
            "UPDATE portfolio_positions SET quantity = quantity + 5 WHERE account_id = $1 AND symbol = $2",
            acct.id,
            symbol,
        )
        sim.tick(3)
        repaired = await account_sync.account_pass(ctx, acct)
        assert repaired["upserted"] == 1
        assert await _book(ctx, acct) == _sim_book(sim, 0)


async def test_rows_whose_marks_are_accountsyncs_are_read_every_time(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While monitorCycle has not quoted a row, its marks are accountSync's: nothing is remembered."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        reads = _no_row_reads(monkeypatch)
        for _ in range(2):
            await ctx.pool.execute("UPDATE accounts SET sync_answer = NULL WHERE id = $1", acct.id)
            await account_sync.account_pass(ctx, acct)
        assert len(reads) == 2
        assert acct.id not in ctx.compared_rows


async def test_a_state_that_changed_since_the_comparison_is_not_recorded(make_context: Any, sim: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        recorded = await ctx.pool.fetchval("SELECT sync_answer FROM accounts WHERE id = $1", acct.id)
        states = await ctx.pool.fetchrow(
            "SELECT account_positions_state($1) AS p, account_balances_state($1) AS a", acct.id
        )
        q = ctx.queries["account_sync_mark_synced"]
        await ctx.pool.execute(q, acct.id, b"answer", "0:stale", states["a"], 5)
        row = await ctx.pool.fetchrow("SELECT sync_answer, sync_seen FROM accounts WHERE id = $1", acct.id)
        assert (row["sync_answer"], row["sync_seen"]) == (recorded, b"answer")
        await ctx.pool.execute(q, acct.id, b"answer", states["p"], states["a"], 5)
        assert await ctx.pool.fetchval("SELECT sync_answer FROM accounts WHERE id = $1", acct.id) == b"answer"


def _write_before_the_recheck(
    monkeypatch: pytest.MonkeyPatch, ctx: Context, statement: str, *args: Any
) -> list[tuple[int, bool]]:
    """Run ``statement`` (another writer) on its own connection just before the pass writes what it
    compared (``account_sync_apply``, checked against the rows compared); return, per _plan call,
    (-1, whether a comparison was handed in: the re-check under the lock), per stored_rows call
    (rows read back, False), and per write (-2, whether it was checked against the compared rows)."""
    calls: list[tuple[int, bool]] = []
    real_plan = account_sync._plan
    real_rows = account_sync.stored_rows
    real_apply = account_sync._apply

    async def plan(*a: Any, **kw: Any) -> Any:
        calls.append((-1, kw.get("compared") is not None))
        return await real_plan(*a, **kw)

    def rows(records: Any) -> Any:
        calls.append((len(records), False))
        return real_rows(records)

    async def apply(*a: Any) -> Any:
        checked = a[-1] is not None
        if checked and statement:
            await ctx.pool.execute(statement, *args)
        calls.append((-2, checked))
        return await real_apply(*a)

    monkeypatch.setattr(account_sync, "_plan", plan)
    monkeypatch.setattr(account_sync, "stored_rows", rows)
    monkeypatch.setattr(account_sync, "_apply", apply)
    return calls


async def test_the_write_checks_the_compared_rows_by_their_fingerprint_without_reading_them_again(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows unchanged since the comparison are not read again: the one write statement checks their
    fingerprint under the account's lock; none stored (the first pass) are not read at all."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        calls = _write_before_the_recheck(monkeypatch, ctx, "")
        first = await account_sync.account_pass(ctx, acct)
        assert first["upserted"] == len(_sim_book(sim, 0)) > 0
        assert calls == [(-1, False), (0, False), (-2, True)]  # nothing stored: no row read; one checked write
        one = min(_sim_book(sim, 0))
        await ctx.pool.execute("UPDATE portfolio_positions SET quantity = quantity + 1 WHERE symbol = $1", one)
        calls.clear()
        again = await account_sync.account_pass(ctx, acct)
        assert again["upserted"] == 1
        n = len(_sim_book(sim, 0))
        assert calls == [(-1, False), (n, False), (-2, True)]  # read once, then one checked write
        assert await _book(ctx, acct) == _sim_book(sim, 0)


@pytest.mark.parametrize("first", [True, False], ids=["first-pass", "later-pass"])
async def test_a_write_between_the_comparison_and_the_transaction_is_compared_again(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    """Another writer (a replica, a hand edit) between the comparison and the lock: the transaction
    reads the rows again and writes what that state needs, not what the stale comparison said."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        book = _sim_book(sim, 0)
        one = min(book)
        if not first:
            await account_sync.account_pass(ctx, acct)
            await ctx.pool.execute("DELETE FROM portfolio_positions WHERE symbol = $1", one)
            statement = "UPDATE portfolio_positions SET quantity = quantity + 1 WHERE account_id = $1 AND symbol <> $2"
        else:
            # the other writer inserts one row, with a wrong quantity, before this pass's transaction
            statement = (
                "INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, quantity)"
                " VALUES ($1, $2, 'us_equity', $2, 12345)"
            )
        calls = _write_before_the_recheck(monkeypatch, ctx, statement, acct.id, one)
        stats = await account_sync.account_pass(ctx, acct)
        n_stored = 1 if first else len(book) - 1
        recheck = calls.index((-1, True))  # the checked write found the rows changed: compared again, locked
        assert calls[recheck - 1] == (-2, True) and calls[-1] == (-2, False)
        assert (n_stored, False) in calls[recheck:]  # read again in the transaction
        assert stats["upserted"] == len(book)  # every row: new, or set back by this pass
        assert await _book(ctx, acct) == book


async def test_an_answer_is_recorded_once_it_comes_twice(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the broker's answers differ pass after pass with nothing to write (prices moving in
    fields syncd does not keep), none is fingerprinted against the stored state (wasted work);
    the second pass that sees the same answer records it, the third is idle without decoding."""
    import syncd.brokers.alpaca as alpaca

    prints = iter([b"first", b"moved-1", b"moved-2", b"still", b"still", b"still"])
    monkeypatch.setattr(alpaca, "answer_fingerprint", lambda *_: next(prints))
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))

        async def state() -> tuple[bytes, bytes]:
            row = await ctx.pool.fetchrow("SELECT sync_answer, sync_seen FROM accounts WHERE id = $1", acct.id)
            return row["sync_answer"], row["sync_seen"]

        await account_sync.account_pass(ctx, acct)  # writes: recorded at once
        assert await state() == (b"first", b"first")
        for moved in (b"moved-1", b"moved-2"):
            stats = await account_sync.account_pass(ctx, acct)
            assert (stats["same_answer"], stats["upserted"], stats["snapshot"]) == (0, 0, 0)
            assert await state() == (b"first", moved)
        stats = await account_sync.account_pass(ctx, acct)  # "still", first seen: compared
        assert (stats["same_answer"], await state()) == (0, (b"first", b"still"))
        stats = await account_sync.account_pass(ctx, acct)  # "still" again: compared and recorded
        assert (stats["same_answer"], await state()) == (0, (b"still", b"still"))
        assert (await account_sync.account_pass(ctx, acct))["same_answer"] == 1


async def test_tradier_answers_are_recognised_too(make_context: Any, sim: Any) -> None:
    async with make_context(accounts=[sim.account_settings(1, broker="tradier")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        first = await account_sync.account_pass(ctx, acct)
        assert first["positions"] == len(_sim_book(sim, 1)) > 0
        idle = await account_sync.account_pass(ctx, acct)
        assert (idle["same_answer"], idle["positions"], idle["upserted"]) == (1, first["positions"], 0)
        sim.remove_position(1, next(iter(_sim_book(sim, 1))))
        stats = await account_sync.account_pass(ctx, acct)
        assert (stats["same_answer"], stats["deleted"]) == (0, 1)
        assert await _book(ctx, acct) == _sim_book(sim, 1)


class _NoFingerprints:
    """A broker without ``account_answer``: accountSync asks for balances and positions, decoded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kind = inner.kind

    @property
    def request_count(self) -> int:
        return int(self.inner.request_count)

    async def get_account(self) -> Any:
        return await self.inner.get_account()

    async def list_positions(self) -> Any:
        return await self.inner.list_positions()

    async def list_option_events(self, since: Any) -> Any:
        return await self.inner.list_option_events(since)


async def test_an_adapter_without_fingerprints_always_compares(make_context: Any, sim: Any) -> None:
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        plain = next(iter(ctx.accounts.values()))
        acct = replace(plain, broker=cast(Any, _NoFingerprints(plain.broker)))
        await account_sync.account_pass(ctx, acct)
        stats = await account_sync.account_pass(ctx, acct)
        assert (stats["same_answer"], stats["upserted"], stats["unchanged"]) == (0, 0, len(_sim_book(sim, 0)))
        assert await ctx.pool.fetchval("SELECT sync_answer FROM accounts WHERE id = $1", acct.id) is None


def test_fingerprints_tell_bodies_kinds_and_versions_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    import syncd.brokers.base as base

    one = answer_fingerprint("alpaca", b"ab", b"c")
    assert one == answer_fingerprint("alpaca", b"ab", b"c") and len(one) == 16
    assert one != answer_fingerprint("alpaca", b"a", b"bc")
    assert one != answer_fingerprint("tradier", b"ab", b"c")
    monkeypatch.setattr(base, "__version__", "9.9.9")
    assert one != answer_fingerprint("alpaca", b"ab", b"c")


async def test_both_ends_at_the_first_failure_and_cancels_the_other() -> None:
    import asyncio

    from syncd.brokers.base import BrokerUnavailable, both

    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def fails() -> None:
        raise BrokerUnavailable("down")

    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(both(hangs(), fails()), 10)
    assert cancelled.is_set()


async def test_the_balances_snapshot_is_decided_under_the_lock(
    make_context: Any, sim: Any, monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    """Another writer records the broker's new balances between the comparison and the write: the
    write, deciding under the account's lock, adds no second snapshot of them and sends no
    ``account`` notification; the positions are still written."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        sim.tick(3)
        one = min(_sim_book(sim, 0))
        await ctx.pool.execute("UPDATE portfolio_positions SET quantity = quantity + 1 WHERE symbol = $1", one)
        b = await acct.broker.get_account()
        statement = (
            "INSERT INTO account_snapshots (account_id, taken_at, equity, cash, buying_power, long_market_value,"
            " short_market_value) VALUES ($1, now(), $2, $3, $4, $5, $6)"
        )
        args = (acct.id, b.equity, b.cash, b.buying_power, b.long_market_value, b.short_market_value)
        snapshots = await ctx.pool.fetchval("SELECT count(*) FROM account_snapshots WHERE account_id = $1", acct.id)
        calls = _write_before_the_recheck(monkeypatch, ctx, statement, *args)
        notes: list[str] = []
        listener = await asyncpg.connect(dsn)
        try:
            await listener.add_listener("syncd_events", lambda *a: notes.append(a[3]))
            stats = await account_sync.account_pass(ctx, acct)
            await wait_for(lambda: any('"kind":"position"' in n for n in notes), timeout=5)
            await listener.execute("SELECT 1")  # what that commit sent has arrived
        finally:
            await listener.close()
        assert (-2, True) in calls and (-1, True) not in calls  # the rows had not changed: one checked write
        assert (stats["events"], stats["snapshot"]) == (1, 0)  # the quantity put back; no snapshot
        after = await ctx.pool.fetchval("SELECT count(*) FROM account_snapshots WHERE account_id = $1", acct.id)
        assert after == snapshots + 1  # the other writer's, none of this pass's
        assert not any('"kind":"account"' in n for n in notes)


async def test_a_write_committed_while_the_statement_waits_for_the_lock_is_seen(
    make_context: Any, sim: Any, dsn: str
) -> None:
    """Another writer holds the account's lock when the pass's one write statement asks for it, and
    changes a row before letting go: the statement, granted the lock, sees that commit (a fresh
    snapshot), writes nothing, and the pass compares again under the lock and repairs the row."""
    async with make_context(accounts=[sim.account_settings(0, broker="alpaca")]) as ctx:
        acct = next(iter(ctx.accounts.values()))
        await account_sync.account_pass(ctx, acct)
        one = min(_sim_book(sim, 0))
        await ctx.pool.execute("UPDATE portfolio_positions SET quantity = quantity + 1 WHERE symbol = $1", one)
        schema = await ctx.pool.fetchval("SELECT current_schema()")
        other = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:
            tx = other.transaction()
            await tx.start()
            await other.execute(ctx.queries["account_sync_lock"], SYNC_LOCK_CLASS, acct.id)
            running = asyncio.create_task(account_sync.account_pass(ctx, acct))

            async def waiting() -> bool:
                return bool(
                    await other.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                )

            await wait_for(waiting, timeout=10, what="the pass waiting for the account's lock")
            await other.execute(
                "UPDATE portfolio_positions SET quantity = 4242 WHERE account_id = $1 AND symbol <> $2", acct.id, one
            )
            await tx.commit()
            stats = await asyncio.wait_for(running, timeout=30)
        finally:
            await other.close()
        assert stats["upserted"] == len(_sim_book(sim, 0))  # the one it compared, and every row changed while it waited
        assert await _book(ctx, acct) == _sim_book(sim, 0)
