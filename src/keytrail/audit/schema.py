"""The Avro form of a CloudTrail event: `schemas/cloudtrail_event.avsc`, single-object encoded.

A value is `C3 01` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema +
the Avro body (Avro specification, "Single-object encoding"). Typed columns serve analytics;
the variable parts of a CloudTrail record travel as JSON strings. The pipeline and detector may
import this module.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
import orjson
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from keytrail.transport.cloudtrail_records import utc_event_time

__all__ = [
    "KEY_ARN_IN_MESSAGE",
    "SCHEMA_DIR",
    "SCHEMA_PATH",
    "EventCodec",
    "SchemaError",
    "as_object",
    "as_text",
    "avro_long",
    "avro_optional",
    "avro_string",
    "decode",
    "decode_batch",
    "encode",
    "event_id_bytes",
    "event_time_millis",
    "flat_rows",
    "is_key_arn",
    "is_whole_value",
    "key_arn",
    "key_arn_in_message",
    "key_arns",
    "load_schema",
    "message_key",
    "message_key_bytes",
    "names_aws_managed_key",
    "principal_arn",
    "to_polars",
    "writer_schema_paths",
]

# The package's schemas/ (a link to the repository's schemas/ in a checkout, a copy in a wheel).
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
SCHEMA_PATH = SCHEMA_DIR / "cloudtrail_event.avsc"
MAGIC = b"\xc3\x01"
_HEADER = 10
# Top-level CloudTrail fields that have their own column; the JSON ones are serialized.
_JSON_FIELDS = ("userIdentity", "requestParameters", "responseElements", "additionalEventData",
                "serviceEventDetails", "resources", "tlsDetails")
_SCALAR_FIELDS = ("eventVersion", "eventID", "eventSource", "eventName", "awsRegion", "eventType",
                  "eventCategory", "managementEvent", "readOnly", "sourceIPAddress", "userAgent",
                  "errorCode", "errorMessage", "requestID", "recipientAccountId")
_KNOWN = frozenset((*_JSON_FIELDS, *_SCALAR_FIELDS, "eventTime"))
# CloudTrail's field order, used to rebuild the record dict.
_ORDER = ("eventVersion", "userIdentity", "eventTime", "eventSource", "eventName", "awsRegion",
          "sourceIPAddress", "userAgent", "errorCode", "errorMessage", "requestParameters",
          "responseElements", "additionalEventData", "requestID", "eventID", "readOnly", "resources",
          "eventType", "managementEvent", "recipientAccountId", "serviceEventDetails",
          "eventCategory", "tlsDetails")
_ALWAYS = frozenset(("requestParameters", "responseElements"))  # CloudTrail writes these as null


class SchemaError(ValueError):
    """A value that is not a single-object encoded event of a known schema."""


def load_schema(path: Path) -> dict[str, Any]:
    """Parse an .avsc file."""
    parsed = parse_schema(json.loads(path.read_bytes()))
    assert isinstance(parsed, dict)
    return parsed


def _fingerprint(schema: dict[str, Any]) -> bytes:
    digest = int(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"), 16)
    return struct.pack("<Q", digest)


def writer_schema_paths() -> list[Path]:
    """Every schema version we may meet as writer: the current file and schemas/history/."""
    return [SCHEMA_PATH, *sorted((SCHEMA_DIR / "history").glob("*.avsc"))]


@lru_cache(maxsize=1)
def _known_writers() -> dict[bytes, dict[str, Any]]:
    """The schemas of `writer_schema_paths`, by fingerprint."""
    return {_fingerprint(schema): schema for schema in map(load_schema, writer_schema_paths())}


class EventCodec:
    """Encode with the current schema; decode any known writer version into `reader_schema`."""

    def __init__(self, reader_schema: dict[str, Any] | None = None) -> None:
        self.writer = load_schema(SCHEMA_PATH)
        self.header = MAGIC + _fingerprint(self.writer)
        self.reader = reader_schema
        self.body = compile_encoder(self.writer)

    def encode(self, event: dict[str, Any]) -> bytes:
        """Single-object encoding of one CloudTrail record dict."""
        return self.header + self.body(to_avro(event))

    def decode_avro(self, data: bytes) -> dict[str, Any]:
        """The Avro record (typed columns and JSON strings) of one value."""
        writer = self._writer_of(data)
        reader: dict[str, Any] | None = self.reader
        if reader is None and data[2:_HEADER] != self.header[2:]:
            reader = self.writer  # resolve an older writer version into the current schema
        try:
            record = fastavro.schemaless_reader(io.BytesIO(data[_HEADER:]), writer, reader)
        except Exception as exc:  # a damaged body (`audit verify` met a value's OverflowError as a traceback)
            raise _damaged(exc) from None
        if not isinstance(record, dict):
            raise SchemaError("the value is not an Avro record")
        return record

    def decode(self, data: bytes) -> dict[str, Any]:
        """The CloudTrail record dict of one value."""
        return from_avro(self.decode_avro(data))

    def _writer_of(self, data: bytes) -> dict[str, Any]:
        if data[:2] != MAGIC or len(data) < _HEADER:
            raise SchemaError("not an Avro single-object encoded value")
        writer = _known_writers().get(data[2:_HEADER])
        if writer is None:
            raise SchemaError(f"unknown writer schema fingerprint {data[2:_HEADER].hex()}")
        return writer


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLI = timedelta(milliseconds=1)


def _zigzag(value: int) -> bytes:
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_LENGTHS = [_zigzag(n) for n in range(2048)]


def avro_long(value: int) -> bytes:
    """An Avro long (zigzag varint); small non-negative ones (lengths, counts) come from a table."""
    return _LENGTHS[value] if 0 <= value < 2048 else _zigzag(value)


def avro_string(text: str) -> bytes:
    """An Avro string: length, then UTF-8. The length's bytes are read from the table here, not
    through `avro_long`: a call's record writes a dozen strings, and that Python call each was
    3 % of the record's encoding."""
    data = text.encode()
    size = len(data)
    return (_LENGTHS[size] if size < 2048 else _zigzag(size)) + data


def avro_optional(text: str | None) -> bytes:
    """An Avro `["null", "string"]` union value (its length read as `avro_string` does)."""
    if text is None:
        return b"\x00"
    data = text.encode()
    size = len(data)
    return b"\x02" + (_LENGTHS[size] if size < 2048 else _zigzag(size)) + data


_FIELD_CODE = {
    "string": ["b = v.encode()", "a(_l(len(b)))", "a(b)"],
    "optional_string": ["if v is None:", "    a(b'\\x00')", "else:",
                        "    b = v.encode()", "    a(b'\\x02' + _l(len(b)))", "    a(b)"],
    "optional_boolean": ["a(b'\\x00' if v is None else (b'\\x02\\x01' if v else b'\\x02\\x00'))"],
    "timestamp_millis": ["a(_z((v - _E) // _M))"],
    "pairs": ["if v:", "    a(_l(len(v)))", "    for e in v:",
              "        k = e['key'].encode()", "        x = e['value'].encode()",
              "        a(_l(len(k)) + k + _l(len(x)) + x)", "a(b'\\x00')"],
}


def _field_kind(field: dict[str, Any]) -> str:
    kind = field["type"]
    if kind == "string":
        return "string"
    if kind in (["null", "string"], ["null", "boolean"]):
        return f"optional_{kind[1]}"
    if isinstance(kind, dict) and kind.get("logicalType") == "timestamp-millis":
        return "timestamp_millis"
    if isinstance(kind, dict) and kind.get("type") == "array":  # encryptionContext pairs
        return "pairs"
    raise SchemaError(f"no fast writer for field {field['name']}")


def compile_encoder(schema: dict[str, Any]) -> Callable[[dict[str, Any]], bytes]:
    """An Avro body writer generated for the event schema's fields: straight-line code, about
    3x faster than fastavro's generic writer (the hot path of every KMS call). Tests check it
    writes the same bytes as fastavro."""
    try:
        kinds = [(field["name"], _field_kind(field)) for field in schema["fields"]]
    except SchemaError:
        return lambda record: _fastavro_body(schema, record)
    lines = ["def body(r):", "    out = []", "    a = out.append"]
    for name, kind in kinds:
        lines.append(f"    v = r.get({name!r})")
        lines += [f"    {line}" for line in _FIELD_CODE[kind]]
    lines.append("    return b''.join(out)")
    namespace: dict[str, Any] = {"_l": avro_long, "_z": _zigzag, "_E": _EPOCH, "_M": _MILLI}
    exec(compile("\n".join(lines), f"<avro body writer {schema.get('name')}>", "exec"), namespace)
    body: Callable[[dict[str, Any]], bytes] = namespace["body"]
    return body


def _fastavro_body(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def to_avro(event: dict[str, Any]) -> dict[str, Any]:
    """The Avro record for a CloudTrail record dict (typed columns derived from it)."""
    identity = event.get("userIdentity") or {}
    record: dict[str, Any] = {name: event.get(name) for name in _SCALAR_FIELDS}
    record["eventTime"] = _parse_time(event.get("eventTime"))
    for name in _JSON_FIELDS:
        value = event.get(name)
        record[name] = None if value is None else orjson.dumps(value).decode()
    # A required column: a record without one (imported) keeps JSON null there, read back as absent
    # (`{}` was, and was exported as an identity the record never had).
    record["userIdentity"] = record["userIdentity"] or "null"
    record.update(_derived(event, identity))
    others = {name: value for name, value in event.items() if name not in _KNOWN}
    record["otherFields"] = orjson.dumps(others).decode() if others else None
    for name in ("eventVersion", "eventID", "eventSource", "eventName"):
        record[name] = str(record[name] or "")
    return record


def _derived(event: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """The typed columns: views of the record for analytics. An imported record may hold anything
    anywhere; where a part is not of the shape CloudTrail writes, its column is null (the record
    itself keeps the part as it came)."""
    context = as_object(as_object(event.get("requestParameters")).get("encryptionContext"))
    return {
        "keyArn": key_arn(event.get("resources")),
        "principalArn": principal_arn(identity),
        "accountId": as_text(identity.get("accountId")) or as_text(event.get("recipientAccountId")),
        "identityType": as_text(identity.get("type")),
        "accessKeyId": as_text(identity.get("accessKeyId")),
        "encryptionContext": [{"key": str(k), "value": str(v)} for k, v in context.items()],
        "keyMaterialId": as_text(as_object(event.get("additionalEventData")).get("keyMaterialId")),
        "invokedBy": as_text(identity.get("invokedBy")),
    }


# A CloudTrail record from elsewhere may hold anything anywhere: readers of its parts take a part
# of another kind than CloudTrail writes as missing, never as an error.
def key_arn(resources: Any) -> str | None:
    """The first KMS key ARN among a record's `resources`: CloudTrail lists the alias before the
    key for DeleteAlias (both typed AWS::KMS::Key), so the first entry is not always a key."""
    arns = key_arns(resources)
    return arns[0] if arns else None


def key_arns(resources: Any) -> tuple[str, ...]:
    """Every KMS key ARN among a record's `resources`, in order (ReEncrypt: source, destination),
    aliases left out."""
    if not isinstance(resources, list):
        return ()
    arns = (as_text(r.get("ARN")) for r in resources if isinstance(r, Mapping))
    return tuple(arn for arn in arns if arn and is_key_arn(arn))


#: A key's ARN inside an errorMessage (`… on resource: arn:aws:kms:us-east-1:111122223333:key/<id> because
#: …`, `<ARN> is disabled.`): the one place a denied Decrypt, whose request names no key, may name it.
#: Written for Python's re and polars' (Rust) regex alike: ASCII classes only.
KEY_ARN_IN_MESSAGE = r"arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+"
_KEY_ARN_IN_MESSAGE = re.compile(KEY_ARN_IN_MESSAGE)


def key_arn_in_message(message: Any) -> str | None:
    """The first key ARN an errorMessage names, None when it names none."""
    found = _KEY_ARN_IN_MESSAGE.search(message) if isinstance(message, str) else None
    return found.group() if found else None


def is_key_arn(arn: str) -> bool:
    """Whether an ARN names a KMS key (`…:key/<id>`), not an alias (`…:alias/<name>`)."""
    return arn.split(":", 5)[-1].startswith("key/")


def names_aws_managed_key(key_id: Any) -> bool:
    """Whether a call's `keyId` is an AWS managed key's alias (`alias/aws/ssm`, or its alias ARN):
    the prefix is reserved for them (AWS KMS concepts, "Aliases"), so the key it resolved to costs
    nothing to keep and no one can delete it, though its CreateKey lies before the trail."""
    return isinstance(key_id, str) and key_id.split(":", 5)[-1].startswith("alias/aws/")


def principal_arn(identity: Mapping[str, Any]) -> str | None:
    """The caller of a userIdentity (docs/metrics.md): a role session is its role
    (`sessionContext.sessionIssuer.arn`), one without a sessionIssuer (odd, but seen) its session
    ARN; any other identity itself, a federated user too (its sessionIssuer is the IAM user that
    made the federation token, not the caller)."""
    if identity.get("type") == "AssumedRole":
        issuer = as_text(as_object(as_object(identity.get("sessionContext")).get("sessionIssuer")).get("arn"))
        if issuer:
            return issuer
    return as_text(identity.get("arn"))


def as_object(value: Any) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def as_text(value: Any) -> str | None:
    """`value` if it is a string, else None."""
    return value if isinstance(value, str) else None


def from_avro(record: dict[str, Any]) -> dict[str, Any]:
    """The CloudTrail record dict for an Avro record (inverse of `to_avro`)."""
    event: dict[str, Any] = {}
    for name in _ORDER:
        if name == "eventTime":
            event[name] = _format_time(record["eventTime"])
            continue
        value = record.get(name)
        if name in _JSON_FIELDS and value is not None:
            value = orjson.loads(value)
        elif name == "eventVersion" and value == "":  # the required column's stand-in for none (imported)
            continue
        if value is not None or name in _ALWAYS:
            event[name] = value
    if record.get("otherFields"):
        event.update(orjson.loads(record["otherFields"]))
    return event


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        raise SchemaError("eventTime is missing")
    try:  # as every reader of CloudTrail files reads it (transport.cloudtrail_records)
        return utc_event_time(value)
    except ValueError as exc:
        raise SchemaError(str(exc)) from None


def _format_time(moment: datetime) -> str:
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # Formatted field by field: a third of strftime's time, and the year always in four digits
    # (strftime's %Y writes year 1 as "1" on glibc, no ISO 8601 time).
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
            f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")
    return text + (f".{moment.microsecond // 1000:03d}Z" if moment.microsecond else "Z")


# --- fast paths ------------------------------------------------------------------------------------

def message_key(data: bytes) -> str | None:
    """keyArn, else recipientAccountId, read from the first two fields without decoding the rest."""
    key = message_key_bytes(data)
    return None if key is None else key.decode()


def message_key_bytes(data: bytes) -> bytes | None:
    """`message_key` as the UTF-8 bytes a Kafka message carries (the shipper's per-record path:
    no decode and re-encode)."""
    position = _HEADER
    for _ in range(2):  # each an optional string: the union branch is one byte, 0x02 for the string
        if data[position] == 2:
            length, position = _read_long(data, position + 1)
            return data[position:position + length]
        position += 1
    return None


def event_id_bytes(data: bytes) -> bytes:
    """The UTF-8 eventID of a value, read from its fourth field without decoding the rest (an
    import checks every stored record's); SchemaError when `data` is no readable value."""
    if not _leads_with(data, _EVENT_ID_LAYOUT):  # a writer laid out otherwise: decoded whole
        return str(_codec().decode_avro(data)["eventID"]).encode()
    start, end = _event_id_span(data)
    return data[start:end]


def event_time_millis(data: bytes) -> int:
    """The eventTime of a value in milliseconds since the epoch, read from its fifth field without
    decoding the rest (`audit events` orders a log by it); SchemaError when `data` is no readable value."""
    if not _leads_with(data, _EVENT_TIME_LAYOUT):
        return _millis(_codec().decode_avro(data)["eventTime"])
    _, position = _event_id_span(data)
    try:
        millis, _ = _read_long(data, position)
    except IndexError:
        raise SchemaError("a damaged event body of a known schema (cut short)") from None
    if not _EARLIEST_MILLIS <= millis <= _LATEST_MILLIS:  # as decoding it whole would refuse it
        raise SchemaError(f"a damaged event body of a known schema (eventTime {millis} ms is past a date's range)")
    return millis


def _millis(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


# The times a record can hold: those of Python's datetime, years 1 to 9999.
_EARLIEST_MILLIS, _LATEST_MILLIS = _millis(datetime.min.replace(tzinfo=UTC)), _millis(datetime.max.replace(tzinfo=UTC))


def _leads_with(data: bytes, layout: _Layout) -> bool:
    """Whether `data`'s writer schema starts with `layout`'s fields; SchemaError for a value of no
    known writer schema."""
    fingerprint = data[2:_HEADER]
    if data[:2] != MAGIC or fingerprint not in _known_writers():
        raise SchemaError("not a single-object encoded event of a known schema")
    return _writer_leads_with(fingerprint, layout)


def _event_id_span(data: bytes) -> tuple[int, int]:
    """Where the eventID of a value laid out as _EVENT_ID_LAYOUT starts and ends."""
    try:
        position = _HEADER
        for _ in range(2):  # keyArn, recipientAccountId: optional strings (0x02: the string branch)
            position += 1
            if data[position - 1] == 2:
                position = _past_string(data, position)
        position = _past_string(data, position)  # eventVersion
        length = data[position]  # eventID: its length, one byte for up to 63 bytes (a GUID's 36)
        position += 1
        if length > 0x7F:
            length, position = _read_long(data, position - 1)
        else:
            length >>= 1  # zigzag: never odd for a length
    except IndexError:
        raise SchemaError("a damaged event body of a known schema (cut short)") from None
    if length < 0 or position + length > len(data):
        raise SchemaError("a damaged event body of a known schema (a length past its end)")
    return position, position + length


def _past_string(data: bytes, position: int) -> int:
    """Where the Avro string at `position` ends."""
    length = data[position]
    if length < 0x80:  # the usual case: one byte
        return position + 1 + (length >> 1)
    length, position = _read_long(data, position)
    return position + length


# The leading fields the partial readers skip or read, each as (name, its type as canonical JSON).
_Layout = tuple[tuple[str, str], ...]
_OPTIONAL_STRING = '["null","string"]'
_EVENT_ID_LAYOUT: _Layout = (("keyArn", _OPTIONAL_STRING), ("recipientAccountId", _OPTIONAL_STRING),
                             ("eventVersion", '"string"'), ("eventID", '"string"'))
_EVENT_TIME_LAYOUT: _Layout = (*_EVENT_ID_LAYOUT, ("eventTime", '{"logicalType":"timestamp-millis","type":"long"}'))


@lru_cache(maxsize=16)
def _writer_leads_with(fingerprint_bytes: bytes, layout: _Layout) -> bool:
    """Whether the writer of this fingerprint starts with the fields of `layout` (every version so
    far: the evolution rules only add fields, with keyArn and recipientAccountId first)."""
    fields = _known_writers()[fingerprint_bytes]["fields"][:len(layout)]
    return tuple((f["name"], json.dumps(f["type"], sort_keys=True, separators=(",", ":"))) for f in fields) == layout


def is_whole_value(data: bytes) -> bool:
    """Whether `data` is exactly one single-object encoded event of a known writer schema: its body
    decodes and ends where `data` ends. fastavro, one value per call (~30 µs): for vetting the few
    values of a batch the columnar reader could not read, never a whole stream."""
    writer = _known_writers().get(data[2:_HEADER]) if data[:2] == MAGIC else None
    if writer is None:
        return False
    body = io.BytesIO(data)
    body.seek(_HEADER)
    try:
        fastavro.schemaless_reader(body, writer, None)
    except Exception:  # whatever a damaged body makes the decoder raise: EOFError, UnicodeDecodeError, …
        return False
    return body.tell() == len(data)


def _read_long(data: bytes, position: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7


def _container(writer: dict[str, Any], bodies: Sequence[bytes]) -> bytes:
    """An in-memory Avro object container file holding `bodies` in one block."""
    sync = b"keytrail-sync-16"
    out = io.BytesIO()
    out.write(b"Obj\x01")
    meta = {"avro.schema": json.dumps(writer).encode(), "avro.codec": b"null"}
    _write_long(out, len(meta))
    for key, value in meta.items():
        _write_bytes(out, key.encode())
        _write_bytes(out, value)
    _write_long(out, 0)
    out.write(sync)
    block = b"".join(bodies)
    _write_long(out, len(bodies))
    _write_long(out, len(block))
    out.write(block)
    out.write(sync)
    return out.getvalue()


def _write_long(out: io.BytesIO, value: int) -> None:
    out.write(avro_long(value))


def _write_bytes(out: io.BytesIO, value: bytes) -> None:
    _write_long(out, len(value))
    out.write(value)


def _containers(values: Iterable[bytes]) -> list[bytes]:
    """One in-memory container per writer schema version met in `values`."""
    groups: dict[bytes, list[bytes]] = {}
    writers = _known_writers()
    for value in values:
        if value[:2] != MAGIC or value[2:_HEADER] not in writers:
            raise SchemaError("not a single-object encoded event of a known schema")
        groups.setdefault(value[2:_HEADER], []).append(value[_HEADER:])
    return [_container(writers[fp], bodies) for fp, bodies in groups.items()]


def flat_rows(values: Sequence[bytes], reader_schema: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Avro records (typed columns, JSON strings) of many values, in order; the writer schema is
    looked up once per fingerprint (measured ~60k records/s, vs ~40k through an OCF reader)."""
    writers = _known_writers()
    current = _codec().header[2:]
    target = reader_schema if reader_schema is not None else _codec().writer
    read = fastavro.schemaless_reader
    rows: list[dict[str, Any]] = []
    for value in values:
        fp = value[2:_HEADER]
        writer = writers.get(fp) if value[:2] == MAGIC else None
        if writer is None:
            raise SchemaError("not a single-object encoded event of a known schema")
        # Older writers are resolved into the current schema (new fields get their defaults).
        reader = None if fp == current and reader_schema is None else target
        try:
            rows.append(read(io.BytesIO(value[_HEADER:]), writer, reader))  # type: ignore[arg-type]
        except Exception as exc:
            raise _damaged(exc) from None
    return rows


def _damaged(exc: Exception) -> SchemaError:
    """A value whose body fastavro could not read (EOFError, UnicodeDecodeError, IndexError,
    OverflowError, … as it meets the damage) as the one kind of error callers name in one line: a
    record edited with its checksum fixed reached `audit events` as a traceback."""
    return SchemaError(f"a damaged event body of a known schema ({type(exc).__name__}: {exc})")


def decode_batch(values: Sequence[bytes]) -> list[dict[str, Any]]:
    """CloudTrail record dicts of many values, in order (the fast path for consumers)."""
    return [from_avro(row) for row in flat_rows(values)]


def to_polars(values: Sequence[bytes]) -> Any:
    """A polars DataFrame of the Avro records (polars reads the container at ~110k rows/s).

    Typed columns: eventTime is Datetime(ms, UTC), encryptionContext is List(Struct{key,value}).
    """
    import polars as pl

    frames = [pl.read_avro(io.BytesIO(c)) for c in _containers(values)]
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="diagonal_relaxed")


_default: EventCodec | None = None


def _codec() -> EventCodec:
    global _default
    if _default is None:
        _default = EventCodec()
    return _default


def encode(event: dict[str, Any]) -> bytes:
    """Single-object encoding of a CloudTrail record dict with the current schema."""
    return _codec().encode(event)


def decode(data: bytes) -> dict[str, Any]:
    """The CloudTrail record dict of a single-object encoded value (any known writer version)."""
    return _codec().decode(data)
