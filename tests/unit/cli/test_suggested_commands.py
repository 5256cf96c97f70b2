"""Commands keytrail prints for the user to run next (`run keytrail consume --data-dir …`, the demo's
`try: keytrail usage --data-dir …`, serve's `chown -R 0 …`) are pasted into a shell as printed: a
data dir whose path holds a space or a shell character must be quoted in them, or the pasted
command names another folder (or two). Each test runs the real entry point."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from keytrail.cli.demo_summary import render_text
from tests.support.audit_records import fill_trail

#: A folder name a shell splits, expands or reads as a comment or another command.
AWKWARD = "my node $HOME; #1 'x'"


def _keytrail(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def _in_backquotes(text: str) -> str:
    [command] = re.findall(r"`([^`]*)`", text)
    return command


def test_the_consume_command_usage_suggests_runs_as_pasted_on_a_data_dir_with_spaces(tmp_path: Path) -> None:
    fill_trail(tmp_path / AWKWARD, 3)
    first = _keytrail("usage", "--data-dir", AWKWARD, cwd=tmp_path)
    assert first.returncode == 0 and "not counted yet" in first.stderr, first.stderr
    suggested = _in_backquotes(first.stderr)
    assert shlex.split(suggested)[:3] == ["keytrail", "consume", "--data-dir"]
    assert shlex.split(suggested)[3] == AWKWARD  # was split at each space: `--data-dir my node $HOME;` …
    pasted = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -m {suggested}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert pasted.returncode == 0, pasted.stderr
    again = _keytrail("usage", "--data-dir", AWKWARD, cwd=tmp_path)
    assert again.returncode == 0 and again.stderr == "", again.stderr  # counted: no note any more


def test_the_commands_the_demo_suggests_name_its_data_dir_as_one_word() -> None:
    data_dir = f"/tmp/{AWKWARD}"
    summary = {"dataDir": data_dir, "report": f"{data_dir}/demo-report.html", "calls": 0, "simulatedDays": 91,
               "keys": {}, "principals": {}, "alarms": [], "usage": {"events": 0, "errors": 0, "byKey": []},
               "cost": {"totalCost": "0", "byKey": []}}
    last = render_text(summary).splitlines()[-1]
    tried = last.split("(try: ", 1)[1].removesuffix(")").split("; keytrail ")
    assert len(tried) == 3
    for command in tried:
        assert shlex.split(command)[-2:] == ["--data-dir", data_dir], command


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a folder to another user takes root")
@pytest.mark.parametrize(("change", "fix"), [("owner", "chown"), ("mode", "chmod")])
def test_the_fix_serve_names_for_a_shared_data_dir_runs_as_pasted(tmp_path: Path, change: str, fix: str) -> None:
    data_dir = tmp_path / AWKWARD
    data_dir.mkdir()
    if change == "owner":
        os.chown(data_dir, 4242, 4242)
    else:
        data_dir.chmod(0o777)
    refused = _keytrail("serve", "--data-dir", data_dir, "--port", "0", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    [suggested] = [part for part in refused.stderr.split(": ") if part.startswith(fix)]
    command = suggested.split(" once ")[0].split(", or ")[0]
    assert shlex.split(command)[-1] == str(data_dir), command
    pasted = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert pasted.returncode == 0, pasted.stderr
    stat = data_dir.stat()
    assert stat.st_uid == os.geteuid() if change == "owner" else stat.st_mode & 0o777 == 0o700
