"""deploy/kubernetes: schema-valid manifests for N replicas on one PostgreSQL, hardened, secrets as files.

Guards against a manifest the API server would refuse (kubernetes-validate, strict: unknown fields
too, against the schemas it ships, offline), against losing a hardening setting or a probe, and
against a config that names a secret file no volume provides (syncd would exit 2 at start).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from syncd.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
VERSION = kubernetes_validate.latest_version()


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resource(kind: str) -> dict[str, Any]:
    found = [d for p in MANIFESTS for d in docs(p) if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def container(name: str = "syncd") -> dict[str, Any]:
    return next(c for c in pod_spec()["containers"] if c["name"] == name)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema(path: Path) -> None:
    for doc in docs(path):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validator_refuses_an_unknown_field() -> None:
    """The check above is not vacuous: a misspelt field is an error."""
    bad = resource("Deployment")
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in MANIFESTS} - {"secret.example.yaml"}
    assert {d["metadata"].get("namespace", "syncd") for p in MANIFESTS for d in docs(p)} == {"syncd"}


def test_deployment_runs_several_replicas_with_both_probes() -> None:
    deployment = resource("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    c = container()
    port = next(p for p in c["ports"] if p["name"] == "http")["containerPort"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert port == 9108
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in c["env"]}
    assert env["SYNCD_HEALTH__INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # one per pod
    assert resource("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_every_container_is_non_root_read_only_unprivileged() -> None:
    pod = pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for c in pod["initContainers"] + pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "add" not in sc["capabilities"], c["name"]
        assert sc.get("privileged", False) is False, c["name"]
        assert c["resources"]["limits"], c["name"]


def mounts() -> dict[str, dict[str, Any]]:
    """``{mountPath: volume}`` of the syncd container."""
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container()["volumeMounts"]}


def config_text() -> str:
    text: str = resource("ConfigMap")["data"]["syncd.toml"]
    return text


def config_copy(tmp_path: Path) -> Path:
    """The ConfigMap's syncd.toml with its secret files standing in under ``tmp_path``."""
    text = config_text()
    for mount in ("/run/secrets/syncd", "/run/syncd"):
        local = tmp_path / mount.strip("/").replace("/", "_")
        local.mkdir(exist_ok=True)
        text = text.replace(f"{mount}/", f"{local}/")
    for name in ("alpaca_api_key", "alpaca_api_secret", "tradier_token"):
        (tmp_path / "run_secrets_syncd" / name).write_text(f"dummy-{name}")
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    return path


def test_the_configmap_is_a_valid_syncd_config(tmp_path: Path) -> None:
    settings = load_settings(config_copy(tmp_path), env={})
    assert settings.health.listen == "0.0.0.0:9108"  # the probes reach it from outside the pod
    assert "passfile=" in settings.database.dsn and "password" not in settings.database.dsn
    assert container()["env"][0] == {"name": "SYNCD_CONFIG", "value": "/etc/syncd/syncd.toml"}
    assert mounts()["/etc/syncd"]["configMap"]["name"] == resource("ConfigMap")["metadata"]["name"]


def test_every_secret_file_the_config_names_is_mounted() -> None:
    """Each ``*_file`` path (and the pgpass) is a key of a mounted Secret, under its mount path."""
    config = tomllib.loads(config_text())
    paths = [Path(v) for acct in config["accounts"] for k, v in acct.items() if k.endswith("_file")]
    assert paths, "the example config uses _file keys for its secrets"
    secrets = {d["metadata"]["name"]: d for d in docs(K8S / "secret.example.yaml")}
    by_mount = mounts()
    for path in paths:
        volume = by_mount[str(path.parent)]
        assert path.name in {i["path"] for i in volume["secret"]["items"]}, path
        assert path.name in secrets[volume["secret"]["secretName"]]["stringData"], path
        assert volume["secret"]["defaultMode"] == 0o440, path  # readable by fsGroup 10001 only
    assert "passfile=/run/syncd/pgpass" in config["database"]["dsn"]
    init = pod_spec()["initContainers"][0]
    assert "/run/syncd/pgpass" in init["command"][-1] and "chmod 0600" in init["command"][-1]
    assert by_mount["/run/syncd"]["emptyDir"]["medium"] == "Memory"
    assert "pgpass" in secrets["syncd-db"]["stringData"]
