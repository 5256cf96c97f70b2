"""`--cloudtrail PATH…` as the contract writes it: several files after one `--cloudtrail` (a shell
glob's expansion) are all read, by detect, report and consume alike. Each test runs the real entry
point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.audit_records import ACCOUNT, KEY_ARN


def _keytrail(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def _denied_decrypt(event_id: str, second: int) -> dict[str, object]:
    return {"eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
            "eventTime": f"2026-01-05T12:00:{second:02d}Z", "eventID": event_id, "awsRegion": "us-east-1",
            "eventType": "AwsApiCall", "recipientAccountId": ACCOUNT,
            "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/eve", "accountId": ACCOUNT},
            "resources": [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": KEY_ARN}],
            "errorCode": "AccessDenied", "errorMessage": "User: eve is not authorized to perform: kms:Decrypt"}


@pytest.fixture
def two_logs(tmp_path: Path) -> list[Path]:
    """Two CloudTrail log files, one denied Decrypt each."""
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for second, path in enumerate(paths):
        path.write_text(json.dumps({"Records": [_denied_decrypt(f"e-{second}", second)]}))
    return paths


def test_detect_reads_every_file_after_one_cloudtrail_option(two_logs: list[Path]) -> None:
    result = _keytrail("detect", "--cloudtrail", *two_logs, "--format", "json")
    assert result.returncode == 0, result.stderr
    [alarm] = [json.loads(line) for line in result.stdout.splitlines()]
    assert alarm["rule"] == "unauthorized-decrypt" and alarm["count"] == 2


def test_report_reads_every_file_after_one_cloudtrail_option(two_logs: list[Path], tmp_path: Path) -> None:
    result = _keytrail("report", "--cloudtrail", *two_logs, "--out", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "r.json").read_text().splitlines()]
    assert [row["count"] for row in rows if row["table"] == "denied"] == [2]


def test_consume_reads_every_file_after_one_cloudtrail_option(two_logs: list[Path], tmp_path: Path) -> None:
    result = _keytrail("consume", "--data-dir", tmp_path / "node", "--cloudtrail", *two_logs)
    assert result.returncode == 0 and "consumed 2 records" in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["detect"], ["report", "--out", "r.html"], ["consume", "--no-follow"]])
def test_a_path_without_cloudtrail_is_a_one_line_usage_error(command: list[str], two_logs: list[Path]) -> None:
    result = _keytrail(*command, two_logs[0])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"keytrail {command[0]}: unexpected argument(s) {two_logs[0]}: "
                             "CloudTrail log files go after --cloudtrail\n")


def _piped(*args: str | Path, stdin: bytes) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "keytrail", *map(str, args)], input=stdin, capture_output=True,
                            timeout=60)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_a_dash_reads_standard_input_in_every_command(two_logs: list[Path], tmp_path: Path) -> None:
    """`aws logs filter-log-events … | keytrail report --cloudtrail -`: it was refused, "no such file
    or folder: -". Gzipped too, and beside files named; a file named `-` is `$PWD/-`."""
    import gzip

    events = {"events": [{"logStreamName": "s", "timestamp": 0, "message": json.dumps(_denied_decrypt("e-9", 9))}]}
    piped = json.dumps(events).encode()
    detected = _piped("detect", "--cloudtrail", "-", *two_logs, "--format", "json", stdin=gzip.compress(piped))
    assert detected.returncode == 0, detected.stderr
    [alarm] = [json.loads(line) for line in detected.stdout.splitlines()]
    assert alarm["rule"] == "unauthorized-decrypt" and alarm["count"] == 3
    report = _piped("report", "--cloudtrail", "-", "--out", tmp_path / "r.json", stdin=piped)
    assert report.returncode == 0, report.stderr
    rows = [json.loads(line) for line in (tmp_path / "r.json").read_text().splitlines()]
    assert [row["count"] for row in rows if row["table"] == "denied"] == [1]
    consumed = _piped("consume", "--data-dir", tmp_path / "node", "--cloudtrail", "-", stdin=piped)
    assert consumed.returncode == 0 and "consumed 1 record: 1 counted" in consumed.stderr, consumed.stderr
    imported = _piped("audit", "import", "--data-dir", tmp_path / "node", "-", stdin=piped)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("imported 1 KMS record from 1 file;")
    broken = _piped("audit", "import", "--data-dir", tmp_path / "other", "-", stdin=piped[:-30])
    assert broken.returncode == 1 and broken.stderr.startswith("skipped: -: line 1: not valid JSON")
    # the second - read nothing: "-: line 1: not valid JSON (Expecting value at column 1)"
    twice = _piped("detect", "--cloudtrail", "-", "-", stdin=piped)
    assert (twice.returncode, twice.stderr) == (
        2, "keytrail detect: --cloudtrail: - named twice: standard input is read once\n")


@pytest.mark.parametrize("command", [["detect"], ["report", "--out", "r.html"], ["consume", "--no-follow"]])
def test_a_dash_with_a_terminal_for_standard_input_is_a_one_line_error(command: list[str], tmp_path: Path) -> None:
    # It would wait for a paste, saying nothing of what it waits for.
    import pty

    leader, follower = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "keytrail", *command, "--cloudtrail", "-"], stdin=follower,
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 2 and result.stderr == (
        f"keytrail {command[0]}: --cloudtrail: - reads standard input, which is a terminal here: pipe the records in "
        "(aws logs filter-log-events … | keytrail … -)\n")
