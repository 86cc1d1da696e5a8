"""A per-account async token bucket that keeps syncd under each broker's request budget.

Brokers count requests in a rolling minute (Alpaca: 200/minute per account; Tradier:
120/minute). A bucket that starts full with the whole budget could spend a minute's
budget at once and then another minute's worth as it refills, i.e. twice the budget in
one window. So the bucket holds a tenth of the budget as burst and refills at nine
tenths of it: in any 60-second window at most ``burst + 0.9 * budget = budget``
requests leave, whatever the pattern. A thousand accounts therefore never produce a
429 storm, and a burst of a few requests (one sync) is still immediate.

The clock and the sleep are injectable so tests run without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

ALPACA_PER_MIN = 200
TRADIER_PER_MIN = 120

_EPSILON = 1e-9

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """Async token bucket; :meth:`acquire` waits (FIFO) until a request may be sent."""

    def __init__(
        self,
        per_minute: int,
        *,
        burst: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be >= 1, got {per_minute}")
        self.per_minute = per_minute
        self.capacity = float(burst if burst is not None else max(1, per_minute // 10))
        if self.capacity < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        # Refill so that burst + one minute of refill never exceeds the budget.
        self.rate = max(per_minute - self.capacity, 1.0) / 60.0  # tokens per second
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()
        self.waited_s = 0.0  # total time spent waiting, for metrics and benchmarks

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)

    def try_acquire(self) -> bool:
        """Take a token if one is available now; never waits."""
        self._refill()
        if self._tokens >= 1.0 - _EPSILON:  # tolerate float rounding after an exact wait
            self._tokens -= 1.0
            return True
        return False

    def take_now(self) -> bool:
        """Take a token if one is available now and nobody waits for one (waiters keep their turn)."""
        return not self._lock.locked() and self.try_acquire()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    async def acquire(self) -> float:
        """Take one token, waiting as long as needed; returns the seconds waited."""
        async with self._lock:  # waiters are served in arrival order
            waited = 0.0
            while not self.try_acquire():
                delay = max((1.0 - self._tokens) / self.rate, 1e-6)
                await self._sleep(delay)
                waited += delay
            self.waited_s += waited
            return waited
