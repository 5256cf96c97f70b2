"""A full disk under a real `keytrail serve`: calls are refused with the audit error while the spool
cannot write, the outage is logged once (not a line per refused call), and calls resume by
themselves when space is back, with every answered call in the trail and none of the refused."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from keytrail.audit.cloudtrail_files import iter_events
from keytrail.audit.integrity import verify
from tests.support.server import KeytrailServer


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB filesystem of the test's own (tmpfs: needs root, as CI runs)."""
    mount = tmp_path / "small"
    mount.mkdir()
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


def test_a_full_disk_refuses_calls_until_space_is_back(small_disk: Path, tmp_path: Path) -> None:
    server = KeytrailServer(small_disk / "data")
    server.log = tmp_path / "server.log"  # off the full disk, where nobody could read it
    server.start()
    try:
        kms = server.client("alice")
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        filler = _fill(small_disk, leave=64 * 1024)
        answered, refused = [], []
        while len(refused) < 30:
            try:
                answered.append(kms.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["RequestId"])
            except ClientError as error:
                assert error.response["Error"]["Code"] == "KMSInternalException"
                assert "audit spool" in error.response["Error"]["Message"]
                assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 500
                refused.append(error.response["ResponseMetadata"]["RequestId"])
            assert len(answered) < 5000, "the disk never filled"
        filler.unlink()
        answered.append(kms.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["RequestId"])
        assert server.stop() == 0
    finally:
        if server.proc is not None:
            server.kill()
    log = server.log.read_text()
    assert log.count("audit spool write failed") == 1  # one line for the outage, not one per call
    assert "audit spool writes again, after refusing" in log
    recorded = {event["requestID"] for _, event in iter_events(small_disk / "data")}
    assert set(answered) <= recorded and not recorded & set(refused)
    assert verify(small_disk / "data") == []
