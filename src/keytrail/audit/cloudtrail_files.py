"""CloudTrail interop: import AWS CloudTrail log files into the event log, export the event log
as CloudTrail log files (`AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/*.json.gz`)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from keytrail.audit.schema import SchemaError, decode_batch, event_id_bytes
from keytrail.audit.trail import AuditSettings, AuditTrail, audit_paths
from keytrail.owner_only import remove_stale_temps, replace_whole, within
from keytrail.shared_events import as_caller_copy, owner_copies
from keytrail.transport.cloudtrail_logs import (
    ReadReport,
    iter_cloudtrail_records,
    iter_located_records,
    iter_log_files,
)
from keytrail.transport.segment_log import SegmentLog
from keytrail.transport.sized_batches import sized_batches

__all__ = ["EventLogUnreadable", "ExportWouldDropRecords", "ImportReport", "ReadReport", "decoded_in_order",
           "export_cloudtrail", "import_cloudtrail", "iter_cloudtrail_records", "iter_events", "stored_event_ids"]

# What an account id and a Region look like; anything else (an imported record may hold any string)
# never becomes part of an export's path: it could climb out of the folder or be too long a name.
_ACCOUNT_ID = re.compile(r"\d{12}")
# `eusc-de-east-1` (the European Sovereign Cloud) begins with four letters: two only, and its
# records were filed under us-east-1 with that Region's.
_REGION = re.compile(r"[a-z]{2,8}(-[a-z]+){1,4}-\d{1,2}")
# The temp files an export writes its log files through (`_write_log_file`; replace_whole's alike).
_TEMP_FILES = ".*_CloudTrail_*.json.gz.*.tmp"


class EventLogUnreadable(Exception):
    """An export stopped by the event log it reads (`error`, an OSError of its segments), not by
    where it writes."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class ExportWouldDropRecords(Exception):
    """A file an earlier export wrote into the folder holds records the event log does not have at
    those offsets: the log was restored from an older backup (its new calls numbered from the
    backup's end again) or is another trail. Writing over the file would drop those calls from the
    only copy left."""

    def __init__(self, path: Path, event_id: object) -> None:
        super().__init__(f"{path} holds records the event log does not (eventID {event_id} first): the log was "
                         "restored from an older backup, or is another trail, since that export; export into "
                         "another folder (that file keeps calls the log no longer holds)")


@dataclass(slots=True)
class ImportReport(ReadReport):
    """What an import read and stored; `duplicates`: KMS records passed over as their eventID is in
    the event log already (or earlier in the import); `stopped_at`: where the first record it did
    not import is, when it was asked to stop (SIGTERM, SIGINT) before the end."""

    duplicates: int = 0
    stopped_at: str | None = None


def _never() -> bool:
    return False


async def import_cloudtrail(data_dir: Path, paths: Iterable[Path | str],
                            stop_requested: Callable[[], bool] = _never) -> ImportReport:
    """Append the KMS records of CloudTrail log files to the node's event log (hash-chained and
    signed like live events). Records that cannot be read (`transport.cloudtrail_records`) are
    reported, skipped.
    Once `stop_requested()`, the records read so far are stored, whole, and no more are read;
    closing the trail then signs the final digest, as at the end."""
    report = ImportReport()
    trail = AuditTrail.open(AuditSettings(data_dir=data_dir, imported=True))
    async with trail:
        # Read once the writer lock is held: nobody else appends while the import runs.
        seen = stored_event_ids(trail.log.directory)
        new = _new_records(_importable(paths, report, stop_requested), report, seen)
        for chunk in sized_batches(new, lambda: report.text, max_items=_IMPORT_CHUNK, max_text=_IMPORT_TEXT):
            await _append_chunk(trail, chunk, report, seen)
    return report


def _new_records(located: Iterable[tuple[str, dict[str, Any]]], report: ImportReport,
                 seen: set[bytes]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The records of `located` whose eventID is not in `seen` (the log's, and those given before);
    the others counted as duplicates, not as records read."""
    for record in located:
        if _first_of_its_id(record[1], seen):
            yield record
        else:
            report.records -= 1
            report.duplicates += 1


def stored_event_ids(log_dir: Path) -> set[bytes]:
    """The eventIDs (UTF-8) of every record in the event log, read from each value's eventID field
    alone (no record decoded), a segment at a time through a fresh reader, so that only one
    segment's index is held besides the IDs. A record that cannot be read is passed over: it
    matches no import (as `audit events` stops at it, `verify` names it)."""
    ids: set[bytes] = set()
    bases = SegmentLog(log_dir).segment_bases()
    for base, end in zip(bases, [*bases[1:], None], strict=True):
        reader, offset = SegmentLog(log_dir), base
        while end is None or offset < end:
            limit = _IMPORT_CHUNK if end is None else min(_IMPORT_CHUNK, end - offset)
            first, values = reader.read_payloads(offset, limit)
            if not values or first != offset:  # its end, damage, or deleted by retention meanwhile
                break
            ids.update(_event_ids(values))
            offset = first + len(values)
    return ids


def _event_ids(values: Iterable[bytes]) -> Iterator[bytes]:
    for value in values:
        try:
            yield event_id_bytes(value)
        except SchemaError:
            continue


def _first_of_its_id(event: dict[str, Any], seen: set[bytes]) -> bool:
    """Whether no record with the eventID of `event` is in the log or earlier in the import;
    remembers it. CloudTrail's eventID is unique per event: a second record with it is the same
    event, from a file imported before, or listed twice (a file and its folder, overlapping syncs)."""
    key = _id_key(event)
    if key in seen:
        return False
    seen.add(key)
    return True


def _id_key(event: dict[str, Any]) -> bytes:
    """The eventID as it is stored (a number in a file is read as its text: normalized_record)."""
    return str(event["eventID"]).encode("utf-8", "surrogatepass")


def _importable(paths: Iterable[Path | str], report: ImportReport,
                stop_requested: Callable[[], bool]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The readable KMS records of `paths` (with where each is; the others are reported, as every
    reader of CloudTrail files reports them), until `stop_requested()`: checked at each record and
    each file, as a bucket's files may hold none of KMS for a long while."""
    for path in iter_log_files(paths, report.problems.append):
        if stop_requested():
            report.stopped_at = str(path)
            return
        for where, event in iter_located_records([path], report=report):
            if stop_requested():
                report.records -= 1  # counted as read, not stored
                report.stopped_at = where
                return
            yield where, event


_IMPORT_CHUNK = 2_000
#: Or fewer, once they were read from this much text (`sized_batches`): storing a chunk holds each
#: record several times over (its Avro, its chain entry), and 2,000 of 200 KB took 1.1 GB.
_IMPORT_TEXT = 8 << 20


async def _append_chunk(trail: AuditTrail, events: list[tuple[str, dict[str, Any]]], report: ReadReport,
                        seen: set[bytes]) -> None:
    """Append many records (with where each is) at once, in order, so they share group commits
    (one fsync per batch instead of one per record); a record that cannot be stored is reported,
    by file and index, and skipped (and its eventID forgotten: a later record with it is stored)."""
    async def store(event: dict[str, Any]) -> int:
        return await trail.append_event(event)  # normalized as it was read

    results = await asyncio.gather(*(store(e) for _, e in events), return_exceptions=True)
    for (where, event), result in zip(events, results, strict=True):
        if isinstance(result, SchemaError | ValueError | TypeError | AttributeError):
            report.records -= 1
            report.problems.append(f"{where} (eventID {event.get('eventID')}): cannot be stored: {result}")
            seen.discard(_id_key(event))
        elif isinstance(result, BaseException):
            raise result


def _account_and_region(event: dict[str, Any]) -> tuple[str, str]:
    """The account and Region an event's export file is named by (000000000000 and us-east-1
    where the record holds none that look like one)."""
    identity = event.get("userIdentity") or {}
    account = next((a for a in (event.get("recipientAccountId"), identity.get("accountId"))
                    if isinstance(a, str) and _ACCOUNT_ID.fullmatch(a)), "000000000000")
    region = event.get("awsRegion")
    return account, region if isinstance(region, str) and _REGION.fullmatch(region) else "us-east-1"


def iter_events(data_dir: Path, start: int = 0, batch: int = 2000,
                log: SegmentLog | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, CloudTrail record) of every stored event from `start`, oldest first (pass a
    long-lived `log` reader when polling, so segments are not re-indexed each time)."""
    log_dir, _ = audit_paths(data_dir)
    if log is None:
        if not log_dir.exists():
            return
        log = SegmentLog(log_dir)
    offset = start
    while True:
        records = log.read(offset, batch)
        if not records:
            return
        yield from zip((o for o, _ in records), decoded_in_order([v for _, v in records]), strict=True)
        offset = records[-1][0] + 1


def decoded_in_order(values: Sequence[bytes]) -> Iterator[dict[str, Any]]:
    """The CloudTrail records of `values`, in order; a value that cannot be decoded raises
    SchemaError after the records before it, so that a reader shows what the log holds up to it."""
    try:
        yield from decode_batch(values)  # the usual case: one pass over the batch
        return
    except SchemaError:
        pass
    for value in values:  # found again one by one, the readable ones before it given first
        yield from decode_batch([value])


# Export holds at most this many records per file and this many files' records at once, so a log
# of any size exports in bounded memory (≈ 2 KB per record held). CloudTrail itself writes several
# files per account, Region and hour; a reader takes them all.
EXPORT_FILE_RECORDS = 2_000
EXPORT_OPEN_FILES = 16
# gzip's default level, 9, took twice level 6's time for files 4 % smaller (JSON of KMS records).
LOG_FILE_GZIP_LEVEL = 6

_FileKey = tuple[str, str, str]  # account, Region, hour (YYYYMMDDTHHmmZ: _file_hour)


def export_cloudtrail(data_dir: Path, out: Path, log: SegmentLog | None = None) -> list[Path]:
    """Write the event log as CloudTrail log files, per account, Region and hour: a file is
    written when it holds EXPORT_FILE_RECORDS records, or when more than EXPORT_OPEN_FILES are
    filling (the one that started first goes), the rest at the end. Into the data dir itself they
    are owner-only as the rest there; elsewhere they take the umask's mode.

    A file is named by the log offset of its first record, and which records a file holds depends
    only on the log up to them: an export run again into the same folder, after a killed one or
    after the log grew, writes each file over the one it replaces (the same, or the same records
    and those since), never a second copy of a record beside the first."""
    owner_only = within(out, data_dir)
    # Each file is written through a temp file named for the export's pid: one killed (kill -9, power
    # loss) mid-write left it, a partial gzip file, beside the log files for good.
    remove_stale_temps(out, f"AWSLogs/*/CloudTrail/*/*/*/*/{_TEMP_FILES}")
    filling: dict[_FileKey, _FillingFile] = {}  # in the order they started
    written: list[Path] = []

    def write(key: _FileKey, file: _FillingFile) -> None:
        written.append(_write_log_file(out, key, file, owner_only=owner_only))

    for offset, event, minute in _events_to_export(data_dir, log):
        key = (*_account_and_region(event), _file_hour(event["eventTime"], minute))
        file = filling.setdefault(key, _FillingFile(offset))
        file.events.append(event)
        if len(file.events) >= EXPORT_FILE_RECORDS:
            write(key, filling.pop(key))
        elif len(filling) > EXPORT_OPEN_FILES:
            first = next(iter(filling))
            write(first, filling.pop(first))
    for key in sorted(filling):
        write(key, filling[key])
    return written


def _file_hour(event_time: str, minute: str = "00") -> str:
    """YYYYMMDDTHHmmZ of a stored record's eventTime, which the event log always gives as
    YYYY-MM-DDTHH:MM:SS[.mmm]Z in UTC (schema.from_avro): sliced, not parsed again."""
    return f"{event_time[0:4]}{event_time[5:7]}{event_time[8:10]}T{event_time[11:13]}{minute}Z"


# The minute in the names of the files of records (`_file_hour`): the records of each hour in files
# named as delivered at its start; the key owners' copies of its cross-account calls in files of
# their own, as delivered at its end. Readers take files in the order of that time (transport/
# cloudtrail_logs.py), so every account's own records of an hour come before the owners' copies of
# its calls: the caller's copy, which names the caller in full, is the one read first, imported and
# counted; the owner's names it by account alone (shared_events.py).
_RECORDS_MINUTE, _COPIES_MINUTE = "00", "59"


@dataclass(slots=True)
class _FillingFile:
    first_offset: int  # the log offset of its first record: its name
    events: list[dict[str, Any]] = field(default_factory=list)


def _events_to_export(data_dir: Path, log: SegmentLog | None) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(offset, record, the minute its file is named for) of each stored event and of its copies for
    other accounts, an OSError reading them raised as EventLogUnreadable (the export's own writes
    fail with OSError too, and the two call for different remedies)."""
    first_copies = _FirstCopies()
    try:
        for offset, event in iter_events(data_dir, log=log):
            if not first_copies.take(event["eventID"]):
                continue
            yield offset, event, _RECORDS_MINUTE
            for copy in owner_copies(event):  # as AWS logs a cross-account call in the key owner's account too
                yield offset, copy, _COPIES_MINUTE  # in another account's folder: the offset names one file there
    except OSError as exc:
        raise EventLogUnreadable(exc) from exc


# A record is in the log twice only when the node was killed after the spool took it and before
# its owed row was deleted (docs/audit-events.md): the copy is written as the node restarts, within
# the calls it had in flight, far fewer than this many records after the first.
_REPEAT_WINDOW = 20_000


class _FirstCopies:
    """The first copy of each record, by eventID, among the last `_REPEAT_WINDOW` records: the log
    may hold a record twice, and CloudTrail's eventID is the event's primary key, so a SIEM or Athena
    loading the exported files counted the call twice (keytrail's readers pass over the repeat)."""

    def __init__(self) -> None:
        self._recent: deque[str] = deque()
        self._ids: set[str] = set()

    def take(self, event_id: str) -> bool:
        """Whether the record with `event_id` is the first copy seen: remembered, and exported."""
        if event_id in self._ids:
            return False
        self._ids.add(event_id)
        self._recent.append(event_id)
        if len(self._recent) > _REPEAT_WINDOW:
            self._ids.discard(self._recent.popleft())
        return True


def _write_log_file(out: Path, key: _FileKey, file: _FillingFile, *, owner_only: bool = False) -> Path:
    """One log file, named as CloudTrail names them; its 16-character unique part is the log offset
    of its first record, so the files of one hour sort (and import) in log order."""
    account, region, hour = key
    folder = out / "AWSLogs" / account / "CloudTrail" / region / hour[:4] / hour[4:6] / hour[6:8]
    path = folder / f"{account}_CloudTrail_{region}_{hour}_{file.first_offset:016x}.json.gz"
    _require_earlier_records(path, file.events)
    data = gzip.compress(orjson.dumps({"Records": file.events}), compresslevel=LOG_FILE_GZIP_LEVEL)
    _write_whole(path, data, owner_only=owner_only)
    if hour.endswith(f"{_COPIES_MINUTE}Z"):
        _remove_earlier_copies_file(folder / f"{account}_CloudTrail_{region}_{hour[:-3]}{_RECORDS_MINUTE}Z_"
                                              f"{file.first_offset:016x}.json.gz")
    return path


def _write_whole(path: Path, data: bytes, *, owner_only: bool) -> None:
    """`data` at `path`, whole or not at all."""
    folder = path.parent
    if owner_only:
        replace_whole(path, data)  # its folders made 0700 first
    else:
        folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f".{path.name}.{os.getpid()}.tmp"  # whole or not at all: killed, no torn file (_TEMP_FILES)
        try:
            temp.write_bytes(data)
            temp.replace(path)
        finally:
            temp.unlink(missing_ok=True)  # a full disk: not left behind


def _remove_earlier_copies_file(path: Path) -> None:
    """Remove the file an export before the owners' copies had files of their own wrote at `path`
    (named by the offset of the copies file just written, at the hour's start), when it holds
    nothing but copies: the copies file holds them now. No export since names a file so (its first
    record would be another account's call)."""
    records = _earlier_records(path)
    if records and all(_is_owner_copy(record) for record in records):
        path.unlink(missing_ok=True)


def _is_owner_copy(record: Any) -> bool:
    """Whether `record` is a key owner's copy of a call that an export made (shared_events.py)."""
    return isinstance(record, dict) and as_caller_copy(record) is not record


def _require_earlier_records(path: Path, events: Sequence[dict[str, Any]]) -> None:
    """Raise ExportWouldDropRecords unless the file already at `path` (an earlier export's) holds
    the first of `events`, in order: the same log, grown since, writes each file over with the same
    records and those after them, never fewer or others. A file that does not read as a CloudTrail
    log file holds no record a reader takes, and is written over."""
    ids = [event.get("eventID") for event in events]
    # Exports before the owners' copies had files of their own filed them among the owner's records.
    kept = [record for record in _earlier_records(path) if not _is_owner_copy(record)]
    for index, record in enumerate(kept):
        event_id = record.get("eventID") if isinstance(record, dict) else None
        if index >= len(ids) or event_id != ids[index]:
            raise ExportWouldDropRecords(path, event_id)


def _earlier_records(path: Path) -> list[Any]:
    """The records of the log file an earlier export left at `path`; none when there is none, or
    it does not read as a CloudTrail log file (no reader takes a record from it)."""
    try:
        earlier = json.loads(gzip.decompress(path.read_bytes()))["Records"]
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError):  # BadGzipFile is an OSError
        return []
    return earlier if isinstance(earlier, list) else []
