"""What SqliteStore (kms/sqlite_store.py) holds and does for each of its parts: its mixins
(kms/sqlite_owed_records.py, kms/sqlite_sealed_rows.py) are written against this, not against the
store, which they would otherwise import in a cycle.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Protocol

from keytrail.kms.authentic_docs import RefusedRows, Row
from keytrail.kms.keystores import CustomKeyStore
from keytrail.kms.owed_records import Owing
from keytrail.kms.resealing import DocumentTable
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_ledger import Change
from keytrail.kms.tampering import Tampering

__all__ = ["SqliteStoreBase"]


class SqliteStoreBase(Protocol):
    """The store's connection, root key, refused rows (and their count, `tampering`), owed records
    and custom key stores in memory, its two ways to write, and the erasing of what a deletion
    freed (SqliteStore sets and defines them)."""

    _db: sqlite3.Connection
    _root: RootKey
    _refused: RefusedRows
    tampering: Tampering
    _owing: Owing
    _custom_key_stores: dict[tuple[str, str], dict[str, CustomKeyStore]]

    def _doc(self, table: DocumentTable, row: Row, body: str) -> str:
        """The document to write in `row` of `table`: `body` with its MAC."""
        ...

    def _write(self, changes: Sequence[Change]) -> None:
        """Make `changes` in one transaction, with the records the task's call owes."""
        ...

    def _erase_freed(self) -> None:
        """Empty into keys.db what a deletion freed (secure_delete zeroed it): now, or once the
        reads of another process that keep it from completing end."""
        ...
