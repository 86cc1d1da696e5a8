"""The ``syncd`` command line (docs/commands.md).

Each command lives with its feature and registers itself through a module-level
``register(subparsers)``; this file only assembles them and maps errors to exit
codes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from syncd import __version__
from syncd.cli import demo, health, run, sim, status, sync, verify
from syncd.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, CommandError, fail, load_config

# The modules that add commands, in --help order; each defines ``register(subparsers) -> None``.
COMMAND_MODULES = (run, health, status, demo, sync, verify, sim)


def _config_check(args: argparse.Namespace) -> int:
    from syncd.settings import redacted_dict, to_toml

    settings = load_config(args, setup_logging=False)
    data = redacted_dict(settings)
    print(json.dumps(data, indent=2) if args.json else to_toml(data))
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    from syncd.db import apply_migrations

    settings = load_config(args)
    applied = asyncio.run(apply_migrations(settings.database))
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "nothing pending"
    print(f"schema {settings.database.schema_}: {names}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncd",
        description="Keeps brokerage accounts (Alpaca, Tradier) mirrored in PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $SYNCD_CONFIG, ./syncd.toml, /etc/syncd/syncd.toml; none: defaults + env)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config = sub.add_parser("config", help="configuration commands", description="Configuration commands.")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = config_sub.add_parser(
        "check",
        help="validate the config; print it with secrets redacted",
        description="Validate the configuration and print the effective values (file < environment), "
        "every secret redacted. Exit 0 valid, 2 invalid (the message names the key).",
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    check.set_defaults(handler=_config_check)

    migrate = sub.add_parser(
        "migrate",
        help="apply pending sql/ migrations",
        description="Apply pending migrations to the configured schema. Idempotent; safe when two run at once.",
    )
    migrate.set_defaults(handler=_migrate)

    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except CommandError as exc:
        fail(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001  # the last line of defence: a message, exit 1
        from syncd.errors import describe

        fail(describe(exc))
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["EXIT_CONFIG", "build_parser", "main"]
