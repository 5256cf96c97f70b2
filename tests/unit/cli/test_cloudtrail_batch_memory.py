"""Every reader of CloudTrail files (`audit import`, `consume|report|detect --cloudtrail`) holds its
records a batch at a time bounded by the text they were read from as well as by their count: a
file of large records no longer holds thousands of them at once. Each test runs the real command
and measures its peak resident memory (the kernel's, of that process alone)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.audit_records import ACCOUNT, KEY_ARN

RECORDS = 2_000
#: requestParameters of 200 KB each: 400 MB of text, in a .gz of under 2 MB.
PADDING = 200_000
#: Generous: each command held 0.5 to 1.3 GB reading the file (all its records at once: a batch of
#: 2,000, 10,000 or 50,000), and holds 0.1 to 0.2 GB batching by text too; a run over a small file
#: takes 0.05 to 0.15 GB (polars and the rest, loaded).
PEAK_BOUND = 400 << 20

# Runs `argv` as its only child and prints its exit status and peak RSS (ru_maxrss: KiB on Linux).
_MEASURED = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
             "stderr=subprocess.PIPE); sys.stderr.buffer.write(done.stderr); "
             "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _record(index: int) -> dict[str, object]:
    return {"eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
            "eventTime": f"2026-01-05T{index // 3600 % 24:02d}:{index // 60 % 60:02d}:{index % 60:02d}Z",
            "eventID": f"00000000-0000-4000-8000-{index:012d}", "awsRegion": "us-east-1",
            "eventType": "AwsApiCall", "recipientAccountId": ACCOUNT, "readOnly": True,
            "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/app", "accountId": ACCOUNT},
            "resources": [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": KEY_ARN}],
            "requestParameters": {"keyId": KEY_ARN, "encryptionContext": {"padding": "p" * PADDING}}}


@pytest.fixture(scope="module")
def large_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log file of RECORDS records of large requestParameters."""
    path = tmp_path_factory.mktemp("large") / f"{ACCOUNT}_CloudTrail_us-east-1_20260105T0000Z_large.json.gz"
    with gzip.open(path, "wb", compresslevel=1) as packed:
        packed.write(b'{"Records": [')
        for index in range(RECORDS):
            packed.write((b"," if index else b"") + orjson.dumps(_record(index)))
        packed.write(b"]}")
    return path


def _peak(*args: str | Path) -> tuple[int, int, str]:
    """(exit status, peak RSS in bytes, stderr) of `keytrail ARGS…`."""
    done = subprocess.run([sys.executable, "-c", _MEASURED, sys.executable, "-m", "keytrail", *map(str, args)],
                          capture_output=True, text=True, timeout=300, check=True)
    status, peak = done.stdout.split()
    return int(status), int(peak) << 10, done.stderr


@pytest.mark.parametrize("command", ["audit import", "consume", "report", "detect"])
def test_reading_large_records_holds_a_bounded_amount(command: str, large_records: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    args: dict[str, list[str | Path]] = {
        "audit import": ["audit", "import", large_records, "--data-dir", data_dir],
        "consume": ["consume", "--cloudtrail", large_records, "--data-dir", data_dir],
        "report": ["report", "--cloudtrail", large_records, "--format", "json", "--out", tmp_path / "report"],
        "detect": ["detect", "--cloudtrail", large_records, "--format", "json"],
    }
    status, peak, stderr = _peak(*args[command])
    assert status == 0, stderr
    assert peak < PEAK_BOUND, f"{command}: peak RSS {peak >> 20} MiB"
