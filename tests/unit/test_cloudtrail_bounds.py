"""What reading a hostile or huge CloudTrail file holds: the problems it meets are counted, all of
them, but only the first few are kept, so the memory a read needs follows its records' keys and
principals, not the count of values in the file that are no record."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from keytrail.transport.cloudtrail_logs import ReadReport, iter_cloudtrail_records
from keytrail.transport.read_problems import SHOWN

EXAMPLES = Path(__file__).parent / "audit" / "data" / "aws_documented_examples.json"


def _kms_record() -> dict:
    return next(r for r in json.loads(EXAMPLES.read_text())["Records"] if r["eventSource"] == "kms.amazonaws.com")


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
    lines = 300_000
    path.write_text(json.dumps(_kms_record()) + "\n" + "1\n" * lines)
    report = ReadReport()
    tracemalloc.start()
    try:
        records = list(iter_cloudtrail_records([path], report=report))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(records), len(report.problems), len(list(report.problems))) == (1, lines, SHOWN)
    # the reader's 1 MiB pieces of text and their parse (2 MiB); the 300,000 sentences held took 36 MiB
    assert peak < 8 << 20, peak
