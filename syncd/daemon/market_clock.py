"""Is the market open? A per-broker-kind cache of the broker's clock, and the cycles' cadence.

The supervisor asks before each pass::

    clock = MarketClock()                       # one per process
    is_open = await clock.any_open(brokers)     # one broker per kind is asked, at most
    delay = interval_for("monitor", settings, is_open)

or, all in one, ``cadence = Cadence()`` once and ``await cadence(ctx, task, normal)`` before
each pass (the supervisor's ``IntervalFn`` shape).

**Caching.** A broker's clock answer says whether the market is open and when it next
opens and closes, so it stays right until the next change: it is kept until
``refresh_before_s`` before that change (and never longer than ``max_age_s``), then asked
again, at most every ``min_refresh_s``, until the broker reports the new state. One
answer per broker *kind* serves every account of that kind (the market is the same).

**Errors.** When the broker cannot be asked (``BrokerError``, a timeout), the last answer
is used, carried forward: open until its ``next_close``, then closed until its
``next_open``. With no usable answer at all the market counts as **open**: the cycles
then keep their regular (faster) intervals, so a broker outage never slows monitoring
down by mistake; it costs at most some idle passes while the market is in fact closed.
A failed ask is retried after ``retry_after_error_s``.

Time is injectable (``now=``) so tests move it by hand; nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from syncd import cycles as registry
from syncd.brokers.base import Broker, BrokerError
from syncd.brokers.types import Clock
from syncd.errors import describe
from syncd.settings import CyclesSettings, Settings

if TYPE_CHECKING:
    from syncd.context import Context

log = structlog.get_logger(__name__)

Now = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def state_at(clock: Clock, at: dt.datetime) -> bool | None:
    """Whether the market is open at ``at`` according to ``clock``; None when it cannot say.

    It can say up to the second change after the answer: open until ``next_close`` then
    closed until ``next_open`` (or the other way round).
    """
    if clock.is_open:
        if at < clock.next_close:
            return True
        if clock.next_open > clock.next_close and at < clock.next_open:
            return False
        return None
    if at < clock.next_open:
        return False
    if clock.next_close > clock.next_open and at < clock.next_close:
        return True
    return None


def next_change(clock: Clock) -> dt.datetime:
    return clock.next_close if clock.is_open else clock.next_open


@dataclass(slots=True)
class _Entry:
    clock: Clock | None = None  # the last answer the broker gave
    refresh_at: dt.datetime | None = None  # when to ask again (None: now)
    lock: asyncio.Lock | None = None


class MarketClock:
    """The market's open/closed state per broker kind, cached (see the module docstring)."""

    def __init__(
        self,
        *,
        now: Now = _utcnow,
        refresh_before_s: float = 60.0,
        min_refresh_s: float = 15.0,
        max_age_s: float = 3600.0,
        retry_after_error_s: float = 30.0,
    ) -> None:
        self._now = now
        self._refresh_before = dt.timedelta(seconds=refresh_before_s)
        self._min_refresh = dt.timedelta(seconds=min_refresh_s)
        self._max_age = dt.timedelta(seconds=max_age_s)
        self._retry_after_error = dt.timedelta(seconds=retry_after_error_s)
        self._entries: dict[str, _Entry] = {}

    def last_clock(self, kind: str) -> Clock | None:
        """The last answer of a broker of this kind (None before the first)."""
        entry = self._entries.get(kind)
        return entry.clock if entry else None

    async def is_open(self, broker: Broker) -> bool:
        """Whether the market of ``broker``'s kind is open now (asks the broker only when due)."""
        entry = self._entries.setdefault(broker.kind, _Entry())
        if entry.refresh_at is None or self._now() >= entry.refresh_at:
            if entry.lock is None:
                entry.lock = asyncio.Lock()
            async with entry.lock:  # concurrent callers wait for one ask
                if entry.refresh_at is None or self._now() >= entry.refresh_at:
                    await self._refresh(broker, entry)
        state = state_at(entry.clock, self._now()) if entry.clock else None
        return True if state is None else state

    async def any_open(self, brokers: Iterable[Broker]) -> bool:
        """Open if the market of any given broker kind is open (one broker per kind is asked).

        No brokers at all counts as open (regular intervals).
        """
        by_kind: dict[str, Broker] = {}
        for broker in brokers:
            by_kind.setdefault(broker.kind, broker)
        if not by_kind:
            return True
        states = await asyncio.gather(*(self.is_open(b) for b in by_kind.values()))
        return any(states)

    async def _refresh(self, broker: Broker, entry: _Entry) -> None:
        try:
            clock = await broker.get_clock()
        except (BrokerError, TimeoutError) as exc:
            entry.refresh_at = self._now() + self._retry_after_error
            log.warning(
                "market_clock_failed",
                broker=broker.kind,
                error=describe(exc),
                fallback="last_known" if entry.clock else "open",
            )
            return
        now = self._now()
        due = next_change(clock) - self._refresh_before
        entry.refresh_at = min(max(due, now + self._min_refresh), now + self._max_age)
        if entry.clock is None or entry.clock.is_open != clock.is_open:
            log.info(
                "market_clock", broker=broker.kind, is_open=clock.is_open, next_change=next_change(clock).isoformat()
            )
        entry.clock = clock


def interval_for(task: str, settings: Settings | CyclesSettings, is_open: bool) -> float:
    """Seconds between two passes of ``task`` (short or full name: ``monitor``/``monitorCycle``).

    accountSync keeps ``account_interval_s`` always (positions change outside market hours
    too: assignments, expirations, transfers). tradeCycle and monitorCycle use
    ``closed_market_interval_s`` while the market is closed.
    """
    cycles = settings.cycles if isinstance(settings, Settings) else settings
    try:
        spec = registry.task(task)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    if spec.market_paced and not is_open:
        return cycles.closed_market_interval_s
    return spec.interval(cycles)


class Cadence:
    """``await cadence(ctx, task, normal) -> seconds``: the supervisor's interval hook.

    ``normal`` is the task's regular interval; tradeCycle and monitorCycle get
    ``closed_market_interval_s`` instead while the market of every configured broker kind
    is closed. Keep one per process (it holds the ``MarketClock`` cache).
    """

    def __init__(self, clock: MarketClock | None = None) -> None:
        self.clock = clock or MarketClock()

    async def __call__(self, ctx: Context, task: str, normal: float) -> float:
        if not registry.task(task).market_paced:
            return normal
        is_open = await self.clock.any_open(a.broker for a in ctx.accounts.values())
        return normal if is_open else interval_for(task, ctx.settings, is_open)
