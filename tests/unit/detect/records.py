"""CloudTrail KMS records shaped as AWS writes them (audit-anchors §1.4), for detector tests."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

ACCOUNT = "111122223333"
REGION = "us-east-1"
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
_ids = itertools.count()


def key_arn(n: int = 1, account: str = ACCOUNT) -> str:
    return f"arn:aws:kms:{REGION}:{account}:key/{n:08d}-aaaa-bbbb-cccc-000000000000"


def user(name: str = "alice", account: str = ACCOUNT) -> dict[str, Any]:
    return {
        "type": "IAMUser",
        "principalId": "AIDAEXAMPLE",
        "arn": f"arn:aws:iam::{account}:user/{name}",
        "accountId": account,
        "accessKeyId": "AKIAEXAMPLE",
        "userName": name,
    }


def role(name: str = "app", account: str = ACCOUNT, invoked_by: str | None = None) -> dict[str, Any]:
    identity = {
        "type": "AssumedRole",
        "principalId": f"AROAEXAMPLE:{name}-session",
        "arn": f"arn:aws:sts::{account}:assumed-role/{name}/{name}-session",
        "accountId": account,
        "accessKeyId": "ASIAEXAMPLE",
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "arn": f"arn:aws:iam::{account}:role/{name}",
                "accountId": account,
                "userName": name,
            },
            "attributes": {"creationDate": "2026-01-01T00:00:00Z", "mfaAuthenticated": "false"},
        },
    }
    if invoked_by:
        identity["invokedBy"] = invoked_by
    return identity


def federated(kind: str, name: str) -> dict[str, Any]:
    """A SAML (`SAMLUser`) or web identity (`WebIdentityUser`) user as CloudTrail documents its
    userIdentity (cloudtrail-event-reference-user-identity): no ARN, account or access key."""
    provider = "https://idp.example.com/saml" if kind == "SAMLUser" else "accounts.google.com"
    return {"type": kind, "principalId": f"{provider}:{name}", "userName": name, "identityProvider": provider}


AWS_SERVICE = {"type": "AWSService", "invokedBy": "cloudtrail.amazonaws.com"}  # audit-anchors §1.4 E3


def event(
    name: str,
    at: datetime,
    key: str | None = None,
    identity: dict[str, Any] | None = None,
    *,
    error: str | None = None,
    message: str | None = None,
    params: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """One CloudTrail record for a KMS call."""
    identity = identity if identity is not None else user()
    record: dict[str, Any] = {
        "eventVersion": "1.11",
        "userIdentity": identity,
        "eventTime": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "eventSource": "kms.amazonaws.com",
        "eventName": name,
        "awsRegion": REGION,
        "sourceIPAddress": "192.0.2.0",
        "userAgent": "aws-cli/2",
        "requestParameters": params
        if params is not None
        else ({"keyId": key, "encryptionAlgorithm": "SYMMETRIC_DEFAULT"} if key else {}),
        "responseElements": response,
        "requestID": f"req-{next(_ids)}",
        "eventID": event_id or f"evt-{next(_ids):012d}",
        "readOnly": name in _READ_ONLY,
        "resources": [{"accountId": key.split(":")[4], "type": "AWS::KMS::Key", "ARN": key}] if key else [],
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": ACCOUNT,
        "eventCategory": "Management",
    }
    if error:
        record["errorCode"], record["errorMessage"] = error, message or error
    return record


_READ_ONLY = {"Decrypt", "Encrypt", "GenerateDataKey", "ReEncrypt", "Sign", "Verify", "DescribeKey"}


def denied(
    name: str,
    at: datetime,
    key: str,
    identity: dict[str, Any],
    explicit: bool = False,
    policy: str = "resource-based",
) -> dict[str, Any]:
    """An AccessDenied record with the IAM deny-reason grammar in errorMessage."""
    arn = identity.get("arn", "unknown")
    tail = (
        f"with an explicit deny in a {policy} policy"
        if explicit
        else f"because no {policy} policy allows the kms:{name} action"
    )
    message = f"User: {arn} is not authorized to perform: kms:{name} on resource: {key} {tail}"
    return event(name, at, key, identity, error="AccessDenied", message=message)


def create_key(
    at: datetime,
    key: str,
    policy: str | None = None,
    identity: dict[str, Any] | None = None,
    manager: str = "CUSTOMER",
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "keySpec": "SYMMETRIC_DEFAULT",
        "keyUsage": "ENCRYPT_DECRYPT",
        "origin": "AWS_KMS",
        "bypassPolicyLockoutSafetyCheck": False,
    }
    if policy is not None:
        params["policy"] = policy
    metadata = {
        "AWSAccountId": key.split(":")[4],
        "keyId": key.rsplit("/", 1)[1],
        "arn": key,
        "enabled": True,
        "keyState": "Enabled",
        "keyManager": manager,
        "origin": "AWS_KMS",
    }
    return event("CreateKey", at, key, identity, params=params, response={"keyMetadata": metadata})


def policy_doc(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def steady_traffic(
    key: str, identity: dict[str, Any], start: datetime, minutes: int, per_minute: int, name: str = "Decrypt"
) -> list[dict[str, Any]]:
    """Evenly spread successful calls."""
    step = timedelta(seconds=60 / per_minute)
    return [
        event(name, start + timedelta(minutes=m) + i * step, key, identity)
        for m in range(minutes)
        for i in range(per_minute)
    ]
