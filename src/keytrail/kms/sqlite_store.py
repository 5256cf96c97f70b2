"""The embedded key store: one SQLite file in the data dir, with every row in memory too.

Each change is one SQLite transaction (WAL, synchronous=FULL), so a crash leaves either the old
or the new state, never half of one; it updates the store's ledger in the same transaction
(kms/store_ledger.py, kms/sqlite_ledger.py). Reads come from memory: this node is the file's only
writer. The store opens only if its rows are the ones its ledger records (LedgerMismatch
otherwise: rows rolled back, deleted or added outside keytrail); a keys.db replaced whole by an
older copy of itself, its ledger included, is a backup restored, and is not detected.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from keytrail.kms import errors
from keytrail.kms.authentic_docs import DocumentRefused, RefusedRows, Row, authenticate, verify
from keytrail.kms.codec import (
    alias_from_doc,
    alias_to_doc,
    forget_sealed,
    grant_from_doc,
    grant_to_doc,
    key_from_doc,
    key_to_doc,
)
from keytrail.kms.grants import GrantTerm, filed_terms, request_terms
from keytrail.kms.keys import Key
from keytrail.kms.locks import KeyLocks
from keytrail.kms.owed_records import Owing
from keytrail.kms.resealing import (
    ALIASES,
    CUSTOM_KEY_STORES,
    DOCUMENT_TABLES,
    GRANTS,
    KEYS,
    DocumentTable,
    reauthenticated,
)
from keytrail.kms.sealed_docs import custom_key_store_from_doc
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_ledger import (
    LEDGER_SCHEMA,
    Change,
    Delete,
    Put,
    apply,
    delete_row,
    each_document,
    read_ledger,
    read_store,
    rewrite,
)
from keytrail.kms.sqlite_owed_records import SqliteOwedRecords
from keytrail.kms.sqlite_sealed_rows import SqliteSealedRows
from keytrail.kms.store import Alias, Grant, GrantPosition, KeyPosition, grant_position, key_position
from keytrail.kms.store_ledger import Ledger, LedgerMismatch
from keytrail.kms.store_upgrade import opening_plan
from keytrail.kms.tampering import Tampering
from keytrail.owner_only import make_dirs
from keytrail.read_only_db import connect_read_only, missing_tables_as_empty, sqlite_open_error

__all__ = ["KeyStoreUnreadable", "SqliteStore", "erase_freed"]

log = logging.getLogger(__name__)

# How often serve tries again to empty keys.db's WAL into it after a deletion of material, while
# another process's read keeps it from completing: each try waits for no one (it runs on the event loop).
ERASE_RETRY_SECONDS = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (account TEXT, region TEXT, key_id TEXT, doc TEXT NOT NULL,
    PRIMARY KEY (account, region, key_id));
CREATE TABLE IF NOT EXISTS aliases (account TEXT, region TEXT, name TEXT, key_id TEXT, doc TEXT NOT NULL,
    PRIMARY KEY (account, region, name));
CREATE TABLE IF NOT EXISTS grants (account TEXT, region TEXT, key_id TEXT, grant_id TEXT, doc TEXT NOT NULL,
    PRIMARY KEY (account, region, key_id, grant_id));
CREATE TABLE IF NOT EXISTS import_parameters (token_id TEXT PRIMARY KEY, valid_to TEXT, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS custom_key_stores (account TEXT, region TEXT, store_id TEXT, doc TEXT NOT NULL,
    PRIMARY KEY (account, region, store_id));
CREATE TABLE IF NOT EXISTS owed_records (event_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
""" + LEDGER_SCHEMA

Scope = tuple[str, str]


def _owner_only(path: Path) -> None:
    """keys.db, and the -wal and -shm files beside it that hold the same rows (a crash may have
    left them with the umask's mode), readable and writable by the owner only."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            file.chmod(0o600)


def _connect(path: Path) -> sqlite3.Connection:
    make_dirs(path.parent)
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def _drops_material(before: Key | None, after: Key) -> bool:
    """Whether writing `after` over `before` deletes a material version's secret."""
    if before is None:
        return False
    kept = {m.material_id: m.secret for m in after.materials}
    return any(kept.get(m.material_id) != m.secret for m in before.materials)


def _checkpointed(db: sqlite3.Connection) -> bool:
    """Empty the WAL into the database file and truncate it; whether that completed. It does not
    (`busy` 1, SQLite's wal_checkpoint) while another connection reads a snapshot older than the
    WAL's last frame, or reads from the WAL at all: the pages those frames replace keep their old
    bytes, or the WAL its frames, until the read ends; the busy handler waits that long at most."""
    busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return bool(busy == 0)


def erase_freed(path: Path, wait: float) -> bool:
    """Empty the WAL of the store at `path` into it, waiting up to `wait` seconds for other
    processes' reads of it to end: whether keys.db and its WAL now hold only what the rows do
    (`keytrail root-key rotate`, serve stopped: its old sealed values gone from the files)."""
    db = sqlite3.connect(path, timeout=wait, isolation_level=None)
    try:
        return _checkpointed(db)
    finally:
        db.close()


def _file_identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


class KeyStoreUnreadable(OSError):
    """keys.db is not a database SQLite can read (an OSError: the CLI reports it in one line)."""


def _open_error(path: Path, exc: sqlite3.Error) -> OSError:
    damaged = KeyStoreUnreadable(f"the key store {path} cannot be read ({exc}): restore it from a backup")
    return sqlite_open_error(exc, f"the key store {path}", damaged)


class SqliteStore(SqliteOwedRecords, SqliteSealedRows):
    """Keys, aliases and grants in `<data-dir>/keys.db`, material sealed under the root key; its
    import parameters and custom key stores (SqliteSealedRows) and owed audit records
    (SqliteOwedRecords) are there too. What those parts share of it is SqliteStoreBase's."""


    def __init__(self, path: Path, root: RootKey, *, upgrade: bool = True) -> None:
        """`upgrade=False`: a store of a version before is upgraded in memory only, for a reader
        (`keytrail analyze`) that may run beside a node still of that version: written, the upgrade
        would give the file a ledger that the node's next writes leave behind, and the new version
        would refuse the store at its start. Nor is the file written at all, or created: it is
        opened read-only, so the reader works on a data dir it cannot write (a read-only copy)."""
        try:
            self._db = _connect(path) if upgrade else connect_read_only(path)
        except sqlite3.Error as exc:  # a directory in its place, or (read-only, as it reads) not a database
            raise _open_error(path, exc) from None
        self._path, self._root = path, root
        self._keys: dict[Scope, dict[str, Key]] = {}
        # Each scope's key positions in ListKeys' order, sorted at its first page, then kept in order
        # as keys come and go: sorting 100,000 keys for every page took ≈ 50 ms a ListKeys call, whatever
        # its Limit, and sorting them again after each new key as much for a page after a CreateKey.
        self._key_order: dict[Scope, list[KeyPosition]] = {}
        self._aliases: dict[Scope, dict[str, Alias]] = {}
        # Each scope's alias names in ListAliases' order, sorted at its first page, then kept in order
        # as aliases come and go, and each key's names: a page of ListAliases sorted every alias of
        # the account and Region, and read them all for a KeyId's few.
        self._alias_order: dict[Scope, list[str]] = {}
        self._aliases_of_key: dict[tuple[str, str, str], set[str]] = {}
        self._grants: dict[tuple[str, str, str], dict[str, Grant]] = {}
        # Each key's grant positions in ListGrants' order, sorted at its first listing, then kept in
        # order as grants come and go: 50,000 grants, AWS's quota, took ≈ 20 ms to sort, and sorting
        # them for every page made each ListGrants call cost as much whatever its Limit.
        self._grant_order: dict[tuple[str, str, str], list[GrantPosition]] = {}
        # Each key's grants by grantee: every call on a key asks for the caller's (`grants_to`), and
        # filtering a copy of all of them cost ≈ 12 ms a call at 47,000 grants (a Decrypt 7x slower).
        self._grants_by_grantee: dict[tuple[str, str, str], dict[str, dict[str, Grant]]] = {}
        # Each key's grants by the terms they are filed under (kms/grants.py: `grant_terms`): a call
        # weighs only those under its own terms (`grants_allowing`), where weighing all of its
        # caller's took 14-90 ms a call at 20,000 grants to it, each for another encryption context.
        # Filed apart under a term: those that allow alike every request looking it up (`exact_terms`).
        self._grants_by_term: dict[tuple[str, str, str], dict[tuple[GrantTerm, bool], dict[str, Grant]]] = {}
        self._custom_key_stores = {}
        # Rows whose document did not verify as the store opened, by table: the calls that need
        # one fail; nothing of them is in memory.
        self._refused = RefusedRows()
        self.tampering = Tampering(table.name for table in DOCUMENT_TABLES)
        self._locks = KeyLocks()
        self._owing = Owing()
        self._ledger = Ledger()  # the one `_load` reads; each write then keeps it in step
        self._writable = upgrade  # else the file may not hold the documents and ledger that memory does
        self._write_failing = False  # the last write failed: its outage is logged, once
        # Deleted material another process's read keeps in the files: its erase is tried again
        # (`_erase_retry`) until it completes; why it waits is said in the log once (`_erase_waits`).
        self._erase_waits: str | None = None
        self._erase_retry: asyncio.TimerHandle | None = None
        try:
            self._open(upgrade)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise _open_error(path, exc) from None
        except LedgerMismatch as exc:
            self._db.close()
            raise LedgerMismatch(f"{exc.detail}. {path} was changed outside keytrail: restore the whole file from a "
                                 "backup taken while serve was stopped (its ledger is in it), or put its rows back "
                                 "as keytrail left them") from None
        except BaseException:
            # SealError (another root key), a chmod refused: the caller gets no store to close, and
            # the connection would hold keys.db until the refusal's traceback is collected.
            self._db.close()
            raise

    def _open(self, upgrade: bool) -> None:
        if upgrade:
            self._prepare_for_writing()
        else:  # a store of a version before lacks tables of this one: they read as empty
            missing_tables_as_empty(self._db, _SCHEMA)
        self._file = _file_identity(self._path)
        self._load(upgrade)

    def _prepare_for_writing(self) -> None:
        _owner_only(self._path)  # before the journal mode: SQLite makes -wal and -shm with the file's mode
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Deleted or changed rows are zeroed, not left in freed space: a deleted key's sealed
        # material must not stay where the root key still opens it.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(_SCHEMA)

    def _load(self, upgrade: bool) -> None:
        if self._load_ledgered():
            return
        documents, ledger = read_store(self._db)
        # An old store's documents get their MAC, and the store its ledger.
        upgrades, new_ledger = opening_plan(documents, ledger, self._root)
        if new_ledger is not None and upgrade:  # else no write at all: `keytrail analyze` opens a running node's store
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                rewrite(self._db, upgrades, new_ledger)
        self._ledger = Ledger.from_doc(self._root, new_ledger or str(ledger))
        upgraded = {(table.name, row): text for table, row, text in upgrades}
        for table, row, text in documents:
            self._take(table, row, upgraded.get((table.name, row), text))

    def _load_ledgered(self) -> bool:
        """The usual open, of a store whose ledger verifies: in one read transaction, the rows'
        terms are checked against the ledger (LedgerMismatch), then each document is read and
        taken, one at a time. All at once, the documents of 100,000 keys took ≈ 230 MB more at the
        start. False, having taken nothing, for a store without a ledger or whose ledger does not
        verify: `_load` reads that one whole, to upgrade it or to say what is wrong with it."""
        with self._db:
            self._db.execute("BEGIN")
            text = read_ledger(self._db)
            try:
                recorded = None if text is None else Ledger.from_doc(self._root, text)
            except DocumentRefused:
                recorded = None
            if recorded is None:
                return False
            heads = each_document(self._db, heads_only=True)
            recorded.check(Ledger.of(self._root, ((table.name, row, head) for table, row, head in heads)))
            for table, row, doc in each_document(self._db):
                self._take(table, row, doc)
        self._ledger = recorded
        return True

    def _take(self, table: DocumentTable, row: Row, text: str) -> None:
        """Keep the row's document in memory once it verifies; else refuse the row."""
        try:
            body = verify(self._root, table.name, row, text)
        except DocumentRefused as refusal:
            self.tampering.refused(refusal)  # its line in the log now, not only at the first call
            self._refused.add(refusal)
            return
        self._remember_document(table, body)

    def _remember_document(self, table: DocumentTable, body: str) -> None:
        # The row's own values: a verified document was written for that row.
        if table is KEYS:
            self._hold_key(key_from_doc(body, self._root))
        elif table is ALIASES:
            self._hold_alias(alias_from_doc(body))
        elif table is GRANTS:
            self._hold_grant(grant_from_doc(body))
        elif table is CUSTOM_KEY_STORES:
            cks = custom_key_store_from_doc(body, self._root)
            self._custom_key_stores.setdefault((cks.account, cks.region), {})[cks.store_id] = cks

    def _doc(self, table: DocumentTable, row: Row, body: str) -> str:
        """The document to write in `row` of `table`: `body` with its MAC."""
        return authenticate(self._root, table.name, row, body)

    def _write(self, changes: Sequence[Change]) -> None:
        """Make `changes` in one transaction, with the records the task's call owes (`owing`)."""
        if not self._writable:
            raise OSError(f"the key store {self._path} was opened for reading only")
        owed = self._owing.records()
        changes = [*changes, *map(self._owed_put, owed)]
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                ledger = apply(self._db, self._root, self._ledger, changes)
        except sqlite3.OperationalError as exc:  # the disk full, an I/O error: rolled back, nothing changed
            raise self._unwritable(exc) from None
        if self._write_failing:
            log.warning("the key store %s writes again", self._path)
            self._write_failing = False
        self._ledger = ledger  # once committed
        if owed:
            self._owing.written()

    def _unwritable(self, exc: sqlite3.OperationalError) -> errors.KmsError:
        """The call's error for a write SQLite refused, logged once an outage: as an internal
        error each one logged a whole traceback, every call of a full disk's minutes."""
        if not self._write_failing:
            log.error("the key store %s cannot write (%s): calls that change keys fail until it can", self._path, exc)
            self._write_failing = True
        return errors.KMSInternalException(f"The key store could not write the change: {exc}.")

    # --- keys --------------------------------------------------------------------------------

    async def get_key(self, account: str, region: str, key_id: str) -> Key | None:
        key = self._keys.get((account, region), {}).get(key_id)
        if key is None:  # only then: a key served from memory was verified as the store opened
            self._refused.refuse_within(KEYS.name, (account, region, key_id))
        return key

    async def put_key(self, key: Key) -> None:
        await self.put_keys([key])

    async def put_keys(self, keys: Sequence[Key]) -> None:
        dropped = any(_drops_material(self._keys.get((k.account, k.region), {}).get(k.key_id), k) for k in keys)
        self._write(self._puts(keys))
        self._remember(keys)
        if dropped:
            self._erase_freed()

    def _puts(self, keys: Sequence[Key]) -> list[Change]:
        return [
            Put(KEYS, row := (key.account, key.region, key.key_id),
                (*row, self._doc(KEYS, row, key_to_doc(key, self._root))))
            for key in keys
        ]

    def _remember(self, keys: Sequence[Key]) -> None:
        for key in keys:
            self._hold_key(key)
        self._refused.forget(KEYS.name, *((key.account, key.region, key.key_id) for key in keys))

    def _hold_key(self, key: Key) -> None:
        """Keep `key` in memory, in place of one of its id (and in ListKeys' order, if it is sorted)."""
        scope = (key.account, key.region)
        before = self._keys.setdefault(scope, {}).get(key.key_id)
        self._keys[scope][key.key_id] = key
        order = self._key_order.get(scope)
        if order is None or (before is not None and before.creation_date == key.creation_date):
            return  # not sorted yet, or its place is the same: creation dates do not change
        if before is None:
            bisect.insort(order, key_position(key))
        else:
            del self._key_order[scope]

    def _drop_key(self, account: str, region: str, key_id: str) -> None:
        held = self._keys.get((account, region), {}).pop(key_id, None)
        order = self._key_order.get((account, region))
        if held is not None and order is not None:
            at = bisect.bisect_left(order, key_position(held))
            del order[at]  # where it is: the order holds every key held

    async def delete_key(self, key: Key, changed: Sequence[Key] = ()) -> None:
        scope = (key.account, key.region, key.key_id)
        of_key = "account=? AND region=? AND key_id=?"
        self._write([Delete(KEYS, of_key, scope), Delete(ALIASES, of_key, scope), Delete(GRANTS, of_key, scope),
                     *self._puts(changed)])
        self._remember(changed)
        self._drop_key(key.account, key.region, key.key_id)
        for name in list(self._aliases_of_key.get(scope, ())):
            self._drop_alias((key.account, key.region), name)
        self._grants.pop(scope, None)
        self._grant_order.pop(scope, None)
        self._grants_by_grantee.pop(scope, None)
        self._grants_by_term.pop(scope, None)
        forget_sealed(key, self._root)
        self._refused.forget(KEYS.name, scope)
        self._refused.forget(GRANTS.name, *self._refused.within(GRANTS.name, scope))
        self._forget_refused_aliases(key.account, key.region)
        self._erase_freed()

    def _forget_refused_aliases(self, account: str, region: str) -> None:
        """After a key's aliases were deleted by their key_id column: a refused alias is known by
        its row only, so the rows left say which refused ones went."""
        if refused := self._refused.within(ALIASES.name, (account, region)):
            left = self._db.execute("SELECT name FROM aliases WHERE account=? AND region=?", (account, region))
            names = {name for (name,) in left}
            self._refused.forget(ALIASES.name, *(row for row in refused if row[2] not in names))

    def _flush_freed(self) -> bool:
        """Empty the WAL into keys.db, whose freed space secure_delete zeroed: material deleted
        (DeleteKey, DeleteImportedKeyMaterial) is then gone from the files, not only from the rows.
        False while another process's read keeps it from completing, waiting for no one: on the event
        loop, the connection's busy handler held every call for up to its 5 s."""
        (waits,) = self._db.execute("PRAGMA busy_timeout").fetchone()
        self._db.execute("PRAGMA busy_timeout=0")
        try:
            return _checkpointed(self._db)
        finally:
            self._db.execute(f"PRAGMA busy_timeout={int(waits)}")

    def _erase_freed(self) -> None:
        """Flush what a deletion of material freed, or, while a read of keys.db keeps it from
        completing, try again every ERASE_RETRY_SECONDS until the read ends."""
        if not self._flush_freed():
            self._erase_later("another process reads it (a sqlite3 shell or .backup, keytrail analyze): it is "
                              "erased once that read ends")
        elif self._erase_waits is not None:
            log.warning("deleted key material is erased from %s (the reads that kept it ended)", self._path)
            self._erase_waits = None

    def _erase_later(self, why: str) -> None:
        if why != self._erase_waits:  # not at every try
            log.warning("deleted key material stays in %s while %s", self._path, why)
        self._erase_waits = why
        if self._erase_retry is None:
            self._erase_retry = asyncio.get_running_loop().call_later(ERASE_RETRY_SECONDS, self._retry_erase)

    def _retry_erase(self) -> None:
        self._erase_retry = None
        try:
            self._erase_freed()
        except sqlite3.Error as exc:  # on the event loop, in no call to fail: tried again
            self._erase_later(f"it cannot be written ({exc}): tried again")

    async def list_keys(self, account: str, region: str) -> list[Key]:
        self._refused.refuse_within(KEYS.name, (account, region))
        return sorted(self._keys.get((account, region), {}).values(), key=lambda k: (k.creation_date, k.key_id))

    async def list_keys_page(self, account: str, region: str, after: KeyPosition | None, limit: int) -> list[Key]:
        # As list_keys: a refused key is not in memory, and no page can tell whether it stood in it.
        self._refused.refuse_within(KEYS.name, (account, region))
        keys = self._keys.get((account, region))
        if not keys:
            return []
        order = self._key_order.get((account, region))
        if order is None:
            order = self._key_order[account, region] = sorted(map(key_position, keys.values()))
        start = 0 if after is None else bisect.bisect_right(order, after)
        return [keys[key_id] for _, key_id in order[start : start + limit]]

    async def count_keys(self, account: str, region: str) -> int:
        return len(self._keys.get((account, region), {}))

    async def all_keys(self) -> list[Key]:
        """Every key that verified (the scheduler's, the inventory's): a refused one is in the log."""
        return [key for keys in self._keys.values() for key in keys.values()]

    def key_lock(self, account: str, region: str, key_id: str) -> AbstractAsyncContextManager[None]:
        # This process is the file's only writer: a lock of its own is every writer's.
        return self._locks.hold((account, region, key_id))

    def key_lock_if_free(self, account: str, region: str, key_id: str) -> AbstractAsyncContextManager[bool]:
        return self._locks.hold_if_free((account, region, key_id))

    # --- aliases -----------------------------------------------------------------------------

    async def get_alias(self, account: str, region: str, name: str) -> Alias | None:
        alias = self._aliases.get((account, region), {}).get(name)
        if alias is None:
            self._refused.refuse_within(ALIASES.name, (account, region, name))
        return alias

    async def put_alias(self, alias: Alias) -> None:
        row = (alias.account, alias.region, alias.name)
        self._write([Put(ALIASES, row, (*row, alias.key_id, self._doc(ALIASES, row, alias_to_doc(alias))))])
        self._hold_alias(alias)
        self._refused.forget(ALIASES.name, row)

    async def add_alias(self, alias: Alias) -> bool:
        taken = bool(self._refused.within(ALIASES.name, (alias.account, alias.region, alias.name)))  # its row is
        if taken or alias.name in self._aliases.get((alias.account, alias.region), {}):
            return False
        await self.put_alias(alias)  # nothing awaits in between: no other call can take the name
        return True

    async def update_alias(self, alias: Alias, *, was: Alias | None = None) -> bool:
        stored = self._aliases.get((alias.account, alias.region), {}).get(alias.name)
        if stored is None or (was is not None and stored != was):
            return False
        await self.put_alias(alias)  # nothing awaits in between: no other call can change it
        return True

    async def delete_alias(self, alias: Alias, *, if_unchanged: bool = False) -> bool:
        if if_unchanged and self._aliases.get((alias.account, alias.region), {}).get(alias.name) != alias:
            return False
        self._write([delete_row(ALIASES, (alias.account, alias.region, alias.name))])
        self._drop_alias((alias.account, alias.region), alias.name)
        self._refused.forget(ALIASES.name, (alias.account, alias.region, alias.name))
        return True

    async def list_aliases(self, account: str, region: str) -> list[Alias]:
        self._refused.refuse_within(ALIASES.name, (account, region))
        return sorted(self._aliases.get((account, region), {}).values(), key=lambda a: a.name)

    async def list_aliases_page(self, account: str, region: str, after: str | None, limit: int,
                                key_id: str | None = None) -> list[Alias]:
        # As list_aliases: a refused alias is not in memory, and no page can tell whether it stood in it.
        self._refused.refuse_within(ALIASES.name, (account, region))
        aliases = self._aliases.get((account, region))
        if not aliases:
            return []
        if key_id is not None:
            names = sorted(self._aliases_of_key.get((account, region, key_id), ()))  # 50 at most
        elif (order := self._alias_order.get((account, region))) is not None:
            names = order
        else:
            names = self._alias_order[account, region] = sorted(aliases)
        start = 0 if after is None else bisect.bisect_right(names, after)
        return [aliases[name] for name in names[start : start + limit]]

    def _hold_alias(self, alias: Alias) -> None:
        """Keep `alias` in memory, in place of the one of its name (which may be another key's)."""
        scope = (alias.account, alias.region)
        self._drop_alias(scope, alias.name)
        self._aliases.setdefault(scope, {})[alias.name] = alias
        self._aliases_of_key.setdefault((*scope, alias.key_id), set()).add(alias.name)
        if (order := self._alias_order.get(scope)) is not None:
            bisect.insort(order, alias.name)

    def _drop_alias(self, scope: Scope, name: str) -> None:
        held = self._aliases.get(scope, {}).pop(name, None)
        if held is None:
            return
        of_key = self._aliases_of_key.get((*scope, held.key_id), set())
        of_key.discard(name)
        if not of_key:
            self._aliases_of_key.pop((*scope, held.key_id), None)
        if (order := self._alias_order.get(scope)) is not None:  # it is in it: the order holds every alias held
            del order[bisect.bisect_left(order, name)]

    # --- grants ------------------------------------------------------------------------------

    async def put_grant(self, grant: Grant) -> None:
        row = (grant.account, grant.region, grant.key_id, grant.grant_id)
        self._write([Put(GRANTS, row, (*row, self._doc(GRANTS, row, grant_to_doc(grant))))])
        self._hold_grant(grant)
        self._refused.forget(GRANTS.name, row)

    async def delete_grant(self, grant: Grant) -> bool:
        row = (grant.account, grant.region, grant.key_id, grant.grant_id)
        if grant.grant_id not in self._grants.get(row[:3], {}) and not self._refused.within(GRANTS.name, row):
            return False
        self._write([delete_row(GRANTS, row)])
        self._drop_grant(row[:3], grant.grant_id)
        self._refused.forget(GRANTS.name, row)
        return True

    def _hold_grant(self, grant: Grant) -> None:
        """Keep `grant` in memory (in its key's grants and its grantee's), in place of one of its id."""
        scope = (grant.account, grant.region, grant.key_id)
        self._drop_grant(scope, grant.grant_id)
        self._grants.setdefault(scope, {})[grant.grant_id] = grant
        self._grants_by_grantee.setdefault(scope, {}).setdefault(grant.grantee_principal, {})[grant.grant_id] = grant
        by_term = self._grants_by_term.setdefault(scope, {})
        for filed in filed_terms(grant):
            by_term.setdefault(filed, {})[grant.grant_id] = grant
        if (order := self._grant_order.get(scope)) is not None:
            bisect.insort(order, grant_position(grant))

    def _drop_grant(self, scope: tuple[str, str, str], grant_id: str) -> None:
        held = self._grants.get(scope, {}).pop(grant_id, None)
        if held is not None:
            if (order := self._grant_order.get(scope)) is not None:  # it is in it: the order holds every grant held
                del order[bisect.bisect_left(order, grant_position(held))]
            by_grantee = self._grants_by_grantee.get(scope, {})
            of_grantee = by_grantee.get(held.grantee_principal, {})
            of_grantee.pop(grant_id, None)
            if not of_grantee:
                by_grantee.pop(held.grantee_principal, None)
            by_term = self._grants_by_term.get(scope, {})
            for filed in filed_terms(held):
                grants = by_term.get(filed, {})
                grants.pop(grant_id, None)
                if not grants:
                    by_term.pop(filed, None)

    async def list_grants(self, account: str, region: str, key_id: str) -> list[Grant]:
        scope = (account, region, key_id)
        self._refused.refuse_within(GRANTS.name, scope)  # a forged grant must not just go unseen
        grants = self._grants.get(scope)
        if not grants:
            return []
        return [grants[grant_id] for _, grant_id in self._ordered_grants(scope, grants)]

    async def list_grants_page(self, account: str, region: str, key_id: str, after: GrantPosition | None,
                               limit: int, grantee: str | None = None) -> list[Grant]:
        scope = (account, region, key_id)
        # As list_grants: a refused grant is not in memory, and no page can tell whether it stood in it.
        self._refused.refuse_within(GRANTS.name, scope)
        grants = self._grants.get(scope)
        if not grants:
            return []
        if grantee is None:
            order = self._ordered_grants(scope, grants)
        else:  # the grantee's grants only: most keys' grantees hold few of them
            order = sorted(map(grant_position, self._grants_by_grantee.get(scope, {}).get(grantee, {}).values()))
        start = 0 if after is None else bisect.bisect_right(order, after)
        return [grants[grant_id] for _, grant_id in order[start : start + limit]]

    def _ordered_grants(self, scope: tuple[str, str, str], grants: dict[str, Grant]) -> list[GrantPosition]:
        """The positions of the key's grants in ListGrants' order, sorted once, then kept in order."""
        order = self._grant_order.get(scope)
        if order is None:
            order = self._grant_order[scope] = sorted(map(grant_position, grants.values()))
        return order

    async def grants_to(self, account: str, region: str, key_id: str, grantees: Collection[str]) -> list[Grant]:
        scope = (account, region, key_id)
        self._refused.refuse_within(GRANTS.name, scope)  # as list_grants: a forged grant must not go unseen
        by_grantee = self._grants_by_grantee.get(scope)
        if not by_grantee:  # most keys
            return []
        found = [grant for grantee in set(grantees) for grant in by_grantee.get(grantee, {}).values()]
        return sorted(found, key=lambda g: (g.creation_date, g.grant_id))  # list_grants' order

    async def grants_allowing(self, account: str, region: str, key_id: str, grantees: Collection[str],
                              operation: str, context: Mapping[str, str]) -> list[Grant]:
        scope = (account, region, key_id)
        self._refused.refuse_within(GRANTS.name, scope)  # as list_grants: a forged grant must not go unseen
        by_term = self._grants_by_term.get(scope)
        if not by_term:  # most keys: their calls make no terms
            return []
        found: dict[str, Grant] = {}
        for term in request_terms(grantees, operation, context):
            found.update(by_term.get((term, False), {}))
            if exact := by_term.get((term, True)):  # any one of them decides as all would
                one = next(iter(exact.values()))
                found[one.grant_id] = one
        return list(found.values())

    async def get_grant(self, account: str, region: str, key_id: str, grant_id: str) -> Grant | None:
        self._refused.refuse_within(GRANTS.name, (account, region, key_id, grant_id))
        return self._grants.get((account, region, key_id), {}).get(grant_id)

    async def count_grants(self, account: str, region: str, key_id: str) -> int:
        scope = (account, region, key_id)
        return len(self._grants.get(scope, {})) + len(self._refused.within(GRANTS.name, scope))

    async def all_grants(self, region: str) -> list[Grant]:
        """Every grant of the Region that verified, across accounts."""
        return [g for (_, r, _), grants in self._grants.items() if r == region for g in grants.values()]

    async def grants_retirable_by(self, region: str, retiring_principal: str) -> list[Grant]:
        """As all_grants, those `retiring_principal` may retire only (ListRetirableGrants)."""
        return [grant for grant in await self.all_grants(region) if grant.retiring_principal == retiring_principal]

    async def reseal(self, new: RootKey) -> int:
        """Seal every sealed value of the store again under `new` and authenticate every document
        under it, and its ledger, in one transaction, and do so under `new` from then on; the number
        of documents (`keytrail root-key rotate`). DocumentRefused, changing nothing, if one does not
        verify; LedgerMismatch if the rows are no longer the ones of the ledger."""
        documents, ledger = read_store(self._db)
        opening_plan(documents, ledger, self._root)  # changed since the store opened: not laundered
        resealed = [(table, row, reauthenticated(table, row, text, self._root, new)) for table, row, text in documents]
        ledger_now = Ledger.of(new, ((table.name, row, text) for table, row, text in resealed))
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            rewrite(self._db, resealed, ledger_now.to_doc(new))
        # What the updates freed is zeroed (secure_delete): empty the WAL into the file too, else a
        # copy of keys.db taken after the rotation still holds old sealed values the old key opens.
        # Tried once: `keytrail root-key rotate` waits for other processes' reads (erase_freed) and
        # says if one keeps them there.
        self._flush_freed()
        self._root, self._ledger = new, ledger_now
        return len(resealed)

    async def ping(self) -> None:
        """Raise unless keys.db answers a trivial query and is still the file this store opened:
        one deleted or replaced under a running node takes its writes where no restart reads them."""
        try:
            moved = _file_identity(self._path) != self._file
        except FileNotFoundError:
            moved = True
        if moved:
            raise OSError(f"{self._path} was deleted or replaced while the node runs: restore it and restart")
        self._db.execute("SELECT 1 FROM keys LIMIT 1").fetchall()

    async def close(self) -> None:
        self._close_erase()
        self._db.close()

    def _close_erase(self) -> None:
        """Try the erase deleted material still waits for once more, saying if it still waits."""
        if self._erase_retry is not None:
            self._erase_retry.cancel()
            self._erase_retry = None
        if self._erase_waits is None:
            return
        try:
            erased = self._flush_freed()
        except sqlite3.Error:  # said as its writes failing were
            erased = False
        if not erased:
            log.warning("%s still holds deleted key material as the key store closes (another process's read of "
                        "it has not ended): it is erased when a keytrail serve on it next deletes material, or "
                        "stops, while no other process reads it", self._path)
