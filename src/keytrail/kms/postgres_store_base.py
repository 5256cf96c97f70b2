"""What PostgresStore (kms/postgres_store.py) holds and does for each of its parts: its mixins
(kms/postgres_owed_records.py, kms/postgres_sealed_rows.py) are written against this, not against
the store, which they would otherwise import in a cycle.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from keytrail.kms.authentic_docs import Row
from keytrail.kms.owed_records import Owing
from keytrail.kms.postgres_ledger import LedgerWriter
from keytrail.kms.resealing import DocumentTable
from keytrail.kms.sealing import RootKey
from keytrail.kms.tampering import Tampering

__all__ = ["PostgresStoreBase"]


class PostgresStoreBase(Protocol):
    """The store's root key, owed records and refused rows' count (`tampering`), and its reads, its
    documents and its ledgered write (PostgresStore sets and defines them)."""

    _root: RootKey
    _owing: Owing
    tampering: Tampering

    def _doc(self, table: DocumentTable, row: Row, body: str) -> str:
        """The document to write in `row` of `table`: `body` with its MAC."""
        ...

    def _body(self, table: DocumentTable, found: Any) -> str:
        """The verified body of a fetched row; KMSInternalException, logged, if it does not verify."""
        ...

    def _verified_bodies(self, table: DocumentTable, rows: list[Any]) -> list[str]:
        """The bodies of the rows that verify; a refused row is logged the first time only."""
        ...

    async def _rows(self, sql: str, *args: Any) -> list[Any]:
        """The rows `sql` fetches, over the task's pinned connection or a pooled one."""
        ...

    def _ledgered(self) -> AbstractAsyncContextManager[LedgerWriter]:
        """A write transaction, with the records the task's call owes, and the ledger written."""
        ...
