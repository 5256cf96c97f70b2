"""Avro values from the audit schema decode to the same frame as the CloudTrail dicts they encode."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import fastavro
import pytest
from polars.testing import assert_frame_equal

from keytrail.audit import schema
from keytrail.pipeline.frame import frame_from_avro, frame_from_records
from keytrail.pipeline.synthetic import generate_events
from keytrail.transport.frames import Payloads
from keytrail.transport.segment_log import SegmentLog

pytestmark = pytest.mark.integration

from keytrail.pipeline.decode import avro_frame  # noqa: E402

PRIMARY = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"
REPLICA = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"


def _replicate_key() -> dict[str, Any]:
    event = dict(next(iter(generate_events(1, seed=3))))
    event.update(
        eventName="ReplicateKey",
        eventID="0d7a3f0e-5b0c-4f4e-9d55-0e2b9e8f0a11",
        resources=[{"ARN": PRIMARY, "accountId": "111122223333", "type": "AWS::KMS::Key"}],
        requestParameters={"keyId": PRIMARY, "replicaRegion": "eu-west-1"},
        responseElements={
            "replicaKeyMetadata": {"Arn": REPLICA, "KeySpec": "ECC_NIST_P256", "KeyManager": "CUSTOMER"}
        },
    )
    return event


def test_avro_and_dict_paths_build_the_same_frame() -> None:
    events = [*generate_events(4000, seed=17), _replicate_key()]
    from_avro = frame_from_avro(avro_frame([schema.encode(e) for e in events]))
    assert_frame_equal(from_avro, frame_from_records(events))
    replica = from_avro.filter(from_avro["eventName"] == "ReplicateKey").row(0, named=True)
    assert (replica["replicaKeyArn"], replica["keySpec"]) == (REPLICA, "ECC_NIST_P256")
    assert from_avro.filter(from_avro["eventName"] == "ReEncrypt")["destinationKeyArn"].null_count() == 0


def _v1(event: dict[str, Any]) -> bytes:
    """`event` single-object encoded with the first schema version (before invokedBy, keyMaterialId)."""
    old = schema.load_schema(schema.SCHEMA_DIR / "history" / "cloudtrail_event.v1.avsc")
    buffer = io.BytesIO()
    buffer.write(schema.MAGIC + schema._fingerprint(old))
    record = {k: v for k, v in schema.to_avro(event).items() if k not in ("keyMaterialId", "invokedBy")}
    fastavro.schemaless_writer(buffer, old, record)
    return buffer.getvalue()


def test_a_batch_spanning_a_schema_upgrade_decodes_in_log_order() -> None:
    events = list(generate_events(40, seed=5))
    values = [_v1(e) if i % 3 == 0 else schema.encode(e) for i, e in enumerate(events)]
    offsets = range(100, 140)
    frame = frame_from_avro(avro_frame(values), offsets)
    assert frame.get_column("eventID").to_list() == [e["eventID"] for e in events]
    assert_frame_equal(frame, frame_from_records(events, offsets))


def test_values_of_an_unknown_writer_are_refused() -> None:
    with pytest.raises(schema.SchemaError):
        avro_frame([b"\xc3\x01" + b"\x00" * 8 + b"junk"])


def test_key_spec_of_new_keys_is_read_from_cloudtrails_camel_case_metadata() -> None:
    """CloudTrail writes CreateKey/ReplicateKey responseElements in camelCase; the asymmetric
    price classes depend on reading the spec from there (CustomerMasterKeySpec leaves no keySpec)."""
    arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    replica = arn.replace("us-east-1", "eu-west-1")
    create = {**_event("CreateKey", arn), "requestParameters": {"customerMasterKeySpec": "RSA_2048"},
              "responseElements": {"keyMetadata": {"arn": arn, "keySpec": "RSA_2048", "keyManager": "CUSTOMER"}}}
    replicate = {**_event("ReplicateKey", arn), "requestParameters": {"replicaRegion": "eu-west-1"},
                 "responseElements": {"replicaKeyMetadata": {"arn": replica, "keySpec": "RSA_2048",
                                                             "keyManager": "CUSTOMER"}}}
    for frame in (frame_from_records([create, replicate]),
                  frame_from_avro(avro_frame([schema.encode(e) for e in (create, replicate)]))):
        assert frame.get_column("keySpec").to_list() == ["RSA_2048", "RSA_2048"]
        assert frame.get_column("keyManager").to_list() == ["CUSTOMER", "CUSTOMER"]
        assert frame.get_column("replicaKeyArn").to_list() == [None, replica]


def _event(name: str, arn: str) -> dict:  # type: ignore[type-arg]
    return {
        "eventVersion": "1.11", "eventID": f"{name}-0000-0000-0000-000000000000", "eventTime": "2026-01-01T00:00:00Z",
        "eventSource": "kms.amazonaws.com", "eventName": name, "awsRegion": "us-east-1",
        "userIdentity": {"type": "Root", "arn": "arn:aws:iam::111122223333:root", "accountId": "111122223333"},
        "resources": [{"ARN": arn, "accountId": "111122223333", "type": "AWS::KMS::Key"}],
        "eventType": "AwsApiCall", "readOnly": False, "recipientAccountId": "111122223333",
    }


def test_payloads_read_from_the_log_decode_like_the_values_they_hold(tmp_path: Path) -> None:
    events = list(generate_events(60, seed=7))
    current = [schema.encode(e) for e in events[:40]]
    mixed = [_v1(e) if i % 3 == 0 else schema.encode(e) for i, e in enumerate(events[40:])]
    log = SegmentLog(tmp_path, writable=True)
    log.append([*current, *mixed])
    log.sync()
    _, payloads = SegmentLog(tmp_path).read_payloads(0, 60)
    assert isinstance(payloads, Payloads)
    cases = [(payloads[:40], current), (payloads[7:40], current[7:]), (payloads[30:], current[30:] + mixed)]
    for part, values in cases:  # one writer, a slice of it, a schema upgrade
        assert_frame_equal(avro_frame(part), avro_frame(values))
    assert avro_frame(payloads[:40]).get_column("eventID").to_list() == [e["eventID"] for e in events[:40]]


def test_payloads_of_an_unknown_writer_are_refused(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append([b"\xc3\x01" + b"\x00" * 8 + b"junk"])
    log.sync()
    with pytest.raises(schema.SchemaError):
        avro_frame(SegmentLog(tmp_path).read_payloads(0, 1)[1])


def test_the_key_of_a_delete_alias_record_is_its_key_not_the_alias_listed_first() -> None:
    """AWS's DeleteAlias example (ct-deletealias.html) lists the alias ARN first in `resources`:
    taken as the key, every deleted alias became a key of its own, never used, in every report."""
    arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    alias = "arn:aws:kms:us-east-1:111122223333:alias/my_alias"
    delete = {**_event("DeleteAlias", arn), "requestParameters": {"aliasName": "alias/my_alias"},
              "responseElements": {"keyId": arn},
              "resources": [{"ARN": alias, "accountId": "111122223333"}, {"ARN": arn, "accountId": "111122223333"}]}
    for frame in (frame_from_records([delete]), frame_from_avro(avro_frame([schema.encode(delete)]))):
        assert frame.get_column("keyArn").to_list() == [arn]


def test_a_denial_without_resources_is_of_the_key_its_error_message_names_from_files_and_the_event_log() -> None:
    """A denied Decrypt names no key in its request, and a record may come without `resources`:
    the detector judged it on the key its errorMessage names, usage, cost and the report's denied
    table put it under no key. A success, or another error (NotFoundException names a key that
    does not exist), stays keyless."""
    arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    message = (f"User: arn:aws:iam::111122223333:user/eve is not authorized to perform: kms:Decrypt on resource: {arn} "
               "because no resource-based policy allows the kms:Decrypt action")
    denied = {**_event("Decrypt", arn), "eventID": "denied", "errorCode": "AccessDenied", "errorMessage": message}
    named_only_in_text = {**_event("ListKeys", arn), "eventID": "listed", "errorMessage": message}
    events = [denied, named_only_in_text, {**denied, "eventID": "missing", "errorCode": "NotFoundException",
                                           "errorMessage": f"Key '{arn}' does not exist"}]
    for event in events:
        del event["resources"]
    for frame in (frame_from_records(events), frame_from_avro(avro_frame([schema.encode(e) for e in events]))):
        assert frame.get_column("keyArn").to_list() == [arn, None, None]


def test_principal_of_every_identity_shape_is_the_same_from_files_and_from_the_event_log() -> None:
    """`report --cloudtrail` (records) and `audit import` + `consume` (Avro) attribute alike: role
    sessions to the role, a session without its issuer to itself, a federated user to itself."""
    arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    session = "arn:aws:sts::111122223333:assumed-role/App/s"
    identities = [
        {"type": "FederatedUser", "arn": "arn:aws:sts::111122223333:federated-user/bob", "accountId": "111122223333",
         "sessionContext": {"sessionIssuer": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/Alice"}}},
        {"type": "AssumedRole", "arn": session, "accountId": "111122223333"},
        {"type": "AssumedRole", "arn": session, "accountId": "111122223333", "invokedBy": "s3.amazonaws.com"},
        {"type": "AssumedRole", "arn": session, "accountId": "111122223333",
         "sessionContext": {"sessionIssuer": {"type": "Role", "arn": "arn:aws:iam::111122223333:role/App"}}},
        {"accountId": "111122223333", "invokedBy": "AWS Internal"},
    ]
    events = [{**_event("Decrypt", arn), "eventID": f"id-{n}", "userIdentity": u} for n, u in enumerate(identities)]
    expected = ["arn:aws:sts::111122223333:federated-user/bob", session, session,
                "arn:aws:iam::111122223333:role/App", "AWS Internal"]
    assert frame_from_records(events).get_column("principalArn").to_list() == expected
    from_log = frame_from_avro(avro_frame([schema.encode(e) for e in events]))
    assert from_log.get_column("principalArn").to_list() == expected


def test_key_spec_of_a_create_key_record_from_before_key_spec_is_read_from_the_event_log_too() -> None:
    """CreateKey records written before KeySpec existed (2021) name it customerMasterKeySpec only:
    imported, such an RSA key was priced as a symmetric one, unlike the same file read directly."""
    arn = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    old = {**_event("CreateKey", arn), "requestParameters": {"customerMasterKeySpec": "RSA_2048"},
           "responseElements": {"keyMetadata": {"arn": arn, "customerMasterKeySpec": "RSA_2048"}}}
    request_only = {**old, "eventID": "request-only", "responseElements": None}
    for frame in (frame_from_records([old, request_only]),
                  frame_from_avro(avro_frame([schema.encode(e) for e in (old, request_only)]))):
        assert frame.get_column("keySpec").to_list() == ["RSA_2048", "RSA_2048"]


@pytest.mark.parametrize(("operation", "params", "error", "family"), [
    ("Sign", {"signingAlgorithm": "ECDSA_SHA_256"}, None, "ECC_*"),
    ("Verify", {"signingAlgorithm": "ED25519_SHA_512"}, None, "ECC_*"),
    ("Verify", {"signingAlgorithm": "RSASSA_PSS_SHA_256"}, None, "RSA_*"),
    ("Encrypt", {"encryptionAlgorithm": "RSAES_OAEP_SHA_256"}, None, "RSA_*"),
    ("Decrypt", {"encryptionAlgorithm": "SM2PKE"}, None, "SM2"),
    ("ReEncrypt", {"sourceEncryptionAlgorithm": "RSAES_OAEP_SHA_1",
                   "destinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}, None, "RSA_*"),
    ("Sign", {"signingAlgorithm": "ML_DSA_SHAKE_256"}, None, "ML_DSA_*"),
    ("DeriveSharedSecret", {"keyAgreementAlgorithm": "ECDH"}, None, "ECC_*"),
    ("Decapsulate", {}, None, "ML_KEM_*"),
    ("Decrypt", {"encryptionAlgorithm": "SYMMETRIC_DEFAULT"}, None, None),
    ("Sign", {"signingAlgorithm": "ECDSA_SHA_256"}, "AccessDeniedException", None),  # may not fit its key
    ("GenerateDataKeyPair", {"keyPairSpec": "RSA_2048"}, None, None),  # the pair's spec, not the key's
])
def test_the_key_family_a_call_reveals_is_read_alike_from_records_and_avro(
        operation: str, params: dict[str, Any], error: str | None, family: str | None) -> None:
    event = dict(next(iter(generate_events(1, seed=3))))
    event.update(eventName=operation, requestParameters={"keyId": PRIMARY, **params})
    event.pop("errorCode", None)
    event.pop("errorMessage", None)
    if error:
        event.update(errorCode=error, errorMessage="denied")
    from_records = frame_from_records([event])
    assert from_records["keyFamily"].to_list() == [family]
    assert_frame_equal(frame_from_avro(avro_frame([schema.encode(event)])), from_records)
