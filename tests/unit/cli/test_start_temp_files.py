"""What a start of serve finds of the temp files a serve killed (kill -9, power loss) left as it
replaced a file of the data dir whole: each named for that serve's pid, nothing wrote over it."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from keytrail.cli.node import _node_clock, record_dev_clock
from keytrail.cli.pending_announcement import PRINCIPALS, SIGNING_KEY, PendingAnnouncement
from keytrail.clock import DEV_CLOCK_FILE, utc_now
from keytrail.config import ServeSettings


def _left_by_kills(data_dir: Path, name: str) -> tuple[Path, Path]:
    """A temp file of `name` a killed serve left long ago, and one another process writes now."""
    killed, writing = (data_dir / f".{name}.{pid}.tmp" for pid in (4242, 4343))
    for temp in (killed, writing):
        temp.write_bytes(b"partial")
    os.utime(killed, (0, 0))
    return killed, writing


def test_a_start_removes_the_temp_file_of_a_note_a_killed_start_was_writing_once_it_is_old(tmp_path: Path) -> None:
    pending = PendingAnnouncement(tmp_path)
    killed, writing = _left_by_kills(tmp_path, "unannounced")
    assert pending.note({SIGNING_KEY}) == {SIGNING_KEY}
    assert (killed.exists(), writing.exists()) == (False, True)  # younger: it may be about to be renamed
    assert pending.note({PRINCIPALS}) == {PRINCIPALS, SIGNING_KEY}


def test_a_dev_clock_start_removes_the_temp_file_of_a_record_a_killed_serve_was_writing_once_it_is_old(
    tmp_path: Path
) -> None:
    record_dev_clock(tmp_path, utc_now() + timedelta(days=1))
    killed, writing = _left_by_kills(tmp_path, DEV_CLOCK_FILE)
    clock = _node_clock(ServeSettings(data_dir=tmp_path, dev_clock=True))
    assert (killed.exists(), writing.exists()) == (False, True)
    assert clock.now() - utc_now() > timedelta(hours=23)  # the record itself read as before
