"""The reference in docs/ names what the code has: every command and option, every metric, every page linked.

Guards against a command, option or metric added (or renamed) without docs/commands.md or
docs/operations.md saying so, and against README links to pages that do not exist.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from syncd.cli import build_parser
from syncd.daemon.health import DaemonMetrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """``{"run": parser, "config check": parser, ...}``: the leaf commands."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                leaves = _subcommands(sub, f"{full} ")
                out.update(leaves or {full: sub})
    return out


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        opt for action in parser._actions for opt in action.option_strings if opt.startswith("--") and opt != "--help"
    }


def _section(text: str, heading_start: str) -> str:
    match = re.search(rf"^## {re.escape(heading_start)}[` ].*?(?=^## |\Z)", text, flags=re.M | re.S)
    assert match is not None, f"no section '## {heading_start}...' in docs/commands.md"
    return match.group(0)


COMMANDS = _subcommands(build_parser())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_and_option_is_documented(command: str) -> None:
    section = _section((DOCS / "commands.md").read_text(), f"`syncd {command}")
    missing = [opt for opt in sorted(_options(COMMANDS[command])) if f"`{opt}" not in section]
    assert missing == [], f"docs/commands.md, syncd {command}: options not documented"


def test_global_options_are_documented() -> None:
    text = (DOCS / "commands.md").read_text()
    for opt in _options(build_parser()):
        assert f"`{opt}" in text, opt


def test_every_metric_is_documented() -> None:
    declared = set(re.findall(r"^# HELP (\w+) ", DaemonMetrics().render(), flags=re.M))
    text = (DOCS / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(syncd_\w+)` \|", text, flags=re.M))
    assert declared == documented


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped except ``-`` and ``_``, spaces as ``-``."""
    return {
        re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", text, flags=re.M)
    }


def test_links_between_the_pages_resolve() -> None:
    """Every relative link in README.md and docs/*.md names a file that exists, and a heading in it."""
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text()):
            if "://" in target:
                continue
            path = page.parent / target if target else page
            assert path.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path.read_text()), f"{page.name} links to {target}#{anchor}: no such heading"


def _module_map() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("syncd/               the package")
    return readme[start : readme.index("```", start)]


@pytest.mark.parametrize(
    "module",
    sorted(
        str(p.relative_to(ROOT / "syncd"))
        for p in (ROOT / "syncd").rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    ),
)
def test_the_readme_module_map_names_every_module(module: str) -> None:
    """Guards issue 12's 'the README's module map matches the tree': a module added or moved is named
    in the map, in its own package's paragraph."""
    package, _, name = module.rpartition("/")
    text = _module_map()
    if not package:
        assert re.search(rf"^  {re.escape(name)} ", text, re.M), f"{module} is not in the README's module map"
        return
    paragraph = re.search(rf"^  {re.escape(package)}/ .*?(?=^  \S|\Z)", text, re.M | re.S)
    assert paragraph is not None, f"package {package}/ is not in the README's module map"
    assert re.search(rf"\b{re.escape(name)}\b", paragraph.group(0)), f"{module} is not in the README's module map"
