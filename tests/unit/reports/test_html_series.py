"""The HTML report's time series: busiest values per window, zero-filled."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime

import polars as pl

from keytrail.reports.html import time_series


def test_calls_without_a_value_are_their_own_series() -> None:
    hour = [datetime(2026, 11, 1, h, tzinfo=UTC) for h in range(3)]
    over_time = pl.DataFrame({
        "windowStart": [hour[0], hour[0], hour[2]],
        "principalArn": ["arn:aws:iam::111122223333:user/alice", None, None],
        "count": [2, 5, 1],
    })
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # polars warns when compared with None
        times, series = time_series(over_time, "principalArn", "hour")
    assert times == hour
    assert {s.name: s.values for s in series} == {"(none)": [5.0, 0.0, 1.0], "111122223333:user/alice": [2.0, 0.0, 0.0]}
