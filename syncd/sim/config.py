"""The simulator's start-up configuration (what does not change while it runs)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

ClockMode = Literal["wall", "manual"]
StreamConflict = Literal["reject", "replace"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How to build and run one simulator.

    ``seed`` fixes everything random: the market's prices and their walk, every
    account's credentials and initial book, order and execution ids. Two simulators
    with the same config that receive the same calls answer identically (with
    ``clock="manual"`` and a fixed ``start_time`` even the timestamps match).
    """

    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (read it back from ``sim.url``)
    accounts: int = 2
    positions_per_account: int = 5
    # Background price ticker: one ``tick()`` every ``tick_s`` wall seconds; None = only
    # explicit ``tick()``/``advance()`` move the market (what tests want).
    tick_s: float | None = None
    # Simulated seconds one tick represents (the clock and the random walk move by it).
    tick_sim_s: float = 1.0
    # "wall": the sim clock follows the wall clock (plus whatever ``advance`` added);
    # "manual": it only moves on ``tick``/``advance`` (fully reproducible timestamps).
    clock: ClockMode = "wall"
    start_time: dt.datetime | None = None  # default: now (UTC)
    market_open: bool = True
    # Orders are matched right after they are accepted (the HTTP answer still shows the
    # order as accepted, as a broker's does). False: only ``tick()``/``fill()`` fill them.
    fill_on_submit: bool = True
    # Market orders (and crossed limits) fill in ``partial_fill_steps`` slices, one per
    # matching pass (the first at submission, then one per tick).
    partial_fills: bool = False
    partial_fill_steps: int = 3
    volatility_scale: float = 1.0  # multiplies every stock's random-walk volatility
    # A second trade_updates connection for an account that already has one:
    # "reject" (its auth fails with "connection limit exceeded", as Alpaca's streams do)
    # or "replace" (the old connection is closed and the new one takes over).
    stream_conflict: StreamConflict = "reject"
    # Tradier's account events stream sends a heartbeat this often (Tradier: once a minute).
    tradier_heartbeat_s: float = 60.0

    def __post_init__(self) -> None:
        if self.accounts < 0:
            raise ValueError("accounts must be >= 0")
        if self.positions_per_account < 0:
            raise ValueError("positions_per_account must be >= 0")
        if not 0 <= self.port <= 65_535:
            raise ValueError("port must be 0-65535")
        if self.tick_s is not None and self.tick_s <= 0:
            raise ValueError("tick_s must be > 0 (or None for no background ticker)")
        if self.tick_sim_s <= 0:
            raise ValueError("tick_sim_s must be > 0")
        if self.tradier_heartbeat_s <= 0:
            raise ValueError("tradier_heartbeat_s must be > 0")
        if self.partial_fill_steps < 1:
            raise ValueError("partial_fill_steps must be >= 1")
        if self.volatility_scale < 0:
            raise ValueError("volatility_scale must be >= 0")
        if self.start_time is not None and self.start_time.tzinfo is None:
            raise ValueError("start_time must be timezone-aware")
