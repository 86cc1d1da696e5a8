"""The composition root's product: everything a cycle needs, built once per process.

``open_context`` builds the pool, one shared aiohttp session, one broker per
configured account, and upserts the accounts into ``accounts`` by name. Cycles
receive the ``Context`` and an ``Account``; there are no module-level globals.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from syncd.brokers.base import Broker
from syncd.db import Queries, create_pool, load_queries
from syncd.db.grouped import GroupedQuery
from syncd.metrics import Metrics
from syncd.settings import AccountSettings, Settings

RECONCILE_MARGIN = dt.timedelta(seconds=30)  # positions must be this much newer than a trade's last fill


@dataclass(frozen=True, slots=True)
class Account:
    """A configured account as the cycles see it."""

    id: int
    name: str
    config: AccountSettings
    broker: Broker


@dataclass(frozen=True, slots=True)
class Context:
    settings: Settings
    pool: asyncpg.Pool[Any]
    queries: Queries
    accounts: dict[str, Account]
    instance: str
    metrics: Metrics = field(default_factory=Metrics)
    reconcile_margin: dt.timedelta = RECONCILE_MARGIN  # not a setting; a test may replace() it
    # Per account id: did its broker last accept its credentials? Absent: not known yet (no call
    # since start); None: a call succeeded; text: what refused them (401/403) and when. Kept by
    # syncd.daemon.passes so that a pass making no broker call is not "ok" for a refused account.
    auth: dict[int, str | None] = field(default_factory=dict)
    # Per account id: (fingerprint of the stored positions, digest of the broker's positions, the
    # adapter's positions_key of that answer or None, how many rows) of the last comparison that
    # found them equal; see syncd.cycles.account_sync._plan and _fetched.
    compared_rows: dict[int, tuple[str, int, int | None, int]] = field(default_factory=dict)
    # The statements concurrent passes send as one (syncd.db.grouped), by query name and pool:
    # shared by the copies a test makes with replace(), each pool its own.
    grouped_queries: dict[tuple[str, int], GroupedQuery] = field(default_factory=dict)

    def grouped(self, name: str, shared: Sequence[Any] = ()) -> GroupedQuery:
        """Query ``name`` as a :class:`GroupedQuery` over this context's pool (one per pool and name;
        ``shared``, the arguments every call shares, as given the first time)."""
        key = (name, id(self.pool))
        query = self.grouped_queries.get(key)
        if query is None or query.pool is not self.pool:
            query = self.grouped_queries[key] = GroupedQuery(self.pool, self.queries[name], shared)
        return query

    async def active_accounts(self, names: Iterable[str] | None = None) -> list[Account]:
        """Configured accounts (optionally only ``names``) that a user has not paused in SQL."""
        wanted = list(self.accounts) if names is None else [n for n in names if n in self.accounts]
        rows = await self.pool.fetch(self.queries["active_account_names"], wanted)
        active = {r["name"] for r in rows}
        return [self.accounts[n] for n in wanted if n in active]


def settle_heap() -> tuple[int, int, int]:
    """After start-up: what was built so far (settings, brokers, modules) lives as long as the context.

    ``gc.freeze()`` moves it out of the cyclic collector's generations, so the collections a pass
    triggers no longer walk it (with 10,000 accounts, over a million objects); the threshold of
    the youngest generation is raised from 700 to 20,000 allocations, so a pass's short-lived
    objects (decoded answers, rows, records) are mostly freed by reference counting before a
    collection looks at them. Nothing is disabled: cycles are still collected. A GC pause was
    about 15 % of syncd's CPU in an idle accountSync pass (1,000 accounts). Returns the
    thresholds to restore (:func:`unsettle_heap`).
    """
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(previous[0], YOUNG_GC_THRESHOLD), previous[1], previous[2])
    return previous


def unsettle_heap(threshold: tuple[int, int, int]) -> None:
    """When the context closes: its objects may become garbage; let the collector see them again."""
    gc.unfreeze()
    gc.set_threshold(*threshold)


YOUNG_GC_THRESHOLD = 20_000


def default_instance() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def account_row(a: AccountSettings) -> dict[str, Any]:
    """One ``account_row`` (0013) by attribute name."""
    return {
        "name": a.name,
        "broker": a.broker,
        "broker_account_id": a.account_id,
        "paper": a.paper if a.broker == "alpaca" else a.sandbox,
    }


async def upsert_accounts(pool: asyncpg.Pool[Any], queries: Queries, accounts: list[AccountSettings]) -> dict[str, int]:
    """Make sure every configured account has its row; return ids by name."""
    names = [a.name for a in accounts]
    await pool.execute(
        queries["upsert_accounts"],
        [account_row(a) for a in accounts],
    )
    rows = await pool.fetch(queries["account_ids"], names)
    return {r["name"]: r["id"] for r in rows}


@asynccontextmanager
async def open_context(
    settings: Settings,
    *,
    instance: str | None = None,
    metrics: Metrics | None = None,
    pool_max: int | None = None,
) -> AsyncIterator[Context]:
    """Build the pool, HTTP session and brokers; close them all on exit, in reverse order."""
    from syncd.brokers.factory import build_broker

    metrics = metrics or Metrics()
    queries = load_queries()
    pool = await create_pool(settings.database, max_size=pool_max)
    try:
        connector = aiohttp.TCPConnector(limit=max(64, settings.cycles.concurrency * 2), ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector) as http:
            ids = await upsert_accounts(pool, queries, settings.accounts)
            accounts: dict[str, Account] = {}
            shared: dict[Any, Any] = {}  # one Tradier account events connection per token
            try:
                for cfg in settings.accounts:
                    broker = build_broker(
                        cfg,
                        session=http,
                        timeout_s=settings.cycles.broker_timeout_s,
                        on_request=metrics.broker_request,
                        shared=shared,
                    )
                    accounts[cfg.name] = Account(id=ids[cfg.name], name=cfg.name, config=cfg, broker=broker)
                threshold = settle_heap()
                try:
                    yield Context(
                        settings=settings,
                        pool=pool,
                        queries=queries,
                        accounts=accounts,
                        instance=instance or settings.health.instance or default_instance(),
                        metrics=metrics,
                    )
                finally:
                    unsettle_heap(threshold)
            finally:
                for acct in accounts.values():
                    await acct.broker.aclose()
    finally:
        await pool.close()
