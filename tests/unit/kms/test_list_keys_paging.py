"""ListKeys pages from the store (SQLite here; PostgreSQL in
tests/integration/test_list_keys_paging_postgres.py): a page reads the keys it answers with, not
every key of the account and Region, and walking its markers gives every key once, in order. A
marker handed out before paging moved into the store still works; one made up in its format with
a position no listing hands out is InvalidMarkerException, not a silently empty last page."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keytrail.kms import errors
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.service import KmsService
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Alias
from tests.support.allow_all import ACCOUNT, alice, allow_all_service

REGION = "us-east-1"  # alice()'s
START = datetime(2026, 1, 1, tzinfo=UTC)


def many_keys(count: int) -> list[Key]:
    """`count` keys of alice's account and Region, shuffled: three at a time share a creation date,
    which the key id then orders."""
    rng = random.Random(count)
    keys = [Key(ACCOUNT, REGION, f"{rng.getrandbits(128):032x}", START + timedelta(seconds=n // 3, microseconds=n // 3),
                policy="{}", materials=(KeyMaterial(f"{n:064x}", os.urandom(32), START),))
            for n in range(count)]
    rng.shuffle(keys)
    return keys


def in_listing_order(keys: Sequence[Key]) -> list[str]:
    return [key.key_id for key in sorted(keys, key=lambda k: (k.creation_date, k.key_id))]


async def walk(service: KmsService, **params: Any) -> tuple[list[str], int]:
    """Every key ListKeys lists, following NextMarker while Truncated as boto3's paginator does,
    and the number of calls it took."""
    seen: list[str] = []
    calls = 0
    while True:
        answer = await service.execute("ListKeys", alice(), params)
        calls += 1
        seen += [listed["KeyId"] for listed in answer["Keys"]]
        if not answer["Truncated"]:
            assert "NextMarker" not in answer
            return seen, calls
        params = {**params, "Marker": answer["NextMarker"]}


def marker_of_before(account: str, region: str, last: Key) -> str:
    """A ListKeys marker as keytrail wrote it before paging moved into the store: base64url of the
    JSON array of the listing's tag and the last key's position (creation date as a POSIX
    timestamp, key id)."""
    tag = hashlib.sha256(f"ListKeys {account} {region}".encode()).hexdigest()[:16]
    text = json.dumps([tag, last.creation_date.timestamp(), last.key_id], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode()


def forged(account: str, region: str, position: str) -> str:
    """A marker in keytrail's own format (the listing's tag, which anyone can work out, first), its
    position as JSON text."""
    tag = hashlib.sha256(f"ListKeys {account} {region}".encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(f'["{tag}"{position}]'.encode()).decode()


# Positions no ListKeys page ends at: each was taken as one, and most answered an empty last page
# with Truncated false (a caller's loop then stopped short, without an error).
FORGED_POSITIONS = [
    ',NaN,"x"', ',Infinity,"x"', ',-Infinity,"x"', ',1e999,"x"', ',-1e999,"x"',  # not finite
    "",  # no position at all: the first page again
    ',true,"x"', ',false,"x"', ',null,"x"', ',[1],"x"', ',{},"x"', ',1.5,true',  # not a number and a string
    ',1.5', ',"x"', ',1.5,"x","y"', ',1.5,"x",2',  # too few, too many
    ',"x",1.5', ',1.5,2.5',  # the types in the wrong places
    ',1e300,"x"',  # a number, but no date a key was created at
]


async def _holding(tmp_path: Path, count: int) -> tuple[SqliteStore, KmsService, list[Key]]:
    store, service = allow_all_service(tmp_path)
    keys = many_keys(count)
    for at in range(0, len(keys), 500):
        await store.put_keys(keys[at:at + 500])
    return store, service, keys


@pytest.fixture
async def listed(tmp_path: Path) -> tuple[SqliteStore, KmsService, list[Key]]:
    return await _holding(tmp_path, 2_500)


@pytest.fixture
async def few(tmp_path: Path) -> tuple[SqliteStore, KmsService, list[Key]]:
    return await _holding(tmp_path, 30)


@pytest.mark.parametrize("limit", [7, 100, 1000, None])
async def test_following_the_markers_lists_every_key_once_in_order(
        listed: tuple[SqliteStore, KmsService, list[Key]], limit: int | None) -> None:
    _, service, keys = listed
    seen, calls = await walk(service, **({"Limit": limit} if limit else {}))
    assert seen == in_listing_order(keys)
    assert calls == -(-len(keys) // (limit or 100))  # ListKeys' default page is 100 keys


async def test_a_page_does_not_read_every_key_of_the_region(
        listed: tuple[SqliteStore, KmsService, list[Key]], monkeypatch: pytest.MonkeyPatch) -> None:
    store, service, keys = listed

    async def every_key(account: str, region: str) -> list[Key]:
        raise AssertionError("ListKeys read every key of the account and Region for one page")

    monkeypatch.setattr(store, "list_keys", every_key)
    first = await service.execute("ListKeys", alice(), {"Limit": 1})
    assert [k["KeyId"] for k in first["Keys"]] == in_listing_order(keys)[:1] and first["Truncated"] is True


async def test_a_store_page_starts_strictly_after_its_position(
        listed: tuple[SqliteStore, KmsService, list[Key]]) -> None:
    store, _, keys = listed
    ordered = sorted(keys, key=lambda k: (k.creation_date, k.key_id))
    assert await store.list_keys_page(ACCOUNT, REGION, None, 3) == ordered[:3]
    at = (ordered[41].creation_date.timestamp(), ordered[41].key_id)
    assert await store.list_keys_page(ACCOUNT, REGION, at, 5) == ordered[42:47]
    end = (ordered[-1].creation_date.timestamp(), ordered[-1].key_id)
    assert await store.list_keys_page(ACCOUNT, REGION, end, 5) == []
    assert await store.list_keys_page(ACCOUNT, REGION, (end[0], ""), 5) == [ordered[-1]]  # where no key is (now)
    assert await store.list_keys_page(ACCOUNT, "eu-west-1", None, 5) == []
    changed = replace(ordered[42], description="changed")  # its place kept, the key as it is now
    await store.put_key(changed)
    assert await store.list_keys_page(ACCOUNT, REGION, at, 2) == [changed, ordered[43]]


async def test_a_marker_handed_out_before_still_works(listed: tuple[SqliteStore, KmsService, list[Key]]) -> None:
    _, service, keys = listed
    ordered = in_listing_order(keys)
    last = next(key for key in keys if key.key_id == ordered[99])
    rest, _ = await walk(service, Marker=marker_of_before(ACCOUNT, REGION, last), Limit=250)
    assert rest == ordered[100:]
    first = await service.execute("ListKeys", alice(), {"Limit": 100})
    assert first["NextMarker"] == marker_of_before(ACCOUNT, REGION, last)  # the same format still


async def test_keys_added_and_deleted_between_pages_are_listed_as_they_are_now(
        listed: tuple[SqliteStore, KmsService, list[Key]]) -> None:
    store, service, keys = listed
    ordered = sorted(keys, key=lambda k: (k.creation_date, k.key_id))
    first = await service.execute("ListKeys", alice(), {"Limit": 10})
    # The page's last key deleted (a loop deleting what it lists, as AWS allows), a key made later
    for gone in ordered[9:12]:
        await store.delete_key(gone)
    late = Key(ACCOUNT, REGION, "f" * 32, START + timedelta(days=1), policy="{}")
    await store.put_key(late)
    rest, _ = await walk(service, Marker=first["NextMarker"], Limit=500)
    assert rest == [key.key_id for key in ordered[12:]] + [late.key_id]


@pytest.mark.parametrize("position", FORGED_POSITIONS)
async def test_a_made_up_marker_in_keytrails_format_is_invalid(
        few: tuple[SqliteStore, KmsService, list[Key]], position: str) -> None:
    _, service, _ = few
    with pytest.raises(errors.InvalidMarkerException) as refused:
        await service.execute("ListKeys", alice(), {"Marker": forged(ACCOUNT, REGION, position)})
    assert refused.value.message == "The marker is not valid."


@pytest.mark.parametrize("position", [',NaN', ',1e999', "", ',1.5', ',true', ',"a","b"', ',null'])
async def test_a_made_up_marker_of_list_aliases_is_invalid(tmp_path: Path, position: str) -> None:
    # ListAliases' positions are one name (tests/unit/kms/test_list_aliases_paging.py)
    store, service = allow_all_service(tmp_path)
    await store.put_alias(Alias(ACCOUNT, REGION, "alias/zz", "k", START, START))
    tag = hashlib.sha256(f"ListAliases {ACCOUNT} {REGION} *".encode()).hexdigest()[:16]
    marker = base64.urlsafe_b64encode(f'["{tag}"{position}]'.encode()).decode()
    good = base64.urlsafe_b64encode(f'["{tag}","alias/zz"]'.encode()).decode()  # past alias/aws/…
    assert (await service.execute("ListAliases", alice(), {"Marker": good}))["Aliases"] == []
    with pytest.raises(errors.InvalidMarkerException):
        await service.execute("ListAliases", alice(), {"Marker": marker})


async def test_a_refused_key_row_fails_every_page_of_its_region(tmp_path: Path) -> None:
    # A key whose document does not verify is nowhere in memory: a page that left it out would
    # pass it off as absent, and no page can tell where it would have stood.
    store, _ = allow_all_service(tmp_path)
    keys = many_keys(30)
    await store.put_keys(keys)
    root = store._root
    await store.close()
    edited = in_listing_order(keys)[-1]
    with sqlite3.connect(tmp_path / "keys.db") as db:
        doc = json.loads(db.execute("SELECT doc FROM keys WHERE key_id=?", (edited,)).fetchone()[0])
        doc["description"] = "edited"  # the MAC member kept as it was
        db.execute("UPDATE keys SET doc=? WHERE key_id=?", (json.dumps(doc, separators=(",", ":")), edited))
    db.close()
    store = SqliteStore(tmp_path / "keys.db", root)
    with pytest.raises(errors.KMSInternalException):
        await store.list_keys_page(ACCOUNT, REGION, None, 1)
    assert await store.list_keys_page(ACCOUNT, "eu-west-1", None, 1) == []
    await store.close()
