"""``syncd run`` with a Tradier account: a fill lands by the account events stream, no poll needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from syncd.sim import Simulator
from tests.acceptance.conftest import DaemonFactory, fetch, run_cli, secrets_of
from tests.helpers import wait_for


@pytest.mark.slow
async def test_a_tradier_fill_lands_without_any_poll(sim: Simulator, dsn: str, daemon_factory: DaemonFactory) -> None:
    acct = sim.account_settings(2, "tradier")
    # One tradeCycle pass and one accountSync pass, at start: accountSync lists a Tradier account's
    # orders too (for qty_available), so at the tests' 1 s interval it could list them meanwhile.
    daemon = daemon_factory([acct], dsn=dsn, cycles={"trade_interval_s": 3600, "account_interval_s": 3600})
    await daemon.start()
    body = await daemon.wait_status("ok", timeout=40)
    await wait_for(lambda: sim.tradier_events.connected(2), timeout=20, what="the daemon subscribed")
    listing = f"GET /v1/accounts/{sim.accounts[2].tradier_account_id}/orders"
    polls = sim.request_counts.get(listing, 0)

    placed = sim.place_outside_order(2, "MSFT", "buy", 7)  # fills at once (the market is open)

    async def landed() -> list[Any]:
        return await fetch(
            dsn,
            "SELECT o.status, o.filled_qty FROM orders o WHERE o.broker_order_id = $1 AND o.status = 'filled'",
            str(placed.tradier_id),
        )

    rows = await wait_for(landed, timeout=10, what="the fill in orders")
    assert rows[0]["filled_qty"] == 7
    events = await fetch(dsn, "SELECT DISTINCT source FROM order_events WHERE qty IS NOT NULL")
    assert {r["source"] for r in events} == {"stream"}
    assert sim.request_counts.get(listing, 0) == polls  # no tradeCycle poll listed the orders meanwhile

    async def stream_seen() -> dict[str, Any] | None:
        got = await daemon.healthz()
        view = got[1].get("streams", {}).get(acct.name) if got else None
        return view if view and view.get("events") else None

    view = await wait_for(stream_seen, timeout=10, what="/healthz shows the stream")
    assert view["state"] == "connected" and view["connected"] is True and view["broker"] == "tradier"
    assert isinstance(view["last_event_age_s"], float) and view["reconnects"] == 0
    status, metrics = await daemon.get("/metrics")
    assert status == 200
    assert f'syncd_stream_connected{{account="{acct.name}"}} 1' in metrics
    assert f'syncd_stream_events_total{{account="{acct.name}"}}' in metrics

    code, out, _err = await run_cli("health", "--url", daemon.health_url)
    assert code == 0 and f"{acct.name} (tradier): connected, last event" in out
    code, out, _err = await run_cli("health", "--url", daemon.health_url, "--json")
    assert json.loads(out)["streams"][acct.name]["connected"] is True
    assert body["status"] == "ok"

    assert await daemon.stop() == 0
    for secret in secrets_of([acct]):
        assert secret not in daemon.stderr()
