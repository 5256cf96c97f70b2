"""Denied calls: KMS requests refused by authorization, per key × principal × operation."""

from __future__ import annotations

import io
from datetime import datetime

import polars as pl

__all__ = ["DENIED_CODES", "DENIED_SCHEMA", "DeniedTally", "denied_calls"]

#: CloudTrail writes `AccessDenied` for KMS; the wire error code is `AccessDeniedException`.
DENIED_CODES = ("AccessDenied", "AccessDeniedException")
_KEYS = ["keyArn", "principalArn", "accountId", "eventName", "errorCode"]
DENIED_SCHEMA: dict[str, pl.DataType] = {
    "keyArn": pl.String(), "principalArn": pl.String(), "accountId": pl.String(), "eventName": pl.String(),
    "errorCode": pl.String(), "count": pl.Int64(), "firstDenied": pl.Datetime("us", "UTC"),
    "lastDenied": pl.Datetime("us", "UTC"),
}


def denied_calls(frame: pl.DataFrame) -> pl.DataFrame:
    """Denied calls of a pipeline event frame (`keytrail.pipeline.frame` schema), grouped (pure)."""
    denied = frame.filter(pl.col("errorCode").is_in(DENIED_CODES))
    return _group(denied.with_columns(count=pl.lit(1, pl.Int64), firstDenied=pl.col("eventTime"),
                                      lastDenied=pl.col("eventTime")))


def _group(rows: pl.DataFrame) -> pl.DataFrame:
    grouped = rows.group_by(_KEYS).agg(pl.col("count").sum(), pl.col("firstDenied").min(),
                                       pl.col("lastDenied").max())
    return grouped.select(list(DENIED_SCHEMA)).cast(DENIED_SCHEMA)  # type: ignore[arg-type]


def _detached(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with string columns of its own. A filtered or grouped polars string column points into
    the buffers of the frame it came from, so a few denied rows kept per batch held every batch's
    strings alive (≈ 180 MB at 1M events); no polars operation compacts them (pola-rs/polars#24464),
    an Arrow IPC round trip does."""
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    buffer.seek(0)
    return pl.read_ipc(buffer)


class DeniedTally:
    """Denied calls of the minutes in [since, until) summed over batches; an event ID counts once however
    often it arrives."""

    def __init__(self, since: datetime | None = None, until: datetime | None = None) -> None:
        self.since, self.until = since, until
        self._seen: set[str] = set()
        self._parts: list[pl.DataFrame] = []

    def add(self, frame: pl.DataFrame) -> None:
        """Count the denied calls of one batch frame not counted before."""
        denied = frame.filter(pl.col("errorCode").is_in(DENIED_CODES)).unique("eventID", keep="first")
        # By minute, as the usage rows are kept and bounded (the minutes that start in the period):
        # by the second, a bound inside a minute left this table and the usage's errorCount apart.
        minute = pl.col("eventTime").dt.truncate("1m")
        if self.since is not None:
            denied = denied.filter(minute >= self.since)
        if self.until is not None:
            denied = denied.filter(minute < self.until)
        if denied.height == 0:
            return
        fresh = [event_id not in self._seen for event_id in denied.get_column("eventID").to_list()]
        denied = denied.filter(pl.Series(fresh, dtype=pl.Boolean))
        self._seen.update(denied.get_column("eventID").to_list())
        self._parts.append(_detached(denied_calls(denied)))

    def frame(self) -> pl.DataFrame:
        """All denied calls so far, largest count first (ties in a fixed order: the same input gives the
        same file)."""
        if not self._parts:
            return pl.DataFrame(schema=DENIED_SCHEMA)
        merged = _group(pl.concat(self._parts))
        self._parts = [merged]
        return merged.sort(["count", *_KEYS], descending=[True, *[False] * len(_KEYS)], nulls_last=True)
