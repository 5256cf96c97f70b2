"""`keytrail detect --cloudtrail` over AWS CloudTrail log files raises rotation-disabled on the
DisableKeyRotation records AWS writes (ct-disable-key-rotation), keyId given as an ARN or a bare id."""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ACCOUNT = "111122223333"
KEY = f"arn:aws:kms:us-west-2:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
LEGACY = f"arn:aws:kms:us-west-2:{ACCOUNT}:key/0987dcba-09fe-87dc-65ba-ab0987654321"
# The AWS KMS developer guide's DisableKeyRotation entry (eventVersion 1.08), field for field.
DOCUMENTED = {
    "eventVersion": "1.08",
    "userIdentity": {"type": "IAMUser", "principalId": "EX_PRINCIPAL_ID", "arn": f"arn:aws:iam::{ACCOUNT}:user/Alice",
                     "accountId": ACCOUNT, "accessKeyId": "EXAMPLE_KEY_ID", "userName": "Alice"},
    "eventTime": "2022-09-01T19:31:39Z",
    "eventSource": "kms.amazonaws.com",
    "eventName": "DisableKeyRotation",
    "awsRegion": "us-west-2",
    "sourceIPAddress": "192.0.2.0",
    "userAgent": "AWS Internal",
    "requestParameters": {"keyId": KEY},
    "responseElements": None,
    "requestID": "d6a9351a-ed6e-4581-88d1-2a9a8a538497",
    "eventID": "6313164c-83aa-4cc3-9e1a-b7c426f7a5b1",
    "readOnly": False,
    "resources": [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": KEY}],
    "eventType": "AwsApiCall",
    "managementEvent": True,
    "recipientAccountId": ACCOUNT,
    "eventCategory": "Management",
}


def _variant(event_id: str, time: str, key: str, **changes: Any) -> dict[str, Any]:
    record = copy.deepcopy(DOCUMENTED)
    record.update(eventID=event_id, eventTime=time, resources=[{"accountId": ACCOUNT, "type": "AWS::KMS::Key",
                                                                 "ARN": key}], **changes)
    return record


def _role(name: str) -> dict[str, Any]:
    return {"type": "AssumedRole", "principalId": f"AROAEXAMPLE:{name}", "accountId": ACCOUNT,
            "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{name}/session",
            "sessionContext": {"sessionIssuer": {"type": "Role", "arn": f"arn:aws:iam::{ACCOUNT}:role/{name}",
                                                 "accountId": ACCOUNT, "userName": name}}}


def _records() -> list[dict[str, Any]]:
    alias = _variant("alias-1", "2022-09-01T18:00:00Z", LEGACY, eventName="CreateAlias",
                     requestParameters={"aliasName": "alias/legacy-billing", "targetKeyId": LEGACY.rsplit("/")[-1]},
                     responseElements={"keyId": LEGACY})
    alias["resources"].insert(0, {"accountId": ACCOUNT, "type": "AWS::KMS::Key",
                                  "ARN": f"arn:aws:kms:us-west-2:{ACCOUNT}:alias/legacy-billing"})
    return [
        alias,
        DOCUMENTED,
        # the same key again by a role, keyId as a bare id: one alarm per principal
        _variant("evt-2", "2022-09-01T20:00:00Z", KEY, requestParameters={"keyId": KEY.rsplit("/")[-1]},
                 userIdentity=_role("ops")),
        # refused calls disable nothing
        _variant("evt-3", "2022-09-01T20:01:00Z", KEY, errorCode="AccessDenied", userIdentity=_role("intruder"),
                 errorMessage="User: … is not authorized to perform: kms:DisableKeyRotation on resource: …"),
        # an exempt key (by its alias)
        _variant("evt-4", "2022-09-01T20:02:00Z", LEGACY, requestParameters={"keyId": LEGACY}),
        {"eventSource": "s3.amazonaws.com", "eventName": "GetObject", "eventTime": "2022-09-01T20:03:00Z"},
    ]


def test_detect_over_cloudtrail_files_raises_rotation_disabled_per_caller(tmp_path: Path) -> None:
    trail = tmp_path / "AWSLogs" / ACCOUNT / "CloudTrail" / "us-west-2" / "2022" / "09" / "01"
    trail.mkdir(parents=True)
    records = _records()
    (trail / "a.json.gz").write_bytes(gzip.compress(json.dumps({"Records": records[:3]}).encode()))
    (trail / "b.json").write_text(json.dumps({"Records": records[3:]}))
    settings = tmp_path / "keytrail.toml"
    settings.write_text('[rules.rotation-disabled]\nparameters = { exempt_aliases = ["alias/legacy-*"] }\n')
    out = subprocess.run([sys.executable, "-m", "keytrail", "detect", "--cloudtrail", str(tmp_path / "AWSLogs"),
                          "--config", str(settings), "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    alarms = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(a["rule"], a["keyArn"], a["principalArn"], a["severity"], a["eventIds"]) for a in alarms] == [
        ("rotation-disabled", KEY, f"arn:aws:iam::{ACCOUNT}:user/Alice", "MEDIUM", [DOCUMENTED["eventID"]]),
        ("rotation-disabled", KEY, f"arn:aws:iam::{ACCOUNT}:role/ops", "MEDIUM", ["evt-2"]),
    ]
    assert alarms[0]["details"]["operation"] == "DisableKeyRotation" and alarms[0]["region"] == "us-west-2"
    assert alarms[0]["firstSeen"] == "2022-09-01T19:31:39Z"
