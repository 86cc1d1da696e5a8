"""``syncd sync-once`` and ``syncd import-positions`` (docs/commands.md).

``sync-once [--account NAME]... [--task account,trade,monitor] [--no-migrate]``: one
pass of the chosen cycles over the chosen active accounts -- the "Sync with Broker"
button. Migrations first unless ``--no-migrate``; the tasks run in registry order
(accountSync, tradeCycle, monitorCycle) whatever order they are named in. stdout gets
one line per account and task; exit 0 when every account's pass succeeded, 1 when
any failed (an order the broker refused is the trade cycle's business, not a failed
pass), 2 on a bad configuration or an unknown account or task.

``import-positions [--account NAME]... [--no-sync]``: fetch positions (an accountSync
pass), then make trades of those no live trade covers (:mod:`syncd.cycles.importer`);
stdout says what was imported per account; exit 0, or 1 when an account failed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from syncd.cli.common import EXIT_FAILED, EXIT_OK, chosen_accounts, load_config
from syncd.cycles import TASKS, TaskSpec, task_by_short

if TYPE_CHECKING:  # imported when a command runs: ``syncd --help`` imports no database or HTTP client
    from syncd.context import Account, Context
    from syncd.daemon.passes import PassResult
    from syncd.settings import Settings


def _log() -> Any:
    import structlog

    return structlog.get_logger(__name__)


_STAT_KEYS_FIRST = ("positions", "upserted", "deleted", "events", "imported")


def register(subparsers: Any) -> None:
    """Add ``sync-once`` and ``import-positions`` to the ``syncd`` parser."""
    shorts = ",".join(t.short for t in TASKS)
    once = subparsers.add_parser(
        "sync-once",
        help="one pass of the cycles over the accounts, then exit",
        description="Run one pass of the chosen cycles (default all, in the order "
        f"{shorts}) over the chosen active accounts, print one line per account and task, and exit: "
        "0 when every account synced, 1 when any failed, 2 on a bad configuration.",
    )
    once.add_argument(
        "--account", action="append", metavar="NAME", dest="accounts", help="only this account (repeatable)"
    )
    once.add_argument(
        "--task",
        action="append",
        type=_task_list,
        metavar="TASKS",
        dest="tasks",
        help=f"comma-separated cycles to run: {shorts} (default all)",
    )
    once.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations first")
    once.set_defaults(handler=sync_once_command)

    imp = subparsers.add_parser(
        "import-positions",
        help="make trades (source 'import') of broker positions no open trade covers",
        description="Fetch each account's positions (an accountSync pass), then create a trade with "
        "source 'import' for every position no live trade covers; a vertical spread becomes one "
        "two-leg trade. Applies pending migrations first unless --no-migrate. Idempotent. "
        "Exit 0, or 1 when an account failed.",
    )
    imp.add_argument(
        "--account", action="append", metavar="NAME", dest="accounts", help="only this account (repeatable)"
    )
    imp.add_argument(
        "--no-sync", action="store_true", help="import from the stored positions without fetching them first"
    )
    imp.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations first")
    imp.set_defaults(handler=import_positions_command)


def _task_list(value: str) -> list[TaskSpec]:
    specs = []
    for short in (s.strip() for s in value.split(",")):
        try:
            specs.append(task_by_short(short))
        except KeyError as exc:
            raise argparse.ArgumentTypeError(str(exc.args[0])) from None
    return specs


def chosen_tasks(groups: Sequence[Sequence[TaskSpec]] | None) -> list[TaskSpec]:
    """The named tasks in registry order (all of them when none is named)."""
    if not groups:
        return list(TASKS)
    named = {spec.short for group in groups for spec in group}
    return [spec for spec in TASKS if spec.short in named]


def result_line(task: str, r: PassResult, width: int) -> str:
    """``NAME  TASK  ok  key=value ...  0.12s`` or ``NAME  TASK  FAILED  error``."""
    head = f"{r.account:<{width}}  {task:<12}"
    if not r.ok:
        return f"{head}  FAILED  {r.error}"
    keys = [k for k in _STAT_KEYS_FIRST if k in r.stats] + sorted(k for k in r.stats if k not in _STAT_KEYS_FIRST)
    stats = " ".join(f"{k}={r.stats[k]}" for k in keys)
    return f"{head}  ok      {stats}  {r.duration_s:.2f}s"


def _print_paused(wanted: Sequence[str] | None, ctx: Context, active: Sequence[Account], width: int) -> None:
    names = wanted if wanted is not None else list(ctx.accounts)
    running = {a.name for a in active}
    for name in names:
        if name not in running:
            print(f"{name:<{width}}  paused (accounts.active = false): skipped", flush=True)


# -- sync-once ---------------------------------------------------------------------------------------------


def sync_once_command(args: argparse.Namespace) -> int:
    settings = load_config(args)
    names = chosen_accounts(settings, args.accounts)
    specs = chosen_tasks(args.tasks)
    return asyncio.run(sync_once(settings, names, specs, migrate=not args.no_migrate))


async def sync_once(settings: Settings, names: list[str] | None, specs: Sequence[TaskSpec], *, migrate: bool) -> int:
    """One pass of each task over the active accounts; print the results; the exit code.

    The cycles (and the HTTP client and brokers with them) are imported only when there are
    accounts to run them on: a start-up with none costs settings, logging and the migrations.
    """
    if migrate:
        from syncd.db import apply_migrations

        await apply_migrations(settings.database)
    if not settings.accounts:
        print("no accounts configured", flush=True)
        return EXIT_OK
    from syncd.context import open_context
    from syncd.daemon.passes import run_pass

    t0 = time.perf_counter()
    failed = False
    async with open_context(settings) as ctx:
        active = await ctx.active_accounts(names)
        width = max(len(n) for n in (names or ctx.accounts))
        _print_paused(names, ctx, active, width)
        for spec in specs:
            summary = await run_pass(ctx, spec.name, spec.account_pass, active)
            for r in summary.results:
                print(result_line(spec.name, r, width), flush=True)
            failed = failed or not summary.ok
    _log().info(
        "sync_once_finished", ok=not failed, accounts=len(active), duration_ms=round((time.perf_counter() - t0) * 1000)
    )
    return EXIT_FAILED if failed else EXIT_OK


# -- import-positions --------------------------------------------------------------------------------------


def import_positions_command(args: argparse.Namespace) -> int:
    settings = load_config(args)
    names = chosen_accounts(settings, args.accounts)
    return asyncio.run(import_all(settings, names, sync_first=not args.no_sync, migrate=not args.no_migrate))


async def import_all(settings: Settings, names: list[str] | None, *, sync_first: bool, migrate: bool = True) -> int:
    """Sync (unless told not to), then import each active account's uncovered positions; print; exit code."""
    from syncd.context import open_context
    from syncd.cycles.account_sync import sync_pass
    from syncd.cycles.importer import import_positions
    from syncd.daemon.passes import run_pass
    from syncd.db import apply_migrations
    from syncd.errors import DB_ERRORS, describe

    if migrate:  # like sync-once: it writes, so the schema must be current
        await apply_migrations(settings.database)

    if not settings.accounts:
        print("no accounts configured", flush=True)
        return EXIT_OK
    failed = False
    async with open_context(settings) as ctx:
        active = await ctx.active_accounts(names)
        width = max(len(n) for n in (names or ctx.accounts))
        _print_paused(names, ctx, active, width)
        ready = active
        if sync_first:
            summary = await run_pass(ctx, "accountSync", sync_pass, active)
            for r in summary.failed:
                print(f"{r.account:<{width}}  FAILED  sync: {r.error}", flush=True)
            ok = {r.account for r in summary.results if r.ok}
            ready = [a for a in active if a.name in ok]
            failed = not summary.ok
        sem = asyncio.Semaphore(settings.cycles.concurrency)

        async def one(acct: Account) -> tuple[Account, str, bool]:
            async with sem:
                try:
                    imported = await import_positions(ctx, acct)
                except DB_ERRORS as exc:
                    _log().error("import_failed", account=acct.name, error=describe(exc))
                    return acct, f"FAILED  import: {describe(exc)}", False
                lines = [f"imported {len(imported)} trade(s)" if imported else "nothing to import"]
                lines += [f"  #{t.trade_id} {t.plan.describe()}" for t in imported]
                return acct, "\n".join(lines), True

        for acct, text, ok_ in await asyncio.gather(*(one(a) for a in ready)):
            first, *rest = text.split("\n")
            print(f"{acct.name:<{width}}  {first}", flush=True)
            for line in rest:
                print(f"{'':<{width}}{line}", flush=True)
            failed = failed or not ok_
    return EXIT_FAILED if failed else EXIT_OK
