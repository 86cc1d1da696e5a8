"""SIGKILL of ``syncd run`` in the outbox's worst window: the broker has the order, syncd has not recorded it.

The simulator processes the POST and drops the answer; every lookup by client id then
fails (503), so the daemon keeps the request ``submitting``. It is killed there, with
more requests queued behind. The restarted daemon asks the broker for the client id
before anything else: the order is recorded, never placed a second time, and the
queued requests are placed once each.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from syncd.sim import Simulator
from tests.acceptance.conftest import DaemonFactory, fetch, fetchval
from tests.helpers import wait_for

BUY = {"symbol": "AAPL", "side": "buy", "qty": 3, "type": "market", "strategy": "LONG_STOCK"}


async def _queue(dsn: str, account: str, payload: dict[str, object]) -> int:
    rows = await fetch(
        dsn,
        "INSERT INTO order_requests (account_id, kind, payload) "
        "VALUES ((SELECT id FROM accounts WHERE name = $1), 'open', $2::jsonb) RETURNING id",
        account,
        json.dumps(payload),
    )
    return int(rows[0]["id"])


@pytest.mark.slow
async def test_sigkill_between_placing_and_recording_never_places_twice(
    sim: Simulator, dsn: str, daemon_factory: DaemonFactory
) -> None:
    account = sim.account_settings(0, "alpaca")
    daemon = daemon_factory([account], dsn=dsn)
    await daemon.start()
    await daemon.wait_status("ok", timeout=40)

    sim.faults.drop_next_response("/v2/orders", method="POST")
    sim.faults.fail_next("/v2/orders:by_client_order_id", 503, count=10_000)
    first = await _queue(dsn, account.name, BUY)

    async def stuck() -> str | None:
        rows = await fetch(dsn, "SELECT state, client_order_id FROM order_requests WHERE id = $1", first)
        cid = rows[0]["client_order_id"]
        placed = cid is not None and cid in sim.accounts[0].by_client_id
        looked_up = sim.requests("/v2/orders:by_client_order_id") >= 2
        return cid if rows[0]["state"] == "submitting" and placed and looked_up else None

    cid = await wait_for(stuck, timeout=30, what="request submitting, order at the broker, answer unknown")
    queued = [await _queue(dsn, account.name, {**BUY, "symbol": s}) for s in ("MSFT", "NVDA")]
    await daemon.kill()  # SIGKILL: nothing recorded, no cleanup
    assert await fetchval(dsn, "SELECT state FROM order_requests WHERE id = $1", first) == "submitting"
    posts_before = sim.requests("/v2/orders", method="POST")

    sim.faults.clear()
    await daemon.start()

    async def all_submitted() -> bool:
        n = await fetchval(dsn, "SELECT count(*) FROM order_requests WHERE state <> 'submitted'")
        return bool(n == 0)

    await wait_for(all_submitted, timeout=60, what="every request submitted after the restart")
    assert sim.requests("/v2/orders", method="POST") == posts_before + len(queued)  # the first: never again
    at_broker = Counter(o.client_order_id for o in sim.accounts[0].orders if o.client_order_id)
    requests = await fetch(dsn, "SELECT id, client_order_id, broker_order_id, trade_id FROM order_requests")
    assert all(at_broker[r["client_order_id"]] == 1 for r in requests), at_broker
    first_row = next(r for r in requests if r["id"] == first)
    assert first_row["client_order_id"] == cid
    assert first_row["broker_order_id"] == sim.accounts[0].by_client_id[cid].id

    async def trades_open() -> bool:
        rows = await fetch(dsn, "SELECT status, quantity FROM trades")
        return len(rows) == 3 and all(r["status"] == "open" and r["quantity"] == 3 for r in rows)

    await wait_for(trades_open, timeout=30, what="three trades, open with their fills")
    linked = await fetchval(
        dsn, "SELECT count(*) FROM orders WHERE client_order_id = $1 AND trade_id = $2", cid, first_row["trade_id"]
    )
    assert linked == 1
    assert await daemon.stop() == 0
