"""PostgresStore's `kms_key_last_use`: each key's latest successful cryptographic use by any node
sharing the store (kms/key_last_use.py), one row per key, deleted with the key.

Each row is a document authenticated and counted in the ledger like the store's others
(kms/authentic_docs.py, kms/store_ledger.py), so that whoever can write the database cannot make
a used key look unused: a row edited or copied from another key is refused on each read (the call
fails with KMSInternalException, never answers "unused"), and a row deleted or put back to an
earlier use stops the store at its next ledger check, as any row does.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from keytrail.kms.authentic_docs import DocumentRefused, Row, verify
from keytrail.kms.key_last_use import KeyUse
from keytrail.kms.postgres_ledger import Write
from keytrail.kms.postgres_store_base import PostgresStoreBase
from keytrail.kms.resealing import KEY_LAST_USE

__all__ = ["PostgresLastUse"]

log = logging.getLogger(__name__)

_UPSERT = """INSERT INTO kms_key_last_use VALUES ($1, $2, $3, $4)
    ON CONFLICT (account, region, key_id) DO UPDATE SET doc = EXCLUDED.doc"""
# The keys of a batch of uses: whether each is still in the store, and its stored use (NULL: none).
_STORED = """SELECT n.account, n.region, n.key_id, k.key_id IS NOT NULL AS kept, u.doc
    FROM unnest($1::text[], $2::text[], $3::text[]) AS n(account, region, key_id)
    LEFT JOIN kms_keys AS k ON (k.account, k.region, k.key_id) = (n.account, n.region, n.key_id)
    LEFT JOIN kms_key_last_use AS u ON (u.account, u.region, u.key_id) = (n.account, n.region, n.key_id)"""


def use_to_doc(use: KeyUse) -> str:
    return json.dumps({"keyArn": use.key_arn, "operation": use.operation, "timestamp": use.timestamp.isoformat(),
                       "eventId": use.event_id, "requestId": use.request_id, "principalArn": use.principal_arn})


def use_from_doc(body: str) -> KeyUse:
    doc = json.loads(body)
    return KeyUse(doc["keyArn"], doc["operation"], datetime.fromisoformat(doc["timestamp"]), doc["eventId"],
                  doc["requestId"], doc["principalArn"])


class PostgresLastUse(PostgresStoreBase):
    """The last use part of PostgresStore's methods (a mixin of it)."""

    _reported: set[tuple[str, Row]]

    async def put_last_uses(self, uses: list[KeyUse]) -> None:
        """Keep each use later than its key's stored one, in one transaction: under the ledger's
        lock, which every write takes (DeleteKey's too), so the stored uses read are the latest and
        a key deleted meanwhile gets no row again."""
        latest = {use.row: use for use in uses}
        async with self._ledgered() as writer:
            found = await writer.fetch(_STORED, *(list(column) for column in zip(*latest, strict=True)))
            writes = [write for stored in found if (write := self._newer(latest, stored)) is not None]
            await writer.put_many(KEY_LAST_USE, _UPSERT, writes)

    def _newer(self, latest: dict[tuple[str, str, str], KeyUse], stored: Any) -> Write | None:
        """The write of a key's use if it is later than the stored one, None if it is not (or is
        that use: a node shares at each start the uses its consumer counted), or the
        key is gone, or its stored row is refused (kept as it is for the operator to restore: the
        reads of it fail meanwhile; logged the first time only, as the next flush comes within a
        second)."""
        row = (stored["account"], stored["region"], stored["key_id"])
        use, old = latest[row], stored["doc"]
        if not stored["kept"]:
            return None
        if old is not None:
            try:
                kept = use_from_doc(verify(self._root, KEY_LAST_USE.name, row, old))
                if kept.timestamp > use.timestamp or kept == use:
                    return None
            except DocumentRefused as refusal:
                self.tampering.found(refusal)
                if (KEY_LAST_USE.name, row) not in self._reported:
                    self._reported.add((KEY_LAST_USE.name, row))
                    log.error("key store: %s (edited, forged or copied from another row): left as it is, and "
                              "GetKeyLastUsage and kms:TrailingDaysWithoutKeyUsage of the key refused", refusal)
                return None
        return row, old, (*row, self._doc(KEY_LAST_USE, row, use_to_doc(use)))

    async def get_last_use(self, account: str, region: str, key_id: str) -> KeyUse | None:
        rows = await self._rows("SELECT account, region, key_id, doc FROM kms_key_last_use "
                                "WHERE account=$1 AND region=$2 AND key_id=$3", account, region, key_id)
        return use_from_doc(self._body(KEY_LAST_USE, rows[0])) if rows else None
