"""merge_order: a terminal answer is the broker's final word (corrects a wrong record); working answers stay monotonic.

Guards issue 10 item 5: before, a terminal order was frozen on whatever was first recorded
(the larger ``filled_qty`` and the first known price won), so a lie could never be corrected.
"""

from __future__ import annotations

from decimal import Decimal

from syncd.brokers.types import OrderStatus, Side
from syncd.trading.reconcile import LegFill, OrderSnapshot, merge_order

D = Decimal
FILLED, CANCELED, PARTIAL = OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.PARTIALLY_FILLED


def snap(status: OrderStatus, filled: str, avg: str | None = None, **kw: object) -> OrderSnapshot:
    return OrderSnapshot(status, D(10), D(filled), D(avg) if avg else None, Side.BUY, **kw)  # type: ignore[arg-type]


def test_a_final_answer_with_another_price_corrects_the_record() -> None:
    assert merge_order(snap(FILLED, "10", "999"), snap(FILLED, "10", "150")) == snap(FILLED, "10", "150")


def test_a_final_answer_with_fewer_fills_takes_the_wrong_ones_back() -> None:
    assert merge_order(snap(FILLED, "10", "150"), snap(CANCELED, "4", "150")).filled_qty == D(4)
    assert merge_order(snap(PARTIAL, "8", "150"), snap(CANCELED, "4", "150")).filled_qty == D(4)


def test_the_same_final_answer_twice_changes_nothing() -> None:
    prev = snap(FILLED, "10", "150")
    assert merge_order(prev, snap(FILLED, "10", "150")) is prev


def test_a_final_answer_without_a_price_yet_keeps_the_known_one() -> None:
    """Tradier's quirk: "filled" with avg_fill_price 0 (unknown) before the price is known."""
    prev = snap(FILLED, "10", "150")
    assert merge_order(prev, snap(FILLED, "10")) is prev
    legs = (LegFill("A", Side.BUY, 1, D(10), D(3)), LegFill("B", Side.SELL, 1, D(10), D(1)))
    prev = snap(FILLED, "10", "2", legs=legs)
    obs = snap(
        FILLED, "10", "2", legs=(LegFill("B", Side.SELL, 1, D(10), None), LegFill("A", Side.BUY, 1, D(10), D(3)))
    )
    assert merge_order(prev, obs) is prev  # legs in another order, one price not known yet: nothing new


def test_working_answers_stay_monotonic_and_never_reopen_a_terminal_order() -> None:
    prev = snap(PARTIAL, "6", "150")
    assert merge_order(prev, snap(PARTIAL, "4", "150")) is prev  # stale
    final = snap(FILLED, "10", "150")
    assert merge_order(final, snap(PARTIAL, "6", "150")) is final
