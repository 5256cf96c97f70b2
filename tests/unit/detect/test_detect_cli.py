"""`keytrail detect --cloudtrail` and `keytrail analyze`: output, time rules, bad input."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import typer
from tests.support.processes import keytrail_into_a_closed_pipe
from tests.support.waits import eventually_blocking
from tests.unit.detect.records import ACCOUNT, T0, create_key, denied, event, key_arn, policy_doc, user
from typer.testing import CliRunner

from keytrail.cli.detect import register, run_offline
from keytrail.detect import RuleSet

runner = CliRunner()


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def write_log(path: Path, records: list[dict]) -> Path:
    data = json.dumps({"Records": records}).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def test_offline_detect_prints_one_json_alarm_per_line(app: typer.Typer, tmp_path: Path) -> None:
    folder = tmp_path / "AWSLogs" / ACCOUNT / "CloudTrail" / "us-east-1"
    folder.mkdir(parents=True)
    write_log(folder / "a.json.gz", [denied("Decrypt", T0 + timedelta(seconds=1), key_arn(1), user("eve"))])
    write_log(
        folder / "b.json",
        [
            denied("Decrypt", T0, key_arn(1), user("eve")),
            {"eventSource": "s3.amazonaws.com", "eventName": "GetObject"},
        ],
    )
    result = runner.invoke(app, ["detect", "--cloudtrail", str(tmp_path / "AWSLogs"), "--format", "json"])
    assert result.exit_code == 0, result.output
    [line] = result.output.splitlines()
    alarm = json.loads(line)
    assert alarm["rule"] == "unauthorized-decrypt" and alarm["count"] == 2
    assert alarm["firstSeen"] == "2026-01-05T12:00:00Z"


def test_offline_time_rules_use_as_of_or_the_last_event(app: typer.Typer, tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "log.json",
        [create_key(T0, key_arn(1)), event("DescribeKey", T0 + timedelta(days=91), key_arn(2))],
    )
    by_last_event = runner.invoke(app, ["detect", "--cloudtrail", str(log), "--format", "json"])
    assert [json.loads(x)["keyArn"] for x in by_last_event.output.splitlines()] == [key_arn(1)]
    early = runner.invoke(
        app, ["detect", "--cloudtrail", str(log), "--format", "json", "--as-of", "2026-01-06T00:00:00Z"]
    )
    assert early.exit_code == 0 and early.stdout == ""


def test_offline_as_of_judges_the_records_up_to_it_only(app: typer.Typer, tmp_path: Path) -> None:
    """--as-of before the last record: a use after it hid a key idle for 91 days by then, and a
    denied call after it raised an alarm dated after the time the run was judged as of."""
    as_of = T0 + timedelta(days=91)
    log = write_log(tmp_path / "log.json", [
        create_key(T0, key_arn(1)),
        event("Decrypt", as_of + timedelta(days=4), key_arn(1)),
        denied("Decrypt", as_of + timedelta(seconds=1), key_arn(1), user("eve")),
    ])
    result = runner.invoke(app, ["detect", "--cloudtrail", str(log), "--format", "json",
                                 "--as-of", as_of.isoformat()])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["rule"] for line in result.stdout.splitlines()] == ["unused-key"]
    assert result.stderr == ("note: 2 KMS records dated after --as-of 2026-04-06T12:00:00Z were not "
                             "judged: the alarms are those of the records up to it\n")


def _trail_with_ties_across_files(folder: Path) -> list[dict]:
    """Denied calls in three files, each out of time order within, their seconds overlapping; the
    records in the files' order (names sorted, as a folder is read)."""
    seconds = {"a.json": [2, 0, 1, 0, 3], "b.json.gz": [0, 2, 0, 1], "c.json": [1, 0, 2, 0, 9]}
    records: list[dict] = []
    for name, times in seconds.items():
        written = [denied("Decrypt", T0 + timedelta(seconds=s), key_arn(1), user("eve")) for s in times]
        write_log(folder / name, written)
        records += written
    return records


@pytest.mark.parametrize("as_of", [None, T0 + timedelta(seconds=1)])
def test_offline_alarms_are_the_same_when_the_events_are_sorted_through_runs_of_a_few(
        tmp_path: Path, as_of: datetime | None) -> None:
    """A year of a trail is sorted through runs spilled to files, not all in memory: the alarms,
    and the order of their calls, are those of one stable sort of them all, ties across files
    judged in the files' order."""
    records = _trail_with_ties_across_files(tmp_path)
    judged = sorted((r for r in records if as_of is None or r["eventTime"] <= f"{as_of:%Y-%m-%dT%H:%M:%SZ}"),
                    key=lambda r: r["eventTime"])  # sorted() is stable
    in_memory = run_offline([tmp_path], RuleSet(), as_of)
    [alarm] = in_memory.alarms
    assert list(alarm.event_ids) == [r["eventID"] for r in judged]
    assert in_memory.records == len(judged)
    for run_events in (1, 2, 3):
        through_runs = run_offline([tmp_path], RuleSet(), as_of, run_events=run_events)
        assert [a.to_json() for a in through_runs.alarms] == [alarm.to_json()]
        assert (through_runs.records, through_runs.as_of) == (in_memory.records, in_memory.as_of)


def test_offline_table_ends_with_what_the_alarms_were_judged_over(app: typer.Typer, tmp_path: Path) -> None:
    """A table with no row read as a run that did nothing: its last line counts alarms and records."""
    log = write_log(tmp_path / "log.json", [denied("Decrypt", T0 + timedelta(seconds=n), key_arn(1), user("eve"))
                                            for n in range(2)])
    result = runner.invoke(app, ["detect", "--cloudtrail", str(log), "--as-of", "2026-01-05T14:00:01+02:00"])
    assert result.exit_code == 0, result.output
    *rows, summary = result.stdout.splitlines()
    assert [row.split()[:3] for row in rows] == [["HIGH", "unauthorized-decrypt", "2"]]
    assert summary == "1 alarm over 2 KMS records, as of 2026-01-05T12:00:01Z"
    as_json = runner.invoke(app, ["detect", "--cloudtrail", str(log), "--format", "json"])
    assert [json.loads(line)["rule"] for line in as_json.stdout.splitlines()] == ["unauthorized-decrypt"]


def test_offline_table_escapes_control_characters_of_a_record(app: typer.Typer, tmp_path: Path) -> None:
    # A record's fields hold anything: a newline in a principal's ARN forged a second alarm line, and
    # an escape sequence or U+202E drove the on-call engineer's terminal (CWE-117), as `audit tail`
    # already escapes them.
    odd = user("m\nHIGH     unauthorized-decrypt      9  forged\x1b[2K\u202e")
    log = write_log(tmp_path / "log.json", [denied("Decrypt", T0, key_arn(1), odd)])
    result = runner.invoke(app, ["detect", "--cloudtrail", str(log)])
    assert result.exit_code == 0, result.output
    row, _summary = result.stdout.splitlines()
    assert "user/m\\nHIGH" in row and "forged\\x1b[2K\\u202e" in row and row.isprintable()


def test_offline_detect_over_files_with_no_kms_record_says_so(app: typer.Typer, tmp_path: Path) -> None:
    """Another service's trail printed nothing, as a quiet period does. (A folder holding no log
    file at all is refused: tests/unit/cli/test_bad_input.py.)"""
    s3_call = {"eventSource": "s3.amazonaws.com", "eventName": "GetObject", "eventTime": "2026-01-05T12:00:00Z"}
    for path in (write_log(tmp_path / "s3.json", [s3_call]), tmp_path):
        result = runner.invoke(app, ["detect", "--cloudtrail", str(path), "--format", "json"])
        assert result.exit_code == 0 and result.stdout == ""
        assert result.stderr == "note: the CloudTrail files given hold no KMS record: no alarm could be raised\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["detect"], "give --cloudtrail"),
        (["detect", "--cloudtrail", "/no/such/file.json"], "no such file"),
        (["detect", "--cloudtrail", "/no/such/folder"], "--cloudtrail: no such file or folder: /no/such/folder"),
        (["analyze", "--inventory", "/no/such/keys.json"], "--inventory: no such file or folder: /no/such/keys.json"),
        (["detect", "--kafka", "kafka:abc"], "--kafka: not HOST:PORT"),
        (["detect", "--cloudtrail", "{bad}", "--as-of", "yesterday"], "ISO-8601"),
        # Moved to UTC past year 1 or 9999: an OverflowError's traceback.
        (["detect", "--cloudtrail", "{bad}", "--as-of", "0001-01-01T00:00:00+01:00"], "out of range in UTC"),
        (["detect", "--cloudtrail", "{bad}", "--as-of", "9999-12-31T23:59:59-01:00"], "out of range in UTC"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(
    app: typer.Typer, tmp_path: Path, args: list[str], message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"NotRecords": 1}')
    args = [str(bad) if a == "{bad}" else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_not_a_cloudtrail_file_is_refused(app: typer.Typer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"NotRecords": 1}')
    result = runner.invoke(app, ["detect", "--cloudtrail", str(bad)])
    assert result.exit_code == 2 and "not a CloudTrail log file" in result.output


def test_rules_from_config_file(app: typer.Typer, tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.json", [denied("Decrypt", T0, key_arn(1), user("eve"))])
    config = tmp_path / "keytrail.toml"
    config.write_text('[rules.unauthorized-decrypt]\nparameters = { allow_principals = ["*:user/eve"] }\n')
    result = runner.invoke(app, ["detect", "--cloudtrail", str(log), "--config", str(config)])
    assert result.exit_code == 0 and result.output == "0 alarms over 1 KMS record, as of 2026-01-05T12:00:00Z\n"
    config.write_text('[rules.unauthorized-decrypt]\nwindow = "forever"\n')
    result = runner.invoke(app, ["detect", "--cloudtrail", str(log), "--config", str(config)])
    assert result.exit_code == 2 and "bad duration" in result.output


def test_analyze_inventory(app: typer.Typer, tmp_path: Path) -> None:
    public = policy_doc(
        {"Sid": "Open", "Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}
    )
    inventory = tmp_path / "keys.json"
    inventory.write_text(
        json.dumps(
            [
                {"KeyArn": key_arn(1), "Policy": public, "Grants": []},
                {
                    "KeyArn": key_arn(2),
                    "Policy": None,
                    "Grants": [
                        {
                            "GrantId": "g1",
                            "GranteePrincipal": "arn:aws:iam::999988887777:role/x",
                            "Operations": ["Decrypt"],
                        }
                    ],
                },
                {"KeyArn": key_arn(3)},
            ]
        )
    )
    result = runner.invoke(app, ["analyze", "--inventory", str(inventory), "--format", "json"])
    assert result.exit_code == 0, result.output
    alarms = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(a["keyArn"], a["severity"]) for a in alarms] == [(key_arn(1), "CRITICAL"), (key_arn(2), "HIGH")]
    assert json.loads(alarms[1]["details"]["findings"])[0]["grantId"] == "g1"
    # An inventory of GetKeyPolicy + ListGrants only: rotation unknown, and said to be unchecked.
    assert result.stderr == f"keytrail analyze: no key of {inventory} has KeyRotationEnabled " \
                            "(GetKeyRotationStatus): rotation not checked\n"
    settings = tmp_path / "keytrail.toml"
    settings.write_text("[rules.rotation-disabled]\nenabled = false\n")
    quiet = runner.invoke(app, ["analyze", "--inventory", str(inventory), "--config", str(settings)])
    assert quiet.exit_code == 0 and quiet.stderr == ""  # the rule is off: nothing went unchecked
    assert quiet.stdout.splitlines()[-1] == "2 alarms over 3 keys"  # the table's last line


@pytest.mark.parametrize(("inventory", "message"), [
    ({"keys": []}, 'an inventory is a JSON list of keys (or {"Keys": [...]})'),
    ([1, 2], "key 1 of the inventory: an object with a KeyArn string is needed"),
    ([{"KeyArn": 5}], "key 1 of the inventory: an object with a KeyArn string is needed"),
    ([{"KeyArn": "k", "Policy": {"Statement": []}}], "key k: Policy is the key policy as a JSON string"),
    ([{"KeyArn": "k", "Grants": "g1"}], "key k: Grants is a list of grant objects"),
    ([{"KeyArn": "k", "KeyState": 1}], "key k: KeyManager, KeyState, KeySpec, Origin are strings"),
    ([{"KeyArn": "k", "KeyRotationEnabled": "no"}], "key k: KeyRotationEnabled is true or false"),
    ([{"KeyArn": "k", "Aliases": "alias/a"}], 'key k: Aliases is a list of alias names ("alias/'),
    ([{"KeyArn": "k", "Aliases": [{"Name": "alias/a"}]}], 'key k: Aliases is a list of alias names ("alias/'),
    ([{"KeyArn": "k", "MultiRegionConfiguration": "REPLICA"}], "key k: MultiRegionConfiguration is DescribeKey's"),
    ([{"KeyArn": "k", "CustomKeyStoreId": 7}], "key k: CustomKeyStoreId is a string"),
    ([{"KeyArn": "k", "Policy": "{"}], "key k: its Policy is not a JSON policy document (Expecting"),
    ([{"KeyArn": "k", "Policy": "[]"}], "key k: its Policy is not a JSON policy document (a key policy is"),
    ([{"KeyArn": "k", "Policy": '{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", '
                                '"Resource": "*", "Condition": "x"}]}'}],
     "key k: its Policy is not a JSON policy document (a Condition element is an object"),
    # deeper than json's reader recurses: a RecursionError traceback
    ([{"KeyArn": "k", "Policy": '{"Statement": ' + "[" * 2000 + "]" * 2000 + "}"}],
     "key k: its Policy is not a JSON policy document (the policy nests too deeply)"),
])
def test_analyze_refuses_a_broken_inventory_in_one_line(app: typer.Typer, tmp_path: Path, inventory: object,
                                                        message: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(inventory))
    result = runner.invoke(app, ["analyze", "--inventory", str(path)])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_analyze_refuses_an_inventory_nested_too_deeply_in_one_line(app: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("[" * 5000 + "]" * 5000)  # a RecursionError traceback, where other bad JSON was one line
    result = runner.invoke(app, ["analyze", "--inventory", str(path)])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"keytrail analyze: --inventory {path}: not valid JSON (nested too deeply)"]


def test_analyze_inventory_with_principals_checks_their_identity_policies(app: typer.Typer, tmp_path: Path) -> None:
    inventory = tmp_path / "keys.json"
    inventory.write_text(json.dumps([{"KeyArn": key_arn(1)}]))
    every_key = json.dumps({"Statement": [{"Sid": "ReadAll", "Effect": "Allow", "Action": "kms:Decrypt*",
                                           "Resource": "*"}]})
    scoped = json.dumps({"Statement": [{"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_arn(1)}]})
    deny = json.dumps({"Statement": [{"Effect": "Deny", "Action": "kms:*", "Resource": "*"}]})
    principals = tmp_path / "principals.toml"
    principals.write_text(
        f'[[principal]]\narn = "arn:aws:iam::{ACCOUNT}:role/reader"\naccess_key_id = "AKIA1"\n'
        f"secret_access_key = \"s\"\npolicies = ['''{scoped}''', '''{every_key}''']\n"
        f'[[principal]]\narn = "arn:aws:iam::{ACCOUNT}:user/narrow"\naccess_key_id = "AKIA2"\n'
        f"secret_access_key = \"s\"\npolicies = ['''{scoped}''']\n"
        f'[[principal]]\narn = "arn:aws:iam::{ACCOUNT}:user/denied"\naccess_key_id = "AKIA3"\n'
        f"secret_access_key = \"s\"\npolicies = ['''{every_key}''', '''{deny}''']\n"
    )
    without = runner.invoke(app, ["analyze", "--inventory", str(inventory), "--format", "json"])
    assert without.exit_code == 0 and without.stdout == ""
    result = runner.invoke(app, ["analyze", "--inventory", str(inventory), "--principals", str(principals),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    [alarm] = [json.loads(line) for line in result.stdout.splitlines()]
    assert (alarm["principalArn"], alarm["keyArn"], alarm["accountId"]) == (f"arn:aws:iam::{ACCOUNT}:role/reader",
                                                                            None, ACCOUNT)
    assert alarm["details"]["source"] == 'policy 2 statement "ReadAll"'
    table = runner.invoke(app, ["analyze", "--inventory", str(inventory), "--principals", str(principals)])
    assert table.stdout.splitlines()[-1] == "1 alarm over 1 key and 3 principals"


def _shared_with(org: str) -> str:
    return policy_doc({"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
                       "Condition": {"StringEquals": {"aws:PrincipalOrgID": org}}})


def test_detect_and_analyze_trust_the_key_accounts_organization_of_principals(
    app: typer.Typer, tmp_path: Path
) -> None:
    """A key opened to its account's own organization is no finding once --principals says which
    organization that is; one opened to another organization still is."""
    log = write_log(tmp_path / "log.json", [create_key(T0, key_arn(1), _shared_with("o-homeorg123")),
                                            create_key(T0, key_arn(2), _shared_with("o-otherorg12"))])
    inventory = tmp_path / "keys.json"
    inventory.write_text(json.dumps([{"KeyArn": key_arn(1), "Policy": _shared_with("o-homeorg123")},
                                     {"KeyArn": key_arn(2), "Policy": _shared_with("o-otherorg12")}]))
    principals = tmp_path / "principals.toml"
    principals.write_text(f'[[organization]]\nid = "o-homeorg123"\naccounts = ["{ACCOUNT}"]\n')
    for command in (["detect", "--cloudtrail", str(log)], ["analyze", "--inventory", str(inventory)]):
        flagged = {}
        for given in ([], ["--principals", str(principals)]):
            result = runner.invoke(app, [*command, *given, "--format", "json"])
            assert result.exit_code == 0, result.output
            flagged[bool(given)] = [json.loads(line)["keyArn"] for line in result.stdout.splitlines()]
        assert flagged == {False: [key_arn(1), key_arn(2)], True: [key_arn(2)]}, command


@pytest.mark.parametrize("text", [None, "x = ["])
def test_detect_refuses_a_missing_or_broken_principals_file_in_one_line(
    app: typer.Typer, tmp_path: Path, text: str | None
) -> None:
    log = write_log(tmp_path / "log.json", [create_key(T0, key_arn(1))])
    principals = tmp_path / "principals.toml"
    if text is not None:
        principals.write_text(text)
    result = runner.invoke(app, ["detect", "--cloudtrail", str(log), "--principals", str(principals)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"keytrail detect: --principals: {principals}")


@pytest.mark.parametrize("command", ["detect", "analyze"])
def test_a_kafka_hook_that_is_not_a_bootstrap_is_refused_like_the_flag(
    app: typer.Typer, tmp_path: Path, command: str
) -> None:
    config = tmp_path / "keytrail.toml"
    config.write_text('[hooks]\nkafka = "kafka:abc"\n')
    result = runner.invoke(app, [command, "--kafka", "127.0.0.1:9", "--config", str(config)] if command == "detect"
                           else [command, "--inventory", str(tmp_path / "keys.json"), "--config", str(config)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "[hooks] kafka: not HOST:PORT" in result.output


def test_detect_kafka_is_refused_on_a_data_dir_whose_detector_runs(app: typer.Typer, tmp_path: Path) -> None:
    """serve's detector child holds detector.lock; a second detector on the data dir announced every
    alarm again and emptied the hooks' outboxes of what the first still owed."""
    import fcntl
    import os

    fd = os.open(tmp_path / "detector.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as serve's detector child holds it
    try:
        result = runner.invoke(app, ["detect", "--kafka", "127.0.0.1:9", "--data-dir", str(tmp_path)])
    finally:
        os.close(fd)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"a detector is already running on --data-dir {tmp_path}" in result.output


def test_offline_detect_and_analyze_read_a_settings_file_whose_webhook_secret_is_not_set_here(
        app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """They send no alarm, yet refused the settings file the live detector runs with wherever its
    webhook's $VARIABLE was unset; the live detector still refuses it (it would sign with nothing)."""
    monkeypatch.delenv("KEYTRAIL_TEST_HOOK_SECRET", raising=False)
    settings = tmp_path / "detect.toml"
    settings.write_text('[[hooks.webhook]]\nurl = "https://hooks.example/kms"\n'
                        'secret_env = "KEYTRAIL_TEST_HOOK_SECRET"\n')
    trail = write_log(tmp_path / "trail.json", [denied("Decrypt", T0, key_arn(1), user("eve"))])
    offline = runner.invoke(app, ["detect", "--cloudtrail", str(trail), "--config", str(settings), "--format", "json"])
    assert offline.exit_code == 0 and json.loads(offline.output)["rule"] == "unauthorized-decrypt", offline.output
    inventory = tmp_path / "inventory.json"
    inventory.write_text("[]")  # no key: the settings are what is read
    analyzed = runner.invoke(app, ["analyze", "--inventory", str(inventory), "--config", str(settings)])
    assert analyzed.exit_code == 0, analyzed.output
    live = runner.invoke(app, ["detect", "--kafka", "127.0.0.1:1", "--config", str(settings)])
    assert live.exit_code == 2 and "secret_env names $KEYTRAIL_TEST_HOOK_SECRET" in live.output


@pytest.mark.parametrize("command", ["detect", "analyze"])
def test_output_whose_reader_is_gone_ends_quietly_with_exit_1(command: str, tmp_path: Path) -> None:
    """As every other command ends: the closed pipe was said as a bad input, `[Errno 32] Broken pipe`
    and exit 2, which a script reads as its own mistake."""
    if command == "detect":
        trail = write_log(tmp_path / "trail.json", [denied("Decrypt", T0, key_arn(1), user("eve"))])
        args = ["detect", "--cloudtrail", str(trail), "--format", "json"]
    else:
        inventory = tmp_path / "keys.json"
        inventory.write_text(json.dumps([{"KeyArn": key_arn(1), "Policy": policy_doc(
            {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}), "Grants": []}]))
        args = ["analyze", "--inventory", str(inventory), "--format", "json"]
    result = keytrail_into_a_closed_pipe(*args)
    assert (result.returncode, result.stderr) == (1, "")


# Sorting: the first run file written, the process waits there, as one sorting a long history
# would still be busy, until the test's SIGTERM comes.
_SORTING_UNTIL_STOPPED = """
import sys, time
from keytrail.detect import time_order
write = time_order._RunFiles.write
def write_then_wait(self, events):
    path = write(self, events)
    time.sleep(600)
    return path
time_order._RunFiles.write = write_then_wait
time_order.RUN_EVENTS = 2  # read by run_offline as it runs: three records make two run files
from keytrail.cli import main
sys.argv = ["keytrail", "detect", "--cloudtrail", sys.argv[1]]
main()
"""


def test_offline_detect_stopped_by_sigterm_while_sorting_removes_its_run_files_and_exits_143(
        tmp_path: Path) -> None:
    """SIGTERM's default action killed `detect --cloudtrail` where it was: its folder of sorted
    runs stayed under TMPDIR (19 MB for 200,000 records) and nothing was said. It now unwinds as
    Ctrl-C does, and as `keytrail report` does on SIGTERM."""
    trail = write_log(tmp_path / "trail.json", [denied("Decrypt", T0 + timedelta(seconds=n), key_arn(1), user("eve"))
                                                for n in (2, 1, 0)])
    temp = tmp_path / "tmp"
    temp.mkdir()
    detect = subprocess.Popen([sys.executable, "-c", _SORTING_UNTIL_STOPPED, str(trail)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(temp)})
    try:
        eventually_blocking(lambda: list(temp.glob("keytrail-detect-*/run-0")), what="the first run file")
        detect.send_signal(signal.SIGTERM)  # `kill <pid>`
        stdout, stderr = detect.communicate(timeout=60)
    finally:
        detect.kill()
    assert (detect.returncode, stderr) == (143, "keytrail detect: stopped (SIGTERM): no alarms printed\n")
    assert stdout == ""
    assert list(temp.iterdir()) == []
