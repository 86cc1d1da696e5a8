"""The one Protocol every broker adapter implements, and syncd's broker exceptions.

Foreign exceptions (aiohttp, pydantic, json) are translated into these at the
adapter boundary; the cycles handle only ``BrokerError`` subclasses. No message
built here or in an adapter may contain a secret.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, runtime_checkable

from syncd import __version__
from syncd.brokers.types import (
    Balances,
    Clock,
    OptionEvent,
    Order,
    OrderRequest,
    Position,
    Quote,
    ReplaceRequest,
    TradeUpdate,
)

OrderStatusFilter = Literal["open", "closed", "all"]


class BrokerError(Exception):
    """Base of every error an adapter raises."""

    def __init__(self, message: str, *, broker: str = "", account: str = "") -> None:
        super().__init__(message)
        self.broker = broker
        self.account = account


class BrokerUnavailable(BrokerError):
    """Connection error, timeout, 5xx or 429 that retries did not cure. The outcome is unknown.

    ``timed_out``: the broker did not answer within ``broker_timeout_s`` (it hangs).
    """

    def __init__(self, message: str, *, timed_out: bool = False, **kw: str) -> None:
        super().__init__(message, **kw)
        self.timed_out = timed_out


class BrokerRateLimited(BrokerUnavailable):
    def __init__(self, message: str, *, retry_after: float | None = None, broker: str = "", account: str = "") -> None:
        super().__init__(message, broker=broker, account=account)
        self.retry_after = retry_after


class BrokerAuthFailed(BrokerError):
    """401/403: the credentials are wrong or lack permission."""


class BrokerRejected(BrokerError):
    """The broker understood the request and refused it (its reason in ``reason``)."""

    def __init__(self, message: str, *, reason: str, status: int | None = None, **kw: str) -> None:
        super().__init__(message, **kw)
        self.reason = reason
        self.status = status


class OrderNotFound(BrokerError):
    """The broker knows no such order."""


class BadBrokerData(BrokerError):
    """The broker's answer could not be understood; ``field`` names what was wrong."""

    def __init__(self, message: str, *, field: str = "", **kw: str) -> None:
        super().__init__(message, **kw)
        self.field = field


class StreamNotSupported(BrokerError):
    """This broker offers no trade-update stream; poll instead."""


@runtime_checkable
class Broker(Protocol):
    """An account at a broker, as the cycles see it."""

    @property
    def kind(self) -> str:
        """``alpaca`` or ``tradier``."""
        ...

    @property
    def request_count(self) -> int:
        """HTTP requests made so far (retries included): for metrics and benchmarks."""
        ...

    @property
    def supports_stream(self) -> bool: ...

    async def get_account(self) -> Balances: ...

    async def list_positions(self) -> list[Position]: ...

    async def list_orders(self, status: OrderStatusFilter = "all", since: dt.datetime | None = None) -> list[Order]: ...

    async def get_order(self, broker_order_id: str) -> Order: ...

    async def get_order_by_client_id(self, client_order_id: str) -> Order | None: ...

    async def submit_order(self, request: OrderRequest) -> Order: ...

    async def cancel_order(self, broker_order_id: str) -> None: ...

    async def replace_order(self, request: ReplaceRequest) -> Order:
        """Change a working order's limit and/or quantity; the order that now works (Alpaca: a new one).

        ``BrokerRejected`` (with the broker's reason) when the order can no longer be changed
        (it filled, it was cancelled) or the change is one the broker does not offer.
        """
        ...

    async def get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]: ...

    async def get_clock(self) -> Clock: ...

    async def list_option_events(self, since: dt.date) -> list[OptionEvent]:
        """Expiries, assignments and exercises booked on or after ``since``, oldest first
        (Alpaca: account activities; Tradier: account history, updated nightly)."""
        ...

    def trade_updates(self) -> AsyncIterator[TradeUpdate]:
        """Stream of order events; raises ``StreamNotSupported`` where the broker has none."""
        ...

    async def aclose(self) -> None: ...


# -- balances and positions as one answer ---------------------------------------------------------

A = TypeVar("A")
B = TypeVar("B")


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results, awaited at once; when either fails (or this is cancelled) the other is
    cancelled and collected, so no exception goes unretrieved."""
    one, two = asyncio.ensure_future(first), asyncio.ensure_future(second)
    try:
        a, b = await asyncio.gather(one, two)  # the first failure ends the wait
        return a, b
    finally:
        if not (one.done() and two.done()):  # (both done: gather has retrieved every exception)
            for task in (one, two):
                if not task.done():
                    task.cancel()
            await asyncio.gather(one, two, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class AccountAnswer:
    """The broker's answer for accountSync: balances and positions, and what identifies it.

    ``fingerprint``: a digest of the exact bytes the broker sent (:func:`answer_fingerprint`),
    or None where the adapter keeps no bytes. Two answers with the same fingerprint decode
    to the same balances and positions (or to the same refusal). ``decode`` gives them, or
    raises ``BadBrokerData`` for a malformed answer; accountSync calls it only when the
    fingerprint does not already tell it that nothing changed.
    """

    decode: Callable[[], tuple[Balances, list[Position]]]
    fingerprint: bytes | None = None
    # Where the adapter can tell without decoding the positions in full (else None):
    # ``balances`` decodes the balances alone (or raises ``BadBrokerData``, as ``decode``);
    # ``positions_key`` gives a key of the positions as the broker wrote them, everything of them
    # but their marks (current_price, market_value, unrealized_pl), which it checks as ``decode``
    # would; None when it cannot tell (``decode`` then decides). Two answers with the same key, one
    # of which ``decode`` took, decode to positions equal in everything but their marks, and the
    # other is taken too. Keys are compared within one process only.
    balances: Callable[[], Balances] | None = None
    positions_key: Callable[[], int | None] | None = None


def answer_fingerprint(kind: str, *bodies: bytes) -> bytes:
    """A 16-byte digest (SHA-256, truncated) of the bodies, each length-prefixed, salted with syncd's
    version and the broker kind: a new syncd (which may decode differently) never trusts an old one.

    SHA-256 rather than BLAKE2b: with the SHA extensions of today's x86 and ARM processors, OpenSSL
    hashes it twice as fast (25 us for a 30 KB positions answer, against 55 us), on every answer."""
    h = hashlib.sha256(f"syncd {__version__} {kind}".encode())
    for body in bodies:
        h.update(len(body).to_bytes(8, "big"))
        h.update(body)
    return h.digest()[:16]


@dataclass(frozen=True, slots=True)
class QuoteAnswer:
    """The broker's quotes for monitorCycle, and what identifies them (as :class:`AccountAnswer`).

    ``fingerprint``: a digest of the symbols asked and the exact bytes of every answer
    (:func:`answer_fingerprint`), or None where the adapter keeps no bytes. Two answers with
    the same fingerprint decode to the same quotes (or the same refusal). ``decode`` gives
    them (symbols the broker lacks are absent), or raises ``BadBrokerData``; monitorCycle
    calls it only when the fingerprint does not already tell it that nothing changed.
    """

    decode: Callable[[], dict[str, Quote]]
    fingerprint: bytes | None = None


async def quote_answer(broker: Broker, symbols: Sequence[str]) -> QuoteAnswer:
    """Quotes for ``symbols``: the adapter's own ``quote_answer`` (with a fingerprint) where it
    has one, else ``get_quotes``, decoded."""
    own = getattr(broker, "quote_answer", None)
    if own is not None:
        answer: QuoteAnswer = await own(symbols)
        return answer
    quotes = await broker.get_quotes(symbols)
    return QuoteAnswer(lambda: quotes)


async def account_answer(broker: Broker) -> AccountAnswer:
    """The account's balances and positions, requested at once: the adapter's own
    ``account_answer`` (with a fingerprint) where it has one, else both calls, decoded."""
    own = getattr(broker, "account_answer", None)
    if own is not None:
        answer: AccountAnswer = await own()
        return answer
    decoded = await both(broker.get_account(), broker.list_positions())
    return AccountAnswer(lambda: decoded)
