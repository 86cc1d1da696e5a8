"""``syncd health [--json] [--url URL] [--strict]`` (docs/commands.md): for people and Docker's HEALTHCHECK.

Asks the running daemon (``--url``, else ``health.listen`` of the config); when no
``--url`` was given and the daemon does not answer, judges from the ``task_health``
and ``account_health`` tables instead. Exit 0 for ok or degraded (``--strict``: ok
only), 1 for unhealthy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import aiohttp

from syncd.cli.common import EXIT_FAILED, EXIT_OK, load_config
from syncd.errors import describe
from syncd.logs import configure_logging
from syncd.settings import LogSettings, Settings

HTTP_TIMEOUT_S = 5.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "health",
        help="health of the running daemon (exit 0 ok/degraded, 1 unhealthy)",
        description="Ask the running daemon's /healthz (--url, else health.listen from the config); with no "
        "--url and no answer, judge from the task_health table. Exit 0 ok or degraded (--strict: ok only), "
        "1 unhealthy.",
    )
    parser.add_argument("--json", action="store_true", help="print the /healthz JSON body")
    parser.add_argument("--url", help="the listener's base URL, e.g. http://127.0.0.1:9108")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless the status is ok")
    parser.set_defaults(handler=health_command)


def listen_url(listen: str) -> str | None:
    """``health.listen`` as a URL to connect to (a wildcard address becomes loopback)."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}.get(host, host)  # noqa: S104
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def exit_code(status: str, *, strict: bool) -> int:
    if status == "ok" or (status == "degraded" and not strict):
        return EXIT_OK
    return EXIT_FAILED


def health_command(args: argparse.Namespace) -> int:
    settings: Settings | None = None
    if args.url:
        configure_logging(LogSettings(level="warning"))
    else:
        settings = load_config(args)
    body = asyncio.run(_gather(args.url, settings))
    print(json.dumps(body, indent=2, sort_keys=False) if args.json else render_text(body))
    return exit_code(str(body.get("status")), strict=args.strict)


async def _gather(url: str | None, settings: Settings | None) -> dict[str, Any]:
    from syncd.daemon.health import fetch_report

    target = url or (listen_url(settings.health.listen) if settings else None)
    if target:
        try:
            _status, body = await fetch_report(target, HTTP_TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            if url or settings is None:
                return {"status": "unhealthy", "tasks": {}, "error": f"cannot reach {target}: {describe(exc)}"}
        else:
            body.setdefault("source", target)
            return body
    assert settings is not None
    return await _from_database(settings)


async def _from_database(settings: Settings) -> dict[str, Any]:
    from syncd.daemon.health import DB_DOWN_ERRORS, report_from_db
    from syncd.db import create_pool, load_queries

    try:
        async with asyncio.timeout(settings.database.connect_timeout_s + 1):
            pool = await create_pool(settings.database, max_size=1)
    except DB_DOWN_ERRORS as exc:
        return {"status": "unhealthy", "tasks": {}, "database": "unreachable", "error": describe(exc)}
    try:
        report = await report_from_db(
            pool,
            load_queries(),
            account_names=[a.name for a in settings.accounts],
            stale_after_s=settings.health.stale_after_s,
        )
    finally:
        await pool.close()
    body = report.body()
    body["source"] = "database"
    return body


def render_text(body: dict[str, Any]) -> str:
    """A few lines for a person: the status, why, and each task's and account's state."""
    lines = [f"status: {body.get('status')}"]
    if body.get("error"):
        lines.append(f"error: {body['error']}")
    for reason in body.get("reasons") or []:
        lines.append(f"  - {reason}")
    for name, task in (body.get("tasks") or {}).items():
        err = f", error: {task['last_error']}" if task.get("last_error") else ""
        fails = task.get("consecutive_failures") or 0
        lines.append(f"{name}: last ok {task.get('last_ok_at') or 'never'}, failures {fails}{err}")
        for acct, view in (task.get("accounts") or {}).items():
            state = f"error: {view['last_error']}" if view.get("last_error") else "ok"
            lines.append(f"  {acct}: {state} (last ok {view.get('last_ok_at') or 'never'})")
    for acct, streams in (body.get("quote_streams") or {}).items():
        for name, view in streams.items():
            age = view.get("last_event_age_s")
            seen = "no event yet" if age is None else f"last event {age:g}s ago"
            err = f", error: {view['error']}" if view.get("error") else ""
            lines.append(f"quotes {acct}/{name}: {view.get('state')}, {view.get('subscribed', 0)} symbols, {seen}{err}")
    return "\n".join(lines)
