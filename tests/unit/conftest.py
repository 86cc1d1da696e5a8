"""Fixtures of the broker wire tests (see tests/unit/broker_wire.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio
from aioresponses import aioresponses

from tests.unit.aiohttp_mock import MockHTTP
from tests.unit.broker_wire import Recorder


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest_asyncio.fixture(loop_scope="function")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def mock() -> Iterator[aioresponses]:
    with MockHTTP() as m:
        yield m
