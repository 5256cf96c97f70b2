"""PostgresStore's audit records owed (the transactional outbox, kms/owed_records.py): the
`kms_owed_records` rows each write carries with the record of the call a task is serving, read
back by a tick (any node's) and deleted once the spool took them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from keytrail.kms.model import CallRecord
from keytrail.kms.owed_records import record_from_doc, record_to_doc
from keytrail.kms.postgres_documents import UPSERT_OWED
from keytrail.kms.postgres_ledger import LedgerWriter
from keytrail.kms.postgres_store_base import PostgresStoreBase
from keytrail.kms.resealing import OWED_RECORDS
from keytrail.kms.store import OwedWrites

__all__ = ["PostgresOwedRecords"]


class PostgresOwedRecords(PostgresStoreBase):
    """The owed records part of PostgresStore's methods (a mixin of it)."""

    async def _put_owed(self, writer: LedgerWriter, record: CallRecord) -> None:
        row = (record.event_id,)
        await writer.put(OWED_RECORDS, row, UPSERT_OWED, (*row, self._doc(OWED_RECORDS, row, record_to_doc(record))))

    def owing(self, record: Callable[[], CallRecord]) -> AbstractAsyncContextManager[OwedWrites]:
        return self._owing.owing(record)

    async def owe_record(self, record: CallRecord) -> None:
        async with self._ledgered() as writer:
            await self._put_owed(writer, record)

    async def owed_records(self) -> list[CallRecord]:
        """Every owed record that verifies, oldest first: a refused row is logged (once), never recorded."""
        rows = await self._rows("SELECT event_id, doc FROM kms_owed_records")
        records = [record_from_doc(body) for body in self._verified_bodies(OWED_RECORDS, rows)]
        return sorted(records, key=lambda r: (r.event_time, r.event_id))

    async def owed_record(self, event_id: str) -> CallRecord | None:
        rows = await self._rows("SELECT event_id, doc FROM kms_owed_records WHERE event_id = $1", event_id)
        return next((record_from_doc(body) for body in self._verified_bodies(OWED_RECORDS, rows)), None)

    async def settle_record(self, event_id: str) -> None:
        async with self._ledgered() as writer:
            await writer.delete_row(OWED_RECORDS, (event_id,))
