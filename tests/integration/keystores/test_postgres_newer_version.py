"""A PostgreSQL store a newer keytrail wrote (real server at 127.0.0.1:5432): its ledger counts rows
of a table this version does not know (as a version before `kms_key_last_use` found that table's
rows). A node of this version, running or starting, says a newer version wrote the store, not that
its rows were rolled back outside keytrail and the database must be restored (which loses every
change since the backup, for a store that is as it should be)."""

from __future__ import annotations

import logging
import os

import pytest

from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from keytrail.kms.store_ledger import Ledger, LedgerMismatch
from tests.support.postgres import fetch, fetch_value
from tests.support.store_documents import seeded

pytestmark = pytest.mark.integration

NEWER = ("the key store does not match its ledger (a newer version of keytrail wrote it): its ledger counts 2 "
         "row(s) of the table future_rows, which this version does not know: serve the store with that version, "
         "or restore the backup taken before the upgrade to go back to this one")


async def _written_by_a_newer_version(dsn: str, root: RootKey) -> PostgresStore:
    """A store whose ledger counts, besides its rows, two of a table a later version added."""
    store = await seeded(await PostgresStore.connect(dsn, root))
    ledger = Ledger.from_doc(root, await fetch_value(dsn, "SELECT doc FROM kms_ledger WHERE id = 1"))
    ledger.add(root, "future_rows", ("a",), "{}")
    ledger.add(root, "future_rows", ("b",), "{}")
    await fetch(dsn, "UPDATE kms_ledger SET doc = $1 WHERE id = 1", ledger.to_doc(root))
    return store


async def test_a_running_node_says_a_newer_version_wrote_the_store(
        dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    root = RootKey(os.urandom(32))
    store = await _written_by_a_newer_version(dsn, root)
    with caplog.at_level(logging.ERROR):
        assert not await store.check_ledger()  # what the background task runs every minute
    assert not store.tampering.ledger_mismatch  # no tampering: nothing pages as for one
    await store.close()
    [line] = [r.getMessage() for r in caplog.records if "does not match its ledger" in r.getMessage()]
    assert line == (f"key store: {NEWER}: every call on it is refused until the node restarts (which refuses to "
                    "start until a node of the newer version serves the store in its place)")


async def test_a_starting_node_says_a_newer_version_wrote_the_store(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    await (await _written_by_a_newer_version(dsn, root)).close()
    with pytest.raises(LedgerMismatch) as refused:
        await PostgresStore.connect(dsn, root)
    assert str(refused.value) == NEWER
