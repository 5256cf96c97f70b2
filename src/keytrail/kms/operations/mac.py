"""HMAC keys: GenerateMac and VerifyMac (AWS KMS "HMAC keys in AWS KMS")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keytrail.kms import hmac_keys
from keytrail.kms.asymmetric import key_secret
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.keys import Key
from keytrail.kms.model import KeyUsage
from keytrail.kms.operations.crypto import usable_key

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]


async def _mac_request(svc: KmsService, call: Call, action: str) -> tuple[Key, str, str]:
    params = call.params
    algorithm = params["MacAlgorithm"]
    key = await usable_key(svc, call, action, KeyUsage.GENERATE_VERIFY_MAC)
    digest = hmac_keys.check_mac_algorithm(key.key_spec, algorithm)
    return key, algorithm, digest


async def generate_mac(svc: KmsService, call: Call) -> Response:
    key, algorithm, digest = await _mac_request(svc, call, "kms:GenerateMac")
    svc.check_dry_run(call)
    mac = hmac_keys.generate_mac(key_secret(key), digest, call.params["Message"])
    return {"Mac": mac, "MacAlgorithm": algorithm, "KeyId": key.arn}


async def verify_mac(svc: KmsService, call: Call) -> Response:
    """A MAC that does not match is KMSInvalidMacException, never MacValid false, with DryRun too:
    DryRun "checks if your request will succeed", and a VerifyMac whose MAC does not match will not."""
    key, algorithm, digest = await _mac_request(svc, call, "kms:VerifyMac")
    hmac_keys.verify_mac(key_secret(key), digest, call.params["Message"], call.params["Mac"])
    svc.check_dry_run(call)
    return {"KeyId": key.arn, "MacValid": True, "MacAlgorithm": algorithm}


OPERATIONS: dict[str, Operation] = {
    "GenerateMac": Operation(generate_mac, read_only=True),
    "VerifyMac": Operation(verify_mac, read_only=True),
}
