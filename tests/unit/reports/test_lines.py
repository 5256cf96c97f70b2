"""The polars-formatted CSV and JSON lines are the row-by-row Python text, byte for byte."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from keytrail.reports.lines import csv_lines, json_lines
from keytrail.reports.tabular import _json_line, cell_text

ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
START = datetime(2026, 10, 1, tzinfo=UTC)


def _python_json(frame: pl.DataFrame, own: tuple[str, ...]) -> str:
    return "".join(_json_line(row, {"t": own}) for row in frame.iter_rows(named=True))


def _python_csv(frame: pl.DataFrame) -> str:
    sink = io.StringIO()
    csv.writer(sink, lineterminator="\n").writerows([cell_text(v) for v in row] for row in frame.iter_rows())
    return sink.getvalue()


def _frame(texts: list[str | None], counts: list[int | None], flags: list[bool | None],
           seconds: list[int | None]) -> pl.DataFrame:
    size = min(len(texts), len(counts), len(flags), len(seconds))
    times = [None if s is None else START + timedelta(seconds=s) for s in seconds[:size]]
    return pl.DataFrame({"table": ["t"] * size, "keyArn": texts[:size], "count": counts[:size],
                         "unused": flags[:size], "lastUsedTime": times[:size], "totalCost": [None] * size},
                        schema={"table": pl.String, "keyArn": pl.String, "count": pl.Int64, "unused": pl.Boolean,
                                "lastUsedTime": pl.Datetime("us", "UTC"), "totalCost": pl.Decimal(38, 10)})


_texts = st.lists(st.one_of(st.none(), st.sampled_from([ARN, "", "a b"]), st.text(max_size=8)), min_size=1, max_size=6)
_counts = st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=6)
_flags = st.lists(st.one_of(st.none(), st.booleans()), min_size=1, max_size=6)
_seconds = st.lists(st.one_of(st.none(), st.integers(0, 10**10)), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(_texts, _counts, _flags, _seconds, st.sampled_from([(), ("keyArn", "count"), ("keyArn", "totalCost")]))
def test_json_lines_are_the_python_lines_or_none(texts: Any, counts: Any, flags: Any, seconds: Any,
                                                 own: tuple[str, ...]) -> None:
    frame = _frame(texts, counts, flags, seconds)
    text = json_lines(frame, own)
    assert text is None or text == _python_json(frame, own)


@settings(max_examples=200, deadline=None)
@given(_texts, _counts, _flags, _seconds)
def test_csv_lines_are_the_python_lines_or_none(texts: Any, counts: Any, flags: Any, seconds: Any) -> None:
    frame = _frame(texts, counts, flags, seconds)
    text = csv_lines(frame)
    assert text is None or text == _python_csv(frame)


def test_plain_values_take_the_polars_path() -> None:
    frame = _frame([ARN, None, "Decrypt"], [1, None, 3], [True, None, False], [0, None, 86_400])
    assert json_lines(frame, ("keyArn",)) == _python_json(frame, ("keyArn",))
    assert csv_lines(frame) == _python_csv(frame)
    assert json_lines(frame, ()) == (f'{{"table": "t", "keyArn": "{ARN}", "count": 1, "unused": true, '
                                     '"lastUsedTime": "2026-10-01T00:00:00Z"}\n{"table": "t"}\n'
                                     '{"table": "t", "keyArn": "Decrypt", "count": 3, "unused": false, '
                                     '"lastUsedTime": "2026-10-02T00:00:00Z"}\n')


def test_values_only_python_writes_alike_are_left_to_it() -> None:
    frame = _frame([ARN], [1], [True], [0])
    assert json_lines(frame.with_columns(keyArn=pl.lit('say "hi"')), ()) is None  # escaped
    assert json_lines(frame.with_columns(keyArn=pl.lit("clé")), ()) is None  # \u00e9 in JSON
    assert csv_lines(frame.with_columns(keyArn=pl.lit("a,b"))) is None  # quoted
    assert json_lines(frame.with_columns(totalCost=pl.lit(Decimal("1.5"), pl.Decimal(38, 10))), ()) is None
    early = datetime(999, 1, 1, tzinfo=UTC)  # Python writes the year as 999, polars as 0999
    assert csv_lines(frame.with_columns(lastUsedTime=pl.lit(early, pl.Datetime("us", "UTC")))) is None
