"""Opening a key store: its rows checked against its ledger (kms/store_ledger.py), or a store of a
version before given its ledger, and its MACs (kms/authentic_docs.py) if it had none yet.

Such a store is upgraded as it is opened, in one transaction. Which store counts as old cannot
rest on a marker in the store, which whoever can write the store could delete or roll back to
forge rows and have them upgraded (a downgrade). It rests on what no one can make without the
root key:
- a store without a ledger is old only if no document verifies under the MAC of today, which
  binds that the store has a ledger: deleting the ledger row of a store that had one is refused;
- a store without MACs is old only if every sealed value opens under the bindings of then.
  Values sealed since end their binding with AUTHENTICATED_SEAL, so a store whose MACs were
  stripped shows it by its key material, and is refused too.
What stays undetected: a store replaced whole by an older copy of itself (a backup restored), and
a store emptied of every row, its ledger's too, which is taken for a new one.
"""

from __future__ import annotations

from collections.abc import Sequence

from keytrail.kms.authentic_docs import DocumentRefused, Row, authenticate, carries_mac, verify
from keytrail.kms.resealing import DocumentTable
from keytrail.kms.sealing import RootKey, SealError
from keytrail.kms.store_ledger import Ledger, LedgerMismatch

__all__ = ["Document", "opening_plan"]

Document = tuple[DocumentTable, Row, str]  # a table, a row's primary key, the row's doc column


class _StrippedStore(Exception):
    """A document without a MAC holds a value sealed since documents carry one."""


def opening_plan(documents: Sequence[Document], ledger: str | None, root: RootKey) -> tuple[list[Document], str | None]:
    """What to write as a store holding `documents` and the ledger document `ledger` opens: the
    documents to write over (an old store's), and the ledger document to write (None: the store
    is as its ledger records, nothing to write). LedgerMismatch when the rows are not the ones the
    ledger records, or the ledger row is gone; SealError when `root` opens nothing of the store."""
    if ledger is not None:
        _check(documents, ledger, root)
        return [], None
    upgrades = _upgrade_plan(documents, root)
    upgraded = {(table.name, row): text for table, row, text in upgrades}
    after = [(table.name, row, upgraded.get((table.name, row), text)) for table, row, text in documents]
    return upgrades, Ledger.of(root, after).to_doc(root)


def _check(documents: Sequence[Document], ledger: str, root: RootKey) -> None:
    try:
        recorded = Ledger.from_doc(root, ledger)
    except DocumentRefused:
        if not documents:  # no row to try the root key on: the ledger's is all the store shows
            raise LedgerMismatch("the ledger row does not verify under the root key, and the store holds no other "
                                 "row to tell an edited ledger from a root key that is not the store's") from None
        _check_root_key(documents, root, ledgered=True)  # another root key opens no row either
        raise LedgerMismatch("the ledger row does not verify under the root key") from None
    recorded.check(Ledger.of(root, ((table.name, row, text) for table, row, text in documents)))


def _upgrade_plan(documents: Sequence[Document], root: RootKey) -> list[Document]:
    """The documents of a store without a ledger, with today's MAC: every one that verifies under
    the MAC of the version before (the others stay as they are, refused), or, in a store from
    before MACs, every one given today's seal bindings and its MAC."""
    if not documents:
        return []
    if not any(carries_mac(text) for _, _, text in documents):
        return _authenticated(documents, root)
    if any(_body(root, table, row, text, ledgered=True) is not None for table, row, text in documents):
        raise LedgerMismatch("the ledger row is missing, though the documents were written with one (deleted)")
    _check_root_key(documents, root, ledgered=False)
    return [(table, row, authenticate(root, table.name, row, body)) for table, row, text in documents
            if (body := _body(root, table, row, text, ledgered=False)) is not None]


def _authenticated(documents: Sequence[Document], root: RootKey) -> list[Document]:
    try:
        return [(table, row, authenticate(root, table.name, row, _upgraded(table, row, text, root)))
                for table, row, text in documents]
    except _StrippedStore as exc:
        raise LedgerMismatch(f"{exc}, though no document carries a MAC: the MACs were stripped") from None


def _upgraded(table: DocumentTable, row: Row, text: str, root: RootKey) -> str:
    try:
        return table.upgrade(text, root)
    except SealError:
        try:
            table.reseal(text, root, root)  # opens under today's bindings: sealed since, MAC stripped
        except SealError:
            raise  # under neither: another root key, or a damaged value
        raise _StrippedStore(f"the {table.name} document of row {'/'.join(row)} holds a value sealed "
                             "since documents carry a MAC") from None


def _body(root: RootKey, table: DocumentTable, row: Row, text: str, *, ledgered: bool) -> str | None:
    try:
        return verify(root, table.name, row, text, ledgered=ledgered)
    except DocumentRefused:
        return None


def _check_root_key(documents: Sequence[Document], root: RootKey, *, ledgered: bool) -> None:
    """SealError unless some document verifies under `root`: with another root key every one fails,
    which is not tampering with each."""
    if not any(_body(root, table, row, text, ledgered=ledgered) is not None for table, row, text in documents):
        raise SealError("cannot unseal nor verify any document of the key store")
