"""AWS KMS resource quotas that bound what one caller can make a node hold: aliases and grants
per key ("Resource quotas" in the AWS KMS developer guide)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keytrail.kms import errors
from keytrail.kms.operations import aliases, grants
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
