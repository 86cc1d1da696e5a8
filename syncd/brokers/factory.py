"""Build the adapter an account's settings ask for."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp

from syncd.brokers.base import Broker
from syncd.settings import AccountSettings

if TYPE_CHECKING:
    from syncd.brokers.http import RetryPolicy


def build_broker(
    account: AccountSettings,
    *,
    session: aiohttp.ClientSession,
    timeout_s: float,
    on_request: Callable[[str, str, str], None] | None = None,
    retry: RetryPolicy | None = None,
) -> Broker:
    """An adapter for ``account`` sharing ``session``; each has its own rate limiter.

    ``on_request(broker, endpoint, status)`` is called after every HTTP attempt (for
    ``syncd_broker_requests_total``); ``timeout_s`` bounds each request.
    """
    # Each adapter is imported when an account needs it: alpaca-py (and the pandas it imports)
    # only when an Alpaca account is configured.
    if account.broker == "alpaca":
        from syncd.brokers.alpaca import AlpacaBroker

        return AlpacaBroker(account, session=session, timeout_s=timeout_s, on_request=on_request, retry=retry)
    if account.broker == "tradier":
        from syncd.brokers.tradier import TradierBroker

        return TradierBroker(account, session=session, timeout_s=timeout_s, on_request=on_request, retry=retry)
    raise ValueError(f"account {account.name!r}: unknown broker {account.broker!r}")
