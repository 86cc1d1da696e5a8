"""The package layout is the architecture: each layer imports only the layers below it (docs/architecture.md).

Guards issue 12's rule "each package says what it may import": a test, not a comment, holds it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "syncd"

# What each part may import (besides itself and the standard/third-party libraries).
LEAVES = {"settings", "logs", "errors", "metrics", "__init__"}
ALLOWED: dict[str, set[str]] = {
    "settings": set(),
    "logs": {"settings"},
    "errors": set(),
    "metrics": set(),
    "db": {"settings", "logs", "errors"},
    "brokers": {"settings", "logs", "errors"},
    "sim": {"settings", "logs", "errors", "brokers"},
    "context": {"settings", "logs", "errors", "metrics", "db", "brokers"},
    "trading": {"settings", "logs", "errors", "metrics", "db", "brokers", "context"},
    "cycles": {"settings", "logs", "errors", "metrics", "db", "brokers", "context", "trading"},
    "daemon": {"settings", "logs", "errors", "metrics", "db", "brokers", "context", "trading", "cycles"},
    "cli": {"settings", "logs", "errors", "metrics", "db", "brokers", "context", "trading", "cycles", "daemon", "sim"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "syncd" else [f"syncd.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found.update(n.split(".")[1] for n in names if n.startswith("syncd.") and n.count(".") >= 1)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _part(p) not in ("__main__", "__init__"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_layers_below(path: Path) -> None:
    part = _part(path)
    assert part in ALLOWED, f"{part}: a new top-level part needs a place in ALLOWED and docs/architecture.md"
    wrong = {t for t in _imports(path) if t != part and t not in ALLOWED[part] and t != "__version__"}
    assert not wrong, f"{path.relative_to(PACKAGE)} ({part}) imports {sorted(wrong)}"


def test_every_package_says_what_it_may_import() -> None:
    for pkg in sorted(p.parent for p in PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text())) or ""
        assert "May import" in doc, f"{pkg.name}/__init__.py: its docstring must say what it may import"
