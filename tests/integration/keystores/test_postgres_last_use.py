"""The PostgreSQL store's `kms_key_last_use` (real server at 127.0.0.1:5432): each key's latest use by
any node, kept only when later than the stored one and deleted with its key. Whoever can write the
database cannot make a used key look unused: an edited or copied row is refused on each read (an
error, never "unused"), a row deleted or put back to an earlier use stops the store at its next
ledger check. A store of the version before the table gets it as a node connects; root key
rotation authenticates its rows under the new key."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timedelta

import asyncpg
import pytest

from keytrail.kms import errors
from keytrail.kms.key_last_use import KeyUse, SharedLastUsage
from keytrail.kms.model import KeyLastUsage
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from keytrail.kms.store_ledger import LedgerMismatch
from tests.support.postgres import fetch
from tests.support.store_documents import ACCOUNT, NOW, OTHER, OURS, REGION, seeded

pytestmark = pytest.mark.integration

USE = KeyUse(OURS.arn, "Encrypt", NOW + timedelta(days=40), "event-1", "request-1",
             f"arn:aws:iam::{ACCOUNT}:user/alice")
EARLIER = replace(USE, operation="Decrypt", timestamp=NOW + timedelta(days=1), event_id="event-0",
                  request_id="request-0")


async def _store(dsn: str, root: RootKey) -> PostgresStore:
    return await seeded(await PostgresStore.connect(dsn, root))


async def _doc(dsn: str, key_id: str) -> str:
    [(doc,)] = await fetch(dsn, "SELECT doc FROM kms_key_last_use WHERE key_id=$1", key_id)
    return str(doc)


class _Unused:
    """The node's own consumer: it counted no use of the key, and tracks since NOW."""

    async def last_usage(self, key_arn: str) -> tuple[datetime | None, KeyLastUsage | None]:
        return NOW, None


async def test_a_later_use_replaces_the_stored_one_and_an_earlier_one_does_not(dsn: str) -> None:
    store = await _store(dsn, RootKey(os.urandom(32)))
    await store.put_last_uses([EARLIER])
    await store.put_last_uses([USE, replace(USE, key_arn=OTHER.arn)])
    await store.put_last_uses([EARLIER])  # another node's, written late
    assert await store.get_last_use(ACCOUNT, REGION, OURS.key_id) == USE
    assert await store.get_last_use(ACCOUNT, REGION, OTHER.key_id) == replace(USE, key_arn=OTHER.arn)
    assert await SharedLastUsage(_Unused(), store).last_usage(OURS.arn) == (NOW, USE.usage)
    assert await store.check_ledger()
    await store.close()


async def test_a_deleted_keys_use_goes_with_it_and_is_not_written_again(dsn: str) -> None:
    store = await _store(dsn, RootKey(os.urandom(32)))
    await store.put_last_uses([USE])
    await store.delete_key(OURS)
    assert await fetch(dsn, "SELECT 1 FROM kms_key_last_use") == []
    await store.put_last_uses([replace(USE, timestamp=USE.timestamp + timedelta(seconds=1))])  # noted before
    assert await fetch(dsn, "SELECT 1 FROM kms_key_last_use") == []
    assert await store.check_ledger()
    await store.close()


async def test_a_use_edited_in_the_database_is_refused_never_taken_for_unused(dsn: str) -> None:
    store = await _store(dsn, RootKey(os.urandom(32)))
    await store.put_last_uses([USE])
    doc = await _doc(dsn, OURS.key_id)
    older = doc.replace(USE.timestamp.isoformat(), EARLIER.timestamp.isoformat())
    assert older != doc
    await fetch(dsn, "UPDATE kms_key_last_use SET doc=$1 WHERE key_id=$2", older, OURS.key_id)
    with pytest.raises(errors.KMSInternalException):
        await store.get_last_use(ACCOUNT, REGION, OURS.key_id)
    with pytest.raises(errors.KMSInternalException):  # GetKeyLastUsage and the condition key's source
        await SharedLastUsage(_Unused(), store).last_usage(OURS.arn)
    # A later use is not written over it (the row is the operator's to restore); reads still refuse.
    await store.put_last_uses([replace(USE, timestamp=USE.timestamp + timedelta(days=1))])
    assert await _doc(dsn, OURS.key_id) == older
    with pytest.raises(errors.KMSInternalException):
        await store.get_last_use(ACCOUNT, REGION, OURS.key_id)
    await store.close()


async def test_a_use_edited_in_the_database_is_counted_for_metrics_by_the_next_write_of_a_use(dsn: str) -> None:
    # No read of it needed: a node writes its later uses every second, and finds the row then.
    store = await _store(dsn, RootKey(os.urandom(32)))
    await store.put_last_uses([USE])
    doc = await _doc(dsn, OURS.key_id)
    await fetch(dsn, "UPDATE kms_key_last_use SET doc=$1 WHERE key_id=$2",
                doc.replace(USE.timestamp.isoformat(), EARLIER.timestamp.isoformat()), OURS.key_id)
    assert store.tampering.rows()["key_last_use"] == 0
    for days in (1, 2):
        await store.put_last_uses([replace(USE, timestamp=USE.timestamp + timedelta(days=days))])
    assert store.tampering.rows() == {table: int(table == "key_last_use") for table in store.tampering.rows()}
    await store.close()


async def test_a_use_copied_from_another_key_is_refused(dsn: str) -> None:
    store = await _store(dsn, RootKey(os.urandom(32)))
    await store.put_last_uses([USE, replace(EARLIER, key_arn=OTHER.arn)])
    await fetch(dsn, "UPDATE kms_key_last_use SET doc=$1 WHERE key_id=$2", await _doc(dsn, OTHER.key_id), OURS.key_id)
    with pytest.raises(errors.KMSInternalException):
        await store.get_last_use(ACCOUNT, REGION, OURS.key_id)
    await store.close()


async def test_a_use_deleted_or_put_back_to_an_earlier_one_stops_the_store_at_its_next_check(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    store = await _store(dsn, root)
    await store.put_last_uses([EARLIER])
    earlier = await _doc(dsn, OURS.key_id)
    await store.put_last_uses([USE])
    await fetch(dsn, "UPDATE kms_key_last_use SET doc=$1 WHERE key_id=$2", earlier, OURS.key_id)
    assert await store.get_last_use(ACCOUNT, REGION, OURS.key_id) == EARLIER  # authentic: the MAC cannot tell
    assert not await store.check_ledger()  # what each node runs every minute
    with pytest.raises(errors.KMSInternalException):
        await store.get_last_use(ACCOUNT, REGION, OURS.key_id)
    await store.close()
    with pytest.raises(LedgerMismatch, match="as many rows as the ledger counts, but not the same ones"):
        await PostgresStore.connect(dsn, root)
    await fetch(dsn, "DELETE FROM kms_key_last_use")
    with pytest.raises(LedgerMismatch, match=r"key_last_use 0 row\(s\), the ledger 1"):
        await PostgresStore.connect(dsn, root)


async def test_a_store_of_the_version_before_gets_the_table_as_a_node_connects(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    await (await _store(dsn, root)).close()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DROP TABLE kms_key_last_use")  # the store as the version before left it
    finally:
        await connection.close()
    store = await PostgresStore.connect(dsn, root)
    assert await store.get_last_use(ACCOUNT, REGION, OURS.key_id) is None
    await store.put_last_uses([USE])
    assert await store.get_last_use(ACCOUNT, REGION, OURS.key_id) == USE
    assert await store.check_ledger()
    await store.close()
    await (await PostgresStore.connect(dsn, root)).close()


async def test_root_key_rotation_authenticates_the_uses_under_the_new_key(dsn: str) -> None:
    old, new = RootKey(os.urandom(32)), RootKey(os.urandom(32))
    store = await _store(dsn, old)
    await store.put_last_uses([USE])
    assert await store.reseal(new) == 5  # two keys, an alias, a grant and the use
    await store.close()
    again = await PostgresStore.connect(dsn, new)
    assert await again.get_last_use(ACCOUNT, REGION, OURS.key_id) == USE
    assert await again.check_ledger()
    await again.close()
