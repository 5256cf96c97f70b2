"""The manual clock behind tests and `serve --dev-clock`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keytrail.clock import ManualClock


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
