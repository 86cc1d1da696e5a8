"""``/_sim/...``: drive a simulator running in another process (JSON in, JSON out).

Never authenticated, never faulted, never counted: a loopback test tool. Errors
are ``400``/``404`` with ``{"error": "..."}``. See the package docstring for the list.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from syncd.sim.engine import SimAccount, SimOrder, SimReject
from syncd.sim.wire import dstr, json_response, ts

if TYPE_CHECKING:
    from syncd.sim.server import Simulator

Body = dict[str, Any]
Action = Callable[[Body], Any]


def order_summary(o: SimOrder) -> dict[str, Any]:
    return {
        "id": o.id,
        "tradier_id": o.tradier_id,
        "client_order_id": o.client_order_id,
        "account": o.account,
        "symbol": o.symbol or o.underlying,
        "side": o.side,
        "qty": dstr(o.qty),
        "filled_qty": dstr(o.filled_qty),
        "filled_avg_price": dstr(o.filled_avg_price),
        "type": o.type,
        "limit_price": dstr(o.limit_price),
        "status": o.status,
        "order_class": o.order_class,
        "source": o.source,
        "legs": [order_summary(leg) for leg in o.legs],
    }


def _account_summary(sim: Simulator, acct: SimAccount, detail: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"index": acct.index, **acct.credentials(), "alpaca_account_number": acct.account_number}
    if detail:
        b = sim.exchange.balances(acct)
        out.update(
            cash=dstr(b.cash),
            equity=dstr(b.equity.quantize(Decimal("0.01"))),
            buying_power=dstr(b.buying_power.quantize(Decimal("0.01"))),
            positions=[
                {"symbol": p.symbol, "qty": dstr(p.qty), "avg_entry_price": dstr(p.avg_entry)}
                for p in acct.positions.values()
            ],
            orders=[order_summary(o) for o in acct.orders],
        )
    return out


def _req(body: Body, key: str) -> Any:
    if key not in body or body[key] is None:
        raise ValueError(f"{key} is required")
    return body[key]


class AdminApi:
    """The ``/_sim`` endpoints; each action takes the merged JSON body, query and path."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    @staticmethod
    def endpoint(action: Action) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            body: Body = {}
            if request.can_read_body:
                try:
                    parsed = json.loads(await request.text() or "{}")
                except ValueError:
                    return json_response({"error": "the body must be JSON"}, status=400)
                if not isinstance(parsed, dict):
                    return json_response({"error": "the body must be a JSON object"}, status=400)
                body = parsed
            body.update({k: v for k, v in request.query.items() if k not in body})
            body.update(request.match_info)
            try:
                result = action(body)
                if hasattr(result, "__await__"):
                    result = await result
            except KeyError as exc:
                return json_response({"error": str(exc.args[0] if exc.args else exc)}, status=404)
            except SimReject as exc:
                return json_response({"error": exc.message, "kind": exc.kind, **exc.details}, status=400)
            except (ValueError, TypeError, ArithmeticError) as exc:
                return json_response({"error": str(exc)}, status=400)
            return json_response(result if result is not None else {"ok": True})

        return handler

    def state(self, _: Body) -> Body:
        return {
            "url": self.sim.url,
            "stream_url": self.sim.stream_url,
            "seed": self.sim.config.seed,
            "accounts": len(self.sim.accounts),
            "positions_per_account": self.sim.config.positions_per_account,
            "market_open": self.sim.market.is_open,
            "clock": ts(self.sim.clock.now()),
            "requests": self.sim.request_count,
            "market_version": self.sim.market.version,
            "streams": self.sim.streams.connected(),
        }

    def accounts(self, body: Body) -> list[Body]:
        offset, limit = int(body.get("offset", 0)), int(body.get("limit", 10))
        return [_account_summary(self.sim, a, False) for a in self.sim.accounts[offset : offset + limit]]

    def account(self, body: Body) -> Body:
        return _account_summary(self.sim, self.sim.account(_ref(body["index"])), True)

    def tick(self, body: Body) -> Body:
        self.sim.tick(int(body.get("n", 1)))
        return self.state(body)

    async def advance(self, body: Body) -> Body:
        await self.sim.advance(float(_req(body, "seconds")))
        return self.state(body)

    def expire(self, body: Body) -> Body:
        on = body.get("date")
        settled = self.sim.expire(dt.date.fromisoformat(str(on)) if on else None)
        return {**self.state(body), "settled": settled}

    def assign(self, body: Body) -> Body:
        """``POST /_sim/assign {"account", "symbol"}``: an early assignment (short) or exercise (long)."""
        account, symbol = _ref(_req(body, "account")), str(_req(body, "symbol"))
        self.sim.assign_early(account, symbol)
        return {**self.state(body), "assigned": symbol}

    def activities(self, body: Body) -> list[Body]:
        acct = self.sim.account(_ref(_req(body, "index")))
        return [
            {
                "id": a.id,
                "activity_type": a.activity_type,
                "date": a.date.isoformat(),
                "symbol": a.symbol,
                "qty": dstr(a.qty),
                "price": dstr(a.price),
                "net_amount": dstr(a.net_amount),
            }
            for a in acct.activities
        ]

    def price(self, body: Body) -> Body:
        self.sim.set_price(str(_req(body, "symbol")), str(_req(body, "bid")), str(_req(body, "ask")))
        q = self.sim.market.quote(str(body["symbol"]))
        assert q is not None
        return {"symbol": q.symbol, "bid": dstr(q.bid), "ask": dstr(q.ask)}

    def unpin(self, body: Body) -> None:
        self.sim.unpin(str(_req(body, "symbol")))

    def quote(self, body: Body) -> Body:
        q = self.sim.market.quote(str(_req(body, "symbol")))
        if q is None:
            raise KeyError(f"unknown symbol {body['symbol']}")
        return {"symbol": q.symbol, "bid": dstr(q.bid), "ask": dstr(q.ask), "last": dstr(q.last)}

    def market(self, body: Body) -> Body:
        self.sim.set_market_open(_bool(_req(body, "open")))
        return self.state(body)

    def fill(self, body: Body) -> Body:
        return order_summary(self.sim.fill(_order_ref(_req(body, "order_id")), body.get("qty"), body.get("price")))

    def cancel(self, body: Body) -> Body:
        return order_summary(self.sim.cancel(_order_ref(_req(body, "order_id"))))

    def outside_order(self, body: Body) -> Body:
        legs = [(str(x["symbol"]), str(x["side"]), int(x.get("ratio", 1))) for x in body.get("legs") or []]
        order = self.sim.place_outside_order(
            _ref(_req(body, "account")),
            body.get("symbol"),
            body.get("side"),
            str(_req(body, "qty")),
            type=str(body.get("type", "market")),
            limit_price=body.get("limit_price"),
            time_in_force=str(body.get("time_in_force", "day")),
            legs=legs,
            client_order_id=body.get("client_order_id"),
        )
        return order_summary(order)

    def get_order(self, body: Body) -> Body:
        return order_summary(self.sim.order(_order_ref(body["order_id"])))

    def add_position(self, body: Body) -> Body:
        pos = self.sim.add_position(
            _ref(_req(body, "account")), str(_req(body, "symbol")), str(_req(body, "qty")), str(_req(body, "avg"))
        )
        return {"symbol": pos.symbol, "qty": dstr(pos.qty), "avg_entry_price": dstr(pos.avg_entry)}

    def remove_position(self, body: Body) -> None:
        self.sim.remove_position(_ref(_req(body, "account")), str(_req(body, "symbol")))

    def set_cash(self, body: Body) -> None:
        self.sim.set_cash(_ref(_req(body, "account")), str(_req(body, "cash")))

    def faults(self, body: Body) -> Body:
        f = self.sim.faults
        for key in ("latency_s", "error_rate", "retry_after_s"):
            if key in body:
                setattr(f, key, float(body[key]))
        if "rate_limit_every" in body:
            f.rate_limit_every = int(body["rate_limit_every"])
        if "error_body" in body:
            if body["error_body"] not in ("json", "html"):
                raise ValueError("error_body must be json or html")
            f.error_body = body["error_body"]
        for key in ("tradier_late_fill_price", "enforce_rate_limits"):
            if key in body:
                setattr(f, key, _bool(body[key]))
        if "fill_on_submit" in body:
            self.sim.exchange.fill_on_submit = _bool(body["fill_on_submit"])
        return {
            "latency_s": f.latency_s,
            "error_rate": f.error_rate,
            "error_body": f.error_body,
            "rate_limit_every": f.rate_limit_every,
            "retry_after_s": f.retry_after_s,
            "tradier_late_fill_price": f.tradier_late_fill_price,
            "enforce_rate_limits": f.enforce_rate_limits,
            "auth_failed": sorted(f.auth_failed),
            "fill_on_submit": self.sim.exchange.fill_on_submit,
        }

    def clear_faults(self, body: Body) -> Body:
        self.sim.faults.clear()
        return self.faults({})

    def drop_next(self, body: Body) -> None:
        prefix = str(_req(body, "path_prefix"))
        self.sim.faults.drop_next_response(prefix, body.get("method"), int(body.get("count", 1)))

    def fail_next(self, body: Body) -> None:
        retry = body.get("retry_after")
        self.sim.faults.fail_next(
            str(_req(body, "path_prefix")),
            int(body.get("status", 500)),
            method=body.get("method"),
            count=int(body.get("count", 1)),
            body="html" if body.get("body") == "html" else "json",
            retry_after=None if retry is None else float(retry),
        )

    def fail_auth(self, body: Body) -> None:
        self.sim.faults.fail_auth(self.sim.account(_ref(_req(body, "account"))), _bool(body.get("on", True)))

    async def disconnect(self, body: Body) -> Body:
        which = body.get("account")
        return {"closed": await self.sim.disconnect_streams(None if which is None else _ref(which))}

    def requests(self, _: Body) -> Body:
        return {"total": self.sim.request_count, "by_path": dict(self.sim.request_counts)}

    def events(self, body: Body) -> list[Body]:
        limit = int(body.get("limit", 100))
        out = []
        for e in self.sim.events[-limit:]:
            out.append(
                {
                    "account": e.account,
                    "event": e.event,
                    "order_id": e.order.id,
                    "at": ts(e.at),
                    "price": dstr(e.price),
                    "qty": dstr(e.qty),
                }
            )
        return out

    def routes(self) -> list[web.RouteDef]:
        e = self.endpoint
        return [
            web.get("/_sim/state", e(self.state)),
            web.get("/_sim/accounts", e(self.accounts)),
            web.get("/_sim/accounts/{index}", e(self.account)),
            web.post("/_sim/tick", e(self.tick)),
            web.post("/_sim/advance", e(self.advance)),
            web.post("/_sim/expire", e(self.expire)),
            web.post("/_sim/assign", e(self.assign)),
            web.get("/_sim/accounts/{index}/activities", e(self.activities)),
            web.post("/_sim/price", e(self.price)),
            web.post("/_sim/unpin", e(self.unpin)),
            web.get("/_sim/quote", e(self.quote)),
            web.post("/_sim/market", e(self.market)),
            web.post("/_sim/fill", e(self.fill)),
            web.post("/_sim/cancel", e(self.cancel)),
            web.post("/_sim/orders", e(self.outside_order)),
            web.get("/_sim/orders/{order_id}", e(self.get_order)),
            web.post("/_sim/positions", e(self.add_position)),
            web.post("/_sim/positions/remove", e(self.remove_position)),
            web.post("/_sim/cash", e(self.set_cash)),
            web.get("/_sim/faults", e(self.faults)),
            web.post("/_sim/faults", e(self.faults)),
            web.post("/_sim/faults/clear", e(self.clear_faults)),
            web.post("/_sim/drop_next", e(self.drop_next)),
            web.post("/_sim/fail_next", e(self.fail_next)),
            web.post("/_sim/fail_auth", e(self.fail_auth)),
            web.post("/_sim/streams/disconnect", e(self.disconnect)),
            web.get("/_sim/requests", e(self.requests)),
            web.get("/_sim/events", e(self.events)),
        ]


def _ref(value: Any) -> int | str:
    """An account reference from JSON: an index (number or digits) or a name/key."""
    if isinstance(value, int):
        return value
    s = str(value)
    return int(s) if s.isdigit() else s


def _order_ref(value: Any) -> str | int:
    return value if isinstance(value, int) else str(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes", "on"):
        return True
    if str(value).lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")
