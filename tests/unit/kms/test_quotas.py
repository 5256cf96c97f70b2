"""AWS KMS resource quotas that bound what one caller can make a node hold: keys per Region,
aliases and grants per key ("Resource quotas" in the AWS KMS developer guide)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keytrail.kms import errors
from keytrail.kms.context import CallContext
from keytrail.kms.operations import aliases, grants, keys
from keytrail.kms.service import KmsService
from tests.support.allow_all import ACCOUNT, alice, allow_all_service

BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"


async def _key(service: KmsService) -> str:
    return str((await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["Arn"])


async def test_a_key_takes_fifty_aliases_and_no_more_by_create_or_update(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    full, other = await _key(service), await _key(service)
    for n in range(aliases.ALIASES_PER_KEY):
        await service.execute("CreateAlias", alice(), {"AliasName": f"alias/a{n}", "TargetKeyId": full})
    await service.execute("CreateAlias", alice(), {"AliasName": "alias/elsewhere", "TargetKeyId": other})
    for operation, name in (("CreateAlias", "alias/one-more"), ("UpdateAlias", "alias/elsewhere")):
        with pytest.raises(errors.LimitExceededException) as caught:
            await service.execute(operation, alice(), {"AliasName": name, "TargetKeyId": full})
        # AWS's message (a refusal AWS logged: scylladb/scylla-cluster-tests#7611)
        assert caught.value.message == (
            "Aliases per key quota for this account in this region is 50, current usage is 50.")
    # An alias already on the full key may be updated to it again; one removed makes room.
    await service.execute("UpdateAlias", alice(), {"AliasName": "alias/a0", "TargetKeyId": full})
    await service.execute("DeleteAlias", alice(), {"AliasName": "alias/a0"})
    await service.execute("UpdateAlias", alice(), {"AliasName": "alias/elsewhere", "TargetKeyId": full})


async def test_a_key_takes_grants_up_to_its_quota_and_a_named_retry_still_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grants, "GRANTS_PER_KEY", 3)  # AWS's 50,000, scaled down
    _, service = allow_all_service(tmp_path)
    key = await _key(service)
    request = {"KeyId": key, "GranteePrincipal": BOB, "Operations": ["Decrypt"]}
    named = (await service.execute("CreateGrant", alice(), {**request, "Name": "app"}))["GrantId"]
    for _ in range(2):
        await service.execute("CreateGrant", alice(), request)
    with pytest.raises(errors.LimitExceededException) as caught:
        await service.execute("CreateGrant", alice(), request)
    assert caught.value.message == f"{key} already has 3 grants, the quota of grants per KMS key."
    again = await service.execute("CreateGrant", alice(), {**request, "Name": "app"})  # no new grant
    assert again["GrantId"] == named
    await service.execute("RevokeGrant", alice(), {"KeyId": key, "GrantId": named})
    await service.execute("CreateGrant", alice(), request)



def _in(region: str) -> CallContext:
    return CallContext(alice().principal, region, "req-2")


async def test_a_region_takes_keys_up_to_its_quota_counting_keys_pending_deletion_and_replicas(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "KEYS_PER_REGION", 3)  # AWS's 100,000, scaled down
    _, service = allow_all_service(tmp_path)
    full = "Key quota for this account in this region is 3 but the current usage is 3."  # AWS's words
    primary = (await service.execute("CreateKey", alice(), {"MultiRegion": True}))["KeyMetadata"]["Arn"]
    doomed = await _key(service)
    await service.execute("ScheduleKeyDeletion", alice(), {"KeyId": doomed, "PendingWindowInDays": 7})
    await _key(service)
    with pytest.raises(errors.LimitExceededException) as caught:  # a key pending deletion counts
        await service.execute("CreateKey", alice(), {})
    assert caught.value.message == full
    for _ in range(2):
        await service.execute("CreateKey", _in("us-west-2"), {})
    await service.execute("ReplicateKey", alice(), {"KeyId": primary, "ReplicaRegion": "us-west-2"})
    with pytest.raises(errors.LimitExceededException) as caught:  # and so does a replica
        await service.execute("CreateKey", _in("us-west-2"), {})
    assert caught.value.message == full
    for _ in range(3):
        await service.execute("CreateKey", _in("eu-west-1"), {})
    with pytest.raises(errors.LimitExceededException) as caught:  # a replica needs room in its Region
        await service.execute("ReplicateKey", alice(), {"KeyId": primary, "ReplicaRegion": "eu-west-1"})
    assert caught.value.message == full
    await service.execute("CreateKey", _in("ap-south-1"), {})  # each Region has a quota of its own
