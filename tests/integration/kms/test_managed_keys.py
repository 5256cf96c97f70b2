"""AWS managed keys through boto3 against a real `keytrail serve`: DescribeKey on alias/aws/s3 (as
Terraform's `data "aws_kms_key"` calls it) makes the key; its key policy refuses direct use and
every change, as AWS's does; two PostgreSQL nodes asked at once make one key."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.test_many_grants_serve import nodes  # noqa: F401  (a fixture)
from tests.integration.test_serve_store import database  # noqa: F401  (a fixture)
from tests.support.errors import aws_error
from tests.support.server import ACCOUNT, KeytrailServer

pytestmark = pytest.mark.integration

_OPEN_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}],
    }
)


def _refused(client: Any, key_id: str) -> dict[str, str]:
    """What each change, and direct use, of the key answers (the error code)."""
    calls: dict[str, tuple[Any, dict[str, Any]]] = {
        "Encrypt": (client.encrypt, {"KeyId": "alias/aws/s3", "Plaintext": b"x"}),
        "GenerateDataKey": (client.generate_data_key, {"KeyId": key_id, "KeySpec": "AES_256"}),
        "DisableKey": (client.disable_key, {"KeyId": key_id}),
        "EnableKey": (client.enable_key, {"KeyId": key_id}),
        "ScheduleKeyDeletion": (client.schedule_key_deletion, {"KeyId": key_id}),
        "PutKeyPolicy": (client.put_key_policy, {"KeyId": key_id, "PolicyName": "default", "Policy": _OPEN_POLICY}),
        "TagResource": (client.tag_resource, {"KeyId": key_id, "Tags": [{"TagKey": "a", "TagValue": "b"}]}),
        "UntagResource": (client.untag_resource, {"KeyId": key_id, "TagKeys": ["a"]}),
        "CreateAlias": (client.create_alias, {"AliasName": "alias/mine", "TargetKeyId": key_id}),
        "DisableKeyRotation": (client.disable_key_rotation, {"KeyId": key_id}),
        "RotateKeyOnDemand": (client.rotate_key_on_demand, {"KeyId": key_id}),
        "UpdateKeyDescription": (client.update_key_description, {"KeyId": key_id, "Description": "mine"}),
        "CreateGrant": (
            client.create_grant,
            {"KeyId": key_id, "Operations": ["Decrypt"], "GranteePrincipal": f"arn:aws:iam::{ACCOUNT}:user/bob"},
        ),
    }
    return {name: aws_error(call, **params)[0] for name, (call, params) in calls.items()}


def test_describe_key_on_alias_aws_s3_makes_the_aws_managed_key(fresh_server: KeytrailServer) -> None:
    alice = fresh_server.client("alice")
    assert aws_error(alice.encrypt, KeyId="alias/aws/s3", Plaintext=b"x")[0] == "NotFoundException"  # not yet
    listed = {alias["AliasName"]: alias for alias in alice.list_aliases()["Aliases"]}
    assert listed["alias/aws/s3"] == {
        "AliasName": "alias/aws/s3",
        "AliasArn": f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/aws/s3",
    }
    metadata = alice.describe_key(KeyId="alias/aws/s3")["KeyMetadata"]
    assert (metadata["KeyManager"], metadata["KeyState"], metadata["KeySpec"]) == (
        "AWS",
        "Enabled",
        "SYMMETRIC_DEFAULT",
    )
    assert metadata["Description"] == "Default key that protects my S3 objects when no other key is defined"
    key_id = metadata["KeyId"]
    assert alice.describe_key(KeyId=f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/aws/s3")["KeyMetadata"]["KeyId"] == key_id
    assert [k["KeyId"] for k in alice.list_keys()["Keys"]] == [key_id]
    assert alice.list_aliases(KeyId=key_id)["Aliases"][0]["AliasName"] == "alias/aws/s3"
    listed = {alias["AliasName"]: alias for alias in alice.list_aliases()["Aliases"]}
    assert listed["alias/aws/s3"]["TargetKeyId"] == key_id and "TargetKeyId" not in listed["alias/aws/ebs"]
    rotation = alice.get_key_rotation_status(KeyId=key_id)
    assert rotation["KeyRotationEnabled"] and rotation["RotationPeriodInDays"] == 365
    policy = json.loads(alice.get_key_policy(KeyId=key_id)["Policy"])
    assert policy["Statement"][0]["Condition"]["StringEquals"]["kms:ViaService"] == "s3.us-east-1.amazonaws.com"
    for who in ("alice", "root"):  # an IAM user allowed kms:*, and the account root
        refused = _refused(fresh_server.client(who), key_id)
        assert set(refused.values()) == {"AccessDeniedException"}, refused
    assert aws_error(alice.delete_alias, AliasName="alias/aws/s3")[0] == "InvalidAliasNameException"
    assert alice.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_the_creation_is_recorded_as_the_describe_key_call(fresh_server: KeytrailServer) -> None:
    alice = fresh_server.client("alice")
    arn = alice.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"]
    fresh_server.stop()
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "keytrail",
            "audit",
            "events",
            "--data-dir",
            str(fresh_server.data_dir),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    events = [json.loads(line) for line in printed.stdout.splitlines()]
    assert [(e["eventName"], e["readOnly"], e["requestParameters"]) for e in events] == [
        ("DescribeKey", True, {"keyId": "alias/aws/ebs"})
    ]
    assert [r["ARN"] for r in events[0]["resources"]] == [arn]


def test_two_nodes_asked_at_once_make_one_key(nodes: Any) -> None:  # noqa: F811
    first, second = nodes
    clients = [first.client("alice"), second.client("alice")] * 6
    with ThreadPoolExecutor(len(clients)) as pool:
        answers = list(pool.map(lambda c: c.describe_key(KeyId="alias/aws/secretsmanager")["KeyMetadata"], clients))
    assert len({answer["KeyId"] for answer in answers}) == 1
    assert len(first.client("alice").list_keys()["Keys"]) == 1
    assert (
        second.client("alice").list_aliases(KeyId=answers[0]["KeyId"])["Aliases"][0]["AliasName"]
        == "alias/aws/secretsmanager"
    )
