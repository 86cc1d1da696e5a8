"""The Alpaca dialect: trading (``/v2/...``) and market data (``/v2/stocks``, ``/v1beta1/options``).

Field names and types follow Alpaca's wire format as alpaca-py 0.44 parses it:
decimals as strings in the trading API, JSON numbers in the data API, RFC 3339 UTC
timestamps, uuids for ids, ``{"code": ..., "message": ...}`` errors. A multi-leg
(``mleg``) parent has ``symbol``/``side``/``asset_class``/``position_intent`` set to
``""`` and its legs carry ``ratio_qty`` with an empty ``type``, as Alpaca sends them.

``GET /v2/orders`` lists multi-leg legs as orders of their own unless ``nested=true``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from syncd.sim.engine import (
    CLOSED,
    Exchange,
    LegSpec,
    OrderSpec,
    PositionView,
    SimAccount,
    SimActivity,
    SimOrder,
    SimReject,
    floor_qty,
)
from syncd.sim.faults import Faults
from syncd.sim.market import ET, Market, SimQuote, asset_id
from syncd.sim.wire import BodiesByVersion, dstr, json_body, json_response, money, parse_decimal, parse_time, ratio, ts

Handler = Callable[[web.Request], Any]

# Alpaca's error codes: HTTP status x 100000 + a sub-code.
_REJECT = {
    "invalid": (422, 40010001),
    "unsupported": (422, 40010001),
    "duplicate_client_order_id": (422, 40010001),
    "buying_power": (403, 40310000),
    "qty_available": (403, 40310000),
    "not_found": (404, 40410000),
    "not_cancelable": (422, 42210000),
    "not_replaceable": (422, 42210000),
}
_OPTION_SYMBOL_LIMIT = 100
_TAPES = {"NYSE": "A", "NASDAQ": "C"}


class AlpacaError(Exception):
    def __init__(self, status: int, code: int, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def response(self) -> web.Response:
        return json_response({"code": self.code, "message": self.message, **self.extra}, status=self.status)


def _invalid(message: str) -> AlpacaError:
    return AlpacaError(422, 40010001, message)


def reject_error(exc: SimReject) -> AlpacaError:
    status, code = _REJECT.get(exc.kind, (422, 40010001))
    return AlpacaError(status, code, exc.message, **exc.details)


# -- rendering ---------------------------------------------------------------------


def order_json(o: SimOrder, *, nested: bool = True) -> dict[str, Any]:
    """One order as Alpaca's ``Order`` entity (legs included when ``nested``)."""
    parent = o.is_multileg
    leg = o.parent is not None
    order_type = "" if leg else o.type
    d: dict[str, Any] = {
        "id": o.id,
        "client_order_id": o.client_order_id,
        "created_at": ts(o.created_at),
        "updated_at": ts(o.updated_at or o.created_at),
        "submitted_at": ts(o.created_at),
        "filled_at": ts(o.filled_at),
        "expired_at": ts(o.expired_at),
        "expires_at": None,
        "canceled_at": ts(o.canceled_at),
        "failed_at": ts(o.failed_at),
        "replaced_at": ts(o.replaced_at),
        "replaced_by": o.replaced_by,
        "replaces": o.replaces,
        "asset_id": "" if parent else asset_id(o.symbol),
        "symbol": o.symbol,
        "asset_class": o.asset_class,
        "notional": None,
        "qty": dstr(o.qty),
        "filled_qty": dstr(o.filled_qty),
        "filled_avg_price": dstr(o.filled_avg_price),
        "order_class": o.order_class,
        "order_type": order_type,
        "type": order_type,
        "side": o.side or "",
        "position_intent": o.position_intent or "",
        "time_in_force": o.time_in_force,
        "limit_price": dstr(o.limit_price),
        "stop_price": None,
        "status": o.status,
        "extended_hours": False,
        "legs": [order_json(x) for x in o.legs] if nested and o.legs else None,
        "trail_percent": None,
        "trail_price": None,
        "hwm": None,
        "subtag": None,
        "source": None,
    }
    if leg:
        d["ratio_qty"] = str(o.ratio_qty)
    return d


def position_json(v: PositionView) -> dict[str, Any]:
    p, inst = v.position, v.instrument
    qty, lastday = p.qty, v.lastday_price
    return {
        "asset_id": inst.asset_id,
        "symbol": p.symbol,
        "exchange": inst.exchange,
        "asset_class": inst.asset_class,
        "asset_marginable": not inst.is_option,
        "qty": dstr(qty),
        "avg_entry_price": dstr(p.avg_entry),
        "side": "long" if qty > 0 else "short",
        "market_value": money(v.market_value),
        "cost_basis": money(v.cost_basis),
        "unrealized_pl": money(v.unrealized_pl),
        "unrealized_plpc": ratio(v.unrealized_pl, abs(v.cost_basis)),
        "unrealized_intraday_pl": money(v.unrealized_intraday_pl),
        "unrealized_intraday_plpc": ratio(v.unrealized_intraday_pl, abs(qty * lastday * inst.multiplier)),
        "current_price": dstr(v.current_price),
        "lastday_price": dstr(lastday),
        "change_today": ratio(v.current_price - lastday, lastday),
        "qty_available": dstr(v.qty_available),
    }


def trade_update_json(event: str, order: SimOrder, at: dt.datetime, **fill: Decimal | str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"event": event, "order": order_json(order), "timestamp": ts(at)}
    for key in ("execution_id", "price", "qty", "position_qty"):
        value = fill.get(key)
        if value is not None:
            data[key] = value if isinstance(value, str) else dstr(value)
    return {"stream": "trade_updates", "data": data}


def _stock_quote(q: SimQuote, tape: str) -> dict[str, Any]:
    return {
        "t": ts(q.at),
        "ax": "V",
        "ap": float(q.ask),
        "as": q.ask_size,
        "bx": "V",
        "bp": float(q.bid),
        "bs": q.bid_size,
        "c": ["R"],
        "z": tape,
    }


def _option_quote(q: SimQuote) -> dict[str, Any]:
    return {
        "t": ts(q.at),
        "ax": "C",
        "ap": float(q.ask),
        "as": q.ask_size,
        "bx": "C",
        "bp": float(q.bid),
        "bs": q.bid_size,
        "c": "A",
    }


def _bar(t: dt.datetime, o: Decimal, h: Decimal, lo: Decimal, c: Decimal, v: int) -> dict[str, Any]:
    return {
        "t": ts(t),
        "o": float(o),
        "h": float(h),
        "l": float(lo),
        "c": float(c),
        "v": v,
        "n": max(1, v // 100),
        "vw": float(((h + lo + c) / 3).quantize(Decimal("0.0001"))),
    }


# -- the API -----------------------------------------------------------------------


class AlpacaApi:
    def __init__(self, exchange: Exchange, faults: Faults) -> None:
        self.exchange = exchange
        self.market: Market = exchange.market
        self.faults = faults
        self._positions_bodies: dict[int, tuple[object, bytes]] = {}  # account index -> (what it is made of, body)
        self._snapshots = BodiesByVersion()  # by (path, symbols as asked)

    def routes(self) -> list[web.RouteDef]:
        w = self._wrap
        return [
            web.get("/v2/account", w(self.get_account)),
            web.get("/v2/positions", w(self.list_positions)),
            web.get("/v2/positions/{symbol}", w(self.get_position)),
            web.delete("/v2/positions/{symbol}", w(self.close_position)),
            web.get("/v2/orders", w(self.list_orders)),
            web.post("/v2/orders", w(self.submit_order)),
            web.delete("/v2/orders", w(self.cancel_all)),
            web.get("/v2/orders:by_client_order_id", w(self.get_by_client_id)),
            web.get("/v2/orders/{order_id}", w(self.get_order)),
            web.delete("/v2/orders/{order_id}", w(self.cancel_order)),
            web.patch("/v2/orders/{order_id}", w(self.replace_order)),
            web.get("/v2/clock", w(self.get_clock)),
            web.get("/v2/account/activities", w(self.list_activities)),
            web.get("/v2/stocks/snapshots", w(self.stock_snapshots)),
            web.get("/v2/stocks/quotes/latest", w(self.stock_quotes)),
            web.get("/v1beta1/options/snapshots", w(self.option_snapshots)),
            web.get("/v1beta1/options/quotes/latest", w(self.option_quotes)),
        ]

    def _wrap(self, fn: Callable[[web.Request, SimAccount], Any]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                acct = self.authenticate(request)
                result = await fn(request, acct)
            except AlpacaError as exc:
                return exc.response()
            except SimReject as exc:
                return reject_error(exc).response()
            if isinstance(result, web.StreamResponse):
                return result
            return json_response(result)

        return handler

    def authenticate(self, request: web.Request) -> SimAccount:
        key = request.headers.get("APCA-API-KEY-ID", "")
        secret = request.headers.get("APCA-API-SECRET-KEY", "")
        acct = self.exchange.by_key.get(key)
        if acct is None or not secret or secret != acct.api_secret:
            raise AlpacaError(401, 40110000, "request is not authorized")
        if acct.index in self.faults.auth_failed:
            raise AlpacaError(403, 40310000, "forbidden")
        return acct

    # -- account and positions ---------------------------------------------------

    async def get_account(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        b = self.exchange.balances(acct)
        bp = money(b.buying_power)
        return {
            "id": acct.id,
            "admin_configurations": {},
            "user_configurations": None,
            "account_number": acct.account_number,
            "status": "ACTIVE",
            "crypto_status": "ACTIVE",
            "options_approved_level": 3,
            "options_trading_level": 3,
            "currency": "USD",
            "buying_power": bp,
            "regt_buying_power": bp,
            "daytrading_buying_power": "0",
            "effective_buying_power": bp,
            "non_marginable_buying_power": bp,
            "options_buying_power": bp,
            "bod_dtbp": "0",
            "cash": money(b.cash),
            "accrued_fees": "0",
            "portfolio_value": money(b.equity),
            "pattern_day_trader": False,
            "trading_blocked": False,
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": ts(acct.created_at),
            "trade_suspended_by_user": False,
            "multiplier": "1",
            "shorting_enabled": True,
            "equity": money(b.equity),
            "last_equity": money(b.last_equity),
            "long_market_value": money(b.long_market_value),
            "short_market_value": money(b.short_market_value),
            "position_market_value": money(b.long_market_value - b.short_market_value),
            "initial_margin": money(b.reserved),
            "maintenance_margin": money(b.reserved),
            "last_maintenance_margin": "0",
            "sma": "0",
            "daytrade_count": 0,
            "balance_asof": (self.market.clock.now().astimezone(ET).date() - dt.timedelta(days=1)).isoformat(),
            "crypto_tier": 0,
            "intraday_adjustments": "0",
            "pending_reg_taf_fees": "0",
        }

    async def list_positions(self, request: web.Request, acct: SimAccount) -> web.Response:
        """The account's positions. The encoded body is kept per account and served again while
        nothing it is made of changed (the market's version, the positions, what working orders
        hold): a broker asked every few seconds by hundreds of accounts answers in microseconds."""
        self.exchange.expire_due()
        held = self.exchange.held_for_orders(acct)
        key = (
            self.market.version,
            tuple((p.symbol, p.qty, p.avg_entry) for p in acct.positions.values()),
            tuple(held.items()),
        )
        kept = self._positions_bodies.get(acct.index)
        if kept is None or kept[0] != key:
            data = [position_json(v) for v in self.exchange.position_views(acct)]
            kept = self._positions_bodies[acct.index] = (key, json_body(data))
        return web.Response(body=kept[1], content_type="application/json")

    async def list_activities(self, request: web.Request, acct: SimAccount) -> list[dict[str, Any]]:
        """``GET /v2/account/activities``: the option expiries, assignments and exercises (the only
        activities the simulator books), filtered by ``activity_types``, ``after``/``until`` (a date
        or a time), ``direction`` (default ``desc``), paged by ``page_size`` (max 100) and
        ``page_token`` (the id of the last activity of the previous page)."""
        self.exchange.expire_due()
        q = request.query
        types = {t.strip() for t in q.get("activity_types", "").split(",") if t.strip()}
        direction = q.get("direction", "desc")
        if direction not in ("asc", "desc"):
            raise AlpacaError(422, 40010001, "invalid direction")
        try:
            size = int(q.get("page_size", "100"))
        except ValueError:
            raise AlpacaError(422, 40010001, "invalid page_size") from None
        if not 1 <= size <= 100:
            raise AlpacaError(422, 40010001, "page_size must be between 1 and 100")
        after, until = _activity_bound(q.get("after")), _activity_bound(q.get("until"))
        rows = [
            a
            for a in acct.activities
            if (not types or a.activity_type in types)
            and (after is None or _after(a, after))
            and (until is None or not _after(a, until))
        ]
        rows.sort(key=lambda a: (a.at, a.activity_type != "OPTRD"), reverse=direction == "desc")
        token = q.get("page_token")
        if token:
            keys = [a.id for a in rows]
            last = max((i for i, k in enumerate(keys) if k == token), default=-1)
            rows = rows[last + 1 :]
        return [_activity_json(a) for a in rows[:size]]

    def _position_symbol(self, acct: SimAccount, symbol_or_id: str) -> str:
        if symbol_or_id in acct.positions:
            return symbol_or_id
        for symbol in acct.positions:
            if asset_id(symbol) == symbol_or_id:
                return symbol
        raise AlpacaError(404, 40410000, "position does not exist")

    async def get_position(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        symbol = self._position_symbol(acct, request.match_info["symbol"])
        view = self.exchange.position_view(acct, symbol)
        if view is None:
            raise AlpacaError(404, 40410000, "position does not exist")
        return position_json(view)

    async def close_position(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        try:
            symbol = self._position_symbol(acct, request.match_info["symbol"])
        except AlpacaError:
            raise AlpacaError(404, 40410000, f"position not found: {request.match_info['symbol']}") from None
        pos = acct.positions[symbol]
        held = abs(pos.qty)
        qty_s, pct_s = request.query.get("qty"), request.query.get("percentage")
        try:
            if qty_s is not None and pct_s is not None:
                raise ValueError("only one of qty or percentage may be given")
            if qty_s is not None:
                qty = parse_decimal(qty_s, "qty")
            elif pct_s is not None:
                pct = parse_decimal(pct_s, "percentage")
                if not 0 < pct <= 100:
                    raise ValueError("percentage must be between 0 and 100")
                qty = held * pct / 100
                inst = self.market.instrument(symbol)
                if inst is not None and inst.is_option:
                    qty = floor_qty(qty)
            else:
                qty = held
            if qty <= 0:
                raise ValueError("qty must be > 0")
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        if qty > held:
            raise AlpacaError(
                403,
                40310000,
                f"insufficient qty available for order (requested: {dstr(qty)}, available: {dstr(held)})",
            )
        side = "sell" if pos.qty > 0 else "buy"
        spec = OrderSpec(
            qty=qty, type="market", time_in_force="day", symbol=symbol, side=side, position_intent=f"{side}_to_close"
        )
        order = self.exchange.submit(acct, spec)
        body = order_json(order)
        self.exchange.after_submit(order)
        return body

    # -- orders ------------------------------------------------------------------

    async def submit_order(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        try:
            body = json.loads(await request.text())
        except ValueError:
            raise AlpacaError(400, 40010000, "request body format is invalid") from None
        if not isinstance(body, dict):
            raise AlpacaError(400, 40010000, "request body format is invalid")
        try:
            spec = order_spec(body)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        order = self.exchange.submit(acct, spec)
        result = order_json(order)
        self.exchange.after_submit(order)
        return result

    async def list_orders(self, request: web.Request, acct: SimAccount) -> list[dict[str, Any]]:
        q = request.query
        try:
            status = q.get("status", "open")
            if status not in ("open", "closed", "all"):
                raise ValueError(f"invalid status {status!r}")
            limit = int(q.get("limit", "50"))
            if not 1 <= limit <= 500:
                raise ValueError("limit must be between 1 and 500")
            direction = q.get("direction", "desc")
            if direction not in ("asc", "desc"):
                raise ValueError("direction must be asc or desc")
            after = parse_time(q["after"], "after") if "after" in q else None
            until = parse_time(q["until"], "until") if "until" in q else None
            nested = q.get("nested", "false").lower() == "true"
            symbols = {s for s in q.get("symbols", "").split(",") if s}
            side = q.get("side")
        except ValueError as exc:
            raise _invalid(str(exc)) from None

        def keep(o: SimOrder) -> bool:
            if status == "open" and o.status in CLOSED:
                return False
            if status == "closed" and o.status not in CLOSED:
                return False
            if after is not None and o.created_at <= after:
                return False
            if until is not None and o.created_at > until:
                return False
            if side and o.side != side:
                return False
            return not symbols or any(p.symbol in symbols for p in o.parts())

        chosen = [o for o in acct.orders if keep(o)]
        if direction == "desc":
            chosen.reverse()
        out: list[dict[str, Any]] = []
        for o in chosen[:limit]:
            out.append(order_json(o, nested=nested))
            if not nested:
                out.extend(order_json(leg) for leg in o.legs)
        return out

    async def get_order(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        return order_json(self.exchange.find_order(acct, request.match_info["order_id"]))

    async def get_by_client_id(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        cid = request.query.get("client_order_id", "")
        order = acct.by_client_id.get(cid)
        if order is None:
            raise AlpacaError(404, 40410000, f"order not found for {cid}")
        return order_json(order)

    async def replace_order(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        """``PATCH /v2/orders/{id}``: the NEW order (``replaces`` = the old id); the old one is ``replaced``."""
        order = self.exchange.find_order(acct, request.match_info["order_id"])
        try:
            body = json.loads(await request.text())
        except ValueError:
            raise AlpacaError(400, 40010000, "request body format is invalid") from None
        if not isinstance(body, dict):
            raise AlpacaError(400, 40010000, "request body format is invalid")
        unknown = set(body) - {"qty", "limit_price", "stop_price", "trail", "time_in_force", "client_order_id"}
        if unknown:
            raise _invalid(f"unknown field(s) {', '.join(sorted(unknown))}")
        try:
            qty = parse_decimal(str(body["qty"]), "qty") if body.get("qty") is not None else None
            limit = (
                parse_decimal(str(body["limit_price"]), "limit_price") if body.get("limit_price") is not None else None
            )
            if qty is None and limit is None:
                raise ValueError("qty or limit_price is required")
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        cid = body.get("client_order_id")
        new = self.exchange.replace(order, qty=qty, limit_price=limit, client_order_id=str(cid) if cid else None)
        result = order_json(new)
        self.exchange.after_submit(new)
        return result

    async def cancel_order(self, request: web.Request, acct: SimAccount) -> web.Response:
        order = self.exchange.find_order(acct, request.match_info["order_id"])
        try:
            self.exchange.cancel(order)
        except SimReject:
            raise AlpacaError(422, 42210000, "order is not cancelable") from None
        return web.Response(status=204)

    async def cancel_all(self, request: web.Request, acct: SimAccount) -> web.Response:
        results = []
        for order in [o for o in acct.orders if o.is_working]:
            self.exchange.cancel(order)
            results.append({"id": order.id, "status": 200, "body": order_json(order)})
        return json_response(results, status=207)

    async def get_clock(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        now, next_open, next_close = self.market.clock_times()
        return {
            "timestamp": now.astimezone(ET).isoformat(),
            "is_open": self.market.is_open,
            "next_open": next_open.isoformat(),
            "next_close": next_close.isoformat(),
        }

    # -- market data -------------------------------------------------------------

    def _symbols(self, request: web.Request, limit: int | None = None) -> list[str]:
        raw = request.query.get("symbols", "")
        symbols = [s.strip() for s in raw.split(",") if s.strip()]
        if not symbols:
            raise AlpacaError(400, 40010001, "symbols is required")
        if limit is not None and len(symbols) > limit:
            raise AlpacaError(400, 40010001, f"too many symbols: at most {limit} are allowed")
        return list(dict.fromkeys(symbols))

    def _quotes(self, symbols: list[str], option: bool) -> dict[str, SimQuote]:
        out: dict[str, SimQuote] = {}
        for s in symbols:
            inst = self.market.instrument(s)
            if inst is None or inst.is_option != option:
                continue
            q = self.market.quote(s)
            if q is not None:
                out[s] = q
        return out

    def _tape(self, symbol: str) -> str:
        inst = self.market.instrument(symbol)
        return _TAPES.get(inst.exchange if inst else "", "C")

    def _kept_snapshots(self, request: web.Request, build: Callable[[], Any]) -> web.Response:
        """The snapshots body for this request, built once per market version and symbol list."""
        key = (request.path, request.query.get("symbols", ""))
        body = self._snapshots.get(self.market.version, key, build)
        return web.Response(body=body, content_type="application/json")

    async def stock_snapshots(self, request: web.Request, acct: SimAccount) -> web.Response:
        symbols = self._symbols(request)
        return self._kept_snapshots(request, lambda: self._stock_snapshots(symbols))

    def _stock_snapshots(self, symbols: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s, q in self._quotes(symbols, option=False).items():
            tape = self._tape(s)
            minute = q.at.replace(second=0, microsecond=0)
            day = q.at.astimezone(ET).replace(hour=0, minute=0, second=0, microsecond=0)
            out[s] = {
                "latestTrade": {
                    "t": ts(q.at),
                    "x": "V",
                    "p": float(q.last),
                    "s": 100,
                    "c": ["@"],
                    "i": q.volume,
                    "z": tape,
                },
                "latestQuote": _stock_quote(q, tape),
                "minuteBar": _bar(minute, q.last, q.last, q.last, q.last, 1_000),
                "dailyBar": _bar(day, q.open, q.high, q.low, q.last, q.volume),
                "prevDailyBar": _bar(
                    day - dt.timedelta(days=1), q.prev_close, q.prev_close, q.prev_close, q.prev_close, q.volume
                ),
            }
        return out

    async def stock_quotes(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        quotes = self._quotes(self._symbols(request), option=False)
        return {"quotes": {s: _stock_quote(q, self._tape(s)) for s, q in quotes.items()}}

    async def option_snapshots(self, request: web.Request, acct: SimAccount) -> web.Response:
        symbols = self._symbols(request, _OPTION_SYMBOL_LIMIT)
        return self._kept_snapshots(request, lambda: self._option_snapshots(symbols))

    def _option_snapshots(self, symbols: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s, q in self._quotes(symbols, option=True).items():
            snap: dict[str, Any] = {
                "latestQuote": _option_quote(q),
                "latestTrade": {"t": ts(q.at), "x": "C", "p": float(q.last), "s": 1, "c": "I"},
            }
            if q.greeks is not None:
                g = q.greeks
                snap["greeks"] = {
                    "delta": round(g.delta, 4),
                    "gamma": round(g.gamma, 4),
                    "rho": round(g.rho, 4),
                    "theta": round(g.theta, 4),
                    "vega": round(g.vega, 4),
                }
                snap["impliedVolatility"] = round(g.iv, 4)
            out[s] = snap
        return {"snapshots": out, "next_page_token": None}

    async def option_quotes(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        quotes = self._quotes(self._symbols(request, _OPTION_SYMBOL_LIMIT), option=True)
        return {"quotes": {s: _option_quote(q) for s, q in quotes.items()}}


def _side_from(side: object, intent: object, where: str) -> tuple[str, str | None]:
    if intent is not None and intent not in ("buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close"):
        raise ValueError(f"invalid position_intent {intent!r}{where}")
    if side in (None, ""):
        if intent is None:
            raise ValueError(f"side is required{where}")
        side = str(intent).split("_", 1)[0]
    if side not in ("buy", "sell"):
        raise ValueError(f"invalid side {side!r}{where}")
    if intent is not None and not str(intent).startswith(str(side)):
        raise ValueError(f"position_intent {intent} contradicts side {side}{where}")
    return str(side), None if intent is None else str(intent)


def order_spec(body: dict[str, Any]) -> OrderSpec:
    """Alpaca's ``POST /v2/orders`` JSON -> an ``OrderSpec``; ``ValueError`` says what is wrong."""
    order_class = body.get("order_class") or "simple"
    if order_class in ("bracket", "oco", "oto"):
        raise ValueError(f"order_class {order_class} is not supported by the simulator")
    if order_class not in ("simple", "mleg"):
        raise ValueError(f"invalid order_class {order_class!r}")
    if body.get("notional") is not None:
        raise ValueError("notional orders are not supported by the simulator")
    if body.get("qty") is None:
        raise ValueError("qty is required")
    qty = parse_decimal(body["qty"], "qty")
    order_type = body.get("type") or body.get("order_type")
    if not order_type:
        raise ValueError("type is required")
    tif = body.get("time_in_force")
    if not tif:
        raise ValueError("time_in_force is required")
    limit = body.get("limit_price")
    limit_price = None if limit is None else parse_decimal(limit, "limit_price")
    cid = body.get("client_order_id")
    if cid is not None and (not isinstance(cid, str) or not 1 <= len(cid) <= 128):
        raise ValueError("client_order_id must be a string of 1 to 128 characters")
    common: dict[str, Any] = {
        "qty": qty,
        "type": str(order_type),
        "time_in_force": str(tif),
        "limit_price": limit_price,
        "client_order_id": cid,
        "source": "alpaca",
    }
    if order_class == "mleg":
        legs_in = body.get("legs")
        if not isinstance(legs_in, list) or not legs_in:
            raise ValueError("legs are required for an mleg order")
        legs = []
        for i, leg in enumerate(legs_in):
            where = f" (leg {i})"
            if not isinstance(leg, dict) or not isinstance(leg.get("symbol"), str):
                raise ValueError(f"symbol is required{where}")
            ratio_d = parse_decimal(leg.get("ratio_qty", 1), f"ratio_qty{where}")
            if ratio_d != ratio_d.to_integral_value():
                raise ValueError(f"ratio_qty must be a whole number{where}")
            side, intent = _side_from(leg.get("side"), leg.get("position_intent"), where)
            legs.append(LegSpec(leg["symbol"], side, int(ratio_d), intent))
        return OrderSpec(legs=tuple(legs), **common)
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise ValueError("symbol is required")
    side, intent = _side_from(body.get("side"), body.get("position_intent"), "")
    return OrderSpec(symbol=symbol, side=side, position_intent=intent, **common)


def _activity_bound(value: str | None) -> dt.date | dt.datetime | None:
    if not value:
        return None
    try:
        if len(value) == 10:
            return dt.date.fromisoformat(value)
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AlpacaError(422, 40010001, f"invalid date {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _after(a: SimActivity, bound: dt.date | dt.datetime) -> bool:
    if isinstance(bound, dt.datetime):
        return a.at > bound
    return a.date > bound


def _activity_json(a: SimActivity) -> dict[str, Any]:
    """A non-trade activity as Alpaca's docs show it ("Non-Trade Activities for Option Events")."""
    out: dict[str, Any] = {
        "id": a.id,
        "activity_type": a.activity_type,
        "date": a.date.isoformat(),
        "net_amount": dstr(a.net_amount),
        "description": a.description,
        "symbol": a.symbol,
        "qty": dstr(a.qty),
        "status": "executed",
    }
    if a.price is not None:
        out["price"] = dstr(a.price)
    return out
