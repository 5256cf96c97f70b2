"""`detect` and `analyze` whose standard output cannot take the alarms (a full disk, a closed
descriptor under a scheduler) say so as every other command does: one line in the system's words,
exit 1. They exited 2, the status of bad input, with Python's "[Errno 28] No space left on
device". Real commands, stdout /dev/full or closed; and a data dir analyze cannot read, said
in the same words."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.audit_records import ACCOUNT, KEY_ARN

PUBLIC = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Sid": "Open", "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}]})


def _inputs(tmp_path: Path) -> dict[str, list[str]]:
    """The arguments of each command, over inputs that raise an alarm (so that there is output)."""
    denied = {"eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
              "eventTime": "2026-01-05T12:00:00Z", "eventID": "e-1", "awsRegion": "us-east-1",
              "recipientAccountId": ACCOUNT, "errorCode": "AccessDenied",
              "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/alice", "accountId": ACCOUNT},
              "resources": [{"ARN": KEY_ARN}]}
    (tmp_path / "trail.json").write_text(json.dumps({"Records": [denied]}))
    (tmp_path / "keys.json").write_text(json.dumps([{"KeyArn": KEY_ARN, "Policy": PUBLIC, "Grants": []}]))
    return {"detect": ["--cloudtrail", str(tmp_path / "trail.json")],
            "analyze": ["--inventory", str(tmp_path / "keys.json")]}


def _close_stdout() -> None:
    os.close(1)


@pytest.mark.parametrize("command", ["detect", "analyze"])
@pytest.mark.parametrize(("stdout", "words"), [("full", "No space left on device"), ("closed", "Bad file descriptor")])
def test_alarms_that_stdout_cannot_take_are_one_line_and_exit_1(tmp_path: Path, command: str, stdout: str,
                                                                words: str) -> None:
    args = [sys.executable, "-m", "keytrail", command, *_inputs(tmp_path)[command]]
    if stdout == "full":
        with open("/dev/full", "w") as full:
            result = subprocess.run(args, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    else:
        result = subprocess.run(args, stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=_close_stdout)
    assert (result.returncode, result.stderr) == (1, f"keytrail {command}: {words}\n")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="a data dir another user owns, read by a caller without root's capabilities")
def test_analyze_of_a_data_dir_the_caller_cannot_read_is_one_line_in_the_systems_words(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir(mode=0o700)
    (node / "keys.db").touch()
    os.chown(node, 4242, 4242)
    # root with its capabilities dropped reads as any other user does: not another user's 0700 folder
    result = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-m", "keytrail",
                             "analyze", "--data-dir", str(node)], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (2, f"keytrail analyze: Permission denied: {node / 'keys.db'}\n")
