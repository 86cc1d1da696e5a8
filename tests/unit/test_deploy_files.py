"""deploy/: the systemd unit (systemd-analyze verify and security), the Dockerfile and the compose file.

No Docker engine runs here: the Dockerfile and docker-compose.yml get structural checks
(PyYAML parses the compose file when it is installed), not a build.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "syncd.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
VENV_SYNCD = Path(sys.executable).parent / "syncd"


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_has_the_required_settings() -> None:
    s = unit_settings()
    required = {
        "Type": "notify",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
    }
    for key, value in required.items():
        assert s.get(key) == [value], key
    assert s["WatchdogSec"] and s["LoadCredential"]
    assert s["RestartPreventExitStatus"] == ["2"]  # a bad config is not retried
    assert s["ExecStart"][0].endswith(" run")


def _installable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's syncd (verify checks the binary exists)."""
    if not VENV_SYNCD.exists():
        pytest.skip(f"no syncd console script at {VENV_SYNCD}")
    copy = tmp_path / "syncd.service"
    copy.write_text(UNIT.read_text().replace("/opt/syncd/bin/syncd", str(VENV_SYNCD)))
    return copy


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(_installable_copy(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_analyze_security_offline_exposure_is_low(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(_installable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "Unknown option" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= 2.0, result.stdout


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_exec_form_with_healthcheck() -> None:
    ins = _instructions((ROOT / "Dockerfile").read_text())
    stages = [rest for word, rest in ins if word == "FROM"]
    assert len(stages) >= 2 and " AS " in stages[0].upper()
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    final = ins[last:]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(word == "COPY" and rest.startswith("--from=") for word, rest in final)
    entrypoint = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert json.loads(entrypoint[-1]) == ["syncd"]  # exec form: syncd is PID 1 and gets SIGTERM
    health = [rest for word, rest in final if word == "HEALTHCHECK"][-1]
    cmd = json.loads(health.split(" CMD ", 1)[1])
    assert cmd[:2] == ["syncd", "health"]
    assert json.loads([rest for word, rest in final if word == "CMD"][-1]) == ["run"]
    copied = {rest.split()[0] for word, rest in ins if word == "COPY" and not rest.startswith("--")}
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for path in copied:
        assert f"!{path.rstrip('/')}" in ignored, f"{path} is excluded by .dockerignore"


def _compose_text() -> str:
    return (DEPLOY / "docker-compose.yml").read_text()


def test_compose_file_structure() -> None:
    text = _compose_text()
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        yaml = None
    if yaml is not None:
        doc = yaml.safe_load(text)
        assert set(doc["services"]) == {"postgres", "syncd"}
        syncd = doc["services"]["syncd"]
        assert syncd["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert set(syncd["secrets"]) <= set(doc["secrets"])
        return
    # Structural check without a YAML parser: top-level keys, services, secrets defined where used.
    assert "\t" not in text
    top = [ln.split(":")[0] for ln in text.splitlines() if ln and not ln.startswith((" ", "#"))]
    assert top == ["name", "services", "secrets", "volumes"]
    services = re.findall(r"^  ([a-z_]+):\s*$", text.split("\nsecrets:")[0], re.MULTILINE)
    assert services == ["postgres", "syncd"]
    defined = set(re.findall(r"^  ([a-z_]+):\s*$", text.split("\nsecrets:")[1].split("\nvolumes:")[0], re.MULTILINE))
    used = set(re.findall(r"^      - ([a-z_]+)\s*$", text, re.MULTILINE)) - {"ALL"}
    used = {u for u in used if not u.startswith("pgdata")}
    assert used <= defined, used - defined
    assert "condition: service_healthy" in text
    assert "./syncd.compose.toml:/etc/syncd/syncd.toml:ro" in text


def test_compose_config_is_valid(tmp_path: Path) -> None:
    """The config the compose file mounts validates (its secret files stand in from a temp dir)."""
    text = (DEPLOY / "syncd.compose.toml").read_text()
    for name in ("alpaca_api_key", "alpaca_api_secret", "tradier_token"):
        (tmp_path / name).write_text(f"dummy-{name}")
    config = tmp_path / "syncd.toml"
    config.write_text(text.replace("/run/secrets/", f"{tmp_path}/"))
    settings = load_settings(config, env={})
    assert settings.health.listen == "0.0.0.0:9108"  # inside the container
    assert "passfile=" in settings.database.dsn
    assert [a.name for a in settings.accounts] == ["alpaca-paper", "tradier-sandbox"]
