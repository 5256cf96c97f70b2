"""Events read straight from Avro audit values equal the events of the decoded CloudTrail records."""

from __future__ import annotations

import io
import json
import logging
import struct
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from tests.unit.detect.records import T0, denied, event, key_arn, user
from tests.unit.detect.scenario import mixed_scenario

from keytrail.audit.schema import SCHEMA_DIR, SCHEMA_PATH, decode, encode, load_schema, to_avro
from keytrail.detect.avro_events import avro_events
from keytrail.detect.events import KmsEvent, read_kms_event
from keytrail.pipeline.synthetic import generate_events


async def _read(values: list[bytes], chunk: int = 97) -> list[KmsEvent]:
    return [e for events in [chunk async for chunk in avro_events(values, chunk=chunk)] for e in events]


def _expected(values: list[bytes]) -> list[KmsEvent]:
    return [e for e in (read_kms_event(decode(value)) for value in values) if e is not None]


def _v1_value(record: dict[str, Any]) -> bytes:
    """`record` written with the first schema version (before keyMaterialId and invokedBy)."""
    old = load_schema(SCHEMA_DIR / "history" / "cloudtrail_event.v1.avsc")
    prefix = b"\xc3\x01" + struct.pack("<Q", int(fingerprint(to_parsing_canonical_form(old), "CRC-64-AVRO"), 16))
    body = io.BytesIO()
    fields = {name: value for name, value in to_avro(record).items() if name not in ("keyMaterialId", "invokedBy")}
    fastavro.schemaless_writer(body, old, fields)
    return prefix + body.getvalue()


async def test_events_equal_those_of_the_decoded_records_for_every_rule_and_identity() -> None:
    records = mixed_scenario() + list(generate_events(2000))
    values = [encode(record) for record in records]
    events = await _read(values)
    assert len(events) == len(records)
    assert events == _expected(values)


async def test_a_cross_account_calls_shared_event_id_is_read_from_other_fields() -> None:
    call = {**event("Decrypt", T0, key_arn(1), user("app")), "sharedEventID": "one-call", "vpcEndpointId": "v"}
    [read] = await _read([encode(call)])
    assert read.shared_event_id == "one-call" and [read] == _expected([encode(call)])


async def test_mixed_schema_versions_keep_their_order() -> None:
    records = mixed_scenario()[:30]
    values = [_v1_value(r) if i % 7 < 3 else encode(r) for i, r in enumerate(records)]
    assert await _read(values, chunk=10) == _expected(values)


async def test_other_services_are_skipped_and_odd_resources_read_like_the_dict_reader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = event("Decrypt", T0, key_arn(1), user("app"))
    s3 = {**good, "eventSource": "s3.amazonaws.com", "eventID": "s3-event"}
    # A resources entry that is no object is passed over, as the pipeline passes it over (the
    # key then comes from requestParameters.keyId), not the whole record.
    odd = {**good, "resources": ["not-an-object"], "eventID": "odd-event"}
    values = [encode(r) for r in (s3, good, odd)]
    with caplog.at_level(logging.WARNING):
        events = await _read(values)
    assert [e.event_id for e in events] == [good["eventID"], "odd-event"]
    assert events == _expected(values)
    assert events[1].key_arns == (key_arn(1),)
    assert "s3-event" not in caplog.text


async def test_values_of_an_unknown_writer_schema_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = encode(event("Encrypt", T0, key_arn(2), user("app")))
    stranger = b"\xc3\x01" + b"\x00" * 8 + json.dumps({"hello": "world"}).encode()
    with caplog.at_level(logging.WARNING):
        events = await _read([stranger, good])
    assert events == _expected([good])
    assert "unknown writer schema" in caplog.text


async def test_request_parameters_that_are_not_json_read_as_empty_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = event("ScheduleKeyDeletion", T0, key_arn(3), user("admin"), params={"pendingWindowInDays": 7})
    good = encode(record)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, load_schema(SCHEMA_PATH), {**to_avro(record), "requestParameters": "{not json"})
    with caplog.at_level(logging.WARNING):
        [read] = await _read([good[:10] + body.getvalue()])
        assert dict(read.request_parameters) == {}
    [expected] = _expected([good])
    assert read._replace(request_parameters={}) == expected._replace(request_parameters={})
    assert "unreadable JSON object" in caplog.text and "{not json" not in caplog.text


async def test_service_event_details_are_read_for_the_rules() -> None:
    """DeleteExpiredKeyMaterial names the material only in serviceEventDetails."""
    expired = {**event("DeleteExpiredKeyMaterial", T0, key_arn(1), {"accountId": "111122223333"}),
               "eventType": "AwsServiceEvent", "serviceEventDetails": {"keyId": "k", "keyMaterialId": "m" * 64}}
    [read] = await _read([encode(expired)])
    assert read.service_event_details == {"keyId": "k", "keyMaterialId": "m" * 64}
    assert [read] == _expected([encode(expired)])


def _through_an_endpoint(record: dict[str, Any]) -> dict[str, Any]:
    """The network activity event CloudTrail writes beside a call made through a VPC endpoint: the
    call's name and key, eventType AwsVpceEvent, the call's sharedEventID."""
    return {**record, "eventID": f"vpce-{record['eventID']}", "eventType": "AwsVpceEvent",
            "eventCategory": "NetworkActivity", "sharedEventID": f"shared-{record['eventID']}"}


async def test_network_activity_events_are_no_calls_in_either_reader() -> None:
    """They repeat a call that has its own record (or one the endpoint refused): the detector judged
    them as calls, and by their sharedEventID took the call's own record for a duplicate of one."""
    denial = denied("Decrypt", T0, key_arn(1), user("mallory"))
    call = {**denial, "sharedEventID": f"shared-{denial['eventID']}"}
    values = [encode(_through_an_endpoint(denial)), encode(call)]
    [read] = await _read(values)
    assert read.event_id == denial["eventID"] and [read] == _expected(values)


async def test_a_caller_without_an_account_is_of_the_recipient_account_in_either_reader() -> None:
    """A SAMLUser's record names no accountId: usage and reports attribute the call to
    recipientAccountId (docs/metrics.md), the detector's alarm said "account unknown"."""
    saml = {"type": "SAMLUser", "principalId": "idp:alice", "userName": "alice"}
    values = [encode({**denied("Decrypt", T0, key_arn(1), saml), "recipientAccountId": "444455556666"})]
    [read] = await _read(values)
    assert read.account_id == "444455556666" and [read] == _expected(values)
