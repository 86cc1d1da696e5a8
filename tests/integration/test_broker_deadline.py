"""A broker that hangs costs one ``broker_timeout_s`` per request and per pass, retries included.

Seen before: a positions endpoint that hung held one accountSync pass 45.9 s with
``broker_timeout_s = 10`` (each attempt timed out, then was retried), and a tradeCycle
pass over a broker where every request hung took 102 s. The broker here is a local
aiohttp server whose handlers never answer (until the test ends); it counts the requests
it received, which is how these tests see that nothing was retried after a hang and that
a pass stopped asking once the broker hung. No test waits on a clock: the timeouts are
short and the assertions are on counts and rows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from syncd.brokers.alpaca import AlpacaBroker
from syncd.brokers.base import BrokerUnavailable
from syncd.brokers.http import RetryPolicy
from syncd.brokers.tradier import TradierBroker
from syncd.context import Context
from syncd.cycles import account_sync, monitor_cycle, trade_cycle
from syncd.daemon.passes import run_pass
from syncd.settings import AccountSettings
from tests.helpers import wait_for

GUARD_S = 20  # the test's own guard against a hang of the test itself; never reached when it passes


class HangingBroker:
    """Answers ``answers[path]`` when given one; otherwise holds the request until ``release``."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.answers: dict[str, tuple[int, str]] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen[request.path] += 1
        if request.path in self.answers:
            status, body = self.answers[request.path]
            ctype = "text/html" if body.startswith("<") else "application/json"
            return web.Response(status=status, text=body, content_type=ctype)
        await self.release.wait()
        return web.Response(status=503, text="{}", content_type="application/json")

    @property
    def total(self) -> int:
        return sum(self.seen.values())


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[HangingBroker]:
    broker = HangingBroker()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", broker.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    broker.url = f"http://127.0.0.1:{port}"
    try:
        yield broker
    finally:
        broker.release.set()
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="function")
async def hanging() -> AsyncIterator[HangingBroker]:
    async with serve() as broker:
        yield broker


def alpaca(url: str) -> AccountSettings:
    return AccountSettings(
        name="hangs-a", broker="alpaca", api_key="k-hang", api_secret="s-hang", base_url=url, data_url=url
    )


def tradier(url: str) -> AccountSettings:
    return AccountSettings(name="hangs-t", broker="tradier", token="t-hang", account_id="VA1", base_url=url)


# -- one request ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["alpaca", "tradier"])
async def test_a_hanging_request_is_sent_once_and_ends_with_broker_unavailable(
    hanging: HangingBroker, kind: str
) -> None:
    """Guards the total deadline: one request's attempts and backoff share broker_timeout_s (no retry after a hang)."""
    async with aiohttp.ClientSession() as session:
        retry = RetryPolicy(attempts=4, initial_s=0.01, max_s=0.01)
        call: Coroutine[Any, Any, object]
        if kind == "alpaca":
            a = AlpacaBroker(alpaca(hanging.url), session=session, timeout_s=0.3, limiter=False, retry=retry)
            call = a.list_positions()
        else:
            t = TradierBroker(tradier(hanging.url), session=session, timeout_s=0.3, limiter=False, retry=retry)
            call = t.get_account()
        with pytest.raises(BrokerUnavailable) as ei:
            await asyncio.wait_for(call, GUARD_S)
    assert ei.value.timed_out
    assert "0.3s" in str(ei.value)
    assert hanging.total == 1, hanging.seen  # before: 4 attempts of 0.3 s each, plus backoff


async def test_quick_failures_are_retried_within_the_deadline(hanging: HangingBroker) -> None:
    """A 503 answered at once is retried; the retry that then hangs ends the request at the deadline."""
    hanging.answers["/v2/account"] = (503, "{}")
    async with aiohttp.ClientSession() as session:
        retry = RetryPolicy(attempts=3, initial_s=0.01, max_s=0.01)
        a = AlpacaBroker(alpaca(hanging.url), session=session, timeout_s=0.3, limiter=False, retry=retry)
        with pytest.raises(BrokerUnavailable) as ei:
            await asyncio.wait_for(a.get_account(), GUARD_S)
    assert hanging.seen["/v2/account"] == 3
    assert "after 3 attempts" in str(ei.value)


async def test_a_backoff_longer_than_what_is_left_gives_up_at_once(hanging: HangingBroker) -> None:
    """A Retry-After the deadline cannot hold is not slept: the request ends now, naming broker_timeout_s."""
    hanging.answers["/v2/account"] = (500, "{}")
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    async with aiohttp.ClientSession() as session:
        retry = RetryPolicy(attempts=4, initial_s=5, max_s=5, sleep=sleep)
        a = AlpacaBroker(alpaca(hanging.url), session=session, timeout_s=0.5, limiter=False, retry=retry)
        with pytest.raises(BrokerUnavailable) as ei:
            await asyncio.wait_for(a.get_account(), GUARD_S)
    # the random backoff is in [0, 5]: it either fit (and was slept) or gave up with the deadline named
    assert all(s < 0.5 for s in sleeps)
    if hanging.seen["/v2/account"] < 4:
        assert "broker_timeout_s 0.5s used up" in str(ei.value)


# -- whole passes -----------------------------------------------------------------------------------------


async def _last_error(ctx: Context, name: str) -> str | None:
    return await ctx.pool.fetchval("SELECT last_error FROM accounts WHERE name = $1", name)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["alpaca", "tradier"])
async def test_account_sync_over_a_hanging_broker_asks_once_and_records_the_error(
    make_context: Any, hanging: HangingBroker, kind: str
) -> None:
    cfg = alpaca(hanging.url) if kind == "alpaca" else tradier(hanging.url)
    async with make_context(accounts=[cfg], cycles={"broker_timeout_s": 0.3}) as ctx:
        acct = ctx.accounts[cfg.name]
        summary = await asyncio.wait_for(run_pass(ctx, "accountSync", account_sync.account_pass, [acct]), GUARD_S)
        assert not summary.ok
        assert "BrokerUnavailable" in (summary.results[0].error or "")
        # every request of the pass was sent once (alpaca: account + positions; tradier: + orders), none retried
        assert set(hanging.seen.values()) == {1}, hanging.seen
        assert summary.results[0].stats["broker_requests"] == hanging.total
        assert (await _last_error(ctx, cfg.name) or "").startswith("accountSync: BrokerUnavailable")
        assert await ctx.pool.fetchval("SELECT count(*) FROM portfolio_positions") == 0
        assert await ctx.pool.fetchval("SELECT count(*) FROM account_snapshots") == 0


@pytest.mark.parametrize("kind", ["alpaca", "tradier"])
async def test_trade_cycle_over_a_hanging_broker_stops_asking_after_the_first_hang(
    make_context: Any, hanging: HangingBroker, kind: str
) -> None:
    """Three queued requests and the order listing: the first placement hangs, nothing more is asked."""
    cfg = alpaca(hanging.url) if kind == "alpaca" else tradier(hanging.url)
    async with make_context(accounts=[cfg], cycles={"broker_timeout_s": 0.3}, trading={"enabled": True}) as ctx:
        acct = ctx.accounts[cfg.name]
        payload = {"symbol": "AAPL", "side": "buy", "qty": 1, "type": "market"}
        for _ in range(3):
            await ctx.pool.execute(
                "INSERT INTO order_requests (account_id, kind, payload) VALUES ($1, 'open', $2::jsonb)",
                acct.id,
                payload,
            )
        summary = await asyncio.wait_for(run_pass(ctx, "tradeCycle", trade_cycle.account_pass, [acct]), GUARD_S)
        assert not summary.ok
        assert "BrokerUnavailable" in (summary.results[0].error or "")
        assert hanging.total == 1, hanging.seen  # before: every placement waited its own timeout, then the listing
        assert (await _last_error(ctx, cfg.name) or "").startswith("tradeCycle: BrokerUnavailable")
        states = [r["state"] for r in await ctx.pool.fetch("SELECT state FROM order_requests ORDER BY id")]
        assert "failed" not in states and "submitted" not in states  # an unknown outcome is asked about next pass
        assert await ctx.pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_monitor_cycle_over_a_hanging_broker_records_the_error(make_context: Any, hanging: HangingBroker) -> None:
    cfg = alpaca(hanging.url)
    async with make_context(accounts=[cfg], cycles={"broker_timeout_s": 0.3}) as ctx:
        acct = ctx.accounts[cfg.name]
        await ctx.pool.execute(
            "INSERT INTO portfolio_positions (account_id, symbol, asset_class, underlying, quantity, qty_available)"
            " VALUES ($1, 'AAPL', 'us_equity', 'AAPL', 10, 10)",
            acct.id,
        )
        summary = await asyncio.wait_for(run_pass(ctx, "monitorCycle", monitor_cycle.account_pass, [acct]), GUARD_S)
        assert not summary.ok
        assert hanging.total == 1, hanging.seen
        assert (await _last_error(ctx, cfg.name) or "").startswith("monitorCycle: BrokerUnavailable")
        row = await ctx.pool.fetchrow("SELECT bid, ask, quote_at FROM portfolio_positions")
        assert row is not None and tuple(row) == (None, None, None)


HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"


async def test_a_failure_is_in_last_error_at_once_not_when_the_pass_ends(make_context: Any) -> None:
    """Guards the HTML case: a refused answer is in accounts.last_error while other accounts still work.

    Before, every outcome of a pass was written when its slowest account was done: the HTML
    page was refused at once, but last_error stayed empty while another account's broker hung.
    """
    async with serve() as html, serve() as slow:
        html.answers = {"/v2/account": (200, HTML), "/v2/positions": (200, HTML)}
        quick = alpaca(html.url)
        late = AccountSettings(name="hangs-b", broker="alpaca", api_key="k-b", api_secret="s-b", base_url=slow.url)
        async with make_context(accounts=[quick, late], cycles={"broker_timeout_s": 30}) as ctx:
            everyone = list(ctx.accounts.values())
            task = asyncio.create_task(run_pass(ctx, "accountSync", account_sync.account_pass, everyone))
            error = await wait_for(lambda: _last_error(ctx, quick.name), what="the HTML refusal in last_error")
            assert error.startswith("accountSync: BadBrokerData") and "HTML" in error
            assert not task.done()  # the other account's broker still hangs
            assert slow.total >= 1
            slow.release.set()
            summary = await asyncio.wait_for(task, GUARD_S)
            assert [r.ok for r in summary.results] == [False, False]
            assert (await _last_error(ctx, late.name) or "").startswith("accountSync: BrokerUnavailable")
            assert await ctx.pool.fetchval("SELECT count(*) FROM sync_runs") == 2  # each outcome recorded once
