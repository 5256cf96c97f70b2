"""`keytrail demo` on a disk with no room for its principals file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.mounts import filled, small_filesystem


def test_a_demo_the_disk_has_no_room_for_says_so_and_leaves_its_data_dir_empty(tmp_path: Path) -> None:
    # It said "[Errno 28] No space left on device" and left an empty principals.toml, so the run
    # after space was made refused the data dir as "not empty".
    with small_filesystem(tmp_path / "disk") as disk:
        filled(disk)
        result = subprocess.run([sys.executable, "-m", "keytrail", "demo", "--data-dir", str(disk / "demo")],
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 1, result.stderr
        assert result.stderr == (
            f"keytrail demo: cannot write the principals file {disk / 'demo' / 'principals.toml'}: "
            "No space left on device\n")
        assert list((disk / "demo").iterdir()) == []
