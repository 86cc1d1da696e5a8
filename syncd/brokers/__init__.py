"""The broker layer: one Protocol (:mod:`.base`), domain types (:mod:`.types`), two adapters.

The adapters (and alpaca-py with them) are imported lazily, so importing the domain
types stays cheap for the simulator and the CLI. The cycles never see a broker's JSON.

May import: settings, logs, errors. Never db, trading, cycles, daemon, sim or the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from syncd.brokers.base import (
    BadBrokerData,
    Broker,
    BrokerAuthFailed,
    BrokerError,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    OrderNotFound,
    StreamNotSupported,
)
from syncd.brokers.lazy import DEFERRED, defer
from syncd.brokers.occ import format_occ, is_option_symbol, parse_occ

for _name in DEFERRED:  # before any adapter imports alpaca-py (syncd.brokers.lazy)
    defer(_name)

if TYPE_CHECKING:
    from syncd.brokers.alpaca import AlpacaBroker
    from syncd.brokers.factory import build_broker
    from syncd.brokers.tradier import TradierBroker

__all__ = [
    "AlpacaBroker",
    "BadBrokerData",
    "Broker",
    "BrokerAuthFailed",
    "BrokerError",
    "BrokerRateLimited",
    "BrokerRejected",
    "BrokerUnavailable",
    "OrderNotFound",
    "StreamNotSupported",
    "TradierBroker",
    "build_broker",
    "format_occ",
    "is_option_symbol",
    "parse_occ",
]

_LAZY = {
    "AlpacaBroker": "syncd.brokers.alpaca",
    "TradierBroker": "syncd.brokers.tradier",
    "build_broker": "syncd.brokers.factory",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'syncd.brokers' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
