"""The outbox's database operations, in one place: one method per named query, typed rows.

:class:`OutboxStore` wraps a connection and the named queries (``outbox_*`` and
``trade_outbox_*`` in sql/queries/trade_cycle.sql); :mod:`syncd.trading.outbox` decides, the
store reads and writes. Rows come back as frozen dataclasses (:class:`Request`,
:class:`Trade`, :class:`CloseInput`), never as untyped records. Transactions are the
caller's (``async with store.transaction():``): the outbox commits before each broker call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
from asyncpg.transaction import Transaction

from syncd.brokers.types import LegRequest, Side
from syncd.db import Queries
from syncd.db.pool import keeps_session_state
from syncd.trading.order_store import (
    Applied,
    Conn,
    Link,
    Observation,
    apply_observations,
    lock_orders,
    send_notifications,
)


def leg_row(index: int, leg: LegRequest) -> dict[str, Any]:
    """One ``trade_leg_row`` (0013) by attribute name."""
    return {"leg_index": index, "symbol": leg.symbol, "side": leg.side.value, "ratio": leg.ratio}


@dataclass(frozen=True, slots=True)
class Request:
    """One ``order_requests`` row as claimed (its payload as text, read by ``outbox.read_payload``)."""

    id: int
    account_id: int
    kind: str
    trade_id: int | None
    payload: str
    client_order_id: str | None
    state: str
    attempts: int
    last_error: str | None
    broker_order_id: str | None


@dataclass(frozen=True, slots=True)
class Trade:
    """The trade a request names, with its account (which must be the request's)."""

    id: int
    account_id: int
    status: str
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class ReplaceTarget:
    """One top-level order of a trade, as a replace request sees it."""

    broker_order_id: str
    role: str | None
    status: str
    option: bool  # an option or multi-leg order: its prices take 2 decimals
    qty: Decimal | None
    limit_price: Decimal | None
    working: bool


@dataclass(frozen=True, slots=True)
class CloseInput:
    """One leg of a live trade: what is held, what working closing orders hold, what this trade may close."""

    leg_index: int
    symbol: str
    side: Side
    ratio: int
    position_quantity: Decimal
    committed: Decimal
    available: Decimal | None


async def has_work(pool: asyncpg.Pool[Any], q: Queries, account_id: int) -> bool:
    """Whether the account has a queued or submitting request (one cheap query, no lock, no connection held)."""
    return bool(await pool.fetchval(q["outbox_has_work"], account_id))


class OutboxStore:
    """The outbox's reads and writes on one connection."""

    __slots__ = ("conn", "q")

    def __init__(self, conn: Conn, q: Queries) -> None:
        self.conn = conn
        self.q = q

    def transaction(self) -> Transaction:
        return self.conn.transaction()

    # -- the drainer's lock (a session advisory lock) and the work list --

    async def try_lock(self, lock_class: int, account_id: int) -> bool:
        keeps_session_state(self.conn)  # released with a full reset, which drops the lock if unlock failed
        return bool(await self.conn.fetchval(self.q["trade_outbox_try_lock"], lock_class, account_id))

    async def unlock(self, lock_class: int, account_id: int) -> None:
        await self.conn.execute(self.q["trade_outbox_unlock"], lock_class, account_id)

    async def pending(self, account_id: int) -> list[int]:
        """The account's queued and submitting requests, oldest first."""
        return [int(r["id"]) for r in await self.conn.fetch(self.q["outbox_pending"], account_id)]

    # -- requests --

    async def claim(self, request_id: int) -> Request | None:
        """The request, locked for this transaction; ``None`` when another worker holds it or it is done."""
        row = await self.conn.fetchrow(self.q["outbox_claim"], request_id)
        return None if row is None else _request(row)

    async def set_client_id(self, request_id: int, client_order_id: str) -> None:
        await self.conn.execute(self.q["outbox_set_client_id"], request_id, client_order_id)

    async def set_trade(self, request_id: int, trade_id: int) -> None:
        await self.conn.execute(self.q["outbox_set_trade"], request_id, trade_id)

    async def mark_submitting(self, request_id: int, trade_id: int | None) -> int:
        """``submitting``, one more attempt (and its trade, when given); returns the attempts now counted."""
        return int(await self.conn.fetchval(self.q["outbox_mark_submitting"], request_id, trade_id))

    async def mark_submitted(self, request_id: int, broker_order_id: str | None) -> None:
        await self.conn.execute(self.q["outbox_mark_submitted"], request_id, broker_order_id)

    async def mark_final(self, request_id: int, state: str, error: str) -> None:
        """``rejected`` or ``failed``, with the reason (``last_error``)."""
        await self.conn.execute(self.q["outbox_mark_final"], request_id, state, error)

    async def note_error(self, request_id: int, error: str) -> None:
        """The outcome is still unknown: keep the state, say why."""
        await self.conn.execute(self.q["outbox_note_error"], request_id, error)

    # -- trades --

    async def trade(self, trade_id: int) -> Trade | None:
        row = await self.conn.fetchrow(self.q["outbox_trade"], trade_id)
        if row is None:
            return None
        return Trade(int(row["id"]), int(row["account_id"]), str(row["status"]), row["quantity"])

    async def create_trade(
        self,
        account_id: int,
        symbol: str,
        strategy: str,
        qty: Decimal,
        take_profit_pct: Decimal | None,
        stop_loss_pct: Decimal | None,
    ) -> int:
        """A ``pending`` trade for an ``open`` request; returns its id."""
        return int(
            await self.conn.fetchval(
                self.q["outbox_create_trade"],
                account_id,
                symbol,
                strategy,
                qty,
                take_profit_pct,
                stop_loss_pct,
            )
        )

    async def insert_legs(self, trade_id: int, legs: Sequence[LegRequest]) -> None:
        await self.conn.execute(
            self.q["outbox_insert_legs"],
            trade_id,
            [leg_row(i, leg) for i, leg in enumerate(legs)],
        )

    async def close_inputs(self, trade_id: int, account_id: int) -> list[CloseInput]:
        """Per leg of the live trade, in leg order; none when it is neither open nor closing."""
        return [
            CloseInput(
                int(r["leg_index"]),
                str(r["symbol"]),
                Side(r["side"]),
                int(r["ratio"]),
                r["position_quantity"],
                r["committed"],
                r["available"],
            )
            for r in await self.conn.fetch(self.q["outbox_close_inputs"], trade_id, account_id)
        ]

    async def set_close_reason(self, trade_id: int, reason: str) -> None:
        await self.conn.execute(self.q["outbox_set_close_reason"], trade_id, reason)

    async def reopen_trade(self, trade_id: int, account_id: int) -> int | None:
        """A trade left ``closing`` with no working exit, open again; its id when changed."""
        return _id_or_none(await self.conn.fetchval(self.q["outbox_reopen_trade"], trade_id, account_id))

    async def end_trade(self, trade_id: int, status: str, reason: str, account_id: int) -> int | None:
        """A ``pending`` trade ``rejected`` or ``cancelled`` with the reason; its id when changed."""
        return _id_or_none(await self.conn.fetchval(self.q["outbox_end_trade"], trade_id, status, reason, account_id))

    async def replace_targets(self, trade_id: int, account_id: int) -> list[ReplaceTarget]:
        """The trade's top-level orders, working ones first, newest first (what a replace may change)."""
        return [
            ReplaceTarget(
                str(r["broker_order_id"]),
                r["role"],
                str(r["status"]),
                r["asset_class"] == "us_option" or r["order_class"] == "mleg",
                r["qty"],
                r["limit_price"],
                bool(r["working"]),
            )
            for r in await self.conn.fetch(self.q["outbox_replace_targets"], trade_id, account_id)
        ]

    async def request_trade(self, request_id: int, account_id: int) -> int | None:
        """The trade of request ``request_id`` of this account (what a replace naming it amends)."""
        return _id_or_none(await self.conn.fetchval(self.q["outbox_request_trade"], request_id, account_id))

    async def working_orders(self, trade_id: int) -> list[str]:
        """The trade's working top-level orders' broker ids (what a cancel request cancels)."""
        return [str(r["broker_order_id"]) for r in await self.conn.fetch(self.q["outbox_working_orders"], trade_id)]

    # -- the order mirror, through the order store's one path --

    async def record(self, account_id: int, observations: Sequence[Observation], links: Mapping[str, Link]) -> Applied:
        """Apply broker orders like a poll, under the account's orders lock (call inside a transaction)."""
        await lock_orders(self.conn, self.q, account_id)
        return await apply_observations(self.conn, self.q, account_id, observations, links=links)

    async def notify(self, payloads: Sequence[str]) -> None:
        await send_notifications(self.conn, self.q, payloads)


def _request(row: Mapping[str, Any]) -> Request:
    return Request(
        id=int(row["id"]),
        account_id=int(row["account_id"]),
        kind=str(row["kind"]),
        trade_id=_id_or_none(row["trade_id"]),
        payload=str(row["payload"]),
        client_order_id=row["client_order_id"],
        state=str(row["state"]),
        attempts=int(row["attempts"]),
        last_error=row["last_error"],
        broker_order_id=row["broker_order_id"],
    )


def _id_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
