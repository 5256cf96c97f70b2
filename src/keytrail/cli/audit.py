"""`keytrail audit …`: read, follow, verify, import and export the audit event log."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import select
import signal
import sys
import time
import zlib
from array import array
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import typer

from keytrail.cli.console import (
    counted,
    event_log_damage,
    fail,
    interrupted_status,
    log_files_problem,
    named_path,
    number_in_range,
    os_problem,
    path_option,
    printable,
    terminate_as_interrupt,
)
from keytrail.data_dir_layout import write_over_problem
from keytrail.transport.segment_log import LogLockedError, SegmentLog, event_log_dir
from keytrail.transport.segment_reader import LogEnd, StallWatch

# The event schema, the CloudTrail files and the verifier (fastavro, aiokafka, cryptography) load in
# the functions that use them, not with `keytrail audit … --help` (commands.py).
if TYPE_CHECKING:
    from keytrail.audit.cloudtrail_files import ImportReport

__all__ = ["audit_app", "register"]

audit_app = typer.Typer(help="The audit trail: CloudTrail-format events of every KMS call.",
                        no_args_is_help=True)

DataDir = path_option(Path("keytrail-data"), "--data-dir", help="The node's data directory.")
#: What `events` and `tail` print each event as (_line).
_FORMAT_HELP = ("json: the CloudTrail record, one per line; text: its time, operation, outcome (OK or the error "
               "code), caller and resource ARNs, one line each.")


class Format(StrEnum):
    json = "json"
    text = "text"


class ExportFormat(StrEnum):
    cloudtrail = "cloudtrail"


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr naming the command group; exit 1 (as `verify` exits on a problem) unless
    `code` says otherwise (130 or 143: stopped by a signal)."""
    raise fail(message, "keytrail audit", code)


def _line(event: dict[str, Any], fmt: Format) -> str:
    if fmt is Format.json:
        return json.dumps(event, separators=(",", ":"))
    identity = event.get("userIdentity") or {}
    # CloudTrail names a caller of another account (`AWSAccount`, the key owner's copy) by account alone.
    who = identity.get("arn") or identity.get("invokedBy") or identity.get("accountId") or "-"
    outcome = event.get("errorCode") or "OK"
    return printable(f"{event.get('eventTime')} {event.get('eventName')!s:<22} {outcome:<24} {who} "
                     f"{_resource_arns(event)}")


def _resource_arns(event: dict[str, Any]) -> str:
    """The key ARNs of `resources` (imported records may hold anything there)."""
    resources = event.get("resources")
    arns = [r.get("ARN") for r in resources if isinstance(r, dict)] if isinstance(resources, list) else []
    return ",".join(arn for arn in arns if isinstance(arn, str)) or "-"


def _events(data_dir: Path, log: SegmentLog) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, CloudTrail record) of every event `log` holds, oldest first by eventTime (older
    history `audit import` added after newer calls included); an unreadable record ends the
    command, naming it."""
    from keytrail.audit.by_time import events_by_time
    from keytrail.audit.schema import SchemaError

    try:
        yield from events_by_time(data_dir, log)
    except SchemaError as exc:
        _fail(f"the event log in {data_dir} holds an unreadable record: {exc}")


@audit_app.command()
def events(data_dir: Path = DataDir, fmt: Format = typer.Option(Format.json, "--format", help=_FORMAT_HELP)) -> None:
    """Print the stored events, one CloudTrail JSON record per line, oldest first."""
    _require_log(data_dir)
    log = _reader(data_dir)
    for _, event in _events(data_dir, log):
        sys.stdout.write(_line(event, fmt) + "\n")
    _require_whole_log(data_dir, log)


# Between polls of `audit tail`: below a hundredth of a second (1e-9 was taken) it re-read the log in a
# busy loop, a core's worth of CPU for nothing a reader could see; past an hour a new event waits
# longer than anyone watches, and past time_t's reach (1e300) time.sleep raised a traceback.
_MIN_INTERVAL, _MAX_INTERVAL = 0.01, 3600.0


@audit_app.command()
def tail(data_dir: Path = DataDir, fmt: Format = typer.Option(Format.text, "--format", help=_FORMAT_HELP),
         lines: int = typer.Option(10, "--lines", "-n", min=0, help="Events to show before following."),
         follow: bool = typer.Option(True, "--follow/--no-follow",
                                     help="Show new events as they are written, until stopped; or stop after "
                                          "the last ones."),
         interval: float = typer.Option(
             0.2, "--interval", callback=number_in_range(_MIN_INTERVAL, _MAX_INTERVAL),
             help=f"Seconds between polls, {_MIN_INTERVAL:g} to {_MAX_INTERVAL:g}.")) -> None:
    """Show the last events and follow new ones as they are written (Ctrl-C or SIGTERM stops)."""
    _require_log(data_dir)
    followed = _FollowedLog(event_log_dir(data_dir))
    # Counted by a reader of its own: the follower's index would cover the records from `offset` on
    # before it reads them, and read them back as indexed, unchecked, were the file cut meanwhile.
    counted = SegmentLog(followed.directory)
    offset, shown = max(counted.start_offset(), counted.end_offset() - lines), _ShownRecords()
    try:
        with terminate_as_interrupt():  # SIGTERM (a supervisor's stop) ends it as Ctrl-C does: exit 0
            _follow(data_dir, fmt, followed, offset, shown, follow, interval)
    except KeyboardInterrupt:
        return


def _follow(data_dir: Path, fmt: Format, followed: _FollowedLog, offset: int, shown: _ShownRecords, follow: bool,
            interval: float) -> None:
    """Show what is new every `interval` seconds (once, unless `follow`)."""
    # Held at a damaged record, `tail` showed nothing more, and nothing said why.
    stall = StallWatch(followed.directory, "audit tail", "shown")
    while True:
        before = offset
        offset = _show_new(data_dir, fmt, followed, offset, shown)
        sys.stdout.flush()
        if not follow:  # a one-off read, as `events` is: damage must not pass for the log's end
            _require_whole_log(data_dir, followed.log)
            return
        stall.polled_blocking(offset, followed.ends(), int(offset != before))  # found: whether it moved on
        if _reader_gone(sys.stdout):  # as a write to it would fail: quietly, exit 1
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        time.sleep(interval)


def _show_new(data_dir: Path, fmt: Format, followed: _FollowedLog, offset: int, shown: _ShownRecords) -> int:
    """Show the records from `offset` on; the offset after the last shown. A batch read is shown
    once the log is found, after the read, to hold it still, and the last record shown before it;
    else the log was cut back: that is said, and the log read afresh from the cut."""
    while True:
        records = followed.log.read(offset, 2000)
        # Looked at after the read: a folder swapped in between a look and the read was read through
        # the old folder's index (its segments have the same names), taken for a cut of the old log.
        if followed.replaced():
            typer.echo("keytrail audit tail: the event log's folder was replaced (a new trail, or one restored): "
                       "following the new one from its start", err=True)
            offset = followed.log.start_offset()
            shown.forget()
            continue
        if not shown.still_there(followed.log, offset, records):
            offset = _follow_from_cut(followed, offset, shown)
            continue
        if not records:
            return offset
        if records[0][0] > offset:
            _say_passed_over(offset, records[0][0])
        for offset_read, payload, event in _decoded(data_dir, records):
            sys.stdout.write(_line(event, fmt) + "\n")
            shown.add(offset_read, payload)
        offset = records[-1][0] + 1


def _say_passed_over(offset: int, first: int) -> None:
    """Retention deleted segments before `tail` read them (stopped with Ctrl-Z, or far behind): the
    lines went missing from its output with nothing to tell that they had."""
    gone = first - offset
    typer.echo(f"keytrail audit tail: the {gone} record{'s' * (gone != 1)} at offsets {offset}..{first - 1} were "
               f"deleted by retention before they were shown; following the log from offset {first}", err=True)


def _follow_from_cut(followed: _FollowedLog, offset: int, shown: _ShownRecords) -> int:
    """Say how many records shown the cut took, if any, and read the log afresh (the reader's index
    of the segment is stale): the offset to follow it from."""
    cut = shown.cut_back(followed.directory, offset)
    if cut < offset:
        gone = offset - cut
        typer.echo(f"keytrail audit tail: the event log was cut back to offset {cut} (a torn tail cut by a "
                   f"restarted keytrail serve): the {gone} record{'s' * (gone != 1)} shown from there "
                   "are no longer in it; following the log from there", err=True)
    followed.log = SegmentLog(followed.directory)
    return cut


class _FollowedLog:
    """The event log `tail` follows, read anew when its folder is replaced (moved aside to start a
    new trail, as docs/audit-events.md advises, or restored from a backup): a reader of the old
    folder's segments waits for the old trail's next offset while the new trail's records, from
    offset 0, go unshown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.identity = _folder_identity(directory)
        self.log = SegmentLog(directory)
        self.ends = LogEnd(directory)  # the end StallWatch weighs the reader's offset against

    def replaced(self) -> bool:
        """Whether another folder stands at the log's path since the last call (the readers are then new)."""
        now = _folder_identity(self.directory)
        if now is None or now == self.identity:  # gone for now: its replacement is read once it is there
            return False
        self.identity, self.log, self.ends = now, SegmentLog(self.directory), LogEnd(self.directory)
        return True


def _decoded(data_dir: Path, records: list[tuple[int, bytes]]) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
    """(offset, value, CloudTrail record) of `records`, in order."""
    from keytrail.audit.cloudtrail_files import decoded_in_order
    from keytrail.audit.schema import SchemaError

    events = decoded_in_order([value for _, value in records])
    try:  # the records before an unreadable one are shown, then it is named
        yield from ((offset, value, event) for (offset, value), event in zip(records, events, strict=True))
    except SchemaError as exc:
        _fail(f"the event log in {data_dir} holds an unreadable record: {exc}")


class _ShownRecords:
    """The checksums of the records `tail` printed, from its last read segment on. A writer that
    opens the log cuts a torn tail in place: a crash of the machine can take records the page cache
    held, written (and shown) but not yet synced, and no acknowledged call with them. The writer
    then numbers its new records from the cut on, and the reader's index of the segment points past
    the file's end, or into the new frames once the file grows again: `tail` waited in silence, or
    (the new records framed as the old were) showed the new records past the old end as if they
    followed the old ones."""

    def __init__(self) -> None:
        self.first = 0  # the offset of sums[0]; sums[-1] is the last record shown, when there is one
        self.sums = array("I")

    def forget(self) -> None:
        """Start afresh: the records shown were of a log no longer at its path."""
        self.first, self.sums = 0, array("I")

    def add(self, offset: int, value: bytes) -> None:
        if offset != self.first + len(self.sums):  # retention passed records over: start afresh
            self.first, self.sums = offset, array("I")
        self.sums.append(zlib.crc32(value))

    def still_there(self, log: SegmentLog, offset: int, records: list[tuple[int, bytes]]) -> bool:
        """Whether the log holds, read again through the reader's index, the last record shown and
        `records`, just read from `offset` on, as they were. Looked at after the read, not before:
        a cut (and new records) landing between a look and the read, or between two reads, had
        the read show the new records past the old end as if they followed, and the next look,
        at records the cut left or at those new ones, found the log as shown."""
        self._keep_to_last_segment(log.segment_bases())
        expected = {found: zlib.crc32(value) for found, value in records}
        if self.sums:
            expected[offset - 1] = self.sums[-1]
        if not expected:
            return True
        start = min(expected)
        again = log.read(start, max(expected) + 1 - start)  # the bytes now where they were read
        return all(zlib.crc32(value) == expected[found] for found, value in again if found in expected)

    def cut_back(self, directory: Path, offset: int) -> int:
        """The offset, up to `offset` (the next to show), from which the records shown are no longer
        in the log, read afresh; what was shown from there on is forgotten."""
        if not self.sums:
            return offset
        reader = SegmentLog(directory)
        kept = min(max(reader.start_offset() - self.first, 0), len(self.sums))  # deleted by retention, not cut
        for found, value in reader.read(self.first + kept, len(self.sums) - kept):
            if found != self.first + kept or zlib.crc32(value) != self.sums[kept]:
                break
            kept += 1
        del self.sums[kept:]
        return self.first + kept

    def _keep_to_last_segment(self, bases: list[int]) -> None:
        """Only the last segment is ever cut: memory is kept to the records shown from it."""
        if bases and bases[-1] > self.first:
            end = self.first + len(self.sums)  # past the last record shown; counted before the trim
            del self.sums[: bases[-1] - self.first]
            self.first = min(bases[-1], end)


def _folder_identity(directory: Path) -> tuple[int, int] | None:
    try:
        found = directory.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _reader_gone(stream: TextIO) -> bool:
    """Whether `stream` is a pipe whose reader closed it (`… | head -1` has its line): a follower
    with nothing new to write would learn it only at the next event, on an idle node never
    (GNU tail -f asks the same). poll() names it POLLERR; a hung-up terminal POLLHUP."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # no descriptor (a test's captured stream): nothing to ask
        return False
    poller = select.poll()
    poller.register(fd, 0)  # no events asked: only the errors and hang-ups poll always reports
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


@audit_app.command()
def verify(data_dir: Path = DataDir,
           public_key: Path | None = path_option(
               None, "--public-key", metavar="FILE",
               help="A copy of the node's signing-key.pub.pem kept off the node: the digests must be signed by it "
                    "(without it, a key made by whoever can write the data dir passes too)."),
           digests: Path | None = path_option(
               None, "--digests", metavar="DIR",
               help="A copy of the node's audit/integrity/digests/ kept off the node: each must still be on the "
                    "node, unchanged (without it, a trail cut back with its newest digests passes).")) -> None:
    """Check the event log against its hash chain and signed digests; exit 1 naming each problem."""
    from keytrail.audit.verification import OffNode, public_key_problem
    from keytrail.audit.verification import check as check_trail

    _require_log(data_dir)  # a mistyped --data-dir is a usage error, said as its sibling commands say it
    if digests is not None and not digests.is_dir():
        _fail(f"--digests: {digests} is not a folder")
    if public_key is not None and not public_key.is_file():
        _fail(f"--public-key: {public_key} is not a file")
    if public_key is not None and (problem := public_key_problem(public_key)):
        _fail(problem)
    verdict = check_trail(data_dir, OffNode(public_key, digests))
    for problem in verdict.problems:
        typer.echo(problem)
    if verdict.problems:
        raise typer.Exit(1)
    typer.echo(f"audit trail in {data_dir} verified: no record missing, altered, reordered or inserted")
    for note in verdict.notes:
        typer.echo(note)


@audit_app.command("import")
def import_(paths: list[Path] = typer.Argument(..., parser=named_path,
                                               help="CloudTrail log files or folders (- for standard input)."),
            data_dir: Path = DataDir) -> None:
    """Import the KMS records of AWS CloudTrail log files (.json, .json.gz) into the event log;
    lookup-events and filter-log-events output, CloudWatch Logs exports, EventBridge events and JSON
    lines of records too (docs/reports.md).

    SIGTERM or Ctrl-C stops it cleanly: the records read so far are stored and signed, the count
    printed, and it exits 143 or 130."""
    from keytrail.audit import spool
    from keytrail.audit.cloudtrail_files import import_cloudtrail
    from keytrail.kms.model import AuditUnavailable

    # Before the event log is opened (or a data dir made for it): an import of nothing signed a new trail.
    if problem := log_files_problem(paths):
        _fail(problem)
    # A write that fails (a full disk) is this command's one line below, not also the spool's log line.
    with _stop_on_signal() as stop, _unlogged(spool.__name__):
        try:
            report = asyncio.run(import_cloudtrail(data_dir, paths, stop.requested))
        except LogLockedError as exc:
            _fail(f"{exc} (a `keytrail serve`, `keytrail root-key rotate` or another `keytrail audit import`: stop it, "
                  "or let it finish, first)")
        except OSError as exc:  # --data-dir a file, or read-only
            _fail(f"--data-dir: cannot write the event log in {data_dir}: {os_problem(exc)}")
        except AuditUnavailable as exc:  # a full disk midway: what was stored stays, and is passed over next time
            _fail(f"cannot store records in the event log in {data_dir} ({exc}): run the same import again once it "
                  "can write; the records it imported are then passed over as already in the event log")
    for problem in report.problems:  # the first ones; all are counted below
        typer.echo(f"skipped: {problem}", err=True)
    if note := report.problems.unshown_note():
        typer.echo(f"note: {note}", err=True)
    if report.stopped_at is not None and stop.received is not None:
        _stopped(report, stop.received)
    digests = f"; {_count(report.digests, 'digest file')} passed over" if report.digests else ""
    typer.echo(f"imported {_count(report.records, 'KMS record')} from {_files_read(report)}; "
               f"skipped {_count(report.skipped, 'record')} of other services and "
               f"{report.duplicates} already in the event log; "
               f"{_count(len(report.problems), 'problem')}{digests}")
    if report.problems:  # what could be read is imported; a script still learns that some was not
        raise typer.Exit(1)


@contextlib.contextmanager
def _unlogged(logger: str) -> Iterator[None]:
    """Silence `logger` meanwhile (and only meanwhile: the CLI also runs inside other processes)."""
    level = logging.getLogger(logger).level
    logging.getLogger(logger).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logging.getLogger(logger).setLevel(level)


class _StopSignal:
    """The SIGTERM or SIGINT that asked an import to stop. The first one lets it store the records
    it read and sign the final digest; a second one, for whom that takes too long, ends the
    process at once (as kill -9 would: whoever opens the log next signs what it left as imported)."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)
        for sig in _STOP_SIGNALS:
            if signal.getsignal(sig) is self:
                signal.signal(sig, signal.SIG_DFL)

    def requested(self) -> bool:
        return self.received is not None


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _stop_on_signal() -> Iterator[_StopSignal]:
    """Catch SIGTERM and SIGINT while importing (set before asyncio.run, which then leaves SIGINT to
    us rather than cancel the import where it is, saying nothing of how far it got). A signal the
    import was started ignoring stays ignored (a shell starts a script's background jobs so)."""
    stop = _StopSignal()
    previous = {sig: signal.signal(sig, stop) for sig in _STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(report: ImportReport, received: signal.Signals) -> NoReturn:
    """One line for an import a signal stopped, and the shell's exit status for it (128 + the
    signal: 130 for SIGINT, 143 for SIGTERM): the files were not all imported."""
    raise fail(f"stopped by {received.name}: imported {_count(report.records, 'KMS record')} before it stopped "
               f"(signed, with a final digest); not imported: {report.stopped_at} and everything after it",
               "keytrail audit import", 128 + received.value)


def _files_read(report: ImportReport) -> str:
    """The files an import read, those a problem cut short after some of their records said apart
    ("from 0 files" was said of a .json.gz cut short whose records before the cut were imported)."""
    whole, part = report.files, report.partly_read
    if not part:
        return _count(whole, "file")
    if not whole:
        return f"{_count(part, 'file')} read in part"
    return f"{_count(whole + part, 'file')} ({part} read in part)"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


@audit_app.command()
def export(out: Path = typer.Argument(..., parser=named_path, help="Folder to write AWSLogs/… into."),
           fmt: ExportFormat = typer.Option(ExportFormat.cloudtrail, "--format",
                                            help="cloudtrail: gzipped log files as a trail writes them to S3 "
                                                 "(the one format)."),
           data_dir: Path = DataDir) -> None:
    """Write the event log as CloudTrail log files (AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD).
    Run again into the same folder, it writes the files over, with the records since: none twice."""
    from keytrail.audit.cloudtrail_files import EventLogUnreadable, ExportWouldDropRecords, export_cloudtrail
    from keytrail.audit.schema import SchemaError

    _refuse_node_folder(out, data_dir)
    _require_log(data_dir)
    log = _reader(data_dir)
    try:
        with terminate_as_interrupt():
            written = export_cloudtrail(data_dir, out, log)
    except KeyboardInterrupt as stopped:  # Ctrl-C or SIGTERM: files of part of the log are there
        _fail(f"export stopped before the end: {out / 'AWSLogs'} holds part of the event log (run the same "
              "export again to finish it: it writes the same files over these)", interrupted_status(stopped))
    except EventLogUnreadable as exc:  # a segment unreadable (permissions, a folder in its place)
        _fail(f"cannot read the event log in {data_dir}: {os_problem(exc.error)}")
    except ExportWouldDropRecords as exc:  # a restored log's new calls at offsets the folder's files name
        _fail(str(exc))
    except SchemaError as exc:  # a record edited (its checksum fixed) or of an unknown schema
        _fail(f"the event log in {data_dir} holds an unreadable record: {exc}")
    except OSError as exc:  # OUT a file, or read-only
        _fail(f"cannot write CloudTrail log files under {out}: {os_problem(exc)}")
    typer.echo(f"wrote {counted(len(written), 'CloudTrail log file')} under {out / 'AWSLogs'}")
    _require_whole_log(data_dir, log)


def _refuse_node_folder(out: Path, data_dir: Path) -> None:
    """An export into the data dir's own folders (`audit/`, `metrics/`) or over its files is refused
    as a usage error (exit 2), before anything is written: `OUT` itself, and the `AWSLogs` folder it
    writes into, which a link could send there. Into the data dir itself, `AWSLogs/` is new and allowed."""
    for target in (out, out / "AWSLogs"):
        if problem := write_over_problem(data_dir, target):
            _fail(f"{target} {problem}: export into another folder (a new one in the data dir will do)", 2)


def _reader(data_dir: Path) -> SegmentLog:
    return SegmentLog(event_log_dir(data_dir))


def _require_whole_log(data_dir: Path, log: SegmentLog) -> None:
    if problem := event_log_damage(data_dir, log):
        sys.stdout.flush()
        _fail(problem)


def _require_log(data_dir: Path) -> None:
    if not event_log_dir(data_dir).is_dir():  # a file in its place is no log either
        _fail(f"no audit event log in {data_dir} (is --data-dir right?)")


def register(app: typer.Typer) -> None:
    """Add `keytrail audit …` to the `keytrail` app."""
    app.add_typer(audit_app, name="audit")
