"""ListGrants pages from the PostgreSQL store (real server at 127.0.0.1:5432): the database picks
the page's rows, and only those are verified and decoded (≈ 25 µs a grant: verifying all of a key's
grants for each page held the event loop ≈ 1.3 s at AWS's quota of 50,000 grants a key). The
SQLite store's tests are in tests/unit/kms/test_list_grants_paging.py. ListRetirableGrants reads
the grants of its retiring principal, not every grant of the Region."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

import tests.unit.kms.test_list_grants_paging as paging_cases
from keytrail.clock import ManualClock
from keytrail.kms import errors, postgres_store
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.store import Grant
from tests.support.allow_all import ACCOUNT, AllowAll, alice
from tests.support.postgres import fetch_value, fresh_database

pytestmark = pytest.mark.integration

CAROL = paging_cases.CAROL
Listed = tuple[PostgresStore, KmsService, str, list[Grant], str]


@pytest.fixture
async def listed() -> AsyncIterator[Listed]:
    """A key of alice's with 150 grants (and another key with 10), in a database of its own."""
    async with fresh_database() as dsn:
        store = await PostgresStore.connect(dsn, RootKey(os.urandom(32)))
        allow = AllowAll()
        service = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=allow, authorizer=allow))
        key_arn, grants = await paging_cases.holding(service, store, 150)
        yield store, service, key_arn, grants, dsn
        await store.close()


def _counting_verifications(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The grant rows the store verifies from now on (not the key's, which every call reads)."""
    verified: list[tuple[str, ...]] = []
    verify = postgres_store.verify

    def counted(root: RootKey, table: str, row: tuple[str, ...], text: str, **kwargs: Any) -> str:
        if table == "grants":
            verified.append(row)
        return verify(root, table, row, text, **kwargs)

    monkeypatch.setattr(postgres_store, "verify", counted)
    return verified


@pytest.mark.parametrize("limit", [7, None])
async def test_following_the_markers_lists_every_grant_once_in_order(listed: Listed, limit: int | None) -> None:
    _, service, key_arn, grants, _ = listed
    paged = {"Limit": limit} if limit else {}
    assert (await paging_cases.walk(service, key_arn, **paged))[0] == paging_cases.in_listing_order(grants)
    by_carol, _ = await paging_cases.walk(service, key_arn, GranteePrincipal=CAROL, **paged)
    assert by_carol == paging_cases.in_listing_order(grants, CAROL)


async def test_a_page_verifies_the_rows_it_answers_with_only(listed: Listed, monkeypatch: pytest.MonkeyPatch) -> None:
    _, service, key_arn, grants, _ = listed
    ordered = paging_cases.in_listing_order(grants)
    verified = _counting_verifications(monkeypatch)
    first = await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 1})
    # the grant answered, and the next one, which tells that the listing goes on
    assert [row[3] for row in verified] == ordered[:2] and first["Truncated"] is True
    verified.clear()
    await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 10, "Marker": first["NextMarker"]})
    assert [row[3] for row in verified] == ordered[2:12]  # the one read before is not verified again
    verified.clear()
    await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 2, "GranteePrincipal": CAROL})
    carols = paging_cases.in_listing_order(grants, CAROL)[:3]
    assert [row[3] for row in verified] == [grant_id for grant_id in carols if grant_id not in ordered[:12]]


async def test_a_row_without_its_grantee_column_is_listed_by_its_document(listed: Listed) -> None:
    # As a node of before the column writes it: read for every grantee, its document says whose it is.
    _, service, key_arn, grants, dsn = listed
    to_bob = [g for g in sorted(grants, key=lambda g: (g.creation_date, g.grant_id))
              if g.grantee_principal != CAROL]
    for grant in to_bob[:5]:
        await fetch_value(dsn, "UPDATE kms_grants SET grantee=NULL WHERE grant_id=$1", grant.grant_id)
    first = await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 3, "GranteePrincipal": CAROL})
    assert [g["GrantId"] for g in first["Grants"]] == paging_cases.in_listing_order(grants, CAROL)[:3]
    assert first["Truncated"] is True
    by_bob, _ = await paging_cases.walk(service, key_arn, GranteePrincipal=to_bob[0].grantee_principal, Limit=4)
    assert by_bob == [g.grant_id for g in to_bob]


async def test_a_tampered_grant_fails_the_page_it_is_on_only(listed: Listed) -> None:
    _, service, key_arn, grants, dsn = listed
    ordered = paging_cases.in_listing_order(grants)
    doc = json.loads(await fetch_value(dsn, "SELECT doc FROM kms_grants WHERE grant_id=$1", ordered[30]))
    doc["operations"] = ["Decrypt", "Encrypt"]  # the MAC member kept as it was
    await fetch_value(dsn, "UPDATE kms_grants SET doc=$1 WHERE grant_id=$2", json.dumps(doc, separators=(",", ":")),
                      ordered[30])
    first = await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 29})
    assert [g["GrantId"] for g in first["Grants"]] == ordered[:29]
    with pytest.raises(errors.KMSInternalException):
        await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 5, "Marker": first["NextMarker"]})


async def test_a_creation_date_column_that_is_not_its_documents_is_refused(listed: Listed) -> None:
    # The column orders the rows, the verified document holds the date: a page ending at a grant
    # the column misplaces would hand out a marker that skips or repeats grants.
    _, service, key_arn, grants, dsn = listed
    ordered = paging_cases.in_listing_order(grants)
    await fetch_value(dsn, "UPDATE kms_grants SET created=$1 WHERE grant_id=$2", "2000-01-01T00:00:00+00:00",
                      ordered[70])
    with pytest.raises(errors.KMSInternalException):
        await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 5})


async def test_grants_deleted_between_pages_are_skipped(listed: Listed) -> None:
    store, service, key_arn, grants, _ = listed
    ordered = sorted(grants, key=lambda g: (g.creation_date, g.grant_id))
    first = await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 10})
    for gone in ordered[9:12]:
        assert await store.delete_grant(gone)
    second = await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 3, "Marker": first["NextMarker"]})
    assert [g["GrantId"] for g in second["Grants"]] == [g.grant_id for g in ordered[12:15]]


async def test_list_retirable_grants_verifies_the_grants_naming_its_principal_only(
        listed: Listed, monkeypatch: pytest.MonkeyPatch) -> None:
    store, service, _, grants, _ = listed
    dave = f"arn:aws:iam::{ACCOUNT}:user/dave"
    ordered = sorted(grants, key=lambda g: (g.creation_date, g.grant_id))
    retirable = [replace(grant, retiring_principal=dave) for grant in ordered[:3]]
    to_dave = replace(ordered[3], grantee_principal=dave)  # his ARN in another member: read, not listed
    for grant in (*retirable, to_dave):
        await store.put_grant(grant)
    verified = _counting_verifications(monkeypatch)
    answer = await service.execute("ListRetirableGrants", alice(), {"RetiringPrincipal": dave})
    assert [g["GrantId"] for g in answer["Grants"]] == [g.grant_id for g in retirable]
    assert sorted(row[3] for row in verified) == sorted(g.grant_id for g in (*retirable, to_dave))


async def test_a_grantees_calls_verify_each_of_its_grants_once(listed: Listed, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every call by a grantee reads all of its grants on the key: verifying them again for each call
    # cost ≈ 25 µs a grant (≈ 1.25 s a call at AWS's quota of 50,000 grants a key).
    store, _, key_arn, grants, dsn = listed
    key_id = key_arn.rsplit("/", 1)[1]
    carols = paging_cases.in_listing_order(grants, CAROL)
    verified = _counting_verifications(monkeypatch)
    assert [g.grant_id for g in await store.grants_to(ACCOUNT, paging_cases.REGION, key_id, {CAROL})] == carols
    assert sorted(row[3] for row in verified) == sorted(carols)
    verified.clear()
    assert [g.grant_id for g in await store.grants_to(ACCOUNT, paging_cases.REGION, key_id, {CAROL})] == carols
    assert verified == []
    # A row changed in any way is verified anew, and refused when its document does not verify
    await fetch_value(dsn, "UPDATE kms_grants SET doc=replace(doc, 'Decrypt', 'Encrypt') WHERE grant_id=$1",
                      carols[5])
    with pytest.raises(errors.KMSInternalException):
        await store.grants_to(ACCOUNT, paging_cases.REGION, key_id, {CAROL})
    assert [row[3] for row in verified] == [carols[5]]
    with pytest.raises(errors.KMSInternalException):
        await store.get_grant(ACCOUNT, paging_cases.REGION, key_id, carols[5])
