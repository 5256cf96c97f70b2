"""`serve` refuses, before it writes anything, a data dir another user owns or may write, and the
root key and key store another user owns there: that user read the root key and the whole store
(and could plant a principals file of their own), as PostgreSQL refuses its data directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from keytrail.cli.serve_checks import check_data_dir_owned
from keytrail.kms.sealing import ROOT_KEY_ENV, ROOT_KEY_FILE_ENV

OTHER_UID = 4242  # no user of this machine needs to have it: root may chown to any uid
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid takes root")


@pytest.fixture(autouse=True)
def root_key_in_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROOT_KEY_ENV, raising=False)
    monkeypatch.delenv(ROOT_KEY_FILE_ENV, raising=False)


def _serve(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in (ROOT_KEY_ENV, ROOT_KEY_FILE_ENV)}
    return subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data_dir), "--port", "0"],
                          capture_output=True, text=True, timeout=60, env=env)


def _refusal(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one line `check_data_dir_owned` refuses `data_dir` with."""
    with pytest.raises(typer.Exit) as info:
        check_data_dir_owned(data_dir)
    assert info.value.exit_code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1, stderr
    return stderr


def test_serve_refuses_a_data_dir_others_can_write_in_one_line_writing_nothing(tmp_path: Path) -> None:
    data = tmp_path / "shared"
    data.mkdir()
    data.chmod(0o777)
    result = _serve(data)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"keytrail serve: --data-dir: {data} can be written by other users (mode 0777): they "
                             f"could swap the root key, the principals file or the key store for their own: "
                             f"chmod 700 {data}, or give a new folder inside it (a volume's mount point: "
                             f"{data / 'keytrail'}), which serve makes 0700\n")
    assert list(data.iterdir()) == []


@as_root
def test_serve_refuses_a_data_dir_another_user_owns_in_one_line_writing_nothing(tmp_path: Path) -> None:
    data = tmp_path / "theirs"
    data.mkdir(mode=0o700)
    os.chown(data, OTHER_UID, -1)
    result = _serve(data)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"keytrail serve: --data-dir: {data} is owned by uid {OTHER_UID}, not by uid 0 that "
                             f"keytrail runs as: its owner could read the root key and the key store: chown -R 0 "
                             f"{data} once you know what it holds is yours, or give another --data-dir\n")
    assert list(data.iterdir()) == []


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o750])
def test_a_data_dir_others_may_only_read_is_served(tmp_path: Path, mode: int) -> None:
    # One made with mkdir under the usual umask: what keytrail writes in it is 0600 and 0700.
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(mode)
    (data / "keys.db").touch(mode=0o644)  # a store of a version before owner-only modes
    check_data_dir_owned(data)


@as_root
@pytest.mark.parametrize("name", ["root.key", "keys.db", "keys.db-wal", "keys.db-shm"])
def test_a_root_key_or_key_store_another_user_owns_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    # Planted before the first start in a data dir they could write: SQLite run as root even gave
    # the -wal and -shm files it made keys.db's owner, and that user read every key's material.
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / name).touch(mode=0o600)
    os.chown(data / name, OTHER_UID, -1)
    assert _refusal(data, capsys) == (
        f"keytrail serve: --data-dir: {data / name} is owned by uid {OTHER_UID}, not by uid 0 that keytrail runs as: "
        f"its owner can read it and change it: chown it to uid 0 once you know it is yours\n")


@pytest.mark.parametrize("name", ["keys.db", "keys.db-wal", "keys.db-shm"])
def test_a_key_store_others_can_write_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    # keys.db 0666 in a data dir others may enter (0755) was served: any local user could rewrite
    # a key's policy or grants to let themselves decrypt.
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / name).touch()
    (data / name).chmod(0o666)
    assert _refusal(data, capsys) == (
        f"keytrail serve: --data-dir: {data / name} can be written by other users (mode 0666): they can change it: "
        f"chmod 600 it once you know it is yours\n")


@pytest.mark.parametrize("named", [False, True])
def test_a_root_key_file_others_can_write_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, named: bool) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    key = tmp_path / "secret.key" if named else data / "root.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o622)
    if named:
        monkeypatch.setenv(ROOT_KEY_FILE_ENV, str(key))
    assert _refusal(data, capsys) == (
        f"keytrail serve: the root key file {key} can be written by other users (mode 0622): another user could "
        f"swap in a root key they know: chmod 600 (or 400) it\n")
    key.chmod(0o644)  # readable only: warned of as the root key is read, not refused
    check_data_dir_owned(data)


@as_root
def test_a_root_key_file_another_user_owns_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "secret.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o400)
    os.chown(key, OTHER_UID, -1)
    monkeypatch.setenv(ROOT_KEY_FILE_ENV, str(key))
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    assert _refusal(data, capsys) == (
        f"keytrail serve: the root key file {key} is owned by uid {OTHER_UID}, not by uid 0 that keytrail runs as: "
        f"another user could swap in a root key they know: chown it to uid 0\n")
    monkeypatch.setenv(ROOT_KEY_ENV, "x")  # $KEYTRAIL_ROOT_KEY wins: the file is not read
    check_data_dir_owned(data)
