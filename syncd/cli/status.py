"""``syncd status [--json] [--account NAME]...`` (docs/commands.md): one screen for an operator.

Everything comes from the database (the named queries of ``sql/queries/status.sql``), read
in one read-only transaction: it works with the daemon down, and no broker is asked (this
module builds no broker client). Per configured account: its broker, last sync and last
error, balances, positions, open trades with floating P&L, working orders, the outbox's
queued/failed/rejected requests, the stream as far as the database knows it, the lease and
each task's last outcome; above them, the daemon instances' heartbeats.

:func:`gather` reads, :func:`render_text` (80 columns) and :func:`as_json` present; numbers
go through :mod:`syncd.cli.numbers`. Exit 0; 1 when the database cannot be read; 2 on a bad
configuration, no accounts configured, or an ``--account`` the configuration lacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from syncd.cli import numbers as fmt
from syncd.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, CommandError, chosen_accounts, load_config

if TYPE_CHECKING:  # imported when the command runs, so ``syncd --help`` stays instant
    from syncd.settings import Settings

WIDTH = 80
TRADES_SHOWN = 10  # per account in the text view; --json lists every one
TASK_NAMES = ("accountSync", "tradeCycle", "monitorCycle")
NO_STREAM_BROKERS: frozenset[str] = frozenset()  # every broker streams (Alpaca trade_updates, Tradier account events)

STREAM_WORDS = {"off": "off (cycles.stream = false)", "none": "none (this broker has no order stream: polling)"}

Status = dict[str, Any]


def register(subparsers: Any) -> None:
    """Add ``status`` to the ``syncd`` parser."""
    p = subparsers.add_parser(
        "status",
        help="one screen per account from the database alone (works with the daemon down)",
        description="Show, from the database alone (no broker is asked; the daemon may be down), each "
        "configured account's broker, last sync and error, balances, positions, open trades with floating "
        "P&L, working orders, outbox requests queued/failed, stream and lease, and the daemon's heartbeat. "
        "Exit 0; 1 the database cannot be read; 2 bad configuration, no accounts, or an unknown --account.",
    )
    p.add_argument("--account", action="append", metavar="NAME", dest="accounts", help="only this account (repeatable)")
    p.add_argument("--json", action="store_true", help="print the status as JSON (stable keys; see docs/commands.md)")
    p.set_defaults(handler=status_command)


def status_command(args: argparse.Namespace) -> int:
    settings = load_config(args)
    if not settings.accounts:
        raise CommandError(
            "no accounts configured: add [[accounts]] to the configuration (see `syncd demo`)", EXIT_CONFIG
        )
    names = chosen_accounts(settings, args.accounts) or [a.name for a in settings.accounts]
    status = asyncio.run(_read(settings, names))
    print(json.dumps(as_json(status), indent=2) if args.json else render_text(status))
    return EXIT_OK


async def _read(settings: Settings, names: list[str]) -> Status:
    import asyncpg

    from syncd.db import connect, load_queries
    from syncd.errors import describe

    try:
        conn = await connect(settings.database)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise CommandError(f"database unreachable: {describe(exc)}", EXIT_FAILED) from None
    try:
        async with conn.transaction(readonly=True, isolation="repeatable_read"):
            return await gather(conn, load_queries(), settings, names)
    except asyncpg.UndefinedTableError as exc:
        raise CommandError(f"the database schema is not current ({exc}); run `syncd migrate`", EXIT_FAILED) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise CommandError(describe(exc), EXIT_FAILED) from None
    finally:
        await conn.close()


async def gather(conn: Any, q: Mapping[str, str], settings: Settings, names: Sequence[str]) -> Status:
    """The status of the accounts ``names`` (in that order) as plain values (Decimal, datetime)."""
    now: datetime = await conn.fetchval(q["status_clock"])
    replicas = await conn.fetch(q["status_replicas"])
    rows = {r["name"]: r for r in await conn.fetch(q["status_accounts"], list(names))}
    ids = [r["id"] for r in rows.values()]
    tasks: dict[int, dict[str, Any]] = {}
    for t in await conn.fetch(q["status_account_tasks"], ids):
        tasks.setdefault(t["account_id"], {})[t["task"]] = {
            "last_ok_at": t["last_ok_at"],
            "last_error_at": t["last_error_at"],
            "last_error": t["last_error"],
            "consecutive_failures": t["consecutive_failures"],
        }
    trades: dict[int, list[dict[str, Any]]] = {}
    for t in await conn.fetch(q["status_open_trades"], ids):
        trades.setdefault(t["account_id"], []).append(
            {k: t[k] for k in ("id", "symbol", "strategy", "status", "quantity", "current_price", "floating_pnl")}
        )
    configured = {a.name: a for a in settings.accounts}
    accounts = []
    for name in names:
        acct = configured[name]
        row = rows.get(name)
        accounts.append(
            _account(
                name,
                acct.broker,
                acct.paper if acct.broker == "alpaca" else acct.sandbox,
                row,
                tasks.get(row["id"], {}) if row else {},
                trades.get(row["id"], []) if row else [],
                stream_enabled=settings.cycles.stream,
            )
        )
    return {
        "generated_at": now,
        "source": "database",
        "daemon": {
            "live": [r["instance"] for r in replicas if r["live"]],
            "instances": [
                {k: r[k] for k in ("instance", "started_at", "heartbeat_at", "expires_at", "live")} for r in replicas
            ],
        },
        "accounts": accounts,
    }


def _account(
    name: str,
    broker: str,
    paper: bool,
    row: Mapping[str, Any] | None,
    tasks: dict[str, Any],
    trades: list[dict[str, Any]],
    *,
    stream_enabled: bool,
) -> dict[str, Any]:
    r: Mapping[str, Any] = row or {}
    return {
        "name": name,
        "broker": broker,
        "paper": paper,
        "in_database": row is not None,
        "active": r.get("active", True),
        "last_synced_at": r.get("last_synced_at"),
        "last_error": r.get("last_error"),
        "equity": r.get("equity"),
        "cash": r.get("cash"),
        "positions": r.get("positions", 0),
        "open_trades": {"count": r.get("open_trades", 0), "floating_pnl": r.get("floating_pnl"), "trades": trades},
        "working_orders": r.get("working_orders", 0),
        "outbox": {
            "queued": r.get("outbox_queued", 0),
            "failed": r.get("outbox_failed", 0),
            "rejected": r.get("outbox_rejected", 0),
        },
        "stream": {
            "state": stream_state(broker, enabled=stream_enabled),
            "last_event_at": r.get("stream_last_event_at"),
        },
        "lease": (
            {"holder": r["lease_holder"], "expires_at": r["lease_expires_at"], "live": r["lease_live"]}
            if r.get("lease_holder")
            else None
        ),
        "tasks": {t: tasks[t] for t in TASK_NAMES if t in tasks},
    }


def stream_state(broker: str, *, enabled: bool) -> str:
    """``off`` (cycles.stream = false), ``none`` (the broker has no order stream) or ``unknown``.

    The database records what the stream delivered (order_events with source 'stream'),
    not whether it is connected now; only the running daemon knows that.
    """
    if not enabled:
        return "off"
    if broker in NO_STREAM_BROKERS:
        return "none"
    return "unknown"


# -- JSON ----------------------------------------------------------------------------------------------------


def as_json(value: Any) -> Any:
    """``value`` for ``json.dumps``: Decimal as a JSON number (:func:`numbers.json_number`), times as ISO 8601."""
    if isinstance(value, Mapping):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, Decimal):
        return fmt.json_number(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# -- text ----------------------------------------------------------------------------------------------------


def clip(text: str, width: int) -> str:
    """``text`` on one line, at most ``width`` characters (``…`` where it was cut)."""
    one = " ".join(text.splitlines()).replace("\t", " ")
    return one if len(one) <= width else one[: width - 1] + "…"


def _when(at: datetime | None, now: datetime) -> str:
    return "never" if at is None else f"{fmt.timestamp(at)} ({fmt.age(at, now)})"


def _daemon_line(daemon: Mapping[str, Any], now: datetime) -> str:
    instances = daemon["instances"]
    live = [i for i in instances if i["live"]]
    if live:
        beats = ", ".join(f"{i['instance']} (heartbeat {fmt.age(i['heartbeat_at'], now)})" for i in live)
        return clip(f"daemon: running: {beats}", WIDTH)
    if instances:
        last = max(instances, key=lambda i: i["heartbeat_at"])
        return clip(
            f"daemon: not running (last heartbeat {_when(last['heartbeat_at'], now)}, {last['instance']})", WIDTH
        )
    return "daemon: never ran against this database"


def _task_part(name: str, view: Mapping[str, Any] | None, now: datetime) -> str:
    if view is None:
        return f"{name} -"
    if view["consecutive_failures"]:
        return f"{name} FAILED x{view['consecutive_failures']}"
    return f"{name} {fmt.age(view['last_ok_at'], now)}"


def _trade_line(t: Mapping[str, Any]) -> str:
    """``#id SYMBOL STRATEGY QTY PRICE P&L``; a wide number takes room from the strategy, then the symbol."""
    mark = "*" if t["status"] == "closing" else " "
    ident = f"{'#' + str(t['id']):>6}{mark}"
    numbers = (
        f"{fmt.quantity(t['quantity']):>6} {fmt.price(t['current_price']):>10} "
        f"{fmt.money(t['floating_pnl'], signed=True):>12}"
    )
    over = max(len(ident) - 7, 0) + max(len(numbers) - 30, 0)
    strategy_w = max(15 - over, 6)
    symbol_w = max(21 - max(over - (15 - strategy_w), 0), 8)
    line = (
        f"  {ident}{clip(t['symbol'], symbol_w):<{symbol_w}} {clip(t['strategy'], strategy_w):<{strategy_w}} {numbers}"
    )
    return clip(line, WIDTH)


def render_account(a: Mapping[str, Any], now: datetime) -> list[str]:
    """One account's block: at most 80 columns a line."""
    kind = "paper" if a["paper"] else "live"
    head = f"{a['name']} ({a['broker']}, {kind}{'' if a['active'] else ', PAUSED'})"
    lease = a["lease"]
    if lease:
        held = f"lease: {lease['holder']}" + ("" if lease["live"] else " (lapsed)")
        head = f"{head}{held:>{max(WIDTH - len(head), len(held) + 2)}}"
    lines = [clip(head, WIDTH)]
    if not a["in_database"]:
        lines.append("  not in the database yet: no daemon or sync-once has run with it")
        return lines
    lines.append(f"  synced     {_when(a['last_synced_at'], now)}")
    lines.append(clip(f"  last error {a['last_error'] or 'none'}", WIDTH))
    lines.append(f"  balances   equity {fmt.money(a['equity'])}, cash {fmt.money(a['cash'])}")
    box = a["outbox"]
    lines.append(f"  book       {a['positions']} position(s), {a['working_orders']} working order(s)")
    lines.append(f"  outbox     {box['queued']} queued, {box['failed']} failed, {box['rejected']} rejected")
    stream = a["stream"]
    last = stream["last_event_at"]
    seen = f"last event {_when(last, now)}" if last else "no stream event recorded"
    state = STREAM_WORDS.get(stream["state"], stream["state"])
    lines.append(
        clip(f"  stream     {state}, {seen}" if stream["state"] == "unknown" else f"  stream     {state}", WIDTH)
    )
    lines.append(clip("  tasks ok   " + ", ".join(_task_part(t, a["tasks"].get(t), now) for t in TASK_NAMES), WIDTH))
    for t in TASK_NAMES:
        view = a["tasks"].get(t)
        if view and view["consecutive_failures"] and view["last_error"]:
            lines.append(clip(f"    {t}: {view['last_error']}", WIDTH))
    trades = a["open_trades"]
    lines.append(f"  trades     {trades['count']} open, floating P&L {fmt.money(trades['floating_pnl'], signed=True)}")
    if trades["trades"]:
        lines.append(f"  {'TRADE':>6} {'SYMBOL':<21} {'STRATEGY':<15} {'QTY':>6} {'PRICE':>10} {'P&L':>12}")
        lines.extend(_trade_line(t) for t in trades["trades"][:TRADES_SHOWN])
        more = len(trades["trades"]) - TRADES_SHOWN
        if more > 0:
            lines.append(f"  ... {more} more (syncd status --json lists every one)")
    return lines


def render_text(status: Mapping[str, Any]) -> str:
    """The screen: a header, the daemon line, one block per account (80 columns)."""
    now: datetime = status["generated_at"]
    lines = [
        f"syncd status at {fmt.timestamp(now)}, from the database (no broker asked)",
        _daemon_line(status["daemon"], now),
    ]
    for a in status["accounts"]:
        lines.append("")
        lines.extend(render_account(a, now))
    if any(t["status"] == "closing" for a in status["accounts"] for t in a["open_trades"]["trades"]):
        lines += ["", "* closing: an exit order is working"]
    return "\n".join(lines)
