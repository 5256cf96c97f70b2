"""RecentRecords: the shipper's memory of what the spool made durable lately."""

from __future__ import annotations

from keytrail.audit.shipper import RecentRecords


def _payloads(first: int, count: int) -> list[bytes]:
    return [f"record {offset}".encode() for offset in range(first, first + count)]


def _filled(limit: int = 100) -> RecentRecords:
    recent = RecentRecords(limit)
    for first in (10, 13, 20):  # groups of 3, 7 and 5 records: offsets 10 to 24
        recent.add(first, _payloads(first, {10: 3, 13: 7, 20: 5}[first]))
    return recent


def test_records_are_taken_across_groups_from_any_offset_up_to_the_limit() -> None:
    recent = _filled()
    assert recent.take(11, 6) == [(offset, f"record {offset}".encode()) for offset in range(11, 17)]
    assert recent.take(18, 100) == [(offset, f"record {offset}".encode()) for offset in range(18, 25)]
    assert recent.take(25, 10) is None  # not durable yet (the shipper never asks past the durable end)


def test_a_record_memory_does_not_hold_means_reading_the_log() -> None:
    recent = _filled()
    assert recent.take(9, 5) is None  # from before this process, or dropped
    assert recent.take(12, 1) == [(12, b"record 12")]
    assert recent.take(5, 1) is None


def test_taking_lets_go_of_what_was_shipped() -> None:
    recent = _filled()
    assert recent.take(20, 2) == [(20, b"record 20"), (21, b"record 21")]
    assert recent.take(12, 1) is None  # groups wholly before offset 20 are gone


def test_memory_is_bounded_the_oldest_groups_go_first() -> None:
    recent = _filled(limit=10)  # 15 records added: the first two groups no longer fit
    assert recent.take(10, 1) is None and recent.take(13, 1) is None
    assert recent.take(20, 5) == [(offset, f"record {offset}".encode()) for offset in range(20, 25)]
