"""Generate the Grafana dashboard JSON from the panel list below (run: python dashboards/build.py).

`METRICS` is the one list of the Prometheus metric names the dashboards use; a test checks that
`keytrail serve` exports each of them at GET /metrics, and that every panel query names only these.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/datasources/prometheus.yml

#: name → (type, labels, meaning). Everything a panel queries, and nothing else.
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "keytrail_kms_requests_total": ("counter", ("operation", "outcome"), "KMS calls by operation and outcome"),
    "keytrail_kms_denied_requests_total": ("counter", ("operation",), "calls denied by authorization"),
    "keytrail_kms_denied_by_principal_total": ("counter", ("operation", "principal"),
                                               "calls denied by authorization, per principal"),
    "keytrail_kms_unauthenticated_total": ("counter", ("code",),
                                           "requests refused before authentication, by error code"),
    "keytrail_alarms_total": ("counter", ("rule", "severity"), "alarms raised by the detector"),
    "keytrail_kms_cost_usd": ("gauge", ("account",), "cost accrued since tracking start, USD"),
    "keytrail_audit_spool_depth": ("gauge", (), "audit records in the spool not yet shipped"),
    "keytrail_pipeline_consumer_lag": ("gauge", ("partition",), "records not yet consumed"),
    "keytrail_event_log_reader_held": ("gauge", ("reader",),
                                       "1 while a reader of the event log is held at a record it cannot read"),
    "keytrail_kms_keys": ("gauge", ("state",), "KMS keys by key state"),
    "keytrail_audit_fsync_seconds": ("histogram", ("le",), "time each audit group commit's fsync took"),
    "keytrail_audit_committed_records_total": ("counter", (), "audit records made durable"),
    "process_start_time_seconds": ("gauge", (), "when serve started, Unix seconds"),
}

_HISTOGRAMS = {name for name, (kind, _, _) in METRICS.items() if kind == "histogram"}
_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")

# docker-compose's standalone consumer (Prometheus job keytrail-consume) counts every node's calls
# again, from Kafka: the call totals below sum the nodes' own counts and leave it out. Its lag is
# in the "Consumer lag" panel, by instance.
CONSUMER = 'job="keytrail-consume"'
NODES = 'job!="keytrail-consume"'

# Cost is the other way round. A node's consumer prices only the events of its own log, and a key's
# lifecycle is spread over the nodes (CreateKey on one, ScheduleKeyDeletion or CancelKeyDeletion on
# another, its scheduled RotateKey on whichever node's scheduler ran it): summed over the nodes, a
# key created on one node and whose deletion was scheduled and cancelled on the other is stored
# twice over, one scheduled for deletion elsewhere is still stored on the node that created it, and
# a rotation on the other node is missed. The standalone consumer reads every node's events from
# Kafka: its figure is the system's. Replicas of it share its data dir (compose's volume) and each
# reports all of it: max, not sum. Without that job (one `keytrail serve`, whose consumer sees
# every call) the nodes' own figure stands in; with it, never, not even while it is down (an
# empty panel, rather than a wrong figure).
COST_BY_ACCOUNT = (f"max by (account) (keytrail_kms_cost_usd{{{CONSUMER}}}) or "
                   f"(sum by (account) (keytrail_kms_cost_usd{{{NODES}}}) unless on() up{{{CONSUMER}}})")


def increase(series: str, window: str, *, restored: bool = False) -> str:
    """increase() over `window` that counts a series' first value too. keytrail's counters with
    labels (an operation, an outcome, a principal) make a series at its first event, at 1, and to
    Prometheus a series' first value is no increase: the panels never counted the first denial by a
    principal, nor the first error of a kind. A series that was not there `window` ago counted
    nothing before it appeared, and is taken whole (`+ 0` drops its name, so that `or` matches it
    with increase()'s); a series that was there, by increase(), resets and all. Checked with
    `promtool test rules` (tests/unit/test_deploy.py). `restored`: see `_new`."""
    return f"(({_new(series, window, restored)}) + 0 or increase({series}[{window}]))"


def rate(series: str, window: str, seconds: int, *, restored: bool = False) -> str:
    """rate() over `window` (of `seconds`) that counts a series' first value too, as `increase`."""
    return f"(({_new(series, window, restored)}) / {seconds} or rate({series}[{window}]))"


def _new(series: str, window: str, restored: bool) -> str:
    """The series of `series` that were not there `window` ago. A `restored` counter (the request
    and denial counters, which the node's consumer keeps across restarts) comes back after a gap in
    the scrapes (the node down, Prometheus down) at its lifetime total, which is no new count: such
    a series is new only where its node answered the scrape `window` ago, as a node that kept it
    would have shown it then. The others count from zero at each start of serve: a node that kept
    running through the gap comes back at its since-start total, so theirs is new there, or where
    the node started within the window (restarted after an outage longer than the window, it answered
    no scrape a window ago, yet all it counted since is new). PromQL takes no duration in arithmetic:
    the window in seconds."""
    new = f"{series} unless {series} offset {window}"
    answered = f"up offset {window} == 1"
    if restored:
        return f"{new} and on(job, instance) ({answered})"
    return f"{new} and on(job, instance) ({answered} or process_start_time_seconds > time() - {_seconds(window)})"


def _seconds(window: str) -> int:
    """A PromQL duration of one unit (`5m`, `1h`) in seconds."""
    if (match := re.fullmatch(r"(\d+)([smh])", window)) is None:
        raise ValueError(f"not a duration of one unit: {window}")
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


REQUESTS = f"keytrail_kms_requests_total{{{NODES}}}"
ERRORS = f'keytrail_kms_requests_total{{{NODES},outcome!="success"}}'
DENIED = f"keytrail_kms_denied_requests_total{{{NODES}}}"

# (title, kind, unit, [(query, legend)], width, height)
PANELS: list[tuple[str, str, str, list[tuple[str, str]], int, int]] = [
    ("KMS calls per second", "stat", "reqps", [(f"sum({rate(REQUESTS, '5m', 300, restored=True)})", "calls/s")], 6, 4),
    ("Denied calls (1h)", "stat", "short", [(f"sum({increase(DENIED, '1h', restored=True)})", "denied")],
     6, 4),
    ("Alarms (24h)", "stat", "short", [("sum(increase(keytrail_alarms_total[24h]))", "alarms")], 6, 4),
    ("Cost accrued", "stat", "currencyUSD", [(f"sum({COST_BY_ACCOUNT})", "USD")], 6, 4),
    ("Call rate by operation", "timeseries", "reqps",
     [(f"sum by (operation) ({rate(REQUESTS, '5m', 300, restored=True)})", "{{operation}}")], 12, 8),
    ("Errors by operation", "timeseries", "reqps",
     [(f"sum by (operation, outcome) ({rate(ERRORS, '5m', 300, restored=True)})",
       "{{operation}} {{outcome}}")], 12, 8),
    ("Denied calls by principal", "timeseries", "short",
     [(f"sum by (principal) ({increase('keytrail_kms_denied_by_principal_total', '5m')})", "{{principal}}")], 12, 8),
    ("Alarms by rule", "timeseries", "short",
     [("sum by (rule) (increase(keytrail_alarms_total[5m]))", "{{rule}}")], 12, 8),
    ("Cost accrued by account", "timeseries", "currencyUSD",
     [(COST_BY_ACCOUNT, "{{account}}")], 12, 8),
    # Each node reports the whole key store the nodes share: max, since a sum counts each key once per node.
    ("Key inventory by state", "bargauge", "short", [("max by (state) (keytrail_kms_keys)", "{{state}}")], 12, 8),
    ("Audit spool depth", "timeseries", "short", [("max by (instance) (keytrail_audit_spool_depth)", "{{instance}}")],
     12, 8),
    ("Consumer lag", "timeseries", "short",
     [("sum by (instance, partition) (keytrail_pipeline_consumer_lag)", "{{instance}} {{partition}}")], 12, 8),
    # A reader held at a damaged record of the event log counts, judges or ships nothing more until the
    # segment is restored; on a quiet node its lag never reaches the lag alerts (KeytrailEventLogReaderHeld).
    ("Event log readers held", "timeseries", "short",
     [("max by (instance, reader) (keytrail_event_log_reader_held)", "{{instance}} {{reader}}")], 12, 8),
    # Every audited call waits for its group's fsync: its p99 is the durability part of the API's latency.
    ("Audit fsync p99", "timeseries", "s",
     [("histogram_quantile(0.99, sum by (instance, le) (rate(keytrail_audit_fsync_seconds_bucket[5m])))",
       "{{instance}}")], 12, 8),
    ("Audit records per group commit", "timeseries", "short",
     [("sum by (instance) (rate(keytrail_audit_committed_records_total[5m])) / "
       "sum by (instance) (rate(keytrail_audit_fsync_seconds_count[5m]))", "{{instance}}")], 12, 8),
    # No audit record can name these callers: a secret being guessed, or a client's clock past the window.
    ("Refused before authentication", "timeseries", "short",
     [(f"sum by (instance, code) ({increase('keytrail_kms_unauthenticated_total', '5m')})",
       "{{instance}} {{code}}")], 12, 8),
]


def metric_names(query: str) -> set[str]:
    """The keytrail metric families a PromQL query reads, and serve's start time (a histogram's
    _bucket, _sum and _count series count as their family)."""
    return {_family(name) for name in re.findall(r"\bkeytrail_[a-z0-9_]+|\bprocess_start_time_seconds\b", query)}


def _family(series: str) -> str:
    base = _HISTOGRAM_SERIES.sub("", series)
    return base if base in _HISTOGRAMS else series


def _panel(number: int, x: int, y: int, spec: tuple[str, str, str, list[tuple[str, str]], int, int]) -> dict[str, Any]:
    title, kind, unit, queries, width, height = spec
    return {
        "id": number, "type": kind, "title": title, "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": width, "h": height},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right"}} if kind == "timeseries" else {},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(queries)],
    }


def dashboard() -> dict[str, Any]:
    """The keytrail overview dashboard (Grafana dashboard JSON model, schemaVersion 39)."""
    panels, x, y, row_height = [], 0, 0, 0
    for number, spec in enumerate(PANELS, start=1):
        width, height = spec[4], spec[5]
        if x + width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel(number, x, y, spec))
        x, row_height = x + width, max(row_height, height)
    return {
        "uid": "keytrail-overview", "title": "keytrail: KMS calls, denials, alarms, cost", "tags": ["keytrail", "kms"],
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "utc", "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "panels": panels, "templating": {"list": []},
        "annotations": {"list": []},
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    (HERE / "keytrail-overview.json").write_text(render())
