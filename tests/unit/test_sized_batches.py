"""Records read from CloudTrail files, batched by the text they were read from as well as by their
count (`transport.sized_batches`): what each reader of the files (import, consume, report,
detect) holds at once follows the records' size, not their count alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keytrail.transport.cloudtrail_logs import ReadReport, iter_cloudtrail_records
from keytrail.transport.sized_batches import sized_batches
from tests.unit.test_cloudtrail_bounds import large_records_file


def test_batches_end_at_their_count_or_their_text_whichever_comes_first() -> None:
    text = 0

    def read(items: list[int]) -> Iterator[int]:
        nonlocal text
        for item in items:
            text += item  # each item's text, counted as it is given (as ReadReport.text is)
            yield item

    assert list(sized_batches(read([1, 1, 1, 1, 1]), lambda: text, max_items=2, max_text=100)) == [[1, 1], [1, 1], [1]]
    assert list(sized_batches(read([5, 60, 50, 1, 200, 3]), lambda: text, max_items=10, max_text=100)) == [
        [5, 60, 50], [1, 200], [3]]  # one item past the text is the last; a batch holds at least one
    assert list(sized_batches(read([]), lambda: text, max_items=3, max_text=1)) == []
    with pytest.raises(ValueError):
        list(sized_batches([1], lambda: 0, max_items=0, max_text=1))


def test_records_are_batched_by_their_text_as_well_as_their_count(tmp_path: Path) -> None:
    large = large_records_file(tmp_path / "large.json", 40, 100_000)
    small = large_records_file(tmp_path / "small.json", 40, 10)
    report = ReadReport()
    batches = list(sized_batches(iter_cloudtrail_records([large, small], report=report), lambda: report.text,
                                 max_items=15, max_text=1 << 20))
    assert [record["eventID"] for batch in batches for record in batch] == [
        *(f"large-{index}" for index in range(40)), *(f"small-{index}" for index in range(40))]
    # the files' text, but for their `{"Records": [` and `]}` (and a character a batch, rounded down)
    assert 0 <= large.stat().st_size + small.stat().st_size - report.text < 100, report.text
    # records of 101 KB: a batch ends with the one that takes it past 1 MiB; of 1 KB: at 15 records
    assert [len(batch) for batch in batches] == [11, 11, 11, 15, 15, 15, 2]
