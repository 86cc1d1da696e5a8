"""accountSync: mirror one account's balances and positions into Postgres.

A pass reads as a story:

1. **fetch** balances and positions from the broker, both requests at once (two
   requests per account per pass with Alpaca), under a deadline;
2. **turn** the answer into rows (:func:`position_rows`, pure). The adapters guarantee
   the answer (:mod:`syncd.brokers.sanity`): a malformed one -- a symbol reported twice,
   a number that is not finite, an option whose symbol is not OCC -- raised
   ``BadBrokerData`` in the fetch, before anything is touched;
3. **compare** it with the stored rows (:func:`diff_positions`, a pure function);
4. **write the difference** in ONE statement, so one transaction and one round trip
   (``account_sync_apply``, 0022: the rows and events as JSON arrays): the account's
   advisory lock, a check that the stored rows are still those compared (else the pass
   compares again under the lock and writes then), new rows inserted and changed ones
   upserted (0023),
   vanished rows deleted, one ``position_events`` row per change, an
   ``account_snapshots`` row when the balances differ from the latest snapshot,
   ``accounts.broker_account_id``/``last_synced_at``, and the ``NOTIFY syncd_events``
   payloads, which Postgres delivers at commit (never for a rolled-back pass).
   When the comparison finds nothing to write (the usual case) the pass skips the
   transaction and only sets ``accounts.last_synced_at``: an idle pass writes no
   position, event or snapshot row.

Payloads of ``NOTIFY syncd_events`` (see :mod:`syncd.db.events`): ``{"kind": "position",
"account": NAME, "key": SYMBOL}`` per changed position (or one ``"key": "*"`` when many
changed) and ``{"kind": "account", "account": NAME, "key": NAME}`` when the balances or the
broker's account id changed.

A failed, timed-out or malformed fetch raises before the transaction: nothing of the
account changes, and :func:`syncd.daemon.passes.run_pass` records the error
(``accounts.last_error``, ``sync_runs``, ``account_health``).

Who owns which column of ``portfolio_positions``
-------------------------------------------------
accountSync and monitorCycle write the same rows; to keep them from fighting:

- accountSync owns the broker's position fields: ``asset_class``, ``underlying``,
  ``option_type``, ``strike``, ``expiration``, ``multiplier`` (from the OCC symbol),
  ``quantity``, ``qty_available``, ``avg_entry_price``, ``cost_basis``. A row is
  rewritten when one of these differs from the broker's answer.
- monitorCycle owns ``bid``, ``ask``, ``last``, ``quote_at`` and the greeks;
  accountSync never writes them.
- The marks ``current_price``, ``market_value``, ``unrealized_pl`` are shared. When
  accountSync writes a row it writes the broker's marks too (where the broker gave
  them; Tradier gives none, and the stored value is kept). A difference in marks
  alone makes accountSync write a row only while monitorCycle has never quoted it
  (``quote_at IS NULL``): after that, moving prices are monitorCycle's business, and
  an idle pass stays idle however the market moves.

``first_seen_at`` is set when a row is inserted and never changed; ``updated_at``
changes only when the row is written, that is, only when a value changed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import operator
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, NamedTuple

import asyncpg
import msgspec
import structlog
from asyncpg.pool import PoolConnectionProxy

from syncd.brokers.base import AccountAnswer, Broker, BrokerUnavailable, account_answer
from syncd.brokers.types import AssetClass, Balances, Position
from syncd.context import Account, Context
from syncd.db import events
from syncd.db.locks import SYNC_LOCK_CLASS as SYNC_LOCK_CLASS
from syncd.trading.expiry import PENDING_REASONS
from syncd.trading.expiry_store import settle_expirations

log = structlog.get_logger(__name__)

# The whole fetch (two requests at once, each bounded by broker_timeout_s retries included)
# gives up after broker_timeout_s x this, whatever happens inside the adapters.
FETCH_DEADLINE_FACTOR = 2

EventKind = Literal["opened", "increased", "reduced", "closed", "flipped"]


# -- the pure part: what changed --------------------------------------------------------------------


class PositionRow(NamedTuple):
    """The accountSync-owned columns of one ``portfolio_positions`` row (or of a fetched position).

    A tuple (not a dataclass) because a pass builds and compares tens of thousands of
    them: the comparisons below are slices compared in C.
    """

    symbol: str
    asset_class: str
    underlying: str
    option_type: str | None
    strike: Decimal | None
    expiration: dt.date | None
    multiplier: Decimal
    quantity: Decimal
    qty_available: Decimal
    avg_entry_price: Decimal | None
    cost_basis: Decimal | None
    current_price: Decimal | None = None
    market_value: Decimal | None = None
    unrealized_pl: Decimal | None = None
    marks_ours: bool = True  # stored rows: monitorCycle has not quoted it yet (quote_at IS NULL)

    def position_fields(self) -> tuple[Any, ...]:
        """asset_class .. cost_basis: the fields whose change rewrites the row."""
        return self[1:11]

    def marks(self) -> tuple[Any, ...]:
        """current_price, market_value, unrealized_pl."""
        return self[11:14]


@dataclass(frozen=True, slots=True)
class PositionEvent:
    symbol: str
    kind: EventKind
    old_quantity: Decimal
    new_quantity: Decimal


@dataclass(slots=True)
class Diff:
    """What a pass writes: rows to upsert (new or changed), symbols to delete, events."""

    upserts: list[PositionRow] = field(default_factory=list)
    new: set[str] = field(default_factory=set)  # symbols of upserts with no stored row (inserted plainly)
    deletes: list[str] = field(default_factory=list)
    events: list[PositionEvent] = field(default_factory=list)
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not (self.upserts or self.deletes)

    @property
    def changed_symbols(self) -> list[str]:
        return sorted({r.symbol for r in self.upserts} | set(self.deletes))


def event_kind(old: Decimal, new: Decimal) -> EventKind | None:
    """The ``position_events.kind`` of a quantity change (0 = no position), or None if there is none."""
    if old == new:
        return None
    if old == 0:
        return "opened"
    if new == 0:
        return "closed"
    if (old > 0) != (new > 0):
        return "flipped"
    return "increased" if abs(new) > abs(old) else "reduced"


def _marks_differ(stored: PositionRow, fetched: PositionRow) -> bool:
    """A mark the broker gave that differs from the stored one (a mark the broker did not give is kept)."""
    old_marks, new_marks = stored.marks(), fetched.marks()
    if old_marks == new_marks:
        return False
    return any(new is not None and new != old for old, new in zip(old_marks, new_marks, strict=True))


def diff_positions(stored: Mapping[str, PositionRow], fetched: Iterable[PositionRow]) -> Diff:
    """Compare the stored mirror with the broker's answer (symbols unique, quantities non-zero).

    A fetched row is upserted when it is new, when an accountSync-owned position field
    differs, or when its marks differ while the stored row's marks are still ours
    (see the module docstring). A stored symbol the broker no longer reports is deleted.
    Every quantity change yields one event (``old_quantity`` 0 for ``opened``,
    ``new_quantity`` 0 for ``closed``).
    """
    diff = Diff()
    seen: set[str] = set()
    for row in fetched:
        seen.add(row.symbol)
        old = stored.get(row.symbol)
        if old is None:
            diff.upserts.append(row)
            diff.new.add(row.symbol)
            diff.events.append(PositionEvent(row.symbol, "opened", Decimal(0), row.quantity))
            continue
        if old.quantity != row.quantity:
            kind = event_kind(old.quantity, row.quantity)
            if kind is not None:
                diff.events.append(PositionEvent(row.symbol, kind, old.quantity, row.quantity))
        # old[1:11] / old[11:14]: position_fields() and marks(), sliced here without a call per row
        if old[1:11] != row[1:11] or (old.marks_ours and old[11:14] != row[11:14] and _marks_differ(old, row)):
            diff.upserts.append(row)
        else:
            diff.unchanged += 1
    for symbol in sorted(stored.keys() - seen):
        diff.deletes.append(symbol)
        diff.events.append(PositionEvent(symbol, "closed", stored[symbol].quantity, Decimal(0)))
    return diff


def balances_changed(stored: Mapping[str, Any] | None, fetched: Balances) -> bool:
    """True when there is no snapshot yet or any of its five numbers differs from the broker's."""
    if stored is None or stored["equity"] is None:
        return True
    return any(stored[k] != getattr(fetched, k) for k in _BALANCE_FIELDS)


_BALANCE_FIELDS = ("equity", "cash", "buying_power", "long_market_value", "short_market_value")


# -- the broker's answer as rows ----------------------------------------------------------------------


def position_row(p: Position) -> PositionRow:
    """The row a broker position becomes; option fields from the adapter's OCC spec.

    Pure: the adapters guarantee the answer (:mod:`syncd.brokers.sanity`): a symbol, each
    symbol once, finite numbers, required ones present, an option's OCC fields parsed.
    """
    spec = p.option
    # asset_class, underlying, option_type, strike, expiration, multiplier: the columns stocks and options differ in
    instrument: tuple[str, str, str | None, Decimal | None, dt.date | None, Decimal] = (
        (_ASSET_CLASS.get(p.asset_class) or AssetClass(p.asset_class).value, p.symbol, None, None, None, _ONE)
        if spec is None
        else (
            AssetClass.US_OPTION.value,
            spec.underlying,
            spec.option_type.value,
            spec.strike,
            spec.expiration,
            Decimal(spec.multiplier),
        )
    )
    return PositionRow(
        p.symbol,
        *instrument,
        p.quantity,
        p.qty_available,
        p.avg_entry_price,
        p.cost_basis,
        p.current_price,
        p.market_value,
        p.unrealized_pl,
    )


_ONE = Decimal(1)
_ASSET_CLASS = {c: c.value for c in AssetClass}  # a dict lookup, not an enum call per row


def position_rows(positions: Sequence[Position]) -> list[PositionRow]:
    """The broker's positions as rows; flat ones (quantity 0) dropped."""
    return [row for row in map(position_row, positions) if row.quantity != 0]


# -- fetching ------------------------------------------------------------------------------------------


async def fetch_answer(broker: Broker, deadline_s: float) -> AccountAnswer:
    """Balances and positions, requested at once (a failure of either cancels the other), undecoded.

    ``BrokerUnavailable`` when the whole fetch takes longer than ``deadline_s`` (a broker
    that never answers); the adapters' own per-request timeouts normally end it sooner.
    """
    try:
        async with asyncio.timeout(deadline_s):
            return await account_answer(broker)
    except TimeoutError:
        raise BrokerUnavailable(
            f"fetching balances and positions timed out after {deadline_s:g}s", timed_out=True
        ) from None


# -- writing ---------------------------------------------------------------------------------------------


# account_sync_apply's rows: JSON encoded in C, decimals as their exact strings, dates ISO 8601.
_ROWS_JSON = msgspec.json.Encoder(decimal_format="string")

# The fields of a PositionRow that account_sync_apply reads, in the order it reads them (u->>0 ..).
UPSERT_FIELDS = PositionRow._fields[:14]


def upsert_rows(rows: Sequence[PositionRow], new: AbstractSet[str] = frozenset()) -> bytes:
    """``account_sync_apply``'s rows to write: each row's ``UPSERT_FIELDS`` as a JSON array, then
    whether its symbol is in ``new`` (no stored row: inserted without an upsert's conflict probe, 0023)."""
    return _ROWS_JSON.encode([(*r[:14], r[0] in new) for r in rows])


def event_rows(events: Sequence[PositionEvent]) -> bytes:
    """``account_sync_apply``'s events: ``[symbol, kind, old_quantity, new_quantity]`` each."""
    return _ROWS_JSON.encode([(e.symbol, e.kind, e.old_quantity, e.new_quantity) for e in events])


def balances_row(b: Balances) -> dict[str, Any]:
    """The broker's balances as a ``balances_row`` (0012), by attribute name."""
    return {k: getattr(b, k) for k in _BALANCE_FIELDS}


def stored_rows(records: Sequence[asyncpg.Record]) -> dict[str, PositionRow]:
    """Stored rows by symbol, each read by column name: the SELECT may list PositionRow's fields in any order.

    The columns are matched by name once per result (every record of one query has the same
    columns), then each record is picked in C: a missing column raises ``ValueError``.
    """
    if not records:
        return {}
    columns = list(records[0].keys())
    pick = operator.itemgetter(*(columns.index(name) for name in PositionRow._fields))
    make = PositionRow._make
    rows = (make(pick(r)) for r in records)
    return {row.symbol: row for row in rows}


@dataclass(slots=True)
class SyncResult:
    positions: int
    diff: Diff
    snapshot: bool
    same_answer: bool = False  # the broker's answer was the recorded one: nothing decoded or compared
    expiry: bool | None = None  # whether expiry settlement has a trade to look at (None: not asked)

    def stats(self) -> dict[str, Any]:
        return {
            "positions": self.positions,
            "upserted": len(self.diff.upserts),
            "deleted": len(self.diff.deletes),
            "events": len(self.diff.events),
            "unchanged": self.diff.unchanged,
            "snapshot": int(self.snapshot),
            "same_answer": int(self.same_answer),
        }


@dataclass(slots=True)
class _Plan:
    """What one pass would write, given what is stored, and the fingerprints of what was read (0019)."""

    diff: Diff
    snapshot: bool
    broker_id: str | None  # set when it differs from the stored one
    positions_state: str | None = None
    account_state: str | None = None
    marks_free: bool = False  # no stored row's marks are accountSync's (monitorCycle quoted every one)

    @property
    def idle(self) -> bool:
        return self.diff.empty and not self.snapshot and self.broker_id is None


# account_positions_state (0020) of an account with no stored position: no rows, hashes summing to 0.
_NO_POSITIONS_STATE = "0:0"


async def _plan(
    ctx: Context,
    conn: PoolConnectionProxy[Any],
    account: Account,
    fetched: _Fetched,
    b: Balances,
    *,
    fingerprint: bool = False,
    stored_account: Any = None,
    compared: _Plan | None = None,
) -> _Plan:
    """Compare with what is stored; ``fingerprint``: also read the stored state's fingerprints (0019).

    ``stored_account``: the account as ``account_sync_unchanged`` read it (its columns are those of
    ``account_sync_stored_account``, with ``state`` read when ``fingerprint``); else it is read here.

    ``compared``: the plan of a comparison made just before, outside the transaction this one is
    made in. When the stored positions' fingerprint, read again with the account, is the one of
    the rows that comparison read, its positions' diff holds and the rows are not read again
    (the balances are compared again either way). Stored positions whose fingerprint says there
    are none (``0:0``, an exact count) are not read either.

    When the stored positions' fingerprint (read with the account) is the one of rows this process
    last found equal to the broker's, every mark of them monitorCycle's (``ctx.compared_rows``),
    and the broker's positions digest as they did then, they compare equal without being read
    back: prices moved, nothing accountSync owns did (the broker's positions were then perhaps not
    even decoded: see :func:`_fetched`). Otherwise the rows are read with their fingerprint and
    compared; a comparison that finds them equal, every mark monitorCycle's, is remembered for the
    next pass.
    """
    q = ctx.queries
    state: Any = stored_account
    if state is None:
        # the positions' fingerprint only when a comparison (remembered, or just made) could spare
        # reading the rows
        wanted = compared is not None or account.id in ctx.compared_rows
        state = await conn.fetchrow(q["account_sync_stored_account"], account.id, fingerprint, wanted)
    snapshot, broker_id = _account_plan(state, b)
    account_state = None if state is None else state["state"]
    positions_state = None if state is None else state["positions_state"]
    if compared is not None and positions_state is not None and positions_state == compared.positions_state:
        return _Plan(compared.diff, snapshot, broker_id, positions_state, account_state, compared.marks_free)
    remembered = ctx.compared_rows.get(account.id)
    if (
        positions_state is not None
        and remembered is not None
        and remembered[0] == positions_state
        and (fetched.matched is remembered or remembered[1] == rows_digest(fetched.rows()))
    ):
        return _Plan(Diff(unchanged=fetched.count), snapshot, broker_id, positions_state, account_state, True)
    if positions_state == _NO_POSITIONS_STATE:
        records: list[Any] = []  # none stored: nothing to read
    else:
        records = await conn.fetch(q["account_sync_stored_positions"], account.id, True)
    stored = stored_rows(records)
    rows = fetched.rows()
    plan = _Plan(
        diff_positions(stored, rows),
        snapshot,
        broker_id,
        records[0]["state"] if records else _NO_POSITIONS_STATE,  # of these very rows
        account_state,
        marks_free=not any(row.marks_ours for row in stored.values()),
    )
    if plan.diff.empty and plan.marks_free and plan.positions_state is not None:
        key = fetched.key()
        ctx.compared_rows[account.id] = (plan.positions_state, rows_digest(rows), key, len(rows))
    else:
        ctx.compared_rows.pop(account.id, None)
    return plan


class _Unset:
    """The type of ``_UNSET``: a value not computed yet."""


_UNSET = _Unset()


class _Fetched:
    """The broker's positions for one pass, as rows decoded only when a comparison needs them.

    ``matched``: the entry of ``ctx.compared_rows`` whose positions key this answer's matched
    (:func:`_fetched`); its positions were then not decoded, and ``count`` is that entry's.
    """

    __slots__ = ("_answer", "_key", "_rows", "count", "matched")

    def __init__(
        self,
        answer: AccountAnswer,
        rows: list[PositionRow] | None,
        count: int,
        matched: tuple[str, int, int | None, int] | None = None,
        key: int | _Unset | None = _UNSET,
    ) -> None:
        self._answer, self._rows, self.count, self.matched = answer, rows, count, matched
        self._key = key

    def rows(self) -> list[PositionRow]:
        """The positions as rows (decoded now if they were not: ``BadBrokerData`` as ``decode``)."""
        if self._rows is None:
            self._rows = position_rows(self._answer.decode()[1])
            self.count = len(self._rows)
        return self._rows

    def key(self) -> int | None:
        """The adapter's positions key of this answer (None: it has none), computed once."""
        if isinstance(self._key, _Unset):
            self._key = None if self._answer.positions_key is None else self._answer.positions_key()
        return self._key


def _fetched(ctx: Context, account: Account, answer: AccountAnswer, known: Any) -> tuple[Balances, _Fetched]:
    """The answer's balances, and its positions: not decoded when their key (every field but the
    marks, as the broker wrote them; the marks checked) is the one of the answer this process last
    found equal to the stored rows, and the stored rows still have the fingerprint they had then
    (``known``, read by ``account_sync_unchanged``): then the comparison's outcome is known.
    Otherwise decoded in full (``BadBrokerData`` for a malformed answer)."""
    remembered = ctx.compared_rows.get(account.id)
    key: int | _Unset | None = _UNSET
    if (
        remembered is not None
        and remembered[2] is not None
        and known is not None
        and known["positions_state"] == remembered[0]
        and answer.balances is not None
        and answer.positions_key is not None
    ):
        key = answer.positions_key()
        if key == remembered[2]:
            return answer.balances(), _Fetched(answer, None, remembered[3], remembered, key)
    balances, positions = answer.decode()
    rows = position_rows(positions)
    return balances, _Fetched(answer, rows, len(rows), key=key)  # a key computed here is not computed again


def _account_plan(state: Any, b: Balances) -> tuple[bool, str | None]:
    """Whether a balances snapshot is due, and the broker account id to store (None: the stored one holds)."""
    broker_id = b.broker_account_id or None
    if broker_id is not None and state is not None and state["broker_account_id"] == broker_id:
        broker_id = None
    return balances_changed(state, b), broker_id


def rows_digest(rows: Sequence[PositionRow]) -> int:
    """A digest of the position fields (symbol .. cost_basis) of ``rows``, whatever their order.

    Python's own hash (per process, like the cache it keys): values equal as accountSync compares
    them (``Decimal("1.0")`` and ``Decimal("1.00")``) digest alike. The marks are left out: it is
    only used while monitorCycle owns every stored row's marks.
    """
    return hash(frozenset([row[:11] for row in rows]))


async def _apply(
    conn: PoolConnectionProxy[Any],
    q: Mapping[str, str],
    account: Account,
    plan: _Plan,
    b: Balances,
    fetched: _Fetched,
    fingerprint: bytes | None,
    expected: str | None,
) -> Any:
    """Write ``plan`` in one statement (``account_sync_apply``, 0022), with the answer's fingerprint.

    ``expected``: the stored positions' fingerprint the diff was made against; the statement then
    takes the account's lock and writes nothing (``stale``) when the stored one is no longer it.
    None: no check (the caller holds the lock and compared under it). The balances snapshot and
    the broker account id are decided by the statement, under the lock."""
    diff = plan.diff
    return await conn.fetchrow(
        q["account_sync_apply"],
        account.id,
        SYNC_LOCK_CLASS,
        expected,
        upsert_rows(diff.upserts, diff.new),
        diff.deletes,
        event_rows(diff.events),
        balances_row(b),
        b.broker_account_id or None,
        events.payloads("position", account.name, diff.changed_symbols),
        events.payload("account", account.name, account.name),
        fingerprint,
        fetched.count,
        list(PENDING_REASONS),
        plan.positions_state if diff.empty else None,  # no row written: as read
    )


async def sync_account(ctx: Context, account: Account) -> SyncResult:
    """Fetch, compare, write the difference in one transaction; raise (changing nothing) on a bad fetch.

    When the broker's answer is byte for byte the one recorded after an earlier pass, over a
    stored state with the fingerprints recorded then (0019), one statement marks the account
    synced (sent with the other accounts' passes that ask at the same time, syncd.db.grouped): no
    decoding, no comparison, nothing written. Otherwise the answer is decoded and
    compared first without a transaction: when nothing changed (the usual case) one UPDATE of
    ``accounts`` is all the pass writes (the time; the answer's fingerprint as the one seen, and
    when the pass before saw it too, recorded with the state's fingerprints). Otherwise one
    statement (``account_sync_apply``) takes the account's advisory lock, checks the stored rows
    still have the fingerprint compared against, writes the difference and records the
    fingerprints. When they changed (another replica, a hand edit, a quote), it writes nothing and
    a transaction takes the lock, compares again and writes what that state needs.
    """
    deadline = ctx.settings.cycles.broker_timeout_s * FETCH_DEADLINE_FACTOR
    answer = await fetch_answer(account.broker, deadline)
    q = ctx.queries
    known: Any = None  # the record account_sync_unchanged read (None: no fingerprint)
    wrote = False
    written_expiry: bool | None = None  # after a write: whether expiry settlement has a trade to look at
    record = False  # fingerprint the stored state for this answer (it is the one the pass before saw)
    if answer.fingerprint is not None:
        # one statement with the other accounts' passes that ask meanwhile (syncd.db.grouped)
        unchanged = ctx.grouped("account_sync_unchanged", shared=[list(PENDING_REASONS)])
        known = await unchanged.fetchrow(account.id, answer.fingerprint)
        count = known["positions"]
        if count is not None:
            ctx.metrics.set("syncd_positions", count, account=account.name)
            return SyncResult(count, Diff(unchanged=count), False, same_answer=True, expiry=known["expiry"])
        record = known["seen"]
    balances, fetched = _fetched(ctx, account, answer, known)
    async with ctx.pool.acquire() as conn:
        plan = await _plan(ctx, conn, account, fetched, balances, fingerprint=record, stored_account=known)
        if plan.idle:
            await conn.execute(
                q["account_sync_mark_synced"],
                account.id,
                answer.fingerprint,
                plan.positions_state if record else None,  # recorded only for an answer seen twice
                plan.account_state,
                fetched.count,
            )
        else:
            # one statement, checked against the stored positions the diff was made from; when
            # they changed meanwhile, compared again under the account's lock and written so
            applied = None
            if plan.positions_state is not None:
                applied = await _apply(
                    conn, q, account, plan, balances, fetched, answer.fingerprint, plan.positions_state
                )
            if applied is None or applied["stale"]:
                async with conn.transaction():
                    await conn.execute(q["account_sync_lock"], SYNC_LOCK_CLASS, account.id)
                    plan = await _plan(ctx, conn, account, fetched, balances, compared=plan)
                    applied = await _apply(conn, q, account, plan, balances, fetched, answer.fingerprint, None)
            plan.snapshot = applied["snapshot"]
            written_expiry = applied["expiry"]
            wrote = True
    ctx.metrics.set("syncd_positions", fetched.count, account=account.name)
    if not plan.diff.empty:
        log.info(
            "positions_changed",
            upserted=len(plan.diff.upserts),
            deleted=len(plan.diff.deletes),
            events=len(plan.diff.events),
        )
    # Nothing written: the expiry hint read before the comparison still holds; after a write, the
    # one read in the write's transaction.
    expiry = written_expiry if wrote else known["expiry"] if known is not None else None
    return SyncResult(fetched.count, plan.diff, plan.snapshot, expiry=expiry)


async def sync_pass(ctx: Context, account: Account) -> dict[str, Any]:
    """An accountSync pass without the automatic import (``import-positions`` imports by itself)."""
    return (await sync_account(ctx, account)).stats()


async def account_pass(ctx: Context, account: Account) -> dict[str, Any]:
    """One accountSync pass over ``account`` (see the module docstring); returns its stats.

    Option trades whose legs vanished at expiry are then settled from the broker's records
    (:func:`syncd.trading.expiry_store.settle_expirations`, as tradeCycle does too). With
    ``cycles.auto_import`` the positions no live trade covers then become trades
    (:mod:`syncd.cycles.importer`), in a transaction of their own.
    """
    result = await sync_account(ctx, account)
    stats = result.stats()
    settled = [] if result.expiry is False else await settle_expirations(ctx, account)
    if settled:
        stats["expiry_trades"] = len(settled)
    if ctx.settings.cycles.auto_import:
        from syncd.cycles.importer import import_positions  # the importer builds on this module

        imported = await import_positions(ctx, account)
        stats["imported"] = len(imported)
    return stats
