"""The data dir's note of what a start made and has not printed yet (`unannounced`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from keytrail.cli.pending_announcement import PendingAnnouncement
from keytrail.owner_only import NotRegularFile
from tests.support.fifo import outcome_beside_a_fifo


def test_a_fifo_in_place_of_the_note_is_named_not_waited_on(tmp_path: Path) -> None:
    # Read as it came, a FIFO (whoever can write the data dir can make one) held serve's start for
    # a writer forever, deaf to SIGTERM.
    note = PendingAnnouncement(tmp_path)
    os.mkfifo(note.path)
    outcome = outcome_beside_a_fifo(note.path, note.items)
    assert isinstance(outcome[0], NotRegularFile) and outcome[0].filename == str(note.path)
    result = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path), "--port", "0"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stderr) == (2, f"keytrail serve: cannot note what this start makes in "
                                                     f"{note.path}: not a regular file (a FIFO, a device or a "
                                                     "socket in a file's place)\n")


def test_what_is_noted_is_read_back(tmp_path: Path) -> None:
    note = PendingAnnouncement(tmp_path)
    assert note.items() == frozenset()
    assert note.note({"principals.toml"}) == {"principals.toml"}
    assert PendingAnnouncement(tmp_path).note({"audit signing key"}) == {"principals.toml", "audit signing key"}
    note.keep_only(set())
    assert not note.path.exists()
