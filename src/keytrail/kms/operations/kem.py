"""ML-KEM keys: Encapsulate and Decapsulate (FIPS 203, with implicit rejection)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keytrail.kms import errors, pq
from keytrail.kms.asymmetric import key_secret, private_key
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.keys import Key
from keytrail.kms.model import KeyUsage
from keytrail.kms.operations.crypto import usable_key

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]


async def _kem_key(svc: KmsService, call: Call, action: str) -> Key:
    return await usable_key(svc, call, action, KeyUsage.ENCAPSULATE_DECAPSULATE)


async def encapsulate(svc: KmsService, call: Call) -> Response:
    key = await _kem_key(svc, call, "kms:Encapsulate")
    svc.check_dry_run(call)
    shared_secret, ciphertext = pq.encapsulate(private_key(key_secret(key)))
    return {"KeyId": key.arn, "SharedSecret": shared_secret, "SharedSecretCiphertextBlob": ciphertext,
            "EncapsulationAlgorithm": call.params["EncapsulationAlgorithm"]}


async def decapsulate(svc: KmsService, call: Call) -> Response:
    """Any ciphertext of the right length yields a secret; only the length is an error."""
    key = await _kem_key(svc, call, "kms:Decapsulate")
    ciphertext = call.params["SharedSecretCiphertextBlob"]
    if len(ciphertext) != pq.KEM_CIPHERTEXT_BYTES[key.key_spec]:
        raise errors.InvalidCiphertextException("")
    svc.check_dry_run(call)
    shared_secret = pq.decapsulate(key.key_spec, private_key(key_secret(key)), ciphertext)
    return {"KeyId": key.arn, "SharedSecret": shared_secret,
            "EncapsulationAlgorithm": call.params["EncapsulationAlgorithm"]}


OPERATIONS: dict[str, Operation] = {
    "Encapsulate": Operation(encapsulate, read_only=True),
    "Decapsulate": Operation(decapsulate, read_only=True),
}
