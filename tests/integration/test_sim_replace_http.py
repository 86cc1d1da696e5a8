"""The simulator's replace endpoints over raw HTTP, in each broker's own shapes.

Alpaca ``PATCH /v2/orders/{id}``: the answer is the NEW order (``replaces`` = the old id); the old one
becomes ``replaced`` with ``replaced_by``/``replaced_at``; a filled order is not replaceable (422).
Tradier ``PUT /v1/accounts/{id}/orders/{id}``: ``{"order": {"id", "status": "ok"}}``, the same order
at its new price; a quantity is not a parameter; a filled order is not modifiable (400 ``errors``).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from syncd.sim import Simulator
from tests.integration.test_sim_alpaca_http import call, limit
from tests.integration.test_sim_tradier_http import Tradier
from tests.simfixtures import http_fixture, sim_fixture

sim = sim_fixture(seed=21, accounts=2, positions_per_account=0, fill_on_submit=False)
http = http_fixture()


async def test_alpaca_patch_answers_the_new_order_and_marks_the_old_replaced(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    status, old = await call(http, sim, "POST", "/v2/orders", limit("AAPL", 10, "1.00", client_order_id="c-old"))
    assert status == 200, old
    sim.fill("c-old", qty=4, price="1")
    status, new = await call(
        http, sim, "PATCH", f"/v2/orders/{old['id']}", {"limit_price": "1.25", "client_order_id": "c-new"}
    )
    assert status == 200, new
    assert new["id"] != old["id"] and new["replaces"] == old["id"] and new["client_order_id"] == "c-new"
    assert (new["qty"], new["limit_price"], new["filled_qty"], new["status"]) == ("6", "1.25", "0", "new")
    assert (new["symbol"], new["side"], new["type"], new["time_in_force"]) == ("AAPL", "buy", "limit", "gtc")
    status, was = await call(http, sim, "GET", f"/v2/orders/{old['id']}")
    assert (was["status"], was["replaced_by"], was["filled_qty"]) == ("replaced", new["id"], "4")
    assert was["replaced_at"] is not None
    # a replaced (or filled) order is not replaceable; an unknown one is not found
    status, body = await call(http, sim, "PATCH", f"/v2/orders/{old['id']}", {"qty": "3"})
    assert status == 422 and body["code"] == 42210000 and "replaced" in body["message"]
    status, body = await call(http, sim, "PATCH", "/v2/orders/nope", {"qty": "3"})
    assert status == 404
    status, body = await call(http, sim, "PATCH", f"/v2/orders/{new['id']}", {})
    assert status == 422 and "qty or limit_price" in body["message"]


async def test_alpaca_patch_of_a_filled_order_is_refused(sim: Simulator, http: aiohttp.ClientSession) -> None:
    _, placed = await call(http, sim, "POST", "/v2/orders", limit("AAPL", 5, "1.00", client_order_id="c-f"))
    sim.fill("c-f", price="1")
    status, body = await call(http, sim, "PATCH", f"/v2/orders/{placed['id']}", {"limit_price": "2"})
    assert status == 422 and body == {"code": 42210000, "message": "order is filled; it cannot be replaced"}


async def put(t: Tradier, path: str, form: dict[str, str]) -> tuple[int, Any]:
    async with t.http.put(t.url + path, headers=t.headers, data=form) as r:
        return r.status, await r.json(content_type=None)


async def test_tradier_put_changes_the_order_in_place(sim: Simulator, http: aiohttp.ClientSession) -> None:
    t = Tradier(sim, http)
    form = {"class": "equity", "symbol": "AAPL", "side": "buy", "quantity": "10", "type": "limit",
            "price": "1.00", "duration": "day", "tag": "t-1"}  # fmt: skip
    status, placed = await t.post(f"{t.base}/orders", form)
    assert status == 200, placed
    oid = placed["order"]["id"]
    status, body = await put(t, f"{t.base}/orders/{oid}", {"price": "1.05"})
    assert status == 200 and body["order"]["id"] == oid and body["order"]["status"] == "ok"
    order = await t.order(oid)
    assert (order["price"], order["status"], order["tag"], order["quantity"]) == (1.05, "open", "t-1", 10.0)
    status, body = await put(t, f"{t.base}/orders/{oid}", {"price": "1.1", "quantity": "5"})
    assert status == 400 and "quantity" in str(body["errors"])
    sim.fill(oid, price="1.05")
    status, body = await put(t, f"{t.base}/orders/{oid}", {"price": "1.1"})
    assert status == 400 and body == {"errors": {"error": "Order is not in a modifiable state"}}
