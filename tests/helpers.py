"""Small tools shared by tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

T = TypeVar("T")


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T | None]], timeout: float = ..., interval: float = ..., what: str = ""
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T | None], timeout: float = ..., interval: float = ..., what: str = ""
) -> T: ...


async def wait_for(
    predicate: Callable[[], Awaitable[T | None] | T | None],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds.

    This is how tests wait: on a condition with a deadline, never a bare sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return cast(T, result)  # truthy, so not None; an awaitable was awaited above
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s{': ' + what if what else ''}")
        await asyncio.sleep(interval)
