"""`keytrail demo` end to end: a real server process, real boto3 calls, the real consumers and detector.

Its output must name every alarm the story promises, on the key the story meant, and its usage and
cost must be the numbers `keytrail usage | cost --format json` give over the demo's data dir.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import interruptible

pytestmark = pytest.mark.integration

PROMISED = {  # rule -> the alias of the key the story raises it on
    "unauthorized-decrypt": "orders",
    "permissive-key": "partner-share",
    "key-deletion-in-use": "legacy-reports",
    "unused-key": "archive-2019",
}


def keytrail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *args], capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data_dir = tmp_path_factory.mktemp("demo") / "data"
    result = keytrail("demo", "--data-dir", str(data_dir), "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout, parse_float=Decimal)
    return summary


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line, parse_float=Decimal) for line in text.splitlines() if line.strip()]


def query(command: str, data_dir: str) -> list[dict[str, Any]]:
    result = keytrail(command, "--data-dir", data_dir, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json_lines(result.stdout)


def test_demo_names_every_promised_alarm_on_the_intended_key(outcome: dict[str, Any]) -> None:
    keys = outcome["keys"]
    raised = {(alarm["rule"], alarm["keyArn"]) for alarm in outcome["alarms"]}
    for rule, alias in PROMISED.items():
        assert (rule, keys[alias]) in raised, f"{rule} on alias/{alias} missing from {raised}"
    for alarm in outcome["alarms"]:
        assert alarm["severity"] in ("LOW", "MEDIUM", "HIGH", "CRITICAL") and alarm["summary"]


def test_only_the_idle_key_is_reported_unused(outcome: dict[str, Any]) -> None:
    unused = {alarm["keyArn"] for alarm in outcome["alarms"] if alarm["rule"] == "unused-key"}
    assert unused == {outcome["keys"]["archive-2019"]}


def test_the_denied_decrypt_names_the_outside_partner(outcome: dict[str, Any]) -> None:
    denied = [alarm for alarm in outcome["alarms"] if alarm["rule"] == "unauthorized-decrypt"]
    assert {alarm["principalArn"] for alarm in denied} == {outcome["principals"]["partner"]}


def test_usage_is_what_keytrail_usage_reports(outcome: dict[str, Any]) -> None:
    rows = query("usage", outcome["dataDir"])
    per_key: dict[str | None, int] = {}
    for row in rows:
        per_key[row["keyArn"]] = per_key.get(row["keyArn"], 0) + row["count"]
    assert outcome["usage"]["events"] == sum(per_key.values()) >= outcome["calls"] > 0
    assert {row["keyArn"]: row["events"] for row in outcome["usage"]["byKey"]} == per_key
    assert outcome["usage"]["errors"] == sum(row["errorCount"] for row in rows) > 0


def test_cost_is_what_keytrail_cost_reports(outcome: dict[str, Any]) -> None:
    rows = query("cost", outcome["dataDir"])
    total = sum((row["totalCost"] for row in rows), Decimal(0))
    assert Decimal(outcome["cost"]["totalCost"]) == total > 0
    demo_rows = {(row["keyArn"], row["accountId"]): Decimal(row["totalCost"]) for row in outcome["cost"]["byKey"]}
    assert demo_rows == {(row["keyArn"], row["accountId"]): row["totalCost"] for row in rows}


def test_the_quarter_the_dev_clock_moved_is_billed_as_key_storage(outcome: dict[str, Any]) -> None:
    # The idle key, made on day one and kept, is stored through the 91 days the dev clock moved,
    # though the wall clock moved minutes: the data dir keeps the dev clock's lead, so keytrail cost
    # (the server stopped) bills up to the story's last event and takes none of them as dated ahead.
    result = keytrail("cost", "--data-dir", outcome["dataDir"], "--format", "json")
    assert result.returncode == 0 and "dated after now" not in result.stderr, result.stderr
    [idle] = [row for row in json_lines(result.stdout)
              if row["keyArn"] == outcome["keys"]["archive-2019"] and row["keyMonths"]]
    assert Decimal("2.9") < idle["keyMonths"] < Decimal("3.1")


def test_everything_in_the_data_dir_is_owner_only(outcome: dict[str, Any]) -> None:
    """Audit records, alarms, usage and the report name principals, keys and encryption contexts:
    no folder or file the node made there may be open to the group or others (the umask is 022)."""
    data_dir = Path(outcome["dataDir"])
    made = [data_dir, *data_dir.rglob("*")]
    names = {path.relative_to(data_dir).as_posix() for path in made}
    assert {"alarms.jsonl", "demo-report.html", "keys.db", "audit/integrity/hashes.bin",
            "metrics/state/segment-log.sqlite"} <= names, names
    assert any(name.endswith(".parquet") for name in names) and any(name.endswith(".seg") for name in names)
    open_to_others = {f"{path.relative_to(data_dir).as_posix() or '.'} {path.stat().st_mode & 0o777:o}"
                      for path in made if path.stat().st_mode & 0o077}
    assert open_to_others == set()


def test_html_report_exists_and_names_every_key(outcome: dict[str, Any]) -> None:
    report = Path(outcome["report"])
    html = report.read_text()
    assert report.suffix == ".html" and html.lstrip().lower().startswith("<!doctype html")
    for arn in outcome["keys"].values():
        assert arn in html


def test_html_report_shows_every_alarm_the_demo_prints(outcome: dict[str, Any]) -> None:
    # The unused-key alarm is raised two days after the last use: the report's period, which ends
    # at the last event, left it out while the demo printed it.
    html = Path(outcome["report"]).read_text()
    assert f'<div class="card" data-figure="alarms"><b>{len(outcome["alarms"])}</b>' in html
    table = html.split('<table id="alarms">', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tbody>", 1)[1].split("<tr")[1:]
    assert sorted(alarm["rule"] for alarm in outcome["alarms"]) == sorted(
        next(rule for rule in PROMISED if rule in row) for row in rows)


def test_text_output_names_the_alarms_and_the_report(tmp_path: Path) -> None:
    result = keytrail("demo", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr[-3000:]
    for rule, alias in PROMISED.items():
        assert rule in result.stdout and f"alias/{alias}" in result.stdout
    assert f"HTML report: {tmp_path / 'data' / 'demo-report.html'}" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--format", "yaml"], "--format"),
    (["--port", "70000"], "--port"),
    (["--data-dir", "/etc/hostname"], "not a directory"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(args: list[str], message: str) -> None:
    result = keytrail("demo", *args)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port_is_refused_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = keytrail("demo", "--port", str(busy.getsockname()[1]))
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "--port: cannot listen" in result.stderr


def test_non_empty_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keys.db").write_text("")
    result = keytrail("demo", "--data-dir", str(tmp_path))
    assert result.returncode != 0 and "not empty" in result.stderr


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_stops_the_server_and_leaves_no_process(tmp_path: Path, signum: int, status: int) -> None:
    """Exit 128 + the signal, as a shell reports it: SIGTERM exited 130, as if Ctrl-C had."""
    data_dir = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", "demo", "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    deadline = time.monotonic() + 60
    while not (data_dir / "keys.db").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # the server has opened its key store: it is running
    assert (data_dir / "keys.db").exists(), "the demo's server never started"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    assert stderr.strip().splitlines()[-1] == "keytrail demo: interrupted; the server was stopped"
    assert [pid for pid in _processes_naming(str(data_dir)) if pid != os.getpid()] == []
