"""The log chain: JSON lines on stderr with the contract's fields, and no secret ever."""

from __future__ import annotations

import io
import json
import logging

import structlog

from syncd.logs import REDACTED, RedactSecrets, configure_logging
from syncd.settings import LogSettings


def _capture(secrets: list[str], fmt: str = "json") -> io.StringIO:
    buf = io.StringIO()
    configure_logging(LogSettings(format=fmt, level="info"), secrets=secrets, stream=buf)
    return buf


def test_json_line_has_contract_fields() -> None:
    buf = _capture([])
    with structlog.contextvars.bound_contextvars(task="accountSync", account="a1"):
        structlog.get_logger("t").info("account_pass", positions=3)
    line = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert line["event"] == "account_pass"
    assert line["level"] == "info"
    assert line["task"] == "accountSync" and line["account"] == "a1"
    assert line["positions"] == 3
    assert line["timestamp"].endswith("Z")


def test_secrets_redacted_in_values_keys_and_stdlib_records() -> None:
    buf = _capture(["super-secret-value", "PKKEY123"])
    log = structlog.get_logger("t")
    log.info("x", detail="auth with super-secret-value failed", nested={"k": ["PKKEY123"]})
    log.info("y", api_secret="anything", token="tok")
    logging.getLogger("aiohttp.client").warning("header had super-secret-value")
    out = buf.getvalue()
    assert "super-secret-value" not in out and "PKKEY123" not in out and '"tok"' not in out
    assert out.count(REDACTED) >= 4


def test_exception_is_rendered_and_redacted() -> None:
    buf = _capture(["s3cr3t-token"])
    try:
        raise RuntimeError("bad token s3cr3t-token")
    except RuntimeError:
        structlog.get_logger("t").exception("boom")
    assert "s3cr3t-token" not in buf.getvalue()
    assert "RuntimeError" in buf.getvalue()


def test_level_filter() -> None:
    buf = _capture([])
    structlog.get_logger("t").debug("hidden")
    assert "hidden" not in buf.getvalue()


def test_redactor_ignores_short_strings() -> None:
    """A 1-3 character 'secret' would redact ordinary words; it is ignored."""
    r = RedactSecrets(["ab"])
    assert r(None, "info", {"event": "about"})["event"] == "about"


def test_dsn_passwords_are_redacted_from_log_lines_however_short() -> None:
    """Guards issue 10 item 6: a DSN's password (any libpq form) never reaches a log line."""
    from syncd.settings import load_settings

    settings = load_settings(None, {"SYNCD_DATABASE__DSN": "postgresql://u@h/db?password=pw-in-query"})
    buf = _capture(settings.secret_values())
    log = structlog.get_logger("t")
    log.info("x", detail="cannot connect with pw-in-query")
    log.info("y", detail="dsn postgresql://u:pw@h/db and postgres://h/db?sslmode=x&password=pw")
    log.info("z", detail="host=h password='p w' dbname=d", other="sslpassword=k1")
    out = buf.getvalue()
    assert "pw-in-query" not in out and ":pw@" not in out and "password=pw" not in out
    assert "'p w'" not in out and "k1" not in out
    assert "postgresql://u:***@h/db" in out


def test_library_lines_get_a_constant_event_with_their_text_and_logger() -> None:
    """Issue 13: alpaca-py's, websockets', asyncio's... lines are one JSON object with event=library_log."""
    buf = _capture(["sekrit-token"])
    logging.getLogger("alpaca.trading.stream").warning("connected to: %s", "ws://127.0.0.1:1/stream")
    logging.getLogger("websockets.client").error("lost sekrit-token")
    logging.getLogger("asyncio").warning("Task was destroyed but it is pending!")
    lines = [json.loads(line) for line in buf.getvalue().strip().splitlines()]
    assert [(ln["event"], ln["logger"]) for ln in lines] == [
        ("library_log", "alpaca.trading.stream"),
        ("library_log", "websockets.client"),
        ("library_log", "asyncio"),
    ]
    assert lines[0]["message"] == "connected to: ws://127.0.0.1:1/stream"
    assert lines[0]["level"] == "warning" and lines[0]["timestamp"].endswith("Z")
    assert lines[1]["message"] == "lost ***"
    # syncd's own lines keep their event
    structlog.get_logger("syncd.x").info("account_pass", ok=True)
    assert json.loads(buf.getvalue().strip().splitlines()[-1])["event"] == "account_pass"


def test_demoted_events_are_dropped_at_info_unless_they_failed() -> None:
    buf = io.StringIO()
    configure_logging(LogSettings(format="json", level="info"), stream=buf, demote=["account_pass"])
    log = structlog.get_logger("t")
    log.info("account_pass", ok=True)
    log.info("account_pass", ok=False, error="refused")
    log.info("order_filled")
    events = [json.loads(line)["event"] for line in buf.getvalue().strip().splitlines()]
    assert events == ["account_pass", "order_filled"]
    assert '"ok": false' in buf.getvalue()
