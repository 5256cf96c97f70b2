"""Avro single-object values → a polars frame of the columns the pipeline needs, fast.

The values of one writer schema are framed, whole and unsliced, as one in-memory Avro
container (header, one block): the container's schema is the writer's with a leading 10-byte
`fixed` field that takes each value's single-object header (C3 01 + fingerprint), so no value
is sliced or copied one by one. Values read from the embedded log (`Payloads`) stay as framed
on disk: the field grows by the frame header, and the block is the log's bytes unchanged.
polars reads the container with a column projection, which halves its decode time against
reading every column. Values of an unknown writer fall back to
`keytrail.audit.schema.to_polars`, which names what is wrong.
"""

from __future__ import annotations

import io
import json
import logging
import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import Any

import polars as pl
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from keytrail.audit import schema as audit_schema
from keytrail.audit.schema import avro_long
from keytrail.pipeline.avro_bounds import BodyCheck, body_check
from keytrail.transport.frames import FRAME_HEADER, Payloads

__all__ = ["AVRO_COLUMNS", "avro_frame", "known_writer", "read_writer_columns", "readable_avro", "say_unknown_writers"]

log = logging.getLogger(__name__)

#: The Avro record fields `frame.frame_from_avro` reads.
AVRO_COLUMNS = (
    "eventID",
    "eventTime",
    "eventName",
    "keyArn",
    "principalArn",
    "invokedBy",
    "identityType",  # a key owner's copy of another account's call: principalArn is its accountId
    "accountId",
    "recipientAccountId",
    "awsRegion",
    "errorCode",
    "errorMessage",  # the key of a denial whose record has no resources (frame._DENIED_KEY)
    "readOnly",
    "eventType",
    "requestID",
    "resources",
    "requestParameters",
    "responseElements",
    "otherFields",  # imported records' sharedEventID
)
_MAGIC = b"\xc3\x01"
_PREFIX = 10  # magic + 8-byte fingerprint
_SYNC = b"keytrail-pipeline"[:16]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=2)
def _writers(framing: int = 0) -> dict[bytes, tuple[bytes, tuple[str, ...]]]:
    """single-object prefix → (container header, projected columns) for every known schema
    version, for values each preceded by `framing` bytes that the container skips."""
    return dict(_writer(path, framing) for path in audit_schema.writer_schema_paths())


def _writer(path: Path, framing: int) -> tuple[bytes, tuple[bytes, tuple[str, ...]]]:
    raw = json.loads(path.read_bytes())
    prefix = _prefix(raw)
    fields = {f["name"] for f in raw["fields"]}
    skipped = {"name": "_header", "type": {"type": "fixed", "name": "_Header", "size": framing + _PREFIX}}
    framed = json.dumps({**raw, "fields": [skipped, *raw["fields"]]}).encode()
    header = b"".join(
        [
            b"Obj\x01",
            avro_long(2),
            _bytes(b"avro.schema"),
            _bytes(framed),
            _bytes(b"avro.codec"),
            _bytes(b"null"),
            avro_long(0),
            _SYNC,
        ]
    )
    return prefix, (header, tuple(c for c in AVRO_COLUMNS if c in fields))


def _prefix(raw: dict[str, Any]) -> bytes:
    """The single-object header (C3 01 + CRC-64-AVRO fingerprint) of values of the schema `raw`."""
    canonical = to_parsing_canonical_form(parse_schema(raw))
    return _MAGIC + struct.pack("<Q", int(fingerprint(canonical, "CRC-64-AVRO"), 16))


def avro_frame(values: Sequence[bytes]) -> pl.DataFrame:
    """The AVRO_COLUMNS of `values` (absent ones null), one row per value in the order given."""
    if not values:
        return pl.DataFrame()
    first = values[0][:_PREFIX]
    if _one_writer(values, first):  # the usual case
        return _read(first, values) if first in _writers() else _fallback(values)
    return _mixed(values)


def readable_avro(
    values: Sequence[bytes], offsets: Sequence[int], partition: str
) -> tuple[pl.DataFrame, Sequence[int]]:
    """`avro_frame` of `values` and their `offsets`, less the values it cannot decode, which are
    named in one warning. A value of a known writer whose body is damaged (cut short, another
    producer's bytes behind a copied header) fails the whole container: failing the batch would
    stop its partition for good, as every restart reads the same value again."""
    try:
        return avro_frame(values), offsets  # the usual case: one read of the whole batch
    except _UNDECODABLE:
        pass
    # Vetted one by one with fastavro, which raises where polars' reader may panic (and print
    # Rust's panic text on stderr, once per read, into an operator's terminal or journal).
    whole = [audit_schema.is_whole_value(value) for value in values]
    frames: list[pl.DataFrame] = []
    kept: list[int] = []
    newer = say_unknown_writers(partition, values, offsets)
    skipped = [offset for offset, ok in zip(offsets, whole, strict=True) if not ok and offset not in newer]
    vetted = [value for value, ok in zip(values, whole, strict=True) if ok]
    _bisect(vetted, [offset for offset, ok in zip(offsets, whole, strict=True) if ok], frames, kept, skipped)
    if skipped:
        skipped.sort()
        log.warning("%s: skipped %d audit values that cannot be decoded (offsets %s)", partition, len(skipped),
                    ", ".join(map(str, skipped[:10])) + (" …" if len(skipped) > 10 else ""))
    return (pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()), kept


#: What polars raises on a damaged Avro body: an error, a panic of its reader, or an OSError ("failed
#: to fill whole buffer", a body cut short a few bytes after its header; the container is in memory,
#: so no OSError here comes from a file).
_UNDECODABLE = (OSError, pl.exceptions.PolarsError, pl.exceptions.PanicException, audit_schema.SchemaError)


def _bisect(values: Sequence[bytes], offsets: Sequence[int], frames: list[pl.DataFrame], kept: list[int],
            skipped: list[int]) -> None:
    """Decode `values` (vetted already: one read) in halves down to any that polars still cannot
    read, so that no disagreement between fastavro and polars can stop a partition."""
    try:
        frames.append(avro_frame(values))
        kept.extend(offsets)
        return
    except _UNDECODABLE:
        if len(values) == 1:
            skipped.extend(offsets)
            return
    middle = len(values) // 2
    _bisect(values[:middle], offsets[:middle], frames, kept, skipped)
    _bisect(values[middle:], offsets[middle:], frames, kept, skipped)


def _one_writer(values: Sequence[bytes], prefix: bytes) -> bool:
    if isinstance(values, Payloads):
        return values.all_start_with(prefix)
    return all(map(bytes.startswith, values, repeat(prefix)))


def _mixed(values: Sequence[bytes]) -> pl.DataFrame:
    # A batch that spans a schema upgrade: each writer's values are read together, then the
    # rows are put back in log order (dedup keeps the first delivery; offsets follow the rows).
    groups: dict[bytes, list[int]] = {}
    for position, value in enumerate(values):
        groups.setdefault(value[:_PREFIX], []).append(position)
    if not groups.keys() <= _writers().keys():
        return _fallback(values)
    frames = [
        _read(prefix, [values[p] for p in positions]).with_columns(pl.Series("_position", positions))
        for prefix, positions in groups.items()
    ]
    return pl.concat(frames, how="vertical_relaxed").sort("_position").drop("_position")


def _read(prefix: bytes, values: Sequence[bytes]) -> pl.DataFrame:
    frame = read_writer_columns(prefix, values, _writers()[prefix][1])
    _check_times(frame)
    return _complete(frame)


#: The eventTimes a value can hold, in milliseconds: Python's datetime, years 1 to 9999, as fastavro
#: reads them (`is_whole_value`, `keytrail audit events`).
_FIRST_MILLIS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
_LAST_MILLIS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


def _check_times(frame: pl.DataFrame) -> None:
    """Refuse, as undecodable, values whose eventTime is past a date's range: a damaged long (a
    poisoned Kafka message) that polars reads as a row, where the frame's cast to microseconds then
    overflowed (or, past year 9999, a date did) and failed the batch at every restart; refused, the
    values are vetted one by one and it is skipped (`readable_avro`)."""
    if "eventTime" in frame.columns and not frame["eventTime"].dt.epoch("ms").is_between(
            _FIRST_MILLIS, _LAST_MILLIS).all():
        raise pl.exceptions.ComputeError("an Avro value's eventTime is past a date's range")


def say_unknown_writers(partition: str, values: Sequence[bytes], offsets: Sequence[int]) -> set[int]:
    """Say in one line which of `values` are events of an Avro schema this build does not know (a
    newer keytrail's, by its single-object header), and return their offsets: taken for damage,
    they were said to be values that cannot be decoded, and nothing said to upgrade."""
    found = {offset: bytes(value[2:_PREFIX]).hex() for value, offset in zip(values, offsets, strict=True)
             if value[:2] == _MAGIC and not known_writer(bytes(value[:_PREFIX]))}
    if found:
        listed = sorted(found)
        log.warning("%s: skipped %d audit events of an Avro schema this keytrail does not know (fingerprint %s; "
                    "offsets %s): their calls are not counted; a newer keytrail writes them, upgrade this one",
                    partition, len(found), ", ".join(sorted(set(found.values()))),
                    ", ".join(map(str, listed[:10])) + (" …" if len(listed) > 10 else ""))
    return set(found)


def known_writer(prefix: bytes) -> bool:
    """Whether `prefix` (C3 01 + fingerprint) names a schema version this build can read."""
    return prefix in _writers()


def read_writer_columns(prefix: bytes, values: Sequence[bytes], columns: Sequence[str], *,
                        from_event_log: bool = False) -> pl.DataFrame:
    """`columns` of `values`, all single-object encoded with the known writer `prefix`, read by
    polars from one in-memory Avro container (one row per value, in order). `from_event_log`:
    values read from the embedded log (as `Payloads` are), keytrail's own encoder's, each frame's
    CRC32 checked, so their lengths are not walked (~6 µs a value, a quarter of the detector's)."""
    # Values read from the embedded log come as framed there: the header field takes each
    # record's frame header too, so the block is the log's bytes as they are.
    framing, body = (FRAME_HEADER, [values.framed()]) if isinstance(values, Payloads) else (0, values)
    if not (from_event_log or isinstance(values, Payloads)):
        _refuse_lengths_past_ends(prefix, values)
    header, _ = _writers(framing)[prefix]
    size = sum(map(len, body)) + len(_ZEROS)
    count = len(values)
    container = b"".join([header, avro_long(count + 1), avro_long(size), *body, _ZEROS, _SYNC])
    frame = pl.read_avro(io.BytesIO(container), columns=["_header", *columns])
    headers = frame["_header"]
    if (frame.height != count + 1 or not headers.head(count).bin.ends_with(prefix).all()
            or headers[count] != _ZEROS[: framing + _PREFIX]):
        raise pl.exceptions.ComputeError("an Avro value's body does not end where the next value begins")
    return frame.slice(0, count).drop("_header")


def _refuse_lengths_past_ends(prefix: bytes, values: Sequence[bytes]) -> None:
    """Refuse, as undecodable, values holding a length that runs past their end (a damaged length,
    a value cut short, another producer's bytes behind a copied header): polars' reader slices by
    such a length unchecked, and past the block's end that is a Rust panic, its text on stderr
    before the PanicException, once for each batch such a value came in."""
    check = _body_checks()[prefix]
    if not all(map(check, values, repeat(_PREFIX))):
        raise pl.exceptions.ComputeError("an Avro value holds a length past its end")


@lru_cache(maxsize=1)
def _body_checks() -> dict[bytes, BodyCheck]:
    """single-object prefix → the check of its bodies' lengths, for every known writer schema."""
    checks = {}
    for path in audit_schema.writer_schema_paths():
        raw = json.loads(path.read_bytes())
        checks[_prefix(raw)] = body_check(raw)
    return checks


#: Zero bytes are a whole Avro record of any schema (a `_header` of zeros, empty strings, first
#: union branch, no items), so after the values comes a guard record of zeros, then its padding.
#: A value cut short or overlong shifts every read after it, and the shift is caught by the header
#: check (a value's `_header` ends with the writer's prefix, the guard's is zeros: not read as an
#: event); a length read in the shifted bytes that runs past the values lands in the zeros, where
#: polars' reader would panic on a slice past the block's end (printing Rust's panic text on
#: stderr) and now reports a wrong header. The guard's header differs from any value's: one value
#: holding two events (a producer's batch) was read as two rows, the guard's place taken by the
#: batch's last value, which was then dropped as if it were the guard, every row after the two
#: paired with the offset before its own.
_ZEROS = bytes(65536)


def _fallback(values: Sequence[bytes]) -> pl.DataFrame:
    return _complete(audit_schema.to_polars(values))  # decodes what it knows, names what it does not


def _complete(frame: pl.DataFrame) -> pl.DataFrame:
    missing = [pl.lit(None, pl.String).alias(c) for c in AVRO_COLUMNS if c not in frame.columns]
    return frame.with_columns(missing).select(AVRO_COLUMNS) if missing else frame.select(AVRO_COLUMNS)


def _bytes(data: bytes) -> bytes:
    return avro_long(len(data)) + data
