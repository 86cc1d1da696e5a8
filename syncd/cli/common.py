"""What every command shares: configuration loading, logging set-up, account selection, exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # each command imports what it needs when it runs, so ``syncd --help`` stays instant
    from syncd.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_MISMATCH = 3


class CommandError(Exception):
    """A command cannot go on; ``exit_code`` is what the process returns."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def load_config(args: argparse.Namespace, *, setup_logging: bool = True) -> Settings:
    """Resolve ``--config`` (docs/configuration.md), validate, and configure logging from it.

    Raises ``CommandError`` with exit code 2 when the configuration is invalid.
    """
    from syncd.logs import configure_logging
    from syncd.settings import ConfigError, load_settings, resolve_config_path

    path = resolve_config_path(getattr(args, "config", None))
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_CONFIG) from None
    if setup_logging:
        configure_logging(settings.log, secrets=settings.secret_values())
    return settings


def chosen_accounts(settings: Settings, names: Sequence[str] | None) -> list[str] | None:
    """The account names a command's ``--account`` options ask for (``None``: all), in order, once each.

    Raises ``CommandError`` with exit code 2 naming every one the configuration lacks.
    """
    if not names:
        return None
    configured = {a.name for a in settings.accounts}
    unknown = [n for n in names if n not in configured]
    if unknown:
        have = ", ".join(sorted(configured)) or "none"
        raise CommandError(
            f"no account named {', '.join(unknown)} in the configuration (configured: {have})", EXIT_CONFIG
        )
    return list(dict.fromkeys(names))


def fail(message: str) -> None:
    """A command's error for a person, on stderr."""
    print(f"syncd: {message}", file=sys.stderr)
