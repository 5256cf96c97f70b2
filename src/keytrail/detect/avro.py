"""The Avro form of an alarm (schemas/alarm.avsc) and its single-object encoding for Kafka.

The schema is kept here as data so an installed package needs no repository files; a test checks
that schemas/alarm.avsc says the same.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro

from keytrail.detect.alarms import Alarm, format_time

__all__ = ["ALARM_SCHEMA", "decode_alarm", "encode_alarm"]

_NULLABLE_STRING: list[Any] = ["null", "string"]
_TIME = {"type": "long", "logicalType": "timestamp-millis"}

ALARM_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Alarm",
    "namespace": "io.keytrail.detect",
    "doc": "One keytrail detector alarm; the JSON form uses the same field names.",
    "fields": [
        {
            "name": "alarmId",
            "type": "string",
            "doc": "Stable id: one alarm per rule x key x principal x window.",
        },
        {"name": "rule", "type": "string", "doc": "Rule id, e.g. unauthorized-decrypt."},
        {
            "name": "severity",
            "type": {"type": "enum", "name": "Severity", "symbols": ["LOW", "MEDIUM", "HIGH", "CRITICAL"]},
        },
        {"name": "keyArn", "type": _NULLABLE_STRING, "default": None},
        {
            "name": "principalArn",
            "type": _NULLABLE_STRING,
            "default": None,
            "doc": "Caller; role sessions are attributed to the role ARN.",
        },
        {"name": "accountId", "type": _NULLABLE_STRING, "default": None},
        {"name": "region", "type": _NULLABLE_STRING, "default": None},
        {"name": "firstSeen", "type": _TIME},
        {"name": "lastSeen", "type": _TIME},
        {"name": "count", "type": "long", "doc": "Matching events folded into this alarm."},
        {"name": "summary", "type": "string"},
        {
            "name": "eventIds",
            "type": {"type": "array", "items": "string"},
            "doc": "CloudTrail eventIDs of the first matching events (at most 20).",
        },
        {"name": "recommendation", "type": "string"},
        {
            "name": "details",
            "type": {"type": "map", "values": "string"},
            "default": {},
            "doc": "Rule-specific facts (deny reason, baseline, findings...).",
        },
    ],
}

_PARSED = fastavro.parse_schema(ALARM_SCHEMA)
_FINGERPRINT = bytes.fromhex(
    fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(_PARSED), "CRC-64-AVRO")
)
# fastavro already gives the fingerprint bytes little-endian, as single-object encoding wants them.
_HEADER = b"\xc3\x01" + _FINGERPRINT


def encode_alarm(alarm: Alarm) -> bytes:
    """Avro single-object encoding: `C3 01`, the schema's CRC-64-AVRO fingerprint (LE), the body."""
    record = alarm.to_json() | {"firstSeen": alarm.first_seen, "lastSeen": alarm.last_seen}
    buffer = io.BytesIO()
    buffer.write(_HEADER)
    fastavro.schemaless_writer(buffer, _PARSED, record)
    return buffer.getvalue()


def decode_alarm(data: bytes) -> Alarm:
    """Decode what `encode_alarm` wrote; refuses another schema's fingerprint."""
    if data[:10] != _HEADER:
        raise ValueError("not an alarm in Avro single-object encoding (unknown header or schema)")
    record: Any = fastavro.schemaless_reader(io.BytesIO(data[10:]), _PARSED, _PARSED)
    for name in ("firstSeen", "lastSeen"):
        record[name] = format_time(record[name])
    return Alarm.from_json(record)
