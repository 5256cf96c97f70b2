"""How a key encrypts and decrypts: one `KeyCipher` per kind of key.

Symmetric keys held by this node use the AES-256-GCM blob of `ciphertext.py`; RSA keys and
HSM-backed keys register their own ciphers with the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from keytrail.kms.ciphertext import open_blob, read_header, seal_blob
from keytrail.kms.errors import InvalidCiphertextException, KMSInvalidStateException
from keytrail.kms.keys import Key

__all__ = ["KeyCipher", "SymmetricCipher"]

Context = Mapping[str, str] | None
Sealed = tuple[bytes, str | None]  # output bytes, KeyMaterialId used


class KeyCipher(Protocol):
    """Encrypt/decrypt under one key; returns the bytes and the key material id used."""

    async def encrypt(self, key: Key, plaintext: bytes, context: Context, algorithm: str) -> Sealed: ...
    async def decrypt(self, key: Key, blob: bytes, context: Context, algorithm: str) -> Sealed: ...


class SymmetricCipher:
    """SYMMETRIC_DEFAULT keys: AES-256-GCM with the newest material, any material to decrypt."""

    async def encrypt(self, key: Key, plaintext: bytes, context: Context, algorithm: str) -> Sealed:
        material = key.current_material
        if material is None:
            raise KMSInvalidStateException(f"{key.arn} is pending import.")
        blob = seal_blob(
            material.secret, account=key.account, key_id=key.key_id, material_id=material.material_id,
            plaintext=plaintext, context=context,
        )
        return blob, material.material_id

    async def decrypt(self, key: Key, blob: bytes, context: Context, algorithm: str) -> Sealed:
        header = read_header(blob)
        material = key.material(header.material_id)
        if material is None or header.key_id != key.key_id:
            raise InvalidCiphertextException("")
        return open_blob(material.secret, header, context), material.material_id
