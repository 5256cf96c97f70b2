"""Decrypt and ReEncrypt naming a symmetric key with an RSA algorithm: the named key refuses the
algorithm (InvalidKeyUsageException, Decrypt), whatever the ciphertext, after authorization."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.support.allow_all import alice

RSA = "RSAES_OAEP_SHA_256"
INCOMPATIBLE = f"Algorithm {RSA} is incompatible with key spec SYMMETRIC_DEFAULT."


class Recorder:
    """Allows every call until `denied` names an action, and keeps every audit record."""

    def __init__(self) -> None:
        self.denied: set[str] = set()
        self.records: list[CallRecord] = []

    def authorize(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(Verdict.IMPLICIT_DENY if request.action in self.denied else Verdict.ALLOW)

    async def record(self, call: CallRecord) -> None:
        self.records.append(call)


async def _setup(tmp_path: Path) -> tuple[KmsService, Recorder, dict[str, Any]]:
    """A service, its recorder, and a symmetric key's ARN with blobs of several kinds."""
    recorder = Recorder()
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    service = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=recorder, authorizer=recorder))
    sym = (await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["Arn"]
    other = (await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["Arn"]
    rsa = (await service.execute("CreateKey", alice(), {"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT"}))[
        "KeyMetadata"]["Arn"]

    async def blob(key: str, **extra: Any) -> bytes:
        return (await service.execute("Encrypt", alice(), {"KeyId": key, "Plaintext": b"a", **extra}))[
            "CiphertextBlob"]

    blobs = {"symmetric": await blob(sym), "rsa": await blob(rsa, EncryptionAlgorithm=RSA),
             "other key": await blob(other), "garbage": b"not a ciphertext blob"}
    return service, recorder, {"sym": sym, "blobs": blobs}


_KINDS = ["symmetric", "rsa", "other key", "garbage"]


def _decrypt(keys: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"CiphertextBlob": keys["blobs"][kind], "KeyId": keys["sym"], "EncryptionAlgorithm": RSA}


def _re_encrypt(keys: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"CiphertextBlob": keys["blobs"][kind], "SourceKeyId": keys["sym"], "SourceEncryptionAlgorithm": RSA,
            "DestinationKeyId": keys["sym"]}


@pytest.mark.parametrize("kind", _KINDS)
@pytest.mark.parametrize(("operation", "params"), [("Decrypt", _decrypt), ("ReEncrypt", _re_encrypt)])
async def test_a_symmetric_key_named_with_an_rsa_algorithm_is_invalid_key_usage(
        tmp_path: Path, kind: str, operation: str, params: Any) -> None:
    service, recorder, keys = await _setup(tmp_path)
    with pytest.raises(errors.InvalidKeyUsageException) as caught:
        await service.execute(operation, alice(), params(keys, kind))
    assert caught.value.message == INCOMPATIBLE
    record = recorder.records[-1]
    assert (record.event_name, record.error_code, record.error_message) == (
        operation, "InvalidKeyUsageException", INCOMPATIBLE)
    assert record.resources[0] == keys["sym"]
    if operation == "Decrypt":
        assert record.resources == (keys["sym"],)
        assert record.request_parameters is not None and record.request_parameters["encryptionAlgorithm"] == RSA


@pytest.mark.parametrize(("operation", "action"), [("Decrypt", "kms:Decrypt"), ("ReEncrypt", "kms:ReEncryptFrom")])
@pytest.mark.parametrize("kind", _KINDS)
async def test_a_caller_denied_the_symmetric_key_is_denied_before_the_algorithm_is_checked(
        tmp_path: Path, operation: str, action: str, kind: str) -> None:
    service, recorder, keys = await _setup(tmp_path)
    recorder.denied.add(action)
    params = _decrypt(keys, kind) if operation == "Decrypt" else _re_encrypt(keys, kind)
    with pytest.raises(errors.AccessDeniedException) as caught:
        await service.execute(operation, alice(), params)
    assert action in caught.value.message
    assert recorder.records[-1].error_code == "AccessDeniedException"


async def test_symmetric_default_still_reads_the_blob_first(tmp_path: Path) -> None:
    # Unchanged: without an asymmetric algorithm the blob is read as symmetric ciphertext first
    # (the message-less InvalidCiphertextException of AWS), and another key's blob is IncorrectKey.
    service, _, keys = await _setup(tmp_path)
    with pytest.raises(errors.InvalidCiphertextException):
        await service.execute("Decrypt", alice(), {"CiphertextBlob": keys["blobs"]["rsa"], "KeyId": keys["sym"]})
    with pytest.raises(errors.IncorrectKeyException):
        await service.execute("Decrypt", alice(), {"CiphertextBlob": keys["blobs"]["other key"], "KeyId": keys["sym"]})
