"""Named SQL queries, loaded once from ``sql/queries/*.sql``.

A file holds blocks introduced by ``-- name: <query_name>``; comment lines right
after it document the query; the SQL runs to the next ``-- name:``. Queries never
name the schema: the pool's ``search_path`` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

import syncd

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """``sql/`` beside the package in a checkout, or ``syncd/sql`` in an installed wheel."""
    package = Path(syncd.__file__).parent
    for candidate in (package / "sql", package.parent / "sql"):
        if (candidate / "0001_schema.sql").is_file():
            return candidate
    raise FileNotFoundError(f"syncd's sql/ directory is missing (looked beside {package})")


class Queries(Mapping[str, str]):
    """Query text by name; a missing name is a ``KeyError`` that lists the file set."""

    def __init__(self, queries: dict[str, str]) -> None:
        self._queries = queries

    def __getitem__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in sql/queries/*.sql") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._queries)

    def __len__(self) -> int:
        return len(self._queries)


def parse_queries(text: str, origin: str) -> dict[str, str]:
    parts = _NAME.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = "\n".join(ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")).strip()
        if not sql:
            raise ValueError(f"{origin}: query {name!r} is empty")
        if name in found:
            raise ValueError(f"{origin}: query {name!r} is defined twice")
        found[name] = sql.rstrip(";")
    return found


@cache
def load_queries(directory: Path | None = None) -> Queries:
    """Every named query of ``sql/queries/``; a name defined twice is an error."""
    directory = directory or sql_dir() / "queries"
    queries: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        for name, sql in parse_queries(path.read_text(encoding="utf-8"), path.name).items():
            if name in queries:
                raise ValueError(f"{path.name}: query {name!r} is already defined in another file")
            queries[name] = sql
    return Queries(queries)
