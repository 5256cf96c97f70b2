"""Symmetric cryptography through boto3 (kms-anchors §3d items 10–11, 13–15, 22, 32)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from keytrail.audit.cloudtrail_files import iter_events
from tests.support.errors import aws_error
from tests.support.server import KeytrailServer

INCORRECT_KEY = "The key ID in the request does not identify a CMK that can perform this operation."
CIPHERTEXT_KEY_NOT_FOUND = ("The ciphertext refers to a customer master key that does not exist, does not exist in "
                            "this region, or you are not allowed to access.")


@pytest.fixture
def key(kms) -> dict:  # type: ignore[type-arg]
    return kms.create_key()["KeyMetadata"]


def test_encrypt_accepts_every_key_identifier_form(kms, key) -> None:
    name = f"alias/forms-{key['KeyId']}"
    kms.create_alias(AliasName=name, TargetKeyId=key["KeyId"])
    alias_arn = key["Arn"].replace(f"key/{key['KeyId']}", name)
    for key_id in (key["KeyId"], key["Arn"], name, alias_arn):
        out = kms.encrypt(KeyId=key_id, Plaintext=b"secret")
        assert out["KeyId"] == key["Arn"] and out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
        assert kms.decrypt(CiphertextBlob=out["CiphertextBlob"])["Plaintext"] == b"secret"


def test_plaintext_over_4096_bytes_is_a_validation_error(server: KeytrailServer, key) -> None:
    kms = server.client(parameter_validation=False)
    code, message, status = aws_error(kms.encrypt, KeyId=key["KeyId"], Plaintext=b"x" * 4097)
    assert (code, status) == ("ValidationException", 400)
    assert message == ("1 validation error detected: Value at 'plaintext' failed to satisfy constraint: "
                       "Member must have length less than or equal to 4096")


def test_decrypt_returns_key_algorithm_and_material(kms, key) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p", EncryptionContext={"app": "x"})["CiphertextBlob"]
    out = kms.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "x"})
    assert out["KeyId"] == key["Arn"] and out["Plaintext"] == b"p"
    assert out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert out["KeyMaterialId"] == key["CurrentKeyMaterialId"]


@pytest.mark.parametrize("context", [None, {"app": "y"}, {"app": "x", "extra": "1"}, {"APP": "x"}])
def test_decrypt_with_wrong_context_is_invalid_ciphertext(kms, key, context) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p", EncryptionContext={"app": "x"})["CiphertextBlob"]
    kwargs = {"EncryptionContext": context} if context else {}
    code, message, status = aws_error(kms.decrypt, CiphertextBlob=blob, **kwargs)
    assert (code, message, status) == ("InvalidCiphertextException", "", 400)


def test_context_encoding_is_unambiguous(kms, key) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p", EncryptionContext={"ab": "c"})["CiphertextBlob"]
    code, _, _ = aws_error(kms.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "bc"})
    assert code == "InvalidCiphertextException"


def test_tampered_or_truncated_blob_is_invalid_ciphertext(kms, key) -> None:
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"payload")["CiphertextBlob"]
    for bad in (blob[:-1], blob[:20], blob[:-1] + bytes([blob[-1] ^ 1]), b"\x00" + blob[1:], b"garbage"):
        assert aws_error(kms.decrypt, CiphertextBlob=bad)[:2] == ("InvalidCiphertextException", "")


def test_a_blob_made_to_name_a_key_that_makes_no_symmetric_ciphertext_is_invalid_ciphertext(kms, key) -> None:
    """A symmetric blob edited to name an RSA or HMAC key (its key id is in its header) was answered
    with that key's usage or spec (InvalidKeyUsageException), not as the ciphertext it is not."""
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"payload")["CiphertextBlob"]
    for spec, usage in (("RSA_2048", "ENCRYPT_DECRYPT"), ("HMAC_256", "GENERATE_VERIFY_MAC")):
        other = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]
        forged = blob.replace(key["KeyId"].encode(), other.encode())
        assert forged != blob
        assert aws_error(kms.decrypt, CiphertextBlob=forged)[:2] == ("InvalidCiphertextException", "")


def test_ciphertext_of_a_key_not_in_this_region_is_access_denied(server: KeytrailServer, kms, key) -> None:
    # AWS answers Decrypt and ReEncrypt of a well-formed ciphertext whose key it cannot find with
    # AccessDeniedException, not InvalidCiphertextException (observed, e.g. aws-encryption-sdk-
    # javascript#1005, kubernetes-sigs/aws-encryption-provider#91).
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    elsewhere = server.client("alice", "eu-west-2")
    destination = elsewhere.create_key()["KeyMetadata"]["KeyId"]
    expected = ("AccessDeniedException", CIPHERTEXT_KEY_NOT_FOUND)
    assert aws_error(elsewhere.decrypt, CiphertextBlob=blob)[:2] == expected
    assert aws_error(elsewhere.re_encrypt, CiphertextBlob=blob, DestinationKeyId=destination)[:2] == expected


def test_decrypt_with_another_key_id_is_incorrect_key(kms, key) -> None:
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    assert aws_error(kms.decrypt, CiphertextBlob=blob, KeyId=other)[:2] == ("IncorrectKeyException", INCORRECT_KEY)
    assert kms.decrypt(CiphertextBlob=blob, KeyId=key["Arn"])["Plaintext"] == b"p"


def test_re_encrypt_moves_ciphertext_to_another_key(kms, key) -> None:
    destination = kms.create_key()["KeyMetadata"]
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p", EncryptionContext={"a": "1"})["CiphertextBlob"]
    out = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"a": "1"},
                         DestinationKeyId=destination["KeyId"], DestinationEncryptionContext={"b": "2"})
    assert out["SourceKeyId"] == key["Arn"] and out["KeyId"] == destination["Arn"]
    assert out["SourceEncryptionAlgorithm"] == out["DestinationEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    plain = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"b": "2"})
    assert plain["Plaintext"] == b"p" and plain["KeyId"] == destination["Arn"]
    code, message, _ = aws_error(kms.re_encrypt, CiphertextBlob=blob, SourceEncryptionContext={"a": "1"},
                                 SourceKeyId=destination["KeyId"], DestinationKeyId=destination["KeyId"])
    assert (code, message) == ("IncorrectKeyException", INCORRECT_KEY)


def test_generate_data_key_sizes_and_round_trip(kms, key) -> None:
    name = f"alias/gdk-{key['KeyId']}"
    kms.create_alias(AliasName=name, TargetKeyId=key["KeyId"])
    for kwargs, size in (({"KeySpec": "AES_128"}, 16), ({"KeySpec": "AES_256"}, 32), ({"NumberOfBytes": 7}, 7)):
        out = kms.generate_data_key(KeyId=name, EncryptionContext={"k": "v"}, **kwargs)
        assert len(out["Plaintext"]) == size and out["KeyId"] == key["Arn"]
        back = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"k": "v"})
        assert back["Plaintext"] == out["Plaintext"]
    without = kms.generate_data_key_without_plaintext(KeyId=key["KeyId"], KeySpec="AES_256")
    assert "Plaintext" not in without
    assert len(kms.decrypt(CiphertextBlob=without["CiphertextBlob"])["Plaintext"]) == 32


def test_generate_data_key_needs_exactly_one_size(server: KeytrailServer, key) -> None:
    kms = server.client(parameter_validation=False)
    for kwargs in ({}, {"KeySpec": "AES_256", "NumberOfBytes": 32}):
        assert aws_error(kms.generate_data_key, KeyId=key["KeyId"], **kwargs)[0] == "ValidationException"


def test_generate_random_bounds(server: KeytrailServer) -> None:
    kms = server.client(parameter_validation=False)
    assert len(kms.generate_random(NumberOfBytes=1)["Plaintext"]) == 1
    assert len(kms.generate_random(NumberOfBytes=1024)["Plaintext"]) == 1024
    assert aws_error(kms.generate_random)[:2] == ("ValidationException", "NumberOfBytes is required.")
    _, low, _ = aws_error(kms.generate_random, NumberOfBytes=0)
    assert low.endswith("Member must have value greater than or equal to 1")
    _, high, _ = aws_error(kms.generate_random, NumberOfBytes=1025)
    assert high.endswith("Member must have value less than or equal to 1024")


_RECIPIENT = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": b"attestation"}
_NO_RECIPIENT = ("UnsupportedOperationException",
                 "Recipient (attested enclave) requests are not supported by keytrail.", 400)


def test_recipient_requests_are_refused_never_answered_in_plaintext(kms, key) -> None:
    """A caller naming a Recipient wants the secret only as CiphertextForRecipient: keytrail
    cannot attest an enclave, so it refuses rather than return Plaintext."""
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"secret")["CiphertextBlob"]
    assert aws_error(kms.decrypt, CiphertextBlob=blob, Recipient=_RECIPIENT) == _NO_RECIPIENT
    assert aws_error(kms.generate_data_key, KeyId=key["KeyId"], KeySpec="AES_256",
                     Recipient=_RECIPIENT) == _NO_RECIPIENT
    assert aws_error(kms.generate_random, NumberOfBytes=16, Recipient=_RECIPIENT) == _NO_RECIPIENT


_DRY_RUN = ("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.", 412)


def test_decrypt_dry_run_ignoring_the_ciphertext_checks_only_the_key(server: KeytrailServer, kms, key) -> None:
    """DryRunModifiers IGNORE_CIPHERTEXT tests permissions without a valid ciphertext; the key is
    still checked (usage, state, who may use it)."""
    ignore = {"DryRun": True, "DryRunModifiers": ["IGNORE_CIPHERTEXT"]}
    assert aws_error(kms.decrypt, KeyId=key["KeyId"], CiphertextBlob=b"not a ciphertext", **ignore) == _DRY_RUN
    assert aws_error(kms.decrypt, KeyId=key["KeyId"], CiphertextBlob=b"not a ciphertext",
                     DryRun=True)[0] == "InvalidCiphertextException"
    assert aws_error(kms.decrypt, CiphertextBlob=b"not a ciphertext", **ignore)[:2] == (
        "ValidationException", "KeyId is required when DryRunModifiers includes IGNORE_CIPHERTEXT.")
    assert aws_error(server.client("bob").decrypt, KeyId=key["Arn"], CiphertextBlob=b"x",
                     **ignore)[0] == "AccessDeniedException"
    kms.disable_key(KeyId=key["KeyId"])
    assert aws_error(kms.decrypt, KeyId=key["KeyId"], CiphertextBlob=b"x", **ignore)[:2] == (
        "DisabledException", f"{key['Arn']} is disabled.")


def _failed_call_event(server: KeytrailServer, call: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """The one audit record of a boto3 call that fails, matched on its request id."""
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    request_id = info.value.response["ResponseMetadata"]["RequestId"]
    events = [e for _, e in iter_events(server.data_dir) if e.get("requestID") == request_id]
    assert len(events) == 1
    assert events[0]["errorCode"] == info.value.response["Error"]["Code"]
    return events[0]


def test_encrypt_records_the_encryption_algorithm_it_used(server: KeytrailServer, kms, key) -> None:
    """ct-encrypt's examples log encryptionAlgorithm SYMMETRIC_DEFAULT; a record of an Encrypt that
    left it out (boto3's usual call) had none, where Decrypt's and ReEncrypt's always have it."""
    reply = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p")
    request_id = reply["ResponseMetadata"]["RequestId"]
    [event] = [e for _, e in iter_events(server.data_dir) if e.get("requestID") == request_id]
    assert event["requestParameters"] == {"keyId": key["KeyId"], "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    kms.disable_key(KeyId=key["KeyId"])
    failed = _failed_call_event(server, kms.encrypt, KeyId=key["KeyId"], Plaintext=b"p")
    assert (failed["errorCode"], failed["requestParameters"]["encryptionAlgorithm"]) == (
        "DisabledException", "SYMMETRIC_DEFAULT")
    kms.enable_key(KeyId=key["KeyId"])


def test_failed_decrypt_records_the_encryption_algorithm(server: KeytrailServer, kms, key) -> None:
    """ct-decrypt: a Decrypt record "always includes the encryptionAlgorithm" even when the request
    left it out, its failure example (IncorrectKeyException) included."""
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p", EncryptionContext={"a": "1"})["CiphertextBlob"]
    failures: list[dict[str, Any]] = [
        {"CiphertextBlob": blob, "KeyId": other, "EncryptionContext": {"a": "1"}},  # IncorrectKeyException
        {"CiphertextBlob": blob},  # InvalidCiphertextException: context left out
        {"CiphertextBlob": b"garbage"},  # InvalidCiphertextException: no key at all
    ]
    for kwargs in failures:
        event = _failed_call_event(server, kms.decrypt, **kwargs)
        assert event["requestParameters"]["encryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    kms.disable_key(KeyId=key["KeyId"])
    event = _failed_call_event(server, kms.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "1"})
    assert (event["errorCode"], event["requestParameters"]) == (
        "DisabledException", {"encryptionContext": {"a": "1"}, "encryptionAlgorithm": "SYMMETRIC_DEFAULT"})


def test_failed_re_encrypt_records_both_encryption_algorithms(server: KeytrailServer, kms, key) -> None:
    """ct-reencrypt logs sourceEncryptionAlgorithm and destinationEncryptionAlgorithm whether or not
    the caller named them; a failed ReEncrypt's record left them out (a denied Decrypt's has its
    encryptionAlgorithm), so the trail told a refused ReEncrypt's request other than it was."""
    other = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p", EncryptionContext={"a": "1"})["CiphertextBlob"]
    kms.disable_key(KeyId=other)
    failures: list[dict[str, Any]] = [
        {"CiphertextBlob": blob, "SourceEncryptionContext": {"a": "1"}, "DestinationKeyId": other},  # Disabled
        {"CiphertextBlob": blob, "DestinationKeyId": key["KeyId"]},  # InvalidCiphertextException
    ]
    for kwargs in failures:
        event = _failed_call_event(server, kms.re_encrypt, **kwargs)
        algorithms = {name: event["requestParameters"].get(name)
                      for name in ("sourceEncryptionAlgorithm", "destinationEncryptionAlgorithm")}
        assert algorithms == dict.fromkeys(algorithms, "SYMMETRIC_DEFAULT")


def test_a_call_refused_for_its_grant_token_is_logged_as_any_refused_call(server: KeytrailServer, kms, key) -> None:
    """An invalid grant token was checked before the handler noted what CloudTrail logs: the record
    of the refused Encrypt had no encryptionAlgorithm, Decrypt's no requestParameters at all, and
    neither named its key in `resources`, so the refusal fell out of per-key usage and detection."""
    blob = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"p", EncryptionContext={"a": "1"})["CiphertextBlob"]
    calls: list[tuple[Callable[..., Any], dict[str, Any], dict[str, Any]]] = [
        (kms.encrypt, {"KeyId": key["KeyId"], "Plaintext": b"p", "EncryptionContext": {"a": "1"}},
         {"keyId": key["KeyId"], "encryptionContext": {"a": "1"}, "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
        (kms.decrypt, {"CiphertextBlob": blob, "EncryptionContext": {"a": "1"}},
         {"encryptionContext": {"a": "1"}, "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
        (kms.generate_data_key, {"KeyId": key["KeyId"], "KeySpec": "AES_128"},
         {"keyId": key["KeyId"], "keySpec": "AES_128"}),
    ]
    for call, kwargs, logged in calls:
        event = _failed_call_event(server, call, GrantTokens=["not-a-grant-token"], **kwargs)
        assert event["errorCode"] == "InvalidGrantTokenException"
        assert {k: v for k, v in event["requestParameters"].items() if k != "grantTokens"} == logged
        assert [r["ARN"] for r in event["resources"]] == [key["Arn"]]


def test_re_encrypt_dry_run_ignoring_the_ciphertext_checks_both_keys(server: KeytrailServer, kms, key) -> None:
    """ReEncrypt takes DryRunModifiers IGNORE_CIPHERTEXT as Decrypt does (the model's ReEncrypt docs):
    both keys are checked (who may use them, usage, state), the ciphertext is not read."""
    destination = kms.create_key()["KeyMetadata"]
    ignore = {"DryRun": True, "DryRunModifiers": ["IGNORE_CIPHERTEXT"]}
    keys = {"SourceKeyId": key["KeyId"], "DestinationKeyId": destination["KeyId"]}
    assert aws_error(kms.re_encrypt, CiphertextBlob=b"not a ciphertext", **keys, **ignore) == _DRY_RUN
    assert aws_error(kms.re_encrypt, CiphertextBlob=b"not a ciphertext", **keys,
                     DryRun=True)[0] == "InvalidCiphertextException"
    assert aws_error(kms.re_encrypt, CiphertextBlob=b"x", DestinationKeyId=destination["KeyId"], **ignore)[:2] == (
        "ValidationException", "SourceKeyId is required when DryRunModifiers includes IGNORE_CIPHERTEXT.")
    assert aws_error(server.client("bob").re_encrypt, CiphertextBlob=b"x", SourceKeyId=key["Arn"],
                     DestinationKeyId=destination["Arn"], **ignore)[0] == "AccessDeniedException"
    mac = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    assert aws_error(kms.re_encrypt, CiphertextBlob=b"x", SourceKeyId=key["KeyId"], DestinationKeyId=mac["KeyId"],
                     **ignore)[0] == "InvalidKeyUsageException"
    kms.disable_key(KeyId=destination["KeyId"])
    assert aws_error(kms.re_encrypt, CiphertextBlob=b"x", **keys, **ignore)[:2] == (
        "DisabledException", f"{destination['Arn']} is disabled.")


def test_dry_run_ignoring_the_ciphertext_needs_no_ciphertext(server: KeytrailServer, kms, key) -> None:
    """CiphertextBlob is 'required in all cases except when DryRun is true and DryRunModifiers is
    set to IGNORE_CIPHERTEXT' (the model's Decrypt and ReEncrypt docs)."""
    destination = kms.create_key()["KeyMetadata"]["KeyId"]
    ignore = {"DryRun": True, "DryRunModifiers": ["IGNORE_CIPHERTEXT"]}
    assert aws_error(kms.decrypt, KeyId=key["KeyId"], **ignore) == _DRY_RUN
    assert aws_error(kms.re_encrypt, SourceKeyId=key["KeyId"], DestinationKeyId=destination, **ignore) == _DRY_RUN
    null_blob = ("ValidationException", "1 validation error detected: Value null at 'ciphertextBlob' failed to "
                 "satisfy constraint: Member must not be null", 400)
    assert aws_error(kms.decrypt, KeyId=key["KeyId"], DryRun=True) == null_blob
    assert aws_error(kms.decrypt, KeyId=key["KeyId"], DryRunModifiers=["IGNORE_CIPHERTEXT"]) == null_blob
    assert aws_error(kms.re_encrypt, SourceKeyId=key["KeyId"], DestinationKeyId=destination, DryRun=True) == null_blob
