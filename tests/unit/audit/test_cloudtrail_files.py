"""CloudTrail interop: import AWS's documented example records, export → import round trip."""

from __future__ import annotations

import errno
import gc
import gzip
import json
import os
import shutil
import threading
import time
import zlib
from pathlib import Path

import pytest

from keytrail.audit import cloudtrail_files
from keytrail.audit.cloudtrail_files import (
    export_cloudtrail,
    import_cloudtrail,
    iter_cloudtrail_records,
    iter_events,
)
from keytrail.audit.integrity import verify
from keytrail.transport import cloudtrail_logs
from keytrail.transport.cloudtrail_logs import ReadReport
from tests.support.audit_records import ACCOUNT, T0, fill_trail_async

T0_HOUR = T0.strftime("%Y-%m-%dT%H")
EXAMPLES = Path(__file__).parent / "data" / "aws_documented_examples.json"


def _kms_examples() -> list[dict]:
    return [r for r in json.loads(EXAMPLES.read_text())["Records"] if r["eventSource"] == "kms.amazonaws.com"]


async def test_import_of_aws_documented_records(tmp_path: Path) -> None:
    report = await import_cloudtrail(tmp_path / "node", [EXAMPLES])
    assert (report.files, report.records, report.skipped, report.problems) == (1, 9, 1, [])
    stored = [event for _, event in iter_events(tmp_path / "node")]
    assert stored == _kms_examples()  # faithful: every field, unknown ones included
    assert verify(tmp_path / "node") == []  # imported records are chained and signed too


async def test_malformed_files_are_reported_with_file_and_line_and_skipped(tmp_path: Path) -> None:
    logs = tmp_path / "logs" / "nested"
    logs.mkdir(parents=True)
    shutil.copy(EXAMPLES, logs / "good.json")
    (logs / "broken.json").write_text('{"Records": [\n{"eventSource": "kms.amazonaws.com",\n oops}\n]}')
    (logs / "notrail.json").write_text('{"hello": 1}')
    (logs / "bad.json.gz").write_bytes(b"\x1f\x8bnot gzip at all")
    (logs / "readme.txt").write_text("ignored: not a log file name")
    gz = tmp_path / "logs" / "more.json.gz"
    gz.write_bytes(gzip.compress(EXAMPLES.read_bytes()))
    report = await import_cloudtrail(tmp_path / "node", [tmp_path / "logs"])
    # the two readable files hold the same records: the second's are passed over as duplicates
    assert (report.records, report.duplicates, report.skipped, report.files) == (9, 9, 2, 2)
    assert any("broken.json: line 3" in p for p in report.problems), report.problems
    assert any("notrail.json" in p for p in report.problems)
    assert any("bad.json.gz" in p for p in report.problems)


async def test_importing_the_same_file_twice_stores_each_record_once(tmp_path: Path) -> None:
    first = await import_cloudtrail(tmp_path / "node", [EXAMPLES])
    again = await import_cloudtrail(tmp_path / "node", [EXAMPLES])
    assert (first.records, first.duplicates) == (9, 0)
    assert (again.files, again.records, again.duplicates, again.skipped, again.problems) == (1, 0, 9, 1, [])
    assert [event for _, event in iter_events(tmp_path / "node")] == _kms_examples()
    assert verify(tmp_path / "node") == []


async def test_a_file_overlapping_the_log_adds_only_its_new_records_in_file_order(tmp_path: Path) -> None:
    kms = _kms_examples()
    older, newer = tmp_path / "older.json", tmp_path / "newer.json"
    older.write_text(json.dumps({"Records": kms[:5]}))
    newer.write_text(json.dumps({"Records": [kms[7], kms[3], kms[5], kms[4], kms[8], kms[6]]}))
    await import_cloudtrail(tmp_path / "node", [older])
    report = await import_cloudtrail(tmp_path / "node", [newer])
    assert (report.records, report.duplicates) == (4, 2)
    assert [event for _, event in iter_events(tmp_path / "node")] == [*kms[:5], kms[7], kms[5], kms[8], kms[6]]


async def test_records_repeated_within_one_import_or_already_logged_live_are_stored_once(tmp_path: Path) -> None:
    node = tmp_path / "node"
    await fill_trail_async(node, 5)  # calls the node answered, exported, then imported back
    export_cloudtrail(node, tmp_path / "out")
    kms = _kms_examples()
    repeated = tmp_path / "repeated.json"
    repeated.write_text(json.dumps({"Records": [kms[0], {**kms[1], "eventID": 12}, kms[0],
                                                {**kms[2], "eventID": "12"}]}))
    report = await import_cloudtrail(node, [tmp_path / "out", repeated, EXAMPLES])
    # the exported five; then kms[0] again and "12" (12 is stored as "12"); then kms[0] a third time
    assert (report.records, report.duplicates) == (2 + 8, 5 + 2 + 1)
    events = [event for _, event in iter_events(node)]
    assert len(events) == 5 + 10 and len({e["eventID"] for e in events}) == len(events)


async def test_a_record_that_cannot_be_stored_leaves_its_event_id_free_for_a_later_import(tmp_path: Path) -> None:
    good = _kms_examples()[0]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"Records": [{**good, "eventTime": "0001-01-01T00:00:00+05:30"}]}))
    assert (await import_cloudtrail(tmp_path / "node", [path])).records == 0  # out of range in UTC
    path.write_text(json.dumps({"Records": [good]}))
    report = await import_cloudtrail(tmp_path / "node", [path])
    assert (report.records, report.duplicates) == (1, 0)


def test_iterator_reads_offline_without_an_event_log(tmp_path: Path) -> None:
    report = ReadReport()
    records = list(iter_cloudtrail_records([EXAMPLES], report=report))
    assert [r["eventID"] for r in records] == [r["eventID"] for r in _kms_examples()]
    assert report.skipped == 1


async def test_export_then_import_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await import_cloudtrail(source, [EXAMPLES])
    await fill_trail_async(source, 3)
    written = export_cloudtrail(source, tmp_path / "out")
    relative = {str(p.relative_to(tmp_path / "out").parent) for p in written}
    assert "AWSLogs/111122223333/CloudTrail/us-east-1/2026/11/28" in relative
    assert "AWSLogs/123456789012/CloudTrail/us-east-1/2024/12/06" in relative
    assert all(p.name.endswith(".json.gz") and "_CloudTrail_" in p.name for p in written)
    copy = tmp_path / "copy"
    report = await import_cloudtrail(copy, [tmp_path / "out"])
    assert report.problems == [] and report.records == 12
    original = sorted((e for _, e in iter_events(source)), key=lambda e: e["eventID"])
    imported = sorted((e for _, e in iter_events(copy)), key=lambda e: e["eventID"])
    assert imported == original


async def test_export_writes_a_record_the_log_holds_twice_once(tmp_path: Path) -> None:
    """A node killed after the spool took a record and before its owed row was deleted records it
    again as it restarts, with the same eventID: CloudTrail's primary key, so the files held it twice."""
    await fill_trail_async(tmp_path / "node", 3)
    await fill_trail_async(tmp_path / "node", 1, first=1)  # the restart's copy
    assert len(list(iter_events(tmp_path / "node"))) == 4
    written = export_cloudtrail(tmp_path / "node", tmp_path / "out")
    exported = [r["eventID"] for path in written for r in json.loads(gzip.decompress(path.read_bytes()))["Records"]]
    assert sorted(exported) == sorted({e["eventID"] for _, e in iter_events(tmp_path / "node")})
    assert len(exported) == 3


@pytest.mark.parametrize("inside", [False, True], ids=["elsewhere", "into the data dir"])
async def test_an_export_removes_the_temp_files_of_one_killed_as_it_wrote_once_they_are_old(
    tmp_path: Path, inside: bool
) -> None:
    """Each log file is written through a temp file named for the export's pid: an export killed
    (kill -9, power loss) mid-write left a partial gzip file beside the log files for good."""
    source = tmp_path / "source"
    await fill_trail_async(source, 3)
    out = source / "export" if inside else tmp_path / "out"
    [written] = export_cloudtrail(source, out)
    killed = written.with_name(f".{written.name}.4242.tmp")
    writing = written.with_name(f".{written.name}.4343.tmp")  # another export's into the same folder, now
    for temp in (killed, writing):
        temp.write_bytes(gzip.compress(b'{"Records": [')[:10])
    os.utime(killed, (0, 0))
    assert export_cloudtrail(source, out) == [written]
    assert (killed.exists(), writing.exists()) == (False, True)


async def test_export_writes_text_beyond_ascii_as_utf8_json_that_reads_back_the_same(tmp_path: Path) -> None:
    example = _kms_examples()[0]
    context = {"Abteilung": "Küche", "owner": "日本 \u2028 🔑", "quote": '"\\'}
    record = {**example, "eventID": "utf8", "eventTime": "2026-11-28T23:59:59.999Z",
              "requestParameters": {**example["requestParameters"], "encryptionContext": context}}
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"Records": [record]}))
    assert (await import_cloudtrail(tmp_path / "node", [path])).records == 1
    [written] = export_cloudtrail(tmp_path / "node", tmp_path / "out")
    assert "_20261128T2300Z_" in written.name  # the hour of .999 before midnight
    [exported] = json.loads(gzip.decompress(written.read_bytes()).decode("utf-8"))["Records"]
    assert exported["requestParameters"]["encryptionContext"] == context
    assert exported["eventTime"] == "2026-11-28T23:59:59.999Z"


async def test_a_bucket_of_several_accounts_and_regions_is_imported_oldest_file_first(tmp_path: Path) -> None:
    """A trail bucket's folders go by account, then Region, then date: read in path order, an older
    account's whole history came after a younger's, and `audit events` (oldest first) was not."""
    example = _kms_examples()[0]
    files = [("444455556666", "eu-west-1", "20261202T0905Z", "2026-12-02T09:01:00Z"),
             ("111122223333", "us-east-1", "20261203T1010Z", "2026-12-03T10:06:00Z"),
             ("111122223333", "us-west-2", "20261201T0800Z", "2026-12-01T07:58:00Z"),
             ("111122223333", "us-east-1", "20261201T0805Z", "2026-12-01T08:01:00Z")]
    bucket = tmp_path / "bucket"
    for account, region, stamp, event_time in files:
        day = f"{stamp[:4]}/{stamp[4:6]}/{stamp[6:8]}"
        folder = bucket / "AWSLogs" / account / "CloudTrail" / region / day
        folder.mkdir(parents=True)
        record = {**example, "eventID": f"{account}-{region}-{stamp}", "eventTime": event_time,
                  "awsRegion": region, "recipientAccountId": account}
        (folder / f"{account}_CloudTrail_{region}_{stamp}_a1b2c3d4e5f6.json").write_text(
            json.dumps({"Records": [record]}))
    assert (await import_cloudtrail(tmp_path / "node", [bucket])).records == 4
    times = [event["eventTime"] for _, event in iter_events(tmp_path / "node")]
    assert times == sorted(event_time for *_, event_time in files)


async def test_export_writes_in_bounded_files_and_a_reimport_keeps_the_log_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A log of any size must export without holding it whole: files are cut at a record count,
    # and at most a few are filled at once; named so that one hour's files import in order.
    monkeypatch.setattr(cloudtrail_files, "EXPORT_FILE_RECORDS", 4)
    monkeypatch.setattr(cloudtrail_files, "EXPORT_OPEN_FILES", 1)
    source = tmp_path / "source"
    await fill_trail_async(source, 17)
    await import_cloudtrail(source, [EXAMPLES])  # other accounts and hours, after them in the log
    written = export_cloudtrail(source, tmp_path / "out")
    sizes = [len(json.loads(gzip.decompress(p.read_bytes()))["Records"]) for p in written]
    assert max(sizes) == 4 and sum(sizes) == 26 and len(written) >= 8
    copy = tmp_path / "copy"
    assert (await import_cloudtrail(copy, [tmp_path / "out"])).records == 26
    order = [e["eventID"] for _, e in iter_events(source)]
    reimported = [e["eventID"] for _, e in iter_events(copy)]
    assert sorted(reimported) == sorted(order)
    encrypts = {e["eventID"] for _, e in iter_events(source) if e["eventName"] == "Encrypt"
                and e.get("recipientAccountId") == ACCOUNT and e["eventTime"].startswith(T0_HOUR)}
    assert len(encrypts) == 17  # the filled ones: one account, Region and hour, in five files
    assert [i for i in reimported if i in encrypts] == [i for i in order if i in encrypts]


async def test_odd_records_are_coerced_or_reported_never_crash(tmp_path: Path) -> None:
    base = _kms_examples()[0]
    odd = [
        {**base, "eventID": "string-bool", "readOnly": "false", "recipientAccountId": 111122223333},
        {**base, "eventID": "no-time", "eventTime": None},
        {**base, "eventID": "bad-time", "eventTime": "yesterday"},
        {**base, "eventID": "bad-identity", "userIdentity": "alice"},
        {**base, "eventID": "bad-resources", "resources": "nope"},
    ]
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"Records": odd}))
    report = await import_cloudtrail(tmp_path / "node", [path])
    stored = {e["eventID"]: e for _, e in iter_events(tmp_path / "node")}
    assert stored["string-bool"]["readOnly"] is False
    assert stored["string-bool"]["recipientAccountId"] == "111122223333"
    assert {"no-time", "bad-time", "bad-identity"}.isdisjoint(stored)
    assert len(report.problems) == 3 and report.records == len(stored)
    # each named by file and index: in a folder of thousands of files an eventID alone finds nothing
    assert [p.split(" (eventID")[0].split(": missing")[0] for p in report.problems] == [
        f"{path}: record {index}" for index in (1, 2, 3)]


async def test_export_paths_never_take_odd_accounts_or_regions_from_imported_records(tmp_path: Path) -> None:
    base = _kms_examples()[0]
    odd = [
        {**base, "eventID": "climbs", "awsRegion": "../../../escaped", "recipientAccountId": "../up"},
        {**base, "eventID": "long", "awsRegion": "🔑" * 100, "recipientAccountId": 5},
        {**base, "eventID": "fine", "awsRegion": "eu-central-1", "recipientAccountId": "444455556666"},
        {**base, "eventID": "sovereign", "awsRegion": "eusc-de-east-1", "recipientAccountId": "444455556666"},
    ]
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"Records": odd}))
    await import_cloudtrail(tmp_path / "node", [path])
    written = export_cloudtrail(tmp_path / "node", tmp_path / "out")
    folders = {str(p.relative_to(tmp_path / "out").parent.parent.parent.parent) for p in written}
    # the odd ones fall back to their caller's account and to us-east-1
    assert folders == {"AWSLogs/444455556666/CloudTrail/eu-central-1", "AWSLogs/111122223333/CloudTrail/us-east-1",
                       "AWSLogs/444455556666/CloudTrail/eusc-de-east-1"}  # was filed under us-east-1
    assert not (tmp_path / "escaped").exists()
    copy = await import_cloudtrail(tmp_path / "copy", [tmp_path / "out"])
    assert copy.records == 4 and copy.problems == []
    stored = {e["eventID"]: e for _, e in iter_events(tmp_path / "copy")}
    assert stored["climbs"]["awsRegion"] == "../../../escaped"  # the record itself is kept as it came


def _bucket_with_digest_and_insights(root: Path) -> Path:
    """An AWSLogs tree as a synced trail bucket holds it: a log file, the hour's digest file (log
    file integrity validation) and an Insights file, each in its own folder."""
    account = root / "AWSLogs" / "111122223333"
    logs = account / "CloudTrail" / "us-east-1" / "2026" / "11" / "28"
    digests = account / "CloudTrail-Digest" / "us-east-1" / "2026" / "11" / "28"
    insights = account / "CloudTrail-Insight" / "us-east-1" / "2026" / "11" / "28"
    for folder in (logs, digests, insights):
        folder.mkdir(parents=True)
    (logs / "111122223333_CloudTrail_us-east-1_20261128T0905Z_a.json.gz").write_bytes(
        gzip.compress(EXAMPLES.read_bytes()))
    digest = {"awsAccountId": "111122223333", "digestStartTime": "2026-11-28T08:00:00Z",
              "digestEndTime": "2026-11-28T09:00:00Z", "digestS3Bucket": "trail-bucket",
              "digestS3Object": "AWSLogs/…_CloudTrail-Digest_us-east-1_trail_us-east-1_20261128T090000Z.json.gz",
              "digestPublicKeyFingerprint": "00ff", "digestSignatureAlgorithm": "SHA256withRSA",
              "newestEventTime": None, "oldestEventTime": None, "previousDigestS3Bucket": None,
              "previousDigestS3Object": None, "previousDigestHashValue": None,
              "previousDigestHashAlgorithm": None, "previousDigestSignature": None, "logFiles": []}
    (digests / "111122223333_CloudTrail-Digest_us-east-1_trail_us-east-1_20261128T090000Z.json.gz").write_bytes(
        gzip.compress(json.dumps(digest).encode()))
    insight = {"eventVersion": "1.07", "eventTime": "2026-11-28T09:00:00Z", "awsRegion": "us-east-1",
               "eventID": "5e1c1ea3-0c1a-4a53-9c1a-1d7a8e0f0c11", "eventType": "AwsCloudTrailInsight",
               "recipientAccountId": "111122223333", "eventCategory": "Insight",
               "insightDetails": {"state": "Start", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
                                  "insightType": "ApiErrorRateInsight", "insightContext": {}}}
    (insights / "111122223333_CloudTrail-Insight_us-east-1_20261128T0900Z_b.json.gz").write_bytes(
        gzip.compress(json.dumps({"Records": [insight]}).encode()))
    return root


async def test_digest_and_insights_files_beside_the_logs_are_passed_over_not_reported(tmp_path: Path) -> None:
    bucket = _bucket_with_digest_and_insights(tmp_path / "bucket")
    report = await import_cloudtrail(tmp_path / "node", [bucket])
    assert report.problems == []  # a digest file is no malformed log file
    assert (report.files, report.digests, report.records) == (2, 1, 9)
    assert report.skipped == 2  # the example's other-service record and the Insights record


async def test_a_record_that_is_no_object_is_a_problem_not_a_record_of_another_service(tmp_path: Path) -> None:
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"Records": [_kms_examples()[0], 7, None]}))
    seen: list[str] = []
    report = ReadReport()
    assert len(list(iter_cloudtrail_records([path], report=report, on_problem=seen.append))) == 1
    assert report.skipped == 0  # no record of another service here
    assert seen == report.problems == [f"{path}: record 1: not a JSON object", f"{path}: record 2: not a JSON object"]


async def test_an_event_time_without_offset_is_imported_as_utc_whatever_the_local_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        path = tmp_path / "naive.json"
        path.write_text(json.dumps({"Records": [{**_kms_examples()[0], "eventTime": "2025-05-20T20:46:16"}]}))
        await import_cloudtrail(tmp_path / "node", [path])
    finally:
        monkeypatch.undo()
        time.tzset()
    [(_, stored)] = list(iter_events(tmp_path / "node"))
    assert stored["eventTime"] == "2025-05-20T20:46:16Z"  # as `report --cloudtrail` reads the same file


async def test_an_import_asked_to_stop_stores_the_records_read_and_names_the_first_left(tmp_path: Path) -> None:
    asked = iter([False] * 4 + [True])  # asked once for the file, then before each KMS record

    report = await import_cloudtrail(tmp_path / "node", [EXAMPLES, EXAMPLES], lambda: next(asked))

    kms = _kms_examples()
    assert [event for _, event in iter_events(tmp_path / "node")] == kms[:3]
    assert (report.records, report.stopped_at) == (3, f"{EXAMPLES}: record 3")
    assert verify(tmp_path / "node") == []


async def test_an_import_asked_to_stop_between_files_reads_no_more_files(tmp_path: Path) -> None:
    checks = iter([False] * 10 + [True])  # the first file: asked once for it, once per KMS record (nine)

    report = await import_cloudtrail(tmp_path / "node", [EXAMPLES, EXAMPLES], lambda: next(checks))

    assert (report.files, report.records, report.stopped_at) == (1, 9, str(EXAMPLES))


def test_a_gzip_bomb_is_reported_at_a_bounded_size_not_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloudtrail_logs, "MAX_VALUE_CHARS", 1 << 20)
    bomb = tmp_path / "bomb.json.gz"  # a record holding one string of 8 MiB, a few KB on disk
    bomb.write_bytes(gzip.compress(b'{"Records": [\n{"userAgent": "' + b"a" * (8 << 20) + b'"}]}'))
    big = tmp_path / "big.json"
    big.write_bytes(b'{"Records": [\n{"userAgent": "' + b"a" * (2 << 20) + b'"}]}')
    blanks = tmp_path / "blanks.json.gz"  # long, but no value in it is: read a piece at a time
    blanks.write_bytes(gzip.compress(b'{"Records": ' + b" " * (8 << 20) + json.dumps(_kms_examples()).encode() + b"}"))
    report = ReadReport()
    assert list(iter_cloudtrail_records([bomb, big, blanks], report=report)) == _kms_examples()
    assert report.problems == [
        f"{bomb}: line 2: a JSON value larger than 1 MiB once decompressed: no CloudTrail log file holds one",
        f"{big}: line 2: a JSON value larger than 1 MiB: no CloudTrail log file holds one"]


def test_a_file_cut_inside_a_string_says_the_column_of_the_control_character_there(tmp_path: Path) -> None:
    # A file cut inside a string, then ended by a newline (`head -c` of a one-line file, a copy cut
    # short): json's complaint "Invalid control character at" was said without the place it names,
    # "line 1: not valid JSON (Invalid control character at)", and a CloudTrail file is one line.
    kms = _kms_examples()
    whole = json.dumps({"Records": kms[:2]})
    text = whole[:whole.index(kms[1]["eventID"]) + 4] + "\n"
    cut = tmp_path / "cut.json"
    cut.write_text(text)
    report = ReadReport()
    assert list(iter_cloudtrail_records([cut], report=report)) == kms[:1]
    # The newline is the file's last character: its column is the text's length.
    assert report.problems == [f"{cut}: line 1: not valid JSON (Invalid control character at column {len(text)})"]


def test_the_records_before_a_damaged_part_of_a_file_are_read_and_the_damage_named(tmp_path: Path) -> None:
    # A file cut short (a download or sync interrupted) or damaged further on: it was refused whole.
    kms = _kms_examples()
    cut = tmp_path / "cut.json.gz"
    cut_text = ("{\"Records\": [\n" + ",\n".join(json.dumps(r) for r in kms)).encode()[:-40]
    cut.write_bytes(gzip.compress(cut_text))
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"Records": [\n' + json.dumps(kms[0]) + ",\n" + json.dumps(kms[1]) + ",\n oops]}")
    report = ReadReport()
    assert list(iter_cloudtrail_records([cut, damaged, EXAMPLES], report=report)) == kms[:-1] + kms[:2] + kms
    with pytest.raises(json.JSONDecodeError) as unterminated:  # where json says the cut string starts
        json.loads(cut_text)
    assert report.problems == [f"{cut}: line {len(kms) + 1}: not valid JSON (Unterminated string starting at "
                               f"column {unterminated.value.colno})",
                               f"{damaged}: line 4: not valid JSON (Expecting value at column 2)"]
    assert report.files == 1  # read to its end: EXAMPLES alone


def test_the_records_before_the_cut_of_a_gzip_file_cut_short_are_read(tmp_path: Path) -> None:
    # A .json.gz whose download stopped midway: gzip's read of a 1 MiB piece dropped what it had
    # gunzipped once it met the end, so a file that small gave no record, counted in no file.
    kms = _kms_examples()
    compressor = zlib.compressobj(wbits=31)  # gzip
    head = "{\"Records\": [\n" + ",\n".join(json.dumps(r) for r in kms[:3]) + ",\n"
    rest = ",\n".join(json.dumps(r) for r in kms[3:]) + "\n]}"
    data = compressor.compress(head.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data + (compressor.compress(rest.encode()) + compressor.flush())[:10])
    report = ReadReport()
    assert list(iter_cloudtrail_records([cut], report=report)) == kms[:3]
    assert report.problems == [f"{cut}: line 5: cannot read further: Compressed file ended before the end-of-stream "
                               "marker was reached"]
    assert (report.files, report.partly_read, report.records) == (0, 1, 3)


@pytest.mark.parametrize("first", ["[\n{first}\n]", "null"])
async def test_a_file_naming_records_twice_is_reported_with_its_line_not_read_as_one_of_them(
    tmp_path: Path, first: str
) -> None:
    # {"Records": [...], "Records": [...]}: one of the two arrays was read and the other's records
    # were lost without a word, the import counting the file as read whole.
    kms = _kms_examples()
    twice = tmp_path / "twice.json"
    second = ",\n".join(json.dumps(r) for r in kms[4:])
    twice.write_text('{"Records": ' + first.format(first=json.dumps(kms[0])) + ',\n"Records": [\n' + second + "\n]}")
    report = await import_cloudtrail(tmp_path / "node", [twice, EXAMPLES])
    line = twice.read_text().splitlines().index('"Records": [') + 1
    assert report.problems == [f'{twice}: line {line}: "Records" appears twice in the document (a JSON reader '
                               "keeps one of the two and loses the other's records)"]
    assert report.files == 1  # EXAMPLES alone: the other is not counted as read
    assert [event for _, event in iter_events(tmp_path / "node")] == kms  # the records before it, then EXAMPLES'


def test_a_log_file_is_read_as_its_records_are_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading holds a piece of the text and a batch of records, not the file: what is written
    over the file's tail after its first records were read is what the reader then reads."""
    monkeypatch.setattr(cloudtrail_logs, "_READ_CHUNK", 256)
    monkeypatch.setattr(cloudtrail_logs, "_PARSED_TOGETHER", 2)
    path = tmp_path / "log.json"
    path.write_text(json.dumps({"Records": _kms_examples()}, indent=1))
    records = cloudtrail_logs.LogFile(path).records()
    assert next(records)["eventID"] == _kms_examples()[0]["eventID"]
    with path.open("r+b") as file:
        file.seek(-100, os.SEEK_END)
        file.write(b"!" * 100)
    with pytest.raises(cloudtrail_logs.LogFileProblem, match="not valid JSON"):
        list(records)


def test_a_fifo_or_a_device_named_as_a_log_file_is_reported_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    report = ReadReport()
    reading = threading.Thread(target=lambda: list(iter_cloudtrail_records([fifo, Path("/dev/null")],
                                                                           report=report)), daemon=True)
    reading.start()
    reading.join(timeout=10)
    if reading.is_alive():  # blocked opening the FIFO: a writer lets it go
        os.close(os.open(fifo, os.O_WRONLY))
    assert report.problems == [f"{fifo}: not a regular file", "/dev/null: not a regular file"]


def test_json_nested_deeper_than_the_parser_goes_is_a_problem_with_its_line_not_a_crash(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"Records": [\n' + "[" * 100_000 + "]" * 100_000 + "]}")
    report = ReadReport()
    assert list(iter_cloudtrail_records([deep, EXAMPLES], report=report)) == _kms_examples()
    assert report.problems == [f"{deep}: line 2: not valid JSON (nested too deeply)"]


async def test_event_times_at_the_ends_of_the_calendar_are_stored_read_and_exported_or_reported(
    tmp_path: Path
) -> None:
    example = _kms_examples()[0]
    times = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+05:30", "9999-12-31T23:59:59-05:00"]
    path = tmp_path / "calendar.json"
    path.write_text(json.dumps({"Records": [{**example, "eventID": f"e{i}", "eventTime": t}
                                            for i, t in enumerate(times)]}))
    report = await import_cloudtrail(tmp_path / "node", [path])
    assert report.problems == [  # before year 1 and after year 9999 in UTC: no time a record can hold
        f"{path}: record {i} (eventID e{i}): eventTime '{times[i]}' is out of range in UTC"
        for i in (1, 2)]
    [(_, stored)] = list(iter_events(tmp_path / "node"))
    assert stored["eventTime"] == "0001-01-01T00:00:00Z"  # ISO 8601 (strftime writes the year as "1")
    [written] = export_cloudtrail(tmp_path / "node", tmp_path / "out")
    assert written.parent == tmp_path / "out" / "AWSLogs" / ACCOUNT / "CloudTrail" / "us-east-1" / "0001" / "01" / "01"
    assert written.name.startswith(f"{ACCOUNT}_CloudTrail_us-east-1_00010101T0000Z_")


async def test_a_folder_that_cannot_be_listed_is_a_problem_not_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = tmp_path / "logs"
    (logs / "locked").mkdir(parents=True)
    shutil.copy(EXAMPLES, logs / "locked" / "hidden.json")
    shutil.copy(EXAMPLES, logs / "seen.json")
    listing = os.scandir

    def scandir(path: object = ".") -> object:  # as a folder of mode 000 answers a user who is not root
        if Path(str(path)) == logs / "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return listing(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    report = await import_cloudtrail(tmp_path / "node", [logs])
    assert (report.files, report.records) == (1, 9)
    assert report.problems == [f"{logs / 'locked'}: cannot read the folder: Permission denied"]
    offline = ReadReport()
    assert len(list(iter_cloudtrail_records([logs], report=offline))) == 9
    assert offline.problems == report.problems


async def test_a_log_name_in_a_folder_on_what_is_not_a_regular_file_is_a_problem_not_passed_over(
        tmp_path: Path) -> None:
    # Named alone, a FIFO is "not a regular file"; found in a folder it was skipped without a word.
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(EXAMPLES, logs / "seen.json")
    os.mkfifo(logs / "pipe.json")
    (logs / "gone.json.gz").symlink_to(tmp_path / "nowhere.json.gz")
    (logs / "notes.txt").write_text("not a log")  # not a log's name: not looked at
    report = await import_cloudtrail(tmp_path / "node", [logs])
    assert (report.files, report.records) == (1, 9)
    assert sorted(report.problems) == [f"{logs / 'gone.json.gz'}: not a regular file",
                                       f"{logs / 'pipe.json'}: not a regular file"]
    offline = ReadReport()
    assert len(list(iter_cloudtrail_records([logs], report=offline))) == 9
    assert sorted(offline.problems) == sorted(report.problems)


def test_an_integer_longer_than_python_converts_is_a_problem_with_its_line_not_a_crash(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    record = json.dumps(_kms_examples()[0])
    huge.write_text('{"Records": [\n' + record[:-1] + ', "count": ' + "9" * 5000 + "}]}")
    report = ReadReport()
    assert list(iter_cloudtrail_records([huge, EXAMPLES], report=report)) == _kms_examples()
    assert report.problems == [f"{huge}: line 2: not valid JSON (an integer of more than 4,300 digits)"]


def test_bytes_that_are_not_utf8_are_a_problem_naming_their_line(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.json"
    latin.write_bytes(b'{"Records": [\n{"eventSource": "kms.amazonaws.com",\n "userAgent": "caf\xe9"}]}')
    report = ReadReport()
    assert list(iter_cloudtrail_records([latin], report=report)) == []
    assert report.problems == [f"{latin}: line 3: not UTF-8 (byte 0xe9 at position 69: invalid continuation byte)"]


@pytest.mark.parametrize(("encoding", "named"), [
    ("utf-16", "UTF-16"), ("utf-16-le", "UTF-16-LE"), ("utf-16-be", "UTF-16-BE"), ("utf-32", "UTF-32")])
def test_a_utf16_log_file_is_a_problem_naming_its_encoding(tmp_path: Path, encoding: str, named: str) -> None:
    # Windows PowerShell's `aws cloudtrail lookup-events … > history.json` writes UTF-16 (with a BOM):
    # "not UTF-8 (byte 0xff at position 0: invalid start byte)", or without a BOM "not valid JSON
    # (Expecting property name enclosed in double quotes)", named neither the encoding nor the remedy.
    wide = tmp_path / "history.json"
    wide.write_bytes(json.dumps({"Records": _kms_examples()}).encode(encoding))
    report = ReadReport()
    assert list(iter_cloudtrail_records([wide], report=report)) == []
    assert report.problems == [f"{wide}: {named} text, not UTF-8 (as Windows PowerShell's > and Out-File write "
                               "it): convert it to UTF-8"]


async def test_the_output_of_aws_cloudtrail_lookup_events_is_imported_as_its_records(tmp_path: Path) -> None:
    # The 90 days of event history need no trail: `aws cloudtrail lookup-events --lookup-attributes
    # AttributeKey=EventSource,AttributeValue=kms.amazonaws.com > history.json` prints each record as
    # a JSON string in Events[].CloudTrailEvent. It was refused whole: no "Records" array.
    examples = _kms_examples()
    events = [{"EventId": r["eventID"], "EventName": r["eventName"], "ReadOnly": "true",
               "EventTime": "2025-05-20T20:46:16+00:00", "EventSource": "kms.amazonaws.com",
               "Resources": [], "CloudTrailEvent": json.dumps(r)} for r in examples]
    events.append({"EventId": "cut", "CloudTrailEvent": '{"eventID": "cut", '})  # not JSON: that entry alone
    history = tmp_path / "history.json"
    history.write_text(json.dumps({"Events": events}, indent=4))
    report = await import_cloudtrail(tmp_path / "node", [history])
    assert [e for _, e in iter_events(tmp_path / "node")] == examples  # faithful, as from a trail's file
    assert report.records == len(examples)
    assert report.problems == [f"{history}: record {len(examples)}: not a JSON object"]


def test_a_byte_order_mark_before_the_document_is_passed_over(tmp_path: Path) -> None:
    # A log file saved by Windows PowerShell (`Out-File -Encoding utf8`) or an editor begins with
    # EF BB BF: it was refused whole, "Unexpected UTF-8 BOM", its records not imported.
    marked = tmp_path / "marked.json"
    marked.write_bytes(b"\xef\xbb\xbf" + EXAMPLES.read_bytes())
    zipped = tmp_path / "marked.json.gz"
    zipped.write_bytes(gzip.compress(marked.read_bytes()))
    report = ReadReport()
    assert list(iter_cloudtrail_records([marked, zipped], report=report)) == _kms_examples() * 2
    assert report.problems == []


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_no_json_the_file_is_reported_not_imported_altered(
    tmp_path: Path, constant: str
) -> None:
    odd = tmp_path / "odd.json"
    record = json.dumps(_kms_examples()[0])
    odd.write_text('{"Records": [\n' + record[:-1] + ',\n "requestParameters": {"numberOfBytes": ' + constant + "}}]}")
    report = await import_cloudtrail(tmp_path / "node", [odd, EXAMPLES])
    assert [event for _, event in iter_events(tmp_path / "node")] == _kms_examples()
    assert report.problems == [f"{odd}: line 3: not valid JSON ({constant} is not a JSON value)"]


async def test_a_cross_account_call_exports_to_both_accounts_and_reads_back_once(tmp_path: Path) -> None:
    """AWS logs a KMS call on another account's key in the key owner's account too: an export
    filed it under the caller's account alone, so the owner's folder missed others' use of its
    keys. The owner's copy is read back as the call it copies: imported, counted, once."""
    from keytrail.audit.trail import AuditSettings, AuditTrail
    from keytrail.shared_events import shared_event_id
    from tests.support.audit_records import KEY_ARN, encrypt_call

    owner, event_id = "444455556666", "6a1f7c9e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
    source = tmp_path / "source"
    async with AuditTrail.open(AuditSettings(data_dir=source)) as trail:
        await trail.record(encrypt_call(1))
        await trail.record(encrypt_call(2, resources=(KEY_ARN.replace(ACCOUNT, owner),), event_id=event_id,
                                        shared_event_id=shared_event_id(event_id)))
    written = export_cloudtrail(source, tmp_path / "out")
    by_account = {p.relative_to(tmp_path / "out").parts[1]: json.loads(gzip.decompress(p.read_bytes()))["Records"]
                  for p in written}
    [owners] = by_account[owner]
    assert [e["eventID"] for e in by_account[ACCOUNT]][1] == event_id
    assert (owners["recipientAccountId"], owners["sharedEventID"]) == (owner, shared_event_id(event_id))
    assert owners["eventID"] != event_id
    copy = tmp_path / "copy"
    report = await import_cloudtrail(copy, [tmp_path / "out"])
    assert (report.records, report.duplicates) == (2, 1)  # the owner's copy is the call already read
    assert [e for _, e in iter_events(copy)] == [e for _, e in iter_events(source)]
    read = [e["eventID"] for e in iter_cloudtrail_records([tmp_path / "out"])]  # report, consume, detect
    assert sorted(read) == sorted([e["eventID"] for _, e in iter_events(source)] + [event_id])  # one call twice


async def test_the_key_owners_copies_are_read_after_the_callers_whatever_each_account_did_first(
        tmp_path: Path) -> None:
    """The owner's copy names the caller by account alone: read before the caller's copy (the
    owner's own calls began the hour), it was the copy imported and counted, the caller's identity
    lost. The owners' copies of an hour sort after every account's own records of it."""
    from dataclasses import replace

    from keytrail.audit.trail import AuditSettings, AuditTrail
    from keytrail.shared_events import shared_event_id
    from tests.support.audit_records import ALICE, KEY_ARN, encrypt_call

    owner, event_id = "444455556666", "6a1f7c9e-2b3d-4e5f-8a9b-0c1d2e3f4a5c"
    owners_key = KEY_ARN.replace(ACCOUNT, owner)
    bob = replace(ALICE, arn=f"arn:aws:iam::{owner}:user/bob", account=owner, principal_id="AIDABOB",
                  user_name="bob", access_key_id="AKIABOB0000000000001")
    source = tmp_path / "source"
    async with AuditTrail.open(AuditSettings(data_dir=source)) as trail:
        await trail.record(encrypt_call(1, bob, account=owner, resources=(owners_key,)))
        await trail.record(encrypt_call(2, resources=(owners_key,), event_id=event_id,
                                        shared_event_id=shared_event_id(event_id)))
    export_cloudtrail(source, tmp_path / "out")
    copy = tmp_path / "copy"
    report = await import_cloudtrail(copy, [tmp_path / "out"])
    assert (report.records, report.duplicates) == (2, 1)  # the owner copy is the call already read
    assert [e for _, e in iter_events(copy)] == [e for _, e in iter_events(source)]
    first, second = [e for e in iter_cloudtrail_records([tmp_path / "out"]) if e["eventID"] == event_id]
    assert first["userIdentity"]["arn"] == ALICE.arn  # the caller's copy, read first (report, consume, detect)
    assert second["userIdentity"]["type"] == "AWSAccount"  # then the owner's, the call already read


@pytest.mark.parametrize("owner_called_first", [False, True])
async def test_an_export_into_a_folder_of_the_earlier_layout_moves_the_owners_copies(
        tmp_path: Path, owner_called_first: bool) -> None:
    """Exports before the owners' copies had files of their own filed them among the owner's records
    (a file of copies alone where the owner made no call of its own first that hour). Exporting
    again into that folder, as a nightly export does, leaves each record in one file."""
    from dataclasses import replace

    from keytrail.audit.trail import AuditSettings, AuditTrail
    from keytrail.shared_events import shared_event_id
    from tests.support.audit_records import ALICE, KEY_ARN, encrypt_call

    owner, event_id = "444455556666", "6a1f7c9e-2b3d-4e5f-8a9b-0c1d2e3f4a5d"
    owners_key = KEY_ARN.replace(ACCOUNT, owner)
    bob = replace(ALICE, arn=f"arn:aws:iam::{owner}:user/bob", account=owner, principal_id="AIDABOB",
                  user_name="bob", access_key_id="AKIABOB0000000000001")
    source, out = tmp_path / "source", tmp_path / "out"
    async with AuditTrail.open(AuditSettings(data_dir=source)) as trail:
        await trail.record(encrypt_call(1, bob, account=owner, resources=(owners_key,)) if owner_called_first
                           else encrypt_call(1))
        await trail.record(encrypt_call(2, resources=(owners_key,), event_id=event_id,
                                        shared_event_id=shared_event_id(event_id)))
    export_cloudtrail(source, out)
    folder = next((out / "AWSLogs" / owner).rglob("*.json.gz")).parent
    records = [r for p in sorted(folder.iterdir()) for r in json.loads(gzip.decompress(p.read_bytes()))["Records"]]
    for path in folder.iterdir():  # as the earlier layout filed them: one file of the hour, named at its start
        path.unlink()
    earlier = folder / f"{owner}_CloudTrail_us-east-1_20261128T1200Z_{0 if owner_called_first else 1:016x}.json.gz"
    earlier.write_bytes(gzip.compress(json.dumps({"Records": records}).encode()))
    export_cloudtrail(source, out)
    again = [r["eventID"] for path in out.rglob("*.json.gz")
             for r in json.loads(gzip.decompress(path.read_bytes()))["Records"]]
    assert sorted(again) == sorted({*again}) and len(again) == 3  # each record once


def test_the_collector_is_paused_while_records_are_parsed_and_left_as_found(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing records builds trees with no cycle: the collector is off during it (it would walk
    the containers built so far again and again), then as it was, even after a bad file."""
    enabled_while_parsing: list[bool] = []
    decoder, examples = cloudtrail_logs._DECODER, _kms_examples()
    scan = decoder.scan_once

    def spied(text: str, index: int) -> object:
        parsed = scan(text, index)
        if not isinstance(parsed[0], str):  # a record, or records (not a key of the document)
            enabled_while_parsing.append(gc.isenabled())
        return parsed

    (tmp_path / "good.json").write_text(json.dumps({"Records": examples}))
    (tmp_path / "bad.json").write_text('{"Records": [{}, NaN]}')
    monkeypatch.setattr(decoder, "scan_once", spied)
    try:
        assert cloudtrail_logs.read_log_file(tmp_path / "good.json") == examples
        with pytest.raises(cloudtrail_logs.LogFileProblem):
            cloudtrail_logs.read_log_file(tmp_path / "bad.json")
        assert gc.isenabled()
        gc.disable()  # a caller's choice, kept
        cloudtrail_logs.read_log_file(tmp_path / "good.json")
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert enabled_while_parsing and not any(enabled_while_parsing)
