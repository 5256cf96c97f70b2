"""`keytrail serve`'s hold on its data dir: one serve per data dir, and a failed start can put
the data dir back as it found it without touching another serve's files: what it made at the
top of the data dir, and what it made inside the folders of serve's that were there (a digest or
segment in an audit trail, a checkpoint in metrics/), never anything that was there before; nor
what appeared inside an audit trail whose event log changed meanwhile, or that another program
writes, nor inside metrics/ while another consumer runs (`_in_use`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path

from keytrail.transport.segment_log import event_log_dir, lock_held, writer_active

__all__ = ["DataDirBusy", "DataDirHold"]

# What a start of serve (its node, children and key store) can make at the top of its data dir
# (docs/operations.md, "The data directory"). A failed start removes these only: a data dir given
# as `.` or a home directory also holds what other programs write there meanwhile.
_MADE_BY_SERVE = ("principals.toml", "root.key", "keys.db", "keys.db-wal", "keys.db-shm", "keys.db-journal", "tls",
                  "audit", "metrics", "alarms.jsonl", "detector.lock", "alarm-dead-letter-*.jsonl",
                  "alarm-outbox-*.jsonl", ".alarm-outbox-*.tmp", "unannounced", ".unannounced.*.tmp")
# SQLite's files beside a database hold its committed writes until a checkpoint, and are shared
# with whoever else has it open (`keytrail analyze --data-dir`): kept whenever the database was there.
_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


class DataDirBusy(Exception):
    """Another keytrail serve holds the data dir."""


class DataDirHold:
    """An exclusive `flock` on the data dir itself (no file of its own in it), held by serve for
    its life, and what the data dir held when it was taken. Two serves started together on one
    data dir would otherwise both open its key store before the audit trail's lock told them
    apart, and a failed start removing what it made could remove what the other one uses."""

    def __init__(self, data_dir: Path, fd: int, exclusive: bool) -> None:
        self.data_dir = data_dir
        self._fd = fd
        # False where the file system cannot lock a directory (NFS, say): serve still starts.
        self.exclusive = exclusive
        self.before = _entries(data_dir)
        # Paths under serve's folders (audit/, metrics/, tls/), relative to the data dir: a
        # start writes into those of an existing data dir (a trail's opening digest, say).
        self.before_within = _within(data_dir, (name for name in self.before if self._made_by_serve(name)))
        self._log_before = _log_files(data_dir)
        # Taken now, before serve's own consumer could take its lock (held for the process's life).
        self._consumer_running = "metrics" in self.before and _consumer_running(data_dir)

    @classmethod
    def take(cls, data_dir: Path) -> DataDirHold:
        """Hold `data_dir` (DataDirBusy if another serve does; OSError if it cannot be opened)."""
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)  # not inherited by the child processes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirBusy(f"another keytrail serve is running on --data-dir {data_dir}") from None
        except OSError:
            return cls(data_dir, fd, exclusive=False)
        return cls(data_dir, fd, exclusive=True)

    def remove_new(self, keep: set[str]) -> None:
        """Remove what serve makes that appeared in the data dir since it was held, at its top and
        inside serve's folders that were there, but for the names in `keep` (at the top, with
        all they hold) and the SQLite files of a database that was there before."""
        for name in sorted(_entries(self.data_dir) - keep - self._in_use()):
            if not self._made_by_serve(name):
                continue
            if name not in self.before:
                _remove(self.data_dir / name)
            elif _is_folder(self.data_dir / name):
                self._remove_new_within(name)

    def _in_use(self) -> set[str]:
        """serve's folders whose new contents are not the failed start's alone to remove: an audit
        trail another program holds (`keytrail audit import`), or whose event log changed since the
        hold (records added, by that program or by work the start did, or a torn tail cut off and
        kept aside), which the digests made meanwhile sign and the log cannot lose; the metrics of a
        consumer that ran when serve started (`keytrail consume`), or of a `consume --kafka`
        running now (one that started after serve checked for one: its checkpoints)."""
        from keytrail.pipeline.kafka_lock import kafka_consumers_running

        in_use = set()
        if writer_active(event_log_dir(self.data_dir)) or self._log_changed():  # serve's own trail is closed by now
            in_use.add("audit")
        if self._consumer_running or kafka_consumers_running(self.data_dir):
            in_use.add("metrics")
        return in_use

    def _log_changed(self) -> bool:
        """Whether a file of an event log that was there changed, or a file with bytes appeared in it
        (the empty segment a writer opens on an empty log is no change)."""
        if self._log_before is None:  # a trail the start made: removed whole
            return False
        now = _log_files(self.data_dir) or {}
        return (any(now.get(name) != size for name, size in self._log_before.items())
                or any(size for name, size in now.items() if name not in self._log_before))

    def _remove_new_within(self, folder: str) -> None:
        removed: list[str] = []
        for path in sorted(_within(self.data_dir, [folder]) - self.before_within):  # a folder before what it holds
            if any(path.startswith(f"{gone}/") for gone in removed) or _sidecar_of(path, self.before_within):
                continue
            _remove(self.data_dir / path)
            removed.append(path)

    def _made_by_serve(self, name: str) -> bool:
        if _sidecar_of(name, self.before):
            return False
        return any(fnmatchcase(name, pattern) for pattern in _MADE_BY_SERVE)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _entries(data_dir: Path) -> set[str]:
    return {entry.name for entry in data_dir.iterdir()}


def _within(data_dir: Path, folders: Iterable[str]) -> set[str]:
    """Every path inside `folders` of `data_dir`, relative to it; symbolic links are not followed
    (what one points to is not the data dir's), nor unreadable folders entered."""
    found: set[str] = set()
    pending = [folder for folder in folders if _is_folder(data_dir / folder)]
    while pending:
        folder = pending.pop()
        with contextlib.suppress(OSError), os.scandir(data_dir / folder) as entries:
            for entry in entries:
                path = f"{folder}/{entry.name}"
                found.add(path)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
    return found


def _consumer_running(data_dir: Path) -> bool:
    from keytrail.pipeline.query import consumer_lock  # polars, which serve's node imports anyway

    return lock_held(consumer_lock(data_dir))


def _log_files(data_dir: Path) -> dict[str, int] | None:
    """The sizes of the files in the embedded event log's folder (segments, tails cut off them),
    but its writer lock; None if it is no folder."""
    log_dir = event_log_dir(data_dir)
    if not _is_folder(log_dir):
        return None
    sizes = {}
    with contextlib.suppress(OSError), os.scandir(log_dir) as entries:
        for entry in entries:
            if entry.name != "LOCK" and entry.is_file(follow_symlinks=False):
                sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    return sizes


def _sidecar_of(path: str, before: set[str]) -> bool:
    """Whether `path` is the -wal, -shm or -journal file of a SQLite database that was there before."""
    return any(path.endswith(suffix) and path.removesuffix(suffix) in before for suffix in _SQLITE_SIDECARS)


def _is_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _remove(path: Path) -> None:
    if _is_folder(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
