"""What `keytrail demo` prints: the alarms raised, usage and cost (the queries behind
`keytrail usage` and `keytrail cost`), and where the HTML report is."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from keytrail.cli.console import counted
from keytrail.detect.severity import Severity
from keytrail.detect.sinks.jsonl import read_alarms
from keytrail.pipeline.consumer import event_log_dir
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore
from keytrail.pipeline.segment_source import SegmentLogSource
from keytrail.reports.collect import ReportOptions, collect_sync
from keytrail.reports.output import ReportFormat, write_report
from keytrail.reports.tabular import cell_text

__all__ = ["Story", "render_json", "render_text", "summarize", "write_html_report"]

USAGE_BY = ["keyArn", "principalArn", "accountId", "eventName"]  # `keytrail usage`'s default grouping
ALARM_FIELDS = ("rule", "severity", "keyArn", "principalArn", "count", "summary")


@dataclass(frozen=True)
class Story:
    """What the workload did, for the summary's header and key names."""

    data_dir: Path
    endpoint: str
    calls: int
    days: int
    keys: dict[str, str]  # alias -> key ARN
    principals: dict[str, str]  # name -> ARN as CloudTrail names the caller


def write_html_report(data_dir: Path) -> Path:
    """`keytrail report --data-dir DIR --format html`, written to `<DIR>/demo-report.html`."""
    source = SegmentLogSource(event_log_dir(data_dir), follow=False)
    options = ReportOptions(alarms=data_dir / "alarms.jsonl", source_name=str(data_dir), data_dir=data_dir)
    out = data_dir / "demo-report.html"
    return write_report(collect_sync(source, options), out, ReportFormat.html, owner_only=True)


def summarize(story: Story, report: Path) -> dict[str, Any]:
    """The demo's outcome as one JSON-ready document (money as exact decimal strings)."""
    store = MetricsStore(story.data_dir)
    usage = store.usage(USAGE_BY)
    cost = store.cost(PriceTable())
    return {
        "dataDir": str(story.data_dir), "endpoint": story.endpoint, "report": str(report),
        "calls": story.calls, "simulatedDays": story.days, "keys": story.keys, "principals": story.principals,
        "alarms": _alarms(story.data_dir),
        # "events", not "requests": usage counts the service's own RotateKey and DeleteKey too, so
        # beside "calls" a "requests" total of 78 for 77 calls read as a miscount.
        "usage": {"events": _total(usage, "count"), "errors": _total(usage, "errorCount"),
                  "byKey": _rows(_per(usage, "keyArn")), "byPrincipal": _rows(_per(usage, "principalArn"))},
        "cost": {"totalCost": cell_text(Decimal(str(cost["totalCost"].sum()))),
                 "byKey": _rows(cost.sort("keyArn", nulls_last=True))},
    }


def _alarms(data_dir: Path) -> list[dict[str, Any]]:
    """The latest state of each alarm, most severe first."""
    alarms = sorted(read_alarms(data_dir / "alarms.jsonl").values(),
                    key=lambda a: (-a.severity.rank, a.rule, a.first_seen))
    return [{name: alarm.to_json()[name] for name in ALARM_FIELDS} for alarm in alarms]


def _per(usage: pl.DataFrame, column: str) -> pl.DataFrame:
    totals = usage.group_by(column).agg(pl.col("count").sum().alias("events"),
                                        pl.col("errorCount").sum().alias("errors"))
    return totals.sort(column, nulls_last=True)


def _total(frame: pl.DataFrame, column: str) -> int:
    return int(frame[column].sum()) if frame.height else 0


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [{name: _plain(value) for name, value in row.items()} for row in frame.iter_rows(named=True)]


def _plain(value: Any) -> Any:
    return cell_text(value) if isinstance(value, Decimal) else value


def render_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)


def render_text(summary: dict[str, Any]) -> str:
    """A few screens a person reads top to bottom."""
    names = {arn: f"alias/{alias}" for alias, arn in summary["keys"].items()}
    cast = f"{counted(len(summary['keys']), 'key')}, {counted(len(summary['principals']), 'principal')}"
    lines = [f"keytrail demo: {cast}, {counted(summary['calls'], 'KMS call')} over {summary['simulatedDays']} "
             "simulated days", ""]
    lines += _alarm_lines(summary["alarms"], names)
    lines += _usage_lines(summary["usage"], names)
    lines += _cost_lines(summary["cost"], names)
    data_dir = summary["dataDir"]
    word = shlex.quote(data_dir)  # the commands are pasted into a shell: a space must not split the path
    lines += [f"HTML report: {summary['report']}", "",
              f"Data dir: {data_dir}  (try: keytrail usage --data-dir {word}; "
              f"keytrail cost --data-dir {word}; keytrail last-used --data-dir {word})"]
    return "\n".join(lines)


def _alarm_lines(alarms: list[dict[str, Any]], names: dict[str, str]) -> list[str]:
    lines = [f"Alarms raised ({len(alarms)})"]
    width = max((len(a["rule"]) for a in alarms), default=4)
    for alarm in alarms:
        key = names.get(alarm["keyArn"], alarm["keyArn"] or "-")
        who = alarm["principalArn"] or "-"
        lines.append(f"  {alarm['severity']:<8} {alarm['rule']:<{width}}  key {key}  principal {who}"
                     f"  x{alarm['count']}")
        lines.append(f"  {'':<8} {'':<{width}}  {_named(alarm['summary'], names)}")
    severities = [Severity(a["severity"]) for a in alarms]
    if severities:
        lines.append(f"  highest severity: {Severity.highest(*severities).value}")
    return [*lines, ""]


def _named(summary: str, names: dict[str, str]) -> str:
    """Key ARNs replaced by their aliases: a summary a person can read at a glance."""
    for arn, alias in names.items():
        summary = summary.replace(arn, alias)
    return summary


def _usage_lines(usage: dict[str, Any], names: dict[str, str]) -> list[str]:
    rows = sorted((names.get(r["keyArn"], r["keyArn"] or "(no key)"), str(r["events"]), str(r["errors"]))
                  for r in usage["byKey"])  # by the alias shown: the key ids, and their order, differ each run
    rows.append(("total", str(usage["events"]), str(usage["errors"])))
    # `keytrail usage` counts KMS's own RotateKey and DeleteKey too: beside the headline's calls
    # (and the cost table's requests, which leave them out) a "requests" total did not add up.
    return ["Usage per key (keytrail usage: the KMS calls, and the service's own RotateKey and DeleteKey events)",
            *_table(("key", "events", "errors"), rows), ""]


def _cost_lines(cost: dict[str, Any], names: dict[str, str]) -> list[str]:
    rows = sorted(((names.get(r["keyArn"], r["keyArn"] or "(no key)"), r["accountId"] or "", r["keyMonths"],
                    r["keyCost"], r["requestCost"], r["totalCost"]) for r in cost["byKey"]),
                  key=lambda row: (row[0], row[1]))  # by alias and account, as the usage table
    rows.append(("total", "", "", "", "", cost["totalCost"]))
    header = ("key", "paying account", "key-months", "key USD", "requests USD", "total USD")
    return ["Cost per key and account (keytrail cost)", *_table(header, [tuple(map(_cell, row)) for row in rows]), ""]


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in [header, *rows]]
