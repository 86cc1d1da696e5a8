"""``syncd status``'s presentation (syncd/cli/status.py, syncd/cli/numbers.py) and the demo's config file.

Guards the formatting the issue asked for: one helper for every number (today's ``19`` beside
``19.0``, ``180.140000``, ``2380.4550``), every line within 80 columns whatever the data, and
JSON with numbers as numbers; and that the config ``syncd demo`` writes loads back unchanged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from syncd.cli import numbers as fmt
from syncd.cli.demo_stack import config_toml, instructions, syncd_command
from syncd.cli.status import as_json, clip, render_text, stream_state
from syncd.settings import AccountSettings, Settings, load_settings

NOW = datetime(2026, 12, 2, 2, 55, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("19"), "19"),
        (Decimal("19.0"), "19"),
        (Decimal("0.50"), "0.5"),
        (Decimal("-3.000"), "-3"),
        (Decimal("1E+2"), "100"),
        (Decimal("-0.0"), "0"),
        (None, "-"),
    ],
)
def test_quantity_has_no_trailing_zeros(value: Decimal | None, text: str) -> None:
    assert fmt.quantity(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("180.140000"), "180.14"),
        (Decimal("2380.4550"), "2380.455"),
        (Decimal("180"), "180.00"),
        (Decimal("0.05"), "0.05"),
        (Decimal("14.5"), "14.50"),
        (None, "-"),
    ],
)
def test_price_is_normalized_with_at_least_cents(value: Decimal | None, text: str) -> None:
    assert fmt.price(value) == text


def test_money_has_two_decimals_and_a_sign_when_asked() -> None:
    assert fmt.money(Decimal("2380.4550")) == "2,380.46"
    assert fmt.money(Decimal("1234.5"), signed=True) == "+1,234.50"
    assert fmt.money(Decimal("-12.345"), signed=True) == "-12.35"
    assert fmt.money(Decimal("-0.001"), signed=True) == "0.00"
    assert fmt.money(None) == "-"


def test_json_numbers_and_ages() -> None:
    assert fmt.json_number(Decimal("19.0")) == 19 and isinstance(fmt.json_number(Decimal("19.0")), int)
    assert fmt.json_number(Decimal("2380.4550")) == 2380.455
    assert fmt.age(NOW - timedelta(seconds=4), NOW) == "4s ago"
    assert fmt.age(NOW - timedelta(minutes=12, seconds=5), NOW) == "12m ago"
    assert fmt.age(NOW + timedelta(seconds=5), NOW) == "in 5s"
    assert fmt.timestamp(NOW) == "2026-12-02 02:55:01Z"


def test_stream_state_from_config_and_broker() -> None:
    assert stream_state("alpaca", enabled=True) == "unknown"
    assert stream_state("tradier", enabled=True) == "unknown"  # Tradier's account events stream
    assert stream_state("alpaca", enabled=False) == "off"


def _trade(i: int, **over: Any) -> dict[str, Any]:
    return {
        "id": i,
        "symbol": "AAPL",
        "strategy": "LONG_STOCK",
        "status": "open",
        "quantity": Decimal("19.0"),
        "current_price": Decimal("180.140000"),
        "floating_pnl": Decimal("2380.4550"),
        **over,
    }


def _status(**account: Any) -> dict[str, Any]:
    base = {
        "name": "acct",
        "broker": "alpaca",
        "paper": True,
        "in_database": True,
        "active": True,
        "last_synced_at": NOW - timedelta(seconds=3),
        "last_error": None,
        "equity": Decimal("100000.000"),
        "cash": Decimal("5.5"),
        "positions": 6,
        "open_trades": {"count": 1, "floating_pnl": Decimal("2380.4550"), "trades": [_trade(1)]},
        "working_orders": 0,
        "outbox": {"queued": 0, "failed": 0, "rejected": 0},
        "stream": {"state": "unknown", "last_event_at": None},
        "lease": None,
        "tasks": {},
    }
    return {
        "generated_at": NOW,
        "source": "database",
        "daemon": {"live": [], "instances": []},
        "accounts": [{**base, **account}],
    }


def test_text_formats_every_number_one_way() -> None:
    text = render_text(_status())
    row = next(line for line in text.splitlines() if "#1 " in line)
    assert row.split()[-3:] == ["19", "180.14", "+2,380.46"]
    assert "equity 100,000.00, cash 5.50" in text
    assert "floating P&L +2,380.46" in text


def test_text_fits_80_columns_whatever_the_data() -> None:
    """Long names, errors, OCC symbols, many trades, failing tasks: no line is wider than 80."""
    failing = {"last_ok_at": None, "last_error_at": NOW, "last_error": "x" * 300, "consecutive_failures": 12}
    status = _status(
        name="a" * 64,
        last_error="broker refused: " + "y" * 200,
        paused=False,
        active=False,
        lease={"holder": "h" * 60, "expires_at": NOW, "live": False},
        tasks={"accountSync": failing, "tradeCycle": failing, "monitorCycle": failing},
        open_trades={
            "count": 30,
            "floating_pnl": Decimal("-123456789.125"),
            "trades": [
                _trade(
                    i,
                    symbol="GOOGL260117C00150000",
                    strategy="BULL_CALL_DEBIT_SPREAD_LONG",
                    quantity=Decimal("123456.5"),
                    current_price=Decimal("12345.6789"),
                    floating_pnl=Decimal("-1234567.891"),
                    status="closing",
                )
                for i in range(100000, 100030)
            ],
        },
    )
    status["daemon"]["instances"] = [
        {"instance": "i" * 70, "started_at": NOW, "heartbeat_at": NOW, "expires_at": NOW, "live": True}
    ]
    status["daemon"]["live"] = ["i" * 70]
    lines = render_text(status).splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert any("20 more" in line for line in lines)
    assert clip("a\nb", 80) == "a b" and clip("abcdef", 4) == "abc…"


def test_json_has_numbers_and_iso_times() -> None:
    body = json.loads(json.dumps(as_json(_status())))
    acct = body["accounts"][0]
    assert acct["equity"] == 100000 and acct["cash"] == 5.5
    assert acct["open_trades"]["trades"][0]["quantity"] == 19
    assert body["generated_at"] == "2026-12-02T02:55:01+00:00"


def test_demo_config_loads_back_with_its_secrets(tmp_path: Path) -> None:
    """The file ``syncd demo`` writes is a valid config: the same settings, secrets included."""
    accounts = [
        AccountSettings(
            name="demo-alpaca-1",
            broker="alpaca",
            api_key=SecretStr("k1"),
            api_secret=SecretStr("s1"),
            base_url="http://127.0.0.1:9",
            data_url="http://127.0.0.1:9",
            stream_url="ws://127.0.0.1:9/stream",
        ),
        AccountSettings(
            name="demo-tradier",
            broker="tradier",
            account_id="VA1",
            token=SecretStr("t1"),
            base_url="http://127.0.0.1:9",
        ),
    ]
    data: dict[str, Any] = {
        "database": {"dsn": f"postgresql://postgres:@/syncd?host={tmp_path}/x y/pg"},
        "trading": {"enabled": True},
        "accounts": accounts,
    }
    settings = Settings(**data)
    path = tmp_path / "syncd.toml"
    path.write_text(config_toml(settings))
    loaded = load_settings(path)
    assert loaded == settings
    assert loaded.accounts[0].api_secret is not None and loaded.accounts[0].api_secret.get_secret_value() == "s1"
    text = instructions("dsn", "psql", "http://h:1", "http://s:2", tmp_path / "a b" / "syncd.toml")
    for command in ("status", "verify", "import-positions"):
        assert f"syncd --config '{tmp_path}/a b/syncd.toml' {command}" in text


def test_demo_prints_a_syncd_that_runs_from_another_terminal(tmp_path: Path) -> None:
    """`make demo` runs .venv/bin/syncd, usually not on PATH: the printed command lines name it in full."""
    script = tmp_path / "venv bin" / "syncd"
    script.parent.mkdir()
    script.write_text("")
    assert syncd_command(str(script), which=lambda _: None) == f"'{script}'"
    assert syncd_command(str(script), which=lambda _: str(script)) == "syncd"
    assert syncd_command(str(script), which=lambda _: "/usr/bin/syncd") == f"'{script}'"
    assert syncd_command("/x/syncd/__main__.py").endswith(" -m syncd")
