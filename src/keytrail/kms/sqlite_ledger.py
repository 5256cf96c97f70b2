"""The SQLite store's writes, each in one transaction with the ledger row it changes
(kms/store_ledger.py): the term of every row written or deleted leaves the ledger, the new row's
enters it, and the ledger row is written before the commit."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from keytrail.kms.authentic_docs import HEAD_CHARS, Row
from keytrail.kms.resealing import DOCUMENT_TABLES, DocumentTable
from keytrail.kms.sealing import RootKey
from keytrail.kms.store_ledger import Ledger
from keytrail.kms.store_upgrade import Document

__all__ = [
    "LEDGER_SCHEMA", "Change", "Delete", "Put", "apply", "delete_row", "each_document", "read_ledger", "read_store",
    "rewrite",
]

LEDGER_SCHEMA = "CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);"


@dataclass(frozen=True, slots=True)
class Put:
    """Write `row` of `table`: `values` are the table's columns, the document last."""

    table: DocumentTable
    row: Row
    values: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete the rows of `table` that `where` (SQL with ? placeholders for `args`) selects."""

    table: DocumentTable
    where: str
    args: tuple[object, ...]


Change = Put | Delete


def _key_columns(table: DocumentTable) -> str:
    return " AND ".join(f"{column}=?" for column in table.primary_key)


def delete_row(table: DocumentTable, row: Row) -> Delete:
    return Delete(table, _key_columns(table), row)


def read_store(db: sqlite3.Connection) -> tuple[list[Document], str | None]:
    """Every document and the ledger document, in one read transaction: another process writing
    meanwhile (serve, while `keytrail analyze` opens the store) cannot show it half a write."""
    with db:
        db.execute("BEGIN")
        documents = list(each_document(db))
        ledger = read_ledger(db)
    return documents, ledger


def read_ledger(db: sqlite3.Connection) -> str | None:
    """The ledger document, None if there is no ledger row."""
    found = db.execute("SELECT doc FROM ledger WHERE id = 1").fetchone()
    return None if found is None else found[0]


def each_document(db: sqlite3.Connection, *, heads_only: bool = False) -> Iterator[Document]:
    """Every document of every table, one at a time; with `heads_only`, only the part a ledger
    term covers (`head`), cut by SQLite."""
    doc = f"substr(doc, 1, {HEAD_CHARS})" if heads_only else "doc"
    for table in DOCUMENT_TABLES:
        for found in db.execute(f"SELECT {', '.join(table.primary_key)}, {doc} FROM {table.name}"):
            yield table, tuple(found[:-1]), found[-1]


def apply(db: sqlite3.Connection, root: RootKey, ledger: Ledger, changes: Sequence[Change]) -> Ledger:
    """Make `changes` in the transaction `db` is in, and write the ledger they leave; that ledger.
    The rows replaced or deleted are read as they are in the file: one changed there under the
    running node (not by it) takes its own term out of the ledger, not the term the ledger holds,
    so the ledger stops matching and the next open refuses the store, as tampering should."""
    after = ledger.copy()
    for change in changes:
        name = change.table.name
        if isinstance(change, Put):
            found = db.execute(f"SELECT doc FROM {name} WHERE {_key_columns(change.table)}", change.row).fetchone()
            marks = ", ".join("?" * len(change.values))
            db.execute(f"INSERT OR REPLACE INTO {name} VALUES ({marks})", change.values)
            after.replace(root, name, change.row, None if found is None else found[0], str(change.values[-1]))
            continue
        columns = ", ".join(change.table.primary_key)
        for *row, doc in db.execute(f"DELETE FROM {name} WHERE {change.where} RETURNING {columns}, doc",
                                    change.args).fetchall():
            after.remove(root, name, tuple(row), doc)
    db.execute("INSERT OR REPLACE INTO ledger VALUES (1, ?)", (after.to_doc(root),))
    return after


def rewrite(db: sqlite3.Connection, documents: Sequence[Document], ledger: str) -> None:
    """Write `documents` over their rows and `ledger` as the ledger row, in the transaction `db` is
    in (an upgrade, a root key rotation: every row at once)."""
    for table, row, text in documents:
        db.execute(f"UPDATE {table.name} SET doc=? WHERE {_key_columns(table)}", (text, *row))
    db.execute("INSERT OR REPLACE INTO ledger VALUES (1, ?)", (ledger,))
