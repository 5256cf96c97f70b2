"""The consumers through a live server: GetKeyLastUsage, GET /metrics, and the usage, cost and
last-used commands over the server's data dir. Consumers are eventually consistent: every check
on the running server polls with a deadline."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.e2e.support import audit_events, cli_json, eventually, metric, reply_id
from tests.support.server import ACCOUNT, KeytrailServer

pytestmark = pytest.mark.integration

ALICE, BOB = f"arn:aws:iam::{ACCOUNT}:user/alice", f"arn:aws:iam::{ACCOUNT}:user/bob"
APP_ROLE = f"arn:aws:iam::{ACCOUNT}:role/app"  # role sessions are attributed to the role


@dataclass
class Traffic:
    """The calls made on one key: (eventName, principal) -> (count, errorCount), the last use."""

    key_arn: str
    counts: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    last_request_id: str = ""

    def add(self, name: str, principal: str, error: bool = False) -> None:
        count, errors = self.counts.get((name, principal), (0, 0))
        self.counts[(name, principal)] = (count + 1, errors + int(error))


def _drive(server: KeytrailServer) -> Traffic:
    alice, app, bob = server.client("alice"), server.client("app"), server.client("bob")
    traffic = Traffic(alice.create_key(Description="metered")["KeyMetadata"]["Arn"])
    traffic.add("CreateKey", ALICE)
    _start_of_a_second()
    for client, principal, times in ((alice, ALICE, 3), (app, APP_ROLE, 2)):
        for _ in range(times):
            blob = client.encrypt(KeyId=traffic.key_arn, Plaintext=b"metered")["CiphertextBlob"]
            traffic.add("Encrypt", principal)
    with pytest.raises(ClientError):
        bob.decrypt(CiphertextBlob=blob)
    traffic.add("Decrypt", BOB, error=True)  # denied: counted as an error, never as use
    for _ in range(2):
        # Started at the top of a second, the uses usually share one second of eventTime
        # (CloudTrail's resolution): then only the log order names the last Decrypt as the latest.
        traffic.last_request_id = reply_id(alice.decrypt(CiphertextBlob=blob))
        traffic.add("Decrypt", ALICE)
    return traffic


def _start_of_a_second() -> None:
    """Wait for the wall clock (which the dev clock follows) to start a new second."""
    time.sleep(1 - time.time() % 1 + 0.01)


def _requests_total(server: KeytrailServer) -> dict[tuple[str, str], float]:
    _, body = server.get("/metrics")
    pattern = re.compile(r'^keytrail_kms_requests_total\{operation="(\w+)",outcome="(\w+)"\} (\S+)$')
    return {(m[1], m[2]): float(m[3]) for m in map(pattern.match, body.decode().splitlines()) if m}


def _last_usage(server: KeytrailServer, traffic: Traffic) -> dict[str, Any] | None:
    usage = server.client("alice").get_key_last_usage(KeyId=traffic.key_arn).get("KeyLastUsage")
    traffic.add("GetKeyLastUsage", ALICE)  # asking is a call too, audited and counted
    return usage if usage and usage.get("KmsRequestId") == traffic.last_request_id else None


def test_live_metrics_and_last_usage_follow_the_calls(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    try:
        traffic = _drive(server)
        usage = eventually(lambda: _last_usage(server, traffic), what="GetKeyLastUsage to see the last Decrypt")
        events = audit_events(data)
        event_ids = {e["requestID"]: e["eventID"] for e in events}
        uses = [e for e in events if e["eventName"] in ("Encrypt", "Decrypt") and not e.get("errorCode")]
        # The last Decrypt wins whether its second is later or tied (the usual case) with the others.
        assert uses[-1]["requestID"] == traffic.last_request_id and uses[-1]["eventTime"] == max(
            e["eventTime"] for e in uses)
        assert usage["Operation"] == "Decrypt"
        assert usage["CloudTrailEventId"] == event_ids[traffic.last_request_id]
        expected = {("CreateKey", "success"): 1, ("Encrypt", "success"): 5, ("Decrypt", "success"): 2,
                    ("Decrypt", "AccessDenied"): 1}  # the CloudTrail errorCode
        eventually(lambda: expected.items() <= _requests_total(server).items(),
                   what=f"keytrail_kms_requests_total to reach {expected}")
        # Every call so far was made durable by a timed group commit.
        fsyncs, committed = metric(server, "keytrail_audit_fsync_seconds_count"), metric(
            server, "keytrail_audit_committed_records_total")
        assert fsyncs and committed and committed >= len(events) and 0 < fsyncs <= committed
        live = [r for r in cli_json("usage", "--data-dir", str(data)) if r["keyArn"] == traffic.key_arn]
        assert sum(r["count"] for r in live if r["eventName"] == "Encrypt") == 5  # readable while serving
    finally:
        assert server.stop() == 0
    _check_reports(data, traffic, event_ids)


def _check_reports(data: Path, traffic: Traffic, event_ids: dict[str, str]) -> None:
    usage = {(r["eventName"], r["principalArn"]): (r["count"], r["errorCount"])
             for r in cli_json("usage", "--data-dir", str(data)) if r["keyArn"] == traffic.key_arn}
    assert usage == traffic.counts
    [last] = [r for r in cli_json("last-used", "--data-dir", str(data)) if r["keyArn"] == traffic.key_arn]
    assert (last["lastUsedOperation"], last["lastUsedPrincipalArn"]) == ("Decrypt", ALICE)
    assert last["eventId"] == event_ids[traffic.last_request_id]
    [cost] = [r for r in cli_json("cost", "--data-dir", str(data)) if r["keyArn"] == traffic.key_arn]
    assert cost["accountId"] == ACCOUNT and cost["keyMonths"] > 0
    assert cost["requests"] == sum(count for count, _ in traffic.counts.values()), cost
    assert abs(cost["totalCost"] - cost["keyCost"] - cost["requestCost"]) < 1e-9
