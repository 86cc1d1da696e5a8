"""The simulator's seeded market: a clock, stocks, options on them, and their quotes.

Stocks random-walk (geometric, per simulated second) on every ``tick``; options are
priced from their underlying with Black-Scholes (a mild volatility smile, r = 4 %),
which also gives their greeks. Quotes are mid +/- a half-spread, rounded to the cent.
A price set by hand (``set_price``) is pinned: it no longer walks until ``unpin``.
Everything random comes from ``random.Random`` seeded by the config's seed.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
import time
import uuid
import zlib
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from zoneinfo import ZoneInfo

from syncd.sim.config import ClockMode

ET = ZoneInfo("America/New_York")
UTC = dt.UTC
RISK_FREE = 0.04
_YEAR_S = 365.0 * 86_400.0
_TRADING_YEAR_S = 252.0 * 6.5 * 3_600.0
_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
CENT = Decimal("0.01")
_ASSET_NS = uuid.UUID("6f1d5c1e-3a55-4d8e-9a51-5e0c2b7f1d00")

# (ticker, name, reference price): the universe the books are drawn from.
STOCKS: tuple[tuple[str, str, float], ...] = (
    ("AAPL", "Apple Inc.", 190.0),
    ("MSFT", "Microsoft Corporation", 410.0),
    ("NVDA", "NVIDIA Corporation", 120.0),
    ("AMZN", "Amazon.com Inc.", 180.0),
    ("GOOGL", "Alphabet Inc. Class A", 165.0),
    ("META", "Meta Platforms Inc.", 480.0),
    ("TSLA", "Tesla Inc.", 240.0),
    ("AMD", "Advanced Micro Devices Inc.", 155.0),
    ("NFLX", "Netflix Inc.", 640.0),
    ("INTC", "Intel Corporation", 31.0),
    ("CSCO", "Cisco Systems Inc.", 48.0),
    ("ORCL", "Oracle Corporation", 125.0),
    ("CRM", "Salesforce Inc.", 270.0),
    ("ADBE", "Adobe Inc.", 520.0),
    ("QCOM", "Qualcomm Inc.", 170.0),
    ("AVGO", "Broadcom Inc.", 160.0),
    ("TXN", "Texas Instruments Inc.", 195.0),
    ("IBM", "International Business Machines", 185.0),
    ("MU", "Micron Technology Inc.", 110.0),
    ("PYPL", "PayPal Holdings Inc.", 65.0),
    ("UBER", "Uber Technologies Inc.", 70.0),
    ("SHOP", "Shopify Inc.", 75.0),
    ("SQ", "Block Inc.", 68.0),
    ("PLTR", "Palantir Technologies Inc.", 25.0),
    ("SNAP", "Snap Inc.", 12.0),
    ("F", "Ford Motor Company", 12.5),
    ("GM", "General Motors Company", 46.0),
    ("T", "AT&T Inc.", 17.5),
    ("VZ", "Verizon Communications Inc.", 40.0),
    ("KO", "The Coca-Cola Company", 62.0),
    ("PEP", "PepsiCo Inc.", 170.0),
    ("WMT", "Walmart Inc.", 68.0),
    ("COST", "Costco Wholesale Corporation", 800.0),
    ("HD", "The Home Depot Inc.", 350.0),
    ("MCD", "McDonald's Corporation", 260.0),
    ("NKE", "Nike Inc.", 90.0),
    ("DIS", "The Walt Disney Company", 100.0),
    ("JPM", "JPMorgan Chase & Co.", 200.0),
    ("BAC", "Bank of America Corporation", 39.0),
    ("WFC", "Wells Fargo & Company", 58.0),
    ("GS", "The Goldman Sachs Group Inc.", 460.0),
    ("MS", "Morgan Stanley", 98.0),
    ("C", "Citigroup Inc.", 62.0),
    ("V", "Visa Inc.", 275.0),
    ("MA", "Mastercard Inc.", 455.0),
    ("XOM", "Exxon Mobil Corporation", 115.0),
    ("CVX", "Chevron Corporation", 155.0),
    ("PFE", "Pfizer Inc.", 28.0),
    ("MRK", "Merck & Co. Inc.", 128.0),
    ("JNJ", "Johnson & Johnson", 150.0),
    ("UNH", "UnitedHealth Group Inc.", 500.0),
    ("LLY", "Eli Lilly and Company", 780.0),
    ("ABBV", "AbbVie Inc.", 165.0),
    ("BA", "The Boeing Company", 180.0),
    ("CAT", "Caterpillar Inc.", 340.0),
    ("GE", "General Electric Company", 160.0),
    ("SPY", "SPDR S&P 500 ETF Trust", 520.0),
    ("QQQ", "Invesco QQQ Trust", 440.0),
    ("IWM", "iShares Russell 2000 ETF", 205.0),
    ("DIA", "SPDR Dow Jones Industrial Average ETF", 390.0),
    ("XLF", "Financial Select Sector SPDR Fund", 41.0),
    ("GLD", "SPDR Gold Shares", 215.0),
    ("TLT", "iShares 20+ Year Treasury Bond ETF", 92.0),
    ("SOFI", "SoFi Technologies Inc.", 7.5),
)

_OCC_RE = re.compile(r"^([A-Z]{1,6})(\d{2})(\d{2})(\d{2})([CP])(\d{8})$")


def occ_symbol(underlying: str, expiration: dt.date, option_type: str, strike: Decimal) -> str:
    """``AAPL`` 2026-01-16 call 150 -> ``AAPL260116C00150000``."""
    cp = "C" if option_type == "call" else "P"
    return f"{underlying}{expiration:%y%m%d}{cp}{int(strike * 1000):08d}"


def parse_occ(symbol: str) -> tuple[str, dt.date, str, Decimal] | None:
    """``(underlying, expiration, "call"|"put", strike)``, or None when not an OCC symbol."""
    m = _OCC_RE.match(symbol)
    if m is None:
        return None
    root, yy, mm, dd, cp, strike = m.groups()
    try:
        expiration = dt.date(2000 + int(yy), int(mm), int(dd))
    except ValueError:
        return None
    return root, expiration, "call" if cp == "C" else "put", Decimal(int(strike)) / 1000


def asset_id(symbol: str) -> str:
    """A stable uuid per symbol (Alpaca's ``asset_id``)."""
    return str(uuid.uuid5(_ASSET_NS, symbol))


def to_cents(x: float) -> Decimal:
    return Decimal(f"{x:.2f}")


class SimClock:
    """The simulator's time: the wall clock (plus an offset) or a manual clock.

    ``stamp()`` gives strictly increasing timestamps, so orders and events created
    within one tick of a manual clock still sort in the order they happened.
    """

    def __init__(self, mode: ClockMode, start: dt.datetime | None) -> None:
        self.mode = mode
        self._start = (start or dt.datetime.now(UTC)).astimezone(UTC)
        self._wall0 = time.monotonic()
        self._offset = 0.0
        self._last = dt.datetime.min.replace(tzinfo=UTC)

    @property
    def start(self) -> dt.datetime:
        return self._start

    def now(self) -> dt.datetime:
        elapsed = self._offset
        if self.mode == "wall":
            elapsed += time.monotonic() - self._wall0
        return self._start + dt.timedelta(seconds=elapsed)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock cannot go back")
        self._offset += seconds

    def stamp(self) -> dt.datetime:
        t = self.now()
        if t <= self._last:
            t = self._last + dt.timedelta(microseconds=1)
        self._last = t
        return t


def _next_weekday_at(t: dt.datetime, hour: int, minute: int) -> dt.datetime:
    """The first weekday ``hour:minute`` ET strictly after ``t``."""
    local = t.astimezone(ET)
    candidate = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate <= local:
        candidate += dt.timedelta(days=1)
    while candidate.weekday() >= 5:
        candidate += dt.timedelta(days=1)
    return candidate


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    asset_class: str  # us_equity | us_option
    underlying: str
    name: str
    exchange: str  # "" for options, as Alpaca sends it
    asset_id: str
    multiplier: int = 1
    option_type: str | None = None  # call | put
    strike: Decimal | None = None
    expiration: dt.date | None = None

    @property
    def is_option(self) -> bool:
        return self.asset_class == "us_option"


@dataclass(frozen=True, slots=True)
class SimGreeks:
    delta: float
    gamma: float
    theta: float  # per calendar day
    vega: float  # per 1 vol point
    rho: float  # per 1 rate point
    iv: float


@dataclass(frozen=True, slots=True)
class SimQuote:
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    bid_size: int
    ask_size: int
    at: dt.datetime
    prev_close: Decimal
    open: Decimal
    high: Decimal
    low: Decimal
    volume: int
    greeks: SimGreeks | None = None
    mid: Decimal = field(init=False)  # (bid + ask) / 2, or the last price without a two-sided quote

    def __post_init__(self) -> None:
        mid = (self.bid + self.ask) / 2 if self.bid > 0 and self.ask > 0 else self.last
        object.__setattr__(self, "mid", mid)


def black_scholes(
    spot: float, strike: float, years: float, vol: float, is_call: bool, rate: float = RISK_FREE
) -> tuple[float, SimGreeks]:
    """Theoretical price and greeks; at or after expiry, intrinsic value."""
    if years <= 0 or vol <= 0 or spot <= 0:
        intrinsic = max(0.0, spot - strike) if is_call else max(0.0, strike - spot)
        itm = intrinsic > 0
        delta = (1.0 if is_call else -1.0) if itm else 0.0
        return intrinsic, SimGreeks(delta, 0.0, 0.0, 0.0, 0.0, vol)
    sq = math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * years) / (vol * sq)
    d2 = d1 - vol * sq
    nd1 = 0.5 * (1.0 + math.erf(d1 / _SQRT2))
    nd2 = 0.5 * (1.0 + math.erf(d2 / _SQRT2))
    pdf = math.exp(-0.5 * d1 * d1) / _SQRT2PI
    disc = math.exp(-rate * years)
    if is_call:
        price = spot * nd1 - strike * disc * nd2
        delta = nd1
        theta = -spot * pdf * vol / (2 * sq) - rate * strike * disc * nd2
        rho = strike * years * disc * nd2
    else:
        price = strike * disc * (1.0 - nd2) - spot * (1.0 - nd1)
        delta = nd1 - 1.0
        theta = -spot * pdf * vol / (2 * sq) + rate * strike * disc * (1.0 - nd2)
        rho = -strike * years * disc * (1.0 - nd2)
    gamma = pdf / (spot * vol * sq)
    vega = spot * pdf * sq
    return max(price, 0.0), SimGreeks(delta, gamma, theta / 365.0, vega / 100.0, rho / 100.0, vol)


@dataclass(slots=True)
class _Stock:
    symbol: str
    name: str
    price: float  # mid
    vol: float  # annualised
    spread_bps: float
    prev_close: float
    open: float
    high: float
    low: float
    volume: int
    base: float  # the price at start: books are priced from it, whenever they are built


class Market:
    """Prices, instruments and the open/closed state; see the module docstring."""

    def __init__(self, seed: int, clock: SimClock, *, market_open: bool = True, volatility_scale: float = 1.0):
        self.clock = clock
        self.is_open = market_open
        self.version = 0  # bumps whenever any price may have changed
        self._vol_scale = volatility_scale
        self._walk = random.Random(f"{seed}:walk")
        rng = random.Random(f"{seed}:market")
        self._stocks: dict[str, _Stock] = {}
        for ticker, name, ref in STOCKS:
            self._add_stock(ticker, name, ref * rng.uniform(0.8, 1.2), rng)
        self._pinned: dict[str, tuple[Decimal, Decimal]] = {}
        self._instruments: dict[str, Instrument | None] = {}
        self._cache: dict[str, SimQuote | None] = {}
        self._cache_version = -1

    def _add_stock(self, ticker: str, name: str, price: float, rng: random.Random) -> _Stock:
        price = round(max(price, 1.0), 2)
        prev = round(price * rng.uniform(0.98, 1.02), 2)
        stock = _Stock(
            symbol=ticker,
            name=name,
            price=price,
            vol=rng.uniform(0.18, 0.65),
            spread_bps=rng.uniform(1.0, 6.0),
            prev_close=prev,
            open=price,
            high=price,
            low=price,
            volume=rng.randrange(100_000, 5_000_000),
            base=price,
        )
        self._stocks[ticker] = stock
        return stock

    # -- instruments ---------------------------------------------------------------

    def instrument(self, symbol: str) -> Instrument | None:
        """The instrument for a stock of the universe or an OCC option on one; else None."""
        try:
            return self._instruments[symbol]
        except KeyError:
            pass
        inst: Instrument | None = None
        stock = self._stocks.get(symbol)
        if stock is not None:
            inst = Instrument(symbol, "us_equity", symbol, stock.name, "NASDAQ", asset_id(symbol))
        else:
            parsed = parse_occ(symbol)
            if parsed is not None and parsed[0] in self._stocks and parsed[3] > 0:
                root, expiration, option_type, strike = parsed
                name = f"{root} {expiration:%b %d %Y} {strike.normalize():f} {option_type.title()}"
                inst = Instrument(
                    symbol, "us_option", root, name, "", asset_id(symbol), 100, option_type, strike, expiration
                )
        self._instruments[symbol] = inst
        return inst

    def add_stock(self, symbol: str, price: float, name: str | None = None) -> Instrument:
        """Add a stock outside the universe (its options become quotable too)."""
        if symbol not in self._stocks:
            self._add_stock(symbol, name or f"{symbol} Inc.", price, random.Random(f"add:{symbol}"))
            self._instruments.pop(symbol, None)
            self._instruments = {k: v for k, v in self._instruments.items() if v is not None}
            self.version += 1
        inst = self.instrument(symbol)
        assert inst is not None
        return inst

    # -- prices --------------------------------------------------------------------

    def tick(self, sim_seconds: float) -> None:
        """One random-walk step of every unpinned stock over ``sim_seconds``."""
        scale = math.sqrt(sim_seconds / _TRADING_YEAR_S) * self._vol_scale
        gauss = self._walk.gauss
        for stock in self._stocks.values():
            z = gauss(0.0, 1.0)  # drawn for every stock, pinned or not: keeps runs comparable
            if stock.symbol in self._pinned or scale == 0:
                continue
            stock.price = max(0.5, stock.price * math.exp(stock.vol * scale * z))
            stock.high = max(stock.high, stock.price)
            stock.low = min(stock.low, stock.price)
            stock.volume += int(abs(z) * 500)
        self.version += 1

    def set_price(self, symbol: str, bid: Decimal | float | str, ask: Decimal | float | str) -> None:
        """Pin ``symbol``'s quote to ``bid``/``ask`` (a stock also moves its options)."""
        b, a = Decimal(str(bid)), Decimal(str(ask))
        if b < 0 or a < 0 or (a > 0 and b > a):
            raise ValueError(f"bad quote for {symbol}: bid {b} ask {a}")
        inst = self.instrument(symbol)
        if inst is None:
            if parse_occ(symbol) is not None:
                raise ValueError(f"{symbol}: no such underlying in the simulated market")
            inst = self.add_stock(symbol, float((a + b) / 2) or 1.0)
        if not inst.is_option:
            stock = self._stocks[symbol]
            stock.price = float((a + b) / 2) if a > 0 else float(b)
            stock.high = max(stock.high, stock.price)
            stock.low = min(stock.low, stock.price)
        self._pinned[symbol] = (b, a)
        self.version += 1

    def unpin(self, symbol: str) -> None:
        """Let a pinned symbol's price walk (or be modelled) again."""
        if self._pinned.pop(symbol, None) is not None:
            self.version += 1

    def quote(self, symbol: str) -> SimQuote | None:
        """The current quote, or None for a symbol the market does not know."""
        if self._cache_version != self.version:
            self._cache.clear()
            self._cache_version = self.version
        try:
            return self._cache[symbol]
        except KeyError:
            pass
        inst = self.instrument(symbol)
        q = None if inst is None else self._compute_quote(inst, self.clock.now())
        self._cache[symbol] = q
        return q

    def reference_price(self, symbol: str) -> Decimal:
        """The price at start (an option's model value at that day's open): books are built
        from it, so a seed gives the same book all day, whenever it is built."""
        inst = self.instrument(symbol)
        if inst is None:
            raise KeyError(symbol)
        stock = self._stocks[inst.underlying]
        if not inst.is_option:
            return to_cents(stock.base)
        session = dt.datetime.combine(self.clock.start.astimezone(ET).date(), dt.time(9, 30), ET)
        theo, _ = self._theo(inst, stock.base, session)
        return to_cents(theo)

    def spot(self, underlying: str) -> float:
        return self._stocks[underlying].price

    def _theo(self, inst: Instrument, spot: float, now: dt.datetime) -> tuple[float, SimGreeks]:
        assert inst.strike is not None and inst.expiration is not None
        stock = self._stocks[inst.underlying]
        strike = float(inst.strike)
        expires = dt.datetime.combine(inst.expiration, dt.time(16, 0), ET)
        years = (expires - now).total_seconds() / _YEAR_S
        moneyness = math.log(strike / spot) if spot > 0 else 0.0
        vol = stock.vol * (1.0 + 0.8 * moneyness * moneyness)
        return black_scholes(spot, strike, years, vol, inst.option_type == "call")

    def _compute_quote(self, inst: Instrument, now: dt.datetime) -> SimQuote:
        stock = self._stocks[inst.underlying]
        h = zlib.crc32(f"{inst.symbol}:{self.version}".encode())
        greeks: SimGreeks | None = None
        if inst.is_option:
            theo, greeks = self._theo(inst, stock.price, now)
            half = max(0.01, theo * 0.02)
            bid = Decimal(f"{max(theo - half, 0.0):.4f}").quantize(CENT, ROUND_FLOOR)
            ask = Decimal(f"{theo + half:.4f}").quantize(CENT, ROUND_CEILING)
            prev = to_cents(self._theo(inst, stock.prev_close, now)[0])
            bid_size, ask_size = 1 + h % 50, 1 + (h >> 8) % 50
            volume = (h >> 16) % 2_000
        else:
            half = max(0.005, stock.price * stock.spread_bps / 20_000)
            bid = to_cents(stock.price - half)
            ask = max(to_cents(stock.price + half), bid + CENT)
            prev = to_cents(stock.prev_close)
            bid_size, ask_size = 1 + h % 9, 1 + (h >> 8) % 9
            volume = stock.volume
        pinned = self._pinned.get(inst.symbol)
        if pinned is not None:
            bid, ask = pinned
        last = ((bid + ask) / 2).quantize(CENT) if bid > 0 and ask > 0 else max(bid, ask)
        if inst.is_option:
            o = hi = lo = last
        else:
            o, hi, lo = to_cents(stock.open), to_cents(stock.high), to_cents(stock.low)
            hi, lo = max(hi, last), min(lo, last)
        return SimQuote(inst.symbol, bid, ask, last, bid_size, ask_size, now, prev, o, hi, lo, volume, greeks)

    # -- what books are drawn from -----------------------------------------------

    def expirations(self) -> list[dt.date]:
        """Option expirations from the start date: the next eight Fridays and six monthlies."""
        start = self.clock.start.astimezone(ET).date()
        days_to_friday = (4 - start.weekday()) % 7 or 7
        fridays = [start + dt.timedelta(days=days_to_friday + 7 * k) for k in range(8)]
        monthlies = []
        year, month = start.year, start.month
        for _ in range(6):
            month += 1
            if month > 12:
                year, month = year + 1, 1
            first = dt.date(year, month, 1)
            monthlies.append(first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14))
        return sorted(set(fridays + monthlies))

    @staticmethod
    def strike_step(price: float) -> Decimal:
        if price < 25:
            return Decimal("0.5")
        if price < 100:
            return Decimal("1")
        if price < 250:
            return Decimal("5")
        return Decimal("10")

    def base_price(self, underlying: str) -> float:
        return self._stocks[underlying].base

    def clock_times(self) -> tuple[dt.datetime, dt.datetime, dt.datetime]:
        """``(now, next_open, next_close)``, consistent with ``is_open``."""
        now = self.clock.now()
        if self.is_open:
            next_close = _next_weekday_at(now, 16, 0)
            next_open = _next_weekday_at(next_close, 9, 30)
        else:
            next_open = _next_weekday_at(now, 9, 30)
            next_close = next_open.replace(hour=16, minute=0)
        return now, next_open, next_close
