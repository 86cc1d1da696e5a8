"""Named queries: parsing, loading once, and that no query names a schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from syncd.db.queries import load_queries, parse_queries, sql_dir


def test_parse_blocks_and_doc_comments() -> None:
    text = "-- name: one\n-- says what it does\nSELECT 1;\n\n-- name: two\nSELECT 2\n"
    assert parse_queries(text, "f.sql") == {"one": "SELECT 1", "two": "SELECT 2"}


def test_duplicate_and_empty_queries_are_errors() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n", "f.sql")
    with pytest.raises(ValueError, match="is empty"):
        parse_queries("-- name: a\n-- only a comment\n", "f.sql")


def test_duplicate_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("-- name: q\nSELECT 1\n")
    (tmp_path / "b.sql").write_text("-- name: q\nSELECT 2\n")
    with pytest.raises(ValueError, match="already defined"):
        load_queries.__wrapped__(tmp_path)


def test_missing_name_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match="no query named 'nope'"):
        load_queries()["nope"]


def test_project_queries_load_and_never_name_the_schema() -> None:
    queries = load_queries()
    assert "upsert_accounts" in queries
    for name, sql in queries.items():
        assert not re.search(r"\bsyncd\.", sql), f"query {name} names the schema"
    for path in sql_dir().glob("*.sql"):
        assert not re.search(r"\bsyncd\.[a-z]", path.read_text()), f"{path.name} names the schema"
