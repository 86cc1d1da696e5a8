"""The health listener's robustness (issue 13): a snapshot per second, not a database round trip
per request; silent clients timed out; at the connection limit, silent ones make room."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from syncd.daemon import health as health_mod
from syncd.daemon.health import HealthServer, TaskView
from syncd.db import load_queries
from tests.helpers import wait_for

NOW = dt.datetime.now(dt.UTC)


async def get(host: str, port: int, path: str = "/healthz") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def server(pool: asyncpg.Pool[Any], **kw: Any) -> HealthServer:
    return HealthServer(
        pool=pool,
        queries=load_queries(),
        metrics=health_mod.DaemonMetrics(),
        tasks=lambda: {"accountSync": TaskView(started_at=NOW, last_ok_at=dt.datetime.now(dt.UTC))},  # never stale
        account_names=[],
        stale_after_s=300,
        instance="t",
        **kw,
    )


@pytest_asyncio.fixture(loop_scope="function")
async def pool(db_pool: asyncpg.Pool[Any]) -> AsyncIterator[asyncpg.Pool[Any]]:
    yield db_pool


async def test_requests_are_served_from_the_snapshot_not_the_database(
    pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = {"n": 0}
    real = health_mod.read_accounts

    async def counting(*a: Any, **kw: Any) -> Any:
        reads["n"] += 1
        return await real(*a, **kw)

    monkeypatch.setattr(health_mod, "read_accounts", counting)
    s = server(pool, snapshot_s=3600)  # one snapshot at start, none while the requests run
    host, port = await s.start("127.0.0.1:0")
    try:
        answers = await asyncio.gather(*(get(host, port) for _ in range(200)))
        ready = await get(host, port, "/readyz")
        missing = await get(host, port, "/nope")
    finally:
        await s.stop()
    assert {code for code, _ in answers} == {200}
    assert reads["n"] == 1
    assert ready[0] == 200 and missing[0] == 404


async def test_a_silent_client_is_closed_after_the_head_timeout(pool: asyncpg.Pool[Any]) -> None:
    s = server(pool, head_timeout_s=0.3)
    host, port = await s.start("127.0.0.1:0")
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # half a head, then nothing
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server, nothing answered
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        assert s.timed_out == 1
        assert (await get(host, port))[0] == 200
    finally:
        await s.stop()


async def test_at_the_limit_a_silent_connection_makes_room_else_503(
    pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health_mod, "EVICT_AFTER_S", 0.0)
    s = server(pool, max_connections=3, head_timeout_s=30)
    host, port = await s.start("127.0.0.1:0")
    try:
        silent = [await asyncio.open_connection(host, port) for _ in range(3)]
        await wait_for(lambda: len(s._silent) == 3, timeout=5, what="three silent connections held")
        code, _ = await get(host, port)  # the oldest silent one is closed for it
        assert code == 200 and s.shed == 1
        assert await asyncio.wait_for(silent[0][0].read(), 10) == b""
        silent.append(await asyncio.open_connection(host, port))  # at the limit again
        await wait_for(lambda: len(s._silent) == 3, timeout=5, what="three silent connections held again")
        monkeypatch.setattr(health_mod, "EVICT_AFTER_S", 3600.0)  # now none is silent long enough
        code, body = await get(host, port)
        assert code == 503 and b"too many connections" in body
        for _, w in silent:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
    finally:
        await s.stop()


async def test_bad_requests_get_a_clear_status(pool: asyncpg.Pool[Any]) -> None:
    s = server(pool)
    host, port = await s.start("127.0.0.1:0")
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /healthz HTTP/1.1\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 405 ")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"hello\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    finally:
        await s.stop()
