"""Reading AWS CloudTrail records from files or folders, in every common shape they are kept in,
told apart by each file's content (gzipped or not):

- a trail's log files (`{"Records": [...]}`; an organization trail's bucket alike), or several of
  them one after another (`zcat *.json.gz > all.json`);
- the output of `aws cloudtrail lookup-events` (`{"Events": [{"CloudTrailEvent": "<record>"}, ...]}`)
  and of `aws logs filter-log-events` / `get-log-events` over a trail's CloudWatch Logs log group
  (`{"events": [{"message": "<record>"}, ...]}`);
- records one after another (JSON lines, or with nothing between them), bare or as EventBridge
  events (`"detail-type": "AWS API Call via CloudTrail"`, the record under `"detail"`: a Firehose
  delivery stream's objects), and a log group exported to S3 (CreateExportTask: lines
  `<ISO time> <record>`).

The pipeline, the detector and `keytrail audit import` read real AWS history through here, and
keep the same records (`cloudtrail_records`). A malformed file or record is reported (file name
and line, or record index) and skipped; it never stops the reading.
A digest file (log file integrity validation, `CloudTrail-Digest/`, next to the logs in every
bucket with validation on) holds no records: it is counted and passed over, not reported.
"""

from __future__ import annotations

import codecs
import gc
import gzip
import io
import itertools
import json
import os
import re
import stat
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import orjson

from keytrail.shared_events import as_caller_copy
from keytrail.transport.cloudtrail_records import normalized_record, record_problem, storable_together
from keytrail.transport.file_heads import GZIP_MAGIC, MAGIC_LENGTH, Prefixed, packed_as, read_whole
from keytrail.transport.json_stream import JsonStream, JsonSyntaxError, ValueTooLarge
from keytrail.transport.read_problems import Problems

__all__ = ["LOG_FILE_NAMES", "STDIN", "Held", "LogFile", "LogFileProblem", "ReadReport", "collector_paused",
           "held_log_files", "is_digest", "is_digest_name", "iter_cloudtrail_records", "iter_located_records",
           "iter_log_files", "read_log_file", "readable_records"]

KMS_SOURCE = "kms.amazonaws.com"
# Fields every CloudTrail digest file has (a starting digest too: its previousDigest* are null).
_DIGEST_FIELDS = ("digestStartTime", "digestEndTime", "logFiles")
#: The most text one value of a log file may span once decompressed: a record, or the members of
#: a document read whole (all but its Records, Events or events: a digest file's, or a record's
#: own when the document is one). A file is read a record at a time, so its own length does not
#: matter; one value is parsed whole, into objects that take up to 10 times its text (`[1,1,…]`:
#: a pointer per 2 characters), so a small .gz expanding to one huge value (a gzip bomb, or a file
#: that is no CloudTrail log) must stop at a known size, not at the machine's memory: at 512 MiB a
#: 200 KB .gz took 1.1 GB. A CloudTrail record is a few KB, at most a few hundred (CloudTrail
#: truncates requestParameters, responseElements and serviceEventDetails at 100 KB each).
MAX_VALUE_CHARS = 32 << 20


class LogFileProblem(ValueError):
    """A CloudTrail log file that cannot be read; the message names the file (and line)."""


@dataclass(slots=True)
class ReadReport:
    """What a read saw: files read, records yielded, records of other services skipped, digest
    files passed over, problems (all counted, the first `read_problems.SHOWN` kept)."""

    files: int = 0
    records: int = 0
    # Files a problem stopped after some of their records (read, or skipped, or refused): in none
    # of the other counts, yet read in part ("from 0 files" said of a file whose records were read).
    partly_read: int = 0
    skipped: int = 0
    digests: int = 0
    problems: Problems = field(default_factory=Problems)
    # The text the records given were read from (each parsed batch's shared evenly among its
    # records): what a caller holding records measures its batches by (`sized_batches`).
    text: int = 0


#: The path that names standard input (`aws logs filter-log-events … | keytrail report --cloudtrail
#: -`), as click and Unix tools take `-`; a file of that name is named by a longer path (`$PWD/-`:
#: `./-` is `-` to Path).
STDIN = Path("-")


def iter_log_files(paths: Iterable[Path | str], on_problem: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Every .json / .json.gz file named or found (recursively, oldest first: `_delivery_order`)
    under the folders named, and STDIN where named; a folder among them that cannot be listed
    (permissions), or a log's name on what is not a regular file (a FIFO, a dangling link), goes
    to `on_problem`, for it is not read (Path.rglob passed over both in silence)."""
    for raw in paths:
        path = Path(raw)
        if path != STDIN and path.is_dir():
            yield from sorted(_logs_under(path, on_problem), key=_delivery_order)
        else:
            yield path


def _delivery_order(path: Path) -> tuple[str, str, str]:
    """Where a log file sorts in a folder: by the time in its name (`<account>_CloudTrail_<region>_
    <YYYYMMDDTHHmmZ>_<unique>.json.gz`, CloudTrail Log File Naming Convention), then its unique
    part (the log offset of the first record in keytrail's exports), then its path. A bucket's
    folders go by account and Region before the date: in path order one account's whole history
    came before an older record of another's. Files not named so come first, by path."""
    match = _LOG_FILE_TIME.search(path.name)
    if match is None:
        return "", "", str(path)
    return match.group(1), path.name[match.end():], str(path)


_LOG_FILE_TIME = re.compile(r"_CloudTrail_[^_]+_(\d{8}T\d{4}Z)_")


class Held(Enum):
    """What the paths a command is given hold, as `held_log_files` tells it before they are read."""

    LOG_FILE = "a log file"
    DIGESTS_ONLY = "digest files only"  # by their names: log file integrity validation's, no records
    NOTHING = "nothing"


def held_log_files(paths: Iterable[Path | str], on_problem: Callable[[str], None] | None = None) -> Held:
    """Whether `iter_log_files` would find a file that is no digest file by its name (a file named,
    whatever its suffix, or a .json / .json.gz one under a folder named), else whether it would find
    only digest files. It stops at the first such file, where `iter_log_files` lists and sorts a
    folder whole (years of a trail bucket); so only a folder with none is walked to its end. Digest
    files are told by name (`is_digest_name`): reading them all to find the first log file would read
    a year of a bucket's digests when the walk meets CloudTrail-Digest/ first."""
    digests = False
    for raw in paths:
        path = Path(raw)
        for found in _logs_under(path, on_problem) if path != STDIN and path.is_dir() else iter([path]):
            if not is_digest_name(found):
                return Held.LOG_FILE
            digests = True
    return Held.DIGESTS_ONLY if digests else Held.NOTHING


def is_digest_name(path: Path) -> bool:
    """Whether `path` is named as CloudTrail names its digest files (`<account>_CloudTrail-Digest_
    <region>_<trail>_<region>_<time>.json.gz`, CloudTrail Digest File Naming Convention); a log
    file's is `<account>_CloudTrail_<region>_…`. Readers tell a digest file by its content (is_digest)."""
    return _DIGEST_NAME in path.name


_DIGEST_NAME = "_CloudTrail-Digest_"


def _logs_under(folder: Path, on_problem: Callable[[str], None] | None) -> Iterator[Path]:
    def unlisted(error: OSError) -> None:
        if on_problem is not None:
            on_problem(f"{error.filename}: cannot read the folder: {error.strerror or error}")

    for top, _, names in os.walk(folder, onerror=unlisted):  # links to folders not followed, as rglob
        for path in map(Path(top).joinpath, names):
            if not _is_log(path):
                continue
            if path.is_file():
                yield path
            elif on_problem is not None:  # a FIFO, a socket, a dangling link: named alone, it is one too
                on_problem(f"{path}: not a regular file")


def _is_log(path: Path) -> bool:
    """Whether a file found in a folder is one to read: named as JSON or JSON lines (gzipped or
    not), as CloudWatch Logs names the files of an export (`000000.gz`), or as Firehose names the
    objects it delivers (`<stream>-<version>-YYYY-MM-DD-HH-MM-SS-<random>`, `.gz` when compressed).
    Other files beside them (`aws-logs-write-test`, a `.log.gz` of another service) are not."""
    name = path.name
    return name.endswith(_LOG_SUFFIXES) or _EXPORT_NAME.fullmatch(name) is not None or \
        _FIREHOSE_NAME.search(name) is not None


_LOG_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")
#: The files `_is_log` reads in a folder, in the words of the line that finds none there.
LOG_FILE_NAMES = ".json, .jsonl, .ndjson, gzipped or not, or CloudWatch Logs' or Firehose's objects"
_EXPORT_NAME = re.compile(r"\d+\.gz")
_FIREHOSE_NAME = re.compile(r"-\d+-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d-[0-9A-Za-z-]+(\.gz)?$")


def is_digest(document: Any) -> bool:
    """Whether a parsed CloudTrail file is a digest file (CloudTrail Digest File Structure)."""
    return isinstance(document, dict) and "Records" not in document and all(f in document for f in _DIGEST_FIELDS)


def read_log_file(path: Path) -> list[Any] | None:
    """The records of one CloudTrail log file, all at once (LogFile.records reads them one at a
    time), None for a digest file; LogFileProblem when it is neither."""
    log_file = LogFile(path)
    records = list(log_file.records())
    return None if log_file.is_digest else records


class LogFile:
    """One file of CloudTrail records (a log file, or another shape the module docstring names),
    its records parsed as its text is read: a file of any size is read holding one record, and a
    piece of its text, at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.is_digest = False  # known once its records are read: a digest file holds none
        self.records_read = 0  # of its "Records" array, so far
        # The text the last batch `batches` gave was parsed from (its records', and what lies
        # between them): what a reader holding records measures them by.
        self.batch_text = 0
        self._gzipped = False

    def records(self) -> Iterator[Any]:
        """Its records, in order, each as it is parsed (`batches`, one by one)."""
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Any]]:
        """Its records, in order, a batch at a time as they are parsed (a few hundred, or a few MB
        of text: _PARSED_TOGETHER, _PARSED_TEXT), the text of each in `batch_text` while it is the
        last given; LogFileProblem (the file, and the line) for what cannot be read, after the
        records before it. A key owner's copy of a cross-account call that keytrail exported is
        read as the caller's copy it was made from (keytrail/shared_events.py): every reader
        counts the call once."""
        stream = JsonStream(_stamps_blanked(self._text()), decoder=_DECODER, max_value=MAX_VALUE_CHARS)
        path = self.path
        try:
            yield from self._documents(stream)
        except JsonSyntaxError as exc:
            raise LogFileProblem(f"{path}: line {exc.line}: not valid JSON ({_complaint_at(exc)})") from None
        except ValueTooLarge as exc:
            raise LogFileProblem(f"{path}: line {exc.line}: a JSON value larger than {MAX_VALUE_CHARS >> 20} MiB"
                                 f"{' once decompressed' if self._gzipped else ''}: no CloudTrail log file "
                                 "holds one") from None
        except RecursionError:  # json's parser recurses per level: arrays in arrays a thousand deep
            raise LogFileProblem(f"{path}: {_line_of(stream, 'depth')}not valid JSON (nested too deeply)") from None
        # zlib.error: a gzip file damaged inside (its header intact); EOFError: one cut short. The
        # records before are read: the line says where its text stops.
        except (EOFError, zlib.error) as exc:
            raise LogFileProblem(f"{path}: line {stream.line()}: cannot read further: {exc}") from None
        except OSError as exc:
            raise LogFileProblem(f"{path}: cannot read: {exc}") from None
        except _NotJson as exc:
            where = _line_of(stream, "unexpected character", "no digit after sign")  # NaN, Infinity; -Infinity
            raise LogFileProblem(f"{path}: {where}not valid JSON ({exc})") from None
        except LogFileProblem:
            raise
        except ValueError:  # int() refuses an integer of more than 4,300 digits (CVE-2020-10735)
            raise LogFileProblem(f"{path}: {_line_of(stream, 'number')}not valid JSON "
                                 "(an integer of more than 4,300 digits)") from None

    def _documents(self, stream: JsonStream) -> Iterator[list[Any]]:
        """The records of each document of the text in turn: most files hold one; log files put
        one after another (`zcat`) hold several. Once one is a record (or an EventBridge event),
        the rest are records too, each read whole (`_sequence`)."""
        while True:
            if (yield from self._document(stream)):
                yield from self._sequence(stream)
                return
            if not stream.more():
                return

    def _document(self, stream: JsonStream) -> Generator[list[Any], None, bool]:
        """The records of one document, as they come: the items of its "Records" array (or of
        lookup-events' "Events", of filter-log-events' "events"); the other members are read
        whole (a digest file's), or the document is a record itself, or an EventBridge event
        carrying one: returns True then. A member named twice is LogFileProblem: Python's json
        keeps the last and other tools the first, so either way records would be lost without
        a word."""
        first_line, start = stream.line(), stream.offset()
        if not stream.begin_object():
            if stream.begin_array():  # `jq '.Records'`, `lookup-events --query 'Events[].CloudTrailEvent'`
                yield from self._listed(stream, first_line)
                return False
            stream.value()  # JSON that is no object: its syntax errors said as such
            stream.end()
            raise LogFileProblem(f"{self.path}: line {first_line}: {_NO_RECORDS}")
        others, streamed = yield from self._members(stream, first_line)
        if streamed or _is_control_message(others):
            return False
        if is_digest(others):
            self.is_digest = True
            return False
        if _is_record(others) or _is_bridge_event(others):
            self.records_read += 1
            self.batch_text = stream.offset() - start
            yield _records_of(others)
            return True
        raise LogFileProblem(f"{self.path}: line {first_line}: {_NO_RECORDS}")

    def _members(self, stream: JsonStream,
                 first_line: int) -> Generator[list[Any], None, tuple[dict[str, Any], bool]]:
        """The records of the members of the object `stream` entered that hold them, as they come;
        returns the other members (read whole, as one value: MAX_VALUE_CHARS of text in all) and
        whether any member held records."""
        others: dict[str, Any] = {}
        streamed: set[str] = set()  # the members whose records were read as they came
        held, mark = 0, stream.offset()  # the text of the members kept in `others` (and their names)
        while (key := stream.next_key()) is not None:
            if key in others or key in streamed:
                raise LogFileProblem(f"{self.path}: line {stream.line()}: {_clipped(json.dumps(key))} appears twice in "
                                     "the document (a JSON reader keeps one of the two and loses the other's records)")
            if key == "Records" and stream.begin_array():
                streamed.add(key)
                yield from self._records(stream)
            elif key in _CARRIERS and not _is_control_message(others) and stream.begin_array():
                streamed.add(key)
                yield from self._carried(stream, _CARRIERS[key], first_line)
            else:
                with collector_paused():
                    others[key] = stream.value()
                held += stream.offset() - mark
                if held > MAX_VALUE_CHARS:  # a million members `"m1": 1` after the Records: no document's
                    raise ValueTooLarge(first_line, MAX_VALUE_CHARS)
            mark = stream.offset()
        return others, bool(streamed)

    def _sequence(self, stream: JsonStream) -> Iterator[list[Any]]:
        """The records of the values after a first record, each a record or an EventBridge event
        (JSON lines, Firehose's objects with nothing between them, an exported log group's
        lines), as they are parsed (`_batches`)."""
        for batch in self._batches(stream, stream.add_values):
            yield [record for value in batch for record in _records_of(value)]

    def _listed(self, stream: JsonStream, first_line: int) -> Iterator[list[Any]]:
        """The records of a document that is an array of them (bare, as EventBridge events, or as
        JSON strings), as they come. An array whose first item is none of them is LogFileProblem."""
        first = True
        for batch in self._batches(stream, stream.add_items):
            if first and batch:
                first = False
                head = _record_of_text(batch[0]) if isinstance(batch[0], str) else batch[0]
                if not (isinstance(head, dict) and (_is_record(head) or _is_bridge_event(head))):
                    raise LogFileProblem(f"{self.path}: line {first_line}: {_NO_RECORDS}")
            yield [record for item in batch
                   for record in _records_of(_record_of_text(item) if isinstance(item, str) else item)]

    def _carried(self, stream: JsonStream, field: str, first_line: int) -> Iterator[list[Any]]:
        """The records the entries of the array `stream` entered carry as text in their `field`
        (lookup-events' CloudTrailEvent, filter-log-events' message), as they come. An array
        whose first entry has no such field is no such output: LogFileProblem, not records of
        other services skipped by the thousand."""
        first = True
        for batch in self._batches(stream, stream.add_items):
            if first and batch:
                first = False
                if not (isinstance(batch[0], dict) and field in batch[0]):
                    raise LogFileProblem(f"{self.path}: line {first_line}: {_NO_RECORDS}")
            # an EventBridge rule's log group holds events carrying records
            yield [record for entry in batch for record in _records_of(_carried_record(entry, field))]

    def _text(self) -> Iterator[str]:
        """Its text, a piece at a time: gunzipped when it starts as gzip does (twice when what that
        gives is gzip again), without the byte
        order mark an editor or PowerShell (`Out-File -Encoding utf8`) puts first (RFC 8259 §8.1
        lets a parser pass it over, Python's json refuses the whole file for it). Opened without
        blocking: a FIFO named as a log file would wait for a writer forever, and a device
        (/dev/zero) would never end."""
        with self._opened() as file:
            self._gzipped = file.peek(2)[:2] == GZIP_MAGIC
            if packed := packed_as(file.peek(MAGIC_LENGTH)):
                raise LogFileProblem(f"{self.path}: {packed}, not JSON text or gzip: unpack it first")
            reader: io.BufferedIOBase = file
            if self._gzipped:
                reader = gzip.GzipFile(fileobj=file)
                # Firehose compressing again what CloudWatch Logs' subscription gzipped already
                if reader.peek(2)[:2] == GZIP_MAGIC:
                    reader = gzip.GzipFile(fileobj=reader, mode="rb")  # its .mode is no text
            decoder = _Utf8(self.path)
            try:
                for data in _pieces(reader):
                    yield decoder.decode(data)
                yield decoder.decode(b"", final=True)
            except _NotUtf8 as exc:
                yield exc.text_before  # the records before the byte are read, whatever piece it is in
                raise

    @contextmanager
    def _opened(self) -> Iterator[io.BufferedReader[Any]]:
        """The file, opened without blocking and refused unless regular (`_text`); STDIN as it
        comes (a pipe: waited on, as a reader of one must), its first bytes read whole so that its
        packing is told as a file's is (a pipe's first read may hold one byte)."""
        if self.path == STDIN:
            with io.FileIO(os.dup(0), "rb") as rest:  # a copy: closing it leaves the process's own open
                yield io.BufferedReader(Prefixed(read_whole(rest, MAGIC_LENGTH), rest))
            return
        with open(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise LogFileProblem(f"{self.path}: not a regular file")
            yield file

    def _records(self, stream: JsonStream) -> Iterator[list[Any]]:
        """The items of the "Records" array `stream` entered, as they are parsed (`_batches`)."""
        for batch in self._batches(stream, stream.add_items):
            yield [as_caller_copy(record) if isinstance(record, dict) else record for record in batch]

    def _batches(self, stream: JsonStream, add: Callable[[list[Any], int, int], bool]) -> Iterator[list[Any]]:
        """What `add` parses (the stream's `add_items` of the array it entered, or its `add_values`
        of the values after a first record), _PARSED_TOGETHER or _PARSED_TEXT at a time with the
        collector paused (collector_paused), its text in `batch_text`; what stops the parse is
        raised after the values parsed before it."""
        more = True
        while more:
            batch: list[Any] = []
            failure: Exception | None = None
            start = stream.offset()
            with collector_paused():
                try:
                    more = add(batch, _PARSED_TOGETHER, _PARSED_TEXT)
                except Exception as exc:
                    failure = exc
            self.records_read += len(batch)
            self.batch_text = stream.offset() - start
            yield batch
            if failure is not None:
                raise failure


#: What a file that holds no CloudTrail records is told, with the shapes it could have had.
_NO_RECORDS = ('not a CloudTrail log file: expected {"Records": [...]}, lookup-events or filter-log-events '
               "output, or records or EventBridge events one per line")
#: The arrays whose entries carry a record as a JSON string, and the field that holds it:
#: `aws cloudtrail lookup-events` (LookupEvents), `aws logs filter-log-events` or
#: `get-log-events` over the log group a trail sends its events to (each event's message is one
#: record), and that log group's subscription filter's payloads (`{"messageType": "DATA_MESSAGE",
#: …, "logEvents": [{"message": …}]}`, one gzip member each in what Firehose delivers to S3).
_CARRIERS = {"Events": "CloudTrailEvent", "events": "message", "logEvents": "message"}
#: EventBridge's detail-types whose detail is a CloudTrail record (AWS API Call, AWS Service
#: Event, AWS Console Sign In ... via CloudTrail); KMS's own events (KMS CMK Rotation, …) are not.
_VIA_CLOUDTRAIL = " via CloudTrail"


def _is_control_message(value: dict[str, Any]) -> bool:
    """Whether a subscription filter's payload is the one CloudWatch Logs sends to check that its
    destination is there: its logEvents hold a sentence each, no record."""
    return value.get("messageType") == "CONTROL_MESSAGE"


def _is_record(value: dict[str, Any]) -> bool:
    """Whether a document is a CloudTrail record itself (every record names its eventVersion and
    eventID; a record keytrail cannot read is then reported as such, not the file refused)."""
    return "eventVersion" in value or ("eventID" in value and "eventTime" in value)


def _is_bridge_event(value: dict[str, Any]) -> bool:
    """Whether a document is an EventBridge event (its envelope's fields)."""
    return "detail-type" in value and "detail" in value and "source" in value


def _records_of(value: Any) -> list[Any]:
    """The records one value of a sequence holds: a record itself; an EventBridge event's detail
    when it is a CloudTrail record, else the event (no eventSource: skipped as another service's);
    a log file's Records when `cat` put one among them; anything else as it is (a value that is no
    object is then reported by its index)."""
    if not isinstance(value, dict):
        return [value]
    if _is_bridge_event(value):
        detail_type = value.get("detail-type")
        if isinstance(detail_type, str) and detail_type.endswith(_VIA_CLOUDTRAIL):
            detail = value["detail"]
            return [as_caller_copy(detail) if isinstance(detail, dict) else detail]
        return [value]
    records = value.get("Records")
    if isinstance(records, list) and not _is_record(value):
        return [as_caller_copy(r) if isinstance(r, dict) else r for r in records]
    return [as_caller_copy(value)]


def _stamps_blanked(pieces: Iterator[str]) -> Iterator[str]:
    """The text of `pieces`, in which, when the text begins as a CloudWatch Logs export's lines do
    (`<ISO time> <message>`: CreateExportTask writes each log event so), every line's time is
    blanked out (spaces, so that json's lines and columns stay the file's): what is left is the
    messages, a trail's records, one per line. Any other text is handed on as it is."""
    failure: list[Exception] = []
    pieces = _until_failure(pieces, failure)
    yield from _blanked(pieces)
    if failure:  # after the text before it, blanked too: its last line is not held back and lost
        raise failure[0]


def _until_failure(pieces: Iterator[str], failure: list[Exception]) -> Iterator[str]:
    """`pieces` until one cannot be read, what stopped them then put in `failure`."""
    try:
        yield from pieces
    except Exception as exc:
        failure.append(exc)


def _blanked(pieces: Iterator[str]) -> Iterator[str]:
    """`_stamps_blanked`, of pieces that end without failing."""
    head = ""
    while len(head) < _STAMP_ROOM and (piece := next(pieces, None)) is not None:
        head += piece
    if not _STAMP.match("\n" + head[:_STAMP_ROOM]):  # the file's start is a line's
        if head:
            yield head
        yield from pieces
        return
    held, before = head, "\n"
    for piece in itertools.chain(pieces, [""]):
        text = held + piece
        line_start = text.rfind("\n") + 1
        # a time at the last line's start may go on in the next piece: held back with it
        cut = line_start if piece and len(text) - line_start < _STAMP_ROOM else len(text)
        done = _STAMP.sub(_blanks, before + text[:cut])[1:]
        held = text[cut:]
        if done:
            before = done[-1]
            yield done


#: A time as an exported log group's lines begin with it, after the newline before the line (a
#: literal first: the scan for it is a search for newlines, where a lookbehind tries every place).
_STAMP = re.compile(r"\n\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d) ")
_STAMP_ROOM = 64  # more than the longest such time and its blank


def _blanks(match: re.Match[str]) -> str:
    return "\n" + " " * (len(match.group()) - 1)


def _pieces(reader: io.BufferedIOBase) -> Iterator[bytes]:
    """The bytes of `reader`, _READ_CHUNK at a time; of a gzip file cut short, those before the cut
    too, before its EOFError: `read(_READ_CHUNK)` dropped the piece it was filling, so the records
    before the cut (all of them, in a file under 1 MiB gunzipped) were never read. Likewise before
    a zlib.error or an OSError (bytes after the last gzip member that are no gzip: BadGzipFile,
    though gzip -d reads the file, calling them trailing garbage). Gathered from
    `read1`'s pieces (a gzip file gives about 100 KB each), as the parse costs less in larger ones."""
    pieces: list[bytes] = []
    size = 0
    try:
        while data := reader.read1(_READ_CHUNK):
            pieces.append(data)
            size += len(data)
            if size >= _READ_CHUNK:
                yield b"".join(pieces)
                pieces, size = [], 0
    except (EOFError, OSError, zlib.error) as exc:
        if pieces:
            yield b"".join(pieces)
        raise exc
    if pieces:
        yield b"".join(pieces)


#: The fewest records parsed with the collector paused before they are handed on, enough to make
#: the pause's cost per record vanish. A batch may hold more: every record whole in the text read
#: so far (a _READ_CHUNK piece or two) is parsed at once (JsonStream.add_items).
_PARSED_TOGETHER = 512
#: Or fewer, once they span this much text: 512 records of 200 KB each were 100 MB of text parsed
#: before the first was handed on (and a few times that in objects). Those of AWS's usual ~1 KB
#: fill a batch by their count first.
_PARSED_TEXT = 4 << 20


def _carried_record(entry: Any, field: str) -> Any:
    """The CloudTrail record an entry (of lookup-events or filter-log-events output) carries as
    text in `field`; what it carries otherwise (not a string, not JSON), or an entry without it,
    as it is, which the reader then reports as no JSON object (or no record), by its index."""
    text = entry.get(field) if isinstance(entry, dict) else None
    return _record_of_text(text) if isinstance(text, str) else text


def _record_of_text(text: str) -> Any:
    """The JSON value `text` holds; `text` itself when it holds none (reported by its index)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # JSONDecodeError, NaN, an integer past 4,300 digits
        return text


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (when on) while records are parsed: the parse
    builds trees, with no cycle to find, yet their many new containers set the collector off
    again and again, each pass walking what is built so far (a third of the time to parse a file
    of 50,000 records whole, a quarter a batch at a time). Left as it was found, so a caller that
    paused it keeps it paused."""
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


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


class _Utf8:
    """A log file's bytes as text (JSON is UTF-8, RFC 8259), a piece at a time; LogFileProblem
    naming the line and byte position of the first byte that is not UTF-8, or the UTF-16 or
    UTF-32 the file is in."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._bytes = 0  # given so far
        self._lines = 0  # newlines among them
        self._first = True

    def decode(self, data: bytes, final: bool = False) -> str:
        if self._first and (wide := _wide_encoding(data)) is not None:
            raise LogFileProblem(f"{self._path}: {wide} text, not UTF-8 (as Windows PowerShell's > and Out-File "
                                 "write it): convert it to UTF-8")
        held = len(self._decoder.getstate()[0])  # the start of a character the last piece cut
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            line = self._lines + exc.object.count(b"\n", 0, exc.start) + 1
            # exc.object is the bytes given and those of a character the last piece cut: all
            # UTF-8 up to the byte that is not, and not handed on yet
            raise _NotUtf8(self._opened(exc.object[:exc.start].decode(), final=True),
                           f"{self._path}: line {line}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at "
                           f"position {self._bytes - held + exc.start}: {exc.reason})") from None
        self._bytes += len(data)
        self._lines += data.count(b"\n")
        return self._opened(text, final)

    def _opened(self, text: str, final: bool) -> str:
        """`text`, without the byte order mark when it is the file's first."""
        if self._first and (text or final):
            self._first = False
            text = text.removeprefix(_BOM)
        return text


class _NotUtf8(LogFileProblem):
    """A byte that is not UTF-8, and the text before it in the piece it is in (`text_before`): a
    LogFileProblem raised with the piece dropped all of a small file's records, and up to 1 MiB
    of a large one's, where every other damage lets the records before it be read."""

    def __init__(self, text_before: str, message: str) -> None:
        super().__init__(message)
        self.text_before = text_before


_BOM = "\ufeff"


def _wide_encoding(data: bytes) -> str | None:
    """The UTF-16 or UTF-32 encoding the first bytes are in (its BOM, or a JSON text's NULs, as RFC
    4627 §3 tells them), else None: named, rather than reported as a 0xff that is no UTF-8 or a NUL
    that is no JSON."""
    encoding = json.detect_encoding(bytes(data[:4]))
    return encoding.upper() if encoding.startswith(("utf-16", "utf-32")) else None


def _complaint_at(exc: JsonSyntaxError) -> str:
    """json's complaint and its column: json words some as ending in "at" (`Invalid control
    character at`, `Unterminated string starting at`), a place it says after them; said alone, they
    stopped short. A CloudTrail file is often one line, so the line alone does not say where."""
    complaint = exc.msg if exc.msg.endswith(" at") else f"{exc.msg} at"
    return f"{complaint} column {exc.column}"


def _line_of(stream: JsonStream, *complaints: str) -> str:
    """`line N: ` for where the value `stream` was reading holds what json cannot parse: orjson
    names the line when its complaint is of that kind (one of `complaints` in it: it stops at
    1,024 levels, at numbers past a double's range, at NaN); else nothing (json's recursion limit
    may come a little earlier, and a complaint of another kind is about another place)."""
    first_line, text = stream.value_text()
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"line {first_line + exc.lineno - 1}: " if any(c in exc.msg for c in complaints) else ""
    return ""


_READ_CHUNK = 1 << 20


def iter_cloudtrail_records(paths: Iterable[Path | str], *, report: ReadReport | None = None,
                            on_problem: Callable[[str], None] | None = None) -> Iterator[dict[str, Any]]:
    """The readable KMS records (`cloudtrail_records.record_problem`) of the CloudTrail log files
    under `paths`, file by file; other services' records are counted in `report.skipped`; every
    problem (a file, a record that cannot be read) is counted in `report.problems` (the first ones
    kept) and goes to `on_problem`, every one: a caller counting them across reads counts them all."""
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
        log_file = LogFile(path)
        try:
            yield from readable_records(log_file, report, problem)
        except LogFileProblem as exc:  # its records before the problem were read
            report.partly_read += 1 if log_file.records_read else 0
            problem(str(exc))
            continue
        if log_file.is_digest:
            report.digests += 1
        else:
            report.files += 1


def readable_records(log_file: LogFile, report: ReadReport,
                     problem: Callable[[str], None]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The readable KMS records of one file (LogFile.batches), normalized, with where each is;
    other services' counted in `report.skipped`, the rest said to `problem` (`<file>: record
    <index> (eventID <id>): <why>`); the text of those given added to `report.text`."""
    start = 0
    for chunk, text in _chunks(log_file):
        storable = storable_together(chunk)  # else record_problem tests each record on its own
        for index, record in enumerate(chunk, start):
            where = f"{log_file.path}: record {index}"
            if not isinstance(record, dict):  # malformed, not another service's record
                problem(f"{where}: not a JSON object")
            elif record.get("eventSource") != KMS_SOURCE:
                report.skipped += 1
            elif why := record_problem(record := normalized_record(record), storable=storable):
                problem(f"{where}{_id_of(record)}: {why}")
            else:
                report.records += 1
                report.text += text
                yield where, record
        start += len(chunk)


def _chunks(log_file: LogFile) -> Iterator[tuple[list[Any], int]]:
    """The records of `log_file`, each batch it parses cut _CHECKED_TOGETHER at a time, and the
    text each of its records was read from (the batch's shared evenly); what reading them raises
    is raised after the records read before it (the records before a file's damaged part are read)."""
    for batch in log_file.batches():
        text = log_file.batch_text // max(len(batch), 1)
        if len(batch) <= _CHECKED_TOGETHER:  # not copied
            yield batch, text
            continue
        for start in range(0, len(batch), _CHECKED_TOGETHER):
            yield batch[start:start + _CHECKED_TOGETHER], text


#: Records whose storability one orjson.dumps tests (storable_together): enough to make its cost
#: per call vanish, few enough to keep the bytes it makes small (≈0.5 MB).
_CHECKED_TOGETHER = 512


def _id_of(record: dict[str, Any]) -> str:
    """` (eventID <id>)` when the record names one that can be shown, to find it by (its start, when
    it is longer than any of CloudTrail's: `_clipped`)."""
    event_id = record.get("eventID")
    if not (isinstance(event_id, str) and event_id.isprintable() and event_id):
        return ""
    return f" (eventID {_clipped(event_id)})"


def _clipped(text: str) -> str:
    """`text`, or its start and its length when longer than _SHOWN_CHARS: a problem names what a
    file holds, and a file may hold a name of 32 MiB (MAX_VALUE_CHARS), each problem kept and said."""
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:_SHOWN_CHARS]}… ({len(text):,} characters)"


#: Past a CloudTrail eventID (36) and the longest member name of a record.
_SHOWN_CHARS = 64
