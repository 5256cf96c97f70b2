"""Another process holding a read transaction open on a SQLite file, as an online `.backup`, a
monitoring script or a `sqlite3` shell does. In a process of its own: the test reads the file's bytes,
and closing any descriptor of a file drops every POSIX lock its process holds on it, the reader's too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["SqliteReader"]

_READER = """
import sqlite3, sys
reader = sqlite3.connect(f"file:{sys.argv[1]}?mode={sys.argv[2]}", uri=True, isolation_level=None)
reader.execute("BEGIN")
reader.execute("SELECT count(*) FROM keys").fetchone()
print("reading", flush=True)
sys.stdin.read()  # until the test closes it
reader.execute("COMMIT")
reader.close()
"""


class SqliteReader:
    """A read transaction on `path` from the start until `close()`; `read_only=False` opens the
    file as a sqlite3 shell does, which, the last connection to close, empties the WAL into it."""

    def __init__(self, path: Path, *, read_only: bool = True) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _READER, str(path), "ro" if read_only else "rw"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None and self._proc.stdout.readline() == "reading\n"

    def close(self) -> None:
        """End the read, then the process."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        assert self._proc.wait(timeout=30) == 0
