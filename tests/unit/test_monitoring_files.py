"""deploy/prometheus (alert rules) and deploy/grafana (dashboard) name only what syncd serves.

Guards against an alert or a panel over a metric or label syncd does not export (a renamed
metric, a typo), which would stay silent or empty forever instead of failing; against rules
promtool refuses; and against an alert that no longer fires on the state it watches
(``promtool test rules`` on deploy/prometheus/syncd-alerts.test.yml).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from syncd.cycles import TASKS
from syncd.daemon.health import DaemonMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "syncd-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "syncd-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "syncd-dashboard.json"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool is not installed (apt-get install prometheus; .ci/run installs it)"

PROMETHEUS_OWN = {"up"}  # made by Prometheus for every scrape target, not by syncd
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every series it scrapes
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
KEYWORDS |= {"inf", "nan"}


def served() -> dict[str, str]:
    """``{series name: metric name}`` for every series syncd's /metrics can carry."""
    text = DaemonMetrics().render()
    out: dict[str, str] = {}
    for name, kind in re.findall(r"^# TYPE (\w+) (\w+)$", text, flags=re.M):
        out[name] = name
        if kind == "histogram":
            out.update({f"{name}{suffix}": name for suffix in ("_bucket", "_sum", "_count")})
    return out


def documented_labels() -> dict[str, set[str]]:
    """Each metric's labels, from the table in docs/operations.md (tests/unit/test_docs.py holds its names)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    rows = re.findall(r"^\| `(syncd_\w+)` \| \w+ \|([^|]*)\|", text, flags=re.M)
    return {name: set(re.findall(r"`(\w+)`", labels)) for name, labels in rows}


def promql_parts(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """The metric names an expression reads, the labels matched per metric, and the grouping labels.

    A small scanner, not a parser: strings, Grafana variables, ranges and durations are dropped;
    an identifier followed by ``(`` is a function or aggregation; what remains are metric names.
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\$\{?\w+\}?", "5m", expr)
    matched: dict[str, set[str]] = {}
    for name, body in re.findall(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}", expr):
        matched.setdefault(name, set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    grouping: set[str] = set()
    for body in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        grouping.update(re.findall(r"\w+", body))
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    names = {
        m.group(1)
        for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
        if m.group(1).lower() not in KEYWORDS
    }
    return names, matched, grouping


def check_expr(expr: str, where: str) -> set[str]:
    """Assert ``expr`` reads only served metrics with their real labels; return the metrics it reads."""
    series = served()
    labels = documented_labels()
    names, matched, grouping = promql_parts(expr)
    unknown = {n for n in names if n not in series and n not in PROMETHEUS_OWN}
    assert not unknown, f"{where}: {sorted(unknown)} is not a metric syncd serves: {expr}"
    for name, used in matched.items():
        if name in PROMETHEUS_OWN:
            continue
        assert name, f"{where}: a selector without a metric name: {expr}"
        allowed = labels[series[name]] | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        assert used <= allowed, f"{where}: {series[name]} has no label {sorted(used - allowed)}: {expr}"
    every_label = set().union(*labels.values()) | TARGET_LABELS | {"le"}
    assert grouping <= every_label, f"{where}: no metric has label {sorted(grouping - every_label)}: {expr}"
    return {series[n] for n in names if n in series}


def test_the_scanner_finds_metrics_labels_and_grouping() -> None:
    names, matched, grouping = promql_parts(
        'histogram_quantile(0.95, sum by (task, le) (rate(syncd_cycle_duration_seconds_bucket{job=~"$job",'
        ' instance!="a"}[$__rate_interval]))) > 2 * max by (job) (max_over_time(syncd_up[30m])) + 5e3 and up == 0'
    )
    assert names == {"syncd_cycle_duration_seconds_bucket", "syncd_up", "up"}
    assert matched == {"syncd_cycle_duration_seconds_bucket": {"job", "instance"}}
    assert grouping == {"task", "le", "job"}
    assert set(documented_labels()) == set(served().values())
    assert documented_labels()["syncd_outbox_requests_total"] == {"account", "outcome"}
    with pytest.raises(AssertionError, match="syncd_cycle_failure_total"):
        check_expr("increase(syncd_cycle_failure_total[5m])", "typo")
    with pytest.raises(AssertionError, match="no label"):
        check_expr('syncd_positions{task="x"}', "wrong label")


# --- the alert rules ------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_alert_reads_only_what_syncd_serves() -> None:
    for rule in rules():
        check_expr(rule["expr"], rule["alert"])


def test_the_states_that_matter_each_have_an_alert() -> None:
    """A task stalled, an account failing, a stream down, the outbox failing or waiting, lease churn."""
    by_metric: dict[str, set[str]] = {}
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        for metric in check_expr(rule["expr"], rule["alert"]):
            by_metric.setdefault(metric, set()).add(rule["alert"])
    for metric in (
        "syncd_last_success_timestamp_seconds",
        "syncd_cycle_failures_total",
        "syncd_stream_connected",
        "syncd_outbox_requests_total",
        "syncd_outbox_oldest_waiting_seconds",
        "syncd_lease_changes_total",
        "syncd_database_up",
        "syncd_task_restarts_total",
    ):
        assert metric in by_metric, f"no alert watches {metric}"


def test_the_never_completed_alert_counts_every_task() -> None:
    """SyncdTaskNeverCompleted compares with the number of tasks syncd runs (cycles.TASKS)."""
    rule = next(r for r in rules() if r["alert"] == "SyncdTaskNeverCompleted")
    assert f">= {len(TASKS)})" in rule["expr"]
    assert all(spec.name in rule["annotations"]["description"] for spec in TASKS)


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_checks_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    """Each watched state fires its alert, with its labels and text, and the healthy case does not."""
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, timeout=120, cwd=RULE_TESTS.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert {"SyncdTaskStalled", "SyncdStreamDown", "SyncdOutboxWaitingTooLong", "SyncdLeaseChurn"} <= tested


# --- the dashboard --------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_every_panel_reads_only_what_syncd_serves() -> None:
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            check_expr(target["expr"], f"panel {panel['title']!r}")


def test_the_variables_read_only_what_syncd_serves() -> None:
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
        assert match, var["definition"]
        metrics = check_expr(match.group(1), f"variable {var['name']}")
        label = match.group(2)
        assert all(label in documented_labels()[m] | TARGET_LABELS for m in metrics), var["definition"]


def test_the_dashboard_shows_every_metric_syncd_serves() -> None:
    shown: set[str] = set()
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            shown |= check_expr(target["expr"], panel["title"])
    assert shown == set(served().values())


def test_the_dashboard_is_well_formed() -> None:
    doc = dashboard()
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(doc):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
    names = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "job", "instance", "account"} <= names
