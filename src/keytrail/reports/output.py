"""Writing a report in the format asked for."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from keytrail.reports.collect import ReportData
from keytrail.reports.html import render_html
from keytrail.reports.tabular import TabularFormat, long_form_parts, write_tabular

__all__ = ["TABLES", "ReportFormat", "write_report"]

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
    columns_of = {name: frame.columns for name, frame in data.tables().items()}
    return write_tabular(long_form_parts(data.tables(), table), out, TabularFormat(form.value), columns_of)
