"""`report --out` and `audit export OUT` refuse to write over a data dir's own files or into its
own folders (`--out keytrail-data/root.key` lost every key's material at the next start), links
and `..` followed; a new file in the data dir itself stays the user's to write."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from keytrail.cli.data_dir_hold import _MADE_BY_SERVE
from keytrail.data_dir_layout import node_file
from tests.support.audit_records import fill_trail

ROOT = Path(__file__).resolve().parents[3]
ROOT_KEY = b"\x01" * 32


def _keytrail(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A data dir with an event log of 3 calls and the files a node keeps beside it."""
    data_dir = tmp_path / "node"
    fill_trail(data_dir, 3)
    (data_dir / "root.key").write_bytes(ROOT_KEY)
    (data_dir / "keys.db").write_bytes(b"SQLite format 3\x00")
    return data_dir


@pytest.mark.parametrize(("inside", "own"), [
    ("root.key", "root.key"), ("keys.db", "keys.db"), ("keys.db-wal", "keys.db-wal"), ("keys.db-shm", "keys.db-shm"),
    ("principals.toml", "principals.toml"), ("alarms.jsonl", "alarms.jsonl"), ("dev-clock.json", "dev-clock.json"),
    ("alarm-outbox-mqtt.jsonl", "alarm-outbox-mqtt.jsonl"), (".unannounced.42.tmp", ".unannounced.42.tmp"),
    ("audit", "audit/"), ("audit/log/00000000000000000000.seg", "audit/"), ("audit/new/report.html", "audit/"),
    ("metrics/usage.csv", "metrics/"), ("tls/tls-cert.pem", "tls/"),
])
def test_the_data_dirs_own_files_and_folders_are_named(tmp_path: Path, inside: str, own: str) -> None:
    assert node_file(tmp_path, tmp_path / inside) == own


@pytest.mark.parametrize("inside", ["report.html", "keys.csv", "AWSLogs", "exports/audit/r.html", "demo-report.html",
                                    "root.key.html", ""])
def test_other_paths_in_the_data_dir_are_the_users(tmp_path: Path, inside: str) -> None:
    assert node_file(tmp_path, tmp_path / inside) is None


def test_dot_dot_and_links_are_followed_as_a_write_would(tmp_path: Path) -> None:
    data_dir, shared = tmp_path / "node", tmp_path / "shared"
    data_dir.mkdir()
    shared.mkdir()
    (shared / "r.html").symlink_to(data_dir / "root.key")  # dangling: a write would create root.key
    (shared / "audit").symlink_to(data_dir / "audit")
    assert node_file(data_dir, shared / "../node/./keys.db") == "keys.db"
    assert node_file(data_dir, shared / "r.html") == "root.key"
    assert node_file(data_dir, shared / "audit" / "x.html") == "audit/"
    assert node_file(shared / ".." / "node", data_dir / "alarms.jsonl") == "alarms.jsonl"
    assert node_file(data_dir, shared / "r2.html") is None


def test_every_name_serve_makes_at_the_top_of_its_data_dir_is_reserved(tmp_path: Path) -> None:
    for pattern in _MADE_BY_SERVE:
        assert node_file(tmp_path, tmp_path / pattern.replace("*", "mqtt.jsonl.42")) is not None, pattern


def test_every_entry_of_the_documented_data_dir_layout_is_reserved_but_the_demo_report(tmp_path: Path) -> None:
    tree = (ROOT / "docs/operations.md").read_text().split("<data-dir>/\n", 1)[1].split("```", 1)[0]
    names = [name for line in re.findall(r"^[├└]── (.+?)(?:\s{2,}|$)", tree, re.MULTILINE)
             for name in line.split(", ")]
    assert "root.key" in names and "audit/" in names
    for name in names:
        reserved = node_file(tmp_path, tmp_path / re.sub(r"<[^>]+>", "mqtt", name))
        assert (reserved is None) == (name == "demo-report.html"), name


def _target(node: Path, name: str) -> Path:
    """The path to give: `shared-link` is a link in another folder leading to the node's root.key."""
    if name != "shared-link":
        return node / name
    link = node.parent / "shared" / "r.html"
    link.parent.mkdir()
    link.symlink_to(node / "root.key")
    return link


@pytest.mark.parametrize(("name", "own"), [
    ("root.key", "root.key"), ("keys.db", "keys.db"), ("audit/report.csv", "audit/"), ("shared-link", "root.key"),
])
def test_report_refuses_to_write_over_the_data_dirs_own_files(node: Path, name: str, own: str) -> None:
    out = _target(node, name)
    before = {path: path.read_bytes() for path in node.rglob("*") if path.is_file()}
    result = _keytrail("report", "--data-dir", node, "--out", out, "--format", "csv", "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"keytrail report: --out: {out} would write {'inside' if own.endswith('/') else 'over'} "
                             f"the data dir's own {own} ({node / own}): name another file (a new one in the data dir "
                             "will do)\n")
    assert {path: path.read_bytes() for path in node.rglob("*") if path.is_file()} == before  # no temp file either


def test_report_may_write_a_new_file_in_the_data_dir_itself(node: Path) -> None:
    result = _keytrail("report", "--data-dir", node, "--out", node / "report.html", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert (node / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (node / "root.key").read_bytes() == ROOT_KEY


def test_report_of_cloudtrail_files_names_no_data_dir_to_protect(tmp_path: Path) -> None:
    # With --cloudtrail no data dir is read: the default one's names are anyone's elsewhere.
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "x.json").write_text('{"Records": []}')
    result = _keytrail("report", "--cloudtrail", logs, "--out", tmp_path / "keytrail-data" / "root.key",
                       "--format", "csv", "--no-progress")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("name", "own"), [
    ("root.key", "root.key"), ("keys.db", "keys.db"), ("audit/exported", "audit/"), ("shared-link", "root.key"),
])
def test_audit_export_refuses_the_data_dirs_own_files_and_folders(node: Path, name: str, own: str) -> None:
    out = _target(node, name)
    before = {path: path.read_bytes() for path in node.rglob("*") if path.is_file()}
    result = _keytrail("audit", "export", out, "--data-dir", node)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"keytrail audit: {out} would write {'inside' if own.endswith('/') else 'over'} the "
                             f"data dir's own {own} ({node / own}): export into another folder (a new one in the "
                             "data dir will do)\n")
    assert {path: path.read_bytes() for path in node.rglob("*") if path.is_file()} == before


def test_audit_export_refuses_an_awslogs_folder_linked_into_the_data_dir(node: Path, tmp_path: Path) -> None:
    out = tmp_path / "exports"
    out.mkdir()
    (out / "AWSLogs").symlink_to(node / "metrics", target_is_directory=True)
    result = _keytrail("audit", "export", out, "--data-dir", node)
    assert result.returncode == 2 and result.stderr.startswith(
        f"keytrail audit: {out / 'AWSLogs'} would write inside the data dir's own metrics/ ({node / 'metrics'}): ")
    assert not (node / "metrics").exists()


def test_audit_export_may_write_into_the_data_dir_itself(node: Path) -> None:
    result = _keytrail("audit", "export", node, "--data-dir", node)
    assert result.returncode == 0, result.stderr
    assert len(list((node / "AWSLogs").rglob("*.json.gz"))) == 1


def test_report_of_cloudtrail_files_refuses_to_write_over_a_node_s_files(node: Path, tmp_path: Path) -> None:
    # With --cloudtrail no data dir is named, and `--out keytrail-data/root.key` overwrote a node's root key.
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "x.json").write_text('{"Records": []}')
    for name, own in (("root.key", "root.key"), ("audit/log/r.csv", "audit/")):
        result = _keytrail("report", "--cloudtrail", logs, "--out", node / name, "--format", "csv", "--no-progress")
        assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr
        assert f"would write {'inside' if own.endswith('/') else 'over'} the data dir's own {own} ({node / own})" \
            in result.stderr
    assert (node / "root.key").read_bytes() == ROOT_KEY


def test_audit_export_refuses_another_node_s_folders(node: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    fill_trail(other, 1)
    result = _keytrail("audit", "export", node / "metrics" / "out", "--data-dir", other)
    assert result.returncode == 2 and "would write inside the data dir's own metrics/" in result.stderr
