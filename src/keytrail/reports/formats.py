"""What a report can be written as, and the names of its tables: plain names, apart from the code
that writes them, so that `keytrail report --help` offers them without loading that code."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TABLES", "ReportFormat"]

TABLES = ("usage", "usage_over_time", "cost", "cost_projection", "last_used", "denied", "alarms")


class ReportFormat(StrEnum):
    html = "html"
    csv = "csv"
    json = "json"
    parquet = "parquet"
