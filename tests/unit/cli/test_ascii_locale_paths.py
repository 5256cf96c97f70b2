"""Under an ASCII locale (LC_ALL=C with PYTHONUTF8=0: Python decodes a non-ASCII argument's bytes as
surrogates), a path keytrail prints is the path given, byte for byte, on stdout and stderr alike.
click, which prints most lines, wrote such a stream in UTF-8 with "replace": `wrote r??p.html`, and
the note's `keytrail consume --data-dir 'd??2'` to paste named another folder (a glob, at that)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.audit_records import fill_trail

ASCII_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0"}


def _keytrail(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONIOENCODING"} | ASCII_LOCALE
    return subprocess.run([sys.executable, "-m", "keytrail", *args], capture_output=True, timeout=120, cwd=cwd,
                          env=env)


def test_paths_printed_under_an_ascii_locale_are_the_bytes_given(tmp_path: Path) -> None:
    fill_trail(tmp_path / "dä2", 3)
    noted = _keytrail("usage", "--data-dir", "dä2", cwd=tmp_path)
    assert noted.returncode == 0, noted.stderr
    assert "--data-dir 'dä2' --no-follow`".encode() in noted.stderr, noted.stderr  # was 'd??2'
    written = _keytrail("report", "--data-dir", "dä2", "--out", "rëp.html", cwd=tmp_path)
    assert written.returncode == 0 and (tmp_path / "rëp.html").is_file(), written.stderr
    assert written.stderr.startswith("wrote rëp.html (html: ".encode()), written.stderr  # was 'wrote r??p.html'
    exported = _keytrail("audit", "export", "--data-dir", "dä2", "expö", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert " under expö/AWSLogs".encode() in exported.stdout, exported.stdout
