"""``syncd run [--no-migrate]``: the daemon (docs/commands.md). Exit 0 clean stop, 2 bad config, 1 fatal."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING, Any

from syncd.cli.common import EXIT_FAILED, EXIT_OK, load_config

if TYPE_CHECKING:  # imported when the command runs, so ``syncd --help`` stays instant
    from syncd.settings import Settings


def _log() -> Any:
    import structlog

    return structlog.get_logger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="the daemon: accountSync, tradeCycle, monitorCycle until SIGTERM/SIGINT",
        description="Apply pending migrations (unless --no-migrate), then run accountSync, tradeCycle and "
        "monitorCycle as supervised tasks, with the health listener, until SIGTERM or SIGINT. "
        "Exit 0 on a clean stop, 2 on a bad configuration, 1 on a fatal error.",
    )
    parser.add_argument("--no-migrate", action="store_true", help="do not apply pending migrations first")
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    settings = load_config(args)  # CommandError(exit 2) on a bad config
    try:
        asyncio.run(run_until_signalled(settings, migrate=not args.no_migrate))
    except Exception as exc:  # noqa: BLE001  # the daemon's last line of defence: logged with exc_info, exit 1
        # Logged only: stderr stays one JSON object per line (docs/operations.md), no plain "syncd: ..." after it.
        from syncd.errors import describe

        _log().error("daemon_fatal", error=describe(exc), exc_info=exc)
        return EXIT_FAILED
    return EXIT_OK


async def run_until_signalled(settings: Settings, *, migrate: bool) -> None:
    """``serve`` with SIGTERM and SIGINT setting its stop Event (and doing nothing else)."""
    from syncd.daemon.supervisor import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, _request_stop, stop, sig)
    try:
        await serve(settings, stop=stop, migrate=migrate)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _request_stop(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        _log().info("stop_already_requested", signal=sig.name)
    else:
        _log().info("stop_requested", signal=sig.name)
    stop.set()
