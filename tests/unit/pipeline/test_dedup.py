"""eventID hashes and the bounded set of recently counted ones."""

from __future__ import annotations

import polars as pl

from keytrail.pipeline.dedup import SeenIds, event_hashes, pack


def _hashes(values: range) -> pl.Series:
    return pl.Series("eventHash", list(values), pl.Int64)


def test_hashes_are_pinned_because_state_files_keep_them_across_versions() -> None:
    ids = ["0d7a3f0e-5b0c-4f4e-9d55-0e2b9e8f0a11", "0d7a3f0e5b0c4f4e9d550e2b9e8f0a11", "late-0001", None]
    assert event_hashes(pl.Series(ids)).to_list() == [
        973531627642670821,  # a UUID: read from its hex digits, dashes or not
        973531627642670821,
        4415788175086318776,  # anything else: BLAKE2b
        -5426141060434712860,
    ]


def test_remembered_marks_the_batch_in_order() -> None:
    seen = SeenIds(capacity=100)
    seen.add(_hashes(range(0, 10)))
    assert seen.remembered(_hashes(range(8, 12))).to_list() == [True, True, False, False]


def test_the_older_generation_is_dropped_when_the_newer_fills() -> None:
    seen = SeenIds(capacity=40)
    started = [seen.add(_hashes(range(start, start + 10))) for start in range(0, 60, 10)]
    assert started == [False, True, False, True, False, True]  # a generation holds 20
    assert len(seen) == 20  # the last 20 (the newer generation is empty just after a turn)
    assert seen.remembered(_hashes(range(0, 60, 10))).to_list() == [False] * 4 + [True] * 2


def test_restore_takes_back_both_generations() -> None:
    seen = SeenIds(capacity=40)
    rows = [(3, pack(_hashes(range(0, 5)))), (2, pack(_hashes(range(5, 25)))), (3, pack(_hashes(range(30, 31))))]
    seen.restore(3, rows)
    assert (seen.generation, len(seen.current), len(seen.previous)) == (3, 6, 20)
    assert seen.remembered(_hashes(range(24, 32))).to_list() == [True] + [False] * 5 + [True, False]
