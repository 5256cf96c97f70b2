"""keytrail as a user installs it: the sdist built from this checkout, the wheel built from that
sdist (as `python -m build` and a package index do), the wheel installed (not editable) into a
venv of its own and run from a directory that is not the checkout.

The venv borrows this one's dependencies through a path file, so nothing is downloaded; the
package itself comes from the wheel alone (a test checks which copy is imported). With
KEYTRAIL_DEPENDENCY_FLOORS=1 another venv gets every dependency at the oldest version
pyproject.toml accepts, from the package index, and its demo must give the same results.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import keytrail

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "keytrail"
#: What an sdist is made of here: the build's input, and no checkout baggage (.venv, tests, bench).
FLOORS = "KEYTRAIL_DEPENDENCY_FLOORS"
SDIST_TOP = {"PKG-INFO", "pyproject.toml", "README.md", "LICENSE", "setup.cfg", "src"}


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(arg) for arg in args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def _checkout_copy(into: Path) -> Path:
    """The files git has (or would add) as the working tree holds them, links kept as links: what a
    clone builds from, without the build writing its egg-info into the shared checkout."""
    listed = _run("git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        source, copy = ROOT / name, into / name
        if source.is_symlink() or source.is_file():  # a file deleted but still tracked is skipped
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy, follow_symlinks=False)
    return into


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and, built from it, the wheel (setuptools fetched into build's isolated env)."""
    source = _checkout_copy(tmp_path_factory.mktemp("checkout"))
    out = tmp_path_factory.mktemp("dist")
    built = _run(sys.executable, "-m", "build", "--outdir", out, source, cwd=out)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    [path] = dist.glob("keytrail-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the wheel's keytrail, with this venv's dependencies on its path: its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    pip = _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    assert pip.returncode == 0, pip.stderr
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # A plain path line: this venv's site-packages joins sys.path without its .pth files being
    # read, so the checkout's editable keytrail stays out of reach.
    (site / "zz-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with nothing of the checkout in it."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return cwd


def test_the_wheel_holds_every_file_of_the_package(wheel: Path) -> None:
    """Every file under src/keytrail (the schemas it links to, py.typed, any data file added later),
    as package data or module, is in the wheel."""
    files = {(Path(folder) / name).relative_to(PACKAGE.parent).as_posix()
             for folder, _, names in os.walk(PACKAGE, followlinks=True)  # schemas/ is a link
             if "__pycache__" not in Path(folder).parts for name in names}
    assert {"keytrail/py.typed", "keytrail/schemas/cloudtrail_event.avsc", "keytrail/schemas/alarm.avsc"} <= files
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert sorted(files - names) == []


def test_the_sdist_holds_the_schemas_as_files_and_no_checkout_baggage(dist: Path) -> None:
    [sdist] = dist.glob("keytrail-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = archive.getmembers()
    top = {Path(member.name).parts[1] for member in members if len(Path(member.name).parts) > 1}
    assert top <= SDIST_TOP
    schemas = [m for m in members if "/src/keytrail/schemas/" in m.name and m.name.endswith(".avsc")]
    assert schemas and all(member.isfile() for member in schemas)  # the link resolved, not kept


def test_the_wheel_version_is_the_packages_version(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    assert metadata["Version"] == keytrail.__version__


def test_both_distributions_carry_the_license_text_they_declare(dist: Path, wheel: Path) -> None:
    """Apache-2.0 (section 4a) asks that whoever passes the work on gives its recipients the License."""
    text = (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in text and b"Version 2.0, January 2004" in text
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
        assert archive.read(name.replace("METADATA", "licenses/LICENSE")) == text
    assert (metadata["License-Expression"], metadata["License-File"]) == ("Apache-2.0", "LICENSE")
    [sdist] = dist.glob("keytrail-*.tar.gz")
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/LICENSE")
        assert member is not None and member.read() == text


def test_keytrail_version_names_the_installed_version(installed: Path, elsewhere: Path) -> None:
    for command in ([installed / "keytrail"], [installed / "python", "-m", "keytrail"]):
        shown = _run(*command, "--version", cwd=elsewhere)
        assert (shown.returncode, shown.stdout, shown.stderr) == (0, f"keytrail {keytrail.__version__}\n", "")


def test_the_installed_copy_is_the_wheels(installed: Path, elsewhere: Path) -> None:
    found = _run(installed / "python", "-c", "import keytrail; print(keytrail.__file__)", cwd=elsewhere)
    assert Path(found.stdout.strip()).is_relative_to(installed.parent), found.stdout + found.stderr


def _demo(bin_dir: Path, cwd: Path) -> dict[str, Any]:
    """`keytrail demo --format json` of the keytrail in `bin_dir`, run in `cwd`, its data there."""
    demo = _run(bin_dir / "keytrail", "demo", "--data-dir", cwd / "demo-data", "--format", "json", cwd=cwd)
    assert demo.returncode == 0, demo.stderr[-3000:]
    summary: dict[str, Any] = json.loads(demo.stdout)
    return summary


def test_the_installed_demo_runs_from_another_directory(installed: Path, elsewhere: Path) -> None:
    """The demo starts `keytrail serve`, drives it with boto3, counts with the consumers, raises
    the detector's alarms and writes the HTML report: every file the package reads at run time."""
    data_dir = elsewhere / "demo-data"
    summary = _demo(installed, elsewhere)
    assert {alarm["rule"] for alarm in summary["alarms"]} >= {"unauthorized-decrypt", "unused-key"}
    assert Path(summary["report"]).stat().st_size > 0
    verified = _run(installed / "keytrail", "audit", "verify", "--data-dir", data_dir, cwd=elsewhere)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def dependency_floors() -> list[str]:
    """`name==V` for each dependency's `>=V` in pyproject.toml (this platform's): the oldest
    versions a user's environment may hold and keytrail must run on."""
    pins = []
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            [floor] = [spec.version for spec in requirement.specifier if spec.operator == ">="]
            pins.append(f"{requirement.name}=={floor}")
    return pins


def _comparable(summary: dict[str, Any]) -> Any:
    """The demo's summary less what differs from run to run: key ids (named by alias), times,
    paths and port, and the order of rows (by key ARN, which is random)."""
    text = json.dumps({k: v for k, v in summary.items() if k not in ("dataDir", "endpoint", "report")})
    for alias, arn in summary["keys"].items():
        text = text.replace(arn, f"alias/{alias}")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?", "TIME", text)

    def rows_sorted(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rows_sorted(v) for k, v in value.items()}
        if isinstance(value, list):
            return sorted((rows_sorted(v) for v in value), key=lambda row: json.dumps(row, sort_keys=True))
        return value

    return rows_sorted(json.loads(text))


def test_every_dependency_has_a_floor_to_try() -> None:
    """Each dependency names its oldest version (`>=`), which the test below installs."""
    floors = dependency_floors()
    assert len(floors) >= 15 and all(re.fullmatch(r"[\w.-]+==[\w.]+", pin) for pin in floors), floors


@pytest.mark.skipif(not os.environ.get(FLOORS), reason=f"{FLOORS}=1: installs the oldest dependencies accepted "
                    "from the package index (a few minutes)")
def test_the_oldest_dependencies_accepted_give_the_demo_the_same_results(wheel: Path, installed: Path,
                                                                         tmp_path: Path) -> None:
    """A floor below what the code uses passed pip and failed at run time: typer>=0.12 let keytrail
    start on a typer without the `typer._click` it imports (no command ran); python-pkcs11>=0.7 a
    serve that failed importing GCMParams; polars>=1.0 a consumer that failed on every batch (1.20
    read account ids as event times)."""
    venv = tmp_path / "floors"
    assert _run(sys.executable, "-m", "venv", venv).returncode == 0
    constraints = tmp_path / "floors.txt"
    constraints.write_text("\n".join(dependency_floors()) + "\n")
    pip = _run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--prefer-binary", "-c", constraints, wheel,
               timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]
    (tmp_path / "now").mkdir()
    (tmp_path / "oldest").mkdir()
    assert _comparable(_demo(venv / "bin", tmp_path / "oldest")) == _comparable(_demo(installed, tmp_path / "now"))
