"""SqliteStore's audit records owed (the transactional outbox, kms/owed_records.py): the
`owed_records` rows each write carries with the record of the call a task is serving, read back
from the file by a tick and deleted once the spool took them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from keytrail.kms.authentic_docs import DocumentRefused, verify
from keytrail.kms.model import CallRecord
from keytrail.kms.owed_records import record_from_doc, record_to_doc
from keytrail.kms.resealing import OWED_RECORDS
from keytrail.kms.sqlite_ledger import Put, delete_row
from keytrail.kms.sqlite_store_base import SqliteStoreBase
from keytrail.kms.store import OwedWrites

__all__ = ["SqliteOwedRecords"]


class SqliteOwedRecords(SqliteStoreBase):
    """The owed records part of SqliteStore's methods (a mixin of it)."""

    def _owed_put(self, record: CallRecord) -> Put:
        row = (record.event_id,)
        return Put(OWED_RECORDS, row, (*row, self._doc(OWED_RECORDS, row, record_to_doc(record))))

    def owing(self, record: Callable[[], CallRecord]) -> AbstractAsyncContextManager[OwedWrites]:
        return self._owing.owing(record)

    async def owe_record(self, record: CallRecord) -> None:
        self._write([self._owed_put(record)])

    async def owed_records(self) -> list[CallRecord]:
        """Every owed record that verifies, oldest first (read from the file: a tick's read, rare)."""
        rows = self._db.execute("SELECT event_id, doc FROM owed_records").fetchall()
        records = [record for row in rows if (record := self._owed_row(*row)) is not None]
        return sorted(records, key=lambda r: (r.event_time, r.event_id))

    async def owed_record(self, event_id: str) -> CallRecord | None:
        rows = self._db.execute("SELECT event_id, doc FROM owed_records WHERE event_id = ?", (event_id,)).fetchall()
        return self._owed_row(*rows[0]) if rows else None

    async def owed_within_grace(self) -> set[str]:
        return set()  # the file's only writer: a record owed and not in flight here is abandoned

    def _owed_row(self, event_id: str, doc: str) -> CallRecord | None:
        try:
            return record_from_doc(verify(self._root, OWED_RECORDS.name, (event_id,), doc))
        except DocumentRefused as refusal:  # logged once (as the store opened, if it was there then)
            if not self._refused.within(OWED_RECORDS.name, (event_id,)):
                self.tampering.refused(refusal)
                self._refused.add(refusal)
            return None

    async def settle_record(self, event_id: str) -> None:
        self._write([delete_row(OWED_RECORDS, (event_id,))])
