"""Configuration: ``syncd.toml`` validated by pydantic-settings, overridden by ``SYNCD_*``.

Precedence (lowest first): defaults < TOML file < environment. A section key is
overridden by ``SYNCD_<SECTION>__<KEY>``; an account's key by
``SYNCD_ACCOUNTS__<NAME or INDEX>__<KEY>`` (the name upper-cased, ``-`` and ``.``
as ``_``). A secret (``api_key``, ``api_secret``, ``token``) may be given as
``<key>_file``: a path whose contents are the secret. An unknown key anywhere is
an error that names it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "SYNCD_"
DEFAULT_PATHS = (Path("syncd.toml"), Path("/etc/syncd/syncd.toml"))
SECRET_KEYS = ("api_key", "api_secret", "token")
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and what was wrong."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Section):
    dsn: str = "postgresql://localhost/syncd"
    schema_: str = Field("syncd", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    pool_min: int = Field(1, ge=1, le=100)
    pool_max: int = Field(10, ge=1, le=200)
    connect_timeout_s: float = Field(10, gt=0, le=300)
    retention_days: int = Field(7, ge=1, le=3_650)  # sync_runs older than this are deleted by `syncd run`

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("dsn")
    @classmethod
    def _dsn_is_postgres(cls, v: str) -> str:
        parse_dsn(v)  # ValueError (naming no secret) when libpq or asyncpg could not use it
        return v

    @field_validator("schema_")
    @classmethod
    def _not_a_system_schema(cls, v: str) -> str:
        if v == "information_schema" or v.startswith("pg_"):
            raise ValueError(f'{v!r} is a PostgreSQL system schema; choose a schema of syncd\'s own (e.g. "syncd")')
        return v

    @property
    def url(self) -> str:
        """The DSN as the URL asyncpg takes: the URL form as given, key=value pairs as query parameters."""
        return dsn_url(self.dsn)

    @model_validator(mode="after")
    def _pool_bounds(self) -> DatabaseSettings:
        if self.pool_min > self.pool_max:
            raise ValueError(f"pool_min ({self.pool_min}) exceeds pool_max ({self.pool_max})")
        return self


class CyclesSettings(_Section):
    account_interval_s: float = Field(30, ge=1, le=86_400)
    trade_interval_s: float = Field(60, ge=1, le=86_400)
    monitor_interval_s: float = Field(60, ge=1, le=86_400)
    closed_market_interval_s: float = Field(300, ge=1, le=86_400)
    concurrency: int = Field(32, ge=1, le=1_000)
    broker_timeout_s: float = Field(10, gt=0, le=300)
    jitter_pct: float = Field(10, ge=0, le=50)
    auto_import: bool = False
    stream: bool = True  # consume the broker's trade stream where it has one
    lease_heartbeat_s: float = Field(10, ge=0.5, le=300)  # replicas: leases lapse after 3 heartbeats
    shutdown_timeout_s: float = Field(20, ge=0, le=600)  # SIGTERM: passes in flight may finish this long


class TradingSettings(_Section):
    enabled: bool = False
    auto_exits: bool = False
    exit_days_before_expiration: int = Field(0, ge=0, le=365)


class HealthSettings(_Section):
    listen: str = "127.0.0.1:9108"
    stale_after_s: float = Field(300, ge=5, le=86_400)
    instance: str = ""  # defaults to hostname:pid at run time

    @field_validator("listen")
    @classmethod
    def _listen_host_port(cls, v: str) -> str:
        if v == "":
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65_535:
            raise ValueError('must be "host:port" (port 0-65535) or "" to turn the listener off')
        return v


class LogSettings(_Section):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


def _check_url(v: str | None, schemes: tuple[str, ...]) -> str | None:
    if v is None:
        return v
    parts = urlsplit(v)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"must be a {'/'.join(schemes)} URL, got {v!r}")
    return v.rstrip("/")


class AccountSettings(_Section):
    name: str = Field(pattern=_NAME_RE)
    broker: Literal["alpaca", "tradier"]
    paper: bool = True  # alpaca: paper or live endpoints
    sandbox: bool = True  # tradier: sandbox or live endpoints
    account_id: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,32}$")  # tradier
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    api_secret: SecretStr | None = None
    api_secret_file: Path | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    base_url: str | None = None
    data_url: str | None = None
    stream_url: str | None = None
    rate_limit_per_min: int | None = Field(None, ge=1, le=10_000)  # default: the broker's budget
    # -- live quotes for exits (docs/configuration.md, "Exits on live quotes") --
    stream_quotes: bool = True  # subscribe to live quotes for open trades' legs where the broker has a data stream
    quote_flush_interval_s: float = Field(1.0, ge=0.05, le=60)  # coalesced quotes reach the database this often
    quote_symbols_limit: int = Field(30, ge=1, le=100_000)  # symbols one quote connection subscribes at most
    data_stream_url: str | None = None  # alpaca: scheme and host; syncd adds /v2/{data_feed}, /v1beta1/{option_feed}
    data_feed: Literal["iex", "sip", "delayed_sip", "test"] = "iex"  # alpaca stocks
    option_feed: Literal["indicative", "opra"] = "indicative"  # alpaca options
    market_stream_url: str | None = None  # tradier: the market events websocket (the whole URL)

    @field_validator("data_stream_url")
    @classmethod
    def _ws_host(cls, v: str | None) -> str | None:
        url = _check_url(v, ("ws", "wss"))
        if url is not None:
            parts = urlsplit(url)
            if parts.path or parts.query or parts.fragment:
                raise ValueError(f"must be scheme and host only (syncd adds /v2/{{feed}}), got {v!r}")
        return url

    @field_validator("market_stream_url")
    @classmethod
    def _ws_market(cls, v: str | None) -> str | None:
        return _check_url(v, ("ws", "wss"))

    @field_validator("base_url", "data_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        url = _check_url(v, ("http", "https"))
        if url is not None:
            parts = urlsplit(url)
            if parts.path or parts.query or parts.fragment:
                # docs/configuration.md: scheme and host only; the adapters add /v2, /v1 themselves.
                raise ValueError(f"must be scheme and host only (no path such as /v2), got {v!r}")
        return url

    @field_validator("stream_url")
    @classmethod
    def _ws_url(cls, v: str | None) -> str | None:
        return _check_url(v, ("ws", "wss"))

    @model_validator(mode="after")
    def _secrets_and_required(self) -> AccountSettings:
        for key in SECRET_KEYS:
            value: SecretStr | None = getattr(self, key)
            path: Path | None = getattr(self, f"{key}_file")
            if value is not None and path is not None:
                raise ValueError(f"{key} and {key}_file are both set; give one")
            if path is not None:
                object.__setattr__(self, key, SecretStr(_read_secret_file(path, f"{key}_file")))
        required = ("api_key", "api_secret") if self.broker == "alpaca" else ("token", "account_id")
        for key in required:
            if getattr(self, key) is None:
                hint = f" (or {key}_file)" if key in SECRET_KEYS else ""
                raise ValueError(f"{self.broker} account needs {key}{hint}")
        return self

    def secret_values(self) -> list[str]:
        return [s.get_secret_value() for k in SECRET_KEYS if (s := getattr(self, k)) is not None]


def _read_secret_file(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{key}: cannot read {str(path)!r}: {exc.strerror}") from None
    if not text:
        raise ValueError(f"{key}: {str(path)!r} is empty")
    return text


def _read_sources(path: Path | None, env: Mapping[str, str], origins: _Origins) -> dict[str, Any]:
    """TOML file, then ``SYNCD_`` environment overrides (sections and accounts).

    ``origins`` learns which keys came from which variable. Plain pydantic, not
    pydantic-settings: importing that package cost about 40 ms of every start-up.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r}: not valid TOML: {exc}") from None
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        where = _apply_env(data, name, name[len(ENV_PREFIX) :].lower().split("__"), value)
        origins.env[where] = name
    accounts = data.get("accounts")
    if isinstance(accounts, list):
        origins.account_names = [
            str(a["name"]) if isinstance(a, dict) and isinstance(a.get("name"), str) and a["name"] else None
            for a in accounts
        ]
    return data


def _account_env_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "_", name.lower())


def _apply_env(data: dict[str, Any], var: str, parts: list[str], value: str) -> tuple[str | int, ...]:
    """Set the value ``var`` names in ``data``; return where it went (a validation error's ``loc``)."""
    if parts[0] == "accounts":
        if len(parts) != 3:
            raise ConfigError(f"{var}: expected SYNCD_ACCOUNTS__<NAME or INDEX>__<KEY>")
        accounts = data.setdefault("accounts", [])
        if not isinstance(accounts, list):
            raise ConfigError("accounts: must be an array of tables ([[accounts]])")
        which, key = parts[1], parts[2]
        target, index = None, -1
        if which.isdigit() and int(which) < len(accounts):
            target, index = accounts[int(which)], int(which)
        else:
            for i, acct in enumerate(accounts):
                if isinstance(acct, dict) and _account_env_key(str(acct.get("name", ""))) == which:
                    target, index = acct, i
        if target is None:
            raise ConfigError(f"{var}: no account named or numbered {which!r} in the config file")
        # The environment overrides the file: a secret given one way replaces the other way.
        if key in SECRET_KEYS:
            target.pop(f"{key}_file", None)
        elif key.removesuffix("_file") in SECRET_KEYS:
            target.pop(key.removesuffix("_file"), None)
        target[key] = value
        return ("accounts", index, key)
    if len(parts) != 2:
        raise ConfigError(f"{var}: expected SYNCD_<SECTION>__<KEY>")
    section = data.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError(f"{parts[0]}: must be a table")
    section[parts[1]] = value
    return (parts[0], parts[1])


@dataclass(slots=True)
class _Origins:
    """What one load learnt for its error messages: which keys came from which variable, the accounts' names."""

    env: dict[tuple[str | int, ...], str] = field(default_factory=dict)
    account_names: list[str | None] = field(default_factory=list)


class Settings(BaseModel):
    database: DatabaseSettings = DatabaseSettings()
    cycles: CyclesSettings = CyclesSettings()
    trading: TradingSettings = TradingSettings()
    health: HealthSettings = HealthSettings()
    log: LogSettings = LogSettings()
    accounts: list[AccountSettings] = []

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @field_validator("accounts")
    @classmethod
    def _unique_names(cls, v: list[AccountSettings]) -> list[AccountSettings]:
        seen: set[str] = set()
        for acct in v:
            if acct.name in seen:
                raise ValueError(f"account name {acct.name!r} appears twice; names must be unique")
            seen.add(acct.name)
        return v

    def secret_values(self) -> list[str]:
        """Every secret in the config, for the log redactor."""
        values = [s for acct in self.accounts for s in acct.secret_values()]
        return values + dsn_secrets(self.database.dsn)

    def account(self, name: str) -> AccountSettings:
        for acct in self.accounts:
            if acct.name == name:
                return acct
        raise KeyError(name)


def resolve_config_path(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """``--config``, then ``$SYNCD_CONFIG``, then ``./syncd.toml``, then ``/etc/syncd/syncd.toml``."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("SYNCD_CONFIG"):
        return Path(env["SYNCD_CONFIG"])
    for candidate in DEFAULT_PATHS:
        if candidate.is_file():
            return candidate
    return None


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Load and validate; raise ``ConfigError`` naming every bad key."""
    origins = _Origins()
    data = _read_sources(path, dict(os.environ if env is None else env), origins)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origins)) from None


def _where(loc: tuple[str | int, ...], origins: _Origins) -> str:
    """A key as the operator wrote it: ``accounts["paper"].api_key``, ``SYNCD_CYCLES__CONCURRENCY (...)``."""
    parts: list[str] = []
    for i, p in enumerate(loc):
        if i == 1 and loc[0] == "accounts" and isinstance(p, int):
            names = origins.account_names
            name = names[p] if p < len(names) else None
            parts[-1] += f'["{name}"]' if name else f"[{p}]"
        else:
            parts.append(str(p))
    text = ".".join(parts)
    for n in range(len(loc), 0, -1):
        var = origins.env.get(loc[:n])
        if var is not None:
            return f"{var} ({text})"
    return text


def format_validation_error(exc: ValidationError, origins: _Origins | None = None) -> str:
    """One line per problem, naming the key (an account by its name, a variable by its name)."""
    origins = origins or _Origins()
    lines = []
    for err in exc.errors(include_url=False):
        loc = _where(tuple(err["loc"]), origins)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] not in ("missing",) and "input" in err and not _looks_secret(loc):
            shown = err["input"]
            if isinstance(shown, (str, int, float, bool)):
                msg = f"{msg} (got {shown!r})"
        lines.append(f"{loc or 'config'}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _looks_secret(loc: str) -> bool:
    return any(k in loc for k in SECRET_KEYS) or "dsn" in loc


# -- the DSN: every form libpq accepts, its secrets, and the URL asyncpg takes -----------------------------

DSN_SCHEMES = ("postgresql://", "postgres://")
DSN_SECRET_KEYS = frozenset({"password", "sslpassword"})
_DSN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DSN_PORT_KEYS = ("port",)


def _unquote_dsn_value(text: str, i: int) -> tuple[str, int, int]:
    """The value of a key=value DSN starting at ``text[i]``: (value, start, end) of its raw span.

    libpq's rules: a value is single-quoted (``\\'`` and ``\\\\`` escaped inside) or runs to the
    next whitespace (backslash escapes allowed).
    """
    start = i
    out: list[str] = []
    if i < len(text) and text[i] == "'":
        i += 1
        while True:
            if i >= len(text):
                raise ValueError("a quoted value in the key=value DSN is not closed")
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 2
                continue
            if ch == "'":
                return "".join(out), start, i + 1
            out.append(ch)
            i += 1
    while i < len(text) and not text[i].isspace():
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out), start, i


def _keyword_pairs(dsn: str) -> list[tuple[str, str, int, int]]:
    """A libpq key=value DSN as (key, value, value start, value end); ValueError when malformed."""
    pairs: list[tuple[str, str, int, int]] = []
    i = 0
    while True:
        while i < len(dsn) and dsn[i].isspace():
            i += 1
        if i >= len(dsn):
            return pairs
        key = _DSN_KEY.match(dsn, i)
        if key is None:
            raise ValueError("must be a postgresql:// URL or libpq key=value pairs")
        i = key.end()
        while i < len(dsn) and dsn[i].isspace():
            i += 1
        if i >= len(dsn) or dsn[i] != "=":
            raise ValueError(f"key {key.group()[:30]!r} of the key=value DSN has no '=' value")
        i += 1
        while i < len(dsn) and dsn[i].isspace():
            i += 1
        value, start, i = _unquote_dsn_value(dsn, i)
        pairs.append((key.group().lower(), value, start, i))


def _check_port(value: str, where: str) -> None:
    for port in value.split(","):
        if not port.isdigit() or not 1 <= int(port) <= 65_535:
            raise ValueError(f"the port {where} must be a number 1-65535, got {port[:10]!r}")


def _url_ports(hostinfo: str) -> list[str]:
    """The ports of a URL's ``host[:port][,host[:port]]...``; ``ValueError`` for one that is not a number."""
    ports: list[str] = []
    for host in hostinfo.split(",") if hostinfo else []:
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                raise ValueError("has an IPv6 host without its closing ']'")
            rest = host[end + 1 :]
            if rest and not rest.startswith(":"):
                raise ValueError("has text after an IPv6 host")
            port = rest[1:]
        else:
            port = host.rpartition(":")[2] if ":" in host else ""
        if port:
            _check_port(port, "in the URL")
            ports.append(port)
    return ports


def _url_query(query: str) -> tuple[dict[str, str], list[str]]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError("has a query string that is not key=value pairs joined by '&'") from None
    out = {key.lower(): value for key, value in pairs}
    raw = [value for key, value in pairs if key.lower() in DSN_SECRET_KEYS]
    for piece in query.split("&"):
        key, _, value = piece.partition("=")
        if unquote(key).lower() in DSN_SECRET_KEYS and value:
            raw.append(value)
    return out, raw


def _url_parts(dsn: str) -> tuple[dict[str, str], list[str]]:
    """A postgresql:// URL's libpq keywords (user, password, port, dbname, query keys) and its secrets as written."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        raise ValueError("is not a parsable postgresql:// URL") from None
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if not at:
        userinfo, hostinfo = "", parts.netloc
    out: dict[str, str] = {}
    raw: list[str] = []
    if userinfo:
        user, colon, password = userinfo.partition(":")
        out["user"] = unquote(user)
        if colon:
            out["password"] = unquote(password)
            raw += [out["password"], password]
    ports = _url_ports(hostinfo)
    if ports:
        out["port"] = ",".join(ports)
    if parts.path.strip("/"):
        out["dbname"] = unquote(parts.path.lstrip("/"))
    if parts.query:
        query, secrets = _url_query(parts.query)
        out.update(query)
        raw += secrets
    return out, raw


def parse_dsn(dsn: str) -> dict[str, str]:
    """The libpq keywords of ``dsn`` (URL or key=value form); ``ValueError`` naming no secret when malformed.

    A port that is not a number is refused here (``syncd config check``), not at connect time.
    """
    if dsn.startswith(DSN_SCHEMES):
        keywords, _ = _url_parts(dsn)
    elif "://" in dsn.split("=", 1)[0] or "=" not in dsn:
        raise ValueError("must be a postgresql:// URL (or libpq key=value pairs: host=... dbname=...)")
    else:
        keywords = {k: v for k, v, _, _ in _keyword_pairs(dsn)}
    for key in _DSN_PORT_KEYS:
        if key in keywords:
            _check_port(keywords[key], f"({key}=)")
    return keywords


def dsn_secrets(dsn: str) -> list[str]:
    """Every secret in ``dsn`` (password, sslpassword), decoded and as written, for the log redactor."""
    try:
        if dsn.startswith(DSN_SCHEMES):
            keywords, raw = _url_parts(dsn)
        else:
            pairs = _keyword_pairs(dsn)
            keywords = {k: v for k, v, _, _ in pairs}
            raw = [dsn[a:b] for k, _, a, b in pairs if k in DSN_SECRET_KEYS]
    except ValueError:
        return []
    values = [keywords[k] for k in DSN_SECRET_KEYS if keywords.get(k)] + raw
    return list(dict.fromkeys(v for v in values if v))


def redact_dsn(dsn: str) -> str:
    """``dsn`` with every secret (userinfo password, ``password=``, ``sslpassword=``) replaced by ``***``."""
    if dsn.startswith(DSN_SCHEMES):
        scheme, _, rest = dsn.partition("://")
        netloc_end = len(rest)
        for sep in "/?#":
            pos = rest.find(sep)
            if pos >= 0:
                netloc_end = min(netloc_end, pos)
        netloc, tail = rest[:netloc_end], rest[netloc_end:]
        userinfo, at, hostinfo = netloc.rpartition("@")
        if at and ":" in userinfo:
            netloc = userinfo.partition(":")[0] + ":***@" + hostinfo
        tail = re.sub(r"(?i)([?&](?:ssl)?password=)[^&#]*", lambda m: m.group(1) + "***", tail)
        return f"{scheme}://{netloc}{tail}"
    try:
        pairs = _keyword_pairs(dsn)
    except ValueError:
        return "***"  # unparsable: show nothing of it
    out, last = [], 0
    for key, _, start, end in pairs:
        if key in DSN_SECRET_KEYS:
            out += [dsn[last:start], "***"]
            last = end
    return "".join(out) + dsn[last:]


def dsn_url(dsn: str) -> str:
    """``dsn`` as a URL asyncpg understands (asyncpg takes no key=value form): every keyword a query parameter."""
    if dsn.startswith(DSN_SCHEMES):
        return dsn
    keywords = {k: v for k, v, _, _ in _keyword_pairs(dsn)}
    return "postgresql://?" + urlencode(keywords, quote_via=quote)


def redacted_dict(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, every secret replaced by ``"***"``."""
    data = settings.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["database"]["dsn"] = redact_dsn(settings.database.dsn)
    for acct in data["accounts"]:
        for key in SECRET_KEYS:
            if key in acct:
                acct[key] = "***"
    return data


def to_toml(data: Mapping[str, Any]) -> str:
    """Render the (flat-sectioned) config as TOML for ``syncd config check``."""
    out: list[str] = []
    for section, body in data.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{section}]]")
                out.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
                out.append("")
        else:
            out.append(f"[{section}]")
            out.extend(f"{k} = {_toml_value(v)}" for k, v in body.items())
            out.append("")
    return "\n".join(out)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
