"""Offline usage, cost and security reports (HTML, CSV, JSON lines, Parquet).

`collect` runs the pipeline's consumer over an event source into a scratch state and queries
it, so report figures equal `keytrail usage | cost | last-used`; `write_report` renders them.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from keytrail.reports.collect import ReportData, ReportOptions, collect, collect_sync
from keytrail.reports.html import render_html
from keytrail.reports.progress import Progress
from keytrail.reports.tabular import TabularFormat, long_form, write_tabular

__all__ = ["TABLES", "Progress", "ReportData", "ReportFormat", "ReportOptions", "collect", "collect_sync",
           "write_report"]

TABLES = ("usage", "usage_over_time", "cost", "cost_projection", "last_used", "denied", "alarms")


class ReportFormat(StrEnum):
    html = "html"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def write_report(data: ReportData, out: Path, form: ReportFormat, table: str | None = None) -> Path:
    """Write the report to `out`; the tabular forms hold every table (or only `table`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if form is ReportFormat.html:
        temp = out.with_name(f".{out.name}.tmp")
        temp.write_text(render_html(data), encoding="utf-8")
        temp.replace(out)
        return out
    return write_tabular(long_form(data.tables(), table), out, TabularFormat(form.value))
