"""Imported key material (Origin EXTERNAL): wrapping keys, import tokens, unwrapping and checks.

AWS KMS developer guide, "Importing key material": the caller wraps its material under a
wrapping public key from GetParametersForImport and sends it back with the import token within
24 hours. A key takes again only material it holds or held (IncorrectKeyMaterialException
otherwise), and new material only for an on-demand rotation (ImportType NEW_KEY_MATERIAL), so the
key material id is derived from the material under the key's own salt (`imported_material_id`):
re-imported material gets the same id and old ciphertexts decrypt again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from keytrail.kms import errors, multiregion, service_events
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.material import forget_deleted
from keytrail.kms.model import KeySpec, KeyState, Origin
from keytrail.kms.pkcs8 import EC_PUBLIC_KEY, RSA_ENCRYPTION, multi_prime_rsa, pkcs8_algorithm

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = [
    "FINGERPRINT",
    "IMPORTABLE_SPECS",
    "IMPORT_TOKEN_LIFETIME",
    "ImportParameters",
    "check_importable",
    "check_material",
    "check_private_key_numbers",
    "check_wrapping",
    "expiration_of",
    "expire_material",
    "imported_material_id",
    "material_expired",
    "new_wrapping_key",
    "pending_dropped",
    "public_key_of",
    "token_bytes",
    "token_id_of",
    "token_valid_to",
    "unwrap_material",
    "with_material_salt",
    "without_material",
]

IMPORT_TOKEN_LIFETIME = timedelta(hours=24)
WRAPPING_KEY_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
_OAEP_HASH: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "RSAES_OAEP_SHA_1": hashes.SHA1,
    "RSAES_OAEP_SHA_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_SHA_1": hashes.SHA1,
    "RSA_AES_KEY_WRAP_SHA_256": hashes.SHA256,
}
FINGERPRINT = "imported_material_id"  # Key.extra: the id of the first material this key accepted
_TOKEN_MAGIC = b"KTIT\x02"  # the token id, then its ValidTo (epoch milliseconds, 8 bytes big-endian)
_TOKEN_MAGIC_V1 = b"KTIT\x01"  # the token id alone (tokens made before they carried their ValidTo)
_TOKEN_ID_BYTES = 32
_VALID_TO_BYTES = 8
# HMAC material lengths AWS accepts per key spec (bytes): at least the digest size, at most 1024
# bits for every spec ("Requirements for imported key material": HMAC_224 224-1024 bits ...
# HMAC_512 512-1024 bits); RFC 2104 hashes a key longer than the hash's block first.
_HMAC_RANGE = {
    KeySpec.HMAC_224: (28, 128),
    KeySpec.HMAC_256: (32, 128),
    KeySpec.HMAC_384: (48, 128),
    KeySpec.HMAC_512: (64, 128),
}
_NAMED_CURVE = 0x06  # ECParameters namedCurve: an OBJECT IDENTIFIER, not a SEQUENCE of parameters
_RSA_BITS = {KeySpec.RSA_2048: 2048, KeySpec.RSA_3072: 3072, KeySpec.RSA_4096: 4096}
_CURVES: dict[KeySpec, type[ec.EllipticCurve]] = {
    KeySpec.ECC_NIST_P256: ec.SECP256R1,
    KeySpec.ECC_NIST_P384: ec.SECP384R1,
    KeySpec.ECC_NIST_P521: ec.SECP521R1,
    KeySpec.ECC_SECG_P256K1: ec.SECP256K1,
}


# The key specs AWS KMS imports material into (developer guide, "Requirements for imported key
# material"): symmetric, HMAC, RSA, the NIST and secp256k1 curves, and SM2 (China Regions, which
# keytrail refuses anyway: asymmetric.check_offered_in_region). "Importing ML-DSA keys is not
# supported"; ECC_NIST_EDWARDS25519 and ML-KEM are not in the list.
IMPORTABLE_SPECS = frozenset({
    KeySpec.SYMMETRIC_DEFAULT, *_HMAC_RANGE, *_RSA_BITS, *_CURVES, KeySpec.SM2,
})


def check_importable(spec: KeySpec) -> None:
    """Refuse a key of EXTERNAL origin whose key spec takes no imported material: it would stay
    PendingImport for ever (CreateKey; and GetParametersForImport for such a key made before)."""
    if spec not in IMPORTABLE_SPECS:
        raise errors.UnsupportedOperationException(
            f"KeySpec {spec} does not support imported key material (Origin EXTERNAL)."
        )


@dataclass(frozen=True, slots=True)
class ImportParameters:
    """One GetParametersForImport answer: the wrapping private key (PKCS#8 DER, sealed at rest)
    and what the import token it belongs to is valid for."""

    token_id: str
    account: str
    region: str
    key_id: str
    wrapping_algorithm: str
    wrapping_key_spec: str
    private_key: bytes = field(repr=False)
    valid_to: datetime


def check_wrapping(algorithm: str, wrapping_spec: str, key_spec: KeySpec) -> None:
    """Refuse wrapping algorithms and specs this service (and AWS outside China) does not offer."""
    check_importable(key_spec)
    if algorithm not in _OAEP_HASH:
        raise errors.UnsupportedOperationException(f"Wrapping algorithm {algorithm} is not supported.")
    if wrapping_spec not in WRAPPING_KEY_BITS:
        raise errors.UnsupportedOperationException(f"Wrapping key spec {wrapping_spec} is not supported.")
    if key_spec in _RSA_BITS and not algorithm.startswith("RSA_AES_KEY_WRAP"):
        # An RSA private key is longer than any RSA-OAEP plaintext: AWS requires the two-step wrap.
        raise errors.ValidationException(
            f"Wrapping algorithm {algorithm} is not valid for importing key material of key spec {key_spec}."
        )
    if key_spec is KeySpec.ECC_NIST_P521 and wrapping_spec == "RSA_2048" and algorithm.startswith("RSAES_OAEP"):
        # GetParametersForImport (WrappingAlgorithm): "You cannot use the RSAES_OAEP_SHA_* wrapping
        # algorithm with the RSA_2048 wrapping key spec to wrap ECC_NIST_P521 key material".
        raise errors.ValidationException(
            f"Wrapping algorithm {algorithm} with wrapping key spec {wrapping_spec} is not valid for importing "
            f"key material of key spec {key_spec}: use an RSA_AES_KEY_WRAP algorithm or a longer wrapping key."
        )


def new_wrapping_key(wrapping_spec: str) -> bytes:
    """A fresh RSA wrapping key pair as PKCS#8 DER (slow for 4096 bits: call off the event loop)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=WRAPPING_KEY_BITS[wrapping_spec])
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _wrapping_key(private_der: bytes) -> rsa.RSAPrivateKey:
    """A wrapping key this service made, read back (from the store, where it is sealed and
    authenticated) without checking its numbers again: 0.1 s for RSA_2048, up to a second for
    RSA_4096, on the event loop at every import."""
    private = serialization.load_der_private_key(private_der, password=None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(private, rsa.RSAPrivateKey)
    return private


def public_key_of(private_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo (DER) GetParametersForImport returns as PublicKey."""
    private = _wrapping_key(private_der)
    return private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def token_bytes(token_id: str, valid_to: datetime) -> bytes:
    """The opaque ImportToken handed to the caller: it names the stored parameters and carries
    their ValidTo, so a token is still told expired once its parameters are purged."""
    millis = int(valid_to.timestamp() * 1000)
    return _TOKEN_MAGIC + bytes.fromhex(token_id) + millis.to_bytes(_VALID_TO_BYTES, "big")


def _token_parts(token: bytes) -> tuple[bytes, bytes]:
    """The token id and ValidTo bytes (empty for a first-format token), or InvalidImportToken."""
    for magic, tail in ((_TOKEN_MAGIC, _VALID_TO_BYTES), (_TOKEN_MAGIC_V1, 0)):
        if token.startswith(magic) and len(token) == len(magic) + _TOKEN_ID_BYTES + tail:
            body = token[len(magic) :]
            return body[:_TOKEN_ID_BYTES], body[_TOKEN_ID_BYTES:]
    raise errors.InvalidImportTokenException("The import token is invalid.")


def token_id_of(token: bytes) -> str:
    return _token_parts(token)[0].hex()


def token_valid_to(token: bytes) -> datetime | None:
    """The ValidTo the token carries (None for a token made before tokens carried it). Not
    authenticated: it only tells an expired token from an unknown one once the store has
    purged the parameters the token names (the scheduler's tick deletes them once expired)."""
    millis = _token_parts(token)[1]
    if not millis:
        return None
    try:  # a forged token can carry any 8 bytes: past year 9999 it is no token this service made
        return datetime.fromtimestamp(int.from_bytes(millis, "big") / 1000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        raise errors.InvalidImportTokenException("The import token is invalid.") from None


def unwrap_material(parameters: ImportParameters, encrypted: bytes) -> bytes:
    """Undo the caller's wrap: RSA-OAEP, or RSA-OAEP of an AES key then AES key wrap with padding
    (RFC 5649). Any failure is InvalidCiphertextException, without saying which step failed."""
    private = _wrapping_key(parameters.private_key)
    digest = _OAEP_HASH[parameters.wrapping_algorithm]
    oaep = padding.OAEP(mgf=padding.MGF1(digest()), algorithm=digest(), label=None)
    try:
        if parameters.wrapping_algorithm.startswith("RSAES_OAEP"):
            return private.decrypt(encrypted, oaep)
        split = private.key_size // 8
        aes_key = private.decrypt(encrypted[:split], oaep)
        return aes_key_unwrap_with_padding(aes_key, encrypted[split:])
    except (ValueError, InvalidUnwrap):
        raise errors.InvalidCiphertextException(
            "The wrapped key material could not be decrypted with the wrapping key of this import token."
        ) from None


def check_material(key: Key, material: bytes) -> bytes:
    """The material in the form the key keeps it, or IncorrectKeyMaterialException if it cannot
    be material of this key spec (symmetric: 32 bytes; HMAC: spec range; asymmetric: PKCS#8)."""
    spec = key.key_spec
    if spec is KeySpec.SYMMETRIC_DEFAULT:
        if len(material) != 32:
            raise errors.IncorrectKeyMaterialException("Symmetric key material must be 256 bits.")
        return material
    if spec in _HMAC_RANGE:
        low, high = _HMAC_RANGE[spec]
        if not low <= len(material) <= high:
            raise errors.IncorrectKeyMaterialException(
                f"Key material for {spec} must be between {low} and {high} bytes."
            )
        return material
    return _check_private_key(spec, material)


def _check_private_key(spec: KeySpec, material: bytes) -> bytes:
    # "Asymmetric key material must be ... in ... PKCS #8 format", of a named curve for ECC
    # ("ECC keys with explicit parameters are rejected"): `cryptography` alone loads either.
    algorithm = pkcs8_algorithm(material)
    if algorithm is None:
        raise errors.IncorrectKeyMaterialException("The key material is not a PKCS#8 DER private key.")
    if algorithm.oid == EC_PUBLIC_KEY and algorithm.parameters_tag != _NAMED_CURVE:
        raise errors.IncorrectKeyMaterialException(
            "The ECC key material must name its curve: keys with explicit curve parameters are not supported."
        )
    try:  # the RSA key's numbers are checked after, off the event loop (`check_private_key_numbers`)
        private = serialization.load_der_private_key(material, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        if algorithm.oid == RSA_ENCRYPTION and multi_prime_rsa(material):
            raise errors.IncorrectKeyMaterialException(
                "The RSA key material has more than two primes: multi-prime RSA keys are not supported."
            ) from None
        raise errors.IncorrectKeyMaterialException(
            "The key material is not a PKCS#8 DER private key."
        ) from None
    fits = (
        spec in _RSA_BITS and isinstance(private, rsa.RSAPrivateKey) and private.key_size == _RSA_BITS[spec]
    ) or (
        spec in _CURVES
        and isinstance(private, ec.EllipticCurvePrivateKey)
        and isinstance(private.curve, _CURVES[spec])
    )
    if not fits:
        raise errors.IncorrectKeyMaterialException(f"The key material does not match key spec {spec}.")
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def check_private_key_numbers(key: Key, material: bytes) -> None:
    """IncorrectKeyMaterialException if the RSA material `check_material` took is no RSA key (its
    primes, its CRT values): 0.1 s for RSA_2048, up to a second for RSA_4096, so run it in a worker
    thread. Nothing to do for other specs (an EC key's point is checked as it is loaded)."""
    if key.key_spec not in _RSA_BITS:
        return
    try:
        serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise errors.IncorrectKeyMaterialException("The key material is not a valid RSA private key.") from None


MATERIAL_SALT = "imported_material_salt"  # Key.extra: random, per key, copied to its replicas


def with_material_salt(key: Key) -> Key:
    """The key with a random salt for fingerprinting imported material (made once per key)."""
    if MATERIAL_SALT in key.extra:
        return key
    return replace(key, extra={**key.extra, MATERIAL_SALT: os.urandom(32).hex()})


def imported_material_id(key: Key, material: bytes) -> str:
    """KeyMaterialId of imported material: HMAC-SHA256 of the material under the key's random
    salt, so the same material always gets the same id (64 hex, like AWS's), a different one
    never does, and the id (which audit records carry) cannot be checked against guesses of the
    material without the salt held in the key store."""
    salt = bytes.fromhex(key.extra[MATERIAL_SALT])
    return hmac.new(salt, material, hashlib.sha256).hexdigest()


def material_expired(key: Key, now: datetime) -> bool:
    """True when an EXTERNAL key holds imported material (current, older or pending rotation)
    whose ValidTo has passed."""
    return key.origin is Origin.EXTERNAL and bool(_expired(key, now))


def _expired(key: Key, now: datetime) -> list[KeyMaterial]:
    return [m for m in key.materials if m.imported and m.valid_to is not None and m.valid_to <= now]


def expiration_of(key: Key) -> tuple[str | None, datetime | None]:
    """DescribeKey's ExpirationModel and ValidTo: ValidTo is "the earliest time at which any
    imported key material permanently associated with this KMS key expires" (material pending
    rotation is not yet associated). None, None while no such material is imported."""
    held = [m for m in key.materials if m.imported and not m.pending]
    ends = [m.valid_to for m in held if m.valid_to is not None]
    if ends:
        return "KEY_MATERIAL_EXPIRES", min(ends)
    return ("KEY_MATERIAL_DOES_NOT_EXPIRE" if held else None), None


def without_material(key: Key, material_id: str | None = None) -> Key:
    """The key with one imported material gone (by default the current one).

    DeleteImportedKeyMaterial: material pending rotation is not permanently associated with the
    key, so it goes entirely and the key state stays. Any other material stays associated, not
    imported (its id, so that only the same material comes back), and the key is PendingImport
    (unless it is being deleted) until it is imported again. (A replica's material pending
    rotation stays too: its primary still has it. `pending_dropped` takes it from the replicas
    when the primary's goes.)"""
    current = key.current_material
    target = material_id or (current.material_id if current else None)
    gone = next((m for m in key.materials if m.material_id == target), None)
    if gone is None:
        return key
    if gone.pending and not multiregion.is_replica(key):
        return replace(key, materials=tuple(m for m in key.materials if m is not gone))
    if gone.pending:  # still the primary's: the replica names it, to import again
        return replace(key, materials=tuple(gone.without_secret() if m is gone else m for m in key.materials))
    emptied = gone.without_secret()
    keep = key.state in (KeyState.PENDING_DELETION, KeyState.PENDING_REPLICA_DELETION)
    return replace(
        key,
        materials=tuple(emptied if m is gone else m for m in key.materials),
        expiration_model=None,
        state=key.state if keep else KeyState.PENDING_IMPORT,
    )


async def expire_material(svc: KmsService, key: Key, by: datetime | None = None) -> Key:
    """Delete each material whose ValidTo passed by `by` (by default now): one
    `DeleteExpiredKeyMaterial` service event each, at its ValidTo, whenever the tick came."""
    expired = key
    gone = sorted(_expired(key, by or svc.now()), key=lambda m: m.valid_to or svc.now())
    for material in gone:  # each event written with the deletion it records (service_events.py)
        expired = without_material(expired, material.material_id)
        details = {"keyId": key.key_id, "keyMaterialId": material.material_id}
        expired = service_events.with_event(expired, svc.deps.new_id(), "DeleteExpiredKeyMaterial", details,
                                            material.valid_to or svc.now())
    replicas = await pending_dropped(svc, key, [m.material_id for m in gone if m.pending])
    async with multiregion.announced(svc, replicas, by_call=False):
        await svc.store.put_keys([expired, *replicas])
        forget_deleted(key, [expired])
        expired = await service_events.record_owed(svc, expired)
    return expired


async def pending_dropped(svc: KmsService, key: Key, material_ids: list[str]) -> list[Key]:
    """The replicas of a multi-Region primary without the primary's material pending rotation
    that was deleted or expired ("you'll also be deleting the key materials for the replica
    Region keys"); none for any other key."""
    if not material_ids or not multiregion.is_primary(key):
        return []
    changed = []
    for other in await multiregion.copies(svc, key):
        kept = tuple(m for m in other.materials if m.material_id not in material_ids)
        if kept != other.materials:
            changed.append(replace(other, materials=kept))
    return changed
