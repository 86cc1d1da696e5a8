"""The built-in broker simulator: Alpaca and Tradier on loopback, with a seeded market.

One aiohttp server speaks the Alpaca trading API (``/v2/...``), Alpaca market data
(``/v2/stocks/...``, ``/v1beta1/options/...``), Alpaca's ``trade_updates`` websocket
(``/stream``), Alpaca's real-time market data websockets (``/v2/{feed}`` for stocks,
``/v1beta1/{feed}`` for options: :mod:`syncd.sim.quote_stream`), the Tradier API (``/v1/...``)
and Tradier's account events stream (``POST /v1/accounts/events/session``, then
``/v1/accounts/events``), with the real field names, types and quirks, so the syncd
adapters, alpaca-py's own ``TradingClient``/``TradingStream``
and curl all work against it unmodified. Behind them sits one book per account,
reachable in both dialects, and one seeded market. ``syncd sim`` runs it standalone.

Starting one (tests)
--------------------
::

    from syncd.sim import SimConfig, start_simulator

    sim = await start_simulator(SimConfig(seed=7, accounts=2, positions_per_account=5))
    settings = sim.account_settings(0, broker="alpaca")   # or broker="tradier"
    ...                                                   # point an adapter at it
    await sim.stop()                                      # or: async with sim: ...

In pytest, start it on the loop the test runs on: this project's async fixtures default
to a session loop while tests get a loop each, so use
``@pytest_asyncio.fixture(loop_scope="function")`` (a server on an idle loop just hangs
its clients). Blocking clients (alpaca-py's ``TradingClient``) go through
``asyncio.to_thread``; ``TradingStream.run`` needs a thread of its own.

``sim.url`` is ``http://127.0.0.1:PORT`` (base_url and data_url of every account);
``sim.stream_url`` is ``ws://127.0.0.1:PORT/stream``, ``sim.tradier_stream_url``
``ws://127.0.0.1:PORT/v1/accounts/events``; ``sim.data_stream_url`` is
``ws://127.0.0.1:PORT`` (an account's ``data_stream_url``). Useful config (``SimConfig``):
``clock="manual"`` + ``start_time`` for reproducible timestamps, ``market_open``,
``fill_on_submit`` (False: nothing fills until ``tick()``/``fill()``),
``partial_fills`` (+ ``partial_fill_steps``), ``tick_s`` (a background ticker, for
demos), ``stream_conflict`` ("reject" a second stream per account, or "replace" the
first), ``tradier_heartbeat_s`` (Tradier's stream heartbeat, 60 s).
``sim.exchange.fill_on_submit`` and ``sim.exchange.partial_fills`` can also be
flipped while it runs. Everything random follows ``seed``: the same calls give the same
answers (and with ``clock="manual"`` and a fixed ``start_time``, the same timestamps).

What is in it
-------------
- ``sim.accounts[i]`` (``SimAccount``): ``name`` (``sim-i``), ``api_key``/``api_secret``
  (Alpaca), ``tradier_account_id``/``tradier_token`` (Tradier), ``cash``,
  ``positions`` (symbol -> ``SimPosition``: signed ``qty``, ``avg_entry``), ``orders``
  (``SimOrder``, oldest first; multi-leg orders carry ``legs``), ``by_client_id``.
  ``sim.share_tradier_token(0, 1)`` gives accounts one Tradier token (one user, several accounts).
  Books are built on first use from the seed: a mix of long/short stocks and options,
  always one bull call debit spread when ``positions_per_account >= 4``.
- ``sim.market`` (``Market``): ``quote(symbol)`` (bid, ask, last, greeks for
  options), ``instrument(symbol)``, ``is_open``, ``clock``. Stocks are a fixed
  universe of real tickers (``syncd.sim.market.STOCKS``); any OCC symbol on one of
  them is an option (``occ_symbol(...)`` builds one).
- ``sim.exchange`` (``Exchange``): the matching engine; ``balances(acct)``,
  ``position_views(acct)``, ``held_for_orders(acct)`` for assertions.

Driving scenarios
-----------------
- Option expiry: ``sim.expire(date=None)`` moves the clock past the close of that expiration
  date (default: the earliest held) and settles it: ITM by more than $0.01 exercised (long)
  or assigned (short) at the strike, the rest expired; ``acct.activities`` lists the records
  (Alpaca ``GET /v2/account/activities``; Tradier ``GET /v1/accounts/{id}/history``, a day's
  records once that day is over). Expiries also settle on their own as the clock passes a
  close. Orders for an expired contract are refused. ``sim.assign_early(0, occ)`` assigns a short
  option (exercises a long one) now, before its expiry, whatever the price: the same records,
  dated today (Tradier's history shows them the next morning).
- Prices and time: ``sim.tick(n)`` (prices walk, orders match; no sleeping),
  ``await sim.advance(seconds)``, ``sim.set_price("AAPL", 189.9, 190.1)`` (pins the
  quote, options reprice from it; ``sim.unpin``), ``sim.set_market_open(False)``
  (working day orders expire; ``True`` makes accepted orders live).
- Fills: ``sim.fill(order_id, qty=None, price=None)`` fills now whatever the market
  (order_id: Alpaca uuid, Tradier id or client order id). Market orders fill at once
  when the market is open (``fill_on_submit``); limits fill once crossed.
- By hand at the broker: ``sim.place_outside_order(0, "AAPL", "buy", 10)`` (or
  ``legs=[(occ, "buy", 1), (occ2, "sell", 1)]``, ``type="limit"``, ``limit_price``),
  ``sim.cancel(order_id)``, ``sim.add_position(0, sym, qty, avg)``,
  ``sim.remove_position(0, sym)``, ``sim.set_cash(0, 1000)``.
- Faults (``sim.faults``, a ``Faults``): ``latency_s``, ``error_rate`` (seeded 500s),
  ``error_body = "html"``, ``rate_limit_every = N`` (every Nth request gets 429 with
  ``Retry-After`` and Alpaca's ``X-Ratelimit-Reset`` / Tradier's ``X-Ratelimit-*``),
  ``enforce_rate_limits`` (Alpaca 200/min, Tradier 120/min per credential),
  ``drop_next_response("/v2/orders", method="POST")`` (the request is processed, the
  order exists, the connection is closed unanswered: the crash-between-placing-and-
  recording case), ``fail_next(prefix, 503, body="html")``, ``fail_auth(0)`` (401/403
  and refused stream logins until ``fail_auth(0, on=False)``),
  ``tradier_late_fill_price = True`` (a just-filled Tradier order's first read shows
  ``avg_fill_price`` 0), ``clear()``.
- Streams: ``await sim.disconnect_streams(account=None)`` closes them server-side;
  ``sim.streams.connected(i)`` / ``listening(i)``; Tradier's: ``sim.tradier_events.connected(i)``,
  ``sessions_created``; ``sim.events`` lists every trade event emitted (both streams carry each).
- Live quotes: ``sim.quotes`` publishes every subscribed quote that changed after each tick,
  ``advance`` and ``set_price`` (so ``POST /_sim/price`` moves one deterministically);
  ``sim.quotes.subscribed()``, ``connections()``, ``flood(rate)`` (load tests),
  ``symbol_limit`` (405 beyond it), ``denied`` (accounts answered 409), ``disconnect()``.
- Counting: ``sim.request_count``, ``sim.request_counts`` ("METHOD /path" -> n),
  ``sim.requests("/v2/orders", method="POST")``.

From another process (``syncd run`` in acceptance tests, the demo), the same through
``/_sim`` (JSON; never authenticated, faulted or counted): ``GET state``,
``GET accounts?offset=&limit=``, ``GET accounts/{i}`` (book and orders),
``POST tick {"n"}``, ``POST advance {"seconds"}``, ``POST expire {"date"}``,
``POST assign {"account","symbol"}``,
``GET accounts/{i}/activities``, ``POST price {"symbol","bid","ask"}``,
``POST unpin``, ``GET quote?symbol=``, ``POST market {"open"}``,
``POST fill {"order_id","qty","price"}``, ``POST cancel {"order_id"}``,
``POST orders {"account","symbol","side","qty","type","limit_price","legs"}``,
``GET orders/{id}``, ``POST positions {"account","symbol","qty","avg"}``,
``POST positions/remove``, ``POST cash``, ``GET|POST faults {...knobs,
"fill_on_submit"}``, ``POST faults/clear``, ``POST drop_next {"path_prefix","method",
"count"}``, ``POST fail_next {"path_prefix","status","body","retry_after"}``,
``POST fail_auth {"account","on"}``, ``POST streams/disconnect {"account"}``,
``GET requests``, ``GET events?limit=``.

Wire notes for adapter authors
------------------------------
Alpaca: decimals are strings (money to the cent, ``"1502.50"``), ``GET /v2/orders``
defaults to ``status=open`` and lists multi-leg legs as separate orders unless ``nested=true``; an mleg parent has empty
``symbol``/``side``/``asset_class``; its ``limit_price`` is the net (debit > 0,
credit < 0). Errors: 401 ``{"code":40110000}`` bad credentials, 403 ``40310000``
(insufficient buying power with ``buying_power``/``cost``, insufficient qty with
``available``/``held_for_orders``, or auth switched off), 404 ``40410000``, 422
``40010001`` (bad field, reused ``client_order_id``), 422 ``42210000`` (not
cancelable). ``DELETE /v2/orders/{id}`` answers 204. The stream: see
``syncd.sim.alpaca_stream``; Tradier's, ``syncd.sim.tradier_stream``. Tradier: see
``syncd.sim.tradier_api`` for its quirks
(single objects, ``"null"``, plain-text 401s, late fill prices).

May import: settings, logs, and the broker layer's pure helpers (OCC symbols). Never db,
trading, cycles, daemon or the CLI: it is a broker, not part of syncd's own flow.
"""

from syncd.sim.config import SimConfig
from syncd.sim.engine import LegSpec, OrderSpec, SimAccount, SimOrder, SimPosition, SimReject, TradeEvent
from syncd.sim.faults import Faults
from syncd.sim.market import Market, SimQuote, occ_symbol
from syncd.sim.server import Simulator, start_simulator

__all__ = [
    "Faults",
    "LegSpec",
    "Market",
    "OrderSpec",
    "SimAccount",
    "SimConfig",
    "SimOrder",
    "SimPosition",
    "SimQuote",
    "SimReject",
    "Simulator",
    "TradeEvent",
    "occ_symbol",
    "start_simulator",
]
