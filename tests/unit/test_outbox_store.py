"""The outbox's database operations live in one place (issue 12): syncd.trading.outbox_store."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTBOX = ROOT / "syncd" / "trading" / "outbox.py"
STORE = ROOT / "syncd" / "trading" / "outbox_store.py"


def test_outbox_names_no_query_and_no_untyped_row() -> None:
    """Guards the store split: outbox.py runs no query itself and takes no ``Any``-typed ``q``/``req``."""
    text = OUTBOX.read_text()
    assert not re.search(r"\bq\[|queries\[|\.fetch(row|val)?\(|\.execute\(", text)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.arg) and node.arg in ("q", "req", "conn", "trade"):
            assert node.annotation is not None and "Any" not in ast.unparse(node.annotation), ast.unparse(node)


def test_every_outbox_query_is_run_by_the_store() -> None:
    """Each ``outbox_*``/``trade_outbox_*`` query in sql/queries/ has its one method in OutboxStore."""
    names = set(
        re.findall(r"^-- name: ((?:trade_)?outbox_\w+)", (ROOT / "sql/queries/trade_cycle.sql").read_text(), re.M)
    )
    used = set(re.findall(r'q\["(\w+)"\]', STORE.read_text()))
    assert names and names <= used, sorted(names - used)
