"""Encryption: Encrypt, Decrypt and ReEncrypt (under symmetric keys, and RSA keys with an RSAES
algorithm), GenerateDataKey(WithoutPlaintext), GenerateRandom. Every one that uses a key checks its
state and usage; every one asks the authorization point."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keytrail.kms import errors
from keytrail.kms.asymmetric import check_rsa_request
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.ciphertext import read_header
from keytrail.kms.identifiers import KeyRefError, parse_key_ref
from keytrail.kms.keys import Key
from keytrail.kms.model import KeySpec, KeyUsage
from keytrail.kms.operations.hsm_keys import random_from_store

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS", "refuse_recipient", "usable_key"]

SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
INCORRECT_KEY = "The key ID in the request does not identify a CMK that can perform this operation."
# AWS's AccessDeniedException for a well-formed ciphertext whose key it cannot find (deleted, of
# another Region or account): not InvalidCiphertextException, the ciphertext itself may be intact.
CIPHERTEXT_KEY_NOT_FOUND = ("The ciphertext refers to a customer master key that does not exist, does not exist in "
                            "this region, or you are not allowed to access.")
_DATA_KEY_BYTES = {"AES_256": 32, "AES_128": 16}
_NO_RECIPIENT = "Recipient (attested enclave) requests are not supported by keytrail."
# Whether ReEncrypt's destination is the key the ciphertext was made under: the keys, however the
# request names them (the source may be omitted, either side may be an alias).
_SAME_KEY = "kms:ReEncryptOnSameKey"


def refuse_recipient(params: dict[str, Any]) -> None:
    """A request naming a Nitro Enclaves Recipient wants its secret only as CiphertextForRecipient:
    answering it with Plaintext would hand out what the caller meant to keep in the enclave."""
    if params.get("Recipient") is not None:
        raise errors.UnsupportedOperationException(_NO_RECIPIENT)


async def usable_key(svc: KmsService, call: Call, action: str, usage: KeyUsage,
                     conditions: dict[str, Any] | None = None) -> Key:
    """The KeyId's key once authorized, usable in its state and of `usage`."""
    key = await svc.find_key(call, call.params["KeyId"])
    await svc.authorize(call, action, key, conditions)
    svc.require_usable(key)
    svc.require_usage(key, action.removeprefix("kms:"), usage)
    return key


def _check_algorithm(key: Key, algorithm: str) -> None:
    symmetric = key.key_spec is KeySpec.SYMMETRIC_DEFAULT
    if symmetric != (algorithm == SYMMETRIC_DEFAULT):
        raise errors.InvalidKeyUsageException(f"Algorithm {algorithm} is incompatible with key spec {key.key_spec}.")


async def encrypt(svc: KmsService, call: Call) -> Response:
    params = call.params
    # Logged whether or not the caller named it, failed calls too, as Decrypt's (ct-encrypt's
    # examples, 2022 and 2025, show SYMMETRIC_DEFAULT; ct-decrypt: "always includes").
    algorithm = call.extra_request_parameters["encryptionAlgorithm"] = params.get("EncryptionAlgorithm",
                                                                                  SYMMETRIC_DEFAULT)
    key = await usable_key(svc, call, "kms:Encrypt", KeyUsage.ENCRYPT_DECRYPT)
    _check_algorithm(key, algorithm)
    check_rsa_request(key, params.get("EncryptionContext"), algorithm, len(params["Plaintext"]))
    svc.check_dry_run(call)
    blob, material_id = await svc.cipher_for(key).encrypt(
        key, params["Plaintext"], params.get("EncryptionContext"), algorithm)
    _note_material(call, material_id)
    return {"CiphertextBlob": blob, "KeyId": key.arn, "EncryptionAlgorithm": algorithm}


def _note_material(call: Call, material_id: str | None, name: str = "keyMaterialId") -> None:
    if material_id:
        call.additional_event_data[name] = material_id


async def _key_of_blob(svc: KmsService, call: Call, blob: bytes, key_id: str | None, algorithm: str) -> Key:
    """The key that made a ciphertext: the KeyId's key when an asymmetric algorithm is named, else
    the key the blob names. Like AWS, a SYMMETRIC_DEFAULT request (the default) reads the blob as
    symmetric ciphertext first, so RSA ciphertext there is InvalidCiphertextException."""
    named = await svc.find_key(call, key_id) if key_id else None
    # An asymmetric algorithm with a named key: that key decrypts, or refuses the algorithm (Decrypt:
    # InvalidKeyUsageException, incompatible "with the type of key material in the KMS key") whatever
    # the blob holds. Read first, a symmetric key's blob of another kind would fail as ciphertext.
    if named is not None and algorithm != SYMMETRIC_DEFAULT:
        return named
    header = read_header(blob)
    if named is not None:
        if (named.account, named.key_id) != (header.account, header.key_id):
            raise errors.IncorrectKeyException(INCORRECT_KEY)
        return named
    key = await svc.find_key_by_id(header.account, call.context.region, header.key_id)
    if key is None:
        raise errors.AccessDeniedException(CIPHERTEXT_KEY_NOT_FOUND)
    call.resource(key.arn)
    return key


async def _names_key(svc: KmsService, call: Call, raw: str, key: Key) -> bool:
    """Whether a KeyId parameter (id, ARN, alias name or alias ARN) names `key`. Nothing is
    raised here: a KeyId that names no key is refused later, where AWS refuses it."""
    try:
        ref = parse_key_ref(raw, account=call.context.account, region=call.context.region)
    except KeyRefError:
        return False
    key_id = ref.name
    if ref.is_alias:
        alias = await svc.store.get_alias(ref.account, ref.region, ref.name)
        key_id = alias.key_id if alias is not None else ""
    return (ref.account, ref.region, key_id) == (key.account, key.region, key.key_id)


async def _decrypt(svc: KmsService, call: Call, action: str, *, key_member: str = "KeyId",
                   context_member: str = "EncryptionContext",
                   algorithm_member: str = "EncryptionAlgorithm") -> tuple[Key, bytes, str, str | None]:
    """Decrypt's CiphertextBlob, or ReEncrypt's with its Source* members named: the key, the
    plaintext, the algorithm and the material id."""
    params = call.params
    algorithm = params.get(algorithm_member, SYMMETRIC_DEFAULT)
    key = await _key_of_blob(svc, call, params["CiphertextBlob"], params.get(key_member), algorithm)
    await _check_decrypting_key(svc, call, key, action, algorithm, read_from_blob=True)
    plaintext, material_id = await svc.cipher_for(key).decrypt(
        key, params["CiphertextBlob"], params.get(context_member), algorithm)
    return key, plaintext, algorithm, material_id


async def _check_decrypting_key(svc: KmsService, call: Call, key: Key, action: str, algorithm: str, *,
                                read_from_blob: bool = False) -> None:
    """The checks of the key that decrypts (Decrypt's, ReEncrypt's source), in AWS's order:
    authorization (ReEncryptFrom with whether the destination is the same key), state, usage, algorithm.
    `read_from_blob`: the ciphertext was read (a DryRun ignoring it names the key by KeyId alone)."""
    conditions = None
    if action == "kms:ReEncryptFrom":
        conditions = {_SAME_KEY: await _names_key(svc, call, call.params["DestinationKeyId"], key)}
    await svc.authorize(call, action, key, conditions)
    svc.require_usable(key)
    if read_from_blob and algorithm == SYMMETRIC_DEFAULT and key.key_spec is not KeySpec.SYMMETRIC_DEFAULT:
        # The blob was read as symmetric ciphertext, and names a key (RSA, HMAC …) that makes none:
        # forged or damaged, as any other blob that fails to open, not a question of the key's usage.
        raise errors.InvalidCiphertextException("")
    svc.require_usage(key, "Decrypt", KeyUsage.ENCRYPT_DECRYPT)
    _check_algorithm(key, algorithm)


def ignores_ciphertext(params: Mapping[str, Any]) -> bool:
    """A DryRun with DryRunModifiers IGNORE_CIPHERTEXT: a test of permissions alone, which reads no
    ciphertext (and needs none: api/protocol.py). `params` may be the request body as sent."""
    modifiers = params.get("DryRunModifiers")
    return params.get("DryRun") is True and isinstance(modifiers, list) and "IGNORE_CIPHERTEXT" in modifiers


async def _test_decrypt_permission(svc: KmsService, call: Call) -> None:
    """DryRun with DryRunModifiers IGNORE_CIPHERTEXT ("Testing your permissions"): the named key's
    authorization, state, usage and algorithm are checked, the ciphertext is not read at all. It
    always raises: the key's error, or DryRunOperationException."""
    params = call.params
    if params.get("KeyId") is None:
        raise errors.ValidationException("KeyId is required when DryRunModifiers includes IGNORE_CIPHERTEXT.")
    key = await svc.find_key(call, params["KeyId"])
    algorithm = params.get("EncryptionAlgorithm", SYMMETRIC_DEFAULT)
    await _check_decrypting_key(svc, call, key, "kms:Decrypt", algorithm)
    check_rsa_request(key, params.get("EncryptionContext"), algorithm)
    svc.check_dry_run(call)


async def decrypt(svc: KmsService, call: Call) -> Response:
    # Logged on every Decrypt record, failed ones included, whether or not the caller named it
    # (ct-decrypt: "always includes the encryptionAlgorithm", its IncorrectKeyException example).
    call.extra_request_parameters["encryptionAlgorithm"] = call.params.get("EncryptionAlgorithm", SYMMETRIC_DEFAULT)
    refuse_recipient(call.params)
    if ignores_ciphertext(call.params):
        await _test_decrypt_permission(svc, call)
    key, plaintext, algorithm, material_id = await _decrypt(svc, call, "kms:Decrypt")
    svc.check_dry_run(call)
    _note_material(call, material_id)
    response: Response = {"KeyId": key.arn, "Plaintext": plaintext, "EncryptionAlgorithm": algorithm}
    if material_id and key.key_spec is KeySpec.SYMMETRIC_DEFAULT:
        response["KeyMaterialId"] = material_id
    return response


async def _destination_key(svc: KmsService, call: Call, source: Key) -> tuple[Key, str]:
    """ReEncrypt's destination key and algorithm, checked as AWS checks them once the source is known."""
    params = call.params
    destination = await svc.find_key(call, params["DestinationKeyId"])
    await svc.authorize(call, "kms:ReEncryptTo", destination, {_SAME_KEY: destination.arn == source.arn})
    svc.require_usable(destination)
    svc.require_usage(destination, "ReEncrypt", KeyUsage.ENCRYPT_DECRYPT)
    algorithm = params.get("DestinationEncryptionAlgorithm", SYMMETRIC_DEFAULT)
    _check_algorithm(destination, algorithm)
    return destination, algorithm


def _note_re_encrypt_algorithms(call: Call) -> None:
    # Logged whether or not the caller named them (ct-reencrypt's 1.11 example), and on failed calls
    # too, as Decrypt's encryptionAlgorithm is: noted before any check, so that a denied ReEncrypt's
    # record has them as a denied Decrypt's has its own.
    params = call.params
    call.extra_request_parameters.update(
        sourceEncryptionAlgorithm=params.get("SourceEncryptionAlgorithm", SYMMETRIC_DEFAULT),
        destinationEncryptionAlgorithm=params.get("DestinationEncryptionAlgorithm", SYMMETRIC_DEFAULT))


async def _test_re_encrypt_permission(svc: KmsService, call: Call) -> None:
    """ReEncrypt's DryRun with DryRunModifiers IGNORE_CIPHERTEXT ("Testing your permissions"):
    SourceKeyId and DestinationKeyId are checked as a ReEncrypt between them would check them, the
    ciphertext is not read at all. It always raises: a key's error, or DryRunOperationException."""
    params = call.params
    if params.get("SourceKeyId") is None:
        raise errors.ValidationException("SourceKeyId is required when DryRunModifiers includes IGNORE_CIPHERTEXT.")
    source = await svc.find_key(call, params["SourceKeyId"])
    source_algorithm = params.get("SourceEncryptionAlgorithm", SYMMETRIC_DEFAULT)
    await _check_decrypting_key(svc, call, source, "kms:ReEncryptFrom", source_algorithm)
    destination, algorithm = await _destination_key(svc, call, source)
    # The plaintext is not known here, its size is not checked; the contexts are.
    check_rsa_request(source, params.get("SourceEncryptionContext"), source_algorithm)
    check_rsa_request(destination, params.get("DestinationEncryptionContext"), algorithm)
    svc.check_dry_run(call)


async def re_encrypt(svc: KmsService, call: Call) -> Response:
    params = call.params
    _note_re_encrypt_algorithms(call)
    if ignores_ciphertext(params):
        await _test_re_encrypt_permission(svc, call)
    source, plaintext, source_algorithm, source_material = await _decrypt(
        svc, call, "kms:ReEncryptFrom", key_member="SourceKeyId", context_member="SourceEncryptionContext",
        algorithm_member="SourceEncryptionAlgorithm")
    destination, algorithm = await _destination_key(svc, call, source)
    check_rsa_request(destination, params.get("DestinationEncryptionContext"), algorithm, len(plaintext))
    svc.check_dry_run(call)
    blob, material_id = await svc.cipher_for(destination).encrypt(
        destination, plaintext, params.get("DestinationEncryptionContext"), algorithm)
    _note_material(call, source_material, "sourceKeyMaterialId")
    _note_material(call, material_id, "destinationKeyMaterialId")
    return {
        "CiphertextBlob": blob, "SourceKeyId": source.arn, "KeyId": destination.arn,
        "SourceEncryptionAlgorithm": source_algorithm, "DestinationEncryptionAlgorithm": algorithm,
        **({"SourceKeyMaterialId": source_material} if source_material else {}),
        **({"DestinationKeyMaterialId": material_id} if material_id else {}),
    }


def _data_key_size(params: dict[str, Any]) -> int:
    spec, count = params.get("KeySpec"), params.get("NumberOfBytes")
    if (spec is None) == (count is None):
        raise errors.ValidationException("Please specify either number of bytes or key spec.")
    return _DATA_KEY_BYTES[spec] if spec is not None else int(count)  # type: ignore[arg-type]


async def _generate_data_key(svc: KmsService, call: Call, action: str) -> tuple[Response, bytes]:
    params = call.params
    size = _data_key_size(params)
    key = await usable_key(svc, call, action, KeyUsage.ENCRYPT_DECRYPT)
    _check_algorithm(key, SYMMETRIC_DEFAULT)
    svc.check_dry_run(call)
    plaintext = svc.deps.random_bytes(size)
    blob, material_id = await svc.cipher_for(key).encrypt(
        key, plaintext, params.get("EncryptionContext"), SYMMETRIC_DEFAULT)
    _note_material(call, material_id)
    response: Response = {"CiphertextBlob": blob, "KeyId": key.arn}
    if material_id:
        response["KeyMaterialId"] = material_id
    return response, plaintext


async def generate_data_key(svc: KmsService, call: Call) -> Response:
    refuse_recipient(call.params)
    response, plaintext = await _generate_data_key(svc, call, "kms:GenerateDataKey")
    return {**response, "Plaintext": plaintext}


async def generate_data_key_without_plaintext(svc: KmsService, call: Call) -> Response:
    response, _ = await _generate_data_key(svc, call, "kms:GenerateDataKeyWithoutPlaintext")
    return response


async def generate_random(svc: KmsService, call: Call) -> Response:
    count = call.params.get("NumberOfBytes")
    if count is None:
        raise errors.ValidationException("NumberOfBytes is required.")
    refuse_recipient(call.params)
    await svc.authorize(call, "kms:GenerateRandom", None)
    store_id = call.params.get("CustomKeyStoreId")
    if store_id is not None:
        return {"Plaintext": await random_from_store(svc, call, store_id, int(count))}
    return {"Plaintext": svc.deps.random_bytes(int(count))}


OPERATIONS: dict[str, Operation] = {
    "Encrypt": Operation(encrypt, read_only=True),
    "Decrypt": Operation(decrypt, read_only=True),
    "ReEncrypt": Operation(re_encrypt, read_only=True),
    "GenerateDataKey": Operation(generate_data_key, read_only=True),
    "GenerateDataKeyWithoutPlaintext": Operation(generate_data_key_without_plaintext, read_only=True),
    "GenerateRandom": Operation(generate_random, read_only=True),
}
