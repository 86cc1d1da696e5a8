"""``syncd demo``: embedded Postgres, the simulator and the daemon in one process; exit 0 on Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from syncd.cli.common import EXIT_CONFIG, EXIT_OK, CommandError

DEMO_DEMOTED = ("account_pass", "migration_applied")  # at debug in the demo (a failed pass still shows)


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
    from syncd.logs import configure_logging
    from syncd.settings import LogSettings

    # Quiet start (issue 13): the per-pass account_pass lines go to debug (failures still show), so
    # the banner and the order events stand out; pgserver's initdb/pg_ctl dumps and platformdirs'
    # RuntimeDirWarning (no XDG_RUNTIME_DIR in a container) are not shown.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=Warning)
    configure_logging(LogSettings(format="console", level="info"), demote=DEMO_DEMOTED)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    state_dir = args.state_dir or default_state_dir()
    try:
        asyncio.run(run_demo(state_dir, sys.stdout, seed=args.seed))
    except DemoError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    return EXIT_OK
