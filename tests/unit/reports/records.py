"""Hand-made CloudTrail KMS records for report tests (the fields the pipeline reads)."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

ACCOUNT = "111122223333"
_ids = itertools.count(1)


def key_arn(name: str, account: str = ACCOUNT) -> str:
    return f"arn:aws:kms:us-east-1:{account}:key/{name}"


def user_arn(name: str, account: str = ACCOUNT) -> str:
    return f"arn:aws:iam::{account}:user/{name}"


def record(name: str, when: datetime, key: str, principal: str = user_arn("alice"), *,
           error: str | None = None, event_id: str | None = None) -> dict[str, Any]:
    """One CloudTrail record of a KMS call on `key` by `principal` at `when`."""
    account = principal.split(":")[4]
    event: dict[str, Any] = {
        "eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": name,
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "awsRegion": "us-east-1",
        "userIdentity": {"type": "IAMUser", "arn": principal, "accountId": account},
        "requestParameters": {"keyId": key}, "responseElements": None,
        "eventID": event_id or f"00000000-0000-4000-8000-{next(_ids):012d}", "requestID": f"req-{next(_ids)}",
        "resources": [{"ARN": key, "accountId": key.split(":")[4], "type": "AWS::KMS::Key"}],
        "eventType": "AwsApiCall", "readOnly": name not in ("CreateKey", "ScheduleKeyDeletion"),
        "recipientAccountId": key.split(":")[4],
    }
    if error:
        event["errorCode"] = error
        event["errorMessage"] = "denied"
    if name == "CreateKey":
        event["responseElements"] = {"keyMetadata": {"Arn": key, "KeySpec": "SYMMETRIC_DEFAULT",
                                                     "KeyManager": "CUSTOMER"}}
    return event


def alias_arn(name: str) -> str:
    return f"arn:aws:kms:us-east-1:{ACCOUNT}:{name}"


def alias_record(name: str, when: datetime, alias: str, keys: list[str], target: str | None = None, *,
                 error: str | None = None) -> dict[str, Any]:
    """A CreateAlias, UpdateAlias or DeleteAlias record as AWS logs it: requestParameters aliasName
    (and targetKeyId, a bare key id), resources the alias then its keys (the one left first)."""
    event = record(name, when, keys[0], error=error)
    event["requestParameters"] = {"aliasName": alias, **({"targetKeyId": target.split("/")[-1]} if target else {})}
    event["resources"] = [{"ARN": alias_arn(alias), "accountId": ACCOUNT},
                          *({"ARN": key, "accountId": ACCOUNT, "type": "AWS::KMS::Key"} for key in keys)]
    return event


def by_alias(operation: str, when: datetime, key_id: str, key: str) -> dict[str, Any]:
    """A call naming its key by alias (`keyId` as the caller gave it) that resolved to `key`."""
    event = record(operation, when, key)
    event["requestParameters"] = {"keyId": key_id}
    return event
