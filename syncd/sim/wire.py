"""Small formatting helpers shared by the simulator's wire dialects."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable
from decimal import Decimal
from typing import Any

import msgspec
from aiohttp import web

from syncd.brokers.parse import NotFinite, finite

CENT = Decimal("0.01")


def dstr(x: Decimal | None) -> str | None:
    """A decimal as Alpaca writes it: a plain string, no exponent, no trailing zeros."""
    if x is None:
        return None
    s = str(x)  # plain unless the exponent is positive or the number tiny
    if "E" in s:
        return "0" if x == 0 else format(x.normalize(), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def money(x: Decimal) -> str:
    """Dollars, to the cent (``"1502.50"``)."""
    return f"{x:.2f}"


def ratio(num: Decimal, den: Decimal) -> str:
    """``num / den`` (e.g. an unrealized P&L percent as a fraction), 0 when ``den`` is 0."""
    if den == 0:
        return "0"
    return f"{num / den:.10f}"


def ts(t: dt.datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, as Alpaca's trading API writes timestamps."""
    if t is None:
        return None
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def tradier_ts(t: dt.datetime) -> str:
    """``2018-06-06T20:16:17.342Z``: milliseconds and a ``Z``, as Tradier writes them."""
    t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def epoch_ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


_ENCODER = msgspec.json.Encoder()


def json_body(data: Any) -> bytes:
    """``data`` as compact JSON (UTF-8; encoded in C: the simulator serves thousands of positions
    a pass, and its CPU shares the machine with what it is measured against)."""
    return _ENCODER.encode(data)


class BodiesByVersion:
    """Encoded answers kept for one market version: a quote is the market's for that version
    (``Market.quote`` keeps it so), so is a body made of quotes alone. Kept up to ``limit`` per
    version (beyond: built for each request); a new version forgets them all."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._version = -1
        self._bodies: dict[Hashable, bytes] = {}

    def get(self, version: int, key: Hashable, build: Callable[[], Any]) -> bytes:
        """The body for ``key`` at ``version``: ``build()`` encoded once."""
        if version != self._version:
            self._bodies.clear()
            self._version = version
        body = self._bodies.get(key)
        if body is None:
            body = json_body(build())
            if len(self._bodies) < self.limit:
                self._bodies[key] = body
        return body


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json_body(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def parse_decimal(value: object, field: str) -> Decimal:
    """A number or numeric string -> Decimal; ``ValueError`` naming the field otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{field} must be a number")
    if isinstance(value, (int, float, str)):
        try:
            d = Decimal(str(value).strip())
        except ArithmeticError:
            raise ValueError(f"{field} must be a number, got {str(value)[:40]!r}") from None
        try:
            return finite(d)
        except NotFinite:
            raise ValueError(f"{field} must be a finite number") from None
    raise ValueError(f"{field} must be a number")


def parse_time(value: str, field: str) -> dt.datetime:
    """RFC 3339 (or a date) -> aware datetime; ``ValueError`` naming the field otherwise."""
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{field}: not an RFC 3339 timestamp: {value[:40]!r}") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


HTML_ERROR = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def html_error(status: int) -> web.Response:
    from http import HTTPStatus

    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return web.Response(text=HTML_ERROR.format(status=status, reason=reason), status=status, content_type="text/html")
