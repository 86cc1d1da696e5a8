"""Configuration (docs/configuration.md): precedence, secrets from files, and every way to get it wrong."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from syncd.settings import (
    AccountSettings,
    ConfigError,
    CyclesSettings,
    DatabaseSettings,
    HealthSettings,
    LogSettings,
    TradingSettings,
    load_settings,
    redacted_dict,
    resolve_config_path,
    to_toml,
)

CONFIG_DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
SECTIONS: dict[str, type[BaseModel]] = {
    "database": DatabaseSettings,
    "cycles": CyclesSettings,
    "trading": TradingSettings,
    "health": HealthSettings,
    "log": LogSettings,
}

ALPACA = """
[[accounts]]
name = "alpaca-paper"
broker = "alpaca"
api_key = "PKFILEKEY"
api_secret = "file-secret-value"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    s = load_settings(None, {})
    assert s.database.schema_ == "syncd"
    assert s.cycles.account_interval_s == 30
    assert s.trading.enabled is False
    assert s.health.listen == "127.0.0.1:9108"
    assert s.accounts == []


def test_file_then_env_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, '[cycles]\nconcurrency = 8\naccount_interval_s = 12\n[database]\nschema = "a"\n' + ALPACA)
    s = load_settings(path, {"SYNCD_CYCLES__CONCURRENCY": "64", "SYNCD_DATABASE__SCHEMA": "b"})
    assert s.cycles.concurrency == 64  # env beats file
    assert s.cycles.account_interval_s == 12  # file beats default
    assert s.database.schema_ == "b"


def test_env_overrides_an_account_by_name_or_index(tmp_path: Path) -> None:
    path = write(tmp_path, ALPACA)
    s = load_settings(path, {"SYNCD_ACCOUNTS__ALPACA_PAPER__API_KEY": "PKENV", "SYNCD_ACCOUNTS__0__PAPER": "false"})
    acct = s.accounts[0]
    assert acct.api_key is not None and acct.api_key.get_secret_value() == "PKENV"
    assert acct.paper is False


def test_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    path = write(tmp_path, ALPACA.replace('api_secret = "file-secret-value"', f'api_secret_file = "{secret}"'))
    acct = load_settings(path, {}).accounts[0]
    assert acct.api_secret is not None and acct.api_secret.get_secret_value() == "from-a-file"


def test_env_secret_replaces_the_files_secret_file(tmp_path: Path) -> None:
    path = write(tmp_path, ALPACA.replace('api_secret = "file-secret-value"', 'api_secret_file = "/nonexistent"'))
    acct = load_settings(path, {"SYNCD_ACCOUNTS__ALPACA_PAPER__API_SECRET": "env-secret"}).accounts[0]
    assert acct.api_secret is not None and acct.api_secret.get_secret_value() == "env-secret"


def test_secret_file_from_env(tmp_path: Path) -> None:
    secret = tmp_path / "tok"
    secret.write_text("tradier-token")
    path = write(tmp_path, '[[accounts]]\nname = "t"\nbroker = "tradier"\naccount_id = "VA1"\n')
    s = load_settings(path, {"SYNCD_ACCOUNTS__T__TOKEN_FILE": str(secret)})
    assert s.accounts[0].token is not None and s.accounts[0].token.get_secret_value() == "tradier-token"


def test_config_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("/x.toml", {"SYNCD_CONFIG": "/y.toml"}) == Path("/x.toml")
    assert resolve_config_path(None, {"SYNCD_CONFIG": "/y.toml"}) == Path("/y.toml")
    assert resolve_config_path(None, {}) in (None, Path("/etc/syncd/syncd.toml"))
    (tmp_path / "syncd.toml").write_text("")
    assert resolve_config_path(None, {}) == Path("syncd.toml")


def test_redacted_output_has_no_secret(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\ndsn = "postgresql://u:db-password@h/d"\n' + ALPACA)
    s = load_settings(path, {})
    text = to_toml(redacted_dict(s))
    for secret in ("PKFILEKEY", "file-secret-value", "db-password"):
        assert secret not in text
    assert 'api_secret = "***"' in text
    assert "postgresql://u:***@h/d" in text
    assert set(s.secret_values()) == {"PKFILEKEY", "file-secret-value", "db-password"}


INVALID = [
    ("[database]\npool_max = 0\n", {}, "database.pool_max"),
    ("[database]\npool_min = 5\npool_max = 2\n", {}, "pool_min (5) exceeds pool_max (2)"),
    ('[database]\nschema = "Bad-Name"\n', {}, "database.schema"),
    ('[database]\ndsn = "mysql://x"\n', {}, "database.dsn: must be a postgresql:// URL"),
    ("[database]\nnope = 1\n", {}, "database.nope: unknown key"),
    ("[cycles]\nconcurrency = 100000\n", {}, "cycles.concurrency"),
    ("[cycles]\nbroker_timeout_s = 0\n", {}, "cycles.broker_timeout_s"),
    ('[cycles]\naccount_interval_s = "soon"\n', {}, "cycles.account_interval_s"),
    ("[trading]\nexit_days_before_expiration = -1\n", {}, "trading.exit_days_before_expiration"),
    ('[health]\nlisten = "9108"\n', {}, "health.listen"),
    ('[log]\nformat = "xml"\n', {}, "log.format"),
    ("[unknown]\nx = 1\n", {}, "unknown: unknown key"),
    ("not toml = = 1", {}, "not valid TOML"),
    ('[[accounts]]\nname = "a"\nbroker = "ib"\n', {}, 'accounts["a"].broker'),
    ('[[accounts]]\nname = "a"\nbroker = "alpaca"\napi_key = "k"\n', {}, "alpaca account needs api_secret"),
    ('[[accounts]]\nname = "t"\nbroker = "tradier"\ntoken = "tok"\n', {}, "tradier account needs account_id"),
    (
        '[[accounts]]\nname = "a"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\napi_secret_file = "/f"\n',
        {},
        "api_secret and api_secret_file are both set",
    ),
    (
        '[[accounts]]\nname = "a"\nbroker = "alpaca"\napi_key = "k"\napi_secret_file = "/nonexistent/s"\n',
        {},
        "api_secret_file: cannot read",
    ),
    (
        '[[accounts]]\nname = "a"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\nbase_url = "ftp://x"\n',
        {},
        'accounts["a"].base_url',
    ),
    (
        '[[accounts]]\nname = "a"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\nstream_url = "http://x"\n',
        {},
        'accounts["a"].stream_url',
    ),
    (
        '[[accounts]]\nname = "a"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\n'
        'base_url = "https://paper-api.alpaca.markets/v2"\n',
        {},
        'accounts["a"].base_url: must be scheme and host only',
    ),
    (
        '[[accounts]]\nname = "a"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\n'
        'data_url = "https://data.alpaca.markets/v2/stocks"\n',
        {},
        'accounts["a"].data_url: must be scheme and host only',
    ),
    (
        '[[accounts]]\nname = "t"\nbroker = "tradier"\ntoken = "tok"\naccount_id = "VA1"\n'
        'base_url = "https://sandbox.tradier.com/v1/"\n',
        {},
        'accounts["t"].base_url: must be scheme and host only',
    ),
    (
        '[[accounts]]\nname = "a"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\ncolour = "red"\n',
        {},
        'accounts["a"].colour: unknown key',
    ),
    ('[[accounts]]\nname = "a b"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\n', {}, 'accounts["a b"].name'),
    ('[[accounts]]\nname = "a"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\n' * 2, {}, "appears twice"),
    ("", {"SYNCD_CYCLES__CONCURRENCY": "many"}, "SYNCD_CYCLES__CONCURRENCY (cycles.concurrency): "),
    ("", {"SYNCD_CYCLES__NOPE": "1"}, "SYNCD_CYCLES__NOPE (cycles.nope): unknown key"),
    (
        '[[accounts]]\nname = "paper"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\n',
        {"SYNCD_ACCOUNTS__PAPER__BASE_URL": "ftp://x"},
        'SYNCD_ACCOUNTS__PAPER__BASE_URL (accounts["paper"].base_url): ',
    ),
    (
        '[[accounts]]\nname = "paper"\nbroker = "alpaca"\napi_key = "k"\napi_secret = "s"\n',
        {"SYNCD_ACCOUNTS__0__BROKER": "ib"},
        'SYNCD_ACCOUNTS__0__BROKER (accounts["paper"].broker): ',
    ),
    ('[[accounts]]\nbroker = "alpaca"\n', {}, "accounts[0].name: Field required"),
    ("", {"SYNCD_ACCOUNTS__GHOST__API_KEY": "x"}, "no account named or numbered 'ghost'"),
    ("", {"SYNCD_DATABASE__A__B": "x"}, "expected SYNCD_<SECTION>__<KEY>"),
]


@pytest.mark.parametrize(("text", "env", "expected"), INVALID)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env)
    assert expected in str(info.value)


def test_invalid_secret_value_is_not_echoed(tmp_path: Path) -> None:
    """A bad value is quoted in the error, except under a secret key."""
    text = '[[accounts]]\nname = "a"\nbroker = "alpaca"\napi_key = ["not-a-string-secret"]\napi_secret = "s"\n'
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {})
    assert 'accounts["a"].api_key' in str(info.value)
    assert "not-a-string-secret" not in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(tmp_path / "absent.toml", {})


def _config_doc_toml() -> str:
    """The one ```toml block of docs/configuration.md."""
    blocks = re.findall(r"```toml\n(.*?)```", CONFIG_DOC.read_text(), re.S)
    assert len(blocks) == 1, f"{CONFIG_DOC} should have exactly one toml block, has {len(blocks)}"
    return str(blocks[0])


def _doc_keys(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def test_config_doc_example_is_valid_and_its_values_are_the_defaults(tmp_path: Path) -> None:
    """docs/configuration.md's toml block, verbatim: every key exists under that name, every key of every
    section is in it, and its values are the defaults (so the documented defaults cannot drift)."""
    secrets = {"api_secret_file": tmp_path / "alpaca-secret", "token_file": tmp_path / "tradier-token"}
    text = _config_doc_toml()
    for key, path in secrets.items():
        path.write_text(f"{key}-value\n")
        text = re.sub(rf'^{key} = ".*"$', f'{key} = "{path}"', text, flags=re.M)
    s = load_settings(write(tmp_path, text), {})
    defaults = load_settings(None, {})
    parsed = tomllib.loads(text)
    for section, model in SECTIONS.items():
        assert getattr(s, section) == getattr(defaults, section), section
        assert set(parsed[section]) == _doc_keys(model), f"[{section}] in {CONFIG_DOC.name} lacks or adds keys"
    alpaca, tradier = s.accounts
    assert (alpaca.name, alpaca.broker, alpaca.paper) == ("alpaca-paper", "alpaca", True)
    assert alpaca.api_secret is not None and alpaca.api_secret.get_secret_value() == "api_secret_file-value"
    expected = ("tradier-main", "tradier", "VA00000000", True)
    assert (tradier.name, tradier.broker, tradier.account_id, tradier.sandbox) == expected
    assert tradier.token is not None and tradier.token.get_secret_value() == "token_file-value"


# -- the DSN's secrets in every form libpq takes, and the schema -------------------------------------------------

# (dsn, its password(s)): each form libpq accepts.
DSN_FORMS = [
    ("postgresql://u:pw-userinfo@h/db", ["pw-userinfo"]),
    ("postgres://u:pw-postgres@h:5432/db", ["pw-postgres"]),
    ("postgresql://u@h/db?password=pw-query&sslmode=prefer", ["pw-query"]),
    ("postgresql://h/db?sslmode=require&password=pw-last", ["pw-last"]),
    ("postgresql://u:p%40ss-enc@h/db", ["p@ss-enc", "p%40ss-enc"]),
    ("postgresql://u:pw-both@h/db?password=pw-query2", ["pw-both", "pw-query2"]),
    ("host=h dbname=d user=u password=pw-keyword", ["pw-keyword"]),
    ("host=h password='p w quoted' dbname=d", ["p w quoted"]),
    ("host = h  password = 'it\\'s-escaped'", ["it's-escaped"]),
    ("host=h sslpassword=pw-sslkey", ["pw-sslkey"]),
]


@pytest.mark.parametrize(("dsn", "passwords"), DSN_FORMS)
def test_dsn_password_is_redacted_in_every_form(tmp_path: Path, dsn: str, passwords: list[str]) -> None:
    """Guards issue 10 item 6: a ?password= (and the key=value forms) was printed in clear by config check."""
    s = load_settings(None, {"SYNCD_DATABASE__DSN": dsn})
    text = to_toml(redacted_dict(s))
    for password in passwords:
        assert password not in text
        assert password in s.secret_values()  # the log redactor removes it wherever it appears
    assert "***" in text


def test_key_value_dsn_is_given_to_asyncpg_as_a_url() -> None:
    s = load_settings(None, {"SYNCD_DATABASE__DSN": "host=/tmp port=5433 dbname=d user=u password='p w'"})
    assert s.database.url == "postgresql://?host=%2Ftmp&port=5433&dbname=d&user=u&password=p%20w"
    url = "postgresql://u:pw@h/db?sslmode=require"
    assert load_settings(None, {"SYNCD_DATABASE__DSN": url}).database.url == url


BAD_DSNS = [
    "mysql://x",
    "postgresql://u:pw@h:abc/db",  # non-numeric port: config check, not migrate
    "postgresql://u:pw@h:99999/db",
    "postgresql://h/db?port=five",
    "host=h port=abc password=pw-x",
    "host=h password='pw-unclosed",
    "postgresql://u:pw-v6@[::1/db",
    "postgresql://h/db?sslmode",
    "just some words",
]


@pytest.mark.parametrize("dsn", BAD_DSNS)
def test_unusable_dsn_is_a_config_error_naming_the_key_and_no_secret(dsn: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"SYNCD_DATABASE__DSN": dsn})
    message = str(info.value)
    assert "database.dsn" in message
    assert "pw" not in message.replace("passwords", "")  # neither the DSN nor its password is echoed


@pytest.mark.parametrize("schema", ["information_schema", "pg_catalog", "pg_toast", "pg_temp_1", "pg_mine"])
def test_system_schema_is_refused(schema: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"SYNCD_DATABASE__SCHEMA": schema})
    assert "database.schema" in str(info.value) and "system schema" in str(info.value)


@pytest.mark.parametrize("schema", ["public", "syncd", "pgx", "my_pg_schema"])
def test_ordinary_schemas_are_fine(schema: str) -> None:
    assert load_settings(None, {"SYNCD_DATABASE__SCHEMA": schema}).database.schema_ == schema


@pytest.mark.parametrize("section", [*SECTIONS, "accounts"])
def test_config_doc_tables_list_every_key(section: str) -> None:
    """docs/configuration.md has a key table per section naming exactly the keys the code accepts."""
    model = SECTIONS.get(section, AccountSettings)
    heading = f"## `[[{section}]]`" if section == "accounts" else f"## `[{section}]`"
    text = CONFIG_DOC.read_text()
    assert heading in text, heading
    body = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in body.splitlines() if ln.startswith("| `")]
    listed = {key for row in rows for key in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    assert listed == _doc_keys(model), f"{heading}: documents {sorted(listed ^ _doc_keys(model))} wrongly"
