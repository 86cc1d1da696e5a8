"""Each simulated account's initial book: cash and a deterministic mix of positions.

The book of account ``i`` depends only on the seed, ``i`` and the number of
positions (never on when it is first built): prices come from the market's start
values. With 4 or more positions it always holds one bull call debit spread (a long
call and a short call one to three strikes higher, same expiry and quantity);
the rest are long and short stocks and long and short single options.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from decimal import Decimal

from syncd.sim.engine import SimAccount, SimPosition
from syncd.sim.market import CENT, STOCKS, Market, occ_symbol

_UNIVERSE = tuple(t for t, _, _ in STOCKS)
_MIN_OPTION_PRICE = Decimal("0.05")


def make_builder(market: Market, seed: int, positions: int) -> Callable[[SimAccount], None]:
    """The function that builds an account's book on its first use."""

    def build(acct: SimAccount) -> None:
        rng = random.Random(f"{seed}:book:{acct.index}")
        book = _positions(market, rng, positions)
        cash = Decimal(rng.randrange(100_000, 500_000)) + _collateral(market, book)
        acct.init_book(cash, book)
        acct.next_position_id = len(book) + 1

    return build


def _option(market: Market, rng: random.Random, underlying: str, kind: str, steps: int, exp: dt.date) -> str:
    base = market.base_price(underlying)
    step = market.strike_step(base)
    atm = (Decimal(f"{base:.2f}") / step).to_integral_value() * step
    strike = max(step, atm + steps * step)
    return occ_symbol(underlying, exp, kind, strike)


def _entry(market: Market, rng: random.Random, symbol: str) -> Decimal:
    ref = market.reference_price(symbol)
    price = (ref * Decimal(f"{rng.uniform(0.85, 1.15):.4f}")).quantize(CENT)
    inst = market.instrument(symbol)
    floor = _MIN_OPTION_PRICE if inst is not None and inst.is_option else CENT
    return max(price, floor)


def _positions(market: Market, rng: random.Random, n: int) -> list[SimPosition]:
    start = market.clock.start
    expirations = market.expirations()
    out: list[SimPosition] = []
    used: set[str] = set()

    def add(symbol: str, qty: int) -> None:
        opened = start - dt.timedelta(days=rng.randrange(1, 60), seconds=rng.randrange(86_400))
        out.append(SimPosition(symbol, Decimal(qty), _entry(market, rng, symbol), opened, len(out) + 1))
        used.add(symbol)

    if n >= 4:
        underlying = rng.choice(_UNIVERSE)
        exp = rng.choice(expirations[2:])
        low = rng.randint(-2, 1)
        width = rng.randint(1, 3)
        qty = rng.randint(1, 20)
        add(_option(market, rng, underlying, "call", low, exp), qty)
        add(_option(market, rng, underlying, "call", low + width, exp), -qty)
    attempts = 0
    while len(out) < n and attempts < n * 50:
        attempts += 1
        if rng.random() < 0.4:
            symbol = rng.choice(_UNIVERSE)
            qty = rng.randint(1, 500) if rng.random() < 0.9 else -rng.randint(1, 200)
        else:
            kind = rng.choice(("call", "put"))
            symbol = _option(market, rng, rng.choice(_UNIVERSE), kind, rng.randint(-4, 4), rng.choice(expirations))
            qty = rng.randint(1, 30) if rng.random() < 0.85 else -rng.randint(1, 5)
        if symbol not in used:
            add(symbol, qty)
    return out


def _collateral(market: Market, book: list[SimPosition]) -> Decimal:
    """Cash that keeps buying power positive whatever shorts the book holds."""
    need = Decimal(0)
    for pos in book:
        if pos.qty >= 0:
            continue
        inst = market.instrument(pos.symbol)
        assert inst is not None
        if inst.is_option:
            assert inst.strike is not None
            need += inst.strike * 100 * -pos.qty
        else:
            need += market.reference_price(pos.symbol) * -pos.qty * 2
    return need
