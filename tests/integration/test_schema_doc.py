"""docs/schema.md documents the migrated schema exactly: every table, view, column (with its type) and function.

A migration that adds a column, table, view or function fails here until docs/schema.md says what it
is; a doc that names something the schema lacks (or gives a wrong type) fails too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "schema.md"

# How docs/schema.md writes types, as Postgres's format_type() spells them.
_TYPE_NAMES = {"timestamptz": "timestamp with time zone"}


def documented_relations(text: str) -> dict[str, dict[str, str]]:
    """Each ``### `name``` section of the Tables and Views parts: column -> documented type."""
    body = text.split("\n## Tables\n", 1)[1].split("\n## Functions\n", 1)[0]
    out: dict[str, dict[str, str]] = {}
    for section in re.split(r"^### ", body, flags=re.M)[1:]:
        name = re.match(r"`([a-z_]+)`", section)
        assert name is not None, f"section without a `name` heading: {section[:40]!r}"
        columns: dict[str, str] = {}
        for match in re.finditer(r"^\| `([a-z_]+)` \| `([a-z0-9 ]+)` \|", section, flags=re.M):
            assert match.group(1) not in columns, f"{name.group(1)}.{match.group(1)} documented twice"
            columns[match.group(1)] = _TYPE_NAMES.get(match.group(2), match.group(2))
        out[name.group(1)] = columns
    return out


def documented_functions(text: str) -> set[str]:
    body = text.split("\n## Functions\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)\(", body, flags=re.M))


async def test_every_table_view_and_column_is_documented_with_its_type(db_pool: Any) -> None:
    rows = await db_pool.fetch(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type"
        "  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v') AND a.attnum > 0 AND NOT a.attisdropped"
    )
    actual: dict[str, dict[str, str]] = {}
    for r in rows:
        actual.setdefault(r["relname"], {})[r["attname"]] = r["type"]
    documented = documented_relations(SCHEMA_DOC.read_text())
    assert set(actual) - set(documented) == set(), "tables or views without a section in docs/schema.md"
    assert set(documented) - set(actual) == set(), "docs/schema.md documents what the schema lacks"
    for relation, columns in actual.items():
        doc = documented[relation]
        assert set(columns) - set(doc) == set(), f"{relation}: columns not in docs/schema.md"
        assert set(doc) - set(columns) == set(), f"{relation}: docs/schema.md lists columns it lacks"
        wrong = {c: (doc[c], t) for c, t in columns.items() if doc[c] != t}
        assert wrong == {}, f"{relation}: documented type differs from the schema's (doc, actual)"


async def test_every_function_is_documented(db_pool: Any) -> None:
    names = {
        r["proname"]
        for r in await db_pool.fetch(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = current_schema()"
        )
    }
    assert names == documented_functions(SCHEMA_DOC.read_text())
