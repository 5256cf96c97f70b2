"""A slice of report rows as CSV or JSON lines text, formatted by polars column by column.

`tabular` formats a row at a time in Python (≈ 30 µs a JSON line: 20 s for a 600k-row report).
Here the same text is built with polars expressions, for the values whose text is certain to be
the same: integers, booleans, UTC times from 1970 to 9999, and strings that neither format
escapes or quotes (ARNs, IDs, operation names). A slice holding any other value (money as
decimals, a string with a comma, a quote or non-ASCII) gets None, and `tabular` formats it row
by row as before: the file is the same byte for byte either way.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import UTC, datetime

import polars as pl

__all__ = ["TIME_FORMAT", "csv_lines", "json_lines"]

_INTEGERS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
# Characters json.dumps (ensure_ascii) writes as they are: printable ASCII but `"` and `\`.
_JSON_ESCAPED = r'[^\x20\x21\x23-\x5b\x5d-\x7e]'
# Characters that make the csv module quote a field (delimiter, quote, line ends).
_CSV_QUOTED = r'[,"\r\n]'
#: A time's cell text (`tabular.cell_text` writes it too): UTC, whole seconds, `Z`.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_EARLIEST, _LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def json_lines(piece: pl.DataFrame, own: Collection[str]) -> str | None:
    """`piece`'s rows as JSON lines: each non-null value, and null for the columns in `own`
    (its table's), as `tabular._json_line` writes them; None when a value needs Python's text."""
    cells = []
    for name in piece.columns:
        text = _text(piece.get_column(name), _JSON_ESCAPED, quote=True)
        if text is None:
            return None
        key = pl.lit(f"{json.dumps(name)}: ")
        cells.append(key + text.fill_null("null") if name in own else key + text)
    row = pl.concat_str(cells, separator=", ", ignore_nulls=True)
    return _joined(piece.select(pl.lit("{") + row + pl.lit("}")))


def csv_lines(piece: pl.DataFrame) -> str | None:
    """`piece`'s rows as the csv module writes them (nulls empty); None when a value needs Python's
    text or would be quoted."""
    if piece.width < 2:  # csv quotes the empty field of a one-field row
        return None
    cells = []
    for name in piece.columns:
        text = _text(piece.get_column(name), _CSV_QUOTED, quote=False)
        if text is None:
            return None
        cells.append(text.fill_null(""))
    return _joined(piece.select(pl.concat_str(cells, separator=",")))


def _joined(lines: pl.DataFrame) -> str:
    column = lines.to_series()
    return "\n".join(column.to_list()) + "\n" if column.len() else ""


def _text(column: pl.Series, unsafe: str, *, quote: bool) -> pl.Expr | None:
    """The cell text of each value of `column` (null for null), or None when some value's text is
    not certain to be `tabular.cell_text`'s (quoted for JSON when `quote`)."""
    value = pl.col(column.name)
    if column.null_count() == column.len():
        return pl.lit(None, pl.String)
    dtype = column.dtype
    if dtype in _INTEGERS or dtype == pl.Boolean:  # booleans as true and false
        return value.cast(pl.String)
    if dtype == pl.String and not column.str.contains(unsafe).any():
        return pl.lit('"') + value + pl.lit('"') if quote else value
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None and _in_range(column):
        text = value.dt.convert_time_zone("UTC").dt.strftime(TIME_FORMAT)
        return pl.lit('"') + text + pl.lit('"') if quote else text
    return None


def _in_range(times: pl.Series) -> bool:
    """Whether every time lies where polars' and Python's %Y agree (four digits, no padding)."""
    low, high = times.min(), times.max()
    return isinstance(low, datetime) and isinstance(high, datetime) and low >= _EARLIEST and high <= _LATEST
