"""The per-call fast path writes exactly what the two-step path (CloudTrail dict → Avro) writes."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta, timezone

import pytest

from keytrail.audit.call_encoder import CallEncoder
from keytrail.audit.records import to_cloudtrail
from keytrail.audit.schema import EventCodec, SchemaError, decode, encode, flat_rows
from keytrail.kms.model import CallRecord
from tests.support.audit_records import ACCOUNT, ALICE, APP, KEY_ARN, ROOT, T0, encrypt_call

TLS = {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256", "clientProvidedHostHeader": "k"}


def _cases() -> list[CallRecord]:
    plain = encrypt_call(1)
    assert plain.context is not None
    return [
        plain,
        encrypt_call(2, APP),
        encrypt_call(3, ROOT),
        encrypt_call(4, error_code="AccessDeniedException", error_message="User: x is not authorized"),
        encrypt_call(11, event_name="Decrypt", error_code="InvalidCiphertextException", error_message=""),
        encrypt_call(5, resources=(), event_name="ListKeys", request_parameters={},
                     additional_event_data=None),
        encrypt_call(6, request_parameters={"keyId": "k", "plaintext": "c2VjcmV0",
                                            "encryptionContext": "odd"}),
        encrypt_call(7, response_elements={"keyMetadata": {"keyId": "k", "enabled": True}}, read_only=False),
        encrypt_call(8, resources=(KEY_ARN, KEY_ARN.replace("1234abcd", "5678efab"))),
        # An alias operation lists its alias ARN too, first for DeleteAlias: keyArn is the key's.
        encrypt_call(9, resources=(KEY_ARN.replace("key/1234abcd-12ab-34cd-56ef-1234567890ab", "alias/app"), KEY_ARN),
                     event_name="DeleteAlias", read_only=False),
        replace(plain, context=replace(plain.context, tls_details=TLS, user_agent="u" * 2000)),
        replace(plain, event_time=T0.replace(microsecond=987_654)),
        # The caller's copy of a cross-account call: its sharedEventID goes in otherFields.
        replace(plain, shared_event_id="5b0a8b27-1f4e-5c3a-9d1e-0a1b2c3d4e5f"),
        # The entry KMS writes for a caller's call in another Region (UpdatePrimaryRegion's).
        replace(plain, invoked_by="kms.amazonaws.com"),
        replace(encrypt_call(10, APP), invoked_by="kms.amazonaws.com"),
        replace(plain, context=replace(plain.context, tls_details=TLS), invoked_by="kms.amazonaws.com"),
        CallRecord(event_id="rot", event_name="RotateKey", event_time=T0, region="us-east-1", account=ACCOUNT,
                   context=None, request_parameters=None, resources=(KEY_ARN,),
                   service_event_details={"rotationType": "AUTOMATIC", "keyOrigin": "AWS_KMS"}),
        CallRecord(event_id="sync", event_name="SynchronizeMultiRegionKey", event_time=T0, region="us-east-1",
                   account=ACCOUNT, context=None, request_parameters=None, response_elements={"keyId": KEY_ARN},
                   resources=(KEY_ARN,), internal_request_id="req-sync"),
    ]


@pytest.mark.parametrize("call", _cases(), ids=lambda c: f"{c.event_name}-{c.event_id[-2:]}")
def test_fast_path_is_byte_identical_to_the_cloudtrail_path(call: CallRecord) -> None:
    encoder = CallEncoder()
    for _ in range(2):  # the second time through the identity and resource caches
        value = encoder.encode(call)
        assert value == encode(to_cloudtrail(call))
        assert decode(value) == to_cloudtrail(call)
    assert flat_rows([encoder.encode(call)])[0]["keyArn"] == next((a for a in call.resources if ":key/" in a), None)


def test_one_encoder_writes_each_calls_own_session_time_account_and_keys() -> None:
    encoder = CallEncoder()
    calls = [
        encrypt_call(1, APP), encrypt_call(2, APP), encrypt_call(2, APP, event_time=T0.replace(microsecond=5)),
        encrypt_call(3, ALICE), encrypt_call(4, ALICE, account="444455556666"),
        encrypt_call(5, ALICE, resources=(KEY_ARN.replace("1234abcd", "5678efab"),)),
        *(CallRecord(event_id=f"rot-{account}", event_name="RotateKey", event_time=T0, region="us-east-1",
                     account=account, context=None, request_parameters=None, resources=(KEY_ARN,))
          for account in (ACCOUNT, "444455556666")),
    ]
    for call in calls * 2:
        assert encoder.encode(call) == encode(to_cloudtrail(call)), call.event_id


def test_one_encoder_tells_apart_calls_of_one_principal_object_and_of_one_second() -> None:
    """The encoder reuses the last record's caller (same Principal object) and second: a record
    KMS writes for the caller (invokedBy), another account, a role session's next second, a clock
    set back, or an offset other than UTC's must each still get their own fields."""
    encoder = CallEncoder()
    plus_two = timezone(timedelta(hours=2))
    calls = [
        encrypt_call(1), encrypt_call(1, ROOT), replace(encrypt_call(1), invoked_by="kms.amazonaws.com"),
        encrypt_call(1), encrypt_call(1, account="444455556666"), encrypt_call(2, APP), encrypt_call(3, APP),
        encrypt_call(3, APP, event_time=T0 + timedelta(seconds=3, microseconds=999_999)),
        encrypt_call(4, APP, event_time=T0 + timedelta(seconds=4)), encrypt_call(0, APP),
        encrypt_call(5, APP, event_time=(T0 + timedelta(seconds=5, microseconds=1)).astimezone(plus_two)),
        encrypt_call(6, APP, event_time=(T0 + timedelta(seconds=5, microseconds=2)).astimezone(plus_two)),
        encrypt_call(7, replace(APP)), encrypt_call(7, APP),
    ]
    for call in calls:
        assert encoder.encode(call) == encode(to_cloudtrail(call)), call.event_id


def test_one_encoder_writes_each_calls_own_region_operation_and_key_material() -> None:
    encoder = CallEncoder()
    calls = [
        encrypt_call(1), encrypt_call(2, region="eu-west-1"), encrypt_call(3, event_name="Decrypt"),
        encrypt_call(4, additional_event_data={"keyMaterialId": "cd" * 32}),
        encrypt_call(5, additional_event_data={"keyMaterialId": None}),
    ]
    for call in calls * 2:
        assert encoder.encode(call) == encode(to_cloudtrail(call)), call.event_id


def test_long_and_non_ascii_values_are_written_with_their_byte_lengths() -> None:
    call = encrypt_call(1, request_parameters={"keyId": "k" * 5000,
                                               "encryptionContext": {"Abteilung": "Größe ✓", "n": "x" * 3000}},
                        error_code="ValidationException", error_message="é" * 2000)
    assert CallEncoder().encode(call) == encode(to_cloudtrail(call))
    assert decode(CallEncoder().encode(call))["requestParameters"]["encryptionContext"]["Abteilung"] == "Größe ✓"


def test_a_schema_with_other_fields_is_refused_rather_than_written_wrong() -> None:
    codec = EventCodec()
    codec.writer = {**codec.writer, "fields": codec.writer["fields"][:-1]}
    with pytest.raises(SchemaError, match="invokedBy"):
        CallEncoder(codec)
