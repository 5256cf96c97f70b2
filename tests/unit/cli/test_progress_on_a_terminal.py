"""What a terminal shows of `report` and `consume` over a folder of CloudTrail files while their
progress bar is drawn on stderr: each problem met mid-way is a line of its own, not text glued to
the end of the bar ("[####....] 10/11 filesskipped: …"). Real commands, stderr a pseudo-terminal."""

from __future__ import annotations

import gzip
import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.audit_records import ACCOUNT, KEY_ARN


def _write_trail(folder: Path, files: int, records: int = 1) -> None:
    """`files` CloudTrail log files of `records` Decrypts each (2,000 for 0), the second damaged inside."""
    folder.mkdir()
    for number in range(files):
        record = {"eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
                  "eventTime": f"2026-01-05T12:00:{number:02d}Z", "eventID": f"e-{number}",
                  "awsRegion": "us-east-1", "recipientAccountId": ACCOUNT,
                  "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/alice",
                                   "accountId": ACCOUNT},
                  "resources": [{"ARN": KEY_ARN}]}
        many = [{**record, "eventID": f"e-{number}-{copy}"} for copy in range(records or 2000)]
        text = "no json" if number == 1 else json.dumps({"Records": many})
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


def test_consume_stopped_by_ctrl_c_says_what_it_counted_on_a_line_of_its_own(tmp_path: Path) -> None:
    """Its summary was glued to the bar it left behind: "[###....] 20/200 filesconsumed 40000 records: …"."""
    _write_trail(tmp_path / "trail", 2, records=0)
    for number in range(2, 400):  # enough files that the run is still reading them when it is stopped
        (tmp_path / "trail" / f"{ACCOUNT}_CloudTrail_us-east-1_{number:04d}.json.gz").write_bytes(
            (tmp_path / "trail" / f"{ACCOUNT}_CloudTrail_us-east-1_0000.json.gz").read_bytes())
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "keytrail", "consume", "--data-dir", "node", "--cloudtrail",
                                    "trail"], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=terminal)
    finally:
        os.close(terminal)
    written = bytearray()
    try:
        while b" files" not in written and (chunk := _read(controller)):  # the bar is drawn: stop the run
            written += chunk
        process.send_signal(signal.SIGINT)
        while chunk := _read(controller):
            written += chunk
    finally:
        os.close(controller)
    assert process.wait(timeout=120) == 1  # stopped (what was counted is kept), with the damaged file's problem
    screen = _screen(written.decode().replace("\r\n", "\n"))
    [summary] = [line for line in screen if "consumed " in line]
    assert summary.startswith("consumed "), screen
    assert "/400 files" not in summary, screen
