"""Request decoding and validation from botocore's KMS model, with AWS's messages."""

from __future__ import annotations

from datetime import UTC, datetime

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


def test_grant_tokens_are_not_echoed() -> None:
    """The model does not mark a grant token sensitive, but it is a credential: a token one
    character too long must not reach the message (and the audit record's errorMessage)."""
    token = "T" * 8193
    with pytest.raises(ValidationException) as info:
        decode_request("Encrypt", {"KeyId": "k", "Plaintext": "aGk=", "GrantTokens": [token]})
    assert "TTTT" not in info.value.message
    assert "Value at 'grantTokens.1.member' failed to satisfy constraint" in info.value.message


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


def test_timestamps_are_answered_to_the_millisecond_as_aws_answers() -> None:
    """Smithy's epoch-seconds carry "optional millisecond precision" and AWS answers so
    (`"CreationDate": 1.713456789123E9`); a microsecond fraction is more than a strict parser takes."""
    created = datetime(2026, 12, 2, 7, 30, 15, 123_456, tzinfo=UTC)
    assert encode_value({"CreationDate": created}) == {"CreationDate": 1796196615.123}


@pytest.mark.parametrize("text", ["aGk", "aG k=", "aGk=\n", "aGé=", "a*k="])
def test_blobs_must_be_strict_base64(text: str) -> None:
    with pytest.raises(SerializationException, match="^Value at 'plaintext' is not valid base64$"):
        decode_request("Encrypt", {"KeyId": "k", "Plaintext": text})


@pytest.mark.parametrize(("params", "message"), [
    ({"KeyId": "", "Plaintext": "aGk="}, "Value '' at 'keyId' failed to satisfy constraint: Member must have "
                                         "length greater than or equal to 1"),
    ({"KeyId": "k", "Plaintext": ""}, "Value at 'plaintext' failed to satisfy constraint: Member must have "
                                      "length greater than or equal to 1"),
    ({"KeyId": "k", "Plaintext": "aGk=", "EncryptionAlgorithm": "AES"},
     "Value 'AES' at 'encryptionAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: "
     "[SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, SM2PKE]"),
])
def test_length_and_enum_violations_are_worded_as_aws_words_them(params: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationException) as info:
        decode_request("Encrypt", params)
    assert info.value.message == f"1 validation error detected: {message}"


def test_response_values_keep_scalars_and_drop_nulls_at_every_depth() -> None:
    value = {"A": "s", "B": 1, "C": 1.5, "D": True, "E": None, "F": [{"G": None, "H": b"\x01"}], "I": ("x",)}
    assert encode_value(value) == {"A": "s", "B": 1, "C": 1.5, "D": True, "F": [{"H": "AQ=="}], "I": ["x"]}


@pytest.mark.parametrize(("operation", "params", "member"), [
    ("CreateGrant", {"KeyId": "k", "GranteePrincipal": "arn:aws:iam::111122223333:user/bób",
                     "Operations": ["Decrypt"]}, "granteePrincipal"),
    ("GetKeyPolicy", {"KeyId": "k", "PolicyName": "défault"}, "policyName"),
    ("ReplicateKey", {"KeyId": "k", "ReplicaRegion": "us-east-\u0661"}, "replicaRegion"),  # an Arabic-Indic 1
])
def test_pattern_classes_match_ascii_only_as_the_model_means_them(operation: str, params: dict[str, object],
                                                                   member: str) -> None:
    # The model's patterns are ECMA-262 / Java expressions, where \w and \d are ASCII classes;
    # Python's would take any Unicode letter or digit.
    with pytest.raises(ValidationException, match=f"at '{member}' failed to satisfy constraint: Member must "
                                                  "satisfy regular expression pattern"):
        decode_request(operation, params)


@pytest.mark.parametrize(("operation", "params", "bits"), [
    ("GenerateDataKey", {"KeyId": "k", "NumberOfBytes": float(10**30)}, 32),  # orjson's reading of 10**30
    ("GenerateDataKey", {"KeyId": "k", "NumberOfBytes": 2**31}, 32),
    ("GenerateDataKey", {"KeyId": "k", "NumberOfBytes": 1e308}, 32),
    ("ScheduleKeyDeletion", {"KeyId": "k", "PendingWindowInDays": -(2**31) - 1}, 32),
])
def test_integers_past_what_their_type_holds_are_serialization_errors_not_echoed(
        operation: str, params: dict[str, object], bits: int) -> None:
    # A JSON integer past 64 bits is read as a float, and was echoed in the range error as another
    # number (10**30 as 1000000000000000019884624838656): AWS's reader holds no such value at all.
    with pytest.raises(SerializationException, match=f"out of range of a {bits}-bit integer at '"):
        decode_request(operation, params)
    in_range = {**params, next(iter(set(params) - {"KeyId"})): 2**31 - 1}
    with pytest.raises(ValidationException, match="less than or equal to"):  # in range: the model's bound
        decode_request(operation, in_range)
