"""Fault knobs: what the simulator does wrong on purpose, for tests and benchmarks.

Set the plain attributes directly (``sim.faults.latency_s = 0.2``) and use the
methods for one-shot faults. Admin (``/_sim/...``) requests are never faulted.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

ErrorBody = Literal["json", "html"]


class _HasIndex(Protocol):
    @property
    def index(self) -> int: ...


@dataclass(slots=True)
class _Rule:
    prefix: str
    method: str | None
    remaining: int
    status: int = 0
    body: ErrorBody = "json"
    retry_after: float | None = None

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.prefix) and (self.method is None or self.method == method)


class Faults:
    """Latency, random errors, 429s, dropped responses, auth failures, Tradier quirks."""

    def __init__(self, seed: int) -> None:
        self.latency_s = 0.0  # added before every broker request is handled
        self.error_rate = 0.0  # fraction of requests answered 500 (seeded, reproducible)
        self.error_body: ErrorBody = "json"  # "html": 5xx bodies are an HTML error page
        self.rate_limit_every = 0  # every Nth broker request is answered 429 (0 = never)
        self.retry_after_s = 1.0  # what 429 answers ask for (Retry-After / X-Ratelimit-Reset)
        # Tradier quirk: the first read of a just-filled order shows avg_fill_price 0 and
        # no last_fill_price, although its status already says "filled".
        self.tradier_late_fill_price = False
        # Real budgets per credential: Alpaca 200 requests/minute, Tradier 120/minute.
        self.enforce_rate_limits = False
        self.auth_failed: set[int] = set()
        self._rng = random.Random(f"{seed}:faults")
        self._drops: list[_Rule] = []
        self._fails: list[_Rule] = []
        self._windows: dict[str, deque[float]] = {}

    def drop_next_response(self, path_prefix: str, method: str | None = None, count: int = 1) -> None:
        """The next ``count`` requests under ``path_prefix`` are fully processed, then the
        connection is closed without an answer (the crash-between-placing-and-recording
        case: the order exists, the client saw a disconnect)."""
        self._drops.append(_Rule(path_prefix, method.upper() if method else None, count))

    def fail_next(
        self,
        path_prefix: str,
        status: int = 500,
        *,
        method: str | None = None,
        count: int = 1,
        body: ErrorBody = "json",
        retry_after: float | None = None,
    ) -> None:
        """The next ``count`` requests under ``path_prefix`` are answered ``status`` without
        being processed (``body="html"``: an HTML error page, as a proxy would send)."""
        self._fails.append(_Rule(path_prefix, method.upper() if method else None, count, status, body, retry_after))

    def fail_auth(self, account: int | _HasIndex, on: bool = True) -> None:
        """Reject (401/403) every request and stream login with ``account``'s credentials."""
        index = account if isinstance(account, int) else account.index
        if on:
            self.auth_failed.add(index)
        else:
            self.auth_failed.discard(index)

    def clear(self) -> None:
        """Back to no faults at all."""
        self.latency_s = 0.0
        self.error_rate = 0.0
        self.error_body = "json"
        self.rate_limit_every = 0
        self.tradier_late_fill_price = False
        self.enforce_rate_limits = False
        self.auth_failed.clear()
        self._drops.clear()
        self._fails.clear()
        self._windows.clear()

    # -- used by the server --------------------------------------------------------

    @staticmethod
    def _take(rules: list[_Rule], method: str, path: str) -> _Rule | None:
        for rule in rules:
            if rule.matches(method, path):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    rules.remove(rule)
                return rule
        return None

    def take_drop(self, method: str, path: str) -> bool:
        return self._take(self._drops, method, path) is not None

    def take_fail(self, method: str, path: str) -> _Rule | None:
        return self._take(self._fails, method, path)

    def roll_error(self) -> bool:
        return self.error_rate > 0 and self._rng.random() < self.error_rate

    def over_budget(self, credential: str, per_minute: int) -> float | None:
        """Seconds until the credential may call again, or None when within budget."""
        if not self.enforce_rate_limits:
            return None
        now = time.monotonic()
        window = self._windows.setdefault(credential, deque())
        while window and now - window[0] >= 60.0:
            window.popleft()
        if len(window) >= per_minute:
            return max(0.0, 60.0 - (now - window[0]))
        window.append(now)
        return None
