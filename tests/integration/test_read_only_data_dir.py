"""Every command that only reads works on a read-only copy of a data dir (evidence on a read-only
mount, a backup restored read-only), and creates nothing in it; a command that must write says so
in one line.

The data dirs are made by real `keytrail serve` sessions: one stopped cleanly (its SQLite files
without -wal and -shm, which SQLite cannot create on a read-only mount), one killed (their changes
still in -wal files, read through the -shm files left beside them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from keytrail.pipeline.query import MetricsStore
from tests.support.mounts import read_only_view
from tests.support.server import ACCOUNT, KeytrailServer
from tests.support.waits import eventually_blocking

pytestmark = pytest.mark.integration


class Session:
    """What a serve session's calls left: its data dir, its key, its answered request IDs."""

    def __init__(self, data_dir: Path, principals: Path, key_arn: str, request_ids: dict[str, str]) -> None:
        self.data_dir, self.principals, self.key_arn, self.request_ids = data_dir, principals, key_arn, request_ids


def _calls(server: KeytrailServer) -> tuple[str, dict[str, str]]:
    """A key created, used by alice, refused to bob: the key ARN, and operation by request ID."""
    alice = server.client("alice")
    created = alice.create_key(Description="evidence")
    key_arn = created["KeyMetadata"]["Arn"]
    encrypted = alice.encrypt(KeyId=key_arn, Plaintext=b"evidence")
    decrypted = alice.decrypt(CiphertextBlob=encrypted["CiphertextBlob"])
    with pytest.raises(ClientError) as denied:
        server.client("bob").decrypt(CiphertextBlob=encrypted["CiphertextBlob"])
    answers = {"CreateKey": created, "Encrypt": encrypted, "Decrypt": decrypted}
    request_ids = {reply["ResponseMetadata"]["RequestId"]: name for name, reply in answers.items()}
    request_ids[denied.value.response["ResponseMetadata"]["RequestId"]] = "Decrypt"
    return key_arn, request_ids


def _serve(data_dir: Path, *, kill: bool) -> Session:
    server = KeytrailServer(data_dir).start()
    try:
        key_arn, request_ids = _calls(server)
        # Counted before the node stops (a stop does not wait for its consumer to catch up); killed,
        # the metrics state's changes are then in its -wal file.
        counted = MetricsStore(data_dir, read_only=True).offsets
        eventually_blocking(lambda: sum(counted().values()) == len(request_ids), what="the calls counted")
    finally:
        if kill:
            server.kill()
        else:
            assert server.stop() == 0
    return Session(data_dir, server.principals, key_arn, request_ids)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """A node stopped cleanly, seen read-only."""
    folder = tmp_path_factory.mktemp("stopped")
    session = _serve(folder / "data", kill=False)
    assert not list(session.data_dir.rglob("*-wal")), "a clean stop checkpoints SQLite's -wal files"
    yield from _read_only(session, folder / "view")


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """A node killed with kill -9, seen read-only."""
    folder = tmp_path_factory.mktemp("killed")
    session = _serve(folder / "data", kill=True)
    yield from _read_only(session, folder / "view")


def _read_only(session: Session, view: Path) -> Iterator[Session]:
    before = _files(session.data_dir)
    with read_only_view(session.data_dir, view):
        yield Session(view, session.principals, session.key_arn, session.request_ids)
    assert _files(session.data_dir) == before


def keytrail(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    [result] = together([*args], ok=ok)
    return result


def together(*commands: list[str | Path], ok: bool = True) -> list[subprocess.CompletedProcess[str]]:
    """Run keytrail commands at once (each spends most of a second starting), and wait for all."""
    started = [(command, subprocess.Popen([sys.executable, "-m", "keytrail", *map(str, command)], text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for command in commands]
    results = []
    for command, process in started:
        stdout, stderr = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
        if ok:
            assert process.returncode == 0, f"keytrail {' '.join(map(str, command))}: {stderr[-2000:]}"
    return results


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_audit_verify_events_tail_and_export_read_a_read_only_data_dir(stopped: Session, tmp_path: Path) -> None:
    data_dir = ["--data-dir", stopped.data_dir]
    verified, events, tail, exported = together(
        ["audit", "verify", *data_dir], ["audit", "events", *data_dir],
        ["audit", "tail", "--no-follow", "--format", "json", *data_dir],
        ["audit", "export", *data_dir, tmp_path / "export"])
    assert "verified: no record missing, altered, reordered or inserted" in verified.stdout
    records = json_lines(events.stdout)
    assert {e["requestID"]: e["eventName"] for e in records} == stopped.request_ids
    assert [e["eventID"] for e in json_lines(tail.stdout)] == [e["eventID"] for e in records]
    assert exported.stdout.startswith("wrote 1 CloudTrail log file")
    detected = json_lines(keytrail("detect", "--cloudtrail", tmp_path / "export", "--format", "json").stdout)
    assert [(a["rule"], a["keyArn"]) for a in detected] == [("unauthorized-decrypt", stopped.key_arn)]


def test_metrics_and_report_read_a_read_only_data_dir(stopped: Session, tmp_path: Path) -> None:
    query = ["--data-dir", stopped.data_dir, "--format", "json"]
    usage, cost, last_used, report = together(
        ["usage", *query], ["cost", *query], ["last-used", *query],
        ["report", "--data-dir", stopped.data_dir, "--out", tmp_path / "report.html"])
    assert {(u["eventName"], u["principalArn"].rsplit("/")[-1], u["count"], u["errorCount"])
            for u in json_lines(usage.stdout)} == {
        ("CreateKey", "alice", 1, 0), ("Encrypt", "alice", 1, 0), ("Decrypt", "alice", 1, 0), ("Decrypt", "bob", 1, 1)}
    [key_cost] = json_lines(cost.stdout)
    assert key_cost["keyArn"] == stopped.key_arn and key_cost["requests"] == 4 and float(key_cost["totalCost"]) > 0
    [last] = json_lines(last_used.stdout)
    assert (last["keyArn"], last["lastUsedOperation"]) == (stopped.key_arn, "Decrypt")
    assert report.stderr.startswith(f"wrote {tmp_path / 'report.html'} (html: 4 events, 1 key, 1 alarm)")
    assert "Decrypt" in (tmp_path / "report.html").read_text()


def test_analyze_reads_the_key_store_of_a_read_only_data_dir(stopped: Session) -> None:
    alarms = json_lines(keytrail("analyze", "--data-dir", stopped.data_dir, "--principals", stopped.principals,
                                 "--format", "json").stdout)
    assert ("rotation-disabled", stopped.key_arn) in [(a["rule"], a["keyArn"]) for a in alarms]
    # alice's identity policy allows kms:* on every key
    assert ("permissive-key", f"arn:aws:iam::{ACCOUNT}:user/alice") in [(a["rule"], a["principalArn"]) for a in alarms]


def test_sqlite_readers_take_the_changes_a_killed_node_left_in_its_wal_files(killed: Session) -> None:
    assert list(killed.data_dir.rglob("keys.db-wal")) and list(killed.data_dir.rglob("*.sqlite-wal"))
    last_used, analyzed = together(
        ["last-used", "--data-dir", killed.data_dir, "--format", "json"],
        ["analyze", "--data-dir", killed.data_dir, "--principals", killed.principals, "--format", "json"])
    [last] = json_lines(last_used.stdout)
    assert (last["keyArn"], last["lastUsedOperation"]) == (killed.key_arn, "Decrypt")
    assert ("rotation-disabled", killed.key_arn) in [(a["rule"], a["keyArn"]) for a in json_lines(analyzed.stdout)]


def test_a_command_that_must_write_says_so_in_one_line(stopped: Session) -> None:
    consumed = keytrail("consume", "--no-follow", "--data-dir", stopped.data_dir, ok=False)
    assert consumed.returncode != 0 and consumed.stderr.count("\n") == 1
    assert "Read-only file system" in consumed.stderr and str(stopped.data_dir / "metrics") in consumed.stderr
