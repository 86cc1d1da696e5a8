"""Build the adapter an account's settings ask for."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
    shared: dict[Any, Any] | None = None,
) -> Broker:
    """An adapter for ``account`` sharing ``session``; each has its own rate limiter.

    ``on_request(broker, endpoint, status)`` is called after every HTTP attempt (for
    ``syncd_broker_requests_total``); ``timeout_s`` bounds each request. ``shared`` (one dict
    for all the accounts of a process) lets Tradier accounts under one token share that
    token's one account events connection (Tradier allows one streaming session at a time).
    """
    # Each adapter is imported when an account needs it: alpaca-py (and the pandas it imports)
    # only when an Alpaca account is configured.
    if account.broker == "alpaca":
        from syncd.brokers.alpaca import AlpacaBroker

        return AlpacaBroker(account, session=session, timeout_s=timeout_s, on_request=on_request, retry=retry)
    if account.broker == "tradier":
        from syncd.brokers.tradier import TradierBroker

        key = None
        if shared is not None and account.token is not None:
            token = hashlib.sha256(account.token.get_secret_value().encode()).hexdigest()  # no secret kept in a key
            key = ("tradier-events", token, account.base_url, account.stream_url, account.sandbox)
        events = shared.get(key) if shared is not None and key is not None else None
        broker = TradierBroker(
            account, session=session, timeout_s=timeout_s, on_request=on_request, retry=retry, events=events
        )
        if shared is not None and key is not None:
            shared.setdefault(key, broker.events)
        return broker
    raise ValueError(f"account {account.name!r}: unknown broker {account.broker!r}")
