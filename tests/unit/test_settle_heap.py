"""The context settles the heap (gc.freeze, a higher young threshold) and gives it back on close."""

from __future__ import annotations

import gc

from syncd.context import YOUNG_GC_THRESHOLD, settle_heap, unsettle_heap


def test_settle_and_unsettle() -> None:
    before = gc.get_threshold()
    previous = settle_heap()
    try:
        assert previous == before
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == max(before[0], YOUNG_GC_THRESHOLD)
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.isenabled()  # cycles are still collected
    finally:
        unsettle_heap(previous)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
