"""A `keytrail audit import` interrupted mid-import (kill -9, SIGTERM): whoever opens the log next
(`keytrail serve`, another import) signs the records it left as imported, never as calls served."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from keytrail.audit.integrity import IMPORT_ORIGIN, load_digests
from keytrail.audit.trail import audit_paths
from keytrail.transport.segment_log import SegmentLog
from tests.support.audit_records import fill_trail
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


def _interrupt_import(data: Path, source: Path, sig: signal.Signals) -> int:
    """Start a real import, interrupt it once some of its records are durable; the log's end then."""
    importer = subprocess.Popen(_keytrail("audit", "import", str(source), "--data-dir", str(data)))
    log = SegmentLog(audit_paths(data)[0])
    deadline = time.monotonic() + 60
    while log.end_offset() < SERVED + 2_000 and time.monotonic() < deadline:
        time.sleep(0.005)
    importer.send_signal(sig)
    assert importer.wait(30) == -sig, "the import finished before it could be interrupted"
    return log.end_offset()


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


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
@pytest.mark.parametrize("reopened_by", ["serve", "import"])
def test_records_an_interrupted_import_left_are_signed_as_imported(tmp_path: Path, sig: signal.Signals,
                                                                   reopened_by: str) -> None:
    data = tmp_path / "data"
    fill_trail(data, SERVED)
    interrupted_end = _interrupt_import(data, _cloudtrail_file(tmp_path / "big.json", 50_000), sig)
    _reopen(data, tmp_path, reopened_by)

    digests = [digest for _, digest in load_digests(audit_paths(data)[1])]
    assert _signing(digests, SERVED - 1).get("origin") is None  # served before the import
    assert {_signing(digests, offset).get("origin") for offset in range(SERVED, interrupted_end)} == {IMPORT_ORIGIN}
    verify = subprocess.run(_keytrail("audit", "verify", "--data-dir", str(data)),
                            capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0, verify.stdout
    assert f"records at offsets {SERVED}..{interrupted_end - 1} were added by keytrail audit import" in verify.stdout
