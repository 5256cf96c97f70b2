"""CallRecord → CloudTrail record: fields by identity type, service events, nothing secret."""

from __future__ import annotations

import json

from keytrail.audit.records import to_cloudtrail
from keytrail.kms.model import CallRecord
from tests.support.audit_records import ACCOUNT, ALICE, APP, KEY_ARN, ROOT, T0, encrypt_call


def test_iam_user_encrypt_has_every_cloudtrail_field() -> None:
    event = to_cloudtrail(encrypt_call(1))
    assert event["eventVersion"] == "1.11"
    assert event["userIdentity"] == {
        "type": "IAMUser", "principalId": "AIDAALICE", "arn": ALICE.arn, "accountId": ACCOUNT,
        "accessKeyId": "AKIAALICE000000000001", "userName": "alice",
    }
    assert event["eventTime"] == "2026-11-28T12:00:01Z"
    assert event["eventSource"] == "kms.amazonaws.com"
    assert (event["eventName"], event["awsRegion"]) == ("Encrypt", "us-east-1")
    assert (event["sourceIPAddress"], event["userAgent"]) == ("192.0.2.7", "Boto3/1.44")
    assert event["requestParameters"]["encryptionContext"] == {"Department": "Engineering"}
    assert event["responseElements"] is None
    assert event["additionalEventData"] == {"keyMaterialId": "ab" * 32}
    assert event["requestID"] == "req-000001"
    assert event["eventID"] == "00000000-0000-4000-8000-000000000001"
    assert event["readOnly"] is True
    assert event["resources"] == [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": KEY_ARN}]
    assert event["eventType"] == "AwsApiCall"
    assert (event["managementEvent"], event["eventCategory"]) == (True, "Management")
    assert event["recipientAccountId"] == ACCOUNT
    assert "errorCode" not in event and "tlsDetails" not in event and "serviceEventDetails" not in event


def test_assumed_role_names_the_role_as_session_issuer() -> None:
    identity = to_cloudtrail(encrypt_call(2, APP))["userIdentity"]
    assert identity["type"] == "AssumedRole"
    assert identity["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/app-session"
    issuer = identity["sessionContext"]["sessionIssuer"]
    assert issuer == {"type": "Role", "principalId": "AROAAPP", "arn": f"arn:aws:iam::{ACCOUNT}:role/app",
                      "accountId": ACCOUNT, "userName": "app"}
    assert identity["sessionContext"]["attributes"]["mfaAuthenticated"] == "false"


def test_root_identity() -> None:
    identity = to_cloudtrail(encrypt_call(3, ROOT))["userIdentity"]
    assert identity == {"type": "Root", "principalId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:root",
                        "accountId": ACCOUNT, "accessKeyId": "AKIAROOT000000000001"}


def test_service_event_has_kms_internal_identity_and_no_request_id() -> None:
    record = CallRecord(
        event_id="rot-1", event_name="RotateKey", event_time=T0, region="us-east-1", account=ACCOUNT,
        context=None, request_parameters=None, resources=(KEY_ARN,),
        service_event_details={"rotationType": "AUTOMATIC", "keyOrigin": "AWS_KMS"},
    )
    event = to_cloudtrail(record)
    assert event["userIdentity"] == {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}
    assert event["eventType"] == "AwsServiceEvent"
    assert (event["sourceIPAddress"], event["userAgent"]) == ("AWS Internal", "AWS Internal")
    assert event["requestParameters"] is None and event["responseElements"] is None
    assert "requestID" not in event
    assert event["readOnly"] is False
    assert event["serviceEventDetails"]["rotationType"] == "AUTOMATIC"


def test_denied_call_carries_error_code_and_message() -> None:
    event = to_cloudtrail(encrypt_call(4, error_code="AccessDeniedException",
                                       error_message="User: x is not authorized to perform: kms:Encrypt"))
    assert event["errorCode"] == "AccessDenied"  # CloudTrail's spelling of AccessDeniedException
    assert event["errorMessage"].startswith("User: x is not authorized")
    other = to_cloudtrail(encrypt_call(5, error_code="NotFoundException", error_message="gone"))
    assert other["errorCode"] == "NotFoundException"


def test_an_error_without_a_message_has_no_error_message() -> None:
    """KMS answers InvalidCiphertextException (and KMSInvalidSignatureException, KMSInvalidMacException)
    without a message; CloudTrail then writes errorCode alone, with no empty errorMessage (the
    Decrypt record in GHSA-wqgp-vphw-hphf)."""
    for message in ("", None):
        event = to_cloudtrail(encrypt_call(8, event_name="Decrypt", error_code="InvalidCiphertextException",
                                           error_message=message))
        assert event["errorCode"] == "InvalidCiphertextException"
        assert "errorMessage" not in event


def test_tls_details_appear_under_tls() -> None:
    from dataclasses import replace

    record = encrypt_call(6)
    assert record.context is not None
    tls = {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256",
           "clientProvidedHostHeader": "kms.local"}
    context = replace(record.context, secure_transport=True, tls_details=tls)
    event = to_cloudtrail(replace(record, context=context))
    assert event["tlsDetails"] == tls


def test_nothing_secret_reaches_the_record() -> None:
    record = encrypt_call(7, request_parameters={
        "keyId": "alias/app", "plaintext": "c2VjcmV0LXBsYWludGV4dA==", "ciphertextBlob": "AQICAHg=",
        "encryptionContext": {"purpose": "test"},
    }, response_elements={"keyId": KEY_ARN, "privateKeyPlaintext": "LS0tLS1CRUdJTg=="})
    text = json.dumps(to_cloudtrail(record))
    for secret in ("c2VjcmV0LXBsYWludGV4dA==", "AQICAHg=", "LS0tLS1CRUdJTg==", "plaintext", "ciphertextBlob"):
        assert secret not in text
    assert "alias/app" in text


def test_an_entry_kms_writes_for_a_caller_comes_from_kms() -> None:
    # ReplicateKey's CreateKey in the replica's Region and UpdatePrimaryRegion's entry in the new
    # primary's are requests KMS makes there for the caller (invokedBy): CloudTrail names the
    # service, not the caller's address, program or TLS session, as in every record a service
    # makes for a principal (invokedBy config.amazonaws.com, AWS Internal: aws_documented_examples).
    from dataclasses import replace

    record = encrypt_call(12)
    assert record.context is not None
    tls = {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256", "clientProvidedHostHeader": "kms.local"}
    called = replace(record, context=replace(record.context, secure_transport=True, tls_details=tls))
    event = to_cloudtrail(replace(called, invoked_by="kms.amazonaws.com"))
    assert event["userIdentity"]["invokedBy"] == "kms.amazonaws.com"
    assert (event["sourceIPAddress"], event["userAgent"]) == ("kms.amazonaws.com", "kms.amazonaws.com")
    assert "tlsDetails" not in event
    assert to_cloudtrail(called)["tlsDetails"] == tls  # the call's own record keeps them
