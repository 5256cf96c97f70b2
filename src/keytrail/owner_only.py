"""Folders and files in a data dir, readable by their owner only: audit records, alarms and usage
name principals, keys and encryption contexts, so what keytrail creates there is 0700 and 0600
whatever the umask (PostgreSQL and ssh treat their data the same way). An existing folder keeps
its mode: the data dir itself may be a mount point the operator prepared. Files written outside a
data dir at the user's request (`report --out`, `audit export`) keep the umask's mode; written into
the data dir, they are owner-only as the rest there (`within`). What keytrail finds already there
is checked with `sharing_problem`: a secret another user owns or can write is theirs to change."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DIR_MODE", "FILE_MODE", "STALE_TEMP_SECONDS", "NotRegularFile", "SharingProblem", "make_dirs", "named",
    "open_file", "open_regular", "remove_stale_temps", "replace_whole", "replace_whole_temps", "reserve",
    "reserve_anew", "sharing_problem", "sync_folder", "within", "write_bytes",
]

DIR_MODE = 0o700
FILE_MODE = 0o600
# How old a temp file of a write must be before it is taken for one a kill cut short: a younger one
# may be another process's write about to be renamed (a consumer of the same group, a second export).
STALE_TEMP_SECONDS = 600.0


def make_dirs(path: Path) -> None:
    """`mkdir -p path`, each folder it creates 0700 (`Path.mkdir(parents=True)` gives the parents
    it creates the umask's mode, whatever `mode` says)."""
    missing: list[Path] = []  # the folders to make, innermost first
    while not _made(path):
        if path.parent == path:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        # Made once its parent is: one that still cannot be (its parent is procfs, or was removed
        # meanwhile) raises here, once, where retrying from the top recursed without end.
        _made(folder, parent_made=True)


def _made(path: Path, *, parent_made: bool = False) -> bool:
    """Whether `path` is a folder now, made here 0700 if it was missing; False when its parent is
    missing too (unless `parent_made`, when that is an error)."""
    try:
        path.mkdir(mode=DIR_MODE)
    except FileNotFoundError:
        if parent_made:
            raise
        return False
    except FileExistsError:  # made meanwhile by another process is as good as made here
        if not path.is_dir():
            raise
    return True


def open_file(path: Path, flags: int) -> int:
    """`os.open(path, flags | O_CREAT, 0600)`, its folder made first: the descriptor."""
    make_dirs(path.parent)
    return os.open(path, flags | os.O_CREAT, FILE_MODE)


class NotRegularFile(OSError):
    """A path where keytrail keeps a file holds something else: a FIFO, a device, a socket."""


def open_regular(path: Path, *, writable: bool = False, append: bool = False) -> int:
    """A read-only descriptor of the file keytrail keeps at `path`, opened without waiting: whoever
    can write the data dir can put a FIFO in a file's place, whose open and reads wait for a writer
    forever (`keytrail audit verify` never ended, and so never said the trail was tampered with).
    NotRegularFile, naming `path`, for anything but a regular file (IsADirectoryError for a folder).
    `writable`: read-write, made (0600, its folder first) when missing (opened as it came, a FIFO or
    a device there stopped `serve` in words that named no file: "File or stream is not seekable",
    "Invalid argument"). Read-write, not write-only: a FIFO opened write-only without waiting fails
    (ENXIO, "No such device or address") before it can be named. `append`: writable, each write at its end."""
    flags = os.O_RDONLY
    if writable or append:
        make_dirs(path.parent)
        flags = os.O_RDWR | os.O_CREAT | (os.O_APPEND if append else 0)
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, FILE_MODE)
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):  # said as reading it would have
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    raise NotRegularFile(errno.EINVAL, "not a regular file (a FIFO, a device or a socket in a file's place)",
                         str(path))


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file at `path`, opened without waiting (`open_regular`): a file an
    option names (`--prices`, `--config`, `--inventory`) read as it came waited for ever on a FIFO
    in its place, silently."""
    with open(open_regular(path), "rb") as file:
        return file.read()


def read_regular_text(path: Path, encoding: str = "utf-8") -> str:
    """`read_regular`, decoded (UnicodeDecodeError for bytes that are no `encoding`)."""
    return read_regular(path).decode(encoding)


def reserve(path: Path) -> Path:
    """`path`, made an empty 0600 file if there is none, for writers that create files with the
    umask's mode (polars, SQLite): writing over a file keeps its mode, and SQLite gives its -wal
    and -shm files the database's. An existing file is not opened (closing a descriptor of a
    database would drop the SQLite locks this process holds on it)."""
    with contextlib.suppress(FileExistsError):
        os.close(open_file(path, os.O_WRONLY | os.O_EXCL))
    return path


def reserve_anew(path: Path) -> Path:
    """`reserve` for a temporary file about to be written whole and renamed: one already there (left
    by a run that crashed, or made by a version before owner-only modes) is removed first, as its
    mode would otherwise pass to the file it is renamed to."""
    path.unlink(missing_ok=True)
    return reserve(path)


def write_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    """`path.write_bytes(data)` with the file 0600; `durable`: on disk (fsync) when it returns."""
    with os.fdopen(open_file(path, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def replace_whole(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Make `path` hold `data`, 0600, whole or not at all: written to a temporary file beside it and
    renamed over it, so a reader, or the next start after a crash, sees the old content or the new.
    `durable`: the new content survives a power cut once this returns (file and folder fsynced)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_bytes(reserve_anew(temp), data, durable=durable)
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)  # a full disk: the part written is not left to hold its space
        raise
    if durable:
        sync_folder(path.parent)


def replace_whole_temps(path: Path) -> str:
    """The glob, in `path`'s folder, of the temp files `replace_whole(path, …)` writes (one per pid)."""
    return f".{glob.escape(path.name)}.*.tmp"


def remove_stale_temps(folder: Path, *patterns: str, min_age_seconds: float = STALE_TEMP_SECONDS) -> None:
    """Delete the files under `folder` matching the globs `patterns` last written `min_age_seconds`
    ago or more: temp files of writes a kill (kill -9, power loss) cut short, never renamed. Each is
    named for its writer (its pid, a uuid), so no later write replaces it, and it stayed for good.
    A younger one may be another process's write about to be renamed; one renamed or deleted
    meanwhile is passed over. The owner of the files calls this as it next runs."""
    cutoff = time.time() - min_age_seconds
    for pattern in patterns:
        for path in folder.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    path.unlink(missing_ok=True)


def sync_folder(folder: Path) -> None:
    """fsync `folder`: the names created, renamed or removed in it are on disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def named(path: Path) -> Iterator[None]:
    """OSErrors raised inside given `path` as their file name when they have none: a write, pwrite,
    pread or fsync on a descriptor fails with no name ("[Errno 28] No space left on device"
    alone), and the line that reports it must say which file."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


def within(path: Path, data_dir: Path) -> bool:
    """Whether `path` is in `data_dir` (or under it), links and `..` resolved: a file a command
    writes where the user asked that lands among the data dir's files."""
    return path.resolve().is_relative_to(data_dir.resolve())


@dataclass(frozen=True)
class SharingProblem:
    """What lets users other than keytrail's at a file or folder, in words that follow its path
    ("is owned by uid 4242, not by uid 0 that keytrail runs as"), and `fix`, the command that ends
    it ("chmod 600 it"). `owned`: another user owns it; `changeable`: other users can change it
    (they own it, or its mode lets them write), worse than reading it: a principals file they
    write hands out identities, a root key they planted is one they know."""

    text: str
    fix: str
    owned: bool = False
    changeable: bool = False

    def __str__(self) -> str:
        return self.text


def sharing_problem(found: os.stat_result, *, chmod: str = "600", owner: bool = True) -> SharingProblem | None:
    """The worst of what lets other users at the file or folder `found` is the stat of, None if
    nothing does: owned by another user, then writable by the group or others, then readable by
    them. Owned by root is as good as owned by keytrail's user: root can change any file anyway,
    and a secret an orchestrator mounts (a Kubernetes or Compose secret) is root's. `chmod`: the
    mode the fix names; `owner` False: its owner is not asked about (taken as its operator)."""
    user = os.geteuid()
    mode = stat.S_IMODE(found.st_mode)
    if owner and found.st_uid not in (user, 0):
        nor_root = "" if user == 0 else " (nor by root)"
        return SharingProblem(f"is owned by uid {found.st_uid}, not by uid {user} that keytrail runs as{nor_root}",
                              f"chown it to uid {user}", owned=True, changeable=True)
    if mode & 0o022:
        return SharingProblem(f"can be written by other users (mode {mode:04o})", f"chmod {chmod} it", changeable=True)
    if mode & 0o044:
        return SharingProblem(f"can be read by other users (mode {mode:04o})", f"chmod {chmod} it")
    return None
