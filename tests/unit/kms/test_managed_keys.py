"""AWS managed keys: DescribeKey on a predefined alias (alias/aws/s3) with no key yet makes the key,
once, and associates the alias; its metadata, policy and rotation are AWS's. Policy refusals are
checked against a real serve in tests/integration/kms/test_managed_keys.py."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.managed_keys import PREDEFINED, managed_key_id
from keytrail.kms.model import KeyManager
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Alias
from tests.support.allow_all import ACCOUNT, AllowAll, alice, allow_all_service

REGION = "us-east-1"  # alice()'s


@pytest.fixture
def service(tmp_path: Path) -> tuple[SqliteStore, KmsService]:
    return allow_all_service(tmp_path)


async def test_describe_key_on_a_predefined_alias_makes_its_aws_managed_key(
    service: tuple[SqliteStore, KmsService],
) -> None:
    store, svc = service
    metadata = (await svc.execute("DescribeKey", alice(), {"KeyId": "alias/aws/s3"}))["KeyMetadata"]
    assert metadata["KeyManager"] == "AWS" and metadata["KeyState"] == "Enabled"
    assert metadata["KeySpec"] == "SYMMETRIC_DEFAULT" and metadata["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert metadata["Description"] == "Default key that protects my S3 objects when no other key is defined"
    assert metadata["KeyId"] == managed_key_id(ACCOUNT, REGION, "alias/aws/s3")
    alias = await store.get_alias(ACCOUNT, REGION, "alias/aws/s3")
    assert alias is not None and alias.key_id == metadata["KeyId"]
    key = await store.get_key(ACCOUNT, REGION, metadata["KeyId"])
    assert key is not None and key.key_manager is KeyManager.AWS
    assert key.rotation_enabled and key.rotation_period_days == 365


@pytest.mark.parametrize("name", ["alias/aws/backup", "alias/aws/ecr", "alias/aws/fsx", "alias/aws/kinesis"])
async def test_the_aliases_terraform_reads_as_default_keys_are_predefined(
    service: tuple[SqliteStore, KmsService], name: str
) -> None:
    # `data "aws_kms_key" { key_id = "alias/aws/backup" }` and the like were NotFoundException.
    _, svc = service
    metadata = (await svc.execute("DescribeKey", alice(), {"KeyId": name}))["KeyMetadata"]
    assert metadata["KeyManager"] == "AWS" and metadata["KeyId"] == managed_key_id(ACCOUNT, REGION, name)


async def test_the_key_is_made_once_and_by_its_alias_arn_too(service: tuple[SqliteStore, KmsService]) -> None:
    store, svc = service
    arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/aws/ebs"
    ids = {
        (await svc.execute("DescribeKey", alice(), {"KeyId": name}))["KeyMetadata"]["KeyId"]
        for name in (arn, "alias/aws/ebs", arn)
    }
    assert len(ids) == 1
    assert len(await store.list_keys(ACCOUNT, REGION)) == 1


async def test_calls_at_once_make_one_key(service: tuple[SqliteStore, KmsService]) -> None:
    store, svc = service
    answers = await asyncio.gather(*(svc.execute("DescribeKey", alice(), {"KeyId": "alias/aws/rds"}) for _ in range(8)))
    assert len({answer["KeyMetadata"]["KeyId"] for answer in answers}) == 1
    assert len(await store.list_keys(ACCOUNT, REGION)) == 1


async def test_a_key_left_without_its_alias_is_found_and_given_it(service: tuple[SqliteStore, KmsService]) -> None:
    """A call stopped between writing the key and the alias: the next call associates that key,
    and makes no second one."""
    store, svc = service
    made = (await svc.execute("DescribeKey", alice(), {"KeyId": "alias/aws/lambda"}))["KeyMetadata"]
    alias = await store.get_alias(ACCOUNT, REGION, "alias/aws/lambda")
    assert alias is not None
    await store.delete_alias(alias)
    again = (await svc.execute("DescribeKey", alice(), {"KeyId": "alias/aws/lambda"}))["KeyMetadata"]
    assert again["KeyId"] == made["KeyId"] and again["CreationDate"] == made["CreationDate"]
    assert len(await store.list_keys(ACCOUNT, REGION)) == 1


async def test_an_alias_associated_first_is_kept(service: tuple[SqliteStore, KmsService]) -> None:
    store, svc = service
    key_id = (await svc.execute("CreateKey", alice(), {}))["KeyMetadata"]["KeyId"]
    now = svc.now()
    await store.put_alias(Alias(ACCOUNT, REGION, "alias/aws/ssm", key_id, now, now))
    metadata = (await svc.execute("DescribeKey", alice(), {"KeyId": "alias/aws/ssm"}))["KeyMetadata"]
    assert metadata["KeyId"] == key_id


@pytest.mark.parametrize(
    "name", ["alias/aws/no-such-service", "alias/mine", "arn:aws:kms:us-east-1:444455556666:alias/aws/s3"]
)
async def test_other_aliases_make_no_key(service: tuple[SqliteStore, KmsService], name: str) -> None:
    store, svc = service
    with pytest.raises(errors.NotFoundException):
        await svc.execute("DescribeKey", alice(), {"KeyId": name})
    assert await store.all_keys() == []


class DenyAll(AllowAll):
    """Refuses every call (no policy allows it)."""

    def authorize(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(Verdict.IMPLICIT_DENY)


async def test_a_caller_who_may_not_describe_the_key_makes_none(tmp_path: Path) -> None:
    # A caller refused everything made the key all the same: 16 keys in each Region name it signed for.
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    deny = DenyAll()
    svc = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=deny, authorizer=deny))
    with pytest.raises(errors.AccessDeniedException):
        await svc.execute("DescribeKey", alice(), {"KeyId": "alias/aws/s3"})
    assert await store.all_keys() == []
    assert await store.get_alias(ACCOUNT, REGION, "alias/aws/s3") is None


@pytest.mark.parametrize("operation", ["Encrypt", "GenerateDataKey"])
async def test_only_describe_key_makes_the_key(service: tuple[SqliteStore, KmsService], operation: str) -> None:
    store, svc = service
    with pytest.raises(errors.NotFoundException):
        await svc.execute(operation, alice(), {"KeyId": "alias/aws/s3", "Plaintext": b"x", "KeySpec": "AES_256"})
    assert await store.all_keys() == []


async def test_the_policy_allows_use_only_through_the_service(service: tuple[SqliteStore, KmsService]) -> None:
    store, svc = service
    china = alice()
    china = type(china)(principal=china.principal, region="cn-north-1", request_id="req-cn")
    key_id = (await svc.execute("DescribeKey", china, {"KeyId": "alias/aws/secretsmanager"}))["KeyMetadata"]["KeyId"]
    key = await store.get_key(ACCOUNT, "cn-north-1", key_id)
    assert key is not None
    use, metadata = json.loads(key.policy)["Statement"]
    assert use["Principal"] == {"AWS": "*"} and "kms:Decrypt" in use["Action"]
    assert use["Condition"]["StringEquals"] == {
        "kms:CallerAccount": ACCOUNT,
        "kms:ViaService": "secretsmanager.cn-north-1.amazonaws.com.cn",
    }
    assert metadata["Principal"] == {"AWS": f"arn:aws-cn:iam::{ACCOUNT}:root"}
    assert metadata["Action"] == ["kms:Describe*", "kms:Get*", "kms:List*"]


def test_each_predefined_alias_names_its_service() -> None:
    assert all(name == service.alias and name.startswith("alias/aws/") for name, service in PREDEFINED.items())
    assert PREDEFINED["alias/aws/ebs"].prefix == "ec2"  # EBS volumes are used through EC2


async def _walk(svc: KmsService, limit: int) -> list[dict[str, object]]:
    """Every entry ListAliases lists, page by page."""
    entries: list[dict[str, object]] = []
    params: dict[str, object] = {"Limit": limit}
    while True:
        page = await svc.execute("ListAliases", alice(), params)
        entries += page["Aliases"]
        if not page["Truncated"]:
            return entries
        params["Marker"] = page["NextMarker"]


async def test_list_aliases_lists_the_predefined_aliases_without_a_target(
    service: tuple[SqliteStore, KmsService],
) -> None:
    _, svc = service
    entries = (await svc.execute("ListAliases", alice(), {}))["Aliases"]
    assert entries == [
        {"AliasName": name, "AliasArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:{name}"} for name in sorted(PREDEFINED)
    ]


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 16, 50])
async def test_pages_list_each_alias_once_once_a_managed_key_is_made(
    service: tuple[SqliteStore, KmsService], limit: int
) -> None:
    _, svc = service
    key_id = (await svc.execute("CreateKey", alice(), {}))["KeyMetadata"]["KeyId"]
    mine = ["alias/a", "alias/aws", "alias/awsx", "alias/aws-s3", "alias/b"]  # around and between alias/aws/…
    for name in mine:
        await svc.execute("CreateAlias", alice(), {"AliasName": name, "TargetKeyId": key_id})
    s3 = (await svc.execute("DescribeKey", alice(), {"KeyId": "alias/aws/s3"}))["KeyMetadata"]["KeyId"]
    entries = await _walk(svc, limit)
    assert [entry["AliasName"] for entry in entries] == sorted([*mine, *PREDEFINED])
    targets = {entry["AliasName"]: entry.get("TargetKeyId") for entry in entries}
    assert targets["alias/aws/s3"] == s3 and targets["alias/aws/ebs"] is None and targets["alias/b"] == key_id
    of_key = (await svc.execute("ListAliases", alice(), {"KeyId": s3}))["Aliases"]
    assert [entry["AliasName"] for entry in of_key] == ["alias/aws/s3"]
