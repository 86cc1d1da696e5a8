"""Exits on live quotes: one quote watcher per held account whose broker has a market-data stream.

While a trade with an exit rule (take-profit or stop-loss) is open, the watcher subscribes to
live quotes for its legs (Alpaca: :mod:`syncd.brokers.alpaca_data_stream`, stocks as JSON,
options as msgpack) and:

1. **judges at once**: each quote replaces its leg's bid/ask in the trades kept in memory, and
   :func:`syncd.cycles.monitor_cycle.plan_trades` (the monitorCycle's own judgement, one code
   path) says whether an exit fires;
2. when one fires, **flushes now**: :func:`syncd.cycles.monitor_cycle.judge_quotes` writes the
   latest quotes, re-reads and re-judges every trade from the database in one transaction and
   queues the ``close`` request with the same guards as a monitorCycle pass (two-sided quotes
   for every leg, available quantity, one exit per trade: ``monitor_queue_exits``), and the
   outbox is drained at once (:func:`syncd.trading.outbox.drain_outbox`, one drainer per
   account), so the close order is placed within the same second, not at the next tradeCycle;
3. otherwise **coalesces**: only the latest quote per symbol is kept and written at most every
   ``quote_flush_interval_s``, so a busy symbol cannot flood the database.

The subscription follows the set of open trades (re-read at every flush and at least every
``SYMBOLS_REFRESH_S``): symbols no trade needs are dropped; beyond ``quote_symbols_limit`` the
rest are left to polling. monitorCycle's poll stays the backstop and fills any gap after a
reconnect. A stream that cannot connect (wrong keys, a plan without market data) is a named
state in ``/healthz``, logged once, and the watcher waits (polling carries on).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from syncd.brokers.alpaca_data_stream import AlpacaQuoteStream, Kind, endpoint
from syncd.brokers.tradier_market_stream import TradierQuoteStream
from syncd.brokers.types import Quote
from syncd.context import Account, Context
from syncd.cycles import monitor_cycle
from syncd.cycles.monitor_cycle import TradeRow, judge_quotes, plan_trades, quote_row, trades_from_rows, write_quotes
from syncd.errors import DB_ERRORS, describe
from syncd.trading import pnl
from syncd.trading.outbox import drain_outbox

log = structlog.get_logger(__name__)

SYMBOLS_REFRESH_S = 2.0  # open trades are re-read at least this often (new trades, closed ones)
DRAIN_RETRY_S = 5.0  # how long to keep trying to place a queued exit while another drainer holds the lock
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

QuoteStream = AlpacaQuoteStream | TradierQuoteStream
QuoteStreamFn = Callable[[Context, Account, asyncio.Event], Coroutine[Any, Any, None]]
OnExit = Callable[[int, float], None]  # (trade id, seconds from the quote to the close order placed)


def quotes_supported(account: Account) -> bool:
    """Whether syncd can watch live quotes for this account (a data stream it speaks, and not turned off)."""
    return account.config.stream_quotes and account.broker.kind in ("alpaca", "tradier")


def watched_symbols(trades: list[TradeRow]) -> set[str]:
    """The legs of open trades with a take-profit or stop-loss rule: what is worth a live quote."""
    out: set[str] = set()
    for row in trades:
        t = row.trade
        if t.status == "open" and not t.exit_pending and (t.take_profit_pct or t.stop_loss_pct):
            out.update(leg.symbol for leg in t.legs)
    return out


@dataclass(slots=True)
class StreamView:
    """One quote stream as /healthz shows it."""

    state: str = "idle"
    error: str | None = None
    subscribed: int = 0
    received: int = 0
    reconnects: int = 0
    last_event_at: float | None = None

    def body(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state,
            "connected": self.state == "connected",
            "last_event_age_s": None if self.last_event_at is None else round(max(0.0, now - self.last_event_at), 3),
            "subscribed": self.subscribed,
            "received": self.received,
            "reconnects": self.reconnects,
            "error": self.error,
        }


@dataclass(slots=True)
class QuoteRegistry:
    """Every running watcher's streams, by account then stream name (for /healthz)."""

    streams: dict[str, dict[str, StreamView]] = field(default_factory=dict)

    def body(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        return {a: {n: v.body(now) for n, v in sorted(s.items())} for a, s in sorted(self.streams.items())}


class QuoteWatcher:
    """The live quotes of one account, judged as they arrive; see the module docstring."""

    def __init__(
        self,
        ctx: Context,
        account: Account,
        *,
        registry: QuoteRegistry | None = None,
        on_exit: OnExit | None = None,
    ) -> None:
        self.ctx = ctx
        self.account = account
        self.registry = registry or QuoteRegistry()
        self.on_exit = on_exit
        cfg = account.config
        self.flush_interval_s = cfg.quote_flush_interval_s
        timeout = ctx.settings.cycles.broker_timeout_s
        self.streams: list[QuoteStream] = []
        if account.broker.kind == "tradier":
            self.streams.append(
                TradierQuoteStream(
                    account=account.name,
                    base_url=getattr(account.broker, "base_url", None) or cfg.base_url or "",
                    url=cfg.market_stream_url,
                    token=cfg.token.get_secret_value() if cfg.token else "",
                    symbols_limit=cfg.quote_symbols_limit,
                    timeout_s=timeout,
                )
            )
        key = cfg.api_key.get_secret_value() if cfg.api_key else ""
        secret = cfg.api_secret.get_secret_value() if cfg.api_secret else ""

        def stream(kind: Kind, feed: str) -> AlpacaQuoteStream:
            return AlpacaQuoteStream(
                account=account.name,
                kind=kind,
                url=endpoint(cfg.data_stream_url, kind, feed),
                key=key,
                secret=secret,
                symbols_limit=cfg.quote_symbols_limit,
                timeout_s=timeout,
            )

        if account.broker.kind == "alpaca":
            self.streams += [stream("stocks", cfg.data_feed), stream("options", cfg.option_feed)]
        self.latest: dict[str, Quote] = {}
        self.dirty: set[str] = set()
        self.trades: list[TradeRow] = []
        self._by_symbol: dict[str, list[int]] = {}
        self._fire = asyncio.Event()
        self._fired_at: dict[int, float] = {}  # trade id -> monotonic time of the quote that fired it
        self._last_read = 0.0
        self._read_s = 0.0  # how long the last read of the open trades took
        self._today = monitor_cycle.market_today()
        self.flushes = 0
        self.flush_seconds = 0.0  # time spent in flush (benchmarks)
        self.views = self.registry.streams.setdefault(account.name, {})

    # -- quotes in ---------------------------------------------------------------------

    def on_quote(self, quote: Quote) -> None:
        """A live quote: keep it (latest per symbol), and judge the trades that hold the symbol now."""
        symbol = quote.symbol
        self.latest[symbol] = quote
        self.dirty.add(symbol)
        self.ctx.metrics.inc("syncd_quote_events_total", account=self.account.name, stream=self._stream_of(symbol))
        indexes = self._by_symbol.get(symbol)
        if not indexes or not self._exits_enabled:
            return
        rows = [self._with_latest(self.trades[i]) for i in indexes]
        plan = plan_trades(rows, today=self._today, exit_days=self._exit_days, exits_enabled=True, log_blocked=False)
        fired = [e.trade_id for e in plan.exits if e.trade_id not in self._fired_at]
        if fired:
            now = time.monotonic()
            for trade_id in fired:
                self._fired_at[trade_id] = now
            self._fire.set()

    @property
    def _exits_enabled(self) -> bool:
        trading = self.ctx.settings.trading
        return trading.enabled and trading.auto_exits

    @property
    def _exit_days(self) -> int:
        return self.ctx.settings.trading.exit_days_before_expiration

    def _stream_of(self, symbol: str) -> str:
        return next((s.name for s in self.streams if s.accepts(symbol)), "none")

    def by_name(self, name: str) -> QuoteStream:
        return next(s for s in self.streams if s.name == name)

    @property
    def stocks(self) -> QuoteStream:
        """Alpaca's stock stream, or Tradier's one stream (tests and benchmarks)."""
        return self.streams[0]

    @property
    def options(self) -> QuoteStream:
        """Alpaca's option stream, or Tradier's one stream."""
        return self.streams[-1]

    def _with_latest(self, row: TradeRow) -> TradeRow:
        legs = []
        for leg in row.trade.legs:
            q = self.latest.get(leg.symbol)
            legs.append(leg if q is None else dataclasses.replace(leg, bid=q.bid, ask=q.ask))
        return TradeRow(dataclasses.replace(row.trade, legs=tuple(legs)), row.stored_price, row.stored_pnl)

    # -- the trades and the subscription ---------------------------------------------------

    def _set_trades(self, trades: list[TradeRow]) -> None:
        self.trades = trades
        self._last_read = time.monotonic()
        self._today = monitor_cycle.market_today()
        by_symbol: dict[str, list[int]] = {}
        watched = watched_symbols(trades)
        for i, row in enumerate(trades):
            if row.trade.status == "open" and not row.trade.exit_pending:
                for leg in row.trade.legs:
                    by_symbol.setdefault(leg.symbol, []).append(i)
        self._by_symbol = by_symbol
        live = {r.trade.id for r in trades if r.trade.status == "open" and not r.trade.exit_pending}
        for trade_id in [t for t in self._fired_at if t not in live]:
            self._fired_at.pop(trade_id, None)
        for stream in self.streams:
            stream.want(s for s in watched if stream.accepts(s))
        for symbol in [s for s in self.latest if s not in watched]:
            self.latest.pop(symbol, None)
            self.dirty.discard(symbol)

    def _forget(self, trade_ids: set[int]) -> None:
        """Trades whose exit is queued are judged no more (the rows read before the queueing say ``open``)."""
        if not trade_ids:
            return
        keep = {i for i, row in enumerate(self.trades) if row.trade.id not in trade_ids}
        self._by_symbol = {s: [i for i in ix if i in keep] for s, ix in self._by_symbol.items()}

    async def read_trades(self) -> None:
        started = time.perf_counter()
        rows = await self.ctx.pool.fetch(self.ctx.queries["monitor_trade_legs"], self.account.id)
        self._read_s = time.perf_counter() - started
        self._set_trades(trades_from_rows(rows))

    def _take_dirty(self) -> list[dict[str, Any]]:
        symbols = sorted(self.dirty)
        self.dirty.clear()
        return [quote_row(s, self.latest[s]) for s in symbols if s in self.latest]

    async def flush(self) -> None:
        """The coalesced flush: the latest quote of every symbol that moved, in one statement."""
        rows = self._take_dirty()
        started = time.perf_counter()
        await write_quotes(self.ctx, self.account, rows)
        self.flushes += 1
        self.flush_seconds += time.perf_counter() - started

    async def judge(self) -> list[pnl.ExitDecision]:
        """An exit fired: write the quotes, judge every trade from the database, queue exits (one transaction)."""
        rows = self._take_dirty()
        started = time.perf_counter()
        judged = await judge_quotes(self.ctx, self.account, rows, today=monitor_cycle.market_today())
        self._read_s = time.perf_counter() - started
        self._set_trades(judged.trades)
        return judged.queued

    @property
    def refresh_s(self) -> float:
        """How often the open trades are re-read: ``SYMBOLS_REFRESH_S``, longer when the read is slow
        (a large account), so that it never takes more than a fifth of the database's time."""
        return max(SYMBOLS_REFRESH_S, 5 * self._read_s)

    async def place(self, queued: list[pnl.ExitDecision]) -> None:
        """Drain the outbox now (retrying while another drainer holds it) and observe each exit's latency."""
        deadline = time.monotonic() + DRAIN_RETRY_S
        while True:
            stats = await drain_outbox(self.ctx, self.account)
            if not stats.skipped or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)  # tradeCycle is draining: its pass or ours places it
        placed = time.monotonic()
        for e in queued:
            fired = self._fired_at.get(e.trade_id)
            if fired is None:
                continue
            latency = placed - fired
            self.ctx.metrics.observe(
                "syncd_quote_exit_latency_seconds", latency, LATENCY_BUCKETS, account=self.account.name
            )
            log.info("quote_exit_placed", trade_id=e.trade_id, rule=e.rule, latency_ms=round(latency * 1000, 1))
            if self.on_exit is not None:
                self.on_exit(e.trade_id, latency)

    # -- the loops ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: the streams, and the flusher that writes and places."""
        with structlog.contextvars.bound_contextvars(task="quotes", account=self.account.name):
            await self.read_trades()
            tasks = [
                asyncio.create_task(self._stream(s), name=f"quotes:{self.account.name}:{s.kind}") for s in self.streams
            ]
            try:
                await self._flusher(stop)
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
                for s in self.streams:
                    self.ctx.metrics.set("syncd_quote_stream_connected", 0, account=self.account.name, stream=s.name)
                self.registry.streams.pop(self.account.name, None)

    async def _stream(self, stream: QuoteStream) -> None:
        view = self.views.setdefault(stream.name, StreamView())
        account, name = self.account.name, stream.name
        self.ctx.metrics.inc("syncd_quote_stream_reconnects_total", 0.0, account=account, stream=name)

        def on_state(state: str, error: str | None) -> None:
            if state == "reconnecting":
                self.ctx.metrics.inc("syncd_quote_stream_reconnects_total", 1.0, account=account, stream=name)
            view.state, view.error = state, error
            connected = 1.0 if state == "connected" else 0.0
            self.ctx.metrics.set("syncd_quote_stream_connected", connected, account=account, stream=name)

        def on_quote(q: Quote) -> None:
            view.received += 1
            view.last_event_at = time.time()
            view.subscribed = len(stream.subscribed)
            self.on_quote(q)

        state = await stream.run(on_quote, on_state)
        view.state = state  # a final state (wrong keys, no data plan): shown until the watcher stops
        await asyncio.Event().wait()  # stay (idle) until cancelled; polling carries on

    async def _flusher(self, stop: asyncio.Event) -> None:
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                fire = asyncio.create_task(self._fire.wait())
                await asyncio.wait({fire, stopper}, timeout=self.flush_interval_s, return_when=asyncio.FIRST_COMPLETED)
                fire.cancel()
                if stop.is_set():
                    return
                self._fire.clear()
                try:
                    if self._fired_at:
                        fired = set(self._fired_at)
                        queued = await self.judge()
                        if queued:
                            await self.place(queued)
                        self._forget({e.trade_id for e in queued})
                        for trade_id in fired:
                            # queued, or judged again from the database and not queued (blocked, or
                            # queued by a monitorCycle pass): a later quote judges it again on fresh rows
                            self._fired_at.pop(trade_id, None)
                    elif time.monotonic() - self._last_read >= self.refresh_s:
                        if self.dirty:
                            await self.flush()
                        await self.read_trades()
                    elif self.dirty:
                        await self.flush()
                except DB_ERRORS as exc:  # the poll is the backstop: log, and try again at the next flush
                    log.error("quote_flush_failed", error=describe(exc))
                for s in self.streams:
                    view = self.views.get(s.name)
                    if view is not None:
                        view.subscribed, view.reconnects = len(s.subscribed), s.reconnects
        finally:
            stopper.cancel()


def quote_stream_fn(registry: QuoteRegistry, on_exit: OnExit | None = None) -> QuoteStreamFn:
    """The supervisor's per-account entry point (``Streams`` runs one per held account)."""

    async def watch_quotes(ctx: Context, account: Account, stop: asyncio.Event) -> None:
        if not quotes_supported(account):
            return
        await QuoteWatcher(ctx, account, registry=registry, on_exit=on_exit).run(stop)

    return watch_quotes
