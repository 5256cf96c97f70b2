"""ListAliases pages from the store (SQLite here; PostgreSQL and boto3's paginator in
tests/integration/test_list_aliases_paging_serve.py): a page reads the aliases it answers with, not
every alias of the account and Region, and walking its markers gives every alias once, in name
order, with or without a KeyId, as aliases come and go between pages. CreateAlias's quota and
kms:ResourceAliases read the key's aliases only."""

from __future__ import annotations

import base64
import hashlib
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import AccessDecision, AccessRequest
from keytrail.kms.condition_keys import RESOURCE_ALIASES
from keytrail.kms.identifiers import key_arn
from keytrail.kms.managed_keys import PREDEFINED
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Alias
from tests.support.allow_all import ACCOUNT, AllowAll, alice, allow_all_service

REGION = "us-east-1"  # alice()'s
START = datetime(2026, 1, 1, tzinfo=UTC)
# Names whose code point order is not a dictionary's: "-" < "/" < digits < capitals < "_" < letters
_STEMS = ["-dash", "0zero", "Zulu", "_under", "alpha", "alpha/beta", "alpha-beta", "zulu"]


def with_predefined(names: Any) -> list[str]:
    """What ListAliases lists without a KeyId: `names` and the predefined aliases (alias/aws/s3, …),
    whose AWS managed keys are not made yet, in name order."""
    return sorted([*names, *PREDEFINED])


def names(count: int) -> list[str]:
    return [f"alias/{_STEMS[n % len(_STEMS)]}-{n:04d}" for n in range(count)]


Listed = tuple[SqliteStore, KmsService, dict[str, str], list[str]]


async def _holding(tmp_path: Path) -> Listed:
    """300 aliases of three keys, made in no order (name -> key id), and four keys: the fourth has none."""
    store, service = allow_all_service(tmp_path)
    keys = [(await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["KeyId"] for _ in range(4)]
    targets = {name: keys[n % 3] for n, name in enumerate(names(300))}
    made = list(targets)
    random.Random(3).shuffle(made)
    for name in made:
        await store.put_alias(Alias(ACCOUNT, REGION, name, targets[name], START, START))
    return store, service, targets, keys


@pytest.fixture
async def listed(tmp_path: Path) -> Listed:
    return await _holding(tmp_path)


async def walk(service: KmsService, **params: Any) -> tuple[list[str], int]:
    """Every alias ListAliases lists, following NextMarker while Truncated, and how many calls it took."""
    seen: list[str] = []
    calls = 0
    while True:
        answer = await service.execute("ListAliases", alice(), params)
        calls += 1
        seen += [listed["AliasName"] for listed in answer["Aliases"]]
        if not answer["Truncated"]:
            assert "NextMarker" not in answer
            return seen, calls
        params = {**params, "Marker": answer["NextMarker"]}


@pytest.mark.parametrize("limit", [7, 50, 1000, None])
async def test_following_the_markers_lists_every_alias_once_in_order(listed: Listed, limit: int | None) -> None:
    _, service, targets, keys = listed
    seen, calls = await walk(service, **({"Limit": limit} if limit else {}))
    assert seen == with_predefined(targets)
    assert calls == -(-len(seen) // (limit or 50))  # ListAliases' default page is 50 aliases
    for key_id in (keys[1], key_arn(REGION, ACCOUNT, keys[2])):
        of_key, _ = await walk(service, KeyId=key_id, **({"Limit": limit} if limit else {}))
        assert of_key == sorted(name for name, target in targets.items() if key_id.endswith(target))


async def test_a_page_does_not_read_every_alias_of_the_region(listed: Listed, monkeypatch: pytest.MonkeyPatch) -> None:
    store, service, targets, keys = listed

    async def every_alias(account: str, region: str) -> list[Alias]:
        raise AssertionError("ListAliases read every alias of the account and Region for one page")

    monkeypatch.setattr(store, "list_aliases", every_alias)
    first = await service.execute("ListAliases", alice(), {"Limit": 1})
    assert [a["AliasName"] for a in first["Aliases"]] == sorted(targets)[:1] and first["Truncated"] is True
    of_key = await service.execute("ListAliases", alice(), {"KeyId": keys[1], "Limit": 2})
    assert len(of_key["Aliases"]) == 2


async def test_aliases_made_and_deleted_between_pages_are_listed_as_they_are_now(listed: Listed) -> None:
    store, service, targets, keys = listed
    ordered = sorted(targets)
    first = await service.execute("ListAliases", alice(), {"Limit": 10})
    assert [a["AliasName"] for a in first["Aliases"]] == ordered[:10]
    # The page's last alias deleted (a loop deleting what it lists), one ahead deleted, one ahead
    # moved to another key, one made ahead and one behind
    for gone in (ordered[9], ordered[20]):
        await store.delete_alias(Alias(ACCOUNT, REGION, gone, targets[gone], START, START))
    await store.put_alias(Alias(ACCOUNT, REGION, ordered[30], keys[3], START, START))
    for made in ("alias/zz-late", "alias/--early"):
        await store.put_alias(Alias(ACCOUNT, REGION, made, keys[3], START, START))
    rest, _ = await walk(service, Marker=first["NextMarker"], Limit=25)
    assert rest == with_predefined([name for name in ordered[10:] if name != ordered[20]] + ["alias/zz-late"])
    of_new_key, _ = await walk(service, KeyId=keys[3], Limit=1)
    assert of_new_key == ["alias/--early", ordered[30], "alias/zz-late"]


async def test_a_key_deleted_takes_its_aliases_out_of_the_listing(listed: Listed) -> None:
    store, service, targets, keys = listed
    await walk(service, Limit=5)  # the listing's order made
    gone = keys[0]
    key = await store.get_key(ACCOUNT, REGION, gone)
    assert key is not None
    await store.delete_key(key)
    seen, _ = await walk(service, Limit=13)
    assert seen == with_predefined(name for name, target in targets.items() if target != gone)
    assert (await walk(service, KeyId=keys[1], Limit=13))[0] == sorted(
        name for name, target in targets.items() if target == keys[1])


@pytest.mark.parametrize("position", [',1.5', ',NaN', "", ',true', ',"a","b"', ',null'])
async def test_a_made_up_marker_is_invalid_even_for_an_empty_listing(tmp_path: Path, position: str) -> None:
    # With the whole listing in memory, a made-up number as the position was taken for an empty
    # listing (an empty last page); a store's page cannot tell which listings are empty, and no
    # ListAliases page ends at a number.
    _, service = allow_all_service(tmp_path)
    tag = hashlib.sha256(f"ListAliases {ACCOUNT} {REGION} *".encode()).hexdigest()[:16]
    marker = base64.urlsafe_b64encode(f'["{tag}"{position}]'.encode()).decode()
    good = base64.urlsafe_b64encode(f'["{tag}","alias/zz"]'.encode()).decode()  # past alias/aws/…
    assert (await service.execute("ListAliases", alice(), {"Marker": good})) == {"Aliases": [], "Truncated": False}
    with pytest.raises(errors.InvalidMarkerException):
        await service.execute("ListAliases", alice(), {"Marker": marker})


class _ReadingAliases(AllowAll):
    """Allows every call, as if a policy read kms:ResourceAliases: notes the values it was given."""

    def __init__(self) -> None:
        self.aliases: list[Any] = []

    def reads(self, key: Any, principal: Any) -> frozenset[str]:
        return frozenset({RESOURCE_ALIASES})

    def authorize(self, request: AccessRequest) -> AccessDecision:
        if request.key is not None:
            self.aliases.append(request.conditions.get(RESOURCE_ALIASES))
        return super().authorize(request)


async def test_a_key_s_aliases_are_counted_and_read_without_the_region_s_others(
        listed: Listed, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _, targets, keys = listed
    reading = _ReadingAliases()
    service = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=reading, authorizer=reading))

    async def every_alias(account: str, region: str) -> list[Alias]:
        raise AssertionError("a call on one key read every alias of the account and Region")

    monkeypatch.setattr(store, "list_aliases", every_alias)
    await service.execute("DescribeKey", alice(), {"KeyId": keys[1]})
    assert reading.aliases[-1] == sorted(name for name, target in targets.items() if target == keys[1])
    await service.execute("CreateAlias", alice(), {"AliasName": "alias/new", "TargetKeyId": keys[3]})
    await service.execute("DescribeKey", alice(), {"KeyId": keys[3]})
    assert reading.aliases[-1] == ["alias/new"]
    with pytest.raises(errors.LimitExceededException) as refused:  # keys[1] holds 100: more than the quota
        await service.execute("CreateAlias", alice(), {"AliasName": "alias/more", "TargetKeyId": keys[1]})
    assert refused.value.message.endswith("current usage is 100.")
