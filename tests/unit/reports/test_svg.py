"""Charts are well-formed SVG that carry their values."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from keytrail.reports.svg import Bar, Series, bar_chart, line_chart, nice_max, short_arn

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(("value", "expected"), [(0, 1), (0.7, 1), (1, 1), (3, 5), (12, 20), (23, 25), (99, 100),
                                                 (101, 200), (0.013, 0.02)])
def test_nice_max_rounds_up_to_a_readable_axis_top(value: float, expected: float) -> None:
    assert nice_max(value) == pytest.approx(expected)


@pytest.mark.parametrize(("arn", "short"), [
    ("arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", "key/1234abcd…"),
    ("arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab", "us-east-1:key/mrk-1234…"),
    ("arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab", "eu-west-1:key/mrk-1234…"),
    ("arn:aws:iam::111122223333:user/alice", "111122223333:user/alice"),
    ("arn:aws:sts::111122223333:assumed-role/app/s", "111122223333:assumed-role/app/s"),
    ("AWS Internal", "AWS Internal"), (None, "(none)"),
])
def test_short_arn_keeps_what_a_reader_needs(arn: str | None, short: str) -> None:
    assert short_arn(arn) == short


def test_line_chart_draws_one_line_per_series_with_a_legend() -> None:
    times = [datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(5)]
    svg = line_chart(times, [Series("key/a", [1, 2, 3, 4, 5]), Series("other <x>", [0, 0, 9, 0, 0])], title="T & U")
    root = ET.fromstring(svg)
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2
    assert len(lines[0].get("points", "").split()) == 5
    texts = "".join(root.itertext())
    assert "T & U" in texts and "other <x>" in texts and "2026-11-01 00:00" in texts


def test_bar_chart_draws_companion_bars_behind_values() -> None:
    svg = bar_chart([Bar("111122223333", 2.5, 10.0), Bar("444455556666", 1.0, 4.0)], title="cost",
                    unit=lambda v: f"${v:.2f}", companion_name="projected")
    root = ET.fromstring(svg)
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert "projected: $10.00" in titles and "111122223333: $2.50" in titles
    assert len(root.findall(f"{SVG}rect")) == 1 + 4  # background + value and companion per bar
