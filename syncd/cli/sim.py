"""``syncd sim``: run the built-in broker simulator until SIGINT/SIGTERM.

stdout gets what a person needs to use it (the URL, the first accounts'
credentials, example curl and alpaca-py commands); logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Any

from syncd.cli.common import EXIT_OK

if TYPE_CHECKING:  # imported when the command runs: ``syncd --help`` imports no simulator
    from syncd.sim import SimConfig, Simulator

DEFAULT_PORT = 8788


def register(subparsers: Any) -> None:
    """Add the ``sim`` subcommand to the ``syncd`` parser."""
    p = subparsers.add_parser(
        "sim",
        help="run the built-in broker simulator (Alpaca and Tradier wire protocols)",
        description="Serve a seeded simulated broker on loopback: the Alpaca trading and market-data APIs, "
        "Alpaca's trade_updates websocket and the Tradier API, many accounts with live prices. "
        "Drive it over HTTP under /_sim (see syncd.sim). Runs until Ctrl-C or SIGTERM.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    p.add_argument("--seed", type=int, default=0, help="everything random follows it (default 0)")
    p.add_argument("--accounts", type=_non_negative, default=10, help="simulated accounts (default 10)")
    p.add_argument("--positions", type=_non_negative, default=20, help="initial positions per account (default 20)")
    p.add_argument(
        "--tick-s", type=float, default=1.0, help="seconds between price ticks (default 1; 0 = prices stand still)"
    )
    p.add_argument("--closed", action="store_true", help="start with the market closed")
    p.add_argument("--show", type=_non_negative, default=3, help="accounts whose credentials are printed (default 3)")
    p.set_defaults(handler=run_sim)


def _port(value: str) -> int:
    n = int(value)
    if not 0 <= n <= 65_535:
        raise argparse.ArgumentTypeError("port must be 0-65535")
    return n


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def run_sim(args: argparse.Namespace) -> int:
    from syncd.logs import configure_logging
    from syncd.settings import LogSettings
    from syncd.sim import SimConfig

    configure_logging(LogSettings(format="console", level="info"))
    config = SimConfig(
        seed=args.seed,
        host=args.host,
        port=args.port,
        accounts=args.accounts,
        positions_per_account=args.positions,
        tick_s=args.tick_s if args.tick_s > 0 else None,
        market_open=not args.closed,
    )
    asyncio.run(_serve(config, args.show))
    return EXIT_OK


async def _serve(config: SimConfig, show: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from syncd.sim import start_simulator

    sim = await start_simulator(config)
    try:
        sys.stdout.write(banner(sim, show))
        sys.stdout.flush()
        await stop.wait()
    finally:
        await sim.stop()


def banner(sim: Simulator, show: int) -> str:
    """What ``syncd sim`` prints: where it listens, who can log in, how to try it."""
    lines = [
        f"syncd simulator listening on {sim.url}  (seed {sim.config.seed}, {len(sim.accounts)} accounts)",
        f"  Alpaca trading + data: {sim.url}   trade_updates: {sim.stream_url}",
        f"  Alpaca market data stream: {sim.data_stream_url}/v2/iex, /v1beta1/indicative   "
        f"Tradier market events: {sim.data_stream_url}/v1/markets/events",
        f"  Tradier: {sim.url}/v1   account events: {sim.tradier_stream_url}   admin: {sim.url}/_sim/state",
        "",
    ]
    for acct in sim.accounts[:show]:
        lines += [
            f"account {acct.index} ({acct.name})",
            f"  alpaca  key={acct.api_key} secret={acct.api_secret}",
            f"  tradier account_id={acct.tradier_account_id} token={acct.tradier_token}",
        ]
    if len(sim.accounts) > show:
        lines.append(f"... {len(sim.accounts) - show} more: curl {sim.url}/_sim/accounts?offset={show}&limit=50")
    if sim.accounts:
        a = sim.accounts[0]
        lines += [
            "",
            "try:",
            f"  curl -H 'APCA-API-KEY-ID: {a.api_key}' -H 'APCA-API-SECRET-KEY: {a.api_secret}' {sim.url}/v2/positions",
            f"  curl -H 'Authorization: Bearer {a.tradier_token}' -H 'Accept: application/json' "
            f"{sim.url}/v1/accounts/{a.tradier_account_id}/positions",
            '  python -c "from alpaca.trading.client import TradingClient; '
            f"print(TradingClient('{a.api_key}', '{a.api_secret}', url_override='{sim.url}').get_account())\"",
            "",
            "in syncd.toml:",
            "  [[accounts]]",
            '  name = "sim-alpaca-0"',
            '  broker = "alpaca"',
            f'  api_key = "{a.api_key}"',
            f'  api_secret = "{a.api_secret}"',
            f'  base_url = "{sim.url}"',
            f'  data_url = "{sim.url}"',
            f'  stream_url = "{sim.stream_url}"',
            f'  data_stream_url = "{sim.data_stream_url}"',
        ]
    lines += ["", "Ctrl-C stops it.", ""]
    return "\n".join(lines)
