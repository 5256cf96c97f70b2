"""`keytrail report`: an offline usage, cost and security report from a data dir or CloudTrail logs."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keytrail.cli.console import (
    CLOUDTRAIL_COMMAND,
    CLOUDTRAIL_HELP,
    CLOUDTRAIL_METAVAR,
    FREE_TIER_HELP,
    Terminated,
    cloudtrail_paths,
    counted,
    event_log_damage,
    fail,
    interrupted_status,
    log_files_problem,
    named_path,
    path_option,
    price_table,
    terminate_as_interrupt,
)
from keytrail.cli.time_window import parse_window, since_after_default_end
from keytrail.data_dir_layout import write_over_problem
from keytrail.owner_only import within
from keytrail.reports.formats import TABLES, ReportFormat
from keytrail.reports.progress import Progress
from keytrail.transport.read_problems import Problems

# The pipeline and the report's code (polars) load in the functions that use them, not with
# `keytrail report --help` (commands.py).
if TYPE_CHECKING:
    from keytrail.pipeline.runner import Source
    from keytrail.reports.collect import ReportData, ReportOptions
    from keytrail.transport.cloudtrail_logs import ReadReport

__all__ = ["register", "report"]

_SUFFIXES = {".html": ReportFormat.html, ".htm": ReportFormat.html, ".csv": ReportFormat.csv,
             ".json": ReportFormat.json, ".jsonl": ReportFormat.json, ".parquet": ReportFormat.parquet}


def report_fail(message: str, code: int = 2) -> typer.Exit:
    return fail(message, "keytrail report", code)


def report(
    ctx: typer.Context,
    out: Annotated[Path, path_option("--out", help="File to write (- for standard output).")],
    data_dir: Annotated[Path | None, path_option(
        "--data-dir", help="Node data dir: read its event log (default: keytrail-data, without --cloudtrail).")] = None,
    cloudtrail: Annotated[list[Path] | None, typer.Option(
        "--cloudtrail", metavar=CLOUDTRAIL_METAVAR, parser=named_path,
        help=CLOUDTRAIL_HELP)] = None,
    since: Annotated[str | None, typer.Option(help="Start (ISO-8601, inclusive).")] = None,
    until: Annotated[str | None, typer.Option(help="End (ISO-8601, exclusive); also the as-of time.")] = None,
    output: Annotated[ReportFormat | None, typer.Option(
        "--format", help="html, csv, json (JSON lines) or parquet; default from --out's suffix.")] = None,
    table: Annotated[str | None, typer.Option(help=f"Tabular formats: only this table ({', '.join(TABLES)}).")] = None,
    alarms: Annotated[Path | None, path_option(help="Alarms JSON lines; default <data-dir>/alarms.jsonl.")] = None,
    prices: Annotated[Path | None, path_option(help="TOML price table overriding the defaults.")] = None,
    free_tier: Annotated[bool | None, typer.Option(help=FREE_TIER_HELP, show_default=False)] = None,
    unused_days: Annotated[int, typer.Option(
        help="Highlight keys unused for this many days.", min=1, max=36_500)] = 30,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar on stderr (default: when stderr is a terminal).")] = None,
) -> None:
    """Write a usage, cost, last-used, denied-calls and alarms report (HTML, CSV, JSON lines or Parquet)."""
    from keytrail.reports.collect import ReportOptions, collect_event_log

    cloudtrail = cloudtrail_paths(cloudtrail, ctx.args, "keytrail report")
    to_stdout = str(out) == "-"
    if to_stdout:  # as for most tools (`--out - --format csv | …`): it wrote a file named "-"
        out = Path("/dev/stdout")  # for the checks below: the report is copied to the descriptor itself
    if data_dir is not None and cloudtrail:
        raise report_fail("give --data-dir or --cloudtrail, not both")
    _refuse_node_file(out, None if cloudtrail else data_dir or Path("keytrail-data"))
    if out.is_dir():  # said now, not after reading a history of years only to fail writing it
        raise report_fail(f"--out: {out} is a folder: name the file to write")
    form = output or _SUFFIXES.get(out.suffix.lower(), ReportFormat.html)
    if table is not None and (form is ReportFormat.html or table not in TABLES):
        raise report_fail(f"--table: one of {', '.join(TABLES)}, with --format csv, json or parquet")
    log, name, default_alarms = _input(data_dir, cloudtrail)
    low, high = parse_window(since, until, "keytrail report")
    options = ReportOptions(since=low, until=high,
                            prices=price_table(prices, free_tier, "keytrail report"), unused_days=unused_days,
                            alarms=alarms or default_alarms, source_name=name,
                            data_dir=None if cloudtrail else data_dir or Path("keytrail-data"))
    if alarms is not None and not alarms.is_file():  # a folder named is there: "no such file" misled
        raise report_fail(f"--alarms: {'not a file' if alarms.exists() else 'no such file'}: {alarms}")
    from keytrail.transport.cloudtrail_logs import ReadReport

    # Of the CloudTrail log files: its problems counted, the first ones said on stderr as met.
    read = ReadReport(problems=Problems(on_shown=_name_problem))
    try:
        with terminate_as_interrupt():  # a SIGTERM while writing removes the half-written file, as Ctrl-C does
            data = (collect_event_log(log, options, progress) if log
                    else _collect_files(cloudtrail or [], options, progress, read))
            _require_period(since, low, high, data.as_of, data.open_end.late if data.open_end else 0)
            written = (_write_standard_output(data, form, table) if to_stdout else
                       _write(data, out, form, table,
                              owner_only=not cloudtrail and within(out, data_dir or Path("keytrail-data"))))
    except Terminated as stopped:
        raise report_fail("stopped (SIGTERM): no report written", code=interrupted_status(stopped)) from None
    # The period's events, as the page's card says them: not every event read (a December report
    # of a year's log said the year's).
    where = "standard output" if to_stdout else written
    typer.echo(f"wrote {where} ({form.value}: {counted(data.period_events(), 'event')}, "
               f"{counted(data.last_used.height, 'key')}, {counted(data.alarms.height, 'alarm')})", err=True)
    if data.alarms_note is not None:
        typer.echo(f"note: {data.alarms_note}", err=True)
    for line in data.clock_steps:
        typer.echo(f"note: {line}", err=True)
    if data.open_end is not None and data.open_end.late:
        from keytrail.reports.figures import ahead_note

        typer.echo(ahead_note(data.open_end), err=True)
    if cloudtrail and not read.records and not read.problems:  # empty tables must not read as a quiet period
        typer.echo(f"note: {_NO_KMS_RECORD.format(counted(read.skipped, 'record'))}", err=True)
    if note := read.problems.unshown_note():
        typer.echo(f"note: {note}", err=True)
    if read.problems:
        raise report_fail(f"{counted(len(read.problems), 'problem')} in the CloudTrail log "
                          "files (above): the report leaves out what could not be read", code=1)
    if not cloudtrail:
        _require_whole_log(data_dir or Path("keytrail-data"))


def _refuse_node_file(out: Path, data_dir: Path | None) -> None:
    """A report written over a data dir's own files (`--out keytrail-data/root.key`), the one read
    or another node's, loses every key's material at the node's next start; a new file beside them
    is the user's to write."""
    if problem := write_over_problem(data_dir, out):
        raise report_fail(f"--out: {out} {problem}: name another file (a new one in the data dir will do)")


def _write(data: ReportData, out: Path, form: ReportFormat, table: str | None, *, owner_only: bool) -> Path:
    from keytrail.reports.output import write_report

    try:
        return write_report(data, out, form, table, owner_only=owner_only)
    except OSError as error:
        raise report_fail(f"--out: cannot write {out}: {error.strerror or error}", code=1) from None


def _write_standard_output(data: ReportData, form: ReportFormat, table: str | None) -> Path:
    """`--out -`: the report made whole in a private temporary folder, then copied to the
    descriptor the shell gave. Opened again by name (/dev/stdout), a file that standard output was
    redirected to was truncated, `>>` too, and what was written there before the report was lost."""
    with tempfile.TemporaryDirectory(prefix="keytrail-report-") as folder:
        made = _write(data, Path(folder) / "report", form, table, owner_only=True)
        try:
            with made.open("rb") as report:
                shutil.copyfileobj(report, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        except BrokenPipeError:  # the reader gone (`| head -1`): quietly, exit 1, as click ends it
            raise
        except OSError as error:  # a full disk
            raise report_fail(f"--out: cannot write standard output: {error.strerror or error}", code=1) from None
    return Path("-")


def _require_period(since: str | None, low: datetime | None, high: datetime | None, as_of: datetime | None,
                    late: int) -> None:
    """An explicit --until before --since is refused as the options are read; the default one is
    known only now (`since_after_default_end`; `late`: events dated after now, which move it)."""
    if low is not None and high is None and as_of is not None and low >= as_of:
        raise report_fail(since_after_default_end(str(since), as_of, late))


def _require_whole_log(data_dir: Path) -> None:
    """A damaged event log reads as fewer events: say so and exit 1, as `keytrail consume` does,
    rather than hand over a report of part of the trail as if it were all of it."""
    if problem := event_log_damage(data_dir):
        raise report_fail(f"{problem}; the report covers the records before it", code=1)


def _input(data_dir: Path | None, cloudtrail: list[Path] | None) -> tuple[Path | None, str, Path | None]:
    """The event log to read (None: the CloudTrail files), what to call the input, its alarms file."""
    if cloudtrail:
        if problem := log_files_problem(cloudtrail, "--cloudtrail"):
            raise report_fail(problem)
        return None, ", ".join(map(str, cloudtrail)), None
    return _log_dir(data_dir or Path("keytrail-data"))


def _log_dir(data_dir: Path) -> tuple[Path, str, Path]:
    from keytrail.pipeline.consumer import event_log_dir

    log = event_log_dir(data_dir)
    if not log.is_dir():
        raise report_fail(f"no event log in {data_dir} (expected {log})")
    return log, str(data_dir), data_dir / "alarms.jsonl"


#: A trail can leave KMS out (ExcludeManagementEventSources: kms.amazonaws.com, a common saving:
#: audit-anchors §1.1, §4): its files give a report of empty tables, as if no key were used.
_NO_KMS_RECORD = ("the CloudTrail files given hold no KMS record ({} of other services): the report's tables are "
                  "empty, which says nothing of KMS use (a trail that excludes KMS events logs none)")


def _collect_files(paths: list[Path], options: ReportOptions, progress: bool | None,
                   read: ReadReport) -> ReportData:
    """The report of CloudTrail log files, consumed in this process (their records are read
    through a generator, which cannot be handed to a child)."""
    from keytrail.reports.collect import collect_sync

    bar = Progress("files", enabled=progress)
    if read.problems.on_shown is not None:
        read.problems.on_shown = bar.above(read.problems.on_shown)  # a problem said as met: its own line
    try:
        return collect_sync(_files_source(paths, bar, read), options)
    finally:
        bar.close()


def _files_source(paths: list[Path], bar: Progress, read: ReadReport) -> Source:
    """The records of the CloudTrail log files, counted in `read`; each problem reading them is
    counted in `read.problems` (which says the first ones on stderr), so that the report, written
    from the rest, exits 1 as `consume` does."""
    from keytrail.pipeline.layout import CLOUDTRAIL_PARTITION
    from keytrail.pipeline.sources import RecordsSource
    from keytrail.transport.cloudtrail_logs import iter_cloudtrail_records, iter_log_files

    # a folder or file the walk cannot read: no file's read counts it
    files = list(iter_log_files(paths, read.problems.append))

    def records() -> Iterator[dict[str, Any]]:
        for done, path in enumerate(files, start=1):
            yield from iter_cloudtrail_records([path], report=read)
            bar.update(done, len(files))

    return RecordsSource(records(), partition=CLOUDTRAIL_PARTITION, text_read=lambda: read.text)


def _name_problem(text: str) -> None:
    typer.echo(f"skipped: {text}", err=True)  # worded as audit import, consume and detect say it


def register(app: typer.Typer) -> None:
    """Add `report` to the `keytrail` app."""
    app.command("report", **CLOUDTRAIL_COMMAND)(report)
