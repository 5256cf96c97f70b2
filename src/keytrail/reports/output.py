"""Writing a report in the format asked for."""

from __future__ import annotations

from pathlib import Path

from keytrail.owner_only import make_dirs
from keytrail.reports.collect import ReportData
from keytrail.reports.formats import TABLES, ReportFormat
from keytrail.reports.html import render_html
from keytrail.reports.tabular import TabularFormat, long_form_parts, replacing, write_tabular

__all__ = ["TABLES", "ReportFormat", "write_report"]


def write_report(data: ReportData, out: Path, form: ReportFormat, table: str | None = None, *,
                 owner_only: bool = False) -> Path:
    """Write the report to `out`; the tabular forms hold every table (or only `table`).
    `owner_only`: `out` is in a data dir (0600, as what else is there); else the umask's mode,
    as any file a command writes where the user asked."""
    if owner_only:
        make_dirs(out.parent)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    if form is ReportFormat.html:
        page = render_html(data)
        with replacing(out, owner_only=owner_only) as temp:
            # The page says charset="utf-8" and must be UTF-8: the undecodable byte of its source's
            # name (a data dir named in Latin-1) is written as the escape stderr shows ("lat\\udce9n"),
            # not as the raw byte stdout writes, which would leave the page one no UTF-8 reader decodes.
            temp.write_text(page, encoding="utf-8", errors="backslashreplace")
        return out
    columns_of = {name: frame.columns for name, frame in data.tables().items()}
    return write_tabular(long_form_parts(data.tables(), table), out, TabularFormat(form.value), columns_of,
                         owner_only=owner_only)
