"""What a broker may not say: answers that parse but cannot be true are refused.

Both adapters run every parsed answer through these checks before it leaves the adapter
(account, positions, orders listed or fetched by id, placement answers, stream events,
quotes); a failed check raises ``BadBrokerData`` naming the field, so the cycle stores
nothing of that answer and ``accounts.last_error`` says why. Refused:

- an order whose ``filled_qty`` exceeds its ``qty`` (an order with a quantity; Alpaca's
  notional orders have none: ``qty`` stays ``None``), or either one (or ``notional``)
  negative; the same for each leg;
- an order without a ``type`` (a leg takes its parent's): an order of unknown type is not
  taken as a market order;
- a timestamp more than :data:`MAX_FUTURE` (1 day) ahead of now: order times, a stream
  event's time, a quote's time. Clocks differ by seconds, not days;
- a negative price: ``avg_entry_price``, ``current_price``, bid, ask, last, fill prices
  (an order's average and a stream fill's price; a multi-leg order's net may be negative,
  a credit, but each leg's price may not). A short's sign is in its quantity and cost
  basis, so ``cost_basis``, ``market_value`` and P&L may be negative, prices never;
- a position without a symbol, a symbol reported twice in one answer, an option position
  whose symbol is not OCC (:func:`check_position`, :func:`check_positions`).

Numbers are finite wherever they are read: :func:`syncd.brokers.parse.decimal_or_none`
refuses NaN and infinities, and required numbers (a position's quantity and cost basis,
the account's equity) are refused when missing. Consumers (accountSync) rely on this and
check nothing again.

Digits beyond what syncd keeps exactly are refused where numbers are read
(:func:`syncd.brokers.parse.decimal_or_none`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal

from syncd.brokers.base import BadBrokerData
from syncd.brokers.types import AssetClass, Order, OrderClass, Position, Quote, TradeUpdate

MAX_FUTURE = dt.timedelta(days=1)
ZERO = Decimal(0)

Bad = Callable[[str, str], BadBrokerData]  # (message, field) -> the adapter's BadBrokerData


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _price(value: Decimal | None, field: str, bad: Bad) -> None:
    if value is not None and value < 0:
        raise bad(f"{field} is negative ({value}): a price never is", field)


def _time(value: dt.datetime | None, field: str, bad: Bad, now: dt.datetime) -> None:
    if value is not None and value > now + MAX_FUTURE:
        raise bad(f"{field} {value.isoformat()} is more than a day in the future", field)


def check_order(order: Order, what: str, bad: Bad, now: dt.datetime | None = None) -> Order:
    """``order`` itself, or ``bad(...)`` raised for the first thing in it that cannot be true."""
    now = now or _now()
    if order.type is None:
        raise bad(f"{what} has no type: an order of unknown type is not taken as a market order", f"{what}.type")
    if (order.qty is not None and order.qty < 0) or order.filled_qty < 0:
        raise bad(f"{what} has a negative quantity (qty {order.qty}, filled_qty {order.filled_qty})", f"{what}.qty")
    if order.notional is not None and order.notional < 0:
        raise bad(f"{what}.notional is negative ({order.notional})", f"{what}.notional")
    if order.qty is not None and order.qty > 0 and order.filled_qty > order.qty:
        raise bad(f"{what}.filled_qty {order.filled_qty} exceeds its qty {order.qty}", f"{what}.filled_qty")
    _price(order.stop_price, f"{what}.stop_price", bad)
    if order.order_class != OrderClass.MLEG or not order.legs:
        _price(order.filled_avg_price, f"{what}.filled_avg_price", bad)
    for name in ("submitted_at", "filled_at", "canceled_at", "updated_at"):
        _time(getattr(order, name), f"{what}.{name}", bad, now)
    for i, leg in enumerate(order.legs):
        check_order(leg, f"{what}.legs[{i}]", bad, now)
    return order


def check_position(p: Position, what: str, bad: Bad) -> Position:
    """``p`` itself, or ``bad(...)``: no symbol, an option without its OCC fields, a negative price."""
    if not isinstance(p.symbol, str) or not p.symbol:
        raise bad(f"{what}.symbol is missing", f"{what}.symbol")
    if p.asset_class == AssetClass.US_OPTION and p.option is None:
        raise bad(f"{what}.symbol: {p.symbol[:40]!r} is not an OCC option symbol", f"{what}.symbol")
    _price(p.avg_entry_price, f"{what}.avg_entry_price", bad)
    _price(p.current_price, f"{what}.current_price", bad)
    return p


def check_positions(positions: Sequence[Position], bad: Bad) -> list[Position]:
    """``positions`` (each already through :func:`check_position`), or ``bad(...)`` for a symbol reported twice."""
    seen: set[str] = set()
    for i, p in enumerate(positions):
        if p.symbol in seen:
            raise bad(f"positions: symbol {p.symbol[:40]!r} reported twice", f"positions[{i}].symbol")
        seen.add(p.symbol)
    return list(positions)


def check_quote(q: Quote, what: str, bad: Bad, now: dt.datetime | None = None) -> Quote:
    for name in ("bid", "ask", "last"):
        _price(getattr(q, name), f"{what}.{name}", bad)
    for name in ("bid_size", "ask_size"):
        size = getattr(q, name)
        if size is not None and size < 0:
            raise bad(f"{what}.{name} is negative ({size})", f"{what}.{name}")
    _time(q.at, f"{what}.at", bad, now or _now())
    return q


def check_update(u: TradeUpdate, what: str, bad: Bad, now: dt.datetime | None = None) -> TradeUpdate:
    now = now or _now()
    check_order(u.order, f"{what}.order", bad, now)
    _price(u.price, f"{what}.price", bad)
    if u.qty is not None and u.qty < 0:
        raise bad(f"{what}.qty is negative ({u.qty})", f"{what}.qty")
    _time(u.at, f"{what}.timestamp", bad, now)
    return u
