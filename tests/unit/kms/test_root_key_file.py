"""The root key file a node makes on first start: whole or absent, owner-only, and durable before
anything is sealed under it."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from keytrail.kms import sealing
from keytrail.kms.sealing import RootKey


def test_a_new_root_key_file_is_the_owners_only(tmp_path: Path) -> None:
    RootKey.load(tmp_path)
    assert stat.S_IMODE((tmp_path / "root.key").stat().st_mode) == 0o600
    assert len((tmp_path / "root.key").read_bytes()) == 32


def test_a_root_key_cut_short_while_made_leaves_no_file_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A crash (or a full disk) between creating the file and writing it left an empty root.key,
    # which every later start refused as "holds 0 bytes: restore it from a backup".
    def failing(size: int) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sealing.os, "urandom", failing)
    with pytest.raises(OSError, match="No space left"):
        RootKey.load(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == []
    monkeypatch.undo()
    RootKey.load(tmp_path)
    assert len((tmp_path / "root.key").read_bytes()) == 32


def test_a_new_root_key_is_in_its_directory_durably_before_it_seals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without an fsync of the directory, a power cut could lose the new file's name while keys.db,
    # written later, keeps material sealed under it: every key gone for good.
    synced: list[bool] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(sealing.os, "fsync", recording)
    RootKey.load(tmp_path)
    assert synced[-1:] == [True]
    synced.clear()
    RootKey.load(tmp_path)  # an existing key: nothing to make durable
    assert synced == []


def test_a_root_key_file_other_users_can_read_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    RootKey.load(tmp_path)
    assert caplog.records == []
    (tmp_path / "root.key").chmod(0o640)  # restored from a backup with the wrong umask, say
    RootKey.load(tmp_path)
    assert [record.getMessage() for record in caplog.records] == [
        f"the root key file {tmp_path / 'root.key'} can be read by other users (mode 0640): chmod 600 (or 400) it"]


@pytest.mark.parametrize("owner", [None, 4242])
def test_a_root_key_file_other_users_can_change_is_warned_of_in_words_that_say_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, owner: int | None) -> None:
    # 0622 was said to be one others "can read", one another user owns not at all. `serve` refuses
    # both at start (cli/serve_checks.py); `analyze` may read another user's data dir, as root.
    if owner is not None and os.geteuid() != 0:
        pytest.skip("giving a file to another uid takes root")
    RootKey.load(tmp_path)
    path = tmp_path / "root.key"
    path.chmod(0o622)
    if owner is not None:
        os.chown(path, owner, -1)
    RootKey.load(tmp_path)
    problem = ("is owned by uid 4242, not by uid 0 that keytrail runs as: chown it to uid 0" if owner else
               "can be written by other users (mode 0622): chmod 600 (or 400) it")
    assert [record.getMessage() for record in caplog.records] == [f"the root key file {path} {problem}"]


def test_a_root_key_file_that_cannot_be_read_is_named_as_the_root_key_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # serve said only "Is a directory: <path>", not what the path was meant to be.
    monkeypatch.setenv(sealing.ROOT_KEY_FILE_ENV, str(tmp_path))
    with pytest.raises(sealing.RootKeyUnusable) as info:
        RootKey.load(tmp_path / "data")
    assert str(info.value) == f"cannot read the root key file {tmp_path}: Is a directory"


def test_a_root_key_the_disk_has_no_room_for_is_named(tmp_path: Path) -> None:
    # `keytrail serve` on a full disk said "No space left on device", naming no file.
    from tests.support.mounts import filled, small_filesystem

    with small_filesystem(tmp_path / "disk") as disk:
        filled(disk)
        with pytest.raises(OSError, match=f"cannot create the root key file {disk / 'root.key'}: No space left"):
            RootKey.load(disk)
        assert sorted(path.name for path in disk.iterdir()) == ["filler"]


def test_a_root_key_in_both_variables_is_warned_of_naming_the_one_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # $KEYTRAIL_ROOT_KEY won without a word: the file named (the production secret) was never read,
    # and a new store was sealed under a key left in the environment.
    (tmp_path / "secret").write_bytes(b"f" * 32)
    monkeypatch.setenv(sealing.ROOT_KEY_ENV, base64.b64encode(b"e" * 32).decode())
    monkeypatch.setenv(sealing.ROOT_KEY_FILE_ENV, str(tmp_path / "secret"))
    RootKey.load(tmp_path)
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        f"$KEYTRAIL_ROOT_KEY and $KEYTRAIL_ROOT_KEY_FILE are both set: the root key in $KEYTRAIL_ROOT_KEY is used, "
        f"{tmp_path / 'secret'} is not read"]
