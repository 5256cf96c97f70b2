"""The HTML report: one self-contained file (inline CSS and SVG, no script, no network)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import polars as pl

from keytrail import __version__
from keytrail.pipeline.cost import billable_rows
from keytrail.reports.collect import ReportData
from keytrail.reports.figures import ahead_note, storage_note
from keytrail.reports.svg import Bar, Series, bar_chart, line_chart, short_arn
from keytrail.shown_text import markup

__all__ = ["CONTENT_SECURITY_POLICY", "MAX_ROWS", "key_label", "money", "render_html"]

MAX_ROWS = 500  # per table; the CSV, JSON and Parquet forms carry every row
_SERIES = 8  # lines per chart; the rest are summed into "other"
_STEP = {"minute": "1m", "hour": "1h", "day": "1d"}
# The alarms table has its column widths set and wraps anywhere: it holds the caller's ARN in
# three columns (principal, summary, recommendation), and a role's ARN has no hyphen to wrap at,
# so laid out by its words the table ran hundreds of pixels past the page, cut off on screen and
# on paper. The other tables hold an ARN once and fit laid out by their words.
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;color:#1d2733}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde3ea}
.meta{color:#5b6673;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{border:1px solid #dde3ea;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card span{font-size:12px;color:#5b6673}
table{border-collapse:collapse;width:100%;font-size:12px;margin:6px 0}
th,td{border-bottom:1px solid #eef1f4;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f6f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.unused td{background:#fff3cd}.badge{background:#c0392b;color:#fff;border-radius:3px;padding:0 4px;font-size:11px}
.sev-CRITICAL{color:#fff;background:#8e1b10}.sev-HIGH{color:#fff;background:#c0392b}
.sev-MEDIUM{background:#f0ad4e}.sev-LOW{background:#d9edf7}.note{color:#5b6673;font-size:12px}
code{font-size:11px}svg{max-width:100%;height:auto;display:block;margin:8px 0}
#alarms{table-layout:fixed}#alarms td{overflow-wrap:anywhere}#alarms th:nth-child(1){width:74px}
#alarms th:nth-child(2){width:104px}#alarms th:nth-child(4),#alarms th:nth-child(5){width:16%}
#alarms th:nth-child(6){width:48px}#alarms th:nth-child(7){width:88px}
.aliases{color:#5b6673;font-size:11px}
"""
# The page may hold what an imported record or a key's description put there: whatever slipped past
# escaping, the browser runs no script, loads nothing and applies no style but this one.
_STYLE_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode("ascii")
CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
                           "form-action 'none'")


def money(value: Any) -> str:
    """USD for people: cents from a dollar up, four places below; an amount under $0.0001 in
    full (a few requests cost $0.000018, which four places showed as $0.0000, as if free)."""
    amount = Decimal(str(value or 0))
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    if amount and abs(amount) < Decimal("0.0001"):
        return f"${amount.normalize():f}"
    return f"${amount:.4f}"


def render_html(data: ReportData) -> str:
    """The whole report page."""
    body = [
        _header(data), _cards(data), "<h2>Usage over time</h2>", *_usage_charts(data),
        "<h2>Cost</h2>", *_cost(data), "<h2>Last used</h2>", _last_used(data.last_used, data),
        "<h2>Denied calls</h2>", _denied(data.denied), "<h2>Alarms</h2>", _alarms(data.alarms, data.alarms_note),
        "<h2>Usage by key, principal and operation</h2>", _usage_table(data.usage),
    ]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
            "<title>keytrail report</title>"
            f"<style>{_CSS}</style></head><body>" + "".join(body) + "</body></html>\n")


def _header(data: ReportData) -> str:
    start = data.options.since or data.first_event
    end = data.options.until or data.as_of
    source = f" · source: <code>{markup(data.options.source_name)}</code>" if data.options.source_name else ""
    return (f"<h1>KMS usage, cost and security report</h1><p class=\"meta\">Period {_time(start)} → {_time(end)}"
            f" · as of {_time(data.as_of)}{source} · keytrail {markup(__version__)} · generated "
            f"{_time(datetime.now(UTC))}</p>")


def _cards(data: ReportData) -> str:
    keys = data.last_used.height
    cards = [
        # The period's, as every figure beside it: `data.events` counts the whole input read,
        # which over a --since/--until window showed events in a period that had none.
        ("events", f"{data.period_events():,}"), ("keys", f"{keys:,}"),
        ("principals", f"{_callers(data.usage, data.lifecycle):,}"),
        # As `keytrail cost` bills them: service events (RotateKey, DeleteKey) and CloudTrail's own
        # calls are in the usage rows but are no requests (docs/metrics.md).
        ("requests", f"{int(_sum(data.cost, 'requests')):,}"),
        ("denied calls", f"{int(data.denied.get_column('count').sum() or 0):,}"),
        ("unused keys", f"{int(data.last_used.get_column('unused').sum() or 0):,}"),
        ("alarms", f"{data.alarms.height:,}"),
        ("cost in period", money(_sum(data.cost, "totalCost"))),
        (_projected_label(data.projection), money(_sum(data.projection, "projectedCost"))),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card" data-figure="{markup(name)}"><b>{value}</b><span>{markup(name)}</span></div>'
        for name, value in cards) + "</div>"


def _callers(usage: pl.DataFrame, lifecycle: pl.DataFrame) -> int:
    """The principals that made requests, as the requests card counts them: KMS's own events
    (RotateKey, DeleteKey by "AWS Internal"), CloudTrail's unbilled calls and the CreateKey of a key
    AWS made (by the service that made it: s3.amazonaws.com) are in the usage rows but were no
    one's request."""
    return usage.filter(billable_rows(lifecycle)).get_column("principalArn").n_unique()


def _projected_label(projection: pl.DataFrame) -> str:
    """The projection's month by name: the month of the as-of time, which `--until 2027-01-01` (or
    any report of a past month) makes December, not the month the report is read in."""
    months = projection.get_column("month").unique().to_list() if projection.height else []
    return f"projected {months[0]}" if len(months) == 1 else "projected this month"


def _sum(frame: pl.DataFrame, column: str) -> Decimal:
    total = frame.get_column(column).sum() if frame.height else None
    return Decimal(str(total)) if total is not None else Decimal(0)


def _usage_charts(data: ReportData) -> list[str]:
    drawn = drawn_windows(data.usage_over_time, data.as_of)
    late = int(_sum(data.usage_over_time, "count") - _sum(drawn, "count"))
    note = ([f'<p class="note">{late:,} {"call" if late == 1 else "calls"} dated after the as-of time '
             f"{_time(data.as_of)} (a skewed clock, a bad imported record) {'is' if late == 1 else 'are'} "
             "in the tables below, not drawn.</p>"] if late else [])
    if drawn.height == 0:
        return ['<p class="note">No KMS requests in this period.</p>', *note]
    charts = []
    for column, label in (("keyArn", "key"), ("principalArn", "principal")):
        times, series = time_series(drawn, column, data.window, data.aliases if column == "keyArn" else {})
        # Events, as the events figure counts them: the usage rows hold KMS's own events too (RotateKey,
        # DeleteKey: "AWS Internal"), which are no requests (the requests figure and the cost leave them out).
        charts.append(line_chart(times, series, title=f"Events per {data.window} by {label}"))
    return charts + note


def drawn_windows(over_time: pl.DataFrame, as_of: datetime | None) -> pl.DataFrame:
    """The windows the charts draw: those before the as-of time. Without --until, calls dated after
    now (one record of 2099 among an hour of logs) count in the tables but end no chart: its axis,
    zero-filled per minute to 2099, was 38 million points a line, and the report ran out of memory."""
    return over_time if as_of is None else over_time.filter(pl.col("windowStart") < as_of)


_NONE = "(none)"


def time_series(over_time: pl.DataFrame, column: str, window: str,
                aliases: Mapping[str, str] | None = None) -> tuple[list[datetime], list[Series]]:
    """Per-window request counts of the busiest values of `column`, zero-filled, the rest as "other"
    (calls without a value, e.g. imported records without a principal ARN, as "(none)"; calls that
    name no key as "(no key)", as the cost chart and the tables say them); a key with `aliases` is
    named by them first."""
    over_time = over_time.with_columns(pl.col(column).fill_null(_NO_KEY if column == "keyArn" else _NONE))
    totals = over_time.group_by(column).agg(pl.col("count").sum()).sort(["count", column], descending=[True, False])
    names = totals.get_column(column).to_list()
    top = names if len(names) <= _SERIES + 1 else names[:_SERIES]
    label = pl.when(pl.col(column).is_in(top)).then(pl.col(column)).otherwise(pl.lit("other"))
    per = over_time.group_by("windowStart", label.alias("series")).agg(pl.col("count").sum())
    starts = over_time.get_column("windowStart")
    times: list[datetime] = pl.datetime_range(starts.min(), starts.max(), _STEP[window],  # type: ignore[arg-type]
                                              eager=True, time_zone="UTC").to_list()  # type: ignore[union-attr]
    series = []
    for name in [*top, *(["other"] if len(names) > len(top) else [])]:
        counts = dict(per.filter(pl.col("series") == name).select("windowStart", "count").iter_rows())
        series.append(Series(key_label(name, aliases or {}) if name != "other" else "other",
                             [float(counts.get(t, 0)) for t in times]))
    return times, series


def _cost(data: ReportData) -> list[str]:
    if data.cost.height == 0:
        return ['<p class="note">No cost in this period.</p>']
    per_key = (data.cost.group_by("keyArn").agg(pl.col("totalCost").sum())
               .sort(["totalCost", "keyArn"], descending=[True, False], nulls_last=True).head(15))
    bars = [Bar(key_label(key, data.aliases) if key else "(no key)", float(total))
            for key, total in per_key.iter_rows()]
    parts = [bar_chart(bars, title="Cost per key in the period (top 15)", unit=money)]
    projection = [Bar(account or "(none)", float(so_far), float(projected)) for account, so_far, projected in
                  data.projection.select("accountId", "monthToDateCost", "projectedCost").iter_rows()]
    if projection:
        month = data.projection.get_column("month")[0]
        parts.append(bar_chart(projection, title=f"Cost per account, {month}: so far / projected to month end",
                               unit=money, companion_name="projected"))
    parts.append(_projection_table(data.projection))
    parts.append('<p class="note">Key storage is billed to the account that owns the key, requests to the '
                 "account that made them: a key used from another account has a row for each. Key-months: "
                 f"hours billed over the hours of their calendar month (UTC).{_no_key_note(data.cost)}</p>")
    if data.keys_not_created:
        parts.append(f'<p class="note">{markup(storage_note(data.keys_not_created).removeprefix("note: "))}.</p>')
    if data.open_end is not None and data.open_end.late:
        parts.append(f'<p class="note">{markup(ahead_note(data.open_end).removeprefix("note: "))}.</p>')
    parts.extend(f'<p class="note">{markup(line)}.</p>' for line in data.clock_steps)
    parts.append(_table(data.cost, [("keyArn", "Key", _key), ("accountId", "Account", str),
                                    ("keyMonths", "Key-months", _decimal), ("keyCost", "Key cost", money),
                                    ("requests", "Requests", _int), ("requestCost", "Request cost", money),
                                    ("totalCost", "Total", money)], table_id="cost"))
    return parts


def _projection_table(projection: pl.DataFrame) -> str:
    return _table(projection, [("accountId", "Account", str), ("month", "Month", str),
                               ("monthToDateCost", "Month so far", money),
                               ("projectedKeyCost", "Key storage, whole month", money),
                               ("projectedRequestCost", "Requests, whole month (projected)", money),
                               ("projectedCost", "Projected month total", money)], table_id="projection")


def _last_used(frame: pl.DataFrame, data: ReportData) -> str:
    note = (f'<p class="note">Highlighted: not used in the {data.options.unused_days} days before '
            f"{_time(data.as_of)} (never used keys once they have existed that long); keys deleted or "
            "pending deletion, and AWS managed keys, are not.</p>")
    return note + _table(frame, [("keyArn", "Key", _code), ("lastUsedTime", "Last used", _time),
                                 ("lastUsedOperation", "Operation", str),
                                 ("lastUsedPrincipalArn", "By", _code), ("unused", "", _unused_badge)],
                         table_id="last-used", row_class=lambda row: "unused" if row["unused"] else "")


def _denied(frame: pl.DataFrame) -> str:
    if frame.height == 0:
        return '<p class="note">No denied calls.</p>'
    return _table(frame, [("principalArn", "Principal", _code), ("keyArn", "Key", _key),
                          ("eventName", "Operation", str), ("errorCode", "Error", str), ("count", "Calls", _int),
                          ("firstDenied", "First", _time), ("lastDenied", "Last", _time)], table_id="denied")


def _alarms(frame: pl.DataFrame, note: str | None = None) -> str:
    warning = f'<p class="note">Note: {markup(note)}.</p>' if note else ""
    if frame.height == 0:
        return warning or '<p class="note">No alarms (none recorded in alarms.jsonl for this period).</p>'
    per_rule = frame.group_by("rule").agg(pl.len().alias("alarms")).sort(["alarms", "rule"], descending=[True, False])
    chart = bar_chart([Bar(str(rule), float(count)) for rule, count in per_rule.iter_rows()],
                      title="Alarms by rule", unit=lambda value: f"{value:,.0f}")
    columns: list[Column] = [
        ("severity", "Severity", _severity), ("rule", "Rule", str), ("summary", "Summary", str),
        ("keyArn", "Key", _code), ("principalArn", "Principal", _code), ("count", "Count", _int),
        ("lastSeen", "Last seen", _time), ("recommendation", "Recommendation", str)]
    return warning + chart + _table(frame, columns, table_id="alarms")


def _usage_table(frame: pl.DataFrame) -> str:
    ordered = frame.sort(["count", "keyArn"], descending=[True, False], nulls_last=True)
    return _table(ordered, [("keyArn", "Key", _key), ("principalArn", "Principal", _code),
                            ("eventName", "Operation", str), ("accountId", "Account", str),
                            ("count", "Requests", _int), ("errorCount", "Errors", _int)], table_id="usage")


Column = tuple[str, str, Callable[[Any], str]]
_NUMERIC = {"_int", "_decimal", "money"}


def _table(frame: pl.DataFrame, columns: Sequence[Column], *, table_id: str,
           row_class: Callable[[dict[str, Any]], str] | None = None) -> str:
    head = "".join(f"<th>{markup(title)}</th>" for _, title, _ in columns)
    rows = []
    for row in frame.head(MAX_ROWS).iter_rows(named=True):
        cls = row_class(row) if row_class else ""
        cells = "".join(_cell(row.get(name), show, row.get("aliases") if name == "keyArn" else None)
                        for name, _, show in columns)
        rows.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    more = (f'<p class="note">{frame.height - MAX_ROWS:,} more rows in the CSV, JSON or Parquet report.</p>'
            if frame.height > MAX_ROWS else "")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{more}'


def _cell(value: Any, show: Callable[[Any], str], aliases: str | None = None) -> str:
    """One cell; a key ARN's with the key's aliases under it."""
    css = ' class="n"' if show.__name__ in _NUMERIC else ""
    text = show(value) if value is not None or show in _SHOWS_NONE else ""
    named = f'<div class="aliases">{markup(aliases)}</div>' if aliases else ""
    return f"<td{css}>{text if show in _RAW else markup(text)}{named}</td>"


def key_label(key_arn: str, aliases: Mapping[str, str]) -> str:
    """A key's name in a chart: its first alias (and how many more), then its short ARN: an alias
    moved in the period names two keys, which only the ARN tells apart."""
    names = aliases.get(key_arn, "").split()
    if not names:
        return short_arn(key_arn)
    first = names[0] if len(names[0]) <= 24 else names[0][:23] + "…"
    more = f" +{len(names) - 1}" if len(names) > 1 else ""
    return f"{first}{more} · {short_arn(key_arn)}"


def _time(value: Any) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else "—"


def _int(value: Any) -> str:
    return f"{int(value):,}"


def _decimal(value: Any) -> str:
    return f"{float(value):.4f}"


def _code(value: Any) -> str:
    return f"<code>{markup(str(value))}</code>"


def _key(value: Any) -> str:
    """A key ARN, or the label of the rows of calls that name no key (an empty cell read as missing)."""
    return _code(value) if value is not None else _NO_KEY


def _no_key_note(cost: pl.DataFrame) -> str:
    if cost.get_column("keyArn").null_count() == 0:
        return ""
    return (f" {_NO_KEY}: the account's calls that name no key (ListKeys, ListAliases, GenerateRandom, …), "
            "billed as requests.")


def _severity(value: Any) -> str:
    return f'<span class="sev-{markup(str(value))}">{markup(str(value))}</span>'


def _unused_badge(value: Any) -> str:
    return '<span class="badge">unused</span>' if value else ""


_NO_KEY = "(no key)"
_RAW = (_code, _key, _severity, _unused_badge)  # these build their own escaped markup
_SHOWS_NONE = (_key, _unused_badge)  # these show something for an empty value too
