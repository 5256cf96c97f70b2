"""Request decoding and validation from botocore's KMS model, with AWS's messages."""

from __future__ import annotations

from datetime import datetime

import pytest

from keytrail.api.protocol import decode_request, encode_value
from keytrail.kms.errors import SerializationException, ValidationException


def test_blobs_are_decoded_from_base64() -> None:
    params = decode_request("Encrypt", {"KeyId": "k", "Plaintext": "aGk="})
    assert params == {"KeyId": "k", "Plaintext": b"hi"}


def test_missing_required_member_is_named() -> None:
    with pytest.raises(ValidationException) as info:
        decode_request("DescribeKey", {})
    assert info.value.message == ("1 validation error detected: Value null at 'keyId' failed to satisfy "
                                  "constraint: Member must not be null")


def test_several_errors_are_counted() -> None:
    with pytest.raises(ValidationException) as info:
        decode_request("CreateKey", {"KeySpec": "X", "KeyUsage": "Y"})
    assert info.value.message.startswith("2 validation errors detected: Value 'X' at 'keySpec'")


def test_sensitive_values_are_not_echoed() -> None:
    with pytest.raises(ValidationException) as info:
        decode_request("Encrypt", {"KeyId": "k", "Plaintext": "QUFB" * 1400})
    assert "QUFB" not in info.value.message and "Value at 'plaintext'" in info.value.message


def test_nested_paths_follow_aws_naming() -> None:
    with pytest.raises(ValidationException) as info:
        decode_request("TagResource", {"KeyId": "k", "Tags": [{"TagKey": "k" * 129, "TagValue": "v"}]})
    assert "at 'tags.1.member.tagKey'" in info.value.message


@pytest.mark.parametrize("body", [{"Limit": "10"}, {"Limit": True}, {"Limit": 1.5}, []])
def test_wrong_json_types_are_serialization_errors(body: object) -> None:
    with pytest.raises(SerializationException):
        decode_request("ListKeys", body)


def test_timestamps_decode_and_encode_as_epoch_seconds() -> None:
    params = decode_request("ImportKeyMaterial", {
        "KeyId": "k", "ImportToken": "AA==", "EncryptedKeyMaterial": "AA==", "ValidTo": 1.5565824E9})
    assert isinstance(params["ValidTo"], datetime)
    assert encode_value({"When": params["ValidTo"], "Blob": b"\x00", "Gone": None}) == {
        "When": 1556582400.0, "Blob": "AA=="}
