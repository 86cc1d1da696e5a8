"""The /healthz verdict (docs/operations.md): ok, degraded, unhealthy, and the body's shape."""

from __future__ import annotations

import datetime as dt

from syncd.cli.health import exit_code, render_text
from syncd.daemon.health import AccountView, TaskView, build_report, evaluate, listen_url, stale_limit
from syncd.daemon.leases import fair_share
from syncd.daemon.supervisor import backoff, jittered

NOW = dt.datetime(2026, 1, 5, 15, 0, tzinfo=dt.UTC)


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def task(ok_ago: float | None = 10, started_ago: float = 1000, **kw: object) -> TaskView:
    return TaskView(
        started_at=ago(started_ago),
        last_ok_at=None if ok_ago is None else ago(ok_ago),
        interval_s=kw.pop("interval_s", 30.0),  # type: ignore[arg-type]
        accounts=kw.pop("accounts", {}),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def tasks(**overrides: TaskView) -> dict[str, TaskView]:
    base = {"accountSync": task(), "tradeCycle": task(), "monitorCycle": task()}
    base.update(overrides)
    return base


def test_all_recent_is_ok() -> None:
    assert evaluate(tasks(), now=NOW, stale_after_s=300, database=True) == ("ok", [])


def test_database_unreachable_is_unhealthy() -> None:
    status, reasons = evaluate(tasks(), now=NOW, stale_after_s=300, database=False)
    assert status == "unhealthy"
    assert "database unreachable" in reasons


def test_no_tasks_is_unhealthy() -> None:
    assert evaluate({}, now=NOW, stale_after_s=300, database=True)[0] == "unhealthy"


def test_a_stalled_task_is_unhealthy() -> None:
    status, reasons = evaluate(tasks(tradeCycle=task(ok_ago=301)), now=NOW, stale_after_s=300, database=True)
    assert status == "unhealthy"
    assert reasons == ["tradeCycle has not completed a pass within 300s"]


def test_a_young_task_without_a_pass_is_not_stale_yet() -> None:
    young = task(ok_ago=None, started_ago=5)
    assert evaluate(tasks(monitorCycle=young), now=NOW, stale_after_s=300, database=True)[0] == "ok"
    old = task(ok_ago=None, started_ago=400)
    status, reasons = evaluate(tasks(monitorCycle=old), now=NOW, stale_after_s=300, database=True)
    assert status == "unhealthy"
    assert "never completed" in reasons[0]


def test_closed_market_cadence_stretches_the_limit() -> None:
    """Regression: with the closed-market interval (300 s) as long as stale_after_s, a healthy task must not flap."""
    slow = task(ok_ago=320, interval_s=300.0)
    assert stale_limit(slow, 300) == 600
    assert evaluate(tasks(tradeCycle=slow), now=NOW, stale_after_s=300, database=True)[0] == "ok"


def test_a_failing_account_is_degraded_not_unhealthy() -> None:
    accounts = {"a": AccountView(ago(5)), "b": AccountView(ago(900), "BrokerAuthFailed: 401", 4)}
    status, reasons = evaluate(tasks(accountSync=task(accounts=accounts)), now=NOW, stale_after_s=300, database=True)
    assert status == "degraded"
    assert reasons == ["accountSync/b failing"]


def test_an_account_never_synced_on_an_old_task_is_degraded() -> None:
    accounts = {"new": AccountView()}
    young = task(accounts=accounts, started_ago=10)
    assert evaluate(tasks(accountSync=young), now=NOW, stale_after_s=300, database=True)[0] == "ok"
    old = task(accounts=accounts, started_ago=1000)
    assert evaluate(tasks(accountSync=old), now=NOW, stale_after_s=300, database=True)[0] == "degraded"


def test_body_has_the_contract_shape() -> None:
    accounts = {"accountSync": {"a": AccountView(ago(5))}, "tradeCycle": {"a": AccountView(None, "boom", 1)}}
    report = build_report(tasks(), accounts, now=NOW, stale_after_s=300, database=True, instance="h:1")
    body = report.body()
    assert body["status"] == "degraded"
    assert report.http_status == 200
    assert set(body["tasks"]) == {"accountSync", "tradeCycle", "monitorCycle"}
    sync = body["tasks"]["accountSync"]
    assert set(sync) >= {"last_ok_at", "last_error", "consecutive_failures", "accounts"}
    assert sync["accounts"] == {"a": {"last_ok_at": ago(5).isoformat(), "last_error": None}}
    assert body["tasks"]["tradeCycle"]["accounts"]["a"] == {"last_ok_at": None, "last_error": "boom"}
    assert body["tasks"]["monitorCycle"]["accounts"] == {}
    unhealthy = build_report(tasks(), None, now=NOW, stale_after_s=300, database=False)
    assert unhealthy.http_status == 503
    assert unhealthy.body()["database"] == "unreachable"


def test_exit_codes() -> None:
    assert exit_code("ok", strict=False) == 0
    assert exit_code("degraded", strict=False) == 0
    assert exit_code("degraded", strict=True) == 1
    assert exit_code("unhealthy", strict=False) == 1
    assert exit_code("ok", strict=True) == 0


def test_listen_url() -> None:
    assert listen_url("127.0.0.1:9108") == "http://127.0.0.1:9108"
    assert listen_url("0.0.0.0:9108") == "http://127.0.0.1:9108"
    assert listen_url("[::]:9108") == "http://[::1]:9108"
    assert listen_url("") is None


def test_render_text_names_failing_accounts() -> None:
    body = {
        "status": "degraded",
        "reasons": ["accountSync/b failing"],
        "tasks": {
            "accountSync": {
                "last_ok_at": "t",
                "last_error": None,
                "consecutive_failures": 0,
                "accounts": {"b": {"last_ok_at": None, "last_error": "401"}},
            }
        },
    }
    text = render_text(body)
    assert "status: degraded" in text
    assert "b: error: 401" in text


def test_fair_share_is_ceil() -> None:
    assert fair_share(2, 3) == 1
    assert fair_share(10, 3) == 4
    assert fair_share(0, 3) == 0
    assert fair_share(5, 0) == 5


def test_backoff_doubles_to_a_cap() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(50) == 60


def test_jitter_stays_within_bounds() -> None:
    import random

    rng = random.Random(1)
    values = [jittered(100, 10, rng) for _ in range(500)]
    assert min(values) >= 90
    assert max(values) <= 110
    assert jittered(100, 0, rng) == 100


def test_stream_views_show_state_and_last_event_age() -> None:
    from syncd.daemon.health import stream_views
    from syncd.metrics import Metrics

    m = Metrics()
    m.stream_state("t", "tradier", "connected", 1_000.0)
    m.stream_event("t", "tradier", 1_010.0)
    m.stream_state("a", "alpaca", "connected", 1_000.0)
    m.stream_state("a", "alpaca", "reconnecting", 1_005.0, "tradier account events: closed")
    m.stream_state("r", "tradier", "refused", 1_000.0, "401")
    views = stream_views(m.streams, now=1_012.5)
    assert views["t"]["connected"] is True and views["t"]["last_event_age_s"] == 2.5 and views["t"]["events"] == 1
    assert views["a"]["state"] == "reconnecting" and views["a"]["reconnects"] == 1 and views["a"]["last_error"]
    assert views["r"]["state"] == "refused" and views["r"]["last_event_at"] is None
    assert m.value("syncd_stream_connected", account="t") == 1 and m.value("syncd_stream_connected", account="r") == 0
    assert m.value("syncd_stream_reconnects_total", account="a") == 1
    assert m.value("syncd_stream_events_total", account="t") == 1
    text = render_text({"status": "ok", "tasks": {}, "streams": views})
    assert "  t (tradier): connected, last event 2.5s ago, reconnects 0" in text
    assert "  r (tradier): refused, no event yet, reconnects 0, error: 401" in text
