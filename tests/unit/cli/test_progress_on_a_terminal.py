"""What a terminal shows of `report` and `consume` over a folder of CloudTrail files while their
progress bar is drawn on stderr: each problem met mid-way is a line of its own, not text glued to
the end of the bar ("[####....] 10/11 filesskipped: …"). Real commands, stderr a pseudo-terminal."""

from __future__ import annotations

import gzip
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.audit_records import ACCOUNT, KEY_ARN


def _write_trail(folder: Path, files: int) -> None:
    """`files` CloudTrail log files of one Decrypt each, the second of them damaged inside."""
    folder.mkdir()
    for number in range(files):
        record = {"eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
                  "eventTime": f"2026-01-05T12:00:{number:02d}Z", "eventID": f"e-{number}",
                  "awsRegion": "us-east-1", "recipientAccountId": ACCOUNT,
                  "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/alice",
                                   "accountId": ACCOUNT},
                  "resources": [{"ARN": KEY_ARN}]}
        text = "no json" if number == 1 else json.dumps({"Records": [record]})
        (folder / f"{ACCOUNT}_CloudTrail_us-east-1_{number:04d}.json.gz").write_bytes(gzip.compress(text.encode()))


def _stderr_on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run keytrail with stderr a pseudo-terminal: its exit status and what it wrote there."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "keytrail", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=terminal)
    finally:
        os.close(terminal)
    written = bytearray()
    try:
        while chunk := _read(controller):
            written += chunk
    finally:
        os.close(controller)
    return process.wait(timeout=120), written.decode().replace("\r\n", "\n")  # the terminal's ONLCR


def _read(controller: int) -> bytes:
    try:
        return os.read(controller, 65536)
    except OSError:  # EIO: every holder of the terminal's other side has closed it
        return b""


def _screen(written: str) -> list[str]:
    """The lines a terminal shows for `written`: a carriage return goes back to the line's start, and
    what follows overwrites what was there."""
    lines = []
    for line in written.split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part):]
        lines.append(shown.rstrip())
    return lines


@pytest.mark.parametrize("command", [["report", "--out", "report.html"], ["consume", "--data-dir", "node"]])
def test_a_problem_met_while_the_progress_bar_is_drawn_is_a_line_of_its_own(tmp_path: Path,
                                                                              command: list[str]) -> None:
    _write_trail(tmp_path / "trail", 12)
    status, written = _stderr_on_a_terminal([*command, "--cloudtrail", "trail"], tmp_path)
    assert status == 1, written  # the damaged file is a problem: the rest is read, and the exit says so
    screen = _screen(written)
    [skipped] = [line for line in screen if "skipped: " in line]
    assert skipped.startswith("skipped: trail/"), screen  # was "[#####...] 1/12 filesskipped: trail/…"
    assert "files" not in skipped, screen
    assert any(line.startswith("[##############################] 12/12 files") for line in screen), screen
