"""The simulator and an HTTP session as pytest fixtures, defined once for every test module.

In a test module::

    sim = sim_fixture(seed=9, accounts=3, positions_per_account=4)
    http = http_fixture()

Both are function-scoped and live on the test's own event loop: the simulator must serve
while the test runs (a fixture on another loop would never answer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest_asyncio

from syncd.sim import SimConfig, Simulator


def sim_fixture(*, name: str = "sim", setup: Callable[[Simulator], None] | None = None, **config: Any) -> Any:
    """A fixture ``name`` yielding a running ``Simulator(SimConfig(**config))``, stopped after the test.

    ``setup(sim)`` runs once it is serving (e.g. to add positions the seed does not give).
    """

    @pytest_asyncio.fixture(loop_scope="function", name=name)
    async def fixture() -> AsyncIterator[Simulator]:
        async with Simulator(SimConfig(**config)) as sim:
            if setup is not None:
                setup(sim)
            yield sim

    return fixture


def http_fixture(*, name: str = "http") -> Any:
    """A fixture ``name`` yielding an ``aiohttp.ClientSession``, closed after the test."""

    @pytest_asyncio.fixture(loop_scope="function", name=name)
    async def fixture() -> AsyncIterator[aiohttp.ClientSession]:
        async with aiohttp.ClientSession() as session:
            yield session

    return fixture
