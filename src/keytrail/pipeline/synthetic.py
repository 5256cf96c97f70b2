"""Generated CloudTrail KMS records for tests, benchmarks and demos (deterministic per seed).

The stream mixes customer managed keys of several specs, IAM users and role sessions from a few
accounts (some calling cross-account), denied calls, calls on keys pending deletion, rotations,
deletions, cancelled deletions, late events and redelivered duplicates; optionally uses repeated
within the same second (an Encrypt then a Decrypt), which tie on CloudTrail's one-second eventTime.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["SyntheticSettings", "generate_events"]

_SPECS = ["SYMMETRIC_DEFAULT"] * 6 + ["RSA_2048", "RSA_4096", "ECC_NIST_P256", "HMAC_256"]
_OPS_BY_SPEC = {
    "SYMMETRIC_DEFAULT": [
        "Encrypt",
        "Decrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "ReEncrypt",
        "GenerateDataKeyPair",
        "DescribeKey",
    ],
    "RSA_2048": ["Encrypt", "Decrypt", "GetPublicKey"],
    "RSA_4096": ["Sign", "Verify"],
    "ECC_NIST_P256": ["Sign", "Verify", "DescribeKey"],
    "HMAC_256": ["GenerateMac", "VerifyMac"],
}
_PAIR_SPECS = ["RSA_2048", "ECC_NIST_P256", "ECC_NIST_P384"]


@dataclass(frozen=True)
class SyntheticSettings:
    """Shape of a generated stream."""

    keys: int = 200
    principals: int = 40
    accounts: int = 3
    start: datetime = datetime(2026, 10, 1, tzinfo=UTC)
    seconds_per_event: float = 0.5
    denied_share: float = 0.03
    late_share: float = 0.01
    duplicate_share: float = 0.005
    lifecycle_share: float = 0.002
    region: str = "us-east-1"
    skew: float = 1.0  # 1 = uniform; higher concentrates traffic on few keys and principals (Zipf-like)
    same_second_share: float = 0.0  # a use followed by another use of its key and principal, same second


@dataclass
class _Key:
    arn: str
    account: str
    spec: str
    state: str = "Enabled"


@dataclass
class _World:
    rng: random.Random
    settings: SyntheticSettings
    accounts: list[str]
    principals: list[dict[str, Any]]
    keys: list[_Key] = field(default_factory=list)
    recent: list[dict[str, Any]] = field(default_factory=list)
    last_use: tuple[datetime, _Key, dict[str, Any]] | None = None


def generate_events(
    count: int, settings: SyntheticSettings | None = None, seed: int = 7
) -> Iterator[dict[str, Any]]:
    """Yield `count` CloudTrail records (duplicates included in the count)."""
    settings = settings or SyntheticSettings()
    world = _new_world(random.Random(seed), settings)
    for index in range(count):
        when = settings.start + timedelta(seconds=index * settings.seconds_per_event)
        yield _next_event(world, when)


def _new_world(rng: random.Random, settings: SyntheticSettings) -> _World:
    accounts = [f"{111122223333 + i * 111111111:012d}" for i in range(settings.accounts)]
    principals = [_principal(rng, accounts, i) for i in range(settings.principals)]
    return _World(rng, settings, accounts, principals)


def _principal(rng: random.Random, accounts: list[str], index: int) -> dict[str, Any]:
    account = accounts[index % len(accounts)]
    if index % 3 == 0:
        role = f"arn:aws:iam::{account}:role/app-{index}"
        return {
            "type": "AssumedRole",
            "principalId": f"AROA{index:016d}:s",
            "arn": f"arn:aws:sts::{account}:assumed-role/app-{index}/session-{rng.randrange(9)}",
            "accountId": account,
            "accessKeyId": f"ASIA{index:016d}",
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "principalId": f"AROA{index:016d}",
                    "arn": role,
                    "accountId": account,
                    "userName": f"app-{index}",
                },
                "attributes": {"creationDate": "2026-10-01T00:00:00Z", "mfaAuthenticated": "false"},
            },
        }
    return {
        "type": "IAMUser",
        "principalId": f"AIDA{index:016d}",
        "arn": f"arn:aws:iam::{account}:user/user-{index}",
        "accountId": account,
        "accessKeyId": f"AKIA{index:016d}",
        "userName": f"user-{index}",
    }


def _next_event(world: _World, when: datetime) -> dict[str, Any]:
    rng, settings = world.rng, world.settings
    roll = rng.random()
    if world.recent and roll < settings.duplicate_share:
        return dict(rng.choice(world.recent))
    if roll < settings.duplicate_share + settings.late_share:
        when -= timedelta(seconds=rng.randrange(60, 7200))
    if world.last_use and settings.same_second_share and rng.random() < settings.same_second_share:
        event = _repeated_use(world, world.last_use)  # the previous use's second, key and principal
    elif len(world.keys) < settings.keys or rng.random() < settings.lifecycle_share:
        event = _lifecycle_event(world, when)
    else:
        event = _new_use(world, when)
    world.recent = [*world.recent, event][-50:]
    return event


def _lifecycle_event(world: _World, when: datetime) -> dict[str, Any]:
    rng = world.rng
    if len(world.keys) < world.settings.keys:
        return _create_key(world, when)
    key = rng.choice(world.keys)
    admin = {
        "type": "Root",
        "principalId": key.account,
        "arn": f"arn:aws:iam::{key.account}:root",
        "accountId": key.account,
        "accessKeyId": "AKIAROOT",
    }
    if key.state == "Enabled" and rng.random() < 0.5:
        return _service_event(world, key, "RotateKey", when)
    if key.state == "Enabled":
        key.state = "PendingDeletion"
        return _record(
            world,
            when,
            admin,
            "ScheduleKeyDeletion",
            key,
            params={"pendingWindowInDays": 7},
            response={"keyState": "PendingDeletion"},
        )
    if key.state == "PendingDeletion" and rng.random() < 0.5:
        key.state = "Disabled"
        return _record(world, when, admin, "CancelKeyDeletion", key, params={"keyId": key.arn})
    if key.state == "PendingDeletion":
        key.state = "Deleted"
        return _service_event(world, key, "DeleteKey", when)
    key.state = "Enabled"
    return _record(world, when, admin, "EnableKey", key, params={"keyId": key.arn})


def _create_key(world: _World, when: datetime) -> dict[str, Any]:
    rng = world.rng
    account = rng.choice(world.accounts)
    spec = rng.choice(_SPECS)
    key = _Key(
        f"arn:aws:kms:{world.settings.region}:{account}:key/{uuid.UUID(int=rng.getrandbits(128))}",
        account,
        spec,
    )
    world.keys.append(key)
    usage = (
        "SIGN_VERIFY"
        if spec in ("RSA_4096", "ECC_NIST_P256")
        else ("GENERATE_VERIFY_MAC" if spec.startswith("HMAC") else "ENCRYPT_DECRYPT")
    )
    identity = {
        "type": "Root",
        "principalId": account,
        "arn": f"arn:aws:iam::{account}:root",
        "accountId": account,
        "accessKeyId": "AKIAROOT",
    }
    metadata = {
        "AWSAccountId": account,
        "KeyId": key.arn.rsplit("/", 1)[1],
        "Arn": key.arn,
        "KeySpec": spec,
        "KeyUsage": usage,
        "KeyManager": "CUSTOMER",
        "KeyState": "Enabled",
        "Origin": "AWS_KMS",
        "CreationDate": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return _record(
        world,
        when,
        identity,
        "CreateKey",
        key,
        params={"keySpec": spec, "keyUsage": usage},
        response={"keyMetadata": metadata},
    )


def _new_use(world: _World, when: datetime) -> dict[str, Any]:
    rng, live = world.rng, _live(world)
    key = live[_pick(rng, len(live), world.settings.skew)]
    operation = rng.choice(_OPS_BY_SPEC[key.spec])
    identity = world.principals[_pick(rng, len(world.principals), world.settings.skew)]
    world.last_use = (when, key, identity)
    return _use_event(world, when, key, identity, operation)


def _repeated_use(world: _World, last_use: tuple[datetime, _Key, dict[str, Any]]) -> dict[str, Any]:
    when, key, identity = last_use
    return _use_event(world, when, key, identity, world.rng.choice(_OPS_BY_SPEC[key.spec]))


def _live(world: _World) -> list[_Key]:
    return [k for k in world.keys if k.state != "Deleted"] or world.keys


def _use_event(
    world: _World, when: datetime, key: _Key, identity: dict[str, Any], operation: str
) -> dict[str, Any]:
    rng = world.rng
    params: dict[str, Any] = {"keyId": key.arn}
    if operation == "GenerateDataKeyPair":
        params["keyPairSpec"] = rng.choice(_PAIR_SPECS)
    error = None
    if rng.random() < world.settings.denied_share:
        error = ("AccessDenied", f"User: {identity['arn']} is not authorized to perform: kms:{operation}")
    elif key.state == "PendingDeletion":
        error = ("KMSInvalidStateException", f"{key.arn} is pending deletion.")
    elif key.state == "Disabled":
        error = ("DisabledException", f"{key.arn} is disabled.")
    extra = []
    if operation == "ReEncrypt":
        live = _live(world)
        extra = [live[rng.randrange(len(live))].arn]
    return _record(world, when, identity, operation, key, params=params, error=error, extra=extra)


def _pick(rng: random.Random, size: int, skew: float) -> int:
    return int(size * rng.random() ** skew) if skew != 1.0 else rng.randrange(size)


def _service_event(world: _World, key: _Key, name: str, when: datetime) -> dict[str, Any]:
    event = _record(world, when, {"accountId": key.account, "invokedBy": "AWS Internal"}, name, key)
    event["eventType"] = "AwsServiceEvent"
    event["requestParameters"] = None
    event.pop("requestID")
    event["sourceIPAddress"] = event["userAgent"] = "AWS Internal"
    if name == "RotateKey":
        event["serviceEventDetails"] = {"rotationType": "AUTOMATIC", "keyOrigin": "AWS_KMS"}
    return event


def _record(
    world: _World,
    when: datetime,
    identity: dict[str, Any],
    name: str,
    key: _Key,
    *,
    params: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    error: tuple[str, str] | None = None,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    rng = world.rng
    resources = [
        {"ARN": arn, "accountId": arn.split(":")[4], "type": "AWS::KMS::Key"}
        for arn in [key.arn, *(extra or [])]
    ]
    event: dict[str, Any] = {
        "eventVersion": "1.11",
        "userIdentity": identity,
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": "kms.amazonaws.com",
        "eventName": name,
        "awsRegion": world.settings.region,
        "sourceIPAddress": "192.0.2.10",
        "userAgent": "Boto3/1.44",
        "requestParameters": params or {},
        "responseElements": response,
        "requestID": str(uuid.UUID(int=rng.getrandbits(128))),
        "eventID": str(uuid.UUID(int=rng.getrandbits(128))),
        "readOnly": name
        not in (
            "CreateKey",
            "ScheduleKeyDeletion",
            "CancelKeyDeletion",
            "EnableKey",
            "RotateKey",
            "DeleteKey",
        ),
        "resources": resources,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": key.account,
        "eventCategory": "Management",
    }
    if error:
        event["errorCode"], event["errorMessage"] = error
        event["responseElements"] = None
    return event
