"""A PostgreSQL server of a test's own (initdb and pg_ctl of the installed PostgreSQL), on a free port,
on a small filesystem of its own if asked (to fill), which the test may stop and start again. The
machine's server at 127.0.0.1:5432 is shared by every test run: never restart that one."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mounts import small_filesystem
from tests.support.services import free_port

__all__ = ["PostgresCluster", "private_cluster"]


def _binaries() -> Path | None:
    """The folder of the newest installed PostgreSQL's initdb and pg_ctl (Debian's layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda path: int(path.split("/")[4]))
    return Path(found[-1]).parent if found else None


class PostgresCluster:
    """A server whose data folder is `folder`/data, listening on 127.0.0.1:`port` only (trust
    authentication, user postgres). As root it runs as the postgres user: PostgreSQL refuses root."""

    def __init__(self, binaries: Path, folder: Path, port: int) -> None:
        self.binaries, self.folder, self.port = binaries, folder, port
        self.data = folder / "data"
        self.log = folder / "postgresql.log"

    def url(self, database: str = "postgres") -> str:
        """The --store URL of `database` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.binaries / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")

    def make(self, wal: Path | None = None) -> PostgresCluster:
        """initdb; the write-ahead log in `wal` if given (another disk than the data's)."""
        for folder in (self.folder, wal):
            if folder is not None and os.geteuid() == 0:
                os.chown(folder, *_postgres_ids())
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  *(["--waldir", str(wal / "pg_wal")] if wal else []))
        return self

    def start(self) -> PostgresCluster:
        """Start the server and wait until it takes connections (after a crash: its recovery done)."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" ends every session (each is told why), "immediate" kills them
        without a word, as a crash of the server or its machine would (recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


@contextlib.contextmanager
def private_cluster(disk: str | None = None) -> Iterator[PostgresCluster]:
    """A server of the test's own, started, in a folder of its own under the system's temporary
    folder (pytest's are root's alone, where the postgres user may not go), on a tmpfs of `disk`
    bytes ("64m") if given, its write-ahead log kept off it, as production servers keep it on a
    disk of its own (a full data disk then fails the writes, not the server); stopped and removed
    on exit. Skips the test where PostgreSQL's server
    programs are not installed (or the small filesystem cannot be mounted)."""
    binaries = _binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server programs (/usr/lib/postgresql/*/bin) to run a server of the test's own")
    parent = Path(tempfile.mkdtemp(prefix="keytrail-postgresql-"))
    parent.chmod(0o755)
    try:
        with contextlib.ExitStack() as stack:
            folder = parent / "cluster"
            wal = None
            if disk is None:
                folder.mkdir()
            else:
                stack.enter_context(small_filesystem(folder, disk))
                wal = parent / "wal"
                wal.mkdir()
            cluster = PostgresCluster(binaries, folder, free_port()).make(wal).start()
            try:
                yield cluster
            finally:
                if cluster.running():
                    with contextlib.suppress(RuntimeError):
                        cluster.stop("immediate")
    finally:
        shutil.rmtree(parent, ignore_errors=True)
