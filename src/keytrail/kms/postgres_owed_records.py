"""PostgresStore's audit records owed (the transactional outbox, kms/owed_records.py): the
`kms_owed_records` rows each write carries with the record of the call a task is serving, read
back by a tick (any node's) and deleted once the spool took them. Each row notes when it was last
written by the database's clock (`written_at`), from which a tick counts the grace it leaves to the
call that wrote it: the nodes' own clocks may disagree, or be moved (--dev-clock).
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

__all__ = ["OWED_GRACE_SECONDS", "PostgresOwedRecords"]

# Seconds a tick leaves a record owed by a call to that call: another node's call in flight records
# it itself (a tick taking it up then records it twice, with one eventID). Well above a call's
# longest wait on the store (a statement, a key's lock: DEFAULT_TIMEOUT each, kms/postgres_store.py).
OWED_GRACE_SECONDS = 120.0
# Counted by the database's clock at this statement, from the row's last write (by its clock too).
# `written_at` is not authenticated as the row's document is: a row dated ahead of the clock (edited,
# or the database's clock set back since) is past its grace, or such an edit would hold it back for good.
_WITHIN_GRACE = """SELECT event_id FROM kms_owed_records
    WHERE written_at BETWEEN clock_timestamp() - make_interval(secs => $1) AND clock_timestamp()"""


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

    async def owed_within_grace(self) -> set[str]:
        """The rows written less than OWED_GRACE_SECONDS ago by the database's clock (the one every
        node shares: a node's own may be moved on, by --dev-clock or by hand)."""
        rows = await self._rows(_WITHIN_GRACE, OWED_GRACE_SECONDS)
        return {row[0] for row in rows}

    async def settle_record(self, event_id: str) -> None:
        async with self._ledgered() as writer:
            await writer.delete_row(OWED_RECORDS, (event_id,))
