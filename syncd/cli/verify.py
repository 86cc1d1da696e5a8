"""``syncd verify [--account NAME]... [--json]`` (docs/commands.md).

Fetches every chosen active account's positions live from its broker and compares them
with ``portfolio_positions`` and the open trades (:mod:`syncd.cycles.verify`). The result goes
to stdout, as text for a person or ``--json`` for a program; logs go to stderr. Exit 0
when everything agrees, 3 when something disagrees, 1 when an account could not be
checked (broker or database error), 2 on a bad configuration, no accounts configured, or an
unknown account.
Nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from syncd.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_MISMATCH,
    EXIT_OK,
    CommandError,
    chosen_accounts,
    load_config,
)

if TYPE_CHECKING:  # imported when the command runs, so ``syncd --help`` stays instant
    from syncd.cycles.verify import AccountReport
    from syncd.settings import Settings


def register(subparsers: Any) -> None:
    """Add ``verify`` to the ``syncd`` parser."""
    p = subparsers.add_parser(
        "verify",
        help="compare the brokers' positions, fetched live, with the database",
        description="Fetch each account's positions live from its broker and compare them with "
        "portfolio_positions (missing, extra, quantity mismatches) and with the open trades "
        "(untracked positions, missing positions, quantity mismatches). Writes nothing. "
        "Exit 0 clean, 3 mismatches, 1 an account could not be checked, 2 bad configuration or no accounts.",
    )
    p.add_argument("--account", action="append", metavar="NAME", dest="accounts", help="only this account (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=verify_command)


def exit_code(reports: Sequence[AccountReport]) -> int:
    """1 when any account could not be checked, else 3 when any disagrees, else 0."""
    if any(r.error is not None for r in reports):
        return EXIT_FAILED
    if any(r.findings for r in reports):
        return EXIT_MISMATCH
    return EXIT_OK


def verify_command(args: argparse.Namespace) -> int:
    settings = load_config(args)
    if not settings.accounts:
        raise CommandError(
            "no accounts configured: nothing to verify (add [[accounts]] to the configuration, "
            "or pass --config; `syncd demo` writes one)",
            EXIT_CONFIG,
        )
    from syncd.cycles.verify import as_json, render_text

    names = chosen_accounts(settings, args.accounts)
    reports, paused = asyncio.run(_run(settings, names))
    if args.json:
        body = as_json(reports)
        body["paused"] = paused
        print(json.dumps(body, indent=2))
    else:
        for name in paused:
            print(f"{name}: paused (accounts.active = false): skipped")
        syncd = f"syncd --config {shlex.quote(args.config)}" if args.config else "syncd"
        print(render_text(reports, syncd))
    return exit_code(reports)


async def _run(settings: Settings, names: list[str] | None) -> tuple[list[AccountReport], list[str]]:
    import asyncpg

    from syncd.context import open_context
    from syncd.cycles.verify import verify_accounts
    from syncd.errors import DB_ERRORS

    try:
        async with open_context(settings) as ctx:
            active = await ctx.active_accounts(names)
            running = {a.name for a in active}
            paused = [n for n in (names or list(ctx.accounts)) if n not in running]
            return await verify_accounts(ctx, active), paused
    except asyncpg.UndefinedTableError as exc:
        raise CommandError(f"the database schema is not current ({exc}); run `syncd migrate`", EXIT_FAILED) from None
    except DB_ERRORS as exc:
        from syncd.errors import describe

        raise CommandError(describe(exc), EXIT_FAILED) from None
