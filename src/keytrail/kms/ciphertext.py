"""The symmetric ciphertext blob: versioned, self-describing, AES-256-GCM.

    0      1            13        14            14+n       46         58
    | 0x01 | account(12) | n (1) | key id (n) | material id (32) | nonce (12) | ciphertext ‖ tag (16) |

The whole header and the canonically encoded encryption context are the GCM additional data, so
changing any byte, the key id, the material version or the context fails authentication. Every
failure to open a blob is one `InvalidCiphertextException` with an empty message (no oracle).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keytrail.kms.errors import InvalidCiphertextException

__all__ = ["BlobHeader", "encode_context", "open_blob", "read_header", "seal_blob"]

FORMAT_V1 = 0x01
_NONCE = 12
_TAG = 16
_MATERIAL_ID = 32
_PAIRS = struct.Struct(">H")
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class BlobHeader:
    account: str
    key_id: str
    material_id: str  # 64 hex
    header: bytes  # the raw header bytes, nonce excluded
    nonce: bytes
    body: bytes


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


@lru_cache(maxsize=4096)
def _aead(secret: bytes) -> AESGCM:
    # Building an AESGCM object costs about two encryptions: keep one per key version.
    return AESGCM(secret)


@lru_cache(maxsize=4096)
def _header(account: str, key_id: str, material_id: str) -> bytes:
    # The same for every blob of one key version.
    key_bytes = key_id.encode()
    return bytes([FORMAT_V1]) + account.encode() + bytes([len(key_bytes)]) + key_bytes + bytes.fromhex(material_id)


def seal_blob(
    secret: bytes, *, account: str, key_id: str, material_id: str, plaintext: bytes,
    context: Mapping[str, str] | None,
) -> bytes:
    """Encrypt `plaintext` under one key version and return the blob."""
    header = _header(account, key_id, material_id)
    nonce = os.urandom(_NONCE)
    body = _aead(secret).encrypt(nonce, plaintext, header + encode_context(context))
    return header + nonce + body


def read_header(blob: bytes) -> BlobHeader:
    """Parse the blob's header; raise InvalidCiphertextException if it is not one of ours."""
    try:
        if blob[0] != FORMAT_V1:
            raise ValueError
        account = blob[1:13].decode("ascii")
        id_len = blob[13]
        key_id = blob[14 : 14 + id_len].decode("ascii")
        cursor = 14 + id_len
        material = blob[cursor : cursor + _MATERIAL_ID]
        cursor += _MATERIAL_ID
        nonce = blob[cursor : cursor + _NONCE]
        body = blob[cursor + _NONCE :]
        if len(material) != _MATERIAL_ID or len(nonce) != _NONCE or len(body) < _TAG:
            raise ValueError
        if not account.isdigit():
            raise ValueError
    except (IndexError, ValueError, UnicodeDecodeError):
        raise InvalidCiphertextException("") from None
    return BlobHeader(account, key_id, material.hex(), blob[:cursor], nonce, body)


def open_blob(secret: bytes, header: BlobHeader, context: Mapping[str, str] | None) -> bytes:
    """Decrypt a parsed blob with the key version it names."""
    try:
        return _aead(secret).decrypt(header.nonce, header.body, header.header + encode_context(context))
    except InvalidTag:
        raise InvalidCiphertextException("") from None
