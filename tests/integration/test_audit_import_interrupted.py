"""A `keytrail audit import` interrupted mid-import. Killed (kill -9): whoever opens the log next
(`keytrail serve`, another import) signs the records it left as imported, never as calls served.
Stopped by SIGTERM or SIGINT: it stores the records it read, whole, signs the final digest itself,
says how many it imported, and exits 128 + the signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from keytrail.audit.cloudtrail_files import iter_events
from keytrail.audit.integrity import IMPORT_ORIGIN, load_digests
from keytrail.audit.trail import audit_paths
from keytrail.transport.segment_log import SegmentLog
from tests.integration.test_disk_full import _fill, small_disk  # noqa: F401  (a fixture)
from tests.support.audit_records import fill_trail
from tests.support.processes import interruptible
from tests.support.server import KeytrailServer

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[1] / "unit" / "audit" / "data" / "aws_documented_examples.json"
SERVED = 5  # records the node served before the import


def _cloudtrail_file(path: Path, records: int) -> Path:
    """A CloudTrail log file big enough that the import is still writing when it is interrupted."""
    example = json.loads(EXAMPLES.read_text())["Records"][0]
    path.write_text(json.dumps({"Records": [{**example, "eventID": f"imported-{i}"} for i in range(records)]}))
    return path


def _keytrail(*args: str) -> list[str]:
    return [sys.executable, "-m", "keytrail", *args]


def _interrupt_import(data: Path, source: Path, sig: signal.Signals) -> tuple[subprocess.Popen[str], int]:
    """Start a real import, interrupt it once some of its records are durable; the finished
    process (its stderr unread) and the log's end then."""
    importer = subprocess.Popen(_keytrail("audit", "import", str(source), "--data-dir", str(data)),
                                stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    log = SegmentLog(audit_paths(data)[0])
    deadline = time.monotonic() + 60
    while log.end_offset() < SERVED + 2_000 and time.monotonic() < deadline:
        time.sleep(0.005)
    importer.send_signal(sig)
    importer.wait(30)
    return importer, log.end_offset()


def _reopen(data: Path, tmp_path: Path, by: str) -> None:
    if by == "serve":
        server = KeytrailServer(data).start()
        assert server.stop() == 0
    else:
        result = subprocess.run(_keytrail("audit", "import", str(EXAMPLES), "--data-dir", str(data)),
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr


def _signing(digests: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    [digest] = [d for d in digests if d["startOffset"] <= offset < d["endOffset"]]
    return digest


def _verify(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_keytrail("audit", "verify", "--data-dir", str(data)),
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("reopened_by", ["serve", "import"])
def test_records_a_killed_import_left_are_signed_as_imported(tmp_path: Path, reopened_by: str) -> None:
    data = tmp_path / "data"
    fill_trail(data, SERVED)
    importer, interrupted_end = _interrupt_import(data, _cloudtrail_file(tmp_path / "big.json", 50_000),
                                                  signal.SIGKILL)
    assert importer.returncode == -signal.SIGKILL, "the import finished before it could be interrupted"
    _reopen(data, tmp_path, reopened_by)

    digests = [digest for _, digest in load_digests(audit_paths(data)[1])]
    assert _signing(digests, SERVED - 1).get("origin") is None  # served before the import
    assert {_signing(digests, offset).get("origin") for offset in range(SERVED, interrupted_end)} == {IMPORT_ORIGIN}
    verify = _verify(data)
    assert verify.returncode == 0, verify.stdout
    assert f"records at offsets {SERVED}..{interrupted_end - 1} were added by keytrail audit import" in verify.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_an_import_stopped_by_a_signal_signs_its_final_digest_and_says_how_many_it_imported(
        tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "data"
    fill_trail(data, SERVED)
    importer, end = _interrupt_import(data, _cloudtrail_file(tmp_path / "big.json", 50_000), sig)
    assert importer.stderr is not None
    [line] = importer.stderr.read().splitlines()

    assert importer.returncode == 128 + sig, line
    imported = end - SERVED
    assert 0 < imported < 50_000
    assert line.startswith(f"keytrail audit import: stopped by {sig.name}: imported {imported} KMS records "
                           "before it stopped"), line
    newest = load_digests(audit_paths(data)[1])[-1][1]
    assert (newest.get("final"), newest.get("origin"), newest["endOffset"]) == (True, IMPORT_ORIGIN, end)
    verify = _verify(data)
    assert verify.returncode == 0, verify.stdout
    assert f"records at offsets {SERVED}..{end - 1} were added by keytrail audit import" in verify.stdout
    assert "not the final one" not in verify.stdout and "not signed yet" not in verify.stdout, verify.stdout
    # Whole records, the first `imported` of the file in order: a later import can go on from there.
    stored = [event["eventID"] for _, event in iter_events(data, SERVED)]
    assert stored == [f"imported-{i}" for i in range(imported)]


def test_an_import_started_with_sigint_ignored_keeps_ignoring_it(tmp_path: Path) -> None:
    """As a shell starts a script's background jobs: Ctrl-C at the terminal is not for them."""
    data = tmp_path / "data"
    fill_trail(data, SERVED)
    importer = subprocess.Popen(_keytrail("audit", "import", str(_cloudtrail_file(tmp_path / "big.json", 50_000)),
                                          "--data-dir", str(data)),
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    log = SegmentLog(audit_paths(data)[0])
    deadline = time.monotonic() + 60
    while log.end_offset() < SERVED + 2_000 and time.monotonic() < deadline:
        time.sleep(0.005)
    importer.send_signal(signal.SIGINT)
    time.sleep(0.5)
    importer.send_signal(signal.SIGTERM)  # still heard
    importer.wait(30)
    assert importer.stderr is not None
    assert importer.returncode == 128 + signal.SIGTERM, importer.stderr.read()


def test_an_import_stopped_by_a_full_disk_says_so_in_one_line_and_a_rerun_finishes_it(
        small_disk: Path, tmp_path: Path) -> None:  # noqa: F811
    """It ended in a SpoolError traceback (after the spool's own log line)."""
    data, source = small_disk / "data", _cloudtrail_file(tmp_path / "big.json", 3_000)  # ~3 MB stored
    fill_trail(data, SERVED)
    filler = _fill(small_disk, leave=512 * 1024)
    full = subprocess.run(_keytrail("audit", "import", str(source), "--data-dir", str(data)),
                          capture_output=True, text=True, timeout=120, check=False)
    assert full.returncode == 1 and len(full.stderr.splitlines()) == 1, full.stderr
    assert full.stderr.startswith(f"keytrail audit: cannot store records in the event log in {data} (") and (
        "No space left on device" in full.stderr and "run the same import again once it can write" in full.stderr)
    filler.unlink()
    again = subprocess.run(_keytrail("audit", "import", str(source), "--data-dir", str(data)),
                           capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    stored = [event["eventID"] for _, event in iter_events(data, SERVED)]
    assert stored == [f"imported-{i}" for i in range(3_000)]
    verify = _verify(data)
    assert verify.returncode == 0, verify.stdout
