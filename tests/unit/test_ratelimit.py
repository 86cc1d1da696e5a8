"""The per-account token bucket, on a fake clock (no real sleeping)."""

from __future__ import annotations

import asyncio

import pytest

from syncd.brokers.ratelimit import ALPACA_PER_MIN, TRADIER_PER_MIN, TokenBucket
from tests.helpers import wait_for


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def bucket(per_minute: int, t: FakeTime, burst: int | None = None) -> TokenBucket:
    return TokenBucket(per_minute, burst=burst, clock=t.clock, sleep=t.sleep)


async def test_a_burst_of_a_tenth_of_the_budget_is_immediate() -> None:
    t = FakeTime()
    b = bucket(200, t)
    for _ in range(20):
        assert await b.acquire() == 0.0
    assert t.sleeps == []


async def test_beyond_the_burst_requests_are_paced_at_the_refill_rate() -> None:
    t = FakeTime()
    b = bucket(200, t)  # burst 20, refill 180/min = 3/s
    for _ in range(20):
        await b.acquire()
    waited = await b.acquire()
    assert waited == pytest.approx(1 / 3)
    assert b.waited_s == pytest.approx(1 / 3)


async def test_never_more_than_the_budget_in_any_minute() -> None:
    """A thousand accounts hammering: each one's bucket keeps it under its 120/min budget."""
    t = FakeTime()
    b = bucket(120, t)
    stamps = []
    for _ in range(400):
        await b.acquire()
        stamps.append(t.now)
    for i, start in enumerate(stamps):
        in_window = sum(1 for s in stamps[i:] if s < start + 60.0)
        assert in_window <= 120


async def test_tokens_refill_with_time_up_to_capacity() -> None:
    t = FakeTime()
    b = bucket(60, t, burst=5)
    for _ in range(5):
        assert b.try_acquire()
    assert not b.try_acquire()
    t.now += 3600
    assert b.tokens == pytest.approx(5)


async def test_concurrent_waiters_are_served_in_order() -> None:
    t = FakeTime()
    b = bucket(60, t, burst=1)  # refill 59/min
    order: list[int] = []

    async def one(i: int) -> None:
        await b.acquire()
        order.append(i)

    await asyncio.gather(*(one(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert len(t.sleeps) == 4


async def test_take_now_never_jumps_the_queue() -> None:
    """The no-wait path (a request's first attempt) takes a token only while nobody waits for one."""
    t = FakeTime()
    gate = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        await gate.wait()  # a waiter, parked until the test lets it go
        t.now += seconds

    b = TokenBucket(60, burst=1, clock=t.clock, sleep=slow_sleep)
    assert b.take_now()  # the burst
    waiter = asyncio.ensure_future(b.acquire())
    await wait_for(b._lock.locked, what="the waiter holds the queue (it waits for the refill)")
    t.now += 3600  # a token is there, but it is the waiter's
    assert not b.take_now()
    gate.set()
    await waiter
    t.now += 3600  # the waiter served, the bucket serves whoever asks
    assert b.take_now()


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="per_minute"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(10, burst=0)


def test_default_budgets() -> None:
    assert (ALPACA_PER_MIN, TRADIER_PER_MIN) == (200, 120)
