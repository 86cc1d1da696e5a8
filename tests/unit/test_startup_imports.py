"""``syncd --help`` is instant: it imports no HTTP client, database driver, alpaca-py, pandas or numpy (issue 14).

Checked in a fresh interpreter (a subprocess) from ``sys.modules``, not by timing: the
machine is shared, a module list is not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("pandas", "numpy", "alpaca", "aiohttp", "asyncpg", "pydantic", "pydantic_settings", "msgspec", "structlog")

PROBE = """
import contextlib, io, json, sys
from syncd.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "help": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def _probe(*argv: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("argv", [("--help",), ("sync-once", "--help"), ("run", "--help"), ("sim", "--help")])
def test_help_imports_nothing_heavy(argv: tuple[str, ...]) -> None:
    got = _probe(*argv)
    assert got["code"] == 0
    assert "usage: syncd" in str(got["help"])
    modules = got["modules"]
    assert isinstance(modules, list)
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"syncd {' '.join(argv)} imported {heavy[:10]}"


def test_sync_once_help_still_lists_the_tasks() -> None:
    """The task registry is read without importing the cycles (their pass functions load on first use)."""
    got = _probe("sync-once", "--help")
    assert "account,trade,monitor" in str(got["help"])
    modules = got["modules"]
    assert isinstance(modules, list)
    assert "syncd.cycles" in modules
    assert not [m for m in modules if m.startswith("syncd.cycles.") or m.startswith("syncd.context")]


def test_a_task_spec_still_gives_its_pass_function() -> None:
    from syncd.cycles import TASKS
    from syncd.cycles.account_sync import account_pass as account
    from syncd.cycles.monitor_cycle import account_pass as monitor
    from syncd.cycles.trade_cycle import account_pass as trade

    assert [spec.account_pass for spec in TASKS] == [account, trade, monitor]


def test_sync_once_with_no_accounts_imports_no_broker_code(tmp_path: Path) -> None:
    """Start-up with nothing to sync: settings and logging, not the HTTP client, the brokers or pandas."""
    config = tmp_path / "syncd.toml"
    config.write_text('[database]\ndsn = "postgresql://postgres@127.0.0.1:1/none"\n', encoding="utf-8")
    got = _probe("--config", str(config), "sync-once", "--no-migrate")
    assert got["code"] == 0
    assert "no accounts configured" in str(got["help"])
    modules = got["modules"]
    assert isinstance(modules, list)
    heavy = sorted(m for m in modules if m.split(".")[0] in ("pandas", "numpy", "alpaca", "aiohttp", "msgspec"))
    assert heavy == []
    assert not [m for m in modules if m.startswith(("syncd.brokers", "syncd.context", "syncd.cycles."))]


ADAPTER_PROBE = """
import json, sys
import syncd.brokers.alpaca  # alpaca-py's trading package, whose requests module imports pandas
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("pandas", "numpy"))
from alpaca.trading.requests import GetCalendarRequest  # its one use of pandas: a validator
request = GetCalendarRequest(start="2026-01-02", end="2026-01-05")
import pandas as pd
print(json.dumps({"before": loaded, "start": str(request.start), "real": type(pd.Timestamp("2026-01-02")).__name__,
                  "after": "numpy" in sys.modules, "module": type(sys.modules["pandas"]).__name__}))
"""


def test_the_alpaca_adapter_loads_pandas_only_when_something_uses_it() -> None:
    """alpaca-py imports pandas for nothing syncd calls; the adapter loads without it, and pandas still
    works, unchanged, for whatever does use it (syncd.brokers.lazy)."""
    done = subprocess.run([sys.executable, "-c", ADAPTER_PROBE], capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(done.stdout)
    assert got["before"] == ["pandas"]  # the stand-in alone
    assert got["start"] == "2026-01-02" and got["real"] == "Timestamp"
    assert got["after"] and got["module"] == "module"  # the real pandas, once used
