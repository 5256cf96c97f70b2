"""`sharing_problem`: what lets users other than keytrail's at a secret, the worst first, in words
that say what is wrong (a file others could write was said to be one they "can read")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keytrail.owner_only import SharingProblem, sharing_problem

OTHER_UID = 4242  # no user of this machine needs to have it: root may chown to any uid
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid takes root")


def _problem(path: Path, mode: int, owner: int | None = None, chmod: str = "600") -> SharingProblem | None:
    path.touch()
    path.chmod(mode)
    if owner is not None:
        os.chown(path, owner, -1)
    return sharing_problem(path.stat(), chmod=chmod)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700, 0o611])  # executable by others is not readable
def test_a_file_only_its_owner_reads_or_writes_is_no_problem(tmp_path: Path, mode: int) -> None:
    assert _problem(tmp_path / "secret", mode) is None


def test_a_file_others_can_read_says_so_and_is_not_changeable(tmp_path: Path) -> None:
    problem = _problem(tmp_path / "secret", 0o644)
    assert problem == SharingProblem("can be read by other users (mode 0644)", "chmod 600 it")
    assert not problem.changeable and not problem.owned


@pytest.mark.parametrize("mode", [0o622, 0o666, 0o620, 0o602])
def test_a_file_others_can_write_is_said_written_not_read(tmp_path: Path, mode: int) -> None:
    problem = _problem(tmp_path / "secret", mode, chmod="600 (or 400)")
    assert problem == SharingProblem(f"can be written by other users (mode {mode:04o})", "chmod 600 (or 400) it",
                                     changeable=True)
    assert str(problem) == f"can be written by other users (mode {mode:04o})"


@as_root
def test_a_file_another_user_owns_is_said_first_whatever_its_mode(tmp_path: Path) -> None:
    problem = _problem(tmp_path / "secret", 0o666, owner=OTHER_UID)
    assert problem == SharingProblem(f"is owned by uid {OTHER_UID}, not by uid 0 that keytrail runs as",
                                     "chown it to uid 0", owned=True, changeable=True)
    assert _problem(tmp_path / "private", 0o600, owner=OTHER_UID) == problem


@as_root
def test_keytrail_run_by_another_user_takes_root_s_files_as_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A secret an orchestrator mounts (Kubernetes, Compose) is root's, and root could change any file anyway.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _problem(tmp_path / "mounted", 0o600) is None
    problem = _problem(tmp_path / "planted", 0o600, owner=OTHER_UID)
    assert problem is not None and problem.owned
    assert (problem.text, problem.fix) == (
        f"is owned by uid {OTHER_UID}, not by uid 1000 that keytrail runs as (nor by root)", "chown it to uid 1000")


def test_a_folder_others_can_write_is_changeable_and_one_they_can_list_is_not(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    problem = sharing_problem(folder.stat(), chmod="700")
    assert problem == SharingProblem("can be written by other users (mode 0777)", "chmod 700 it", changeable=True)
    folder.chmod(0o755)  # as mkdir makes it under the usual umask
    assert sharing_problem(folder.stat(), chmod="700") == SharingProblem(
        "can be read by other users (mode 0755)", "chmod 700 it")
