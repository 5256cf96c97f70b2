"""Every way of reading CloudTrail log files (`audit import` then `consume`, `consume --cloudtrail`,
`report --cloudtrail`, `detect --cloudtrail`) keeps the same records of the same edge-case files,
gives the same figures and says the same `skipped:` lines: one decision of what a readable KMS
record is (transport.cloudtrail_records). Each test runs the real entry point."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.audit_records import ACCOUNT, KEY_ARN

_DAY = Path("AWSLogs") / ACCOUNT / "CloudTrail" / "us-east-1" / "2026" / "01" / "05"


def _keytrail(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _denied_decrypt(event_id: Any, second: int, **fields: Any) -> dict[str, Any]:
    record = {"eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
              "eventTime": f"2026-01-05T12:00:{second:02d}Z", "eventID": event_id, "awsRegion": "us-east-1",
              "eventType": "AwsApiCall", "recipientAccountId": ACCOUNT, "readOnly": True,
              "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/eve", "accountId": ACCOUNT},
              "resources": [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": KEY_ARN}],
              "errorCode": "AccessDenied", "errorMessage": "User: eve is not authorized to perform: kms:Decrypt"}
    record.update(fields)
    return {name: value for name, value in record.items() if value is not ...}


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / _DAY / f"{ACCOUNT}_CloudTrail_us-east-1_20260105T1200Z_{name}.json.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _log(folder: Path, name: str, records: Any) -> Path:
    return _write(folder, name, gzip.compress(json.dumps({"Records": records}).encode()))


@pytest.fixture
def edge_records(tmp_path: Path) -> tuple[Path, list[str]]:
    """A bucket's folder of records of every edge kind, and the `skipped:` lines every reader says."""
    logs = tmp_path / "records"
    first = _log(logs, "a", [
        _denied_decrypt("e-0", 0),
        _denied_decrypt("e-1", 1, requestParameters={"keyId": KEY_ARN, "n": 2**70}),  # wider than 64 bits
        _denied_decrypt("e-2", 2, userAgent="aws-cli\ud800"),  # a lone surrogate
        {**_denied_decrypt("e-3", 3), "eventSource": "s3.amazonaws.com"},  # another service's
        _denied_decrypt("e-4", 4, eventSource=...),  # no eventSource: no KMS record
        _denied_decrypt("e-5", 5, eventTime=...),
        _denied_decrypt("e-6", 6, eventName=...),
        _denied_decrypt(..., 7),
        _denied_decrypt("e-8", 8, eventTime="yesterday"),
        _denied_decrypt("e-9", 9, eventTime=1767614409),  # a number
        _denied_decrypt("e-10", 10, userIdentity="eve"),
        "no object",
        _denied_decrypt(11, 11, recipientAccountId=int(ACCOUNT), readOnly="true"),  # coerced: readable
        _denied_decrypt("e-12", 12),
    ])
    corrected = _denied_decrypt("e-14", 13, addendum={"reason": "UPDATED_DATA", "originalEventID": "e-13"})
    _log(logs, "b", [_denied_decrypt("e-0", 0), _denied_decrypt("e-13", 13), corrected])  # e-0 again, e-13 corrected
    _log(logs, "c", [])
    skipped = [f"skipped: {first}: record {index}{why}" for index, why in [
        (1, " (eventID e-1): cannot be stored: Integer exceeds 64-bit range"),
        (2, " (eventID e-2): cannot be stored: str is not valid UTF-8: surrogates not allowed"),
        (5, " (eventID e-5): missing eventTime"),
        (6, " (eventID e-6): missing eventName"),
        (7, ": missing eventID"),
        (8, " (eventID e-8): eventTime 'yesterday' is not an ISO 8601 time"),
        (9, " (eventID e-9): eventTime '1767614409' is not an ISO 8601 time"),
        (10, " (eventID e-10): userIdentity is not an object"),
        (11, ": not a JSON object"),
    ]]
    return logs, skipped


#: The readable KMS records of `edge_records`: e-0 (twice), 11, e-12, e-13 and its corrected copy
#: e-14: six records, four calls, all denied.
CALLS = 4


def _skipped(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("skipped: ")]


def _figures(command: str, data_dir: Path) -> list[dict[str, Any]]:
    result = _keytrail(command, "--data-dir", data_dir, "--format", "json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _table(report: Path, name: str) -> list[dict[str, Any]]:
    """The report's table as the metrics command prints it (without the report's own `aliases`)."""
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("table", "aliases")} for row in rows if row["table"] == name]


def test_every_path_keeps_the_same_records_and_says_the_same_skipped_lines(
        edge_records: tuple[Path, list[str]], tmp_path: Path) -> None:
    logs, skipped = edge_records
    expected_usage = [{"keyArn": KEY_ARN, "eventName": "Decrypt", "principalArn": f"arn:aws:iam::{ACCOUNT}:user/eve",
                       "accountId": ACCOUNT, "count": CALLS, "errorCount": CALLS}]

    imported = _keytrail("audit", "import", "--data-dir", tmp_path / "imported", logs)
    assert imported.returncode == 1 and _skipped(imported.stderr) == skipped
    # the corrected copy is a record of its own (a new eventID): stored, and counted once with e-13
    assert imported.stdout.strip() == (f"imported {CALLS + 1} KMS records from 3 files; skipped 2 records of other "
                                       f"services and 1 already in the event log; {len(skipped)} problems")
    from_log = _keytrail("consume", "--data-dir", tmp_path / "imported", "--no-follow")
    assert from_log.returncode == 0
    assert f"consumed {CALLS + 1} records: {CALLS} counted, 1 duplicate, 0 already counted\n" in from_log.stderr
    assert _figures("usage", tmp_path / "imported") == expected_usage
    expected_cost = _figures("cost", tmp_path / "imported")
    assert [row["requests"] for row in expected_cost] == [CALLS]

    consumed = _keytrail("consume", "--data-dir", tmp_path / "consumed", "--cloudtrail", logs)
    assert consumed.returncode == 1 and _skipped(consumed.stderr) == skipped
    assert f"consumed {CALLS + 2} records: {CALLS} counted, 2 duplicates, 0 already counted\n" in consumed.stderr
    assert _figures("usage", tmp_path / "consumed") == expected_usage
    assert _figures("cost", tmp_path / "consumed") == expected_cost

    report = _keytrail("report", "--cloudtrail", logs, "--out", tmp_path / "r.json", "--no-progress")
    assert report.returncode == 1 and _skipped(report.stderr) == skipped
    assert _table(tmp_path / "r.json", "usage") == expected_usage
    assert _table(tmp_path / "r.json", "cost") == expected_cost

    detected = _keytrail("detect", "--cloudtrail", logs, "--format", "json")
    assert detected.returncode == 0 and _skipped(detected.stderr) == skipped
    [alarm] = [json.loads(line) for line in detected.stdout.splitlines()]
    assert alarm["rule"] == "unauthorized-decrypt" and alarm["count"] == CALLS


def test_every_path_names_a_file_it_cannot_read_alike(tmp_path: Path) -> None:
    """import, consume and report read on past it; detect refuses (detection over part of the input
    would misjudge the rest), naming it in the same words."""
    logs = tmp_path / "files"
    _log(logs, "a", [_denied_decrypt("e-0", 0)])
    cut = _write(logs, "b", gzip.compress(json.dumps({"Records": [_denied_decrypt("e-1", 1)]}).encode())[:-10])
    plain = _write(logs, "c", b"no gzip, no JSON")
    not_a_list = _log(logs, "d", {"e-2": _denied_decrypt("e-2", 2)})
    skipped = [f"skipped: {cut}: line 1: cannot read further: Compressed file ended before the end-of-stream marker "
               "was reached",
               f"skipped: {plain}: line 1: not valid JSON (Expecting value at column 1)",
               f"skipped: {not_a_list}: line 1: not a CloudTrail log file: expected {{\"Records\": [...]}}, "
               "lookup-events or filter-log-events output, or records or EventBridge events one per line"]

    imported = _keytrail("audit", "import", "--data-dir", tmp_path / "node", logs)
    assert imported.returncode == 1 and _skipped(imported.stderr) == skipped
    # b's record before its cut too (gunzipped, it was dropped with the piece the cut ended).
    assert imported.stdout.startswith("imported 2 KMS records from 2 files (1 read in part);")
    consumed = _keytrail("consume", "--data-dir", tmp_path / "consumed", "--cloudtrail", logs)
    assert consumed.returncode == 1 and _skipped(consumed.stderr) == skipped
    assert "consumed 2 records: 2 counted" in consumed.stderr
    report = _keytrail("report", "--cloudtrail", logs, "--out", tmp_path / "r.json", "--no-progress")
    assert report.returncode == 1 and _skipped(report.stderr) == skipped
    detected = _keytrail("detect", "--cloudtrail", logs)
    assert detected.returncode == 2 and detected.stderr == f"keytrail detect: {skipped[0].removeprefix('skipped: ')}\n"


def test_every_path_says_the_first_hundred_problems_and_counts_them_all(tmp_path: Path) -> None:
    """A file of a record and 250 values that are none: each command says the first 100 as ever,
    then how many more there were, and counts all 250 (every one was kept in memory and said: a
    10 MB file of them held 624 MB)."""
    logs = tmp_path / "files"
    ones = _log(logs, "a", [_denied_decrypt("e-0", 0), *[1] * 250])
    skipped = [f"skipped: {ones}: record {index}: not a JSON object" for index in range(1, 101)]
    note = "note: 150 more problems not shown (the first 100 are)"

    imported = _keytrail("audit", "import", "--data-dir", tmp_path / "node", logs)
    assert imported.returncode == 1 and _skipped(imported.stderr) == skipped and note in imported.stderr.splitlines()
    assert imported.stdout.strip() == ("imported 1 KMS record from 1 file; skipped 0 records of other services and 0 "
                                       "already in the event log; 250 problems")
    consumed = _keytrail("consume", "--data-dir", tmp_path / "consumed", "--cloudtrail", logs)
    assert consumed.returncode == 1 and _skipped(consumed.stderr) == skipped and note in consumed.stderr.splitlines()
    assert "consumed 1 record: 1 counted" in consumed.stderr
    assert "keytrail consume: 250 problems in the CloudTrail log files" in consumed.stderr
    report = _keytrail("report", "--cloudtrail", logs, "--out", tmp_path / "r.json", "--no-progress")
    assert report.returncode == 1 and _skipped(report.stderr) == skipped and note in report.stderr.splitlines()
    assert "keytrail report: 250 problems in the CloudTrail log files" in report.stderr
    detected = _keytrail("detect", "--cloudtrail", logs, "--format", "json")
    assert detected.returncode == 0 and _skipped(detected.stderr) == skipped and note in detected.stderr.splitlines()
    assert "note: skipped 250 CloudTrail records that cannot be read (above)" in detected.stderr
