"""The KeyCipher of keys in custom key stores: Encrypt and Decrypt run AES-GCM inside the store's HSM."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from keytrail.kms import errors
from keytrail.kms.ciphertext import FORMAT_V1, FORMAT_V3, blob_header, encode_context, read_header
from keytrail.kms.hsm_connections import HsmConnections
from keytrail.kms.hsm_session import TokenSession
from keytrail.kms.keys import Key
from keytrail.kms.keystores import CustomKeyStore
from keytrail.kms.store import CustomKeyStoreStore

__all__ = ["HsmCipher"]

_T = TypeVar("_T")


class HsmCipher:
    """The KeyCipher of keys in custom key stores: AES-GCM inside the token."""

    def __init__(self, connections: HsmConnections, stores: CustomKeyStoreStore) -> None:
        self.connections = connections
        self._stores = stores

    async def _store_of(self, key: Key) -> CustomKeyStore | None:
        stores = await self._stores.list_custom_key_stores(key.account, key.region)
        return next((s for s in stores if s.store_id == key.custom_key_store_id), None)

    async def _in_store(self, key: Key, work: Callable[[TokenSession], _T]) -> _T:
        """`work` on the session of the key's store (HsmConnections.run); the AWS error of an HSM
        that cannot serve is KMSInvalidStateException, as AWS answers for keys in custom key stores."""
        seen = self.connections.disconnects(key.custom_key_store_id)  # before the store is read
        return await self.connections.run(await self._store_of(key), _unavailable(key), work, seen)

    async def encrypt(
        self, key: Key, plaintext: bytes, context: Mapping[str, str] | None, algorithm: str
    ) -> tuple[bytes, str | None]:
        material = key.current_material
        if material is None or material.handle is None:
            raise errors.KMSInvalidStateException(f"{key.arn} is unavailable.")
        material_id, handle, encoded = material.material_id, bytes.fromhex(material.handle), encode_context(context)

        def header(form: int) -> bytes:
            return blob_header(key.account, key.key_id, material_id, form)

        blob = await self._in_store(key, lambda s: s.seal(handle, header, plaintext, encoded))
        return blob, material_id

    async def decrypt(
        self, key: Key, blob: bytes, context: Mapping[str, str] | None, algorithm: str
    ) -> tuple[bytes, str | None]:
        header = read_header(blob)
        material = key.material(header.material_id)
        if material is None or material.handle is None or header.key_id != key.key_id:
            raise errors.InvalidCiphertextException("")
        if header.format not in (FORMAT_V1, FORMAT_V3):  # format 2 needs the secret, which the token keeps
            raise errors.InvalidCiphertextException("")
        handle, encoded = bytes.fromhex(material.handle), encode_context(context)
        # A blob that fails authentication is InvalidCiphertextException from `open`; every other
        # failure is the HSM's, KMSInvalidStateException as AWS answers for keys in custom key stores.
        plaintext = await self._in_store(key, lambda s: s.open(handle, header, encoded))
        return plaintext, material.material_id


def _unavailable(key: Key) -> errors.KmsError:
    return errors.KMSInvalidStateException(f"{key.arn} is unavailable.")
