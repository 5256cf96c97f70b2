"""Imported AWS CloudTrail log files (the documented KMS records) give the expected usage and cost."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import interruptible

pytestmark = pytest.mark.integration

ENCRYPT_KEY = "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DECRYPT_KEY = "arn:aws:kms:us-east-1:123456789012:key/0987dcba-09fe-87dc-65ba-ab0987654321"
# audit-anchors.md §1.4 E1 (Encrypt, IAM user, 1.11) and E2 (Decrypt by a role for a service, 1.09).
E1 = {
    "eventVersion": "1.11",
    "userIdentity": {
        "type": "IAMUser",
        "principalId": "EX_PRINCIPAL_ID",
        "arn": "arn:aws:iam::111122223333:user/Alice",
        "accountId": "111122223333",
        "accessKeyId": "EXAMPLE_KEY_ID",
        "userName": "Alice",
    },
    "eventTime": "2025-05-20T20:46:16Z",
    "eventSource": "kms.amazonaws.com",
    "eventName": "Encrypt",
    "awsRegion": "us-east-1",
    "sourceIPAddress": "192.0.2.0",
    "userAgent": "AWS Internal",
    "requestParameters": {
        "encryptionContext": {"Department": "Engineering"},
        "keyId": ENCRYPT_KEY,
        "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
    },
    "responseElements": None,
    "additionalEventData": {"keyMaterialId": "123456789abcdef0"},
    "requestID": "f3423043-63bc-4a2c-a1b1-1b1ba1d8b5e7",
    "eventID": "91235988-eb87-476a-ac2c-0cdc244e6dca",
    "readOnly": True,
    "resources": [{"ARN": ENCRYPT_KEY, "accountId": "111122223333"}],
    "eventType": "AwsApiCall",
    "managementEvent": True,
    "recipientAccountId": "111122223333",
}
E2 = {
    "eventVersion": "1.09",
    "userIdentity": {
        "type": "AssumedRole",
        "principalId": "AROAEXAMPLE:session",
        "arn": "arn:aws:sts::123456789012:assumed-role/Admin",
        "accountId": "123456789012",
        "accessKeyId": "ASIAEXAMPLE",
        "sessionContext": {
            "sessionIssuer": {
                "type": "Role",
                "arn": "arn:aws:iam::123456789012:role/Admin",
                "accountId": "123456789012",
            },
            "attributes": {"creationDate": "2024-12-06T22:04:04Z", "mfaAuthenticated": "false"},
        },
        "invokedBy": "AWS Internal",
    },
    "eventTime": "2024-12-06T22:26:34Z",
    "eventSource": "kms.amazonaws.com",
    "eventName": "Decrypt",
    "awsRegion": "us-east-1",
    "sourceIPAddress": "AWS Internal",
    "userAgent": "AWS Internal",
    "requestParameters": {"encryptionAlgorithm": "SYMMETRIC_DEFAULT"},
    "responseElements": None,
    "readOnly": True,
    "resources": [{"accountId": "123456789012", "type": "AWS::KMS::Key", "ARN": DECRYPT_KEY}],
    "requestID": "b0c1a7f5-0000-4000-8000-000000000001",
    "eventID": "c7b1a7f5-0000-4000-8000-000000000002",
    "eventType": "AwsApiCall",
    "managementEvent": True,
    "recipientAccountId": "123456789012",
}
S3 = {
    "eventVersion": "1.09",
    "eventSource": "s3.amazonaws.com",
    "eventName": "GetObject",
    "eventTime": "2024-12-06T22:26:35Z",
    "eventID": "other-service",
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keytrail.cli.metrics", *args], capture_output=True, text=True, timeout=120
    )


def test_documented_records_give_expected_usage_last_used_and_cost(tmp_path: Path) -> None:
    logs = tmp_path / "AWSLogs"
    logs.mkdir()
    with gzip.open(logs / "a.json.gz", "wt") as handle:
        json.dump({"Records": [E1, S3]}, handle)
    (logs / "b.json").write_text(json.dumps({"Records": [E2, E1]}))  # E1 again: delivered twice
    data = tmp_path / "data"
    consumed = cli("consume", "--data-dir", str(data), "--cloudtrail", str(logs))
    assert consumed.returncode == 0, consumed.stderr

    usage = [
        json.loads(x) for x in cli("usage", "--data-dir", str(data), "--format", "json").stdout.splitlines()
    ]
    assert sorted(
        (u["keyArn"], u["principalArn"], u["accountId"], u["eventName"], u["count"]) for u in usage
    ) == sorted(
        [
            (ENCRYPT_KEY, "arn:aws:iam::111122223333:user/Alice", "111122223333", "Encrypt", 1),
            (DECRYPT_KEY, "arn:aws:iam::123456789012:role/Admin", "123456789012", "Decrypt", 1),
        ]
    )
    last = {
        r["keyArn"]: r
        for r in map(
            json.loads, cli("last-used", "--data-dir", str(data), "--format", "json").stdout.splitlines()
        )
    }
    assert last[ENCRYPT_KEY]["lastUsedTime"] == "2025-05-20T20:46:16Z"
    assert last[DECRYPT_KEY]["lastUsedPrincipalArn"] == "arn:aws:iam::123456789012:role/Admin"
    cost = [
        json.loads(x) for x in cli("cost", "--data-dir", str(data), "--format", "json").stdout.splitlines()
    ]
    assert {(c["keyArn"], c["requests"], c["requestCost"], c["keyCost"]) for c in cost} == {
        (ENCRYPT_KEY, 1, 0.000003, 0),
        (DECRYPT_KEY, 1, 0.000003, 0),
    }


def test_importing_the_same_files_again_counts_nothing_twice(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.json").write_text(json.dumps({"Records": [E1, E2]}))
    data = tmp_path / "data"
    for _ in range(2):
        assert cli("consume", "--data-dir", str(data), "--cloudtrail", str(logs)).returncode == 0
    (logs / "b.json").write_text(json.dumps({"Records": [dict(E1, eventID="new-event-id")]}))
    assert cli("consume", "--data-dir", str(data), "--cloudtrail", str(logs / "b.json")).returncode == 0
    usage = [
        json.loads(x)
        for x in cli(
            "usage", "--data-dir", str(data), "--by", "operation", "--format", "json"
        ).stdout.splitlines()
    ]
    assert {u["eventName"]: u["count"] for u in usage} == {"Encrypt": 2, "Decrypt": 1}


def test_missing_cloudtrail_path_is_one_line_and_non_zero(tmp_path: Path) -> None:
    result = cli("consume", "--data-dir", str(tmp_path), "--cloudtrail", str(tmp_path / "missing"))
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_consuming_log_files_and_the_next_run_counts_the_rest_once(
    tmp_path: Path, sig: signal.Signals
) -> None:
    logs, data, files, per_file = tmp_path / "logs", tmp_path / "data", 30, 4000
    logs.mkdir()
    for f in range(files):  # enough that the run is still reading when the signal comes
        records = [dict(E1, eventID=f"event-{f}-{i}") for i in range(per_file)]
        (logs / f"{f:03d}.json").write_text(json.dumps({"Records": records}))
    consumer = subprocess.Popen([sys.executable, "-m", "keytrail.cli.metrics", "consume", "--data-dir", str(data),
                                 "--cloudtrail", str(logs)], stderr=subprocess.PIPE, text=True,
                                preexec_fn=interruptible)
    deadline = time.monotonic() + 60
    while not (data / "metrics" / "state").is_dir() and time.monotonic() < deadline:  # its handlers are set
        time.sleep(0.01)
    consumer.send_signal(sig)
    _, stderr = consumer.communicate(timeout=60)
    assert consumer.returncode == 0, stderr
    stopped = int(stderr.split("consumed ")[1].split(" ")[0])
    assert stopped < files * per_file  # before, it read every file to the end whatever the signal
    assert cli("consume", "--data-dir", str(data), "--cloudtrail", str(logs)).returncode == 0
    usage = cli("usage", "--data-dir", str(data), "--by", "operation", "--format", "json").stdout.splitlines()
    assert [json.loads(u)["count"] for u in usage] == [files * per_file]


def test_a_cross_account_call_logged_to_both_accounts_counts_once(tmp_path: Path) -> None:
    # CloudTrail sends a cross-account KMS call to the caller's and to the key owner's account:
    # two records, each with its own eventID and recipientAccountId, one sharedEventID.
    caller, owner = "444455556666", "111122223333"
    copy = dict(E1, userIdentity=dict(E1["userIdentity"], arn=f"arn:aws:iam::{caller}:user/Bob", accountId=caller),
                sharedEventID="5a1e0c1d-3b7e-4f0e-9a52-0d7c7b1c2e01")
    logs = tmp_path / "AWSLogs"
    for account, event_id in ((caller, "0d3b4e5f-1111-4a2b-8c3d-000000000001"),
                              (owner, "0d3b4e5f-2222-4a2b-8c3d-000000000002")):
        (logs / account).mkdir(parents=True)
        record = dict(copy, eventID=event_id, recipientAccountId=account)
        (logs / account / "a.json").write_text(json.dumps({"Records": [record]}))
    for route, cost in _cost_by_each_route(tmp_path, logs):
        assert [(c["keyArn"], c["accountId"], c["requests"]) for c in cost] == [(ENCRYPT_KEY, caller, 1)], route


def _cost_by_each_route(tmp_path: Path, logs: Path, *query: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """(route, `cost --format json` rows) of the files consumed straight, and through the event log
    (the Avro path) after an import, each into a data dir of its own."""
    imported = tmp_path / "imported"
    _import(logs, imported)
    rows = []
    for data, source in ((tmp_path / "files", ["--cloudtrail", str(logs)]), (imported, ["--no-follow"])):
        assert cli("consume", "--data-dir", str(data), *source).returncode == 0
        cost = cli("cost", "--data-dir", str(data), *query, "--format", "json").stdout.splitlines()
        rows.append((source[0], [json.loads(line) for line in cost]))
    return rows


def _import(logs: Path, data_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "keytrail", "audit", "import", str(logs), "--data-dir",
                             str(data_dir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_corrected_copy_of_an_event_counts_once_from_files_and_through_the_event_log(tmp_path: Path) -> None:
    # The copy (addendum reason UPDATED_DATA, a new eventID naming the original) was counted as a
    # call of its own: a RotateKey copy billed one rotation more. Through an import the addendum
    # rides in the event log's otherFields (the Avro path); from the files it is read directly.
    from tests.unit.pipeline.test_cli_metrics import corrected_copies
    from tests.unit.reports.records import key_arn

    key = key_arn("corrected")
    logs = tmp_path / "AWSLogs"
    logs.mkdir()
    (logs / "a.json").write_text(json.dumps({"Records": corrected_copies(key)}))
    for route, cost in _cost_by_each_route(tmp_path, logs, "--since", "2026-10-01", "--until", "2026-11-01"):
        assert [(c["keyCost"], c["requests"]) for c in cost] == [(round((240 + 504 * 2) / 744, 10), 2)], route


def test_consuming_by_a_second_route_says_an_event_may_count_twice(tmp_path: Path) -> None:
    # Duplicates are known per route: the files imported and consumed through the event log, then
    # the same files by --cloudtrail, counted every call twice without a word.
    logs = tmp_path / "AWSLogs"
    logs.mkdir()
    (logs / "a.json").write_text(json.dumps({"Records": [E1]}))
    data = tmp_path / "data"
    _import(logs, data)
    first = cli("consume", "--data-dir", str(data), "--no-follow")
    assert first.returncode == 0 and "note:" not in first.stderr
    second = cli("consume", "--data-dir", str(data), "--cloudtrail", str(logs))
    assert second.returncode == 0 and second.stderr.splitlines()[-1] == (
        f"note: {data} counts events from the embedded event log as well as from CloudTrail files; duplicates are "
        "known per route, so an event that came by both is counted twice: feed each log by one route")


def test_consuming_the_same_folder_again_reads_only_its_new_files(tmp_path: Path) -> None:
    # Repeats are dropped by eventID only among a partition's recent ones (at most 1,000,000): a
    # bucket consumed again must not rely on them, its files already counted are passed over.
    logs, data = tmp_path / "logs", tmp_path / "data"
    logs.mkdir()
    (logs / "a.json").write_text(json.dumps({"Records": [E1, E2]}))
    (logs / "broken.json").write_text('{"Records": [')
    first = cli("consume", "--data-dir", str(data), "--cloudtrail", str(logs))
    # The readable files are counted; the exit status says one could not be read.
    assert first.returncode == 1 and "consumed 2 records" in first.stderr, first.stderr
    assert first.stderr.rstrip().endswith("1 problem in the CloudTrail log files (above): the figures leave out "
                                          "what could not be read"), first.stderr
    (logs / "b.json").write_text(json.dumps({"Records": [dict(E1, eventID="new-event-id")]}))
    again = cli("consume", "--data-dir", str(data), "--cloudtrail", str(logs))
    assert again.returncode == 1 and "consumed 1 record: 1 counted" in again.stderr, again.stderr
    assert "broken.json" in again.stderr  # a file it could not read is never passed over in silence


def test_queries_after_an_import_say_the_events_are_not_counted_until_consumed(tmp_path: Path) -> None:
    # `keytrail audit import` fills the event log; with no node running nothing counts it, and
    # `keytrail cost` printed an empty table in silence.
    (tmp_path / "a.json").write_text(json.dumps({"Records": [E1, E2]}))
    data = tmp_path / "data"
    imported = subprocess.run([sys.executable, "-m", "keytrail", "audit", "import", "--data-dir", str(data),
                               str(tmp_path / "a.json")], capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    before = cli("cost", "--data-dir", str(data), "--format", "json")
    assert before.returncode == 0 and before.stdout == ""
    assert "2 events of the event log" in before.stderr and "keytrail consume" in before.stderr
    assert not (data / "metrics").exists()  # a query only reads the data directory
    assert cli("consume", "--data-dir", str(data), "--no-follow").returncode == 0
    after = cli("cost", "--data-dir", str(data), "--format", "json")
    assert after.returncode == 0 and "not counted" not in after.stderr
    # Neither key's CreateKey is in the files: the one line says their storage is missing.
    assert after.stderr.startswith("note: 2 keys in these figures were not created in the events")
    assert sorted(json.loads(line)["requests"] for line in after.stdout.splitlines()) == [1, 1]


_CALLER, _OWNER = "444455556666", "111122223333"
_SHARED_KEY = f"arn:aws:kms:us-east-1:{_OWNER}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
_CALLER_ROLE = f"arn:aws:iam::{_CALLER}:role/App"


def _cross_account_copies() -> dict[str, dict[str, Any]]:
    """A Decrypt by a role of account _CALLER on a key of _OWNER, as AWS delivers it to each: the
    caller's copy names the role; the key owner's names the caller by account alone (`AWSAccount`)."""
    call = {**E1, "eventName": "Decrypt", "requestParameters": {"encryptionAlgorithm": "SYMMETRIC_DEFAULT"},
            "resources": [{"accountId": _OWNER, "type": "AWS::KMS::Key", "ARN": _SHARED_KEY}],
            "sharedEventID": "5a1e0c1d-3b7e-4f0e-9a52-0d7c7b1c2e07"}
    role = {"type": "AssumedRole", "principalId": "AROAEXAMPLE:s", "arn": f"arn:aws:sts::{_CALLER}:assumed-role/App/s",
            "accountId": _CALLER, "accessKeyId": "ASIAEXAMPLE",
            "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE", "arn": _CALLER_ROLE,
                                                 "accountId": _CALLER, "userName": "App"}}}
    return {
        _CALLER: {**call, "userIdentity": role, "recipientAccountId": _CALLER,
                  "eventID": "0d3b4e5f-1111-4a2b-8c3d-000000000007"},
        _OWNER: {**call, "userIdentity": {"type": "AWSAccount", "principalId": "AROAEXAMPLE:s", "accountId": _CALLER},
                 "recipientAccountId": _OWNER, "eventID": "0d3b4e5f-2222-4a2b-8c3d-000000000007"},
    }


def _delivered(logs: Path, accounts: list[str]) -> None:
    """Each account's copy in a gzipped log file of AWS's name and folders, delivered in `accounts`' order."""
    copies = _cross_account_copies()
    for minute, account in enumerate(accounts):
        folder = logs / "AWSLogs" / account / "CloudTrail" / "us-east-1" / "2025" / "05" / "20"
        folder.mkdir(parents=True)
        name = f"{account}_CloudTrail_us-east-1_20250520T204{minute}Z_{minute}aBcDeFgHiJkLmN.json.gz"
        with gzip.open(folder / name, "wt") as handle:
            json.dump({"Records": [copies[account]]}, handle)


def _callers_by_each_route(tmp_path: Path, logs: Path) -> list[tuple[str, Any]]:
    """(route, (usage rows, last-used row, the report's usage and last_used rows)) of `logs`."""
    rows = []
    for route, (_, usage) in zip(("files", "event log"), _cost_by_each_route(tmp_path, logs), strict=True):
        data = tmp_path / ("files" if route == "files" else "imported")
        usage = [json.loads(line) for line in cli("usage", "--data-dir", str(data), "--by", "key,principal,account",
                                                  "--format", "json").stdout.splitlines()]
        last = [json.loads(line) for line in cli("last-used", "--data-dir", str(data), "--by", "key,principal",
                                                 "--format", "json").stdout.splitlines()]
        rows.append((route, ([(u["principalArn"], u["accountId"], u["count"]) for u in usage],
                             [(r["lastUsedPrincipalArn"], r["lastUsedOperation"]) for r in last])))
    out = tmp_path / "report.json"
    made = subprocess.run([sys.executable, "-m", "keytrail", "report", "--cloudtrail", str(logs), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    report = [json.loads(line) for line in out.read_text().splitlines()]
    rows.append(("report", ([(r["principalArn"], r["accountId"], r["count"]) for r in report if r["table"] == "usage"],
                            [(r["lastUsedPrincipalArn"], r["lastUsedOperation"]) for r in report
                             if r["table"] == "last_used"])))
    return rows


@pytest.mark.parametrize("first", ["owner", "caller"])
def test_a_cross_account_call_keeps_its_caller_whichever_copy_is_read_first(tmp_path: Path, first: str) -> None:
    # The key owner's copy names the caller by account alone (userIdentity type AWSAccount): read
    # first, it was the copy counted, and usage, last-used and the report lost the caller's role.
    logs = tmp_path / "logs"
    _delivered(logs, [_OWNER, _CALLER] if first == "owner" else [_CALLER, _OWNER])
    for route, (usage, last) in _callers_by_each_route(tmp_path, logs):
        assert usage == [(_CALLER_ROLE, _CALLER, 1)], route
        assert last == [(_CALLER_ROLE, "Decrypt")], route


def test_a_key_owners_copy_read_alone_names_the_calling_account(tmp_path: Path) -> None:
    # The key owner's trail alone: its copy names the caller by its account, as CloudTrail gives it;
    # principalArn was null, as for no caller at all.
    logs = tmp_path / "logs"
    _delivered(logs, [_OWNER])
    for route, (usage, last) in _callers_by_each_route(tmp_path, logs):
        assert usage == [(_CALLER, _CALLER, 1)], route
        assert last == [(_CALLER, "Decrypt")], route
