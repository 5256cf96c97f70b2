"""Asymmetric keys: Sign, Verify, GetPublicKey, GenerateDataKeyPair(WithoutPlaintext),
DeriveSharedSecret. Each finds the key, asks the authorization point, then checks state,
usage and algorithm in AWS's order. The request's condition keys (kms:SigningAlgorithm,
kms:DataKeyPairSpec, kms:KeyAgreementAlgorithm, …) come from `condition_keys`; handlers add
only values the request may leave out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keytrail.kms import asymmetric, errors, pq
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.keys import Key
from keytrail.kms.material import generate_secret
from keytrail.kms.model import KeySpec, KeyUsage
from keytrail.kms.operations.crypto import SYMMETRIC_DEFAULT, refuse_recipient, usable_key
from keytrail.kms.specs import algorithms_for

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]


async def _signing_request(svc: KmsService, call: Call, action: str) -> tuple[Key, str, str]:
    params = call.params
    algorithm, message_type = params["SigningAlgorithm"], params.get("MessageType", "RAW")
    key = await usable_key(svc, call, action, KeyUsage.SIGN_VERIFY, {"kms:MessageType": message_type})
    asymmetric.check_signing(key.key_spec, algorithm, message_type, params["Message"])
    return key, algorithm, message_type


async def sign(svc: KmsService, call: Call) -> Response:
    key, algorithm, message_type = await _signing_request(svc, call, "kms:Sign")
    svc.check_dry_run(call)
    signature = asymmetric.sign(asymmetric.key_secret(key), algorithm, call.params["Message"], message_type)
    return {"KeyId": key.arn, "Signature": signature, "SigningAlgorithm": algorithm}


async def verify(svc: KmsService, call: Call) -> Response:
    """A bad signature is KMSInvalidSignatureException, never SignatureValid false (AWS Verify), with
    DryRun too: DryRun "checks if your request will succeed", and a Verify whose signature does not
    verify will not (as a Decrypt's DryRun reads its ciphertext)."""
    key, algorithm, message_type = await _signing_request(svc, call, "kms:Verify")
    params = call.params
    asymmetric.verify(asymmetric.key_secret(key), algorithm, params["Message"], message_type,
                      params["Signature"])
    svc.check_dry_run(call)
    return {"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": algorithm}


async def get_public_key(svc: KmsService, call: Call) -> Response:
    """The SPKI and what the key may do. The deprecated CustomerMasterKeySpec carries KeySpec's value
    for every spec (GetPublicKey: "The KeySpec and CustomerMasterKeySpec fields have the same value"),
    also those its enum predates, as AWS's KeyMetadata does (CustomerMasterKeySpec ML_DSA_65 for ML-DSA)."""
    key = await svc.find_key(call, call.params["KeyId"])
    await svc.authorize(call, "kms:GetPublicKey", key)
    svc.require_usable(key)
    if key.key_usage is KeyUsage.GENERATE_VERIFY_MAC or key.key_spec is KeySpec.SYMMETRIC_DEFAULT:
        raise errors.UnsupportedOperationException(
            f"{key.arn} key spec is {key.key_spec} which is not valid for GetPublicKey.")
    return {
        "KeyId": key.arn, "PublicKey": asymmetric.public_key_der(asymmetric.key_secret(key)),
        "CustomerMasterKeySpec": key.key_spec.value, "KeySpec": key.key_spec.value,
        "KeyUsage": key.key_usage.value, **algorithms_for(key.key_spec, key.key_usage),
    }


def _pair_spec(params: dict[str, Any], region: str) -> KeySpec:
    spec = KeySpec(params["KeyPairSpec"])
    asymmetric.check_offered_in_region("KeyPairSpec", spec, region)
    if spec is KeySpec.ML_KEM_512:
        raise errors.UnsupportedOperationException(pq.ml_kem_512_refused("KeyPairSpec"))
    refuse_recipient(params)
    return spec


async def _generate_data_key_pair(svc: KmsService, call: Call, action: str) -> Response:
    params = call.params
    spec = _pair_spec(params, call.context.region)
    key = await usable_key(svc, call, action, KeyUsage.ENCRYPT_DECRYPT)
    operation = action.removeprefix("kms:")
    if key.key_spec is not KeySpec.SYMMETRIC_DEFAULT:
        raise errors.InvalidKeyUsageException(
            f"{key.arn} key spec is {key.key_spec} which is not valid for {operation}.")
    if key.custom_key_store_id is not None:
        # AWS: "not supported in custom key stores" (KMS keys in a CloudHSM key store); the words are ours.
        raise errors.UnsupportedOperationException(
            f"{key.arn} origin is {key.origin} which is not valid for {operation}.")
    svc.check_dry_run(call)
    private = await generate_secret(spec)  # RSA runs in a worker thread
    blob, material_id = await svc.cipher_for(key).encrypt(
        key, private, params.get("EncryptionContext"), SYMMETRIC_DEFAULT)
    response: Response = {
        "PrivateKeyCiphertextBlob": blob, "PublicKey": asymmetric.public_key_der(private, kept=False),
        "KeyId": key.arn, "KeyPairSpec": spec.value, "PrivateKeyPlaintext": private,
    }
    if material_id:
        call.additional_event_data["keyMaterialId"] = material_id
        response["KeyMaterialId"] = material_id
    return response


async def generate_data_key_pair(svc: KmsService, call: Call) -> Response:
    return await _generate_data_key_pair(svc, call, "kms:GenerateDataKeyPair")


async def generate_data_key_pair_without_plaintext(svc: KmsService, call: Call) -> Response:
    response = await _generate_data_key_pair(svc, call, "kms:GenerateDataKeyPairWithoutPlaintext")
    del response["PrivateKeyPlaintext"]
    return response


async def derive_shared_secret(svc: KmsService, call: Call) -> Response:
    params = call.params
    refuse_recipient(params)
    algorithm = params["KeyAgreementAlgorithm"]
    key = await usable_key(svc, call, "kms:DeriveSharedSecret", KeyUsage.KEY_AGREEMENT)
    peer = asymmetric.peer_public_key(params["PublicKey"], key.key_spec)
    svc.check_dry_run(call)  # before the private key is used, as every other operation's
    shared = asymmetric.derive_shared_secret(asymmetric.key_secret(key), peer)
    return {"KeyId": key.arn, "SharedSecret": shared, "KeyAgreementAlgorithm": algorithm,
            "KeyOrigin": key.origin.value}


OPERATIONS: dict[str, Operation] = {
    "Sign": Operation(sign, read_only=True),
    "Verify": Operation(verify, read_only=True),
    "GetPublicKey": Operation(get_public_key, read_only=True),
    "GenerateDataKeyPair": Operation(generate_data_key_pair, read_only=True),
    "GenerateDataKeyPairWithoutPlaintext": Operation(
        generate_data_key_pair_without_plaintext, read_only=True),
    "DeriveSharedSecret": Operation(derive_shared_secret, read_only=True),
}
