"""The tables of `usage`, `cost` and `last-used` line up on the terminal whatever the names in them:
an imported record may name a principal in any script, and its cells are as wide as the terminal
shows them (a CJK character or an emoji takes two columns; under a Latin-1 locale a character it
lacks is printed as its escape, six or ten columns). Real commands over an imported trail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from tests.support.audit_records import ACCOUNT, KEY_ARN

USERS = ("alice", "мария", "jürgen😀", "李雷")  # the last one is last-used's


def _keytrail(*args: str | Path, env: dict[str, str] | None = None,
              encoding: str = "utf-8") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *map(str, args)], capture_output=True, timeout=120,
                          env={**os.environ, **(env or {})}, text=True, encoding=encoding)


def _node(tmp_path: Path) -> Path:
    """A data dir holding one counted Decrypt by each of `USERS`."""
    records = [{"eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
                "eventTime": f"2026-01-05T12:00:0{number}Z", "eventID": f"e-{number}", "awsRegion": "us-east-1",
                "recipientAccountId": ACCOUNT, "readOnly": True,
                "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/{user}",
                                 "accountId": ACCOUNT},
                "resources": [{"ARN": KEY_ARN, "accountId": ACCOUNT, "type": "AWS::KMS::Key"}]}
               for number, user in enumerate(USERS)]
    trail = tmp_path / "trail.json"
    trail.write_text(json.dumps({"Records": records}), encoding="utf-8")
    node = tmp_path / "node"
    for args in (["audit", "import", "--data-dir", node, trail], ["consume", "--data-dir", node, "--no-follow"]):
        done = _keytrail(*args)
        assert done.returncode == 0, done.stderr
    return node


def _terminal_columns(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


@pytest.mark.parametrize("locale", ["utf-8", "ascii", "latin-1"])
@pytest.mark.parametrize("command", ["usage", "last-used"])
def test_every_row_of_a_table_starts_its_columns_where_the_header_does(tmp_path: Path, locale: str,
                                                                       command: str) -> None:
    env = {"LC_ALL": "C", "PYTHONUTF8": "0"} if locale == "ascii" else {"PYTHONIOENCODING": locale}
    shown = _keytrail(command, "--data-dir", _node(tmp_path), env=env, encoding="latin-1" if locale == "latin-1"
                      else "utf-8")
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert len(rows) == (len(USERS) if command == "usage" else 1)
    after = "accountId" if command == "usage" else "eventId"
    column = _terminal_columns(header[: header.index(after)])
    for row in rows:
        principal_cell_end = row.index(ACCOUNT, row.index("user/")) if command == "usage" else row.rindex("e-")
        assert _terminal_columns(row[:principal_cell_end]) == column, shown.stdout  # was off by one per emoji
