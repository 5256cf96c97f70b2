"""The key store's ledger: one sealed value that says which rows the store holds, in which version.

Each document's MAC (kms/authentic_docs.py) shows that keytrail wrote it for its row, but not that
it is the row's latest version, nor that no row is missing: whoever can write the store (not the
root key) could put back an older authentic document (a policy from before it was tightened, a
key re-enabled, a revoked grant), delete rows, or insert again a row deleted earlier. The ledger
shows all three. It holds, for the whole store, the XOR of one term per row,

    term = HMAC-SHA256(ledger key, [table, *primary key] "\\n" the document's MAC as written)

(the ledger key derived from the root key for this alone, `RootKey.ledger_term`), and the number
of rows of each table; its own row is a document authenticated like the others. Every write of the
store updates it in the same transaction (the old row's term out, the new one's in), so it always
matches the rows; a store opens (and the PostgreSQL store checks itself every minute) only if the
ledger computed over its rows is the one recorded. A document edited in place under its MAC
keeps its term: the MAC refuses that row on its own, as before (kms/authentic_docs.py).

Why an XOR of keyed MACs: it is independent of the order of rows and updated per row in O(1), and
an attacker cannot compute any term without the root key, so cannot make a set of rows whose XOR
is a recorded ledger value other than a set keytrail itself held (the sums that break an XOR of
unkeyed hashes, Wagner's generalized birthday, need terms one can compute). The same row twice
(SQLite lets NULL into a primary key) cancels its own term, not its count. Only a recorded
ledger value can be put back, with the rows of its time: the whole store rolled back to an older
copy of itself, ledger included, which is what restoring a backup is, and stays undetected.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from keytrail.kms.authentic_docs import Row, authenticate, head, row_binding, verify
from keytrail.kms.resealing import DOCUMENT_TABLES, POSTGRES_TABLES
from keytrail.kms.sealing import RootKey

__all__ = ["LEDGER_ROW", "LEDGER_TABLE", "Entry", "Ledger", "LedgerMismatch", "NewerStore"]

LEDGER_TABLE = "ledger"  # no document table has this name: a ledger never verifies as a row's document
LEDGER_ROW: Row = ("store",)

Entry = tuple[str, Row, str]  # a table's name, a row's primary key, the row's document
_KNOWN_TABLES = frozenset(table.name for table in POSTGRES_TABLES)  # every table this version ledgers


class LedgerMismatch(OSError):
    """The key store's rows are not the ones its ledger records (an OSError: the CLI reports it in
    one line). Names tables and counts, never a document."""

    def __init__(self, detail: str, cause: str = "rows rolled back, deleted or added outside keytrail") -> None:
        super().__init__(f"the key store does not match its ledger ({cause}): {detail}")
        self.detail = detail


class NewerStore(LedgerMismatch):
    """The ledger counts rows of tables this version does not know. Only keytrail, which holds the
    root key, writes a ledger that verifies: a newer version added those tables (as one added
    `key_last_use`), so the store is as it should be, and restoring it would lose every change since."""

    def __init__(self, unknown: dict[str, int]) -> None:
        tables = ", ".join(f"{count} row(s) of the table {table}" for table, count in sorted(unknown.items()))
        super().__init__(f"its ledger counts {tables}, which this version does not know: serve the store with "
                         "that version, or restore the backup taken before the upgrade to go back to this one",
                         "a newer version of keytrail wrote it")


def _term(root: RootKey, table: str, row: Row, text: str) -> int:
    entry = row_binding(table, row) + "\n" + head(text)
    return int.from_bytes(root.ledger_term(entry.encode()), "big")


@dataclass(slots=True)
class Ledger:
    """The XOR of every row's term and the rows of each table."""

    digest: int = 0
    rows: dict[str, int] = field(default_factory=lambda: {table.name: 0 for table in DOCUMENT_TABLES})

    @classmethod
    def of(cls, root: RootKey, entries: Iterable[Entry]) -> Ledger:
        """The ledger of a store holding `entries`."""
        ledger = cls()
        for table, row, text in entries:
            ledger.add(root, table, row, text)
        return ledger

    def add(self, root: RootKey, table: str, row: Row, text: str) -> None:
        self.digest ^= _term(root, table, row, text)
        self.rows[table] = self.rows.get(table, 0) + 1

    def remove(self, root: RootKey, table: str, row: Row, text: str) -> None:
        self.digest ^= _term(root, table, row, text)  # XOR is its own inverse
        self.rows[table] = self.rows.get(table, 0) - 1

    def replace(self, root: RootKey, table: str, row: Row, old: str | None, new: str) -> None:
        """`row` written with `new` over `old` (None: a row that was not there)."""
        if old is not None:
            self.remove(root, table, row, old)
        self.add(root, table, row, new)

    def copy(self) -> Ledger:
        return Ledger(self.digest, dict(self.rows))

    def to_doc(self, root: RootKey) -> str:
        body = json.dumps({"digest": f"{self.digest:064x}", "rows": self.rows}, sort_keys=True)
        return authenticate(root, LEDGER_TABLE, LEDGER_ROW, body)

    @classmethod
    def from_doc(cls, root: RootKey, text: str) -> Ledger:
        """The ledger a document records, once it verifies (DocumentRefused otherwise)."""
        doc = json.loads(verify(root, LEDGER_TABLE, LEDGER_ROW, text))
        return cls(int(doc["digest"], 16), {str(table): int(count) for table, count in doc["rows"].items()})

    def check(self, found: Ledger) -> None:
        """LedgerMismatch unless `found` (computed over the rows) is this recorded ledger."""
        same = hmac.compare_digest(found.digest.to_bytes(32, "big"), self.digest.to_bytes(32, "big"))
        if same and _counted(found.rows) == _counted(self.rows):
            return
        unknown = {table: count for table, count in _counted(self.rows).items() if table not in _KNOWN_TABLES}
        if unknown:
            raise NewerStore(unknown)
        counts = [f"{table} {found.rows.get(table, 0)} row(s), the ledger {self.rows.get(table, 0)}"
                  for table in sorted(set(self.rows) | set(found.rows))
                  if found.rows.get(table, 0) != self.rows.get(table, 0)]
        raise LedgerMismatch("; ".join(counts) if counts else
                             "as many rows as the ledger counts, but not the same ones (a row put back to an "
                             "earlier version of itself, or one deleted and another added)")


def _counted(rows: dict[str, int]) -> dict[str, int]:
    """The tables that hold rows: a table added to the store after a ledger was recorded counts 0
    there, as it does in a ledger computed over an old store's rows."""
    return {table: count for table, count in rows.items() if count}
