"""The symmetric ciphertext blob: versioned, self-describing, AES-256-GCM.

    | 0x03 | account (12) | n (1) | key id (n) | material id (32) | salt (11) | nonce (12) | ciphertext ‖ tag (16) |
    | 0x02 | account (12) | n (1) | key id (n) | material id (32) | salt (32) | nonce (12) | ciphertext ‖ tag (16) |
    | 0x01 | account (12) | n (1) | key id (n) | material id (32) | nonce (12) | ciphertext ‖ tag (16) |

Format 2 (what a key held by this node writes) seals under a key derived from the key version's
secret and a random salt the blob carries (HKDF-Expand with SHA-256), with a random 96-bit nonce. A
derived key seals at most `SUBKEY_BLOBS` blobs, then a new salt is drawn: NIST SP 800-38D allows one
AES-GCM key 2^32 random nonces, so a version can seal any number of blobs. (A key per blob, as AWS
KMS derives one per call, cost ≈ 6 % of an Encrypt through the server: a new key schedule each
time.) Format 3 is the same idea for HSM-backed keys, whose secret never leaves the HSM: the token
derives the key from its own key and the blob's salt (kms/hsm_derivation.py), and only the token
opens it. Format 1 sealed under the version's secret itself, up to that 2^32 for the whole version;
it is still opened (blobs are kept for years), and an HSM key whose token cannot derive keys still
writes it (kms/hsm_session.py).

Format 2 as first written (from 4ba9735f, until the nonce was added under the same format byte) had
no nonce: `salt (32) | ciphertext ‖ tag (16)`, under a key derived per blob with a nonce of zeros.
Those blobs are opened too: a format-2 blob that fails as written now is tried as written then, and
one too short to hold a nonce can only be one of them.

The whole header and the canonically encoded encryption context are the GCM additional data, so
changing any byte, the key id, the material version or the context fails authentication. Every
failure to open a blob is one `InvalidCiphertextException` with an empty message (no oracle).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keytrail.keyed_hash import KeyedSha256
from keytrail.kms.errors import InvalidCiphertextException
from keytrail.kms.secret_cache import SecretCache, forgotten_since_read

__all__ = [
    "FORMAT_V1", "FORMAT_V2", "FORMAT_V3", "SUBKEY_BLOBS", "TOKEN_SALT", "BlobHeader", "cached_secrets",
    "encode_context", "forget_secrets", "holds_secret", "open_blob", "read_header", "seal_blob",
]

FORMAT_V1 = 0x01  # GCM under the version's secret, random nonce
FORMAT_V2 = 0x02  # GCM under a key derived from the version's secret and a salt
FORMAT_V3 = 0x03  # GCM under a key an HSM derived from its key and a salt (kms/hsm_derivation.py)
_NONCE = 12
_SALT = 32
TOKEN_SALT = 11  # format 3's salt: 11 bytes fill an AES block with its counter byte and 4 zero bytes
# Blobs one derived key seals: two of its random nonces repeat with chance 2^-57 (2^40 / 2^97).
SUBKEY_BLOBS = 1 << 20
# HKDF-Expand(secret, _LABEL ‖ salt, 32) is one HMAC block: HMAC(secret, info ‖ 0x01). The version's
# secret is already a uniformly random key, so HKDF-Extract would add nothing.
_LABEL = b"keytrail ciphertext blob v2"
_SEED = {FORMAT_V1: _NONCE, FORMAT_V2: _SALT + _NONCE, FORMAT_V3: TOKEN_SALT + _NONCE}
_TAG = 16
_MATERIAL_ID = 32
_PAIRS = struct.Struct(">H")
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class BlobHeader:
    account: str
    key_id: str
    material_id: str  # 64 hex
    header: bytes  # the raw header bytes, seed excluded
    seed: bytes  # the blob's random values: formats 2 and 3 a salt and a nonce, format 1 a nonce
    body: bytes

    @property
    def format(self) -> int:
        return self.header[0]


def encode_context(context: Mapping[str, str] | None) -> bytes:
    """Encode an encryption context without ambiguity: sorted pairs, each string
    length-prefixed, so `{"ab": "c"}` and `{"a": "bc"}` never encode alike."""
    if not context:
        return b""
    parts = [_PAIRS.pack(len(context))]
    for name in sorted(context):
        key, value = name.encode(), context[name].encode()
        parts += (_LENGTH.pack(len(key)), key, _LENGTH.pack(len(value)), value)
    return b"".join(parts)


# Building an AESGCM object costs about two encryptions: keep one per key version (format 1), and
# one per derived key (format 2, by version secret and salt).
_AEADS: SecretCache[bytes, AESGCM] = SecretCache(AESGCM, size=4096)


@lru_cache(maxsize=4096)
def blob_header(account: str, key_id: str, material_id: str, form: int = FORMAT_V2) -> bytes:
    """The header of a blob sealed under one key version (the same for all of them)."""
    key_bytes = key_id.encode()
    return bytes([form]) + account.encode() + bytes([len(key_bytes)]) + key_bytes + bytes.fromhex(material_id)


def _new_derivation(secret: bytes) -> KeyedSha256:
    return KeyedSha256.of(secret, _LABEL)


_DERIVATIONS: SecretCache[bytes, KeyedSha256] = SecretCache(_new_derivation, size=4096)


def _new_derived(version: tuple[bytes, bytes]) -> AESGCM:
    secret, salt = version
    return AESGCM(_DERIVATIONS[secret].digest(salt + b"\x01"))


_DERIVED: SecretCache[tuple[bytes, bytes], AESGCM] = SecretCache(_new_derived, size=4096)


@dataclass(slots=True)
class _Sealing:
    """The derived key a version seals with now, and how many more blobs it may seal."""

    salt: bytes
    aead: AESGCM
    left: int


_SEALING: dict[bytes, _Sealing] = {}  # by version secret


def _sealing(secret: bytes) -> _Sealing:
    sealing = _SEALING.get(secret)
    if sealing is None or sealing.left <= 0:
        if len(_SEALING) >= 4096:  # versions seen: drop them all rather than grow without bound
            _SEALING.clear()
        salt = os.urandom(_SALT)
        sealing = _SEALING[secret] = _Sealing(salt, _DERIVED[secret, salt], SUBKEY_BLOBS)
        if forgotten_since_read():  # after the insertion: a forget either sees it or is seen here
            _SEALING.pop(secret, None)
    sealing.left -= 1
    return sealing


def forget_secrets(secrets: Collection[bytes]) -> None:
    """Drop every AES-GCM object, derivation and sealing state made from `secrets` (deleted material)."""
    _AEADS.forget(secrets)
    _DERIVATIONS.forget(secrets)
    _DERIVED.forget(secrets)
    for secret in secrets:
        _SEALING.pop(secret, None)


def cached_secrets() -> set[bytes]:
    """The secrets anything is cached for here."""
    return _AEADS.secrets() | _DERIVATIONS.secrets() | _DERIVED.secrets() | set(_SEALING)


def holds_secret(secret: bytes) -> bool:
    """Whether anything made from `secret` is still cached here."""
    return secret in _SEALING or _AEADS.holds(secret) or _DERIVATIONS.holds(secret) or _DERIVED.holds(secret)


def seal_blob(
    secret: bytes, *, account: str, key_id: str, material_id: str, plaintext: bytes,
    context: Mapping[str, str] | None,
) -> bytes:
    """Encrypt `plaintext` under one key version (its current derived key) and return the blob."""
    header = blob_header(account, key_id, material_id)
    sealing = _sealing(secret)
    nonce = os.urandom(_NONCE)
    body = sealing.aead.encrypt(nonce, plaintext, header + encode_context(context))
    return header + sealing.salt + nonce + body


def read_header(blob: bytes) -> BlobHeader:
    """Parse the blob's header; raise InvalidCiphertextException if it is not one of ours."""
    try:
        seed_size = _SEED.get(blob[0])
        if seed_size is None:
            raise ValueError
        account = blob[1:13].decode("ascii")
        id_len = blob[13]
        key_id = blob[14 : 14 + id_len].decode("ascii")
        cursor = 14 + id_len
        material = blob[cursor : cursor + _MATERIAL_ID]
        cursor += _MATERIAL_ID
        if blob[0] == FORMAT_V2 and _SALT + _TAG <= len(blob) - cursor < _SALT + _NONCE + _TAG:
            seed_size = _SALT  # room for no nonce: format 2 as first written (module docstring)
        seed = blob[cursor : cursor + seed_size]
        body = blob[cursor + seed_size :]
        if len(material) != _MATERIAL_ID or len(seed) != seed_size or len(body) < _TAG:
            raise ValueError
        if not account.isdigit():
            raise ValueError
    except (IndexError, ValueError, UnicodeDecodeError):
        raise InvalidCiphertextException("") from None
    return BlobHeader(account, key_id, material.hex(), blob[:cursor], seed, body)


def open_blob(secret: bytes, header: BlobHeader, context: Mapping[str, str] | None) -> bytes:
    """Decrypt a parsed blob with the key version it names. Format 3 is refused whatever the secret:
    only an HSM writes it, and only the HSM holds what opens it."""
    if header.format not in (FORMAT_V1, FORMAT_V2):
        raise InvalidCiphertextException("")
    additional_data = header.header + encode_context(context)
    try:
        if header.format == FORMAT_V2:
            return _open_format_2(secret, header, additional_data)
        return _AEADS[secret].decrypt(header.seed, header.body, additional_data)
    except InvalidTag:
        raise InvalidCiphertextException("") from None


def _open_format_2(secret: bytes, header: BlobHeader, additional_data: bytes) -> bytes:
    """Open a format-2 blob as written now (salt, nonce, body) or, failing that, as first written
    (salt, body under a nonce of zeros: what read as the nonce is the body's start)."""
    salt, nonce = header.seed[:_SALT], header.seed[_SALT:]
    aead = _DERIVED[secret, salt]
    if nonce:
        try:
            return aead.decrypt(nonce, header.body, additional_data)
        except InvalidTag:
            pass
    return aead.decrypt(_FIRST_NONCE, nonce + header.body, additional_data)


_FIRST_NONCE = bytes(_NONCE)  # format 2 as first written: a key per blob, its nonce all zeros
