"""ARNs in the partition of the Region (aws-cn, aws-us-gov), through boto3 against a real server:
responses, KeyId parsing, key policies, the audit record, and ReplicateKey kept in one partition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keytrail.audit.cloudtrail_files import iter_events
from tests.support.errors import aws_error
from tests.support.server import ACCOUNT, KeytrailServer

pytestmark = pytest.mark.integration

# Region → (its partition, another Region of the same partition)
REGIONS = {"cn-north-1": ("aws-cn", "cn-northwest-1"), "us-gov-west-1": ("aws-us-gov", "us-gov-east-1")}


def _events(data_dir: Path) -> dict[str, dict[str, Any]]:
    return {e["requestID"]: e for _, e in iter_events(data_dir) if e.get("requestID")}


def _request_id(reply: dict[str, Any]) -> str:
    return str(reply["ResponseMetadata"]["RequestId"])


def _key_ops_in(server: KeytrailServer, region: str, partition: str) -> dict[str, str]:
    """Create, alias, describe, encrypt and decrypt in `region`; the request ids to check in the trail."""
    alice = server.client("alice", region=region)
    created = alice.create_key(Description="partition")
    meta = created["KeyMetadata"]
    arn = f"arn:{partition}:kms:{region}:{ACCOUNT}:key/{meta['KeyId']}"
    assert meta["Arn"] == arn
    alice.create_alias(AliasName="alias/part", TargetKeyId=arn)
    alias_arn = f"arn:{partition}:kms:{region}:{ACCOUNT}:alias/part"
    listed = {a["AliasName"]: a for a in alice.list_aliases(KeyId=meta["KeyId"])["Aliases"]}
    assert listed["alias/part"]["AliasArn"] == alias_arn
    assert alice.describe_key(KeyId=alias_arn)["KeyMetadata"]["Arn"] == arn
    encrypted = alice.encrypt(KeyId=alias_arn, Plaintext=b"partition")
    assert encrypted["KeyId"] == arn
    decrypted = server.client("app", region=region).decrypt(CiphertextBlob=encrypted["CiphertextBlob"])
    assert (decrypted["KeyId"], decrypted["Plaintext"]) == (arn, b"partition")
    return {"create": _request_id(created), "encrypt": _request_id(encrypted), "decrypt": _request_id(decrypted),
            "arn": arn}


def _wrong_partition_arns_name_no_key(server: KeytrailServer, region: str, key_id: str) -> None:
    alice = server.client("alice", region=region)
    code, message, status = aws_error(alice.describe_key, KeyId=f"arn:aws:kms:{region}:{ACCOUNT}:key/{key_id}")
    assert (code, message, status) == ("NotFoundException", "Invalid arn aws", 400)
    code, _, _ = aws_error(alice.encrypt, KeyId=f"arn:aws:kms:{region}:{ACCOUNT}:alias/part", Plaintext=b"x")
    assert code == "NotFoundException"


def _policies_use_the_partition(server: KeytrailServer, region: str, partition: str, arn: str) -> None:
    alice, bob = server.client("alice", region=region), server.client("bob", region=region)
    default = json.loads(alice.get_key_policy(KeyId=arn, PolicyName="default")["Policy"])
    assert default["Statement"][0]["Principal"] == {"AWS": f"arn:{partition}:iam::{ACCOUNT}:root"}
    assert aws_error(bob.encrypt, KeyId=arn, Plaintext=b"x")[0] == "AccessDeniedException"

    def policy_naming(bob_arn: str) -> str:
        return json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "kms:*", "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": bob_arn}, "Action": "kms:Encrypt", "Resource": "*"}]})

    alice.put_key_policy(KeyId=arn, PolicyName="default", Policy=policy_naming(f"arn:aws:iam::{ACCOUNT}:user/bob"))
    assert aws_error(bob.encrypt, KeyId=arn, Plaintext=b"x")[0] == "AccessDeniedException"  # another partition's bob
    alice.put_key_policy(KeyId=arn, PolicyName="default",
                         Policy=policy_naming(f"arn:{partition}:iam::{ACCOUNT}:user/bob"))
    assert bob.encrypt(KeyId=arn, Plaintext=b"x")["KeyId"] == arn


def _replicas_stay_in_the_partition(server: KeytrailServer, region: str, partition: str, sibling: str) -> None:
    alice = server.client("alice", region=region)
    primary = alice.create_key(MultiRegion=True)["KeyMetadata"]
    code, message, _ = aws_error(alice.replicate_key, KeyId=primary["Arn"], ReplicaRegion="us-east-1")
    assert code == "UnsupportedOperationException" and "partition" in message
    replica = alice.replicate_key(KeyId=primary["Arn"], ReplicaRegion=sibling)["ReplicaKeyMetadata"]
    assert replica["Arn"] == f"arn:{partition}:kms:{sibling}:{ACCOUNT}:key/{primary['KeyId']}"
    config = replica["MultiRegionConfiguration"]
    assert config["PrimaryKey"] == {"Arn": primary["Arn"], "Region": region}
    described = server.client("alice", region=sibling).describe_key(KeyId=replica["Arn"])["KeyMetadata"]
    assert described["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"


@pytest.mark.parametrize("region", sorted(REGIONS))
def test_arns_policies_and_audit_records_are_in_the_regions_partition(tmp_path: Path, region: str) -> None:
    partition, sibling = REGIONS[region]
    server = KeytrailServer(tmp_path / "data").start()
    try:
        ids = _key_ops_in(server, region, partition)
        _wrong_partition_arns_name_no_key(server, region, ids["arn"].rsplit("/", 1)[-1])
        _policies_use_the_partition(server, region, partition, ids["arn"])
        _replicas_stay_in_the_partition(server, region, partition, sibling)
    finally:
        assert server.stop() == 0
    events = _events(tmp_path / "data")
    created, encrypt, decrypt = events[ids["create"]], events[ids["encrypt"]], events[ids["decrypt"]]
    assert created["userIdentity"]["arn"] == f"arn:{partition}:iam::{ACCOUNT}:user/alice"
    assert created["responseElements"]["keyMetadata"]["arn"] == ids["arn"]
    assert [r["ARN"] for r in encrypt["resources"]] == [ids["arn"]]
    assert (encrypt["awsRegion"], encrypt["recipientAccountId"]) == (region, ACCOUNT)
    role = decrypt["userIdentity"]
    assert role["arn"] == f"arn:{partition}:sts::{ACCOUNT}:assumed-role/app/app-session"
    assert role["sessionContext"]["sessionIssuer"]["arn"] == f"arn:{partition}:iam::{ACCOUNT}:role/app"
    assert [r["ARN"] for r in decrypt["resources"]] == [ids["arn"]]


def test_standard_regions_keep_aws_arns_and_cannot_replicate_into_other_partitions(
    fresh_server: KeytrailServer,
) -> None:
    alice = fresh_server.client("alice", region="us-east-1")
    primary = alice.create_key(MultiRegion=True)["KeyMetadata"]
    assert primary["Arn"] == f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{primary['KeyId']}"
    default = json.loads(alice.get_key_policy(KeyId=primary["Arn"], PolicyName="default")["Policy"])
    assert default["Statement"][0]["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    for other in ("cn-north-1", "us-gov-west-1"):
        code, message, status = aws_error(alice.replicate_key, KeyId=primary["KeyId"], ReplicaRegion=other)
        assert (code, status) == ("UnsupportedOperationException", 400) and other in message
    code, message, _ = aws_error(alice.describe_key, KeyId=f"arn:aws-cn:kms:us-east-1:{ACCOUNT}:key/{primary['KeyId']}")
    assert (code, message) == ("NotFoundException", "Invalid arn aws-cn")
    assert alice.describe_key(KeyId=primary["KeyId"])["KeyMetadata"]["MultiRegionConfiguration"]["ReplicaKeys"] == []
