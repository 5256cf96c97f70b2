"""The Avro schema and single-object encoding: round trips, old readers, fast paths."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import tomllib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import fastavro
import polars as pl
import pytest
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

import keytrail
from keytrail.audit.records import to_cloudtrail
from keytrail.audit.schema import (
    SCHEMA_DIR,
    SCHEMA_PATH,
    EventCodec,
    SchemaError,
    decode,
    decode_batch,
    encode,
    event_id_bytes,
    event_time_millis,
    flat_rows,
    load_schema,
    message_key,
    message_key_bytes,
    to_polars,
)
from keytrail.detect.avro_events import avro_rows, events_of
from tests.support.audit_records import ACCOUNT, APP, KEY_ARN, encrypt_call

EXAMPLES = Path(__file__).parent / "data" / "aws_documented_examples.json"


def _records() -> list[dict]:
    return json.loads(EXAMPLES.read_text())["Records"]


def test_every_field_of_every_schema_version_is_documented() -> None:
    for path in [SCHEMA_PATH, *(SCHEMA_DIR / "history").glob("*.avsc")]:
        schema = json.loads(path.read_text())
        assert schema["doc"]
        undocumented = [f["name"] for f in schema["fields"] if not f.get("doc")]
        assert undocumented == [], path


def test_value_is_single_object_encoded_with_the_schema_fingerprint() -> None:
    value = encode(to_cloudtrail(encrypt_call(1)))
    schema = json.loads(SCHEMA_PATH.read_text())
    expected = int(fingerprint(to_parsing_canonical_form(parse_schema(schema)), "CRC-64-AVRO"), 16)
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == struct.pack("<Q", expected)
    body = fastavro.schemaless_reader(io.BytesIO(value[10:]), parse_schema(schema), None)
    assert body["keyArn"] == KEY_ARN and body["eventName"] == "Encrypt"


def test_round_trip_of_our_records() -> None:
    denied = encrypt_call(2, APP, error_code="AccessDeniedException", error_message="denied")
    for event in (to_cloudtrail(encrypt_call(1)), to_cloudtrail(denied)):
        assert decode(encode(event)) == event


def test_round_trip_of_aws_documented_records_keeps_unknown_fields() -> None:
    for event in _records():
        decoded = decode(encode(event))
        assert decoded == {k: v for k, v in event.items()}, event["eventID"]


def test_a_record_without_event_version_or_user_identity_reads_back_without_them() -> None:
    """Both are required columns: a record that had neither (imported) read back with
    `"eventVersion": ""` and `"userIdentity": {}`, values it never held. A null or empty one is
    read back as absent, as any typed field's null is."""
    record = {k: v for k, v in _records()[0].items() if k not in ("eventVersion", "userIdentity")}
    assert decode(encode(record)) == record
    assert decode(encode({**record, "eventVersion": "", "userIdentity": None})) == record
    assert decode(encode({**record, "userIdentity": {}})) == {**record, "userIdentity": {}}  # an empty one is kept
    events = events_of(asyncio.run(avro_rows([encode(record)])))  # the detector reads it as a call by no one
    assert [(e.event_id, e.principal_arn) for e in events] == [(record["eventID"], None)]


def test_typed_columns_attribute_role_sessions_to_the_role() -> None:
    row = flat_rows([encode(to_cloudtrail(encrypt_call(3, APP)))])[0]
    assert row["principalArn"] == f"arn:aws:iam::{ACCOUNT}:role/app"
    assert row["accountId"] == ACCOUNT and row["identityType"] == "AssumedRole"
    assert row["encryptionContext"] == [{"key": "Department", "value": "Engineering"}]
    assert row["keyMaterialId"] == "ab" * 32
    assert row["eventTime"].year == 2026


def test_reader_on_previous_schema_version_reads_a_new_record() -> None:
    old = load_schema(SCHEMA_DIR / "history" / "cloudtrail_event.v1.avsc")
    value = encode(to_cloudtrail(encrypt_call(4, APP)))
    old_reader = EventCodec(reader_schema=old)
    row = old_reader.decode_avro(value)
    assert "keyMaterialId" not in row  # added in v2: an old reader does not see it
    assert row["principalArn"] == f"arn:aws:iam::{ACCOUNT}:role/app"
    assert old_reader.decode(value) == to_cloudtrail(encrypt_call(4, APP))


def test_new_reader_reads_a_record_written_with_the_previous_version() -> None:
    old = load_schema(SCHEMA_DIR / "history" / "cloudtrail_event.v1.avsc")
    event = to_cloudtrail(encrypt_call(5))
    from keytrail.audit.schema import MAGIC, _fingerprint, to_avro

    buffer = io.BytesIO()
    buffer.write(MAGIC + _fingerprint(old))
    fastavro.schemaless_writer(buffer, old, {k: v for k, v in to_avro(event).items()
                                             if k not in ("keyMaterialId", "invokedBy")})
    row = flat_rows([buffer.getvalue()])[0]
    assert row["keyMaterialId"] is None  # default of the field v2 added
    assert decode(buffer.getvalue()) == event


def test_message_key_is_key_arn_or_account_for_keyless_calls() -> None:
    assert message_key(encode(to_cloudtrail(encrypt_call(6)))) == KEY_ARN
    keyless = to_cloudtrail(encrypt_call(7, resources=(), event_name="ListKeys"))
    assert message_key(encode(keyless)) == ACCOUNT


def test_message_key_bytes_are_what_kafka_sends_as_the_key() -> None:
    keyless = to_cloudtrail(encrypt_call(7, resources=(), event_name="ListKeys"))
    assert message_key_bytes(encode(to_cloudtrail(encrypt_call(6)))) == KEY_ARN.encode()
    assert message_key_bytes(encode(keyless)) == ACCOUNT.encode()
    assert message_key_bytes(encode({**keyless, "recipientAccountId": None})) is None


def test_batch_decode_and_polars_frame_agree_with_single_decode() -> None:
    values = [encode(e) for e in _records()] + [encode(to_cloudtrail(encrypt_call(i))) for i in range(5)]
    assert decode_batch(values) == [decode(v) for v in values]
    frame = to_polars(values)
    assert frame.height == len(values)
    assert frame.schema["eventTime"] == pl.Datetime("ms", "UTC")
    assert frame.schema["encryptionContext"] == pl.List(pl.Struct({"key": pl.String, "value": pl.String}))


def test_fast_encoder_writes_the_same_bytes_as_fastavro() -> None:
    from keytrail.audit.schema import _codec, _fastavro_body, to_avro

    writer = _codec().writer
    events = [*_records(), to_cloudtrail(encrypt_call(8, APP)), to_cloudtrail(encrypt_call(9))]
    for event in events:
        assert encode(event)[10:] == _fastavro_body(writer, to_avro(event)), event["eventID"]


def test_the_package_ships_every_schema_file() -> None:
    """A wheel carries schemas/ as package data (src/keytrail/schemas links to it), so an
    installed keytrail reads and writes the same schemas as a checkout."""
    package = Path(keytrail.__file__).parent
    repository_schemas = Path(__file__).parents[3] / "schemas"
    assert SCHEMA_DIR.resolve() == (package / "schemas").resolve() == repository_schemas.resolve()
    pyproject = tomllib.loads((repository_schemas.parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["keytrail"]
    shipped = {path.resolve() for pattern in globs for path in package.glob(pattern)}
    schema_files = {path.resolve() for path in repository_schemas.rglob("*.avsc")}
    assert schema_files and schema_files <= shipped


def test_event_id_and_time_are_read_from_every_writer_version_without_decoding() -> None:
    from keytrail.audit.schema import MAGIC, _fingerprint, to_avro

    old = load_schema(SCHEMA_DIR / "history" / "cloudtrail_event.v1.avsc")
    keyless = to_cloudtrail(encrypt_call(7, resources=(), event_name="ListKeys"))  # keyArn null
    old_value = io.BytesIO()
    old_value.write(MAGIC + _fingerprint(old))
    fastavro.schemaless_writer(old_value, old, {k: v for k, v in to_avro(keyless).items()
                                                if k not in ("keyMaterialId", "invokedBy")})
    odd = {**to_cloudtrail(encrypt_call(8)), "eventID": "é-not-a-guid", "eventVersion": "1." + "1" * 200}
    for event, value in ((keyless, old_value.getvalue()), (keyless, encode(keyless)), (odd, encode(odd))):
        assert event_id_bytes(value) == event["eventID"].encode()
        assert event_time_millis(value) == datetime.fromisoformat(event["eventTime"]).timestamp() * 1000


@pytest.mark.parametrize("read", [event_id_bytes, event_time_millis])
def test_a_partial_read_of_a_damaged_value_is_a_schema_error_not_a_crash(read: Callable[[bytes], object]) -> None:
    value = encode(to_cloudtrail(encrypt_call(9)))
    for damaged in (value[:14], value[:10] + b"\x02\xff\xff\xff\x0f", b"\xc3\x01unknown!", b""):
        with pytest.raises(SchemaError):
            read(damaged)
    from keytrail.audit.schema import _event_id_span

    _, event_time_at = _event_id_span(value)
    with pytest.raises(SchemaError):  # cut inside eventTime itself (6 bytes for a time of this century)
        event_time_millis(value[:event_time_at + 3])
