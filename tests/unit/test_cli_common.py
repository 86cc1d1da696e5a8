"""syncd.cli.common.chosen_accounts: what ``--account NAME`` selects, shared by the commands."""

from __future__ import annotations

import pytest

from syncd.cli.common import EXIT_CONFIG, CommandError, chosen_accounts
from syncd.settings import AccountSettings, Settings


def _settings(*names: str) -> Settings:
    return Settings(
        database={"dsn": "postgresql://127.0.0.1/x"},
        accounts=[AccountSettings(name=n, broker="tradier", account_id="VA1", token="t") for n in names],
    )


def test_no_names_means_every_account() -> None:
    assert chosen_accounts(_settings("a", "b"), None) is None
    assert chosen_accounts(_settings("a", "b"), []) is None


def test_names_kept_in_order_once_each() -> None:
    assert chosen_accounts(_settings("a", "b", "c"), ["c", "a", "c"]) == ["c", "a"]


def test_unknown_names_are_a_configuration_error_naming_each() -> None:
    with pytest.raises(CommandError) as info:
        chosen_accounts(_settings("b", "a"), ["a", "x", "y"])
    assert info.value.exit_code == EXIT_CONFIG
    assert str(info.value) == "no account named x, y in the configuration (configured: a, b)"
    with pytest.raises(CommandError, match=r"\(configured: none\)"):
        chosen_accounts(_settings(), ["x"])
