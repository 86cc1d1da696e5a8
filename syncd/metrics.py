"""Prometheus metrics without a client library: counters, gauges, histograms, text exposition.

Names and labels are those of docs/operations.md; more may be added. Thread-safety is not
needed: everything runs on one event loop.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _labels(**kw: str) -> Labels:
    return tuple(sorted(kw.items()))


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + body + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.n += 1


@dataclass(slots=True)
class StreamView:
    """One account's trade stream as the process sees it (``/healthz`` shows it).

    ``state``: ``connected``, ``reconnecting`` (waiting out a backoff), ``refused`` (the broker
    refused the credentials or has no stream: polling only until restart), ``stopped``.
    Times are Unix seconds.
    """

    broker: str
    state: str = "connecting"
    since: float = 0.0
    last_event_at: float | None = None
    events: int = 0
    reconnects: int = 0
    last_error: str | None = None


class Metrics:
    """The daemon's metrics. Method names say what happened; ``render`` gives the text format."""

    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._histograms: dict[str, dict[Labels, _Histogram]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        self.streams: dict[str, StreamView] = {}  # by account name: each trade stream's state
        self._request_labels: dict[tuple[str, str, str], Labels] = {}  # broker_request's, made once each
        self._declare("syncd_cycle_duration_seconds", "histogram", "Duration of one pass of a task over its accounts")
        self._declare("syncd_cycle_failures_total", "counter", "Account passes that failed, by task and account")
        self._declare("syncd_broker_requests_total", "counter", "HTTP requests to brokers, by endpoint and status")
        self._declare("syncd_positions", "gauge", "Positions mirrored per account")
        self._declare("syncd_last_success_timestamp_seconds", "gauge", "Unix time of the last successful pass")
        self._declare("syncd_account_passes_total", "counter", "Account passes, by task and outcome")
        self._declare("syncd_fill_latency_seconds", "histogram", "Broker fill time to committed trade row")
        self._declare("syncd_stream_connected", "gauge", "1 while an account's trade stream is connected")
        self._declare("syncd_stream_events_total", "counter", "Order events received on an account's trade stream")
        self._declare("syncd_stream_reconnects_total", "counter", "Times an account's trade stream reconnected")
        self._declare(
            "syncd_stream_last_event_timestamp_seconds", "gauge", "Unix time of the last event on an account's stream"
        )
        self._declare("syncd_outbox_requests_total", "counter", "Outbox request attempts, by account and outcome")
        self._declare("syncd_quote_events_total", "counter", "Live quotes received, by account and stream")
        self._declare("syncd_quote_stream_connected", "gauge", "1 while an account's quote stream is connected")
        self._declare(
            "syncd_quote_stream_reconnects_total", "counter", "Quote stream reconnects, by account and stream"
        )
        self._declare("syncd_quote_exit_latency_seconds", "histogram", "Live quote that fired an exit to close placed")

    def _declare(self, name: str, kind: str, help_text: str) -> None:
        self._help[name] = (kind, help_text)

    # counters and gauges -------------------------------------------------------------------
    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = _labels(**labels)
        self._counters[name][key] = self._counters[name].get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._gauges[name][_labels(**labels)] = value

    def observe(self, name: str, value: float, buckets: tuple[float, ...] = DURATION_BUCKETS, **labels: str) -> None:
        key = _labels(**labels)
        hist = self._histograms[name].get(key)
        if hist is None:
            hist = self._histograms[name][key] = _Histogram(buckets)
        hist.observe(value)

    # what the code reports ---------------------------------------------------------------
    def broker_request(self, broker: str, endpoint: str, status: str) -> None:
        # every broker request counts here: its labels are made once per (broker, endpoint, status)
        key = (broker, endpoint, status)
        labels = self._request_labels.get(key)
        if labels is None:
            labels = self._request_labels[key] = _labels(broker=broker, endpoint=endpoint, status=status)
        counts = self._counters["syncd_broker_requests_total"]
        counts[labels] = counts.get(labels, 0.0) + 1.0

    def account_pass(self, task: str, account: str, ok: bool) -> None:
        self.inc("syncd_account_passes_total", task=task, outcome="ok" if ok else "error")
        if not ok:
            self.inc("syncd_cycle_failures_total", task=task, account=account)

    def cycle_finished(self, task: str, duration_s: float, finished_at: float, ok: bool) -> None:
        self.observe("syncd_cycle_duration_seconds", duration_s, task=task)
        if ok:
            self.set("syncd_last_success_timestamp_seconds", finished_at, task=task)

    def stream_state(self, account: str, broker: str, state: str, at: float, error: str | None = None) -> StreamView:
        view = self.streams.get(account)
        if view is None:
            view = self.streams[account] = StreamView(broker=broker)
        if state == "reconnecting":
            view.reconnects += 1
            self.inc("syncd_stream_reconnects_total", account=account)
        view.state, view.since = state, at
        if error is not None or state == "connected":
            view.last_error = error
        self.set("syncd_stream_connected", 1 if state == "connected" else 0, account=account)
        return view

    def stream_event(self, account: str, broker: str, at: float) -> None:
        view = self.streams.get(account)
        if view is None:
            view = self.streams[account] = StreamView(broker=broker, state="connected", since=at)
        view.events += 1
        view.last_event_at = at
        self.inc("syncd_stream_events_total", account=account)
        self.set("syncd_stream_last_event_timestamp_seconds", at, account=account)

    def value(self, name: str, **labels: str) -> float | None:
        """A counter's or gauge's current value (tests, health)."""
        key = _labels(**labels)
        if key in self._counters.get(name, {}):
            return self._counters[name][key]
        return self._gauges.get(name, {}).get(key)

    # exposition ----------------------------------------------------------------------------
    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text) in sorted(self._help.items()):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "counter":
                for labels, v in sorted(self._counters.get(name, {}).items()):
                    lines.append(f"{name}{_fmt_labels(labels)} {_fmt_value(v)}")
            elif kind == "gauge":
                for labels, v in sorted(self._gauges.get(name, {}).items()):
                    lines.append(f"{name}{_fmt_labels(labels)} {_fmt_value(v)}")
            else:
                for labels, h in sorted(self._histograms.get(name, {}).items()):
                    cumulative = 0
                    for bound, count in zip(h.buckets, h.counts or [0] * len(h.buckets), strict=True):
                        cumulative += count
                        lines.append(f"{name}_bucket{_fmt_labels(labels, (('le', _fmt_value(bound)),))} {cumulative}")
                    lines.append(f"{name}_bucket{_fmt_labels(labels, (('le', '+Inf'),))} {h.n}")
                    lines.append(f"{name}_sum{_fmt_labels(labels)} {_fmt_value(h.total)}")
                    lines.append(f"{name}_count{_fmt_labels(labels)} {h.n}")
        return "\n".join(lines) + "\n"
