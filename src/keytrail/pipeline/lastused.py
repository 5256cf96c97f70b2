"""Last use per key x principal: only successful cryptographic operations count (GetKeyLastUsage).

eventTime has CloudTrail's one-second resolution, so two uses in one second tie on it; the later
one in the source partition's log (`logOffset`) wins. Offsets of different partitions are not
comparable, but a key's events share one partition (Kafka keys by key ARN), so this decides every
tie except a key used in two partitions (a ReEncrypt destination, logs of two sources) within
one second: there the larger offset, then the larger eventId wins, whatever the merge order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from keytrail.kms.key_use import CRYPTO_OPERATIONS

__all__ = [
    "CRYPTO_OPERATIONS", "LAST_USED_SCHEMA", "last_used", "last_used_per_key", "latest_per_key", "merge_last_used",
]

LAST_USED_SCHEMA: dict[str, pl.DataType] = {
    "keyArn": pl.String(),
    "principalArn": pl.String(),
    "lastUsedTime": pl.Datetime("us", "UTC"),
    "lastUsedOperation": pl.String(),
    "eventId": pl.String(),
    "requestId": pl.String(),
    "logOffset": pl.Int64(),  # position in the source partition's log (see the module docstring)
}
_SOURCE = ["keyArn", "principalArn", "eventTime", "eventName", "eventID", "requestID", "logOffset"]
_ORDER = ["lastUsedTime", "logOffset", "eventId"]


def last_used(frame: pl.DataFrame, before: datetime | None = None) -> pl.DataFrame:
    """The latest successful cryptographic use per key x principal in `frame` (`before`: among the
    uses dated before it).

    ReEncrypt uses both its source and its destination key, as GetKeyLastUsage records both.
    """
    uses = frame.filter(pl.col("errorCode").is_null() & pl.col("eventName").is_in(list(CRYPTO_OPERATIONS)))
    if before is not None:
        uses = uses.filter(pl.col("eventTime") < before)
    destinations = uses.filter(pl.col("destinationKeyArn").is_not_null()).with_columns(
        keyArn=pl.col("destinationKeyArn")
    )
    rows = pl.concat([uses.select(_SOURCE), destinations.select(_SOURCE)]).filter(
        pl.col("keyArn").is_not_null()
    )
    renamed = rows.rename(
        {
            "eventTime": "lastUsedTime",
            "eventName": "lastUsedOperation",
            "eventID": "eventId",
            "requestID": "requestId",
        }
    )
    return _latest(renamed, ["keyArn", "principalArn"])


def merge_last_used(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Combine last-used frames (batches, partitions): the latest use wins."""
    if not frames:
        return pl.DataFrame(schema=LAST_USED_SCHEMA)
    return _latest(pl.concat(frames), ["keyArn", "principalArn"])


def latest_per_key(rows: pl.DataFrame) -> pl.DataFrame:
    """Each key's latest row of key x principal rows, all columns kept: reducing parts with it and
    then their union with `last_used_per_key` equals `last_used_per_key` of every row at once."""
    return _latest(rows, ["keyArn"])


def last_used_per_key(per_principal: pl.DataFrame) -> pl.DataFrame:
    """Reduce key x principal rows to one row per key, naming the principal of the latest use.

    The partition-relative logOffset is dropped: it means nothing outside its partition.
    """
    latest = _latest(per_principal, ["keyArn"]).drop("logOffset")
    return latest.rename({"principalArn": "lastUsedPrincipalArn"})


def _latest(rows: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    # A total order (time, log position, eventId): every merge order gives the same answer.
    return (
        rows.sort(_ORDER, nulls_last=False)
        .group_by(keys, maintain_order=False)
        .last()
        .select(list(LAST_USED_SCHEMA) if "principalArn" in keys else rows.columns)
        .sort(keys)
    )
