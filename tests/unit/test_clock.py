"""The manual clock behind tests and `serve --dev-clock`."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keytrail.clock import DEV_CLOCK_FILE, ManualClock, dev_clock_ahead


def test_moves_forward_only() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    assert clock.advance(90) == datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC) == clock.now()
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_a_move_past_the_year_9999_is_refused_and_leaves_the_clock_where_it_was() -> None:
    clock = ManualClock(datetime(9999, 12, 1, tzinfo=UTC))
    with pytest.raises(OverflowError):
        clock.advance(timedelta(days=31).total_seconds())
    assert clock.now() == datetime(9999, 12, 1, tzinfo=UTC)  # still usable


def test_a_fifo_in_place_of_the_dev_clock_record_reads_as_none_without_waiting(tmp_path: Path) -> None:
    # Read as it came, a FIFO held every reader of the data dir's now (the metrics queries, `audit
    # verify`, `serve --dev-clock`, and its event loop at each clock move) for a writer forever.
    import threading

    os.mkfifo(tmp_path / DEV_CLOCK_FILE)
    outcome: list[float] = []
    reading = threading.Thread(target=lambda: outcome.append(dev_clock_ahead(tmp_path)), daemon=True)
    reading.start()
    reading.join(timeout=30)
    if reading.is_alive():  # waiting on the FIFO: a writer lets it go
        os.close(os.open(tmp_path / DEV_CLOCK_FILE, os.O_WRONLY))
    assert outcome == [0.0]
    (tmp_path / DEV_CLOCK_FILE).unlink()
    (tmp_path / DEV_CLOCK_FILE).write_text('{"aheadSeconds": 86400}\n')
    assert dev_clock_ahead(tmp_path) == 86400.0
