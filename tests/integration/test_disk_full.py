"""A full disk under a real `keytrail serve`: calls are refused with the audit error while the spool
cannot write, the outage is logged once (not a line per refused call), and calls resume by
themselves when space is back, with every answered call in the trail and none of the refused; the
metrics consumer catches up and an alarm raised meanwhile reaches alarms.jsonl."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from keytrail.audit.cloudtrail_files import iter_events
from keytrail.audit.integrity import verify
from tests.support.postgres import fresh_database
from tests.support.processes import child_commands
from tests.support.server import KeytrailServer


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB filesystem of the test's own (tmpfs: needs root, as CI runs)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """Take all but `leave` bytes of the disk's free space; the file that holds them."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - leave))
    return filler


@pytest.mark.parametrize("dev_clock", [True, False], ids=["consumer in serve", "consumer child"])
def test_a_full_disk_refuses_calls_until_space_is_back(small_disk: Path, tmp_path: Path, dev_clock: bool) -> None:
    server = KeytrailServer(small_disk / "data", dev_clock=dev_clock)
    server.log = tmp_path / "server.log"  # off the full disk, where nobody could read it
    server.start()
    try:
        kms = server.client("alice")
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        filler = _fill(small_disk, leave=64 * 1024)
        answered, refused = [], []
        full_since = time.monotonic()
        # Past the consumer's 2 s checkpoint: it too finds the disk full.
        while len(refused) < 30 or time.monotonic() - full_since < 3:
            try:
                answered.append(kms.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["RequestId"])
            except ClientError as error:
                assert error.response["Error"]["Code"] == "KMSInternalException"
                assert "audit spool" in error.response["Error"]["Message"]
                assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 500
                refused.append(error.response["ResponseMetadata"]["RequestId"])
                time.sleep(0.02)
            assert len(answered) < 5000, "the disk never filled"
        filler.unlink()
        last = kms.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["RequestId"]
        answered.append(last)
        assert _last_used_request(kms, key, until=last) == last  # the metrics consumer carried on
        assert server.stop() == 0
    finally:
        if server.proc is not None:
            server.kill()
    log = server.log.read_text()
    assert log.count("audit spool write failed") == 1  # one line for the outage, not one per call
    assert "audit spool writes again, after refusing" in log
    assert "Traceback" not in log, log
    recorded = {event["requestID"] for _, event in iter_events(small_disk / "data")}
    assert set(answered) <= recorded and not recorded & set(refused)
    assert verify(small_disk / "data") == []


def test_health_is_unhealthy_while_the_audit_spool_cannot_write(small_disk: Path, tmp_path: Path) -> None:
    with _node_on_a_full_disk(small_disk, tmp_path / "server.log") as (server, kms, key, filler):
        status, body = server.get("/_keytrail/health")
        health = json.loads(body)
        assert (status, health["status"]) == (503, "unhealthy"), body
        assert "No space left on device" in health["audit"]
        filler.unlink()
        kms.encrypt(KeyId=key, Plaintext=b"x")
        assert server.get("/_keytrail/health")[0] == 200


async def test_a_state_change_is_refused_before_it_is_made_while_the_disk_stays_full(
        small_disk: Path, tmp_path: Path) -> None:
    """A PostgreSQL store does not share the spool's full disk: each CreateKey made its key, then
    was answered a retryable 500 ("what the call changed stands"), and each SDK retry made another
    key, through the whole outage. Refused before it is made, it makes none; writes resume once
    there is room."""
    async with fresh_database() as dsn:
        with _node_on_a_full_disk(small_disk, tmp_path / "server.log", "--store", dsn) as (_, kms, key, filler):
            for _ in range(3):  # as an SDK's retries would
                code, message = _error(kms.create_key, Description="during the outage")
                assert code == "KMSInternalException" and message.endswith("the call was not performed."), message
            filler.unlink()
            kms.encrypt(KeyId=key, Plaintext=b"x")
            assert [k["KeyId"] for k in kms.list_keys()["Keys"]] == [key]


@contextlib.contextmanager
def _node_on_a_full_disk(disk: Path, log: Path, *extra: str) -> Iterator[tuple[KeytrailServer, Any, str, Path]]:
    """A node on `disk` with one key, the disk then filled until the spool refuses a call:
    (server, client, key, the file filling the disk)."""
    server = KeytrailServer(disk / "data", *extra)
    server.log = log  # off the full disk, where nobody could read it
    server.start()
    try:
        kms = server.client("alice")
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        filler = _fill(disk, leave=64 * 1024)
        _encrypt_until_refused(kms, key)
        yield server, kms, key, filler
    finally:
        server.stop()


def _encrypt_until_refused(kms: Any, key: str) -> None:
    for _ in range(5000):
        try:
            kms.encrypt(KeyId=key, Plaintext=b"x")
        except ClientError as error:
            assert "audit spool" in error.response["Error"]["Message"]
            return
    raise AssertionError("the disk never filled")


def _error(call: Callable[..., Any], **params: Any) -> tuple[str, str]:
    try:
        call(**params)
    except ClientError as error:
        return error.response["Error"]["Code"], error.response["Error"]["Message"]
    raise AssertionError("the call succeeded")


REFUSED_CALLS = "keytrail_audit_refused_calls_total"


def _refused_calls(server: KeytrailServer) -> dict[str, int]:
    """keytrail_audit_refused_calls_total of serve's /metrics, by reason."""
    status, body = server.get("/metrics")
    assert status == 200, body[-500:]
    return {reason: int(float(value)) for reason, value in
            re.findall(rf'^{REFUSED_CALLS}{{reason="(\w+)"}} (\S+)$', body.decode(), flags=re.M)}


def test_metrics_count_every_call_refused_for_want_of_its_audit_record(small_disk: Path, tmp_path: Path) -> None:
    """Such a call leaves no record, so no request counter sees it, and the health's audit part is 0
    only for the 10 s after each one: on a quiet node (a call every 13 s) KeytrailUnhealthy went
    pending and reset and never paged. Counted from 0 at the start, each refused call is seen."""
    server = KeytrailServer(small_disk / "data")
    server.log = tmp_path / "server.log"
    server.start()
    try:
        counted = _refused_calls(server)
        assert counted == {"cannot_write": 0, "spool_failed": 0, "kafka_cap": 0, "sink_error": 0}
        kms = server.client("alice")
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        filler = _fill(small_disk, leave=64 * 1024)
        refused = 0
        for _ in range(5000):
            try:
                kms.encrypt(KeyId=key, Plaintext=b"x")
            except ClientError as error:
                assert "audit spool" in error.response["Error"]["Message"]
                refused += 1
                if refused == 3:
                    break
        else:
            raise AssertionError("the disk never filled")
        assert _refused_calls(server) == counted | {"cannot_write": 3}
        filler.unlink()
        kms.encrypt(KeyId=key, Plaintext=b"x")  # audited: not counted
        assert _refused_calls(server) == counted | {"cannot_write": 3}
    finally:
        server.stop()


def _last_used_request(kms: Any, key: str, until: str, seconds: float = 30) -> str | None:
    """The request id GetKeyLastUsage names once it names `until` (or at the deadline)."""
    deadline = time.monotonic() + seconds
    while True:
        usage = kms.get_key_last_usage(KeyId=key).get("KeyLastUsage") or {}
        if usage.get("KmsRequestId") == until or time.monotonic() > deadline:
            return usage.get("KmsRequestId")
        time.sleep(0.2)


def _child(server: KeytrailServer, kind: str) -> int:
    """The pid of serve's `kind` child process (cli/sidecar.py)."""
    assert server.proc is not None
    for child, argv in child_commands(server.proc.pid).items():
        if kind.encode() in argv:
            return child
    raise LookupError(f"serve has no {kind} child")


def test_an_alarm_raised_while_the_disk_is_full_is_written_once_there_is_space(small_disk: Path,
                                                                                tmp_path: Path) -> None:
    server = KeytrailServer(small_disk / "data", dev_clock=False)
    server.log = tmp_path / "server.log"
    server.start()
    alarms = small_disk / "data" / "alarms.jsonl"
    try:
        blob = server.client("alice").encrypt(KeyId=server.client("alice").create_key()["KeyMetadata"]["KeyId"],
                                              Plaintext=b"x")["CiphertextBlob"]
        detector = _child(server, "detector")
        os.kill(detector, signal.SIGSTOP)  # the denied calls are durable before it reads them
        for _ in range(3):
            with pytest.raises(ClientError):
                server.client("carol").decrypt(CiphertextBlob=blob)
        filler = _fill(small_disk, leave=0)
        os.kill(detector, signal.SIGCONT)
        _wait_for(lambda: "cannot append alarm" in server.log.read_text())
        filler.unlink()
        _wait_for(lambda: alarms.exists() and "unauthorized-decrypt" in alarms.read_text(), seconds=60)
        assert server.stop() == 0
    finally:
        if server.proc is not None:
            server.kill()
    log = server.log.read_text()
    assert log.count("cannot append alarm") == 1 and "alarms are written again" in log
    assert "Traceback" not in log, log


def _wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("inside_data_dir", [True, False], ids=["owner-only", "elsewhere"])
def test_an_export_onto_a_full_disk_leaves_no_partial_file_behind(small_disk: Path, tmp_path: Path,
                                                                   inside_data_dir: bool) -> None:
    """Into the data dir (owner-only files) the export's temporary file, written as far as the disk
    allowed, stayed after the one-line failure, holding what little space the disk had."""
    from tests.support.audit_records import fill_trail

    data = small_disk / "node" if inside_data_dir else tmp_path / "node"
    fill_trail(data, 200)
    out = data / "export" if inside_data_dir else small_disk / "export"
    _fill(small_disk, 0)
    export = subprocess.run([sys.executable, "-m", "keytrail", "audit", "export", "--data-dir", str(data), str(out)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert export.returncode == 1 and "No space left on device" in export.stderr, export.stderr
    assert [p.name for p in out.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("dev_clock", [True, False], ids=["consumer in serve", "consumer child"])
def test_a_stop_whose_final_digest_cannot_be_written_exits_1(small_disk: Path, tmp_path: Path,
                                                               dev_clock: bool) -> None:
    """SIGTERM on a full disk: the final signed digest (docs/operations.md, Backup and restore) has
    no room, and the stop said so in its one ERROR line but exited 0, so a supervisor or the backup
    recipe took it for a clean stop. Nothing is lost: the next start, with space, signs the records."""
    data = small_disk / "data"
    server = KeytrailServer(data, dev_clock=dev_clock)
    server.log = tmp_path / "server.log"
    server.start()
    try:
        kms = server.client("alice")
        kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")
        filler = _fill(small_disk, leave=0)
        assert server.stop() == 1
    finally:
        if server.proc is not None:
            server.kill()
    log = server.log.read_text()
    stop_errors = [line for line in log.splitlines() if "stopping the node" in line]
    assert len(stop_errors) == 1 and "No space left on device" in stop_errors[0], log
    assert "Traceback" not in log, log
    filler.unlink()
    server.start()
    assert server.stop() == 0
    assert verify(data) == []


def test_a_first_start_on_a_full_disk_leaves_no_data_dir_behind(small_disk: Path) -> None:
    """contracts.md: a failed start removes the data dir and the parents it made, once empty. The
    SQLite store it could not write stayed (an empty keys.db) with the root key made beside it: the
    folders stayed, and the next start took that root key for the store's own."""
    _fill(small_disk, 8 << 10)
    data_dir = small_disk / "a" / "b" / "node"
    start = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data_dir), "--port", "0"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert start.returncode == 2, start.stderr
    [line] = start.stderr.splitlines()
    assert line.startswith("keytrail serve: cannot open the key store ") and "disk is full" in line, line
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_start_with_no_room_to_keep_a_torn_tail_aside_says_which_file_and_leaves_none(small_disk: Path,
                                                                                         tmp_path: Path) -> None:
    """After a crash the start keeps the torn tail it cuts in a `.cut-at-` file beside the segment.
    On a full disk that copy failed as "keytrail serve: No space left on device", naming no file,
    and left the copy behind empty: one more each start (a supervisor restarting serve in a loop
    filled the folder with them). Now the line names the file, none stays, and a start with space
    cuts the tail as usual."""
    data = small_disk / "data"
    server = KeytrailServer(data)
    server.log = tmp_path / "server.log"
    server.start()
    kms = server.client("alice")
    kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")
    server.kill()
    [segment] = (data / "audit" / "log").glob("*.seg")
    with segment.open("ab") as torn:  # the crash's unfinished write: a frame header and less than it names
        torn.write((300).to_bytes(4, "little") + bytes(4) + b"part of a record")
    filler = _fill(small_disk, leave=0)
    with pytest.raises(RuntimeError, match="keytrail serve exited"):
        server.start()
    assert server.proc is not None and server.proc.returncode == 2
    said = server.log.read_text().splitlines()[-1]
    assert said.startswith("keytrail serve: No space left on device: ") and ".seg.cut-at-" in said, said
    assert list(segment.parent.glob("*.cut-at-*")) == []
    filler.unlink()
    server.start()
    assert server.stop() == 0
    [kept] = segment.parent.glob("*.cut-at-*")
    assert kept.read_bytes().endswith(b"part of a record")
    assert verify(data) == []
