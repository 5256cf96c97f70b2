"""ListGrants pages from the store (SQLite here; PostgreSQL in
tests/integration/test_list_grants_paging_postgres.py): a page reads the grants it answers with,
not every grant of the key (AWS's quota is 50,000 a key), and walking its markers gives every
grant once, in order, with or without a GranteePrincipal filter. A marker handed out before
paging moved into the store still works; one made up with a position no listing hands out is
InvalidMarkerException."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keytrail.kms import errors
from keytrail.kms.service import KmsService
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Grant
from tests.support.allow_all import ACCOUNT, alice, allow_all_service
from tests.unit.kms.test_list_keys_paging import FORGED_POSITIONS

REGION = "us-east-1"  # alice()'s
START = datetime(2026, 1, 1, tzinfo=UTC)
BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"
CAROL = f"arn:aws:iam::{ACCOUNT}:user/carol"

Listed = tuple[SqliteStore, KmsService, str, list[Grant]]


def many_grants(key_id: str, count: int) -> list[Grant]:
    """`count` grants on the key, shuffled: three at a time share a creation date, which the grant
    id then orders; every fourth is to carol, the others to bob."""
    rng = random.Random(count)
    grants = [Grant(account=ACCOUNT, region=REGION, key_id=key_id, grant_id=f"{rng.getrandbits(256):064x}",
                    grantee_principal=CAROL if n % 4 == 0 else BOB, operations=("Decrypt",),
                    issuing_account=ACCOUNT, creation_date=START + timedelta(seconds=n // 3, microseconds=n // 3),
                    token=f"token-{n}")
              for n in range(count)]
    rng.shuffle(grants)
    return grants


def in_listing_order(grants: Sequence[Grant], grantee: str | None = None) -> list[str]:
    return [g.grant_id for g in sorted(grants, key=lambda g: (g.creation_date, g.grant_id))
            if grantee in (None, g.grantee_principal)]


async def walk(service: KmsService, key_id: str, **params: Any) -> tuple[list[str], int]:
    """Every grant ListGrants lists, following NextMarker while Truncated as boto3's paginator
    does, and the number of calls it took."""
    seen: list[str] = []
    calls = 0
    params = {"KeyId": key_id, **params}
    while True:
        answer = await service.execute("ListGrants", alice(), params)
        calls += 1
        seen += [listed["GrantId"] for listed in answer["Grants"]]
        if not answer["Truncated"]:
            assert "NextMarker" not in answer
            return seen, calls
        params = {**params, "Marker": answer["NextMarker"]}


def marker(key_arn: str, position: str) -> str:
    """A ListGrants marker in keytrail's format (the listing's tag first), its position as JSON
    text: as keytrail wrote them before paging moved into the store, or made up."""
    tag = hashlib.sha256(f"ListGrants {key_arn}".encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(f'["{tag}"{position}]'.encode()).decode()


def position_of(grant: Grant) -> str:
    return "," + json.dumps([grant.creation_date.timestamp(), grant.grant_id], separators=(",", ":"))[1:-1]


async def holding(service: KmsService, store: Any, count: int) -> tuple[str, list[Grant]]:
    """A key of alice's with `count` grants (and another key with grants of its own)."""
    key_arn = (await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["Arn"]
    grants = many_grants(key_arn.rsplit("/", 1)[1], count)
    other = (await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["KeyId"]
    for grant in [*grants, *many_grants(other, 10)]:
        await store.put_grant(grant)
    return key_arn, grants


@pytest.fixture
async def listed(tmp_path: Path) -> Listed:
    store, service = allow_all_service(tmp_path)
    key_arn, grants = await holding(service, store, 150)
    return store, service, key_arn, grants


@pytest.fixture
async def few(tmp_path: Path) -> Listed:
    store, service = allow_all_service(tmp_path)
    key_arn, grants = await holding(service, store, 6)
    return store, service, key_arn, grants


@pytest.mark.parametrize("limit", [7, 100, 1000, None])
async def test_following_the_markers_lists_every_grant_once_in_order(listed: Listed, limit: int | None) -> None:
    _, service, key_arn, grants = listed
    seen, calls = await walk(service, key_arn, **({"Limit": limit} if limit else {}))
    assert seen == in_listing_order(grants)
    assert calls == -(-len(grants) // (limit or 50))  # ListGrants' default page is 50 grants


@pytest.mark.parametrize("limit", [1, 7, None])
async def test_a_grantee_filter_pages_through_that_grantees_grants(listed: Listed, limit: int | None) -> None:
    _, service, key_arn, grants = listed
    for grantee in (BOB, CAROL):
        seen, calls = await walk(service, key_arn, GranteePrincipal=grantee, **({"Limit": limit} if limit else {}))
        assert seen == in_listing_order(grants, grantee)
        assert calls == -(-len(seen) // (limit or 50))
    nobody, _ = await walk(service, key_arn, GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:user/nobody")
    assert nobody == []


async def test_a_page_does_not_read_every_grant_of_the_key(listed: Listed, monkeypatch: pytest.MonkeyPatch) -> None:
    store, service, key_arn, grants = listed

    async def every_grant(account: str, region: str, key_id: str) -> list[Grant]:
        raise AssertionError("ListGrants read every grant of the key for one page")

    monkeypatch.setattr(store, "list_grants", every_grant)
    first = await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 1})
    assert [g["GrantId"] for g in first["Grants"]] == in_listing_order(grants)[:1] and first["Truncated"] is True
    by_grantee = await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 2, "GranteePrincipal": CAROL})
    assert [g["GrantId"] for g in by_grantee["Grants"]] == in_listing_order(grants, CAROL)[:2]
    named = in_listing_order(grants)[5]
    by_id = await service.execute("ListGrants", alice(), {"KeyId": key_arn, "GrantId": named})
    assert [g["GrantId"] for g in by_id["Grants"]] == [named] and by_id["Truncated"] is False


async def test_a_store_page_starts_strictly_after_its_position(listed: Listed) -> None:
    store, _, key_arn, grants = listed
    key_id = key_arn.rsplit("/", 1)[1]
    ordered = sorted(grants, key=lambda g: (g.creation_date, g.grant_id))
    assert await store.list_grants_page(ACCOUNT, REGION, key_id, None, 3) == ordered[:3]
    at = (ordered[41].creation_date.timestamp(), ordered[41].grant_id)
    assert await store.list_grants_page(ACCOUNT, REGION, key_id, at, 5) == ordered[42:47]
    to_carol = [g for g in ordered[42:] if g.grantee_principal == CAROL][:4]
    assert await store.list_grants_page(ACCOUNT, REGION, key_id, at, 4, CAROL) == to_carol
    end = (ordered[-1].creation_date.timestamp(), ordered[-1].grant_id)
    assert await store.list_grants_page(ACCOUNT, REGION, key_id, end, 5) == []
    # Where no grant is: before every grant of that instant (the last three share one)
    assert await store.list_grants_page(ACCOUNT, REGION, key_id, (end[0], ""), 5) == ordered[-3:]
    assert await store.list_grants_page(ACCOUNT, "eu-west-1", key_id, None, 5) == []
    assert await store.list_grants(ACCOUNT, REGION, key_id) == ordered


async def test_a_marker_handed_out_before_still_works(listed: Listed) -> None:
    _, service, key_arn, grants = listed
    ordered = sorted(grants, key=lambda g: (g.creation_date, g.grant_id))
    rest, _ = await walk(service, key_arn, Marker=marker(key_arn, position_of(ordered[49])), Limit=100)
    assert rest == in_listing_order(grants)[50:]
    first = await service.execute("ListGrants", alice(), {"KeyId": key_arn})
    assert first["NextMarker"] == marker(key_arn, position_of(ordered[49]))  # the same format still


async def test_grants_retired_and_made_between_pages_are_listed_as_they_are_now(listed: Listed) -> None:
    store, service, key_arn, grants = listed
    ordered = sorted(grants, key=lambda g: (g.creation_date, g.grant_id))
    first = await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Limit": 10})
    for gone in ordered[9:12]:  # the page's last grant too (a loop retiring what it lists)
        assert await store.delete_grant(gone)
    made = await service.execute("CreateGrant", alice(), {"KeyId": key_arn, "GranteePrincipal": BOB,
                                                          "Operations": ["Encrypt"]})
    rest, _ = await walk(service, key_arn, Marker=first["NextMarker"], Limit=100)
    assert rest == [g.grant_id for g in ordered[12:]] + [made["GrantId"]]


@pytest.mark.parametrize("position", FORGED_POSITIONS)
async def test_a_made_up_marker_in_keytrails_format_is_invalid(few: Listed, position: str) -> None:
    _, service, key_arn, _ = few
    with pytest.raises(errors.InvalidMarkerException) as refused:
        await service.execute("ListGrants", alice(), {"KeyId": key_arn, "Marker": marker(key_arn, position)})
    assert refused.value.message == "The marker is not valid."
