"""The Tradier dialect (``/v1/...``), quirks included.

Tradier's JSON has shapes an adapter must survive, and the simulator reproduces them:

- a collection of one is a single object, not a one-element list
  (``{"positions": {"position": {...}}}``), and an empty one is the string
  ``"null"`` (``{"positions": "null"}``, ``{"orders": "null"}``);
- numbers are JSON numbers (``"quantity": 10.0``), ids are integers;
- ``"errors": {"error": "..."}`` holds a single string for a single error;
- bad or missing tokens get ``401`` with the plain-text body ``Invalid Access Token``;
- with ``sim.faults.tradier_late_fill_price`` a just-filled order's first read shows
  ``avg_fill_price`` 0 and no ``last_fill_price`` although its status is ``filled``.

Requests must send ``Accept: application/json`` (Tradier answers XML otherwise; the
simulator answers 406 and says why). Orders are form-encoded, as Tradier wants.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from aiohttp import web

from syncd.sim.engine import Exchange, LegSpec, OrderSpec, SimAccount, SimActivity, SimOrder, SimReject
from syncd.sim.faults import Faults
from syncd.sim.market import ET, Instrument, Market, SimQuote
from syncd.sim.wire import BodiesByVersion, epoch_ms, json_response, parse_decimal, tradier_ts

Handler = Callable[[web.Request], Any]

_STATUS = {
    "new": "open",
    "accepted": "pending",
    "pending_new": "pending",
    "partially_filled": "partially_filled",
    "filled": "filled",
    "canceled": "canceled",
    "expired": "expired",
    "rejected": "rejected",
}
_EQUITY_SIDES = {
    "buy": ("buy", "buy_to_open"),
    "buy_to_cover": ("buy", "buy_to_close"),
    "sell": ("sell", "sell_to_close"),
    "sell_short": ("sell", "sell_to_open"),
}
_OPTION_SIDES = ("buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close")
_TAG_RE = re.compile(r"^[A-Za-z0-9-]{1,255}$")
_ETFS = frozenset({"SPY", "QQQ", "IWM", "DIA", "XLF", "GLD", "TLT"})
_LEG_KEY = re.compile(r"^(option_symbol|side|quantity)\[(\d+)\]$")


class TradierError(Exception):
    def __init__(self, status: int, message: str, *, plain: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.plain = status, message, plain

    def response(self) -> web.Response:
        if self.plain:
            return web.Response(text=self.message, status=self.status, content_type="text/plain")
        return json_response({"errors": {"error": self.message}}, status=self.status)


def one_or_many(items: list[Any], key: str) -> Any:
    """Tradier's collection shape: ``"null"``, a single object, or a list."""
    if not items:
        return "null"
    return {key: items[0] if len(items) == 1 else items}


_HISTORY_OPTION_TYPES = {
    "OPEXP": ("OPTEXP", "Expired"),
    "OPASN": ("OPTASGN", "Assigned"),
    "OPEXC": ("OPTEXER", "Exercised"),
}


def _history_json(a: SimActivity, kind: str) -> dict[str, Any]:
    """One history event in the shape of Tradier's docs (docs.tradier.com, "History")."""
    date = f"{a.date.isoformat()}T00:00:00Z"
    if kind == "trade":
        return {
            "amount": float(a.net_amount),
            "date": date,
            "type": "trade",
            "trade": {
                "commission": 0.0,
                "description": a.description,
                "price": float(a.price or 0),
                "quantity": float(a.qty),
                "symbol": a.symbol,
                "trade_type": "Equity",
            },
        }
    option_type, words = _HISTORY_OPTION_TYPES[a.activity_type]
    return {
        "amount": float(a.net_amount),
        "date": date,
        "type": "option",
        "option": {"option_type": option_type, "description": words, "quantity": float(a.qty)},
    }


def _f(x: Decimal | None) -> float:
    return float(x) if x is not None else 0.0


def tradier_side(o: SimOrder) -> str:
    intent = o.position_intent or f"{o.side}_to_open"
    if o.asset_class == "us_option":
        return intent
    for word, (side, equity_intent) in _EQUITY_SIDES.items():
        if side == o.side and equity_intent == intent:
            return word
    return o.side or "buy"


def _strategy(o: SimOrder, market: Market) -> str:
    insts = [market.instrument(p.symbol) for p in o.legs]
    if len(insts) == 2 and all(i is not None and i.is_option for i in insts):
        a, b = insts
        assert a is not None and b is not None
        if a.option_type == b.option_type:
            return "spread"
        if a.expiration == b.expiration:
            return "straddle" if a.strike == b.strike else "strangle"
    return "unknown"


def _multileg_type(o: SimOrder) -> str:
    if o.type == "market":
        return "market"
    limit = o.limit_price or Decimal(0)
    return "debit" if limit > 0 else "credit" if limit < 0 else "even"


def order_json(o: SimOrder, market: Market, *, include_tags: bool, hide_fill: bool) -> dict[str, Any]:
    """One order as Tradier's ``order`` object (a multileg order with its ``leg`` list)."""
    if o.is_multileg:
        order_type = o.tradier_type or _multileg_type(o)
        cls = "multileg"
        side = "buy"
    else:
        order_type = o.type
        if o.parent is not None:
            order_type = o.parent.tradier_type or _multileg_type(o.parent)
        cls = "option" if o.asset_class == "us_option" else "equity"
        side = tradier_side(o)
    filled = o.filled_qty
    d: dict[str, Any] = {
        "id": o.tradier_id,
        "type": order_type,
        "symbol": o.underlying,
        "side": side,
        "quantity": float(o.qty),
        "status": _STATUS.get(o.status, o.status),
        "duration": o.time_in_force if o.time_in_force in ("day", "gtc") else "day",
        "avg_fill_price": 0.0 if hide_fill else _f(o.filled_avg_price),
        "exec_quantity": float(filled),
        "last_fill_price": _f(o.last_fill_price),
        "last_fill_quantity": _f(o.last_fill_qty),
        "remaining_quantity": float(o.remaining) if o.is_working else 0.0,
        "create_date": tradier_ts(o.created_at),
        "transaction_date": tradier_ts(o.updated_at or o.created_at),
        "class": cls,
    }
    if hide_fill:
        del d["last_fill_price"]
    price = o.limit_price if o.parent is None else o.parent.limit_price
    if price is not None:
        d["price"] = abs(float(price))
    if cls == "option":
        d["option_symbol"] = o.symbol
    if include_tags and o.tag:
        d["tag"] = o.tag
    if o.is_multileg:
        d["num_legs"] = len(o.legs)
        d["strategy"] = _strategy(o, market)
        d["leg"] = [order_json(leg, market, include_tags=include_tags, hide_fill=hide_fill) for leg in o.legs]
    return d


def _quote_json(inst: Instrument, q: SimQuote, greeks: bool) -> dict[str, Any]:
    ms = epoch_ms(q.at)
    change = q.last - q.prev_close
    d: dict[str, Any] = {
        "symbol": inst.symbol,
        "description": inst.name,
        "exch": "Z" if inst.is_option else "Q",
        "type": "option" if inst.is_option else "etf" if inst.symbol in _ETFS else "stock",
        "last": float(q.last),
        "change": float(change),
        "volume": q.volume,
        "open": float(q.open),
        "high": float(q.high),
        "low": float(q.low),
        "close": None,
        "bid": float(q.bid),
        "ask": float(q.ask),
        "change_percentage": round(float(change / q.prev_close * 100), 2) if q.prev_close else 0.0,
        "average_volume": q.volume,
        "last_volume": 100,
        "trade_date": ms,
        "prevclose": float(q.prev_close),
        "week_52_high": float(q.high * Decimal("1.3")),
        "week_52_low": float(q.low * Decimal("0.7")),
        "bidsize": q.bid_size,
        "bidexch": "Q",
        "bid_date": ms,
        "asksize": q.ask_size,
        "askexch": "Q",
        "ask_date": ms,
    }
    if not inst.is_option:
        d["root_symbols"] = inst.symbol
        return d
    assert inst.expiration is not None and inst.strike is not None
    d.update(
        {
            "underlying": inst.underlying,
            "strike": float(inst.strike),
            "open_interest": q.volume * 7,
            "contract_size": 100,
            "expiration_date": inst.expiration.isoformat(),
            "expiration_type": "standard" if 15 <= inst.expiration.day <= 21 else "weeklys",
            "option_type": inst.option_type,
            "root_symbol": inst.underlying,
        }
    )
    if greeks:
        if q.greeks is None:
            d["greeks"] = None
        else:
            g = q.greeks
            d["greeks"] = {
                "delta": round(g.delta, 8),
                "gamma": round(g.gamma, 8),
                "theta": round(g.theta, 8),
                "vega": round(g.vega, 8),
                "rho": round(g.rho, 8),
                "phi": round(-g.rho * 0.9, 8),
                "bid_iv": round(max(g.iv - 0.01, 0.0), 6),
                "mid_iv": round(g.iv, 6),
                "ask_iv": round(g.iv + 0.01, 6),
                "smv_vol": round(g.iv, 3),
                "updated_at": q.at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            }
    return d


class TradierApi:
    def __init__(self, exchange: Exchange, faults: Faults) -> None:
        self.exchange = exchange
        self.market: Market = exchange.market
        self.faults = faults
        self._quote_bodies = BodiesByVersion()  # by (symbols as asked, greeks)

    def routes(self) -> list[web.RouteDef]:
        w = self._wrap
        base = "/v1/accounts/{account_id}"
        return [
            web.get("/v1/user/profile", w(self.profile)),
            web.get(f"{base}/balances", w(self.balances, account=True)),
            web.get(f"{base}/positions", w(self.positions, account=True)),
            web.get(f"{base}/orders", w(self.list_orders, account=True)),
            web.get(f"{base}/history", w(self.history, account=True)),
            web.post(f"{base}/orders", w(self.place_order, account=True)),
            web.get(f"{base}/orders/{{order_id}}", w(self.get_order, account=True)),
            web.delete(f"{base}/orders/{{order_id}}", w(self.cancel_order, account=True)),
            web.put(f"{base}/orders/{{order_id}}", w(self.modify_order, account=True)),
            web.get("/v1/markets/quotes", w(self.quotes)),
            web.post("/v1/markets/quotes", w(self.quotes)),
            web.get("/v1/markets/clock", w(self.clock)),
            web.get("/v1/markets/calendar", w(self.calendar)),
        ]

    def _wrap(self, fn: Callable[[web.Request, SimAccount], Any], account: bool = False) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                acct = self.authenticate(request)
                if account and request.match_info["account_id"] != acct.tradier_account_id:
                    # a token may reach several accounts (Simulator.share_tradier_token)
                    target = self.exchange.by_tradier_id.get(request.match_info["account_id"])
                    if target is None or target.tradier_token != acct.tradier_token:
                        raise TradierError(401, f"Unauthorized Account: {request.match_info['account_id']}", plain=True)
                    if target.index in self.faults.auth_failed:
                        raise TradierError(401, "Invalid Access Token", plain=True)
                    acct = target
                result = await fn(request, acct)
            except TradierError as exc:
                return exc.response()
            except SimReject as exc:
                status = 404 if exc.kind == "not_found" else 400
                return TradierError(status, exc.message).response()
            return result if isinstance(result, web.StreamResponse) else json_response(result)

        return handler

    def authenticate(self, request: web.Request) -> SimAccount:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        acct = self.exchange.by_token.get(token.strip()) if scheme.lower() == "bearer" else None
        if acct is None or acct.index in self.faults.auth_failed:
            raise TradierError(401, "Invalid Access Token", plain=True)
        if "application/json" not in request.headers.get("Accept", ""):
            raise TradierError(
                406,
                "the simulator answers JSON only: send 'Accept: application/json' (Tradier would send XML)",
                plain=True,
            )
        return acct

    # -- account -----------------------------------------------------------------

    async def profile(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        account = {
            "account_number": acct.tradier_account_id,
            "classification": "individual",
            "date_created": tradier_ts(acct.created_at),
            "day_trader": False,
            "option_level": 6,
            "status": "active",
            "type": "margin",
            "last_update_date": tradier_ts(acct.created_at),
        }
        return {"profile": {"account": account, "id": f"id-{acct.name}", "name": f"Sim Trader {acct.index}"}}

    async def balances(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        b = self.exchange.balances(acct)
        bp = float(b.buying_power.quantize(Decimal("0.01")))
        return {
            "balances": {
                "option_short_value": float(b.option_short_value),
                "total_equity": float(b.equity),
                "account_number": acct.tradier_account_id,
                "account_type": "margin",
                "close_pl": float(b.realized_pl),
                "current_requirement": float(b.reserved),
                "equity": 0,
                "long_market_value": float(b.long_market_value),
                "market_value": float(b.long_market_value + b.short_market_value),
                "open_pl": float(b.unrealized_pl),
                "option_long_value": float(b.option_long_value),
                "option_requirement": 0,
                "pending_orders_count": b.open_orders,
                "short_market_value": float(b.short_market_value),
                "stock_long_value": float(b.stock_long_value),
                "total_cash": float(b.cash),
                "uncleared_funds": 0,
                "pending_cash": 0,
                "margin": {
                    "fed_call": 0,
                    "maintenance_call": 0,
                    "option_buying_power": bp,
                    "stock_buying_power": bp,
                    "stock_short_value": float(b.stock_short_value),
                    "sweep": 0,
                },
            }
        }

    async def positions(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        self.exchange.expire_due()
        items = []
        for p in acct.positions.values():
            inst = self.market.instrument(p.symbol)
            mult = inst.multiplier if inst is not None else 1
            items.append(
                {
                    "cost_basis": float(p.qty * p.avg_entry * mult),
                    "date_acquired": tradier_ts(p.opened_at),
                    "id": p.tradier_id,
                    "quantity": float(p.qty),
                    "symbol": p.symbol,
                }
            )
        return {"positions": one_or_many(items, "position")}

    async def history(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        """``GET /v1/accounts/{id}/history``: option expiries, assignments and exercises as Tradier's
        clearing firm reports them: updated nightly (a day's records appear once that day is over in
        New York), no symbol, ``type`` ``option`` (the delivered shares: ``trade``), filtered by
        ``type``, ``start``/``end`` dates, paged by ``limit`` (default 25) and ``page`` (from 1),
        newest first; one record as an object, none as ``"null"``."""
        self.exchange.expire_due()
        q = request.query
        today = self.exchange.clock.now().astimezone(ET).date()
        try:
            start = dt.date.fromisoformat(q["start"]) if q.get("start") else None
            end = dt.date.fromisoformat(q["end"]) if q.get("end") else None
            limit, page = int(q.get("limit", "25")), int(q.get("page", "1"))
        except ValueError:
            raise TradierError(400, "Invalid parameter") from None
        wanted = {t.strip() for t in q.get("type", "").split(",") if t.strip()}
        events: list[dict[str, Any]] = []
        for a in sorted(acct.activities, key=lambda a: a.at, reverse=True):
            if a.date >= today or (start and a.date < start) or (end and a.date > end):
                continue
            kind = "trade" if a.activity_type == "OPTRD" else "option"
            if wanted and kind not in wanted:
                continue
            events.append(_history_json(a, kind))
        chunk = events[(page - 1) * limit : page * limit] if limit > 0 and page > 0 else []
        return {"history": one_or_many(chunk, "event")}

    # -- orders ------------------------------------------------------------------

    def _render(self, o: SimOrder, include_tags: bool) -> dict[str, Any]:
        hide = False
        if self.faults.tradier_late_fill_price and o.status == "filled" and o.tradier_hidden_reads > 0:
            o.tradier_hidden_reads -= 1
            hide = True
        return order_json(o, self.market, include_tags=include_tags, hide_fill=hide)

    async def list_orders(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        include_tags = request.query.get("includeTags", "false").lower() == "true"
        orders = acct.orders
        if "limit" in request.query:
            try:
                limit = int(request.query["limit"])
                page = int(request.query.get("page", "1"))
            except ValueError:
                raise TradierError(400, "limit and page must be integers") from None
            orders = orders[(page - 1) * limit : page * limit]
        return {"orders": one_or_many([self._render(o, include_tags) for o in orders], "order")}

    def _order_id(self, request: web.Request) -> int:
        raw = request.match_info["order_id"]
        if not raw.isdigit():
            raise TradierError(400, f"Invalid order id: {raw[:40]}")
        return int(raw)

    async def get_order(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        order = self.exchange.find_tradier_order(acct, self._order_id(request))
        include_tags = request.query.get("includeTags", "false").lower() == "true"
        return {"order": self._render(order, include_tags)}

    async def cancel_order(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        order = self.exchange.find_tradier_order(acct, self._order_id(request))
        try:
            self.exchange.cancel(order)
        except SimReject:
            raise TradierError(400, "Order is not in a cancelable state") from None
        return {"order": {"id": order.tradier_id, "status": "ok"}}

    async def modify_order(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        """``PUT .../orders/{id}`` (type, duration, price, stop): the same order, changed in place."""
        order = self.exchange.find_tradier_order(acct, self._order_id(request))
        form = await request.post()
        fields = {k: str(v) for k, v in form.items()}
        unknown = set(fields) - {"type", "duration", "price", "stop"}
        if unknown:
            raise TradierError(400, f"Invalid parameter(s): {', '.join(sorted(unknown))}")
        if "price" not in fields:
            raise TradierError(400, "A price is required to modify this order")
        try:
            price = Decimal(fields["price"])
        except ArithmeticError:
            raise TradierError(400, f"Invalid price: {fields['price'][:20]}") from None
        kind = fields.get("type")
        if order.is_multileg:
            kind = kind or order.tradier_type or _multileg_type(order)
            if kind not in ("debit", "credit"):
                raise TradierError(400, f"Invalid type for a multileg order: {kind}")
            price = -abs(price) if kind == "credit" else abs(price)
        elif kind not in (None, "limit"):
            raise TradierError(400, f"Invalid type: {kind}")
        try:
            self.exchange.modify(order, limit_price=price, tradier_type=kind if order.is_multileg else None)
        except SimReject as exc:
            if exc.kind == "not_replaceable":
                raise TradierError(400, "Order is not in a modifiable state") from None
            raise TradierError(400, exc.message) from None
        result = {"order": {"id": order.tradier_id, "status": "ok", "partner_id": acct.id}}
        self.exchange.after_submit(order)
        return result

    async def place_order(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        form = await request.post()
        fields = {k: str(v) for k, v in form.items()}
        try:
            spec = self.order_spec(acct, fields)
        except ValueError as exc:
            raise TradierError(400, str(exc)) from None
        if fields.get("preview", "").lower() == "true":
            return self._preview(acct, spec, fields)
        order = self.exchange.submit(acct, spec)
        result = {"order": {"id": order.tradier_id, "status": "ok", "partner_id": acct.id}}
        self.exchange.after_submit(order)
        return result

    def _preview(self, acct: SimAccount, spec: OrderSpec, fields: Mapping[str, str]) -> dict[str, Any]:
        cost = Decimal(0)
        for leg in spec.legs or (LegSpec(spec.symbol or "", spec.side or "buy"),):
            q = self.market.quote(leg.symbol)
            inst = self.market.instrument(leg.symbol)
            if q is None or inst is None:
                raise TradierError(400, f"Invalid symbol: {leg.symbol}")
            px = q.ask if leg.side == "buy" else q.bid
            cost += (1 if leg.side == "buy" else -1) * px * spec.qty * leg.ratio * inst.multiplier
        return {
            "order": {
                "status": "ok",
                "commission": 0.0,
                "cost": float(cost),
                "fees": 0.0,
                "symbol": fields.get("symbol", ""),
                "quantity": float(spec.qty),
                "type": fields.get("type", ""),
                "duration": fields.get("duration", "day"),
                "result": True,
                "order_cost": float(cost),
                "margin_change": 0.0,
                "request_date": tradier_ts(self.market.clock.now()),
                "extended_hours": False,
                "class": fields.get("class", ""),
                "strategy": "spread" if spec.legs else fields.get("class", ""),
                "day_trades": 0,
            }
        }

    def order_spec(self, acct: SimAccount, f: Mapping[str, str]) -> OrderSpec:
        """Tradier's form fields -> an ``OrderSpec``; ``ValueError`` says what is wrong."""
        cls = f.get("class", "")
        if cls not in ("equity", "option", "multileg"):
            raise ValueError(f"Invalid class: {cls or '(missing)'}; the simulator supports equity, option, multileg")
        symbol = f.get("symbol", "")
        if not symbol:
            raise ValueError("Missing symbol")
        duration = f.get("duration", "day")
        if duration not in ("day", "gtc"):
            raise ValueError(f"Invalid duration: {duration}; the simulator supports day and gtc")
        tag = f.get("tag")
        if tag is not None and not _TAG_RE.match(tag):
            raise ValueError("Invalid tag: at most 255 letters, digits and dashes")
        order_type = f.get("type", "")
        price = parse_decimal(f["price"], "price") if f.get("price") else None
        if cls == "multileg":
            return self._multileg(f, symbol, order_type, price, duration, tag)
        if order_type not in ("market", "limit"):
            raise ValueError(f"Invalid type: {order_type or '(missing)'}")
        if order_type == "limit" and price is None:
            raise ValueError("Missing price for a limit order")
        qty = parse_decimal(f.get("quantity"), "quantity")
        side_word = f.get("side", "")
        if cls == "equity":
            if side_word not in _EQUITY_SIDES:
                raise ValueError(f"Invalid side: {side_word or '(missing)'}")
            side, intent = _EQUITY_SIDES[side_word]
            self._check_equity_side(acct, symbol, side_word)
            instrument = symbol
        else:
            if side_word not in _OPTION_SIDES:
                raise ValueError(f"Invalid side: {side_word or '(missing)'}")
            side, intent = side_word.split("_", 1)[0], side_word
            instrument = f.get("option_symbol", "")
            if not instrument:
                raise ValueError("Missing option_symbol")
            self._check_underlying(instrument, symbol)
        return OrderSpec(
            qty=qty,
            type=order_type,
            time_in_force=duration,
            limit_price=price if order_type == "limit" else None,
            symbol=instrument,
            side=side,
            position_intent=intent,
            tag=tag,
            source="tradier",
        )

    def _check_underlying(self, option_symbol: str, symbol: str) -> None:
        inst = self.market.instrument(option_symbol)
        if inst is None:
            raise ValueError(f"Invalid option_symbol: {option_symbol}")
        if inst.underlying != symbol:
            raise ValueError(f"option_symbol {option_symbol} is not an option on {symbol}")

    def _check_equity_side(self, acct: SimAccount, symbol: str, side_word: str) -> None:
        pos = acct.positions.get(symbol)
        held = pos.qty if pos else Decimal(0)
        if side_word == "buy" and held < 0:
            raise ValueError(f"You have a short position in {symbol}: use buy_to_cover")
        if side_word == "sell_short" and held > 0:
            raise ValueError(f"You have a long position in {symbol}: use sell")
        if side_word == "buy_to_cover" and held >= 0:
            raise ValueError(f"You have no short position in {symbol} to cover")
        if side_word == "sell" and held <= 0:
            raise ValueError(f"You have no long position in {symbol}: use sell_short")

    def _multileg(
        self, f: Mapping[str, str], symbol: str, order_type: str, price: Decimal | None, duration: str, tag: str | None
    ) -> OrderSpec:
        if order_type not in ("market", "debit", "credit", "even"):
            raise ValueError(f"Invalid type for a multileg order: {order_type or '(missing)'}")
        if order_type in ("debit", "credit") and price is None:
            raise ValueError(f"Missing price for a {order_type} order")
        legs_raw: dict[int, dict[str, str]] = {}
        for key, value in f.items():
            m = _LEG_KEY.match(key)
            if m:
                legs_raw.setdefault(int(m.group(2)), {})[m.group(1)] = value
        if len(legs_raw) < 2:
            raise ValueError("A multileg order needs option_symbol[i], side[i] and quantity[i] for 2 to 4 legs")
        parsed: list[tuple[str, str, int]] = []
        for i in sorted(legs_raw):
            leg = legs_raw[i]
            if not {"option_symbol", "side", "quantity"} <= leg.keys():
                raise ValueError(f"Leg {i} needs option_symbol[{i}], side[{i}] and quantity[{i}]")
            if leg["side"] not in _OPTION_SIDES:
                raise ValueError(f"Invalid side[{i}]: {leg['side']}")
            q = parse_decimal(leg["quantity"], f"quantity[{i}]")
            if q <= 0 or q != q.to_integral_value():
                raise ValueError(f"quantity[{i}] must be a positive whole number")
            self._check_underlying(leg["option_symbol"], symbol)
            parsed.append((leg["option_symbol"], leg["side"], int(q)))
        unit = math.gcd(*(q for _, _, q in parsed))
        legs = tuple(LegSpec(sym, side.split("_", 1)[0], q // unit, side) for sym, side, q in parsed)
        limit: Decimal | None
        if order_type == "market":
            limit = None
        elif order_type == "even":
            limit = Decimal(0)
        else:
            assert price is not None
            limit = price if order_type == "debit" else -price
        return OrderSpec(
            qty=Decimal(unit),
            type="market" if order_type == "market" else "limit",
            time_in_force=duration,
            limit_price=limit,
            legs=legs,
            tag=tag,
            source="tradier",
            tradier_type=order_type,
        )

    # -- markets -----------------------------------------------------------------

    async def quotes(self, request: web.Request, acct: SimAccount) -> web.Response:
        """``GET``/``POST /v1/markets/quotes``: the body built once per market version and symbol list."""
        params: Mapping[str, str] = request.query
        if request.method == "POST":
            form = await request.post()
            params = {**request.query, **{k: str(v) for k, v in form.items()}}
        symbols = [s.strip() for s in params.get("symbols", "").split(",") if s.strip()]
        if not symbols:
            raise TradierError(400, "Missing symbols")
        greeks = params.get("greeks", "false").lower() == "true"
        key = (",".join(symbols), greeks)
        body = self._quote_bodies.get(self.market.version, key, lambda: self._quotes(symbols, greeks))
        return web.Response(body=body, content_type="application/json")

    def _quotes(self, symbols: list[str], greeks: bool) -> dict[str, Any]:
        found, unmatched = [], []
        for s in dict.fromkeys(symbols):
            inst = self.market.instrument(s)
            q = self.market.quote(s) if inst is not None else None
            if inst is None or q is None:
                unmatched.append(s)
            else:
                found.append(_quote_json(inst, q, greeks))
        body: dict[str, Any] = {}
        if found:
            body["quote"] = found[0] if len(found) == 1 else found
        if unmatched:
            body["unmatched_symbols"] = {"symbol": unmatched[0] if len(unmatched) == 1 else unmatched}
        return {"quotes": body}

    async def calendar(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        """``GET /v1/markets/calendar?month=MM&year=YYYY`` (default: this month), in Tradier's shape:
        ``{"calendar": {"month", "year", "days": {"day": [...]}}}``; a trading day has ``premarket``,
        ``open`` and ``postmarket`` sessions (``start``/``end`` as ``HH:MM`` ET), a closed day only
        ``status`` and ``description``. The simulator trades every weekday 09:30-16:00, no holidays."""
        today = self.market.clock.now().astimezone(ET).date()
        try:
            year = int(request.query.get("year", today.year))
            month = int(request.query.get("month", today.month))
            first = dt.date(year, month, 1)
        except ValueError:
            raise TradierError(400, "Invalid Parameter: month/year", plain=True) from None
        days: list[dict[str, Any]] = []
        day = first
        while day.month == first.month:
            if day.weekday() < 5:
                days.append(
                    {
                        "date": day.isoformat(),
                        "status": "open",
                        "description": "Market is open",
                        "premarket": {"start": "04:00", "end": "09:24"},
                        "open": {"start": "09:30", "end": "16:00"},
                        "postmarket": {"start": "16:00", "end": "20:00"},
                    }
                )
            else:
                days.append({"date": day.isoformat(), "status": "closed", "description": "Market is closed"})
            day += dt.timedelta(days=1)
        return {"calendar": {"month": month, "year": year, "days": {"day": days}}}

    async def clock(self, request: web.Request, acct: SimAccount) -> dict[str, Any]:
        now, next_open, next_close = self.market.clock_times()
        local = now.astimezone(ET)
        if self.market.is_open:
            state, next_state, change = "open", "postmarket", next_close
        else:
            state, next_state, change = "closed", "premarket", next_open - dt.timedelta(hours=5, minutes=30)
        return {
            "clock": {
                "date": local.date().isoformat(),
                "description": f"Market is {state} (simulated)",
                "state": state,
                "timestamp": int(now.timestamp()),
                "next_change": change.astimezone(ET).strftime("%H:%M"),
                "next_state": next_state,
            }
        }
