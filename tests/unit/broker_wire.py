"""What the broker wire tests (test_alpaca_wire.py, test_tradier_wire.py) share.

Their fixtures ``rec``, ``session`` and ``mock`` are in tests/unit/conftest.py; here are the
recorder behind ``rec``, the adapter wiring the tests build brokers with (no rate limit, an
injected sleep and clock: retry waits are recorded, never slept), and request inspection.
"""

from __future__ import annotations

import re
from typing import Any

from aioresponses import aioresponses

from syncd.brokers.http import RetryPolicy

NOW = 1_700_000_000.0  # the wall clock the adapters see (X-Ratelimit-Reset, Retry-After dates)


class Recorder:
    """Injected sleep and metrics hook: what would have been waited, what was counted."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.hook: list[tuple[str, str, str]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_request(self, broker: str, endpoint: str, status: str) -> None:
        self.hook.append((broker, endpoint, status))

    def wiring(self) -> dict[str, Any]:
        """Keyword arguments of an adapter under test: 5 s timeout, hooked, unlimited, 3 attempts."""
        return {
            "timeout_s": 5,
            "on_request": self.on_request,
            "limiter": False,
            "retry": RetryPolicy(attempts=3, sleep=self.sleep, clock=lambda: NOW),
        }


def url_pattern(base: str, path: str) -> re.Pattern[str]:
    """Match ``base + path`` with any query string."""
    return re.compile("^" + re.escape(base + path) + r"(\?.*)?$")


def calls(m: aioresponses, method: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """Every request the mock saw (of ``method`` only, if given): (method, url, keyword arguments)."""
    return [
        (meth, str(u), r.kwargs)
        for (meth, u), reqs in m.requests.items()
        for r in reqs
        if method is None or meth == method
    ]
