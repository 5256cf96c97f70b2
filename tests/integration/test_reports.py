"""`keytrail report` end to end: its numbers equal `keytrail usage | cost | last-used --format json`.

Real processes only: CloudTrail files are imported into a data dir's event log with
`keytrail audit import`, counted by `keytrail consume`, queried by the metrics commands, and
reported by `keytrail report` from the data dir and straight from the CloudTrail files.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.support.audit_records import fill_trail
from tests.support.processes import child_commands
from tests.support.server import KeytrailServer
from tests.unit.reports.commands import cli_commands
from tests.unit.reports.records import alias_arn, alias_record, by_alias, key_arn, record, user_arn

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 2, 8, tzinfo=UTC)
KEYS = [key_arn(f"k{n}") for n in range(4)]
USAGE = ["keyArn", "eventName", "principalArn", "accountId", "count", "errorCount"]
COST = ["keyArn", "accountId", "keyMonths", "keyCost", "requests", "requestCost", "totalCost"]
LAST_USED = ["keyArn", "lastUsedTime", "lastUsedOperation", "lastUsedPrincipalArn", "eventId"]


def keytrail(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "keytrail", *args], capture_output=True, text=True, timeout=240)
    if check and result.returncode != 0:
        pytest.fail(f"keytrail {' '.join(args)} exited {result.returncode}: {result.stderr[-3000:]}")
    return result


def need_commands(*names: str) -> None:
    """Fail, naming what is missing, when a command the reports rely on is not in the CLI."""
    missing = [name for name in names if name not in cli_commands()]
    assert not missing, f"keytrail commands missing from the CLI: {', '.join(missing)}"


def _history() -> list[dict[str, Any]]:
    """Two days of calls: four keys (one never used), two callers, denied decrypts, a deletion."""
    events = [record("CreateKey", START, key) for key in KEYS]
    for minute in range(0, 36 * 60, 7):
        when = START + timedelta(minutes=minute)
        events.append(record("Encrypt", when, KEYS[minute % 2], user_arn("alice")))
        events.append(record("GenerateDataKey", when, KEYS[2], user_arn("app")))
        if minute % 140 == 0:
            events.append(record("Decrypt", when, KEYS[0], user_arn("mallory"), error="AccessDenied"))
    events.append(record("ScheduleKeyDeletion", START + timedelta(hours=30), KEYS[1]))
    return events


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CloudTrail log files (gzip, the AWS layout's two-level folders) of the history."""
    folder = tmp_path_factory.mktemp("cloudtrail")
    events = _history()
    for part in range(3):
        target = folder / "111122223333" / f"part{part}.json.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(json.dumps({"Records": events[part::3]}).encode()))
    return folder


@pytest.fixture(scope="module")
def data_dir(trail: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_commands("audit import", "consume", "usage", "cost", "last-used", "report")
    directory = tmp_path_factory.mktemp("node") / "data"
    keytrail("audit", "import", str(trail), "--data-dir", str(directory))
    keytrail("consume", "--data-dir", str(directory), "--no-follow")
    return directory


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line, parse_float=Decimal) for line in text.splitlines() if line.strip()]


def query(command: str, data_dir: Path) -> list[dict[str, Any]]:
    return json_lines(keytrail(command, "--data-dir", str(data_dir), "--format", "json").stdout)


def report_table(path: Path, table: str, columns: list[str]) -> list[dict[str, Any]]:
    """One table of a CSV, JSON lines or Parquet report, read with polars, values as the CLI prints them."""
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pl.read_csv(path, infer_schema_length=None, schema_overrides={"accountId": pl.String})
    else:
        frame = pl.read_ndjson(path, infer_schema_length=None)
    rows = frame.filter(pl.col("table") == table).select(columns).to_dicts()
    return [{name: _plain(value) for name, value in row.items()} for row in rows]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, float | Decimal):
        return Decimal(str(value)).normalize()
    return value


def _normal(rows: list[dict[str, Any]], columns: list[str]) -> list[tuple[Any, ...]]:
    return sorted((tuple(_plain(row.get(c)) for c in columns) for row in rows), key=repr)


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_report_tables_equal_the_metrics_queries(data_dir: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"report{suffix}"
    keytrail("report", "--data-dir", str(data_dir), "--out", str(out))
    usage, cost, last_used = query("usage", data_dir), query("cost", data_dir), query("last-used", data_dir)
    assert usage and cost and last_used
    assert _normal(report_table(out, "usage", USAGE), USAGE) == _normal(usage, USAGE)
    assert _normal(report_table(out, "cost", COST), COST) == _normal(cost, COST)
    assert _normal(report_table(out, "last_used", LAST_USED), LAST_USED) == _normal(last_used, LAST_USED)


def test_report_from_cloudtrail_files_equals_the_data_dir_report(data_dir: Path, trail: Path, tmp_path: Path) -> None:
    from_files, from_node = tmp_path / "files.json", tmp_path / "node.json"
    keytrail("report", "--cloudtrail", str(trail), "--out", str(from_files))
    keytrail("report", "--data-dir", str(data_dir), "--out", str(from_node))
    for table, columns in (("usage", USAGE), ("cost", COST), ("last_used", LAST_USED)):
        assert _normal(report_table(from_files, table, columns), columns) == \
            _normal(report_table(from_node, table, columns), columns), table


def test_report_names_denied_calls_and_the_unused_key(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    # The history spans 36 hours: a never-used key is unused once it has existed --unused-days.
    keytrail("report", "--data-dir", str(data_dir), "--out", str(out), "--unused-days", "1")
    denied = report_table(out, "denied", ["principalArn", "keyArn", "eventName", "count"])
    assert denied == [{"principalArn": user_arn("mallory"), "keyArn": KEYS[0], "eventName": "Decrypt",
                       "count": len(range(0, 36 * 60, 140))}]
    unused = report_table(out, "last_used", ["keyArn", "unused"])
    assert sorted(row["keyArn"] for row in unused if row["unused"] in (True, "true")) == [KEYS[3]]


def test_since_and_until_match_the_queries_over_the_same_period(data_dir: Path, tmp_path: Path) -> None:
    since, until = "2026-11-02T12:00:00+00:00", "2026-11-03T06:00:00+00:00"
    out = tmp_path / "period.json"
    keytrail("report", "--data-dir", str(data_dir), "--since", since, "--until", until, "--out", str(out))
    period = ("--data-dir", str(data_dir), "--since", since, "--until", until, "--format", "json")
    assert _normal(report_table(out, "usage", USAGE), USAGE) == _normal(json_lines(keytrail("usage", *period).stdout),
                                                                       USAGE)
    assert _normal(report_table(out, "cost", COST), COST) == _normal(json_lines(keytrail("cost", *period).stdout),
                                                                    COST)
    # Last used as of --until (not of the end of the input), whatever --since says.
    as_of = ("--data-dir", str(data_dir), "--until", until, "--format", "json")
    last_used = json_lines(keytrail("last-used", *as_of).stdout)
    assert all(row["lastUsedTime"] is None or row["lastUsedTime"] < "2026-11-03T06" for row in last_used)
    # The command's state keeps each key's latest use: for a key used again after --until it finds
    # the last use before it in minute-level usage, without its eventId (docs/metrics.md), where the
    # report reads it from the events. The history's uses are whole minutes apart: the rest agrees.
    reported = report_table(out, "last_used", LAST_USED)
    assert all(row["eventId"] for row in reported if row["lastUsedTime"])
    assert not any(row["eventId"] for row in last_used)
    assert _normal(reported, LAST_USED[:-1]) == _normal(last_used, LAST_USED[:-1])


def test_the_line_saying_what_was_written_counts_the_events_of_the_period(data_dir: Path, tmp_path: Path) -> None:
    # It said every event of the input: a report of 18 of the history's 36 hours claimed all of them.
    since, until = "2026-11-02T12:00:00+00:00", "2026-11-03T06:00:00+00:00"
    out = tmp_path / "period.csv"
    result = keytrail("report", "--data-dir", str(data_dir), "--since", since, "--until", until, "--out", str(out))
    in_period = sum(row["count"] for row in json_lines(keytrail(
        "usage", "--data-dir", str(data_dir), "--since", since, "--until", until, "--format", "json").stdout))
    assert 0 < in_period < len(_history())
    assert f"wrote {out} (csv: {in_period:,} events, " in result.stderr


def test_report_shows_the_alarms_the_offline_detector_raised(trail: Path, tmp_path: Path) -> None:
    need_commands("detect", "report")
    alarms = tmp_path / "alarms.jsonl"
    alarms.write_text(keytrail("detect", "--cloudtrail", str(trail), "--format", "json").stdout)
    raised = {alarm["alarmId"]: alarm["rule"] for alarm in json_lines(alarms.read_text())}
    assert "unauthorized-decrypt" in raised.values()
    out = tmp_path / "alarms-report.json"
    keytrail("report", "--cloudtrail", str(trail), "--alarms", str(alarms), "--out", str(out))
    shown = {row["alarmId"]: row["rule"] for row in report_table(out, "alarms", ["alarmId", "rule"])}
    assert shown == raised


def test_progress_bar_goes_to_stderr_only(trail: Path, tmp_path: Path) -> None:
    need_commands("report")
    out = tmp_path / "r.csv"
    result = keytrail("report", "--cloudtrail", str(trail), "--out", str(out), "--progress")
    assert "3/3 files" in result.stderr and "] " in result.stderr
    assert result.stdout == ""
    assert out.read_text().startswith("table,")


def test_a_report_of_a_trail_holding_no_kms_record_says_so(trail: Path, tmp_path: Path) -> None:
    # A trail that excludes KMS events (ExcludeManagementEventSources, a common saving) or the
    # bucket's CloudTrail-Insight/ folder gave a report of empty tables and exit 0, without a word:
    # no usage and no cost, as if no key were used (detect --cloudtrail says so of such files).
    need_commands("report")
    others = tmp_path / "AWSLogs" / "111122223333" / "CloudTrail" / "111122223333_CloudTrail_us-east-1_s3.json"
    others.parent.mkdir(parents=True)
    s3_call = {"eventVersion": "1.08", "eventSource": "s3.amazonaws.com", "eventName": "GetObject",
               "eventTime": "2026-11-02T08:00:00Z", "eventID": "s3-call", "awsRegion": "us-east-1"}
    insight = {"eventVersion": "1.08", "eventType": "AwsCloudTrailInsight", "eventCategory": "Insight",
               "eventTime": "2026-11-02T08:00:00Z", "eventID": "insight", "awsRegion": "us-east-1",
               "insightDetails": {"state": "Start", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt"}}
    others.write_text(json.dumps({"Records": [s3_call, insight]}))
    result = keytrail("report", "--cloudtrail", str(tmp_path / "AWSLogs"), "--out", str(tmp_path / "r.json"))
    assert result.stderr.splitlines() == [
        f"wrote {tmp_path / 'r.json'} (json: 0 events, 0 keys, 0 alarms)",
        "note: the CloudTrail files given hold no KMS record (2 records of other services): the report's tables "
        "are empty, which says nothing of KMS use (a trail that excludes KMS events logs none)"]
    result = keytrail("report", "--cloudtrail", str(trail), "--out", str(tmp_path / "k.json"))
    assert "note:" not in result.stderr


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    need_commands("report")
    result = keytrail("report", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.html"),
                      check=False)
    assert result.returncode == 2
    assert "no event log" in result.stderr and "Traceback" not in result.stderr


def test_consume_of_a_missing_data_dir_is_one_clear_line(tmp_path: Path) -> None:
    need_commands("consume")
    typo = tmp_path / "keytrail-dat"
    result = keytrail("consume", "--data-dir", str(typo), "--no-follow", check=False)
    assert result.returncode == 2
    assert result.stderr == f"keytrail consume: no audit event log in {typo} (is --data-dir right?)\n"
    assert not typo.exists()  # nothing created at the typo


def test_an_unwritable_out_is_one_clear_line(data_dir: Path, tmp_path: Path) -> None:
    need_commands("report")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = keytrail("report", "--data-dir", str(data_dir), "--out", str(blocker / "r.html"), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"keytrail report: --out: cannot write {blocker / 'r.html'}: ")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_an_unwritable_stdout_is_one_clear_line(data_dir: Path) -> None:
    need_commands("usage")
    with open("/dev/full", "w") as full:  # every write fails: ENOSPC
        result = subprocess.run([sys.executable, "-m", "keytrail", "usage", "--data-dir", str(data_dir)],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=240)
    assert result.returncode == 1
    assert result.stderr == "keytrail usage: No space left on device\n"


def test_report_of_a_live_server_after_boto3_calls(fresh_server: KeytrailServer, tmp_path: Path) -> None:
    need_commands("report", "consume", "usage")
    alice, bob = fresh_server.client("alice"), fresh_server.client("bob")
    key = alice.create_key(Description="report")["KeyMetadata"]["Arn"]
    blob = alice.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(bob.exceptions.ClientError):
        bob.decrypt(CiphertextBlob=blob)
    assert fresh_server.stop() == 0
    assert (fresh_server.data_dir / "audit" / "log").is_dir(), "keytrail serve must write the audit event log"
    keytrail("consume", "--data-dir", str(fresh_server.data_dir), "--no-follow")
    out = tmp_path / "live.json"
    keytrail("report", "--data-dir", str(fresh_server.data_dir), "--out", str(out))
    assert _normal(report_table(out, "usage", USAGE), USAGE) == _normal(query("usage", fresh_server.data_dir), USAGE)
    denied = report_table(out, "denied", ["principalArn", "eventName"])
    assert {"principalArn": "arn:aws:iam::111122223333:user/bob", "eventName": "Decrypt"} in denied


def _aliases_of(path: Path, table: str) -> dict[str, str | None]:
    return {row["keyArn"]: row["aliases"] for row in report_table(path, table, ["keyArn", "aliases"])}


def test_reports_of_cloudtrail_files_and_of_their_import_name_each_key_s_aliases(tmp_path: Path) -> None:
    # As AWS logs them: alias/orders made, used by name, then moved to a new key (a manual
    # rotation); alias/billing made before the logs begin, known from a call naming it by its ARN.
    old, new, billing = key_arn("orders-1"), key_arn("orders-2"), key_arn("billing")
    events = [record("CreateKey", START, old), record("CreateKey", START, new),
              alias_record("CreateAlias", START, "alias/orders", [old], old),
              by_alias("Encrypt", START + timedelta(hours=1), "alias/orders", old),
              alias_record("UpdateAlias", START + timedelta(hours=2), "alias/orders", [old, new], new),
              by_alias("GenerateDataKey", START + timedelta(hours=3), "alias/orders", new),
              by_alias("Decrypt", START + timedelta(hours=4), alias_arn("alias/billing"), billing)]
    trail = tmp_path / "trail.json.gz"
    trail.write_bytes(gzip.compress(json.dumps({"Records": events}).encode()))
    data_dir = tmp_path / "data"
    keytrail("audit", "import", str(trail), "--data-dir", str(data_dir))
    expected = {old: "alias/orders", new: "alias/orders", billing: "alias/billing"}
    for source, suffix in ((["--cloudtrail", str(trail)], ".csv"), (["--data-dir", str(data_dir)], ".json"),
                           (["--cloudtrail", str(trail)], ".parquet")):
        out = tmp_path / f"report{suffix}"
        keytrail("report", *source, "--out", str(out))
        for table in ("usage", "cost", "last_used"):
            assert _aliases_of(out, table) == expected, (source, table)
    # From the moment the alias moved, it names only the new key.
    out = tmp_path / "since.csv"
    keytrail("report", "--cloudtrail", str(trail), "--since", (START + timedelta(hours=2)).isoformat(),
             "--out", str(out))
    assert _aliases_of(out, "last_used") == {old: None, new: "alias/orders", billing: "alias/billing"}


def test_report_of_a_live_server_names_keys_by_the_aliases_boto3_gave_them(fresh_server: KeytrailServer,
                                                                          tmp_path: Path) -> None:
    need_commands("report")
    alice = fresh_server.client("alice")
    old, new = (alice.create_key(Description=name)["KeyMetadata"]["Arn"] for name in ("old", "new"))
    alice.create_alias(AliasName="alias/orders", TargetKeyId=old)
    alice.create_alias(AliasName="alias/spare", TargetKeyId=old)
    alice.encrypt(KeyId="alias/orders", Plaintext=b"x")
    alice.update_alias(AliasName="alias/orders", TargetKeyId=new)
    alice.delete_alias(AliasName="alias/spare")
    alice.generate_data_key(KeyId="alias/orders", KeySpec="AES_256")
    assert fresh_server.stop() == 0
    out = tmp_path / "live.csv"
    keytrail("report", "--data-dir", str(fresh_server.data_dir), "--out", str(out))
    assert _aliases_of(out, "cost") == {old: "alias/orders alias/spare", new: "alias/orders"}
    assert _aliases_of(out, "last_used") == {old: "alias/orders alias/spare", new: "alias/orders"}


def test_a_report_written_into_the_data_dir_is_its_owners_alone(data_dir: Path, tmp_path: Path) -> None:
    # Inside the data dir a report is what the rest there is (usage naming principals and keys):
    # 0600 in 0700 folders, whatever the umask; elsewhere, the umask's mode as any command's output.
    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    previous = os.umask(0o022)
    try:
        for name in ("r.html", "r.parquet"):
            inside = data_dir / "reports" / name
            keytrail("report", "--data-dir", str(data_dir), "--out", str(inside))
            assert (mode(inside), mode(inside.parent)) == (0o600, 0o700)
        keytrail("report", "--data-dir", str(data_dir), "--out", str(tmp_path / "elsewhere" / "r.html"))
        assert (mode(tmp_path / "elsewhere" / "r.html"), mode(tmp_path / "elsewhere")) == (0o644, 0o755)
    finally:
        os.umask(previous)


_STUCK_CHILD = """
import sys
from keytrail.reports import collect
import stuck_child
collect._consume_event_log = stuck_child.consume  # the child, spawned, imports it by this name
from keytrail.cli import main
sys.argv = ["keytrail", "report", *sys.argv[1:]]
main()
"""


def test_the_consuming_child_of_a_report_killed_with_kill_9_does_not_outlive_it(tmp_path: Path) -> None:
    """It went on for good: blocked sending its result to nobody, holding its scratch state."""
    fill_trail(tmp_path / "node", 3)
    (tmp_path / "stuck_child.py").write_text("import time\n\ndef consume(*args):\n    time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    report = subprocess.Popen([sys.executable, "-c", _STUCK_CHILD, "--data-dir", str(tmp_path / "node"),
                               "--out", str(tmp_path / "r.json"), "--format", "json"], env=env)
    consumer = _spawned_child(report.pid)
    try:
        time.sleep(1)  # its initializer has run
        report.kill()
        report.wait(30)
        assert _gone_within(consumer, seconds=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(consumer, signal.SIGKILL)


def _spawned_child(pid: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child, argv in child_commands(pid).items():
            if any(b"spawn_main" in arg for arg in argv):
                return child
        time.sleep(0.05)
    raise AssertionError("the report started no consuming child")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # dead, not yet reaped by init
            return True
        time.sleep(0.05)
    return False
