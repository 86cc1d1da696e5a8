"""``syncd demo``: embedded Postgres, the simulator and the daemon in one process; exit 0 on Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from syncd.cli.common import EXIT_CONFIG, EXIT_OK, CommandError
from syncd.logs import configure_logging
from syncd.settings import LogSettings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="zero set-up: embedded Postgres, the simulator with live prices, and the daemon",
        description="Start an embedded PostgreSQL (data under --state-dir), the broker simulator with three "
        "accounts (Alpaca and Tradier protocols, stocks and a spread, live prices) and the daemon with trading "
        "enabled on the simulator only; print how to psql in. Ctrl-C stops everything (exit 0).",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where Postgres keeps its data (default: $XDG_STATE_HOME/syncd, else ./.syncd-demo)",
    )
    parser.add_argument("--seed", type=int, default=7, help="the simulator's seed (default 7)")
    parser.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from syncd.cli.demo_stack import DemoError, default_state_dir, run_demo

    configure_logging(LogSettings(format="console", level="info"))
    state_dir = args.state_dir or default_state_dir()
    try:
        asyncio.run(run_demo(state_dir, sys.stdout, seed=args.seed))
    except DemoError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    return EXIT_OK
