"""The new operations through KmsService in process: the condition keys they hand to the one
authorization point, what their audit records carry, and RSA-4096 generation off the loop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.material import generate_secret
from keytrail.kms.model import CallRecord, KeySpec
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore

ACCOUNT = "111122223333"


class Recorder:
    """Allows everything and remembers each question; also the audit sink."""

    def __init__(self) -> None:
        self.requests: list[AccessRequest] = []
        self.records: list[CallRecord] = []

    def authorize(self, request: AccessRequest) -> AccessDecision:
        self.requests.append(request)
        return AccessDecision(Verdict.ALLOW)

    async def record(self, call: CallRecord) -> None:
        self.records.append(call)


@pytest.fixture
def service(tmp_path: Path) -> tuple[KmsService, Recorder]:
    recorder = Recorder()
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    deps = ServiceDeps(store=store, clock=ManualClock(), audit=recorder, authorizer=recorder)
    return KmsService(deps), recorder


def _context() -> CallContext:
    principal = Principal(
        arn=f"arn:aws:iam::{ACCOUNT}:user/alice",
        account=ACCOUNT,
        type=IdentityType.IAM_USER,
        access_key_id="AKIAALICE000000000001",
        principal_id="AIDAALICE",
    )
    return CallContext(principal=principal, region="us-east-1", request_id="req-1")


async def _call(svc: KmsService, name: str, **params: Any) -> dict[str, Any]:
    return await svc.execute(name, _context(), params)


async def _key(svc: KmsService, spec: str, usage: str) -> str:
    created = await _call(svc, "CreateKey", KeySpec=spec, KeyUsage=usage)
    return str(created["KeyMetadata"]["KeyId"])


async def test_sign_hands_algorithm_conditions_and_logs_no_message(service) -> None:
    svc, recorder = service
    key_id = await _key(svc, "ECC_NIST_P256", "SIGN_VERIFY")
    await _call(svc, "Sign", KeyId=key_id, Message=b"secret text", SigningAlgorithm="ECDSA_SHA_256")
    request = recorder.requests[-1]
    assert request.action == "kms:Sign"
    assert request.conditions == {"kms:SigningAlgorithm": "ECDSA_SHA_256", "kms:MessageType": "RAW"}
    record = recorder.records[-1]
    assert record.event_name == "Sign" and record.read_only
    assert record.request_parameters == {"keyId": key_id, "signingAlgorithm": "ECDSA_SHA_256"}
    assert record.resources[0].endswith(key_id)


async def test_mac_pair_and_agreement_conditions(service) -> None:
    svc, recorder = service
    mac_key = await _key(svc, "HMAC_384", "GENERATE_VERIFY_MAC")
    await _call(svc, "GenerateMac", KeyId=mac_key, Message=b"m", MacAlgorithm="HMAC_SHA_384")
    assert recorder.requests[-1].conditions["kms:MacAlgorithm"] == "HMAC_SHA_384"
    wrapping = await _call(svc, "CreateKey")
    await _call(
        svc,
        "GenerateDataKeyPairWithoutPlaintext",
        KeyId=wrapping["KeyMetadata"]["KeyId"],
        KeyPairSpec="ECC_NIST_P384",
        EncryptionContext={"app": "x"},
    )
    conditions = recorder.requests[-1].conditions
    assert conditions["kms:DataKeyPairSpec"] == "ECC_NIST_P384"
    assert conditions["kms:EncryptionContext:app"] == "x"
    assert "keyMaterialId" in (recorder.records[-1].additional_event_data or {})
    agreement = await _key(svc, "ECC_NIST_P256", "KEY_AGREEMENT")
    with pytest.raises(errors.ValidationException):
        await _call(svc, "DeriveSharedSecret", KeyId=agreement, KeyAgreementAlgorithm="ECDH", PublicKey=b"x")
    assert recorder.requests[-1].conditions["kms:KeyAgreementAlgorithm"] == "ECDH"
    assert recorder.records[-1].error_code == "ValidationException"


async def test_rsa_encrypt_hands_the_encryption_algorithm(service) -> None:
    svc, recorder = service
    key_id = await _key(svc, "RSA_2048", "ENCRYPT_DECRYPT")
    await _call(svc, "Encrypt", KeyId=key_id, Plaintext=b"p", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert recorder.requests[-1].conditions["kms:EncryptionAlgorithm"] == "RSAES_OAEP_SHA_256"


async def test_rsa_4096_generation_leaves_the_event_loop_free() -> None:
    task = asyncio.create_task(generate_secret(KeySpec.RSA_4096))
    await asyncio.sleep(0)  # the task starts its work ...
    await asyncio.sleep(0)  # ... and the loop runs this coroutine again before that work is done
    assert not task.done()
    assert len(await task) > 2000
