"""One pass's view of a broker: once the broker hung, the pass asks it nothing more.

``broker_timeout_s`` bounds one request, retries included (:mod:`syncd.brokers.http`).
A pass makes several requests (tradeCycle: the outbox's placements and look-ups, then the
order listing; monitorCycle: a few quote batches), so a broker that hangs would still
cost ``requests x broker_timeout_s``. :class:`PassBroker` wraps the account's broker for
one pass (:func:`syncd.daemon.passes.run_pass`): after a request ended with no answer within
its deadline (``BrokerUnavailable.timed_out``), every later call of that pass raises
``BrokerUnavailable`` at once, without a request. A pass over a hanging broker therefore
ends after about one ``broker_timeout_s`` (two when two requests run at once), changing
nothing; the next pass asks the broker afresh.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from syncd.brokers.base import (
    AccountAnswer,
    Broker,
    BrokerUnavailable,
    OrderStatusFilter,
    QuoteAnswer,
    account_answer,
    quote_answer,
)
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

T = TypeVar("T")


class PassBroker:
    """``broker`` for one pass; fails fast after the broker hung once (see the module docstring)."""

    def __init__(self, broker: Broker) -> None:
        self.inner = broker
        self.hung: BrokerUnavailable | None = None
        self.answered = 0  # calls of this pass the broker answered (the account's own requests, not others')

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def request_count(self) -> int:
        return self.inner.request_count

    @property
    def supports_stream(self) -> bool:
        return self.inner.supports_stream

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self.hung is not None:
            raise BrokerUnavailable(
                f"not asked: the broker did not answer an earlier request of this pass ({self.hung})",
                timed_out=True,
                broker=self.hung.broker,
                account=self.hung.account,
            )
        try:
            result = await fn()
        except BrokerUnavailable as exc:
            if exc.timed_out:
                self.hung = exc
            raise
        self.answered += 1
        return result

    async def get_account(self) -> Balances:
        return await self._call(self.inner.get_account)

    async def list_positions(self) -> list[Position]:
        return await self._call(self.inner.list_positions)

    async def account_answer(self) -> AccountAnswer:
        return await self._call(lambda: account_answer(self.inner))

    async def list_orders(self, status: OrderStatusFilter = "all", since: dt.datetime | None = None) -> list[Order]:
        return await self._call(lambda: self.inner.list_orders(status, since))

    async def get_order(self, broker_order_id: str) -> Order:
        return await self._call(lambda: self.inner.get_order(broker_order_id))

    async def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        return await self._call(lambda: self.inner.get_order_by_client_id(client_order_id))

    async def submit_order(self, request: OrderRequest) -> Order:
        return await self._call(lambda: self.inner.submit_order(request))

    async def cancel_order(self, broker_order_id: str) -> None:
        await self._call(lambda: self.inner.cancel_order(broker_order_id))

    async def replace_order(self, request: ReplaceRequest) -> Order:
        return await self._call(lambda: self.inner.replace_order(request))

    async def get_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        return await self._call(lambda: self.inner.get_quotes(symbols))

    async def quote_answer(self, symbols: Sequence[str]) -> QuoteAnswer:
        return await self._call(lambda: quote_answer(self.inner, symbols))

    async def get_clock(self) -> Clock:
        return await self._call(self.inner.get_clock)

    async def list_option_events(self, since: dt.date) -> list[OptionEvent]:
        return await self._call(lambda: self.inner.list_option_events(since))

    def trade_updates(self) -> AsyncIterator[TradeUpdate]:
        return self.inner.trade_updates()

    async def aclose(self) -> None:
        """The pass does not own the broker: nothing to close."""
