"""`keytrail detect --cloudtrail` over a folder shaped like a synced trail bucket, through the real
entry point: it reads files and attributes keys and callers as the pipeline and `audit import` do."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.unit.detect.records import ACCOUNT, REGION, T0, create_key, denied, event, key_arn, user

ALIAS = f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/ExampleAlias"
FEDERATED = f"arn:aws:sts::{ACCOUNT}:federated-user/bob"


def _keytrail(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def _gzip_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(document).encode()))


def _bucket(root: Path, records: list[dict[str, Any]]) -> Path:
    """AWSLogs/ as a trail bucket with log file integrity validation and Insights holds it: the
    log file, the hour's digest file and an Insights file, each under its own folder."""
    day = Path(ACCOUNT) / "{}" / REGION / "2026" / "01" / "05"
    logs = root / "AWSLogs" / str(day).format("CloudTrail")
    _gzip_json(logs / f"{ACCOUNT}_CloudTrail_{REGION}_20260105T1205Z_a.json.gz", {"Records": records})
    digest = {"awsAccountId": ACCOUNT, "digestStartTime": "2026-01-05T11:00:00Z",
              "digestEndTime": "2026-01-05T12:00:00Z", "digestS3Bucket": "trail-bucket",
              "digestS3Object": "AWSLogs/…_CloudTrail-Digest_us-east-1_trail_us-east-1_20260105T120000Z.json.gz",
              "digestPublicKeyFingerprint": "00ff", "digestSignatureAlgorithm": "SHA256withRSA",
              "newestEventTime": None, "oldestEventTime": None, "previousDigestS3Bucket": None,
              "previousDigestS3Object": None, "previousDigestHashValue": None,
              "previousDigestHashAlgorithm": None, "previousDigestSignature": None, "logFiles": []}
    digests = root / "AWSLogs" / str(day).format("CloudTrail-Digest")
    _gzip_json(digests / f"{ACCOUNT}_CloudTrail-Digest_{REGION}_trail_{REGION}_20260105T120000Z.json.gz", digest)
    insight = {"eventVersion": "1.07", "eventTime": "2026-01-05T12:00:00Z", "awsRegion": REGION,
               "eventID": "5e1c1ea3-0c1a-4a53-9c1a-1d7a8e0f0c11", "eventType": "AwsCloudTrailInsight",
               "recipientAccountId": ACCOUNT, "eventCategory": "Insight",
               "insightDetails": {"state": "Start", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
                                  "insightType": "ApiErrorRateInsight", "insightContext": {}}}
    insights = root / "AWSLogs" / str(day).format("CloudTrail-Insight")
    _gzip_json(insights / f"{ACCOUNT}_CloudTrail-Insight_{REGION}_20260105T1200Z_b.json.gz", {"Records": [insight]})
    return root / "AWSLogs"


def _alarms(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert "Traceback" not in result.stderr and result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_digest_and_insights_files_in_a_trail_bucket_are_passed_over(tmp_path: Path) -> None:
    bucket = _bucket(tmp_path, [denied("Decrypt", T0, key_arn(1), user("eve"))])
    [alarm] = _alarms(_keytrail("detect", "--cloudtrail", bucket, "--format", "json"))
    assert (alarm["rule"], alarm["keyArn"], alarm["count"]) == ("unauthorized-decrypt", key_arn(1), 1)


def test_the_key_of_a_delete_alias_record_is_its_key_not_the_alias_listed_first(tmp_path: Path) -> None:
    delete_alias = event("DeleteAlias", T0 + timedelta(minutes=1), key_arn(1),
                         params={"aliasName": "alias/ExampleAlias"})
    delete_alias["resources"] = [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": ALIAS},
                                 {"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": key_arn(1)}]
    bucket = _bucket(tmp_path, [create_key(T0, key_arn(1)), delete_alias])
    alarms = _alarms(_keytrail("detect", "--cloudtrail", bucket, "--format", "json",
                               "--as-of", "2026-06-01T00:00:00Z"))
    assert [(a["rule"], a["keyArn"]) for a in alarms] == [("unused-key", key_arn(1))]  # no "unused key" alias


def test_a_federated_user_is_the_caller_not_the_iam_user_that_federated_it(tmp_path: Path) -> None:
    bob = {"type": "FederatedUser", "principalId": f"{ACCOUNT}:bob", "arn": FEDERATED, "accountId": ACCOUNT,
           "accessKeyId": "ASIAEXAMPLE",
           "sessionContext": {"sessionIssuer": {"type": "IAMUser", "principalId": "AIDAEXAMPLE",
                                                "arn": f"arn:aws:iam::{ACCOUNT}:user/Alice", "accountId": ACCOUNT,
                                                "userName": "Alice"},
                              "attributes": {"creationDate": "2026-01-05T11:00:00Z", "mfaAuthenticated": "false"}}}
    bucket = _bucket(tmp_path, [denied("Decrypt", T0, key_arn(1), bob)])
    [alarm] = _alarms(_keytrail("detect", "--cloudtrail", bucket, "--format", "json"))
    assert alarm["principalArn"] == FEDERATED  # as usage, cost and last-used attribute it (docs/metrics.md)
