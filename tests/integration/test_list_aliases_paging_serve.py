"""ListAliases through boto3's paginator against a real `keytrail serve`, on SQLite and on two
PostgreSQL nodes sharing a store: every alias once, in name order as code points order them
(not the database's collation), with and without a KeyId, as aliases are made, moved and deleted
between pages through either node."""

from __future__ import annotations

from typing import Any

import pytest

from keytrail.kms.managed_keys import PREDEFINED
from tests.integration.test_many_grants_serve import nodes  # noqa: F401  (a fixture)
from tests.integration.test_serve_store import database  # noqa: F401  (a fixture)

pytestmark = pytest.mark.integration

# Code point order is not a dictionary's: "-" < digits < capitals < "_" < letters
_STEMS = ["-dash", "0zero", "Zulu", "_under", "alpha", "alpha/beta", "alpha-beta", "zulu", "Alpha", "beta"]
ALIASES = 90


def _with_predefined(names: list[str]) -> list[str]:
    """What ListAliases lists without a KeyId: `names` and the predefined aliases (alias/aws/s3, …)
    with no AWS managed key yet, in name order."""
    return sorted([*names, *PREDEFINED])


def _listed(client: Any, **params: Any) -> list[str]:
    pages = client.get_paginator("list_aliases").paginate(**params)
    return [alias["AliasName"] for page in pages for alias in page["Aliases"]]


def test_the_paginator_lists_every_alias_once_in_order_as_they_come_and_go(nodes: Any) -> None:  # noqa: F811
    first, second = nodes
    alice, other = first.client("alice"), second.client("alice")
    keys = [alice.create_key()["KeyMetadata"] for _ in range(3)]
    targets = {f"alias/{_STEMS[n % len(_STEMS)]}-{n:03d}": keys[n % 2]["KeyId"] for n in range(ALIASES)}
    for name, key_id in targets.items():
        alice.create_alias(AliasName=name, TargetKeyId=key_id)
    ordered = sorted(targets)
    assert _listed(other, PaginationConfig={"PageSize": 7}) == _with_predefined(ordered)
    assert _listed(alice) == _with_predefined(ordered)  # ListAliases' default page: 50
    for key in keys[:2]:
        of_key = sorted(name for name, key_id in targets.items() if key_id == key["KeyId"])
        assert _listed(other, KeyId=key["KeyId"], PaginationConfig={"PageSize": 4}) == of_key
        assert _listed(alice, KeyId=key["Arn"], PaginationConfig={"PageSize": 40}) == of_key
    assert _listed(alice, KeyId=keys[2]["KeyId"]) == []

    # Page by page, alternating nodes: the page's last alias and one ahead deleted, one ahead moved
    # to the third key, one made ahead and one behind the marker
    page = alice.list_aliases(Limit=10)
    assert [a["AliasName"] for a in page["Aliases"]] == ordered[:10] and page["Truncated"]
    other.delete_alias(AliasName=ordered[9])
    alice.delete_alias(AliasName=ordered[20])
    other.update_alias(AliasName=ordered[30], TargetKeyId=keys[2]["KeyId"])
    alice.create_alias(AliasName="alias/zz-late", TargetKeyId=keys[2]["KeyId"])
    other.create_alias(AliasName="alias/--early", TargetKeyId=keys[2]["KeyId"])
    rest: list[str] = []
    marker, client = page["NextMarker"], other
    while marker:
        page = client.list_aliases(Limit=9, Marker=marker)
        rest += [a["AliasName"] for a in page["Aliases"]]
        marker, client = page.get("NextMarker"), (alice if client is other else other)
    assert rest == _with_predefined([name for name in ordered[10:] if name != ordered[20]] + ["alias/zz-late"])
    assert _listed(other, KeyId=keys[2]["KeyId"], PaginationConfig={"PageSize": 1}) == [
        "alias/--early", ordered[30], "alias/zz-late"]
    # A marker of one listing is not another's
    marked = alice.list_aliases(KeyId=keys[0]["KeyId"], Limit=1)["NextMarker"]
    with pytest.raises(alice.exceptions.InvalidMarkerException):
        other.list_aliases(Marker=marked)
