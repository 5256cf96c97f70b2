"""A page of ListAliases read from the PostgreSQL store (real server at 127.0.0.1:5432): in name
order as code points order them, whatever the collation of the database or of the column, strictly
after a name that may be gone, of one key by its `key_id` column, whose document must agree."""

from __future__ import annotations

import dataclasses
import os

import pytest

from keytrail.kms import errors
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from tests.support.postgres import fetch_value
from tests.support.store_documents import ACCOUNT, ALIAS, OTHER, OURS, REGION, seeded

pytestmark = pytest.mark.integration

# A dictionary orders these otherwise: alpha, Alpha, alpha-beta, beta, _under, Zulu …
NAMES = ["alias/-dash", "alias/0zero", "alias/Alpha", "alias/Zulu", "alias/_under", "alias/alpha",
         "alias/alpha-beta", "alias/beta", "alias/ours"]


async def _store(dsn: str) -> PostgresStore:
    store = await seeded(await PostgresStore.connect(dsn, RootKey(os.urandom(32))))
    for n, name in enumerate(NAMES[:-1]):
        await store.put_alias(dataclasses.replace(ALIAS, name=name, key_id=(OURS, OTHER)[n % 2].key_id))
    return store


async def _names(store: PostgresStore, after: str | None, limit: int, key_id: str | None = None) -> list[str]:
    return [alias.name for alias in await store.list_aliases_page(ACCOUNT, REGION, after, limit, key_id)]


async def test_a_page_is_in_code_point_order_after_its_name_whatever_the_collation(dsn: str) -> None:
    store = await _store(dsn)
    await fetch_value(dsn, 'ALTER TABLE kms_aliases ALTER COLUMN name TYPE TEXT COLLATE "en-x-icu"')
    assert await _names(store, None, 100) == NAMES
    assert await _names(store, None, 3) == NAMES[:3]
    assert await _names(store, "alias/Zulu", 2) == ["alias/_under", "alias/alpha"]
    assert await _names(store, "alias/B-gone", 2) == ["alias/Zulu", "alias/_under"]  # no alias of that name
    assert await _names(store, "alias/ours", 5) == []
    of_ours = [name for n, name in enumerate(NAMES[:-1]) if n % 2 == 0] + ["alias/ours"]
    assert await _names(store, None, 100, OURS.key_id) == of_ours
    assert await _names(store, of_ours[1], 2, OURS.key_id) == of_ours[2:4]
    assert await _names(store, None, 100, "no-such-key") == []
    assert await store.list_aliases_page(ACCOUNT, "eu-west-1", None, 5) == []
    await store.close()


async def test_a_key_id_column_edited_to_put_an_alias_in_another_key_s_page_is_refused(dsn: str) -> None:
    store = await _store(dsn)
    await fetch_value(dsn, "UPDATE kms_aliases SET key_id=$1 WHERE name='alias/ours'", OTHER.key_id)
    with pytest.raises(errors.KMSInternalException):
        await store.list_aliases_page(ACCOUNT, REGION, None, 100, OTHER.key_id)
    assert "alias/ours" not in await _names(store, None, 100, OURS.key_id)  # a hint: it narrows, it lists no other
    assert await _names(store, None, 100) == NAMES  # the document decides what is listed
    await store.close()
