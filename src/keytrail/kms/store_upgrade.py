"""Opening a key store written before its documents carried a MAC (kms/authentic_docs.py).

Such a store is upgraded as it is opened: every document is given today's seal bindings and its
MAC, in one transaction. Which store counts as old cannot rest on a marker in the store, which
whoever can write the store could delete or roll back to forge rows and have them upgraded (a
downgrade). It rests on the sealed values, which no one can make without the root key: a store is
old only when no document carries a MAC and every sealed value opens under the bindings of then.
Values sealed since end their binding with AUTHENTICATED_SEAL, so a store whose MACs were
stripped shows it by its key material (its documents without a MAC are then refused, not upgraded).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from keytrail.kms.authentic_docs import DocumentRefused, Row, authenticate, carries_mac, verify
from keytrail.kms.resealing import DocumentTable
from keytrail.kms.sealing import RootKey, SealError

__all__ = ["Document", "upgrade_plan"]

log = logging.getLogger(__name__)

Document = tuple[DocumentTable, Row, str]  # a table, a row's primary key, the row's doc column


class _StrippedStore(Exception):
    """A document without a MAC holds a value sealed since documents carry one."""


def upgrade_plan(documents: Sequence[Document], root: RootKey) -> list[Document]:
    """The authenticated documents to write over an old store's (every one), or none for a store
    already authenticated. SealError when `root` opens nothing the store holds."""
    if any(carries_mac(text) for _, _, text in documents):
        _check_root_key(documents, root)
        return []
    try:
        return [(table, row, authenticate(root, table.name, row, _upgraded(table, row, text, root)))
                for table, row, text in documents]
    except _StrippedStore as exc:
        log.error("key store: %s, though no document carries a MAC: the MACs were stripped; every document "
                  "without one is refused (restore the store from a backup)", exc)
        return []


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


def _check_root_key(documents: Sequence[Document], root: RootKey) -> None:
    """SealError unless some document verifies under `root`: with another root key every one fails,
    which is not tampering with each."""
    for table, row, text in documents:
        try:
            verify(root, table.name, row, text)
            return
        except DocumentRefused:
            continue
    raise SealError("cannot unseal nor verify any document of the key store")
