"""The PostgreSQL store's documents as a whole: read for an upgrade or a root key rotation, and
the root key check in `kms_root_key` that every node opening the store must open."""

from __future__ import annotations

from typing import Any

from keytrail.kms.resealing import DOCUMENT_TABLES, DocumentTable, reauthenticated
from keytrail.kms.sealing import AUTHENTICATED_SEAL, RootKey, SealError
from keytrail.kms.store_upgrade import Document, upgrade_plan

__all__ = ["open_documents", "reauthenticate"]

# An empty value sealed under the root key of the first node: every later node must open it.
_ROOT_KEY_CHECK = "root-key-check"
# The same, sealed once the store's documents are authenticated (kms/store_upgrade.py): a node
# opening such a store skips the upgrade's reading of every row. Deleting it, or putting back the
# value of before, only has that reading done again, which finds the store authenticated.
_AUTHENTICATED_CHECK = _ROOT_KEY_CHECK + AUTHENTICATED_SEAL


def _update(table: DocumentTable) -> str:
    where = " AND ".join(f"{column}=${n}" for n, column in enumerate(table.primary_key, 2))
    return f"UPDATE kms_{table.name} SET doc=$1 WHERE {where}"


async def _documents(connection: Any) -> list[Document]:
    found: list[Document] = []
    for table in DOCUMENT_TABLES:
        rows = await connection.fetch(f"SELECT {', '.join(table.primary_key)}, doc FROM kms_{table.name}")
        found += [(table, tuple(row[column] for column in table.primary_key), row["doc"]) for row in rows]
    return found


async def open_documents(connection: Any, root: RootKey) -> None:
    """SealError unless `root` is the root key the store is sealed and authenticated under (a node
    with another one would fail every call on the others' keys, and seal its own where no other
    node can open them); a store of a version before, whose documents carry no MAC, is upgraded
    (kms/store_upgrade.py). Under the schema lock: nodes starting together do this one by one."""
    check = await connection.fetchval("SELECT sealed FROM kms_root_key WHERE id = 1")
    if check is not None and _opens(root, check, _AUTHENTICATED_CHECK):
        return
    if check is not None:
        root.unseal_text(check, _ROOT_KEY_CHECK)  # SealError: another root key
    for table, row, text in upgrade_plan(await _documents(connection), root):
        await connection.execute(_update(table), text, *row)
    await connection.execute("INSERT INTO kms_root_key VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET sealed = $1",
                             root.seal_text(b"", _AUTHENTICATED_CHECK))


def _opens(root: RootKey, sealed: str, binding: str) -> bool:
    try:
        root.unseal_text(sealed, binding)
    except SealError:
        return False
    return True


async def reauthenticate(connection: Any, old: RootKey, new: RootKey) -> int:
    """Every document verified under `old`, sealed and authenticated again under `new`, and the
    root key check sealed under `new`; the number of documents (`PostgresStore.reseal`)."""
    documents = await _documents(connection)
    for table, row, text in documents:
        await connection.execute(_update(table), reauthenticated(table, row, text, old, new), *row)
    await connection.execute("UPDATE kms_root_key SET sealed=$1 WHERE id=1", new.seal_text(b"", _AUTHENTICATED_CHECK))
    return len(documents)
