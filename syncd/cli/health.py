"""``syncd health [--json] [--url URL] [--strict]`` (docs/commands.md): for people and Docker's HEALTHCHECK.

Asks a running daemon's ``/healthz``: ``--url`` when given; else the address each live
instance wrote in its ``replicas`` row (its listener's real address, whatever port it
got), the config's ``health.instance`` first, then ``health.listen``. When none answers it
never reports a daemon's verdict from stale tables: with no live instance (no fresh
heartbeat in ``replicas``) it says "daemon not reachable at URL; last seen at T (from the
database)" and exits 1; with a live instance whose listener does not answer, it judges
from the ``task_health`` and ``account_health`` tables and says so. Exit 0 for ok or
degraded (``--strict``: ok only), 1 for unhealthy or unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING, Any

from syncd.cli.common import EXIT_FAILED, EXIT_OK, load_config

if TYPE_CHECKING:  # imported when the command runs: ``syncd --help`` imports no HTTP client
    from syncd.settings import Settings

HTTP_TIMEOUT_S = 5.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "health",
        help="health of the running daemon (exit 0 ok/degraded, 1 unhealthy)",
        description="Ask the running daemon's /healthz: --url, else the address each live instance registered in "
        "the replicas table, else health.listen. With no daemon answering: exit 1, saying when a daemon was last "
        "seen (from the database), unless a live instance's heartbeat is fresh (then judged from the tables). "
        "Exit 0 ok or degraded (--strict: ok only), 1 unhealthy or unreachable.",
    )
    parser.add_argument("--json", action="store_true", help="print the /healthz JSON body")
    parser.add_argument("--url", help="the listener's base URL, e.g. http://127.0.0.1:9108")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless the status is ok")
    parser.set_defaults(handler=health_command)


def exit_code(status: str, *, strict: bool) -> int:
    if status == "ok" or (status == "degraded" and not strict):
        return EXIT_OK
    return EXIT_FAILED


def health_command(args: argparse.Namespace) -> int:
    from syncd.logs import configure_logging
    from syncd.settings import LogSettings

    settings: Settings | None = None
    if args.url:
        configure_logging(LogSettings(level="warning"))
    else:
        settings = load_config(args)
    body = asyncio.run(_gather(args.url, settings))
    print(json.dumps(body, indent=2, sort_keys=False) if args.json else render_text(body))
    return exit_code(str(body.get("status")), strict=args.strict)


async def _ask(url: str) -> dict[str, Any] | str:
    """The daemon's /healthz body at ``url``, or why it could not be had."""
    import aiohttp

    from syncd.daemon.health import fetch_report
    from syncd.errors import describe

    try:
        _status, body = await fetch_report(url, HTTP_TIMEOUT_S)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return describe(exc) or type(exc).__name__
    body.setdefault("source", url)
    return body


def _unreachable(urls: list[str], errors: list[str], last_seen: Any) -> dict[str, Any]:
    where = ", ".join(urls) if urls else "no address (health.listen is empty and no instance registered one)"
    seen = f"last seen at {last_seen.isoformat()}" if last_seen else "never seen"
    message = f"daemon not reachable at {where}; {seen} (from the database)"
    return {
        "status": "unhealthy",
        "tasks": {},
        "error": message,
        "reasons": [message, *errors],
        "last_seen_at": last_seen.isoformat() if last_seen else None,
        "source": "database",
    }


async def _gather(url: str | None, settings: Settings | None) -> dict[str, Any]:
    if url:
        got = await _ask(url)
        if isinstance(got, dict):
            return got
        message = f"daemon not reachable at {url}: {got}"
        return {"status": "unhealthy", "tasks": {}, "error": message, "reasons": [message]}
    assert settings is not None
    from syncd.daemon.health import DB_DOWN_ERRORS, listen_url
    from syncd.db import create_pool
    from syncd.errors import describe

    fallback = listen_url(settings.health.listen)
    try:
        async with asyncio.timeout(settings.database.connect_timeout_s + 1):
            pool = await create_pool(settings.database, max_size=1)
    except DB_DOWN_ERRORS as exc:
        got = await _ask(fallback) if fallback else "health.listen is empty"
        if isinstance(got, dict):
            return got
        message = f"daemon not reachable at {fallback or 'no address'}; database unreachable: {describe(exc)}"
        return {"status": "unhealthy", "tasks": {}, "database": "unreachable", "error": message, "reasons": [message]}
    try:
        return await _via_database(pool, settings, fallback)
    finally:
        await pool.close()


async def _via_database(pool: Any, settings: Settings, fallback: str | None) -> dict[str, Any]:
    """Find the live instances' listeners in ``replicas`` and ask them; else judge honestly."""
    from syncd.daemon.health import report_from_db
    from syncd.db import load_queries

    queries = load_queries()
    async with asyncio.timeout(settings.database.connect_timeout_s + 1):
        replicas = await pool.fetch(queries["health_replicas"])
        last_seen = await pool.fetchval(queries["health_last_seen"])
    mine = settings.health.instance
    live = sorted((r for r in replicas if r["live"]), key=lambda r: r["instance"] != mine)  # stable: newest first
    # Where to ask: the live instances' listeners, then where the latest others listened (a daemon
    # whose lease session dropped may still answer), then health.listen unless that says port 0.
    gone = [r for r in replicas if not r["live"]][:3]
    urls: list[str] = []
    for url in [*(r["health_url"] for r in live + gone), fallback]:
        if url and url not in urls and not url.endswith(":0"):
            urls.append(url)
    errors: list[str] = []
    for target in urls:
        got = await _ask(target)
        if isinstance(got, dict):
            return got
        errors.append(f"{target}: {got}")
    if not live:
        return _unreachable(urls, errors, last_seen)
    # An instance renews its heartbeat but its listener does not answer (or it has none): the tables
    # are as fresh as that heartbeat, so they are judged, and the body says where it came from.
    report = await report_from_db(
        pool,
        queries,
        account_names=[a.name for a in settings.accounts],
        stale_after_s=settings.health.stale_after_s,
    )
    body = report.body()
    note = (
        f"daemon not reachable at {', '.join(urls) or 'no address'}; instance {live[0]['instance']} "
        f"heartbeat at {live[0]['heartbeat_at'].isoformat()}: judged from the database"
    )
    body["reasons"] = [note, *errors, *body["reasons"]]
    body["source"] = "database"
    return body


def render_text(body: dict[str, Any]) -> str:
    """A few lines for a person: the status, why, and each task's and account's state."""
    lines = [f"status: {body.get('status')}"]
    if body.get("error"):
        lines.append(f"error: {body['error']}")
    for reason in body.get("reasons") or []:
        if reason == body.get("error"):
            continue
        lines.append(f"  - {reason}")
    for name, task in (body.get("tasks") or {}).items():
        err = f", error: {task['last_error']}" if task.get("last_error") else ""
        fails = task.get("consecutive_failures") or 0
        lines.append(f"{name}: last ok {task.get('last_ok_at') or 'never'}, failures {fails}{err}")
        for acct, view in (task.get("accounts") or {}).items():
            state = f"error: {view['last_error']}" if view.get("last_error") else "ok"
            lines.append(f"  {acct}: {state} (last ok {view.get('last_ok_at') or 'never'})")
    streams = body.get("streams") or {}
    if streams:
        lines.append("streams:")
    for acct, view in streams.items():
        age = view.get("last_event_age_s")
        seen = f"last event {age:g}s ago" if age is not None else "no event yet"
        err = f", error: {view['last_error']}" if view.get("last_error") and not view.get("connected") else ""
        lines.append(
            f"  {acct} ({view.get('broker')}): {view.get('state')}, {seen}, reconnects {view.get('reconnects', 0)}{err}"
        )
    for acct, streams in (body.get("quote_streams") or {}).items():
        for name, view in streams.items():
            age = view.get("last_event_age_s")
            seen = "no event yet" if age is None else f"last event {age:g}s ago"
            err = f", error: {view['error']}" if view.get("error") else ""
            lines.append(f"quotes {acct}/{name}: {view.get('state')}, {view.get('subscribed', 0)} symbols, {seen}{err}")
    return "\n".join(lines)
