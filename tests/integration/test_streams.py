"""The streams part of the daemon (syncd.daemon.streams): consumers follow the leases.

Guards issue 12's split of the supervisor: the stream handling moved out of
``Supervisor`` into ``Streams`` and must behave as before -- start a consumer per
acquired account that can stream, stop and reap the ones given up, restart one that
raises after the backoff, and stop every one at shutdown.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest_asyncio
from structlog.testing import capture_logs

from syncd.context import Account, Context
from syncd.daemon.streams import Streams
from syncd.settings import AccountSettings
from tests.helpers import wait_for


def account(name: str) -> AccountSettings:
    # Never contacted: the stand-in consumer below does not call the broker.
    return AccountSettings(
        name=name, broker="alpaca", api_key="k-test", api_secret="s-test", base_url="http://127.0.0.1:9"
    )


@pytest_asyncio.fixture(loop_scope="function")
async def ctx(make_context: Any) -> AsyncIterator[Context]:
    async with make_context(accounts=[account("a1"), account("a2")]) as context:
        yield context


class Consumers:
    """A stand-in consumer: counts starts, crashes on its first start for ``crash_first``, else waits for stop."""

    def __init__(self, crash_first: set[str]) -> None:
        self.starts: Counter[str] = Counter()
        self.live: set[str] = set()
        self.crash_first = crash_first

    async def __call__(self, ctx: Context, acct: Account, stop: asyncio.Event) -> None:
        self.starts[acct.name] += 1
        if acct.name in self.crash_first and self.starts[acct.name] == 1:
            raise RuntimeError("a bug in the consumer")
        self.live.add(acct.name)
        try:
            await stop.wait()
        finally:
            self.live.discard(acct.name)


async def test_streams_follow_the_leases_restart_after_a_crash_and_stop_at_shutdown(ctx: Context) -> None:
    consumers = Consumers(crash_first={"a2"})
    spawned: list[asyncio.Task[None]] = []

    def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        spawned.append(asyncio.create_task(coro, name=name))
        return spawned[-1]

    streams = Streams(ctx, consumers, restart_backoff=lambda n: 0.01, spawn=spawn)
    a1, a2 = ctx.accounts["a1"].id, ctx.accounts["a2"].id
    with capture_logs() as logs:
        streams.follow(frozenset({a1, a2}), frozenset())
        await wait_for(lambda: consumers.live == {"a1", "a2"}, timeout=5, what="both streams running")
        assert consumers.starts == {"a1": 1, "a2": 2}  # a2 crashed once and was restarted
        streams.follow(frozenset({a1}), frozenset())  # already running: not started twice
        assert consumers.starts["a1"] == 1

        streams.follow(frozenset(), frozenset({a1}))
        assert streams.running() == {a2}
        assert [t.get_name() for t in spawned] == ["reap:stream:a1"]
        await asyncio.gather(*spawned)
        assert consumers.live == {"a2"}

        await streams.stop_all()
    assert consumers.live == set()
    assert streams.running() == frozenset()
    crashed = [e for e in logs if e["event"] == "stream_crashed"]
    assert [e["consecutive_failures"] for e in crashed] == [1]  # a2 (its name is in the bound context)
    assert [e["count"] for e in logs if e["event"] == "streams_stopped"] == [1]
