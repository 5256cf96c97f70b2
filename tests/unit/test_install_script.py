"""scripts/install refuses a Python older than keytrail's requires-python in one line, whether it
is the one it would make the venv with or the one of a venv made before, which it would keep."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _checkout(tmp_path: Path) -> Path:
    """A folder holding only scripts/install, as the script runs from its checkout's root."""
    (tmp_path / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts/install", tmp_path / "scripts/install")
    return tmp_path


def _python(path: Path, version: tuple[int, int, int]) -> Path:
    """An interpreter claiming `version`: the version checks run in this Python with that
    `sys.version_info`; anything else (venv, pip) is only written to `<path>.calls`."""
    shown = ".".join(map(str, version))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = -V ]; then echo "Python {shown}"; exit 0; fi\n'
        f'if [ "$1" = -c ]; then exec {sys.executable} -c '
        f'"import sys; sys.version_info = {version!r}; exec(sys.argv[1])" "$2"; fi\n'
        f'echo "$*" >> "{path}.calls"\n')
    path.chmod(0o755)
    return path


def _install(checkout: Path, python: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", checkout / "scripts/install"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(python)})


def test_the_script_asks_for_the_python_pyproject_requires() -> None:
    required = re.findall(r'requires-python = ">=([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert re.findall(r"^minimum=([\d.]+)", (ROOT / "scripts/install").read_text(), flags=re.M) == required


def test_a_python_too_old_is_refused_before_a_venv_is_made(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "repo")
    old = _python(tmp_path / "bin/python3.10", (3, 10, 12))
    result = _install(checkout, old)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"scripts/install: {old} is Python 3.10.12; keytrail needs Python 3.11 or newer: "
                             "PYTHON=python3.11 scripts/install (docs/getting-started.md)\n")
    assert not (checkout / ".venv").exists() and not Path(f"{old}.calls").exists()


def test_a_venv_of_a_python_too_old_is_named_with_the_way_out(tmp_path: Path) -> None:
    # Made by an earlier run with python3 = 3.10: it was kept, and pip failed on every run after,
    # also with the PYTHON=python3.11 the guide gives.
    checkout = _checkout(tmp_path / "repo")
    venv_python = _python(checkout / ".venv/bin/python", (3, 10, 12))
    result = _install(checkout, _python(tmp_path / "bin/python3.11", (3, 11, 9)))
    assert result.returncode == 1, result.stderr
    assert result.stderr == ("scripts/install: .venv has Python 3.10.12; keytrail needs Python 3.11 or newer: "
                             "remove .venv, then PYTHON=python3.11 scripts/install\n")
    assert not Path(f"{venv_python}.calls").exists()


def test_a_venv_of_a_recent_enough_python_is_installed_into(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "repo")
    venv_python = _python(checkout / ".venv/bin/python", (3, 11, 0))
    result = _install(checkout, "python3")
    assert result.returncode == 0, result.stderr
    assert Path(f"{venv_python}.calls").read_text().splitlines() == [
        "-m pip install -q --upgrade pip", "-m pip install -q -e ."]


def test_a_missing_python_is_named(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "repo")
    result = _install(checkout, "python3.99")
    assert result.returncode == 1
    assert result.stderr == ("scripts/install: no python3.99 here; keytrail needs Python 3.11 or newer "
                             "(PYTHON=/path/to/python3 scripts/install)\n")
    assert not (checkout / ".venv").exists()
