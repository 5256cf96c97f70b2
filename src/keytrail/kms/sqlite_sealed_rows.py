"""SqliteStore's import parameters and custom key stores, the rows whose secrets (the import's
private key, the key store's password) are sealed under the root key: import parameters read
from the file as a call needs them, custom key stores from memory, like keys.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from keytrail.kms.authentic_docs import DocumentRefused, verify
from keytrail.kms.importing import ImportParameters
from keytrail.kms.keystores import CustomKeyStore
from keytrail.kms.resealing import CUSTOM_KEY_STORES, IMPORT_PARAMETERS
from keytrail.kms.sealed_docs import custom_key_store_to_doc, import_parameters_from_doc, import_parameters_to_doc
from keytrail.kms.sqlite_ledger import Delete, Put, delete_row
from keytrail.kms.sqlite_store_base import SqliteStoreBase

__all__ = ["SqliteSealedRows"]


class SqliteSealedRows(SqliteStoreBase):
    """The import parameters and custom key stores part of SqliteStore's methods (a mixin of it)."""

    async def put_import_parameters(self, parameters: ImportParameters) -> None:
        # Tokens live 24 hours; rows whose token expired long ago are dropped on the way.
        stale = (parameters.valid_to - timedelta(days=2)).isoformat()
        row = (parameters.token_id,)
        doc = self._doc(IMPORT_PARAMETERS, row, import_parameters_to_doc(parameters, self._root))
        self._write([Delete(IMPORT_PARAMETERS, "valid_to < ?", (stale,)),
                     Put(IMPORT_PARAMETERS, row, (*row, parameters.valid_to.isoformat(), doc))])

    async def delete_expired_import_parameters(self, now: datetime) -> None:
        expired = (now.isoformat(),)
        # Looked for first: a tick with nothing to delete writes nothing (and no ledger entry).
        if self._db.execute("SELECT 1 FROM import_parameters WHERE valid_to < ? LIMIT 1", expired).fetchone():
            self._write([Delete(IMPORT_PARAMETERS, "valid_to < ?", expired)])
            self._erase_freed()  # the wrapping keys gone from the files too, as deleted key material

    async def get_import_parameters(self, token_id: str) -> ImportParameters | None:
        found = self._db.execute("SELECT doc FROM import_parameters WHERE token_id=?", (token_id,)).fetchone()
        if found is None:
            return None
        try:
            body = verify(self._root, IMPORT_PARAMETERS.name, (token_id,), found[0])
        except DocumentRefused as refusal:
            raise self.tampering.refused(refusal) from None
        return import_parameters_from_doc(body, self._root)

    async def put_custom_key_store(self, store: CustomKeyStore) -> None:
        row = (store.account, store.region, store.store_id)
        self._write([Put(CUSTOM_KEY_STORES, row, (*row, self._doc(CUSTOM_KEY_STORES, row,
                                                                  custom_key_store_to_doc(store, self._root))))])
        self._custom_key_stores.setdefault((store.account, store.region), {})[store.store_id] = store
        self._refused.forget(CUSTOM_KEY_STORES.name, row)

    async def delete_custom_key_store(self, store: CustomKeyStore) -> None:
        self._write([delete_row(CUSTOM_KEY_STORES, (store.account, store.region, store.store_id))])
        self._custom_key_stores.get((store.account, store.region), {}).pop(store.store_id, None)
        self._refused.forget(CUSTOM_KEY_STORES.name, (store.account, store.region, store.store_id))

    async def list_custom_key_stores(self, account: str, region: str) -> list[CustomKeyStore]:
        self._refused.refuse_within(CUSTOM_KEY_STORES.name, (account, region))
        stores = self._custom_key_stores.get((account, region), {}).values()
        return sorted(stores, key=lambda s: (s.creation_date, s.store_id))

    async def all_custom_key_stores(self) -> list[CustomKeyStore]:
        """Every custom key store that verified, whichever account and Region: a refused one is in the log."""
        return [store for stores in self._custom_key_stores.values() for store in stores.values()]
