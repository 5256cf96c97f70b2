"""PostgresStore's import parameters and custom key stores, the rows whose secrets (the import's
private key, the key store's password) are sealed under the root key.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from keytrail.kms.importing import ImportParameters
from keytrail.kms.keystores import CustomKeyStore
from keytrail.kms.postgres_documents import UPSERT_IMPORT, UPSERT_STORE
from keytrail.kms.postgres_store_base import PostgresStoreBase
from keytrail.kms.resealing import CUSTOM_KEY_STORES, IMPORT_PARAMETERS
from keytrail.kms.sealed_docs import (
    custom_key_store_from_doc,
    custom_key_store_to_doc,
    import_parameters_from_doc,
    import_parameters_to_doc,
)

__all__ = ["PostgresSealedRows"]


class PostgresSealedRows(PostgresStoreBase):
    """The import parameters and custom key stores part of PostgresStore's methods (a mixin of it)."""

    async def put_import_parameters(self, parameters: ImportParameters) -> None:
        doc = self._doc(IMPORT_PARAMETERS, (parameters.token_id,), import_parameters_to_doc(parameters, self._root))
        stale = (parameters.valid_to - timedelta(days=2)).isoformat()  # tokens live 24 hours
        async with self._ledgered() as writer:
            await writer.delete(IMPORT_PARAMETERS, "valid_to < $1", (stale,))
            await writer.put(IMPORT_PARAMETERS, (parameters.token_id,), UPSERT_IMPORT,
                             (parameters.token_id, parameters.valid_to.isoformat(), doc))

    async def delete_expired_import_parameters(self, now: datetime) -> None:
        expired = (now.isoformat(),)
        # Looked for first: a tick with nothing to delete writes nothing (and no ledger entry).
        if await self._rows("SELECT 1 FROM kms_import_parameters WHERE valid_to < $1 LIMIT 1", *expired):
            async with self._ledgered() as writer:
                await writer.delete(IMPORT_PARAMETERS, "valid_to < $1", expired)

    async def get_import_parameters(self, token_id: str) -> ImportParameters | None:
        rows = await self._rows("SELECT token_id, doc FROM kms_import_parameters WHERE token_id=$1", token_id)
        return import_parameters_from_doc(self._body(IMPORT_PARAMETERS, rows[0]), self._root) if rows else None

    async def put_custom_key_store(self, store: CustomKeyStore) -> None:
        row = (store.account, store.region, store.store_id)
        doc = self._doc(CUSTOM_KEY_STORES, row, custom_key_store_to_doc(store, self._root))
        async with self._ledgered() as writer:
            await writer.put(CUSTOM_KEY_STORES, row, UPSERT_STORE, (*row, store.creation_date.isoformat(), doc))

    async def delete_custom_key_store(self, store: CustomKeyStore) -> None:
        async with self._ledgered() as writer:
            await writer.delete_row(CUSTOM_KEY_STORES, (store.account, store.region, store.store_id))

    async def list_custom_key_stores(self, account: str, region: str) -> list[CustomKeyStore]:
        rows = await self._rows(
            "SELECT account, region, store_id, doc FROM kms_custom_key_stores WHERE account=$1 AND region=$2 "
            "ORDER BY created, store_id", account, region,
        )
        return [custom_key_store_from_doc(self._body(CUSTOM_KEY_STORES, row), self._root) for row in rows]

    async def all_custom_key_stores(self) -> list[CustomKeyStore]:
        """Every custom key store that verifies, whichever account and Region: a refused one is logged."""
        rows = await self._rows("SELECT account, region, store_id, doc FROM kms_custom_key_stores")
        return [custom_key_store_from_doc(body, self._root) for body in self._verified_bodies(CUSTOM_KEY_STORES, rows)]
