"""What keytrail creates in a data dir is the owner's alone, whatever the umask."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from keytrail.owner_only import (
    make_dirs,
    named,
    open_file,
    remove_stale_temps,
    replace_whole,
    replace_whole_temps,
    reserve,
    reserve_anew,
    write_bytes,
)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0o002)  # group-writable by default, as on many desktops
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_make_dirs_makes_every_missing_folder_0700_and_leaves_existing_ones(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir(mode=0o755)
    os.chmod(tmp_path / "mine", 0o755)
    make_dirs(tmp_path / "mine" / "a" / "b")
    make_dirs(tmp_path / "mine" / "a" / "b")  # made already: nothing to do
    assert [_mode(tmp_path / "mine"), _mode(tmp_path / "mine/a"), _mode(tmp_path / "mine/a/b")] == [0o755, 0o700, 0o700]


def test_make_dirs_over_a_file_fails_as_mkdir_does(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        make_dirs(tmp_path / "file")


def test_make_dirs_under_a_folder_that_takes_no_new_folder_fails_once(tmp_path: Path) -> None:
    # procfs answers ENOENT to mkdir under a folder that is there: retrying from the parent, which
    # exists, recursed until RecursionError, ≈ 9,000 lines of traceback from `serve --data-dir`.
    with pytest.raises(FileNotFoundError) as raised:
        make_dirs(Path("/proc/keytrail-nope/data"))
    assert raised.value.filename == "/proc/keytrail-nope"


def test_files_are_0600_and_reserve_keeps_what_is_there(tmp_path: Path) -> None:
    write_bytes(tmp_path / "d" / "written", b"data")
    os.close(open_file(tmp_path / "d" / "opened", os.O_WRONLY))
    reserved = reserve(tmp_path / "d" / "reserved")
    assert [_mode(tmp_path / "d" / name) for name in ("written", "opened", "reserved")] == [0o600] * 3
    assert _mode(tmp_path / "d") == 0o700 and reserved.read_bytes() == b""
    reserved.write_bytes(b"rows")
    assert reserve(reserved).read_bytes() == b"rows"


def test_reserve_anew_replaces_a_file_there_by_an_empty_0600_one(tmp_path: Path) -> None:
    temp = tmp_path / ".out.tmp"
    temp.write_text("left by a crashed run")
    temp.chmod(0o644)
    reserve_anew(temp)
    assert (_mode(temp), temp.read_text()) == (0o600, "")


def test_files_rewritten_through_a_temporary_are_0600_even_over_a_leftover_0644_one(tmp_path: Path) -> None:
    # A crash between writing the temporary and renaming it leaves it behind, and versions before
    # owner-only modes made it 0644: truncated and reused, it would pass that mode on.
    from keytrail.audit.integrity import _write_atomic
    from keytrail.audit.shipper import ShippedOffset

    digest, shipped = tmp_path / "digest.json", tmp_path / "shipped.offset"
    for leftover in (tmp_path / "digest.json.tmp", tmp_path / "shipped.tmp"):
        leftover.write_bytes(b"left by a crash")
        leftover.chmod(0o644)
    _write_atomic(digest, b"{}")
    ShippedOffset(shipped).advance(7)
    assert digest.read_bytes() == b"{}" and shipped.read_text() == "7"
    assert {oct(path.stat().st_mode & 0o777) for path in (digest, shipped)} == {"0o600"}


def test_an_error_on_a_descriptor_is_given_the_file_it_was_about(tmp_path: Path) -> None:
    """A write or fsync on a descriptor fails with no file name: the log said "[Errno 28] No space
    left on device" and not which of the data dir's files."""
    path = tmp_path / "digest.json"
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(IsADirectoryError) as raised, named(path):
            os.read(fd, 1)
    finally:
        os.close(fd)
    assert raised.value.filename == str(path) and str(raised.value).endswith(f": '{path}'")
    with pytest.raises(FileNotFoundError) as kept, named(path):  # one that names its file keeps it
        (tmp_path / "elsewhere").read_bytes()
    assert kept.value.filename == str(tmp_path / "elsewhere")


def _left(path: Path, *, old: bool) -> Path:
    """A temp file as a write left it; `old`: last written long before now (a kill's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    if old:
        os.utime(path, (0, 0))
    return path


def test_stale_temps_are_removed_once_old_and_a_write_in_progress_is_left(tmp_path: Path) -> None:
    killed = _left(tmp_path / "day=1" / ".t.parquet.4242.tmp", old=True)
    writing = _left(tmp_path / "day=2" / ".t.parquet.4343.tmp", old=False)  # another process's, renamed soon
    table = _left(tmp_path / "day=1" / "t.parquet", old=True)
    remove_stale_temps(tmp_path, "day=*/.t.parquet.*.tmp", "no-such/*.tmp")
    assert (killed.exists(), writing.exists(), table.exists()) == (False, True, True)


def test_the_temps_of_replace_whole_are_found_by_their_file_s_name_taken_literally(tmp_path: Path) -> None:
    # A hook's outbox is named for the hook: `[` or `*` in it must not match another file's temps.
    path = tmp_path / "alarm-outbox-[a]*.jsonl"
    replace_whole(path, b"{}\n")
    killed = _left(tmp_path / f".{path.name}.4242.tmp", old=True)
    other = _left(tmp_path / ".alarm-outbox-a-b.jsonl.4242.tmp", old=True)
    remove_stale_temps(tmp_path, replace_whole_temps(path))
    assert (killed.exists(), other.exists(), path.read_bytes()) == (False, True, b"{}\n")
