"""Telling imported history from calls a node answered, by offset and by a flag per value."""

from __future__ import annotations

from keytrail.audit.imported import ImportedSpans, origin_runs


def test_values_come_in_runs_of_one_origin_in_their_order() -> None:
    values = [b"a", b"b", b"c", b"d", b"e"]
    assert list(origin_runs(values, [True, True, False, True, False])) == [
        ([b"a", b"b"], True), ([b"c"], False), ([b"d"], True), ([b"e"], False)]


def test_without_flags_a_batch_is_one_run_not_imported_and_an_empty_one_no_run() -> None:
    assert list(origin_runs([b"a", b"b"], ())) == [([b"a", b"b"], False)]
    assert list(origin_runs([], ())) == []


def test_spans_are_looked_up_by_offset_whatever_their_order() -> None:
    imported = ImportedSpans([range(10, 12), range(0, 3)])
    assert [offset for offset in range(14) if imported.holds(offset)] == [0, 1, 2, 10, 11]
    values = [b"v2", b"v3", b"v10", b"v11"]  # read at offsets 2..3 and 10..11
    assert list(imported.runs(values, [range(2, 4), range(10, 12)])) == [
        ([b"v2"], True), ([b"v3"], False), ([b"v10", b"v11"], True)]
    assert list(ImportedSpans([]).runs(values, [range(2, 4), range(10, 12)])) == [(values, False)]
