"""Reading AWS CloudTrail log files (`{"Records": [...]}`, .json or .json.gz, files or folders), and
the output of `aws cloudtrail lookup-events` (`{"Events": [{"CloudTrailEvent": "<record>"}, ...]}`).

The pipeline, the detector and `keytrail audit import` read real AWS history through here, and
keep the same records (`cloudtrail_records`). A malformed file or record is reported (file name
and line, or record index) and skipped; it never stops the reading.
A digest file (log file integrity validation, `CloudTrail-Digest/`, next to the logs in every
bucket with validation on) holds no records: it is counted and passed over, not reported.
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from keytrail.shared_events import as_caller_copy
from keytrail.transport.cloudtrail_records import normalized_record, record_problem, storable_together

__all__ = ["LogFileProblem", "ReadReport", "collector_paused", "is_digest", "is_lookup_output",
           "iter_cloudtrail_records", "iter_located_records", "iter_log_files", "read_log_file", "readable_records"]

KMS_SOURCE = "kms.amazonaws.com"
# Fields every CloudTrail digest file has (a starting digest too: its previousDigest* are null).
_DIGEST_FIELDS = ("digestStartTime", "digestEndTime", "logFiles")
#: The most a log file may hold once decompressed: the whole document is parsed in memory, so a
#: small .gz expanding to gigabytes (a gzip bomb, or a file that is no CloudTrail log) must stop at
#: a known size, not at the machine's memory. CloudTrail delivers a Region's records about every
#: five minutes in files far below this.
MAX_LOG_FILE_BYTES = 512 << 20


class LogFileProblem(ValueError):
    """A CloudTrail log file that cannot be read; the message names the file (and line)."""


@dataclass(slots=True)
class ReadReport:
    """What a read saw: files read, records yielded, records of other services skipped, digest
    files passed over, problems."""

    files: int = 0
    records: int = 0
    skipped: int = 0
    digests: int = 0
    problems: list[str] = field(default_factory=list)


def iter_log_files(paths: Iterable[Path | str], on_problem: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Every .json / .json.gz file named or found (recursively, sorted) under the folders named; a
    folder among them that cannot be listed (permissions) goes to `on_problem`, for its files are
    not read (Path.rglob passed over it in silence)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(_logs_under(path, on_problem))
        else:
            yield path


def _logs_under(folder: Path, on_problem: Callable[[str], None] | None) -> Iterator[Path]:
    def unlisted(error: OSError) -> None:
        if on_problem is not None:
            on_problem(f"{error.filename}: cannot read the folder: {error.strerror or error}")

    for top, _, names in os.walk(folder, onerror=unlisted):  # links to folders not followed, as rglob
        yield from (p for p in map(Path(top).joinpath, names) if _is_log(p) and p.is_file())


def _is_log(path: Path) -> bool:
    return path.name.endswith((".json", ".json.gz"))


def is_digest(document: Any) -> bool:
    """Whether a parsed CloudTrail file is a digest file (CloudTrail Digest File Structure)."""
    return isinstance(document, dict) and "Records" not in document and all(f in document for f in _DIGEST_FIELDS)


def read_log_file(path: Path) -> list[dict[str, Any]] | None:
    """The records of one CloudTrail log file, None for a digest file; LogFileProblem when it is
    neither. A key owner's copy of a cross-account call that keytrail exported is read as the
    caller's copy it was made from (keytrail/shared_events.py): every reader counts the call once."""
    try:
        text = _utf8(path, _read_bounded(path))
        with collector_paused():
            document = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise LogFileProblem(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:  # json's parser recurses per level: arrays in arrays a thousand deep
        raise LogFileProblem(f"{path}: {_line_of(text, 'depth')}not valid JSON (nested too deeply)") from None
    # zlib.error: a gzip file damaged inside (its header intact); EOFError: one cut short.
    except (OSError, EOFError, zlib.error) as exc:
        raise LogFileProblem(f"{path}: cannot read: {exc}") from None
    except _NotJson as exc:
        where = _line_of(text, "unexpected character", "no digit after sign")  # NaN, Infinity; -Infinity
        raise LogFileProblem(f"{path}: {where}not valid JSON ({exc})") from None
    except LogFileProblem:
        raise
    except ValueError:  # int() refuses an integer of more than 4,300 digits (CVE-2020-10735)
        raise LogFileProblem(f"{path}: {_line_of(text, 'number')}not valid JSON "
                             "(an integer of more than 4,300 digits)") from None
    if is_digest(document):
        return None
    records = document.get("Records") if isinstance(document, dict) else None
    if records is None and is_lookup_output(document):
        records = [_lookup_record(event) for event in document["Events"]]
    if not isinstance(records, list):
        raise LogFileProblem(f"{path}: line 1: not a CloudTrail log file (no \"Records\" array)")
    return [as_caller_copy(record) if isinstance(record, dict) else record for record in records]


def is_lookup_output(document: Any) -> bool:
    """Whether a parsed file is what `aws cloudtrail lookup-events` (LookupEvents: the 90 days of
    event history, no trail needed) prints: `{"Events": [{"EventId", …, "CloudTrailEvent": "<the
    record as a JSON string>"}]}`, its records the same as a trail's log files hold."""
    events = document.get("Events") if isinstance(document, dict) else None
    return isinstance(events, list) and all(isinstance(e, dict) and "CloudTrailEvent" in e for e in events)


def _lookup_record(event: dict[str, Any]) -> Any:
    """The CloudTrail record a LookupEvents entry carries as text; what it carries otherwise (not
    a string, not JSON) as it is, which the reader then reports as no JSON object, by its index."""
    text = event["CloudTrailEvent"]
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # JSONDecodeError, NaN, an integer past 4,300 digits
        return text


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (when on) while a document is parsed: the parse
    builds a tree, with no cycle to find, yet its hundreds of thousands of new containers set
    the collector off again and again, each pass walking what is built so far (a third of the
    time to parse a file of 50,000 records). Left as it was found, so a caller that paused it
    keeps it paused."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _NotJson(ValueError):
    """What Python's json takes that JSON (RFC 8259) has not: NaN, Infinity, -Infinity."""


def _no_constant(name: str) -> Any:
    """Refuse NaN and ±Infinity: no CloudTrail file holds them, and a record kept with them would
    be stored altered (null) and not read alike by other tools."""
    raise _NotJson(f"{name} is not a JSON value")


def _utf8(path: Path, data: bytearray) -> str:
    """The text of a log file (JSON is UTF-8, RFC 8259), without the byte order mark an editor or
    PowerShell (`Out-File -Encoding utf8`) puts first: RFC 8259 §8.1 lets a parser pass it over,
    and Python's json refuses the whole file for it; LogFileProblem naming the line and byte
    position of the first byte that is not UTF-8."""
    if (wide := _wide_encoding(data)) is not None:
        raise LogFileProblem(f"{path}: {wide} text, not UTF-8 (as Windows PowerShell's > and Out-File write it): "
                             "convert it to UTF-8")
    try:
        return data.decode("utf-8").removeprefix(_BOM)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise LogFileProblem(f"{path}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at position "
                             f"{exc.start}: {exc.reason})") from None


_BOM = "\ufeff"


def _wide_encoding(data: bytearray) -> str | None:
    """The UTF-16 or UTF-32 encoding the first bytes are in (its BOM, or a JSON text's NULs, as RFC
    4627 §3 tells them), else None: named, rather than reported as a 0xff that is no UTF-8 or a NUL
    that is no JSON."""
    encoding = json.detect_encoding(bytes(data[:4]))
    return encoding.upper() if encoding.startswith(("utf-16", "utf-32")) else None


def _line_of(text: str, *complaints: str) -> str:
    """`line N: ` for where a document holds what json cannot parse: orjson names the line when
    its complaint is of that kind (one of `complaints` in it: it stops at 1,024 levels, at numbers
    past a double's range, at NaN); else nothing (json's recursion limit may come a little earlier,
    and a complaint of another kind is about another place)."""
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"line {exc.lineno}: " if any(c in exc.msg for c in complaints) else ""
    return ""


def _read_bounded(path: Path) -> bytearray:
    """The bytes of a regular file, gunzipped when it starts as gzip does, at most
    MAX_LOG_FILE_BYTES of them, read a chunk at a time. Opened without blocking: a FIFO named as
    a log file would wait for a writer forever, and a device (/dev/zero) would never end."""
    data = bytearray()
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise LogFileProblem(f"{path}: not a regular file")
        gzipped = file.peek(2)[:2] == b"\x1f\x8b"
        reader = gzip.GzipFile(fileobj=file) if gzipped else file
        while chunk := reader.read(_READ_CHUNK):
            data += chunk
            if len(data) > MAX_LOG_FILE_BYTES:
                raise LogFileProblem(f"{path}: larger than {MAX_LOG_FILE_BYTES >> 20} MiB"
                                     f"{' once decompressed' if gzipped else ''}: no CloudTrail log file is")
    return data


_READ_CHUNK = 1 << 20


def iter_cloudtrail_records(paths: Iterable[Path | str], *, report: ReadReport | None = None,
                            on_problem: Callable[[str], None] | None = None) -> Iterator[dict[str, Any]]:
    """The readable KMS records (`cloudtrail_records.record_problem`) of the CloudTrail log files
    under `paths`, file by file; other services' records are counted in `report.skipped`; every
    problem (a file, a record that cannot be read) goes to `report.problems` and to `on_problem`."""
    for _, record in iter_located_records(paths, report=report, on_problem=on_problem):
        yield record


def iter_located_records(paths: Iterable[Path | str], *, report: ReadReport | None = None,
                         on_problem: Callable[[str], None] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """As iter_cloudtrail_records, each record with where it is (`<file>: record <index>`)."""
    report = report if report is not None else ReadReport()

    def problem(text: str) -> None:
        report.problems.append(text)
        if on_problem is not None:
            on_problem(text)

    for path in iter_log_files(paths, problem):
        try:
            records = read_log_file(path)
        except LogFileProblem as exc:
            problem(str(exc))
            continue
        if records is None:
            report.digests += 1
            continue
        report.files += 1
        yield from readable_records(path, records, report, problem)


def readable_records(path: Path, records: list[Any], report: ReadReport,
                     problem: Callable[[str], None]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The readable KMS records of one file's `records` (read_log_file), normalized, with where
    each is; other services' counted in `report.skipped`, the rest said to `problem`
    (`<file>: record <index> (eventID <id>): <why>`)."""
    for start in range(0, len(records), _CHECKED_TOGETHER):
        chunk = records[start:start + _CHECKED_TOGETHER]
        storable = storable_together(chunk)  # else record_problem tests each record on its own
        for index, record in enumerate(chunk, start):
            where = f"{path}: record {index}"
            if not isinstance(record, dict):  # malformed, not another service's record
                problem(f"{where}: not a JSON object")
            elif record.get("eventSource") != KMS_SOURCE:
                report.skipped += 1
            elif why := record_problem(record := normalized_record(record), storable=storable):
                problem(f"{where}{_id_of(record)}: {why}")
            else:
                report.records += 1
                yield where, record


#: Records whose storability one orjson.dumps tests (storable_together): enough to make its cost
#: per call vanish, few enough to keep the bytes it makes small (≈0.5 MB).
_CHECKED_TOGETHER = 512


def _id_of(record: dict[str, Any]) -> str:
    """` (eventID <id>)` when the record names one that can be shown, to find it by."""
    event_id = record.get("eventID")
    return f" (eventID {event_id})" if isinstance(event_id, str) and event_id.isprintable() and event_id else ""
