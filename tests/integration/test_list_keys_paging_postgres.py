"""ListKeys pages from the PostgreSQL store (real server at 127.0.0.1:5432): the database picks
the page's rows, and only those are verified and decoded (each verification reads a MAC, ≈ 70 µs a
key: verifying every key of the Region for each page cost seconds at AWS's 100,000-key quota).
The SQLite store's tests are in tests/unit/kms/test_list_keys_paging.py."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

import tests.unit.kms.test_list_keys_paging as paging_cases
from keytrail.clock import ManualClock
from keytrail.kms import errors, postgres_store
from keytrail.kms.keys import Key
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from tests.support.allow_all import ACCOUNT, AllowAll, alice
from tests.support.postgres import fetch_value, fresh_database

pytestmark = pytest.mark.integration

REGION = paging_cases.REGION
Listed = tuple[PostgresStore, KmsService, list[Key], str]


@pytest.fixture
async def listed() -> AsyncIterator[Listed]:
    """2,500 keys in alice's account and Region, 40 in another Region, in a database of its own."""
    async with fresh_database() as dsn:
        store = await PostgresStore.connect(dsn, RootKey(os.urandom(32)))
        keys = paging_cases.many_keys(2_500)
        for at in range(0, len(keys), 500):
            await store.put_keys(keys[at:at + 500])
        await store.put_keys([Key(ACCOUNT, "eu-west-1", f"e{n:031x}", paging_cases.START) for n in range(40)])
        allow = AllowAll()
        yield store, KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=allow, authorizer=allow)), keys, dsn
        await store.close()


def _counting_verifications(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The rows the store verifies from now on."""
    verified: list[tuple[str, ...]] = []
    verify = postgres_store.verify

    def counted(root: RootKey, table: str, row: tuple[str, ...], text: str, **kwargs: Any) -> str:
        verified.append(row)
        return verify(root, table, row, text, **kwargs)

    monkeypatch.setattr(postgres_store, "verify", counted)
    return verified


@pytest.mark.parametrize("limit", [7, 1000, None])
async def test_following_the_markers_lists_every_key_once_in_order(listed: Listed, limit: int | None) -> None:
    _, service, keys, _ = listed
    seen, calls = await paging_cases.walk(service, **({"Limit": limit} if limit else {}))
    assert seen == paging_cases.in_listing_order(keys)
    assert calls == -(-len(keys) // (limit or 100))


async def test_a_page_verifies_the_rows_it_answers_with_only(listed: Listed, monkeypatch: pytest.MonkeyPatch) -> None:
    _, service, keys, _ = listed
    ordered = paging_cases.in_listing_order(keys)
    verified = _counting_verifications(monkeypatch)
    first = await service.execute("ListKeys", alice(), {"Limit": 1})
    # the key answered, and the next one, which tells that the listing goes on
    assert [row[2] for row in verified] == ordered[:2] and first["Truncated"] is True
    verified.clear()
    await service.execute("ListKeys", alice(), {"Limit": 10, "Marker": first["NextMarker"]})
    assert [row[2] for row in verified] == ordered[1:12]


async def test_a_tampered_key_fails_the_page_it_is_on_only(listed: Listed) -> None:
    _, service, keys, dsn = listed
    ordered = paging_cases.in_listing_order(keys)
    doc = json.loads(await fetch_value(dsn, "SELECT doc FROM kms_keys WHERE key_id=$1", ordered[60]))
    doc["description"] = "edited"  # the MAC member kept as it was
    await fetch_value(dsn, "UPDATE kms_keys SET doc=$1 WHERE key_id=$2", json.dumps(doc, separators=(",", ":")),
                      ordered[60])
    first = await service.execute("ListKeys", alice(), {"Limit": 50})
    second = await service.execute("ListKeys", alice(), {"Limit": 5, "Marker": first["NextMarker"]})
    assert [k["KeyId"] for k in first["Keys"] + second["Keys"]] == ordered[:55]
    with pytest.raises(errors.KMSInternalException):
        await service.execute("ListKeys", alice(), {"Limit": 10, "Marker": second["NextMarker"]})
    with pytest.raises(errors.KMSInternalException):
        await service.execute("ListKeys", alice(), {"Limit": 100})


async def test_a_creation_date_column_that_is_not_its_documents_is_refused(listed: Listed) -> None:
    # The column orders the rows, the verified document holds the date: a page ending at a key the
    # column misplaces would hand out a marker that skips or repeats keys.
    _, service, keys, dsn = listed
    ordered = paging_cases.in_listing_order(keys)
    await fetch_value(dsn, "UPDATE kms_keys SET created=$1 WHERE key_id=$2", "2000-01-01T00:00:00+00:00", ordered[70])
    with pytest.raises(errors.KMSInternalException):
        await service.execute("ListKeys", alice(), {"Limit": 5})
    assert len((await service.execute("ListKeys", alice(), {"Limit": 5, "Marker": (
        paging_cases.marker_of_before(ACCOUNT, REGION, next(k for k in keys if k.key_id == ordered[10]))
    )}))["Keys"]) == 5


async def test_a_marker_handed_out_before_still_works(listed: Listed) -> None:
    _, service, keys, _ = listed
    ordered = paging_cases.in_listing_order(keys)
    last = next(key for key in keys if key.key_id == ordered[99])
    rest, _ = await paging_cases.walk(service, Marker=paging_cases.marker_of_before(ACCOUNT, REGION, last), Limit=600)
    assert rest == ordered[100:]
    first = await service.execute("ListKeys", alice(), {})
    assert first["NextMarker"] == paging_cases.marker_of_before(ACCOUNT, REGION, last)


async def test_keys_deleted_between_pages_are_skipped(listed: Listed) -> None:
    store, service, keys, _ = listed
    ordered = sorted(keys, key=lambda k: (k.creation_date, k.key_id))
    first = await service.execute("ListKeys", alice(), {"Limit": 10})
    for gone in ordered[9:12]:
        await store.delete_key(gone)
    second = await service.execute("ListKeys", alice(), {"Limit": 3, "Marker": first["NextMarker"]})
    assert [k["KeyId"] for k in second["Keys"]] == [key.key_id for key in ordered[12:15]]


async def test_a_made_up_marker_in_keytrails_format_is_invalid(listed: Listed) -> None:
    _, service, _, _ = listed
    for position in paging_cases.FORGED_POSITIONS:
        with pytest.raises(errors.InvalidMarkerException):
            await service.execute("ListKeys", alice(), {"Marker": paging_cases.forged(ACCOUNT, REGION, position)})
