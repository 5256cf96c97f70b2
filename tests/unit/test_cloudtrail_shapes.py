"""CloudTrail records kept in the other shapes AWS and its tools write them in (an exported log
group, filter-log-events output, EventBridge events through Firehose, JSON lines, log files put one
after another) are read as a trail's log files are: the same records, told apart by content, a
record at a time. A file in none of them is refused in one line naming the shapes expected."""

from __future__ import annotations

import functools
import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keytrail.transport import cloudtrail_logs
from keytrail.transport.cloudtrail_logs import ReadReport, iter_cloudtrail_records, iter_log_files

EXAMPLES = Path(__file__).parent / "audit" / "data" / "aws_documented_examples.json"
ACCOUNT = "111122223333"
#: What every reader says of a file holding no CloudTrail records, after its name and line.
NOT_CLOUDTRAIL = ('not a CloudTrail log file: expected {"Records": [...]}, lookup-events or filter-log-events '
                  "output, or records or EventBridge events one per line")


def _examples() -> list[dict[str, Any]]:
    """AWS's documented records: nine of KMS, one of S3 (skipped by every reader)."""
    return json.loads(EXAMPLES.read_text())["Records"]


def _kms(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["eventSource"] == "kms.amazonaws.com"]


def _bridge_event(record: dict[str, Any]) -> dict[str, Any]:
    """The record as EventBridge delivers it (`aws.kms` for KMS's, the record under "detail")."""
    kind = "AWS Service Event" if record.get("eventType") == "AwsServiceEvent" else "AWS API Call"
    return {"version": "0", "id": f"bridge-{record['eventID']}", "detail-type": f"{kind} via CloudTrail",
            "source": "aws." + record["eventSource"].split(".")[0], "account": ACCOUNT,
            "time": record["eventTime"], "region": record.get("awsRegion", "us-east-1"), "resources": [],
            "detail": record}


#: One of KMS's own EventBridge events: no CloudTrail record, so skipped as the S3 record is.
ROTATION = {"version": "0", "id": "rotation-1", "detail-type": "KMS CMK Rotation", "source": "aws.kms",
            "account": ACCOUNT, "time": "2026-11-28T09:00:00Z", "region": "us-east-1",
            "resources": [f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"],
            "detail": {"key-id": "1234abcd-12ab-34cd-56ef-1234567890ab"}}


def _exported_line(record: dict[str, Any]) -> str:
    """A line of a log group exported to S3 (CreateExportTask): the event's time, a blank, its message."""
    return f"{record['eventTime'][:19]}.000Z {json.dumps(record)}\n"


def _shapes(root: Path) -> dict[str, tuple[Path, int]]:
    """Each shape's file (or folder) holding AWS's documented records, and how many records of other
    services (or events that carry none) it holds."""
    records = _examples()
    shapes: dict[str, tuple[Path, int]] = {}

    org = root / "org" / "AWSLogs" / "o-aa111bb222" / ACCOUNT / "CloudTrail" / "eu-west-1" / "2026" / "11" / "28"
    org.mkdir(parents=True)
    (org / f"{ACCOUNT}_CloudTrail_eu-west-1_20261128T0905Z_Ab12Cd34Ef56Gh78.json.gz").write_bytes(
        gzip.compress(json.dumps({"Records": records}).encode()))
    shapes["organization trail bucket"] = (root / "org", 1)

    zcat = root / "all.json"  # `zcat *.json.gz > all.json`: one log file after another
    zcat.write_text(json.dumps({"Records": records[:4]}) + json.dumps({"Records": records[4:]}))
    shapes["log files one after another"] = (zcat, 1)

    export = root / "export" / "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0" / f"{ACCOUNT}_CloudTrail_us-east-1"
    export.mkdir(parents=True)
    (export / "000000.gz").write_bytes(gzip.compress("".join(map(_exported_line, records)).encode()))
    (root / "export" / "aws-logs-write-test").write_text("Permission Check Successful")  # left by the export
    shapes["CloudWatch Logs export"] = (root / "export", 1)

    filtered = root / "filtered.json"  # aws logs filter-log-events --log-group-name CloudTrail/… > filtered.json
    filtered.write_text(json.dumps({"events": [
        {"logStreamName": f"{ACCOUNT}_CloudTrail_us-east-1", "timestamp": 1764320700000 + i,
         "message": json.dumps(r), "ingestionTime": 1764320760000 + i, "eventId": f"3{i:055d}"}
        for i, r in enumerate(records)], "searchedLogStreams": []}, indent=4))
    shapes["filter-log-events output"] = (filtered, 1)

    # an EventBridge rule's CloudWatch Logs target (/aws/events/…): each message is an event
    bridged = root / "bridged.json"
    bridged.write_text(json.dumps({"events": [{"logStreamName": "e", "timestamp": 1764320700000, "message": json.dumps(
        _bridge_event(r))} for r in records], "searchedLogStreams": []}))
    shapes["filter-log-events output of EventBridge events"] = (bridged, 1)

    firehose = root / "firehose" / "2026" / "11" / "28" / "09"  # objects of a delivery stream: no newline between
    firehose.mkdir(parents=True)
    name = "kms-calls-1-2026-11-28-09-05-13-8c7f9d1e-2b3a-4c5d-9e8f-a1b2c3d4e5f6"
    (firehose / f"{name}.gz").write_bytes(gzip.compress(
        "".join(json.dumps(e) for e in [*map(_bridge_event, records[:5]), ROTATION]).encode()))
    (firehose / name.replace("-05-", "-10-")).write_text("".join(json.dumps(_bridge_event(r)) for r in records[5:]))
    shapes["EventBridge events through Firehose"] = (root / "firehose", 2)

    subscription = root / "subscription" / "2026" / "11" / "28" / "09"  # log group → subscription → Firehose
    subscription.mkdir(parents=True)
    control = {"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "", "logStream": "",
               "subscriptionFilters": [], "logEvents": [
                   {"id": "", "timestamp": 1764320700000,
                    "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}
    payloads = [control] + [{"messageType": "DATA_MESSAGE", "owner": ACCOUNT, "logGroup": "aws-cloudtrail-logs",
                             "logStream": f"{ACCOUNT}_CloudTrail_us-east-1", "subscriptionFilters": ["to-firehose"],
                             "logEvents": [{"id": f"{i}{j}", "timestamp": 1764320700000, "message": json.dumps(r)}
                                           for j, r in enumerate(part)]}
                            for i, part in enumerate((records[:3], records[3:]))]
    # each payload gzipped by CloudWatch Logs, the members one after another as Firehose writes them
    (subscription / "to-s3-1-2026-11-28-09-05-13-0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f").write_bytes(
        b"".join(gzip.compress(json.dumps(p).encode()) for p in payloads))
    # Firehose's own compression on too: each object gzipped again (and read as the first)
    (subscription / "to-s3-1-2026-11-28-09-10-13-1d0e9f8a-7b6c-5d4e-3f2a-1b0c9d8e7f6a.gz").write_bytes(
        gzip.compress(b"".join(gzip.compress(json.dumps(p).encode()) for p in payloads)))
    shapes["CloudWatch Logs subscription through Firehose"] = (root / "subscription", 2)

    listed = root / "listed"
    listed.mkdir()
    (listed / "1-records.json").write_text(json.dumps(records[:5], indent=2))  # jq '.Records'
    # aws cloudtrail lookup-events --query 'Events[].CloudTrailEvent'
    (listed / "2-history.json").write_text(json.dumps([json.dumps(r) for r in records[5:]], indent=2))
    shapes["arrays of records"] = (listed, 1)

    lines = root / "lines"  # `jq -c '.Records[]'`, a SIEM's export
    lines.mkdir()
    (lines / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    shapes["JSON lines of records"] = (lines, 1)
    return shapes


SHAPES = ["organization trail bucket", "log files one after another", "CloudWatch Logs export",
          "filter-log-events output", "filter-log-events output of EventBridge events",
          "EventBridge events through Firehose",
          "CloudWatch Logs subscription through Firehose", "arrays of records", "JSON lines of records"]


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_gives_the_records_a_trails_log_files_give(tmp_path: Path, shape: str) -> None:
    path, others = _shapes(tmp_path)[shape]
    copies = 2 if shape == "CloudWatch Logs subscription through Firehose" else 1  # gzipped once, and twice
    report = ReadReport()
    assert list(iter_cloudtrail_records([path], report=report)) == _kms(_examples()) * copies
    assert (report.problems, report.records, report.skipped) == ([], 9 * copies, others)


def test_a_folder_of_every_shape_lists_their_files_and_nothing_else_beside_them(tmp_path: Path) -> None:
    shapes = _shapes(tmp_path)
    (tmp_path / "export" / "vpc-flow.log.gz").write_bytes(gzip.compress(b"2 123 eni-1 ACCEPT OK"))
    found = [p.relative_to(tmp_path).parts[0] for p in iter_log_files([tmp_path])]
    assert sorted(found) == sorted(["org", "all.json", "export", "filtered.json", "bridged.json", "firehose",
                                    "firehose", "subscription", "subscription", "listed", "listed", "lines"])
    report = ReadReport()
    assert len(list(iter_cloudtrail_records([tmp_path], report=report))) == 9 * (len(shapes) + 1)
    assert report.problems == []


def test_a_file_of_no_shape_is_refused_in_one_line_naming_the_shapes_expected(tmp_path: Path) -> None:
    alarms = tmp_path / "alarms.jsonl"  # JSON lines, but no CloudTrail record among them
    alarms.write_text('{"alarmId": "a-1", "rule": "unused-key"}\n{"alarmId": "a-2", "rule": "unused-key"}\n')
    other_events = tmp_path / "other.json"  # an "Events" array that is no lookup-events output
    other_events.write_text(json.dumps({"Events": [{"EventId": "1", "Name": "deploy"}] * 3}))
    array = tmp_path / "array.json"  # an array, but of no records
    array.write_text(json.dumps([{"name": "deploy", "at": "2026-11-28T09:00:00Z"}] * 3))
    # CloudTrail Lake's get-query-results: the columns a SQL query chose, no record (`SELECT *`
    # renders userIdentity and the like as text that is no JSON)
    lake = tmp_path / "lake.json"
    lake.write_text(json.dumps({"QueryStatus": "FINISHED", "QueryStatistics": {"ResultsCount": 1},
                                "QueryResultRows": [[{"eventID": "e-1"}, {"eventName": "Decrypt"},
                                                     {"userIdentity": "{type=IAMUser, arn=...}"}]]}))
    athena = tmp_path / "athena.jsonl"  # UNLOAD of a CloudTrail table: its columns lower-cased
    athena.write_text("".join(json.dumps({k.lower(): v for k, v in r.items()}) + "\n" for r in _examples()))
    report = ReadReport()
    files = [alarms, other_events, array, lake, athena, EXAMPLES]
    assert list(iter_cloudtrail_records(files, report=report)) == _kms(_examples())
    assert report.problems == [f"{path}: line 1: {NOT_CLOUDTRAIL}" for path in files[:-1]]


def test_the_records_before_a_damaged_line_are_read_and_the_line_named(tmp_path: Path) -> None:
    kms = _kms(_examples())
    lines = tmp_path / "events.jsonl.gz"
    text = "".join(json.dumps(_bridge_event(r)) + "\n" for r in kms[:3]) + '{"version": "0", "detail-type": oops}\n'
    text += json.dumps(_bridge_event(kms[3])) + "\n"
    lines.write_bytes(gzip.compress(text.encode()))
    exported = tmp_path / "000000.gz"
    exported_text = "".join(map(_exported_line, kms[:2])) + "2026-11-28T09:00:00.000Z oops\n"
    exported.write_bytes(gzip.compress((exported_text + _exported_line(kms[2])).encode()))
    report = ReadReport()
    assert list(iter_cloudtrail_records([lines, exported], report=report)) == kms[:3] + kms[:2]
    # the exported line's time is blanked, not cut: json's column is the file's
    assert report.problems == [f"{lines}: line 4: not valid JSON (Expecting value at column 33)",
                               f"{exported}: line 3: not valid JSON (Expecting value at column 26)"]
    assert (report.files, report.partly_read, report.records) == (0, 2, 5)


@pytest.mark.parametrize("shape", ["lookup-events", "filter-log-events", "JSON lines", "EventBridge", "export"])
def test_every_shape_is_read_as_its_records_are_asked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str) -> None:
    """A piece of the text and a batch of records are held, not the file (lookup-events output was
    read whole): what is written over the file's tail after its first records were read is what
    the reader then reads."""
    monkeypatch.setattr(cloudtrail_logs, "_READ_CHUNK", 256)
    monkeypatch.setattr(cloudtrail_logs, "_PARSED_TOGETHER", 2)
    kms = _kms(_examples())
    texts = {
        "lookup-events": lambda: json.dumps({"Events": [{"EventId": r["eventID"], "CloudTrailEvent": json.dumps(r)}
                                                        for r in kms]}, indent=1),
        "filter-log-events": lambda: json.dumps({"events": [{"message": json.dumps(r)} for r in kms]}, indent=1),
        "JSON lines": lambda: "".join(json.dumps(r) + "\n" for r in kms),
        "EventBridge": lambda: "".join(json.dumps(_bridge_event(r)) for r in kms),
        "export": lambda: "".join(map(_exported_line, kms)),
    }
    path = tmp_path / "records.json"
    path.write_text(texts[shape]())
    records = cloudtrail_logs.LogFile(path).records()
    assert next(records)["eventID"] == kms[0]["eventID"]
    with path.open("r+b") as file:
        file.seek(-100, os.SEEK_END)
        file.write(b"!" * 100)
    with pytest.raises(cloudtrail_logs.LogFileProblem, match="not valid JSON"):
        list(records)


def _keytrail(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_import_report_consume_and_detect_read_every_shape_alike(tmp_path: Path) -> None:
    """A folder of every shape (each holding the nine KMS records) through the real commands: each
    reads all nine shapes' 90 records (the subscription's twice: gzipped once, and twice), keeps
    nine calls, and names no problem."""
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    _shapes(shapes)

    imported = _keytrail("audit", "import", "--data-dir", tmp_path / "node", shapes)
    assert (imported.returncode, imported.stderr) == (0, "")
    assert imported.stdout == ("imported 9 KMS records from 12 files; skipped 11 records of other services and 81 "
                               "already in the event log; 0 problems\n")
    consumed = _keytrail("consume", "--data-dir", tmp_path / "consumed", "--cloudtrail", shapes)
    assert consumed.returncode == 0
    assert "consumed 90 records: 9 counted, 81 duplicates, 0 already counted\n" in consumed.stderr
    report = _keytrail("report", "--cloudtrail", shapes, "--out", tmp_path / "report.json", "--no-progress")
    assert report.returncode == 0 and "skipped:" not in report.stderr
    assert f"wrote {tmp_path / 'report.json'} (json: 9 events, 4 keys, 0 alarms)" in report.stderr
    detected = _keytrail("detect", "--cloudtrail", shapes, "--format", "json")
    assert detected.returncode == 0 and "skipped:" not in detected.stderr
    assert {json.loads(line)["rule"] for line in detected.stdout.splitlines()} == {"unused-key"}


def _snappy(data: bytes) -> bytes:
    """A Snappy block of `data` in literals alone (valid Snappy, for a test: no library needed)."""
    size, head = len(data), bytearray()
    while size >= 0x80:
        head.append(size & 0x7F | 0x80)
        size >>= 7
    head.append(size)
    for start in range(0, len(data), 1 << 16):
        piece = data[start:start + (1 << 16)]
        size = len(piece) - 1
        tag = bytes([size << 2]) if size < 60 else bytes([61 << 2]) + size.to_bytes(2, "little")
        head += tag + piece
    return bytes(head)


def _hadoop_snappy(data: bytes, block: int = 256 << 10) -> bytes:
    """`data` as Hadoop's BlockCompressorStream frames Snappy (Firehose's HADOOP_SNAPPY compression):
    per block, its length and its one chunk's, 4 bytes big-endian each, then the chunk."""
    framed = b""
    for start in range(0, len(data), block):
        chunk = _snappy(data[start:start + block])
        framed += len(data[start:start + block]).to_bytes(4, "big") + len(chunk).to_bytes(4, "big") + chunk
    return framed


def test_a_hadoop_framed_snappy_file_is_named_as_such(tmp_path: Path) -> None:
    # Its framing has no mark, as Snappy's own stream identifier is: its lengths' NULs had it told as
    # "UTF-16-BE text, not UTF-8 (as Windows PowerShell's > and Out-File write it): convert it to
    # UTF-8" (or UTF-32-BE, or "not UTF-8"), naming neither the packing nor the remedy.
    text = EXAMPLES.read_bytes() * 100  # several blocks
    framed = tmp_path / "stream-1-2026-11-28-09-05-13-abc"
    framed.write_bytes(_hadoop_snappy(text))
    small = tmp_path / "small.json"
    small.write_bytes(_hadoop_snappy(b'{"Records": []}'))
    report = ReadReport()
    assert list(iter_cloudtrail_records([framed, small, EXAMPLES], report=report)) == _kms(_examples())
    assert report.problems == [f"{path}: Snappy-compressed (Hadoop-compatible), not JSON text or gzip: unpack it first"
                               for path in (framed, small)]


def test_a_file_packed_otherwise_than_gzip_is_named_as_such(tmp_path: Path) -> None:
    # It was "line 1: not UTF-8 (byte 0xa1 at position 11: invalid start byte)", naming neither the
    # packing nor the remedy (Firehose compresses with ZIP or Snappy as well as GZIP).
    import bz2
    import lzma
    import zipfile

    text = EXAMPLES.read_bytes()
    archive = tmp_path / "logs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as packed:
        packed.writestr("log.json", text)
    packs = {archive: "a zip archive", tmp_path / "log.json.bz2": "bzip2-compressed",
             tmp_path / "log.json.xz": "xz-compressed", tmp_path / "log.json.zst": "zstd-compressed",
             tmp_path / "stream-1-2026-11-28-09-05-13-abc": "Snappy-compressed",
             tmp_path / "ocsf.parquet": "a Parquet file"}
    (tmp_path / "log.json.bz2").write_bytes(bz2.compress(text))
    (tmp_path / "log.json.xz").write_bytes(lzma.compress(text))
    (tmp_path / "log.json.zst").write_bytes(b"\x28\xb5\x2f\xfd\x04\x58\x41\x00\x00" + text[:64])  # a zstd frame's start
    (tmp_path / "stream-1-2026-11-28-09-05-13-abc").write_bytes(b"\xff\x06\x00\x00sNaPpY\x00\x10\x00\x00")
    (tmp_path / "ocsf.parquet").write_bytes(b"PAR1\x15\x04\x15\x10" + bytes(32))
    report = ReadReport()
    assert list(iter_cloudtrail_records([*packs, EXAMPLES], report=report)) == _kms(_examples())
    assert report.problems == [f"{path}: {kind}, not JSON text or gzip: unpack it first"
                               for path, kind in packs.items()]


def _read(path: Path) -> tuple[list[str], ReadReport]:
    report = ReadReport()
    ids = [record["eventID"] for record in iter_cloudtrail_records([path], report=report)]
    return ids, report


@pytest.mark.parametrize("piece", [cloudtrail_logs._READ_CHUNK, 7])
@pytest.mark.parametrize("damage", ["byte not UTF-8", "gzip then other bytes"])
def test_the_records_before_damage_in_the_bytes_are_read_whatever_piece_it_falls_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int, damage: str) -> None:
    # A byte that is no UTF-8, or bytes after the last gzip member that are no gzip (a download
    # padded or appended to), lost every record of the 1 MiB piece it fell in: a file under 1 MiB
    # gave none ('imported 0 KMS records'), one of 7 MiB lost up to 1 MiB before the damage.
    monkeypatch.setattr(cloudtrail_logs, "_READ_CHUNK", piece)
    kms = _kms(_examples())
    text = "".join(json.dumps(r) + "\n" for r in kms[:3]).encode()
    path = tmp_path / "records.jsonl.gz"
    if damage == "byte not UTF-8":
        path.write_bytes(gzip.compress(text + b"\xb0\n" + text))
        said = f"{path}: line 4: not UTF-8 (byte 0xb0 at position {len(text)}: invalid start byte)"
    else:
        path.write_bytes(gzip.compress(text) + b"<html>")
        said = f"{path}: cannot read: Not a gzipped file (b'<h')"
    ids, report = _read(path)
    assert ids == [r["eventID"] for r in kms[:3]]
    assert report.problems == [said]
    assert (report.records, report.partly_read) == (3, 1)


@functools.cache
def _shape_texts() -> list[bytes]:
    """The text of every file of every shape, gunzipped (each gzip member's, one after another): the
    damage put in then is to the text, not to a deflate stream (whose bytes before the damage is
    found zlib hands on or not by how much it is asked for at once)."""
    with tempfile.TemporaryDirectory() as folder:
        _shapes(Path(folder))
        return [_gunzipped(path.read_bytes()) for path in sorted(Path(folder).rglob("*")) if path.is_file()]


def _gunzipped(data: bytes) -> bytes:
    while data[:2] == b"\x1f\x8b":  # a subscription's objects Firehose gzipped again: twice
        data = gzip.decompress(data)
    return data


def _read_in_pieces(path: Path, piece: int) -> tuple[list[tuple[str, str]], list[str], tuple[int, ...]]:
    saved = cloudtrail_logs._READ_CHUNK
    cloudtrail_logs._READ_CHUNK = piece
    try:
        report = ReadReport()
        records = [(where, record["eventID"]) for where, record in
                   cloudtrail_logs.iter_located_records([path], report=report)]
    finally:
        cloudtrail_logs._READ_CHUNK = saved
    return records, report.problems, (report.files, report.records, report.skipped, report.partly_read)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), piece=st.integers(1, 300), gzipped=st.booleans(), damage=st.sampled_from(
    [b"", b"\xb0", b"}", b"\n", b"{", b"1", b"\xe2\x82", b"\"", b"[", b"2026-11-28T09:00:00Z "]))
def test_the_same_records_and_problems_whatever_the_piece_size(
        tmp_path: Path, data: st.DataObject, piece: int, gzipped: bool, damage: bytes) -> None:
    # Every shape, damaged or not anywhere, read a few bytes at a time gives what it gives read a
    # megabyte at a time: records lost or doubled at a piece's edge would differ (a byte that is no
    # UTF-8 lost those of the piece it was in).
    text = data.draw(st.sampled_from(_shape_texts()))
    at = data.draw(st.integers(0, len(text)))
    damaged = text[:at] + damage + text[at:]
    path = tmp_path / f"{len(damaged)}-{piece}-{gzipped}.json"
    path.write_bytes(gzip.compress(damaged) if gzipped else damaged)
    assert _read_in_pieces(path, piece) == _read_in_pieces(path, cloudtrail_logs._READ_CHUNK)
