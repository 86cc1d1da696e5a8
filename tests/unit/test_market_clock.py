"""The cached market clock and the cycles' cadence (``syncd.daemon.market_clock``); time moved by hand."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import pytest

from syncd.brokers.base import BrokerUnavailable
from syncd.brokers.types import Clock
from syncd.daemon.market_clock import Cadence, MarketClock, interval_for, state_at
from syncd.settings import CyclesSettings, Settings

T0 = dt.datetime(2025, 12, 3, 15, 0, tzinfo=dt.UTC)  # 10:00 New York, a Wednesday
CLOSE = dt.datetime(2025, 12, 3, 21, 0, tzinfo=dt.UTC)
NEXT_OPEN = dt.datetime(2025, 12, 4, 14, 30, tzinfo=dt.UTC)
NEXT_CLOSE = dt.datetime(2025, 12, 4, 21, 0, tzinfo=dt.UTC)


def open_clock(at: dt.datetime = T0) -> Clock:
    return Clock(is_open=True, next_open=NEXT_OPEN, next_close=CLOSE, timestamp=at)


def closed_clock(at: dt.datetime) -> Clock:
    return Clock(is_open=False, next_open=NEXT_OPEN, next_close=NEXT_CLOSE, timestamp=at)


class Hand:
    """A clock moved by hand."""

    def __init__(self, t: dt.datetime) -> None:
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += dt.timedelta(**kw)


class ClockBroker:
    """A broker whose clock answers are scripted: a ``Clock`` or an exception per call."""

    def __init__(self, kind: str, *answers: Clock | Exception) -> None:
        self.kind = kind
        self.answers = list(answers)
        self.calls = 0

    async def get_clock(self) -> Clock:
        self.calls += 1
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        await asyncio.sleep(0)  # let concurrent callers pile up
        return answer


async def test_answer_is_cached_until_shortly_before_the_next_change() -> None:
    now = Hand(T0)
    broker = ClockBroker("alpaca", open_clock(), closed_clock(CLOSE))
    clock = MarketClock(now=now, refresh_before_s=60, max_age_s=86_400)
    assert await clock.is_open(broker)  # type: ignore[arg-type]
    now.advance(hours=5, minutes=58)  # 20:58, two minutes before the close
    assert await clock.is_open(broker)  # type: ignore[arg-type]
    assert broker.calls == 1
    now.advance(minutes=1, seconds=1)  # 20:59:01, inside the refresh window
    await clock.is_open(broker)  # type: ignore[arg-type]
    assert broker.calls == 2


async def test_no_answer_is_kept_longer_than_max_age() -> None:
    now = Hand(T0)
    broker = ClockBroker("alpaca", open_clock())
    clock = MarketClock(now=now, max_age_s=3600)
    await clock.is_open(broker)  # type: ignore[arg-type]
    now.advance(minutes=59)
    await clock.is_open(broker)  # type: ignore[arg-type]
    assert broker.calls == 1
    now.advance(minutes=1)
    await clock.is_open(broker)  # type: ignore[arg-type]
    assert broker.calls == 2


async def test_near_the_change_it_asks_again_at_most_every_min_refresh() -> None:
    now = Hand(CLOSE - dt.timedelta(seconds=30))
    broker = ClockBroker("alpaca", open_clock())  # the broker keeps saying open, close at 21:00
    clock = MarketClock(now=now, refresh_before_s=60, min_refresh_s=15)
    await clock.is_open(broker)  # type: ignore[arg-type]
    now.advance(seconds=10)
    await clock.is_open(broker)  # type: ignore[arg-type]
    assert broker.calls == 1
    now.advance(seconds=5)
    await clock.is_open(broker)  # type: ignore[arg-type]
    assert broker.calls == 2


async def test_state_follows_the_broker_after_the_change() -> None:
    now = Hand(T0)
    broker = ClockBroker("alpaca", open_clock(), closed_clock(CLOSE + dt.timedelta(seconds=1)))
    clock = MarketClock(now=now, max_age_s=86_400)
    assert await clock.is_open(broker)  # type: ignore[arg-type]
    now.t = CLOSE + dt.timedelta(seconds=1)
    assert not await clock.is_open(broker)  # type: ignore[arg-type]
    now.advance(hours=1)
    assert not await clock.is_open(broker)  # type: ignore[arg-type]
    assert broker.calls == 2  # closed until tomorrow's open: cached


async def test_error_falls_back_to_the_last_answer_carried_forward() -> None:
    now = Hand(T0)
    broker = ClockBroker("tradier", open_clock(), BrokerUnavailable("down"))
    clock = MarketClock(now=now, retry_after_error_s=30)
    assert await clock.is_open(broker)  # type: ignore[arg-type]
    now.t = CLOSE - dt.timedelta(seconds=30)
    assert await clock.is_open(broker)  # type: ignore[arg-type]  # ask fails; still before the close
    now.t = CLOSE + dt.timedelta(minutes=5)
    assert not await clock.is_open(broker)  # type: ignore[arg-type]  # past the known close
    now.t = NEXT_OPEN + dt.timedelta(minutes=1)
    assert await clock.is_open(broker)  # type: ignore[arg-type]  # past the known next open
    assert clock.last_clock("tradier") == open_clock()


async def test_never_known_counts_as_open_and_errors_are_not_hammered() -> None:
    now = Hand(T0)
    broker = ClockBroker("alpaca", BrokerUnavailable("down"))
    clock = MarketClock(now=now, retry_after_error_s=30)
    assert await clock.is_open(broker)  # type: ignore[arg-type]
    now.advance(seconds=29)
    assert await clock.is_open(broker)  # type: ignore[arg-type]
    assert broker.calls == 1
    now.advance(seconds=1)
    await clock.is_open(broker)  # type: ignore[arg-type]
    assert broker.calls == 2


async def test_timeout_is_handled_like_a_broker_error() -> None:
    clock = MarketClock(now=Hand(T0))
    assert await clock.is_open(ClockBroker("alpaca", TimeoutError()))  # type: ignore[arg-type]


async def test_cache_is_per_broker_kind() -> None:
    now = Hand(T0)
    alpaca_a = ClockBroker("alpaca", open_clock())
    alpaca_b = ClockBroker("alpaca", open_clock())
    tradier = ClockBroker("tradier", closed_clock(T0))
    clock = MarketClock(now=now)
    assert await clock.is_open(alpaca_a)  # type: ignore[arg-type]
    assert await clock.is_open(alpaca_b)  # type: ignore[arg-type]
    assert not await clock.is_open(tradier)  # type: ignore[arg-type]
    assert (alpaca_a.calls, alpaca_b.calls, tradier.calls) == (1, 0, 1)


async def test_concurrent_callers_share_one_ask() -> None:
    broker = ClockBroker("alpaca", open_clock())
    clock = MarketClock(now=Hand(T0))
    results = await asyncio.gather(*(clock.is_open(broker) for _ in range(20)))  # type: ignore[arg-type]
    assert all(results)
    assert broker.calls == 1


async def test_any_open() -> None:
    clock = MarketClock(now=Hand(T0))
    closed = ClockBroker("tradier", closed_clock(T0))
    opened = ClockBroker("alpaca", open_clock())
    assert not await clock.any_open([closed])  # type: ignore[list-item]
    assert await clock.any_open([closed, opened])  # type: ignore[list-item]
    assert await clock.any_open([])


def test_state_at_cannot_say_beyond_the_second_change() -> None:
    c = open_clock()
    assert state_at(c, T0) is True
    assert state_at(c, CLOSE) is False
    assert state_at(c, NEXT_OPEN) is None


def test_closed_market_cadence() -> None:
    cycles = CyclesSettings(
        account_interval_s=30, trade_interval_s=60, monitor_interval_s=45, closed_market_interval_s=300
    )
    assert interval_for("monitor", cycles, True) == 45
    assert interval_for("monitorCycle", cycles, False) == 300
    assert interval_for("trade", cycles, True) == 60
    assert interval_for("tradeCycle", cycles, False) == 300
    assert interval_for("account", cycles, False) == 30  # positions move after hours too
    assert interval_for("monitor", Settings(cycles=cycles), False) == 300
    with pytest.raises(ValueError, match="unknown task"):
        interval_for("nope", cycles, True)


async def test_cadence_hook_for_the_supervisor() -> None:
    @dataclasses.dataclass
    class Acct:
        broker: ClockBroker

    @dataclasses.dataclass
    class Ctx:
        settings: Settings
        accounts: dict[str, Acct]

    now = Hand(T0)
    broker = ClockBroker("alpaca", closed_clock(T0))
    ctx = Ctx(Settings(cycles=CyclesSettings(closed_market_interval_s=300)), {"a": Acct(broker)})
    cadence = Cadence(MarketClock(now=now))
    assert await cadence(ctx, "monitorCycle", 60) == 300  # type: ignore[arg-type]
    assert await cadence(ctx, "tradeCycle", 60) == 300  # type: ignore[arg-type]
    assert await cadence(ctx, "accountSync", 30) == 30  # type: ignore[arg-type]
    assert broker.calls == 1
    ctx.accounts = {}
    assert await cadence(ctx, "monitorCycle", 60) == 60  # type: ignore[arg-type]
