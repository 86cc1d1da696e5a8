"""`syncd config check` and `--help`, run as a user would: the real console entry point in a subprocess."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "syncd.toml.example"
SECRETS = {
    "SYNCD_ACCOUNTS__ALPACA_PAPER__API_SECRET": "alpaca-secret-VALUE-1",
    "SYNCD_ACCOUNTS__TRADIER_MAIN__TOKEN": "tradier-token-VALUE-2",
}


def syncd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def test_example_config_passes_config_check_as_shipped() -> None:
    """Regression: the example named secret files that do not exist, so `config check` on it failed (exit 2)."""
    result = syncd("--config", str(EXAMPLE), "config", "check")
    assert result.returncode == 0, result.stderr
    for placeholder in ("PKEXAMPLEKEY000000", "EXAMPLE-SECRET-REPLACE-ME", "EXAMPLE-TOKEN-REPLACE-ME"):
        assert placeholder in EXAMPLE.read_text()
        assert placeholder not in result.stdout + result.stderr


def test_example_config_is_valid_with_secrets_from_env() -> None:
    result = syncd("--config", str(EXAMPLE), "config", "check", env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert 'name = "alpaca-paper"' in result.stdout
    for secret in [*SECRETS.values(), "PKEXAMPLEKEY000000"]:
        assert secret not in result.stdout + result.stderr


def test_example_config_is_valid_with_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("alpaca-secret-from-file")
    (tmp_path / "t").write_text("tradier-token-from-file")
    env = {
        "SYNCD_ACCOUNTS__ALPACA_PAPER__API_SECRET_FILE": str(tmp_path / "a"),
        "SYNCD_ACCOUNTS__TRADIER_MAIN__TOKEN_FILE": str(tmp_path / "t"),
    }
    result = syncd("--config", str(EXAMPLE), "config", "check", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert "from-file" not in result.stdout + result.stderr


def test_example_documents_every_key() -> None:
    """Each settings field appears in syncd.toml.example (as a key or a commented key)."""
    from syncd.settings import AccountSettings, Settings

    text = EXAMPLE.read_text()
    for section_name, section in Settings.model_fields.items():
        model = AccountSettings if section_name == "accounts" else section.annotation
        fields = model.model_fields  # type: ignore[union-attr]
        for name, info in fields.items():
            key = info.alias or name
            assert f"{key} =" in text, f"{section_name}.{key} is not documented in syncd.toml.example"


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[cycles]\nconcurrency = 7\n")
    result = syncd("config", "check", env={"SYNCD_CONFIG": str(cfg)})
    assert result.returncode == 0 and "concurrency = 7" in result.stdout


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("[database]\nbogus = 1\n", {}, "database.bogus: unknown key"),
        ("[cycles]\nconcurrency = 0\n", {}, "cycles.concurrency"),
        ("", {"SYNCD_TRADING__ENABLED": "maybe"}, "SYNCD_TRADING__ENABLED (trading.enabled)"),
        ("", {"SYNCD_CYCLES__CONCURRENCY": "many"}, "SYNCD_CYCLES__CONCURRENCY (cycles.concurrency)"),
        (
            '[[accounts]]\nname = "paper"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\n'
            '[[accounts]]\nname = "live"\nbroker = "alpaca"\napi_key = "k"\n',
            {},
            'accounts["live"]: alpaca account needs api_secret',
        ),
    ],
)
def test_invalid_config_exits_2_naming_the_key(tmp_path: Path, text: str, env: dict[str, str], needle: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    result = syncd("--config", str(cfg), "config", "check", env=env)
    assert result.returncode == 2
    assert needle in result.stderr
    assert result.stdout == ""


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found.extend(_commands(sub, (*prefix, name)))
    return found


@pytest.mark.parametrize("command", _commands(build_parser()), ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = syncd(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: syncd" in result.stdout


# -- the DSN's password never printed, in any form libpq takes (issue 10 item 6) ------------------------------

DSN_FORMS = {
    "url-userinfo": ("postgresql://u:Pw-Userinfo-1@127.0.0.1:9/db", "Pw-Userinfo-1"),
    "postgres-scheme": ("postgres://u:Pw-Scheme-2@127.0.0.1:9/db", "Pw-Scheme-2"),
    "url-query": ("postgresql://u@127.0.0.1:9/db?password=Pw-Query-3", "Pw-Query-3"),
    "keyword": ("host=127.0.0.1 port=9 dbname=db user=u password=Pw-Keyword-4", "Pw-Keyword-4"),
    "keyword-quoted": ("host=127.0.0.1 port=9 dbname=db password='Pw Quoted 5'", "Pw Quoted 5"),
}


@pytest.mark.parametrize("form", sorted(DSN_FORMS))
@pytest.mark.parametrize("as_json", [False, True], ids=["toml", "json"])
def test_config_check_never_prints_the_dsn_password(form: str, as_json: bool) -> None:
    dsn, password = DSN_FORMS[form]
    result = syncd("config", "check", *(["--json"] if as_json else []), env={"SYNCD_DATABASE__DSN": dsn})
    assert result.returncode == 0, result.stderr
    assert "***" in result.stdout
    assert password not in result.stdout + result.stderr


@pytest.mark.parametrize("form", sorted(DSN_FORMS))
def test_logs_never_carry_the_dsn_password(form: str) -> None:
    """``migrate`` against a closed port logs its failure; the password is nowhere in the output."""
    dsn, password = DSN_FORMS[form]
    env = {"SYNCD_DATABASE__DSN": dsn, "SYNCD_DATABASE__CONNECT_TIMEOUT_S": "2", "SYNCD_LOG__LEVEL": "debug"}
    result = syncd("migrate", env=env)
    assert result.returncode != 0
    assert result.stderr  # it did log
    assert password not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SYNCD_DATABASE__DSN": "postgresql://u:Pw-Port-6@127.0.0.1:abc/db"}, "database.dsn"),
        ({"SYNCD_DATABASE__DSN": "host=h port=x5 password=Pw-Port-7"}, "database.dsn"),
        ({"SYNCD_DATABASE__DSN": "host=h password='Pw-Open-8"}, "database.dsn"),
        ({"SYNCD_DATABASE__DSN": "postgresql://u:Pw-V6-9@[::1/db"}, "database.dsn"),
        ({"SYNCD_DATABASE__SCHEMA": "information_schema"}, "database.schema"),
        ({"SYNCD_DATABASE__SCHEMA": "pg_catalog"}, "database.schema"),
    ],
)
def test_bad_dsn_or_system_schema_is_exit_2_at_config_check(env: dict[str, str], needle: str) -> None:
    for command in (("config", "check"), ("migrate",)):
        result = syncd(*command, env=env)
        assert result.returncode == 2, result.stderr
        assert needle in result.stderr
        assert "Pw-" not in result.stdout + result.stderr
