"""What reading a hostile or huge CloudTrail file holds: the problems it meets are counted, all of
them, but only the first few are kept, so the memory a read needs follows its records' keys and
principals, not the count of values in the file that are no record."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pytest

from keytrail.transport import cloudtrail_logs
from keytrail.transport.cloudtrail_logs import ReadReport, iter_cloudtrail_records
from keytrail.transport.read_problems import SHOWN

EXAMPLES = Path(__file__).parent / "audit" / "data" / "aws_documented_examples.json"


def _kms_records() -> list[dict]:
    return [r for r in json.loads(EXAMPLES.read_text())["Records"] if r["eventSource"] == "kms.amazonaws.com"]


def _kms_record() -> dict:
    return _kms_records()[0]


def test_problems_past_the_first_hundred_are_counted_not_kept(tmp_path: Path) -> None:
    # `{"Records": [{…}, 1, 1, …]}`: each 1 was a sentence kept (5,000,000 of them in 10 MB: 624 MB).
    path = tmp_path / "ones.json"
    values = 250_000
    path.write_text('{"Records": [' + json.dumps(_kms_record()) + ", 1" * values + "]}")
    report = ReadReport()
    seen = 0

    def count(_: str) -> None:
        nonlocal seen
        seen += 1

    assert len(list(iter_cloudtrail_records([path], report=report, on_problem=count))) == 1
    assert (report.files, report.records, len(report.problems), seen) == (1, 1, values, values)
    assert list(report.problems) == [f"{path}: record {index}: not a JSON object" for index in range(1, SHOWN + 1)]
    assert report.problems.unshown_note() == f"{values - SHOWN:,} more problems not shown (the first {SHOWN} are)"


def test_reading_a_json_lines_file_of_numbers_holds_a_bounded_amount(tmp_path: Path) -> None:
    # The same of a JSON-lines file: a record, then a line `1` after another.
    path = tmp_path / "ones.jsonl"
    lines = 150_000
    path.write_text(json.dumps(_kms_record()) + "\n" + "1\n" * lines)
    report = ReadReport()
    tracemalloc.start()
    try:
        records = list(iter_cloudtrail_records([path], report=report))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(records), len(report.problems), len(list(report.problems))) == (1, lines, SHOWN)
    # the reader's 1 MiB pieces of text and their parse (2 MiB); the 150,000 sentences held took 18 MiB
    assert peak < 8 << 20, peak


def test_a_problem_names_a_huge_event_id_or_member_by_its_start(tmp_path: Path) -> None:
    # Each of the first hundred problems is kept and said: an eventID of 1 MB in each made them 100 MB.
    event_id, name = "a" * 1_000_000, "b" * 1_000_000
    refused = tmp_path / "refused.json"
    refused.write_text(json.dumps({"Records": [{**_kms_record(), "eventID": event_id, "eventTime": "yesterday"}]}))
    twice = tmp_path / "twice.json"
    twice.write_text('{"' + name + '": 1, "' + name + '": 2}')
    report = ReadReport()
    assert list(iter_cloudtrail_records([refused, twice], report=report)) == []
    assert list(report.problems) == [
        f"{refused}: record 0 (eventID {'a' * 64}… (1,000,000 characters)): eventTime 'yesterday' is not an ISO 8601 "
        "time",
        f'{twice}: line 1: "{"b" * 63}… (1,000,002 characters) appears twice in the document (a JSON reader keeps one '
        "of the two and loses the other's records)"]


def test_a_document_of_more_members_than_a_value_may_hold_is_refused_after_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its members besides the Records were each kept, without bound: 2,000,000 of them (29 MB) held 300 MB.
    monkeypatch.setattr(cloudtrail_logs, "MAX_VALUE_CHARS", 1 << 20)
    members = tmp_path / "members.json"
    members.write_text('{"Records": [' + json.dumps(_kms_record()) + "]"
                       + "".join(f', "m{index}": 1' for index in range(200_000)) + "}")
    report = ReadReport()
    assert list(iter_cloudtrail_records([members, EXAMPLES], report=report)) == [_kms_record(), *_kms_records()]
    assert report.problems == [f"{members}: line 1: a JSON value larger than 1 MiB: no CloudTrail log file holds one"]
    assert (report.files, report.partly_read) == (1, 1)


def test_a_small_gzip_file_of_one_huge_value_stops_at_32_mib(tmp_path: Path) -> None:
    # A value of 512 MiB was let through: 200 KB gzipped, 200 MB of `1,1,…` in one record, took 1.1 GB
    # parsed whole (a pointer per 2 characters). No CloudTrail record is over a few hundred KB.
    bomb = tmp_path / "bomb.json.gz"
    with gzip.open(bomb, "wb") as packed:
        packed.write(b'{"Records": [{"eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "x": "')
        for _ in range(80):  # past what one read ahead may hold (JsonStream reads on by as much as it holds)
            packed.write(b"a" * (1 << 20))
        packed.write(b'"}]}')
    report = ReadReport()
    assert list(iter_cloudtrail_records([bomb], report=report)) == []
    assert report.problems == [f"{bomb}: line 1: a JSON value larger than 32 MiB once decompressed: no CloudTrail log "
                               "file holds one"]


def large_records_file(path: Path, count: int, padding: int) -> Path:
    record = _kms_record()
    path.write_text('{"Records": [' + ", ".join(
        json.dumps({**record, "eventID": f"{path.stem}-{index}", "requestParameters": {"padding": "p" * padding}})
        for index in range(count)) + "]}")
    return path


def test_a_file_of_large_records_is_parsed_a_few_mb_at_a_time(tmp_path: Path) -> None:
    # 512 records were parsed before the first was handed on, whatever their size: 200 of 200 KB
    # (requestParameters of that size) were all 40 MB held at once, 512 of them 100 MB.
    path = large_records_file(tmp_path / "large.json", 200, 200_000)
    report = ReadReport()
    tracemalloc.start()
    try:
        read = sum(1 for _ in iter_cloudtrail_records([path], report=report))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (read, report.records) == (200, 200)
    # a parse of 4 MiB of text (_PARSED_TEXT), the 1 MiB pieces it is read in, and their copies
    assert peak < 24 << 20, peak

