"""Events put in time order through sorted runs spilled to files: the order of an in-memory stable
sort, the events as they were, the files gone after, memory of a run rather than of the input."""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

import pytest
from tests.unit.detect.records import T0, create_key, denied, event, key_arn, user

from keytrail.detect.events import KmsEvent, read_event
from keytrail.detect.time_order import time_ordered


def _shuffled_events(count: int, seconds: int, seed: int = 3) -> list[KmsEvent]:
    """`count` events spread over a few `seconds`, out of order: many share their second."""
    rng = random.Random(seed)
    return [read_event(event("Decrypt", T0 + timedelta(seconds=rng.randrange(seconds)), key_arn(n % 5)))
            for n in range(count)]


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR as tempfile reads it: where the run files go."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("run_events", "fan_in"), [(1, 2), (2, 2), (3, 3), (7, 2), (10, 64), (40, 2), (1000, 2)])
def test_events_come_out_as_a_stable_sort_by_time_whatever_the_run_size(
        run_events: int, fan_in: int, private_tmp: Path) -> None:
    events = _shuffled_events(40, seconds=4)
    with time_ordered(events, run_events=run_events, fan_in=fan_in) as ordered:
        out = list(ordered)
    # sorted() is stable: of one second, the events in the order they came in
    assert [e.event_id for e in out] == [e.event_id for e in sorted(events, key=lambda e: e.event_time)]
    assert list(private_tmp.iterdir()) == []


def test_an_event_read_back_from_a_run_file_is_the_one_written(private_tmp: Path) -> None:
    records = [create_key(T0, key_arn(1)), denied("Decrypt", T0, key_arn(1), user("eve")),
               event("Encrypt", T0, key_arn(2), params={"encryptionContext": {"app": "orders", "n": [1, 2.5]}})]
    events = [read_event(record) for record in records]
    assert type(events[1].response_elements) is MappingProxyType  # an absent part: read-only, empty
    with time_ordered(events, run_events=1) as ordered:
        out = list(ordered)
    assert out == events
    assert [type(e.response_elements) for e in out] == [type(e.response_elements) for e in events]


def test_the_run_files_are_removed_on_exit_even_when_left_unread(private_tmp: Path) -> None:
    with time_ordered(_shuffled_events(10, seconds=2), run_events=3) as ordered:
        next(ordered)
        [folder] = private_tmp.iterdir()
        assert folder.name.startswith("keytrail-detect-") and len(list(folder.iterdir())) == 4
        assert folder.stat().st_mode & 0o077 == 0  # the events are only their user's to read
    assert list(private_tmp.iterdir()) == []
    with pytest.raises(RuntimeError), time_ordered(_shuffled_events(10, seconds=2), run_events=3):
        raise RuntimeError("the detector failed")
    assert list(private_tmp.iterdir()) == []


def test_an_input_that_fits_in_one_run_is_sorted_without_a_file(private_tmp: Path) -> None:
    events = _shuffled_events(9, seconds=3)
    with time_ordered(events, run_events=10) as ordered:
        assert list(private_tmp.iterdir()) == []
        assert [e.event_id for e in ordered] == [e.event_id for e in sorted(events, key=lambda e: e.event_time)]


def test_a_full_disk_is_said_naming_where_the_runs_go(private_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("keytrail.detect.time_order._pickler", lambda _file: type("P", (), {"dump": full})())
    with (pytest.raises(OSError, match="No space left on device .set TMPDIR to write them elsewhere.") as raised,
          time_ordered(_shuffled_events(4, seconds=2), run_events=2)):
        pass
    assert str(private_tmp) in str(raised.value)
    assert list(private_tmp.iterdir()) == []


def _lazy_events(count: int) -> Iterator[KmsEvent]:
    """Events read one at a time, newest first: each run holds the latest of what is left."""
    for n in range(count):
        yield read_event(event("Decrypt", T0 - timedelta(seconds=n), key_arn(n % 50), user(f"u{n % 20}")))


def _peak_bytes_while(consume: Iterator[KmsEvent]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        for _ in consume:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peak_bytes_ordering(count: int, through_runs: bool) -> int:
    """The peak bytes allocated while `count` events are put in time order, sorted in memory or
    through runs of 500 merged two at a time."""
    def sorted_in_memory() -> Iterator[KmsEvent]:
        yield from sorted(_lazy_events(count), key=lambda e: e.event_time)

    def ordered_through_runs() -> Iterator[KmsEvent]:
        with time_ordered(_lazy_events(count), run_events=500, fan_in=2) as events:
            yield from events

    return _peak_bytes_while(ordered_through_runs() if through_runs else sorted_in_memory())


# In a process of its own: tracemalloc counts the allocations of every thread, and a thread another
# test of the same pytest worker left behind made a CI run measure 5.4 MB through runs (1.6 alone).
_MEASURE = """
import sys
from tests.unit.detect.test_detect_time_order import peak_bytes_ordering
print(peak_bytes_ordering(int(sys.argv[1]), sys.argv[2] == "runs"))
"""


def _peak_bytes_in_a_process_of_its_own(count: int, through_runs: bool, temporary: Path) -> int:
    measured = subprocess.run([sys.executable, "-c", _MEASURE, str(count), "runs" if through_runs else "memory"],
                              capture_output=True, text=True, check=True, timeout=120,
                              env={**os.environ, "TMPDIR": str(temporary)})
    return int(measured.stdout)


def test_memory_holds_a_run_and_a_piece_of_each_file_not_the_input(private_tmp: Path) -> None:
    """12,000 events: sorted in memory all are held at the end; through runs of 500 merged two at a
    time, a run or two pieces of 256 (about 6x less, measured)."""
    whole = _peak_bytes_in_a_process_of_its_own(12_000, False, private_tmp)
    assert _peak_bytes_in_a_process_of_its_own(12_000, True, private_tmp) < whole / 3
    assert list(private_tmp.iterdir()) == []  # its run files were written there, and are gone
