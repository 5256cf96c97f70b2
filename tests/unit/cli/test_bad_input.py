"""Bad input to the `keytrail` command: one line on stderr naming the command, a non-zero exit, no
traceback, and nothing written that was not asked for. Each test runs the real entry point."""

from __future__ import annotations

import csv
import fcntl
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from keytrail.audit.schema import avro_long, decode
from keytrail.transport.segment_log import SegmentLog, event_log_dir
from tests.support.audit_records import ACCOUNT, KEY_ARN, fill_trail, rewrite_segment
from tests.support.processes import interruptible, keytrail_into_a_closed_pipe


def _keytrail(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def _one_line_error(result: subprocess.CompletedProcess[str], prefix: str, code: int = 2) -> str:
    """The single stderr line of a failed run, checked to start with `prefix`."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(prefix), result.stderr
    return result.stderr


def _cloudtrail_gzip(path: Path) -> Path:
    record = {"eventSource": "kms.amazonaws.com", "eventName": "Decrypt", "eventTime": "2026-01-05T12:00:00Z",
              "eventID": "e-1", "awsRegion": "us-east-1", "recipientAccountId": ACCOUNT,
              "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/eve", "accountId": ACCOUNT},
              "resources": [{"ARN": KEY_ARN}], "errorCode": "AccessDenied"}
    path.write_bytes(gzip.compress(json.dumps({"Records": [record] * 300}).encode()))
    return path


def _damaged_inside(path: Path) -> Path:
    """A gzip file whose header is intact and whose deflate stream is not (zlib.error)."""
    data = bytearray(path.read_bytes())
    for index in range(20, 120):
        data[index] ^= 0x55
    path.write_bytes(bytes(data))
    return path


def _cut_short(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_detect_names_a_gzip_file_damaged_inside(tmp_path: Path) -> None:
    log = _damaged_inside(_cloudtrail_gzip(tmp_path / "a.json.gz"))
    line = _one_line_error(_keytrail("detect", "--cloudtrail", log), "keytrail detect: ")
    assert str(log) in line


def test_detect_names_a_gzip_file_cut_short(tmp_path: Path) -> None:
    log = _cut_short(_cloudtrail_gzip(tmp_path / "a.json.gz"))
    line = _one_line_error(_keytrail("detect", "--cloudtrail", log), "keytrail detect: ")
    assert str(log) in line and "aborted" not in line


def test_detect_skips_records_that_are_no_json_object(tmp_path: Path) -> None:
    log = tmp_path / "odd.json"
    log.write_text(json.dumps({"Records": [1, "x", None, [], {"eventSource": 5}]}))
    result = _keytrail("detect", "--cloudtrail", log, "--format", "json")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr.splitlines() == [*(f"skipped: {log}: record {index}: not a JSON object" for index in range(4)),
                                          "note: skipped 4 CloudTrail records that cannot be read (above)"]


def test_detect_says_how_many_kms_records_it_could_not_read(tmp_path: Path) -> None:
    # A denied Decrypt whose eventTime or userIdentity cannot be read raises no alarm: skipped in
    # silence, the detector hid it (consume and report said so already, in these same lines).
    denied = json.loads(gzip.decompress(_cloudtrail_gzip(tmp_path / "a.json.gz").read_bytes()))["Records"][0]
    log = tmp_path / "odd.json"
    log.write_text(json.dumps({"Records": [{**denied, "eventTime": "yesterday"}, {**denied, "userIdentity": "eve"},
                                           {"eventSource": "s3.amazonaws.com", "eventName": "GetObject"}]}))
    result = _keytrail("detect", "--cloudtrail", log, "--format", "json")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == (f"skipped: {log}: record 0 (eventID {denied['eventID']}): eventTime 'yesterday' is not "
                             "an ISO 8601 time\n"
                             f"skipped: {log}: record 1 (eventID {denied['eventID']}): userIdentity is not an object\n"
                             "note: skipped 2 CloudTrail records that cannot be read (above)\n")


def test_detect_skips_a_folder_named_like_a_log_file(tmp_path: Path) -> None:
    _cloudtrail_gzip(tmp_path / "a.json.gz")
    (tmp_path / "folder.json").mkdir()
    result = _keytrail("detect", "--cloudtrail", tmp_path, "--format", "json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert json.loads(result.stdout.splitlines()[0])["rule"] == "unauthorized-decrypt"


def test_import_reports_and_skips_a_gzip_file_damaged_inside(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    _cloudtrail_gzip(tmp_path / "logs" / "a.json.gz")
    _damaged_inside(_cloudtrail_gzip(tmp_path / "logs" / "b.json.gz"))
    result = _keytrail("audit", "import", tmp_path / "logs", "--data-dir", tmp_path / "node")
    # What could be read is imported; the exit status tells a script that some could not.
    assert "Traceback" not in result.stderr and result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"skipped: {tmp_path / 'logs' / 'b.json.gz'}: line 1: cannot read further")
    # its 300 records repeat one eventID (one event): stored once
    assert result.stdout == ("imported 1 KMS record from 1 file; skipped 0 records of other services and 299 already "
                             "in the event log; 1 problem\n")


def test_report_out_dash_writes_standard_output(tmp_path: Path) -> None:
    # It wrote a file named "-" in the working folder, and nothing reached the pipe.
    fill_trail(tmp_path / "node", 3)
    result = subprocess.run([sys.executable, "-m", "keytrail", "report", "--data-dir", str(tmp_path / "node"),
                             "--out", "-", "--format", "csv", "--table", "usage"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("table,") and KEY_ARN in result.stdout
    assert result.stderr.startswith("wrote standard output (csv: 3 events") and not (tmp_path / "-").exists()


def test_report_out_dash_whose_reader_is_gone_ends_quietly_with_exit_1(tmp_path: Path) -> None:
    # `report --out - | head -1`: it said "cannot write standard output: Broken pipe", where
    # detect, analyze and `audit events` end quietly with exit 1, as click ends a closed pipe.
    fill_trail(tmp_path / "node", 3)
    result = keytrail_into_a_closed_pipe("report", "--data-dir", str(tmp_path / "node"), "--out", "-",
                                         "--format", "csv", "--table", "usage")
    assert (result.returncode, result.stderr) == (1, "")


def test_report_out_dash_appends_to_a_file_standard_output_was_redirected_to(tmp_path: Path) -> None:
    # Opened again as /dev/stdout, the file `>>` named was truncated: what was there before was lost.
    fill_trail(tmp_path / "node", 3)
    target = tmp_path / "out.txt"
    target.write_text("before\n")
    with target.open("a") as appended:
        result = subprocess.run([sys.executable, "-m", "keytrail", "report", "--data-dir", str(tmp_path / "node"),
                                 "--out", "-", "--format", "csv", "--table", "usage"],
                                stdout=appended, stderr=subprocess.PIPE, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = target.read_text().splitlines()
    assert lines[0] == "before" and lines[1].startswith("table,") and KEY_ARN in lines[2]


def test_report_reads_an_alarms_file_with_unreadable_lines_and_mistyped_fields(tmp_path: Path) -> None:
    fill_trail(tmp_path / "node", 3)
    alarms = tmp_path / "alarms.jsonl"
    alarms.write_bytes(b"\xcc\xff not UTF-8\n"
                       b'{"alarmId": "a", "count": "x", "firstSeen": 5, "severity": 7, "eventIds": 5}\n'
                       b'{"alarmId": "b", "count": 1.5, "summary": {"x": 1}, "eventIds": [1, 2]}\n'
                       + b"[" * 5000 + b"]" * 5000 + b"\n")  # past json's recursion: it was a RecursionError
    out = tmp_path / "alarms.json"
    result = _keytrail("report", "--data-dir", tmp_path / "node", "--alarms", alarms, "--out", out,
                       "--table", "alarms")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row["alarmId"] for row in rows) == ["a", "b"]
    assert {row["alarmId"]: row.get("summary") for row in rows} == {"a": None, "b": '{"x": 1}'}


def test_report_names_a_folder_given_as_its_alarms_file_as_no_file(tmp_path: Path) -> None:
    # It said "no such file" of a folder that is there.
    fill_trail(tmp_path / "node", 3)
    (tmp_path / "alarms").mkdir()
    result = _keytrail("report", "--data-dir", tmp_path / "node", "--alarms", tmp_path / "alarms",
                       "--out", tmp_path / "r.html")
    line = _one_line_error(result, "keytrail report: ")
    assert line == f"keytrail report: --alarms: not a file: {tmp_path / 'alarms'}\n"
    assert not (tmp_path / "r.html").exists()


def test_report_names_an_alarms_file_that_is_not_there(tmp_path: Path) -> None:
    fill_trail(tmp_path / "node", 3)
    result = _keytrail("report", "--data-dir", tmp_path / "node", "--alarms", tmp_path / "alarms.jsonl",
                       "--out", tmp_path / "r.html")
    line = _one_line_error(result, "keytrail report: ")
    assert line == f"keytrail report: --alarms: no such file: {tmp_path / 'alarms.jsonl'}\n"


def test_report_to_a_folder_is_refused_before_reading_and_leaves_nothing(tmp_path: Path) -> None:
    fill_trail(tmp_path / "node", 3)
    (tmp_path / "out").mkdir()
    result = _keytrail("report", "--data-dir", tmp_path / "node", "--out", tmp_path / "out")
    _one_line_error(result, f"keytrail report: --out: {tmp_path / 'out'} is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node", "out"]  # no hidden .out.tmp beside it


@pytest.mark.parametrize("command", ["usage", "cost", "last-used"])
@pytest.mark.parametrize(("option", "message"), [
    # Both overflowed Python's datetime: a traceback rather than a line.
    (("--until", "0001-01-01"), "--until 0001-01-01 is not after 1000-01-01: no event is that old"),
    (("--since", "0001-01-01T00:00:00+01:00"), "--since: '0001-01-01T00:00:00+01:00' is out of range in UTC"),
])
def test_a_time_bound_beyond_the_calendar_is_one_line(tmp_path: Path, command: str, option: tuple[str, str],
                                                      message: str) -> None:
    result = _keytrail(command, "--data-dir", tmp_path, *option)
    assert _one_line_error(result, f"keytrail {command}: ") == f"keytrail {command}: {message}\n"


def test_a_since_of_year_one_is_no_bound(tmp_path: Path) -> None:
    fill_trail(tmp_path / "node", 3)
    assert _keytrail("consume", "--no-follow", "--data-dir", tmp_path / "node").returncode == 0
    result = _keytrail("usage", "--data-dir", tmp_path / "node", "--since", "0001-01-01", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["count"] for line in result.stdout.splitlines()] == [3]


def test_report_refuses_unused_days_its_arithmetic_cannot_reach(tmp_path: Path) -> None:
    fill_trail(tmp_path / "node", 1)
    result = _keytrail("report", "--data-dir", tmp_path / "node", "--out", tmp_path / "r.html",
                       "--unused-days", "1000000000")
    _one_line_error(result, "keytrail report: Invalid value for '--unused-days'")


def test_cost_since_after_the_last_event_is_refused_not_billed_negative(tmp_path: Path) -> None:
    fill_trail(tmp_path / "node", 3)  # Encrypt calls of 2026-11-28 12:00
    assert _keytrail("consume", "--no-follow", "--data-dir", tmp_path / "node").returncode == 0
    result = _keytrail("cost", "--data-dir", tmp_path / "node", "--since", "2026-12-01")
    _one_line_error(result, "keytrail cost: --since 2026-12-01 is not before --until, by default one second after "
                            "the last event not dated after now (2026-11-28T12:00:03Z)")


@pytest.mark.parametrize("command", ["cost", "report"])
def test_since_after_the_default_end_names_it_as_it_is_with_an_event_dated_ahead(command: str, tmp_path: Path) -> None:
    """With an event dated after now, key storage ends the minute after the last event not dated
    after it, not a second after: the line said "one second after" and named 12:01:00."""
    (tmp_path / "logs").mkdir()
    record = json.loads(gzip.decompress(_cloudtrail_gzip(tmp_path / "logs" / "a.json.gz").read_bytes()))["Records"][0]
    ahead = {**record, "eventID": "e-2099", "eventTime": "2099-01-01T00:00:00Z"}
    (tmp_path / "logs" / "b.json").write_text(json.dumps({"Records": [ahead]}))
    if command == "cost":
        assert _keytrail("consume", "--cloudtrail", tmp_path / "logs", "--data-dir", tmp_path / "node").returncode == 0
        result = _keytrail("cost", "--data-dir", tmp_path / "node", "--since", "2026-01-05T12:30:00")
    else:
        result = _keytrail("report", "--cloudtrail", tmp_path / "logs", "--since", "2026-01-05T12:30:00",
                           "--out", tmp_path / "r.html")
    _one_line_error(result, f"keytrail {command}: --since 2026-01-05T12:30:00 is not before --until, by default the "
                            "minute after the last event not dated after now (2026-01-05T12:01:00Z; 1 event is "
                            "dated after now): give an earlier --since, or an --until")


def _damaged_trail(data_dir: Path) -> Path:
    """A trail of 6 events whose third record's bytes no longer match their checksum."""
    fill_trail(data_dir, 6)
    rewrite_segment(data_dir, lambda r: [*r[:2], r[2][:-1] + b"!", *r[3:]], fix_checksums=False)
    return data_dir


def test_report_over_a_damaged_event_log_says_so_and_fails(tmp_path: Path) -> None:
    node = _damaged_trail(tmp_path / "node")
    result = _keytrail("report", "--data-dir", node, "--out", tmp_path / "r.html")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [wrote, error] = result.stderr.splitlines()
    assert wrote.startswith("wrote ") and "2 events" in wrote
    assert error.startswith(f"keytrail report: the event log in {node} is damaged: ")
    assert error.endswith("; the report covers the records before it")


def test_tail_without_follow_over_a_damaged_event_log_says_so_and_fails(tmp_path: Path) -> None:
    node = _damaged_trail(tmp_path / "node")
    result = _keytrail("audit", "tail", "--no-follow", "--data-dir", node)
    assert len(result.stdout.splitlines()) == 2  # what lies before the damage
    _one_line_error(result, f"keytrail audit: the event log in {node} is damaged: ", code=1)


def test_readers_of_an_event_log_whose_segment_is_gone_whole_say_so_and_fail(tmp_path: Path) -> None:
    # With its only segment deleted the log read as empty: `audit events` printed nothing and
    # `report` wrote an empty report, both exiting 0; its digests still sign the 6 records.
    node = tmp_path / "node"
    fill_trail(node, 6)
    for segment in event_log_dir(node).glob("*.seg"):
        segment.unlink()
    gone = f"the event log in {node} ends at record 0 but its digests sign records up to 6: signed records are gone"
    for args in (["events"], ["tail", "--no-follow"], ["export", str(tmp_path / "out")]):
        result = _keytrail("audit", *args, "--data-dir", node)
        assert result.returncode == 1 and result.stderr.splitlines()[-1].startswith(f"keytrail audit: {gone}")
    result = _keytrail("report", "--data-dir", node, "--out", tmp_path / "r.html")
    assert result.returncode == 1 and result.stderr.splitlines()[-1].startswith(f"keytrail report: {gone}")


@pytest.mark.parametrize("body", [
    pytest.param(lambda value: value[:-40], id="cut-short"),  # fastavro: EOFError, which click took for Ctrl-D
    pytest.param(lambda value: value[:40] + b"\x80" * 12 + value[52:], id="not-utf-8"),  # UnicodeDecodeError
    pytest.param(lambda value: _event_time_moved(value, 2**62), id="time-out-of-range"),  # OverflowError
])
def test_audit_commands_over_a_record_edited_with_its_checksum_fixed_say_so_in_one_line(
        tmp_path: Path, body: Callable[[bytes], bytes]) -> None:
    """The segment's checksums pass (an attacker with write access fixes them) but the third
    record's Avro body is damaged: each command names it in one line, not a traceback."""
    node = tmp_path / "node"
    fill_trail(node, 6)
    rewrite_segment(node, lambda records: [*records[:2], body(records[2]), *records[3:]])
    unreadable = f"keytrail audit: the event log in {node} holds an unreadable record: a damaged event body"
    for args in (["tail", "--no-follow"], ["events"], ["export", str(tmp_path / "out")]):
        result = _keytrail("audit", *args, "--data-dir", node)
        _one_line_error(result, unreadable, code=1)
        if args[0] != "export":
            assert len(result.stdout.splitlines()) == 2  # the records before it
    verified = _keytrail("audit", "verify", "--data-dir", node)  # an OverflowError was its traceback
    assert (verified.returncode, verified.stderr) == (1, "")
    assert verified.stdout.splitlines()[0] == "record (undecodable) at offset 2 was altered"


def _event_time_moved(value: bytes, millis: int) -> bytes:
    """`value` with its eventTime's Avro long replaced by `millis`."""
    event_time = datetime.fromisoformat(decode(value)["eventTime"])
    written = avro_long(int(event_time.timestamp() * 1000))
    assert value.count(written) == 1
    return value.replace(written, avro_long(millis))


def test_a_folder_where_a_segment_belongs_is_named(tmp_path: Path) -> None:
    # pread's error carries no file name: each command said "Is a directory" and nothing more.
    node = tmp_path / "node"
    fill_trail(node, 3)
    [segment] = event_log_dir(node).glob("*.seg")
    segment.unlink()
    segment.mkdir()
    for args in (["audit", "events"], ["audit", "verify"]):
        result = _keytrail(*args, "--data-dir", node)
        assert result.returncode != 0 and result.stderr.strip().endswith(f"Is a directory: {segment}"), result.stderr


def test_audit_commands_refuse_a_file_where_the_event_log_folder_belongs(tmp_path: Path) -> None:
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "log").write_text("not a folder")
    for args in (["events"], ["tail", "--no-follow"], ["export", str(tmp_path / "out")], ["verify"]):
        result = _keytrail("audit", *args, "--data-dir", tmp_path)
        _one_line_error(result, f"keytrail audit: no audit event log in {tmp_path} (is --data-dir right?)", code=1)


def test_audit_verify_of_a_data_dir_without_an_event_log_is_one_line_on_stderr(tmp_path: Path) -> None:
    result = _keytrail("audit", "verify", "--data-dir", tmp_path / "typo")
    _one_line_error(result, f"keytrail audit: no audit event log in {tmp_path / 'typo'} (is --data-dir right?)", code=1)
    assert result.stdout == ""


@pytest.mark.parametrize("url", ["mqtt://:99999", "http://broker", "nohost:", "mqtt://broker:99999",
                                 "mqtt://broker:abc", "mqtt://broker:", "mqtt://broker:1883/alarms",
                                 "mqtt://1883", "mqtt://bro ker:1883", "tcp://broker:1883"])
def test_serve_refuses_a_malformed_mqtt_url_before_starting(tmp_path: Path, url: str) -> None:
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--mqtt", url)
    _one_line_error(result, f"keytrail serve: --mqtt: not an MQTT URL: {url!r}")
    assert not (tmp_path / "node").exists()  # refused before anything was created


@pytest.mark.parametrize(("url", "shown"), [
    ("mqtt://broker:1883?qos=2", "mqtt://broker:1883?***"),
    # A URL made for another MQTT client carries its token in the query, which the refusal repeated.
    ("wss://a1b2.iot.us-east-1.amazonaws.com/mqtt?X-Amz-Security-Token=tok-SECRET",
     "wss://a1b2.iot.us-east-1.amazonaws.com/mqtt?***"),
    ("mqtt://broker:1883#tok-SECRET", "mqtt://broker:1883#***"),
])
def test_serve_refuses_an_mqtt_url_with_a_query_without_repeating_it(tmp_path: Path, url: str, shown: str) -> None:
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--mqtt", url)
    _one_line_error(result, f"keytrail serve: --mqtt: not an MQTT URL: {shown!r}")
    assert "SECRET" not in result.stderr + result.stdout


def test_serve_refuses_a_bare_mqtt_host_naming_the_url_to_type(tmp_path: Path) -> None:
    """mosquitto_pub takes `-h HOST`; --mqtt takes a URL, whose scheme says whether TLS is meant."""
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--mqtt", "foo")
    line = _one_line_error(result, "keytrail serve: --mqtt: not an MQTT URL: 'foo'")
    assert line.endswith("(did you mean mqtt://foo:1883?)\n")
    assert not (tmp_path / "node").exists()


def test_serve_names_the_part_of_its_data_dir_it_cannot_open(tmp_path: Path) -> None:
    # A file where metrics/ should be said "--data-dir: cannot open <data dir>: Not a directory",
    # naming the folder that opened, not the one that did not.
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "metrics").write_text("x")
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0")
    _one_line_error(result, f"keytrail serve: --data-dir: cannot open {tmp_path / 'node' / 'metrics'}")


@pytest.mark.parametrize("bootstrap", ["kafka://broker:9092", "broker:9092/x", "bro ker:9092", "9092", "b:9092,"])
def test_serve_refuses_a_malformed_kafka_bootstrap_before_starting(tmp_path: Path, bootstrap: str) -> None:
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--kafka", bootstrap)
    _one_line_error(result, f"keytrail serve: --kafka: not HOST:PORT[,HOST:PORT…]: {bootstrap!r}")
    assert not (tmp_path / "node").exists()


def test_detect_refuses_a_malformed_mqtt_url(tmp_path: Path) -> None:
    result = _keytrail("detect", "--kafka", "127.0.0.1:9", "--mqtt", "nohost:", "--data-dir", tmp_path)
    _one_line_error(result, "keytrail detect: --mqtt: not an MQTT URL: 'nohost:'")


@pytest.mark.parametrize(("command", "option", "value", "complaint"), [
    # 0 or less: a time-rule check after every batch; NaN: never one, the time rules silently off.
    (["detect", "--kafka", "127.0.0.1:9"], "--tick-every", "-1", "must be at least 0"),
    (["detect", "--kafka", "127.0.0.1:9"], "--tick-every", "nan", "not a number"),
    (["detect", "--kafka", "127.0.0.1:9"], "--tick-every", "inf", "not a finite number"),
    # Below 0: as 0 (stop once idle); NaN and infinity: never stop, where a stop was asked for.
    (["consume", "--kafka", "127.0.0.1:9"], "--exit-when-idle", "-1", "must be at least 0"),
    (["consume", "--kafka", "127.0.0.1:9"], "--exit-when-idle", "nan", "not a number"),
    (["consume", "--kafka", "127.0.0.1:9"], "--exit-when-idle", "inf", "not a finite number"),
    # 0 or a nanosecond: a busy loop re-reading the log; below 0, NaN, infinity, past time_t: a
    # traceback from time.sleep.
    (["audit", "tail"], "--interval", "0", "must be at least 0.01"),
    (["audit", "tail"], "--interval", "1e-9", "must be at least 0.01"),
    (["audit", "tail"], "--interval", "-0.5", "must be at least 0.01"),
    (["audit", "tail"], "--interval", "nan", "not a number"),
    (["audit", "tail"], "--interval", "inf", "not a finite number"),
    (["audit", "tail"], "--interval", "1e300", "must be at most 3600"),
    # Below 0: the first events written after the start would be skipped.
    (["audit", "tail"], "--lines", "-3", "Input should be greater than or equal to 0"),
    # Past 2**63: an OverflowError traceback from the event log's reader.
    (["consume", "--no-follow"], "--batch-size", str(10**23), "Input should be less than or equal to 10000000"),
])
def test_numeric_options_refuse_values_that_make_no_sense(tmp_path: Path, command: list[str], option: str,
                                                          value: str, complaint: str) -> None:
    fill_trail(tmp_path / "node", 1)
    result = _keytrail(*command, "--data-dir", tmp_path / "node", option, value)
    command_path = " ".join(command[:2] if command[0] == "audit" else command[:1])
    line = _one_line_error(result, f"keytrail {command_path}: Invalid value for '{option}'")  # -n: "/ '-n'"
    assert f"': {complaint} (see --help)" in line and result.stdout == ""


@pytest.mark.parametrize(("options", "complaint"), [
    (("--mqtt", "mqtt://127.0.0.1:1883"), "--mqtt is read only by the detector, which --no-detector turns off: give "
                                          "it to `keytrail detect --kafka` instead"),
    (("--mqtt", "mqtt://127.0.0.1:1883", "--config", "rules.toml"), "--mqtt, --config are read only by the detector"),
])
def test_serve_refuses_detector_options_with_no_detector(tmp_path: Path, options: tuple[str, ...],
                                                         complaint: str) -> None:
    # They were accepted and ignored: no alarm ever reached the broker or the webhooks they named.
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--no-detector", *options)
    assert complaint in _one_line_error(result, "keytrail serve: ")
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(("interval", "complaint"), [
    ("0", "must be at least 1"), ("-5", "must be at least 1"), ("abc", "a valid number"),
    ("100000", "must be at most 86400"), ("nan", "not a number"), ("inf", "not a finite number"),
])
def test_serve_refuses_a_digest_interval_that_is_no_positive_number(tmp_path: Path, interval: str,
                                                                      complaint: str) -> None:
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--digest-interval", interval)
    assert complaint in _one_line_error(result, "keytrail serve: Invalid value for '--digest-interval': ")
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(("option", "value", "complaint"), [
    ("--retention-hours", "0", "must be at least 1"), ("--retention-hours", "nan", "not a number"),
    ("--retention-hours", "900000", "must be at most 876000"), ("--retention-bytes", "0", "greater than or equal to 1"),
    ("--retention-bytes", "1.5", "a valid integer"),
])
def test_serve_refuses_a_retention_out_of_range(tmp_path: Path, option: str, value: str, complaint: str) -> None:
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", option, value)
    assert complaint in _one_line_error(result, f"keytrail serve: Invalid value for '{option}': ")
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(("options", "complaint"), [
    (("--kafka-partitions", "5"), "keytrail serve: --kafka-partitions needs --kafka"),
    (("--max-unshipped-bytes", "2000000", "--kafka-replication-factor", "3"),
     "keytrail serve: --kafka-replication-factor, --max-unshipped-bytes need --kafka"),
    (("--kafka", "127.0.0.1:9092", "--kafka-partitions", "0"), "Invalid value for '--kafka-partitions'"),
    (("--kafka", "127.0.0.1:9092", "--max-unshipped-bytes", "1000"), "greater than or equal to 1048576"),
])
def test_serve_refuses_kafka_shipping_options_it_cannot_honour(tmp_path: Path, options: tuple[str, ...],
                                                              complaint: str) -> None:
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", *options)
    assert complaint in _one_line_error(result, "keytrail serve: ")
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(("interval", "complaint"), [
    ("0.5", "must be at least 1"), ("-1", "must be at least 1"), ("soon", "a valid number"),
    ("3601", "must be at most 3600"), ("nan", "not a number"), ("-inf", "not a finite number"),
])
def test_serve_refuses_a_scheduler_interval_out_of_range(tmp_path: Path, interval: str, complaint: str) -> None:
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--scheduler-interval", interval)
    assert complaint in _one_line_error(result, "keytrail serve: Invalid value for '--scheduler-interval': ")
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(("hooks", "complaint"), [
    ('[hooks]\nmqtt = "mqtt://:0"\n', "[hooks] mqtt: not an MQTT URL"),
    ("[hooks]\nfoo = 1\n", "[hooks]: unknown setting(s) foo"),
    ('[[hooks.webhook]]\nurl = "https://alerts:99999/k"\nsecret = "s"\n',
     "[[hooks.webhook]] url: the port '99999' is not a number from 1 to 65535"),
])
def test_serve_names_a_wrong_hooks_table_of_its_config(tmp_path: Path, hooks: str, complaint: str) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(hooks)
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--config", config)
    assert complaint in _one_line_error(result, "keytrail serve: --config: ")


@pytest.mark.parametrize(("option", "value", "shown"), [
    ("--mqtt", "mqtt://user:pw-SECRET@broker:bad", "'mqtt://***@broker:bad'"),
    ("--mqtt", "mqtts://user:pw-SECRET@broker:8883?topic=x", "'mqtts://***@broker:8883?***'"),
    ("--mqtt", "user:pw-SECRET@broker", "'***@broker' (did you mean mqtt://***@broker?)"),
    # An unencoded "/" in the password: the URL's host:port is then "user:pw", its "port" "pw".
    ("--mqtt", "mqtt://user:pw/SECRET@broker:1883", "'mqtt://***@broker:1883'"),
    ("--kafka", "user:pw-SECRET@broker:9092", "'***@broker:9092'"),
])
def test_serve_refuses_a_broker_address_without_repeating_its_password(tmp_path: Path, option: str, value: str,
                                                                      shown: str) -> None:
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", option, value)
    line = _one_line_error(result, f"keytrail serve: {option}: ")
    assert shown in line and "pw" not in line and "SECRET" not in line


@pytest.mark.parametrize(("hooks", "shown"), [
    ('[hooks]\nmqtt = "mqtt://user:pw-SECRET@broker:bad"\n', "'mqtt://***@broker:bad'"),
    ('[hooks]\nkafka = "user:pw-SECRET@broker:9092"\n', "'***@broker:9092'"),
    ('[[hooks.webhook]]\nurl = "ftp://user:pw-SECRET@alerts/k?token=SECRET"\nsecret = "s"\n',
     "'ftp://alerts/…'"),
    ('[[hooks.webhook]]\nurl = "https://user:pw/SECRET@alerts:443/k"\nsecret = "s"\n',
     "no HOST:PORT after the scheme"),
])
def test_serve_refuses_a_hook_address_without_repeating_its_password(tmp_path: Path, hooks: str, shown: str) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(hooks)
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--config", config)
    line = _one_line_error(result, "keytrail serve: --config: ")
    assert shown in line and "pw" not in line and "SECRET" not in line


def test_serve_and_detect_name_a_binary_settings_or_principals_file(tmp_path: Path) -> None:
    binary = tmp_path / "file.toml"
    binary.write_bytes(b"\xcc\xff\x00binary")
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--principals", binary)
    _one_line_error(result, f"keytrail serve: {binary}: not a TOML principals file (not UTF-8 text)")
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--config", binary)
    _one_line_error(result, f"keytrail serve: --config: {binary}: not valid TOML (not UTF-8 text)")
    log = _cloudtrail_gzip(tmp_path / "a.json.gz")
    result = _keytrail("detect", "--cloudtrail", log, "--config", binary)
    _one_line_error(result, f"keytrail detect: {binary}: not valid TOML (not UTF-8 text)")


def test_serve_and_detect_name_a_settings_file_nested_too_deeply(tmp_path: Path) -> None:
    # tomllib recurses once per level: arrays 2,000 deep were a RecursionError traceback, as the
    # principals file's once were.
    deep = tmp_path / "deep.toml"
    deep.write_text("[rules]\nx = " + "[" * 2000 + "]" * 2000 + "\n")
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--config", deep)
    _one_line_error(result, f"keytrail serve: --config: {deep}: not valid TOML (values nested too deeply)")
    log = _cloudtrail_gzip(tmp_path / "a.json.gz")
    result = _keytrail("detect", "--cloudtrail", log, "--config", deep)
    _one_line_error(result, f"keytrail detect: {deep}: not valid TOML (values nested too deeply)")


@pytest.mark.parametrize(("options", "complaint"), [
    (("--principals", "bad.toml"), "keytrail serve: {bad}: Expected ']]' at the end of an array declaration"),
    (("--config", "bad.toml"), "keytrail serve: --config: {bad}: not valid TOML"),
    (("--tls-cert", "bad.toml", "--tls-key", "bad.toml"), "keytrail serve: --tls-cert {bad} and --tls-key {bad}"),
    (("--store", "mysql://db/keys"), "keytrail serve: --store must be a postgresql:// URL"),
    # asyncpg took the host from after the first "@" and named one that resolves as unknown.
    (("--store", "postgresql://kt@ops@127.0.0.1:5432/keys"),
     "keytrail serve: --store: the user name or password holds a '@': percent-encode it as %40"),
])
def test_a_refused_start_of_serve_leaves_no_data_dir_it_made(tmp_path: Path, options: tuple[str, ...],
                                                             complaint: str) -> None:
    # Refused once it had made the data dir (and its missing parents), serve left them there empty:
    # a typo'd --data-dir became a folder.
    bad = tmp_path / "bad.toml"
    bad.write_text("[[principal]\narn = ")
    given = [str(bad) if option == bad.name else option for option in options]
    result = _keytrail("serve", "--data-dir", tmp_path / "new" / "node", "--port", "0", *given)
    _one_line_error(result, complaint.format(bad=bad))
    assert list(tmp_path.iterdir()) == [bad]
    (tmp_path / "kept").mkdir()  # a data dir that was there stays, empty or not
    result = _keytrail("serve", "--data-dir", tmp_path / "kept", "--port", "0", *given)
    _one_line_error(result, complaint.format(bad=bad))
    assert sorted(tmp_path.iterdir()) == [bad, tmp_path / "kept"] and not any((tmp_path / "kept").iterdir())


def test_a_utf8_settings_file_is_not_called_binary_under_a_c_locale(tmp_path: Path) -> None:
    # Read in the locale's encoding (ASCII under LC_ALL=C with PYTHONUTF8=0), a comment "Règles"
    # made it "not valid TOML (not UTF-8 text)"; a Latin-1 locale would have misread its strings.
    config = tmp_path / "settings.toml"
    config.write_text('# Règles\n[rules.usage-spike]\nenabled = false\n', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "keytrail", "detect", "--cloudtrail",
                             str(_cloudtrail_gzip(tmp_path / "a.json.gz")), "--config", str(config)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"})
    assert result.returncode == 0 and "unauthorized-decrypt" in result.stdout, result.stderr


def test_a_misspelt_table_in_a_settings_file_is_refused_not_ignored(tmp_path: Path) -> None:
    # `[rule.permissive-key]` for `[rules.permissive-key]` left the rule enabled, without a word.
    config = tmp_path / "typo.toml"
    config.write_text("[rule.permissive-key]\nenabled = false\n")
    result = _keytrail("detect", "--cloudtrail", _cloudtrail_gzip(tmp_path / "a.json.gz"), "--config", config)
    _one_line_error(result, f"keytrail detect: {config}: unknown table(s) or setting(s) rule "
                            "(a settings file holds [rules.<id>] and [hooks])")
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--config", config)
    _one_line_error(result, f"keytrail serve: --config: {config}: unknown table(s) or setting(s) rule")


def test_a_grouping_named_twice_groups_once(tmp_path: Path) -> None:
    # `usage --by key,key` grouped by one column twice: polars refused, and the message blamed the
    # metrics state and told the operator to rebuild it.
    node = tmp_path / "node"
    consumed = _keytrail("consume", "--cloudtrail", _cloudtrail_gzip(tmp_path / "a.json.gz"), "--data-dir", node)
    assert consumed.returncode == 0, consumed.stderr
    for command in ("usage", "cost", "last-used"):
        once = _keytrail(command, "--data-dir", node, "--by", "key", "--format", "json")
        twice = _keytrail(command, "--data-dir", node, "--by", "key,key", "--format", "json")
        assert (twice.returncode, twice.stderr, twice.stdout) == (0, once.stderr, once.stdout)
        assert KEY_ARN in once.stdout


@pytest.mark.parametrize("by", ["principal", "principal,key"])
def test_last_used_by_principal_without_key_first_is_refused(tmp_path: Path, by: str) -> None:
    # `last-used --by principal` gave the rows of `--by key,principal`, exit 0, without a word: the
    # documented syntax is `--by key[,principal]`, and `cost --by principal` is refused in one line.
    result = _keytrail("last-used", "--data-dir", tmp_path, "--by", by)
    _one_line_error(result, "keytrail last-used: --by: choose key or key,principal (every row names its key)\n")
    assert result.stdout == ""


@pytest.mark.parametrize("by", ["", ",", "account"])
def test_last_used_by_an_unknown_grouping_names_only_what_it_takes(tmp_path: Path, by: str) -> None:
    # `last-used --by ''` said "choose from key, principal", and `--by principal` is then refused.
    result = _keytrail("last-used", "--data-dir", tmp_path, "--by", by)
    unknown = by.strip(",") or "grouping"
    _one_line_error(result, f"keytrail last-used: --by: unknown {unknown} (choose key or key,principal)\n")


def test_analyze_never_creates_a_root_key_in_the_data_dir_it_reads(tmp_path: Path) -> None:
    (tmp_path / "keys.db").write_bytes(b"")
    result = _keytrail("analyze", "--data-dir", tmp_path)
    # A node whose root key is kept out of the data dir (operations.md) names it in $KEYTRAIL_ROOT_KEY_FILE.
    error = _one_line_error(result, f"keytrail analyze: no root key: {tmp_path / 'root.key'} does not exist")
    assert error.endswith("(nor $KEYTRAIL_ROOT_KEY_FILE or $KEYTRAIL_ROOT_KEY): restore it, or name where it is kept "
                          "in $KEYTRAIL_ROOT_KEY_FILE\n")
    assert not (tmp_path / "root.key").exists()


def test_ctrl_c_while_the_commands_load_exits_130_quietly(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import keytrail.cli
    import keytrail.cli.commands

    def interrupted(module: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(keytrail.cli.commands, "load_module_commands", interrupted)
    monkeypatch.setattr(sys, "argv", ["keytrail", "audit", "events"])
    with pytest.raises(SystemExit) as exit_:
        keytrail.cli.main()
    assert exit_.value.code == 130 and capsys.readouterr() == ("", "")


def test_ctrl_c_during_a_command_exits_130_quietly(tmp_path: Path) -> None:
    """SIGINT once the command runs (its first output line is out): no traceback, exit 130."""
    fill_trail(tmp_path, 3000)
    process = subprocess.Popen([sys.executable, "-m", "keytrail", "audit", "events", "--data-dir", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    assert process.stdout is not None and process.stdout.readline().startswith("{")
    process.send_signal(signal.SIGINT)  # stdout unread: the command is blocked writing the rest
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and err == ""


def test_serve_refuses_a_port_in_use_before_building_anything(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", str(port))
    _one_line_error(result, f"keytrail serve: cannot listen on 127.0.0.1:{port} (Address already in use)")
    assert not (tmp_path / "node").exists()


def test_serve_refuses_a_host_it_cannot_listen_on(tmp_path: Path) -> None:
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--host", "nohost.invalid")
    _one_line_error(result, "keytrail serve: cannot listen on nohost.invalid:0 (")


@pytest.mark.parametrize("source", ["--store", "$KEYTRAIL_STORE"])
def test_a_store_url_of_another_scheme_is_refused_naming_its_source_and_no_password(tmp_path: Path,
                                                                                    source: str) -> None:
    # It printed the URL's query whole (its password= with it), and said --store of a URL from $KEYTRAIL_STORE.
    url = "mysql://app:hunter2@db.internal/keys?password=s3cret&sslpassword=k3y"
    flags, env = (["--store", url], {}) if source == "--store" else ([], {"KEYTRAIL_STORE": url})
    result = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "node"),
                             "--port", "0", *flags], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **env})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    # (--store warns first that the password is on the command line)
    assert result.stderr.splitlines()[-1].startswith(f"keytrail serve: {source} must be a postgresql:// URL, got ")
    assert not any(secret in result.stderr for secret in ("hunter2", "s3cret", "k3y")), result.stderr


def test_serve_names_an_ipv6_address_it_cannot_listen_on_in_brackets(tmp_path: Path) -> None:
    # "cannot listen on 2001:db8::1:0": no one could tell the address from the port.
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--host", "2001:db8::1")
    _one_line_error(result, "keytrail serve: cannot listen on [2001:db8::1]:0 (")
    line = _one_line_error(_keytrail("consume", "--data-dir", tmp_path, "--metrics-port", "20000",
                                     "--metrics-host", "2001:db8::1"), "keytrail consume: ")
    assert line.startswith("keytrail consume: --metrics-port: cannot listen on [2001:db8::1]:20000 (")


@pytest.mark.parametrize("host", ["a..b", "a" * 64 + ".example"])
def test_a_host_that_is_no_valid_name_is_one_line_naming_it(tmp_path: Path, host: str) -> None:
    # Python's IDNA codec refuses it with a UnicodeError: serve died of a traceback, and the
    # metrics endpoints said "encoding with 'idna' codec failed (…)", naming neither option nor host.
    line = _one_line_error(_keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--host", host),
                           "keytrail serve: ")
    assert line == f"keytrail serve: cannot listen on {host}:0 (not a valid host name)\n"
    assert not (tmp_path / "node").exists()
    line = _one_line_error(_keytrail("consume", "--data-dir", tmp_path, "--metrics-port", "20000",
                                     "--metrics-host", host), "keytrail consume: ")
    assert line == f"keytrail consume: --metrics-port: cannot listen on {host}:20000 (not a valid host name)\n"


@pytest.mark.parametrize(("value", "entry"), [("proxy.internal", "proxy.internal"), ("10.0.0.5/24", "10.0.0.5/24"),
                                               ("10.0.0.5:8080", "10.0.0.5:8080"), ("10.0.0.5, *", "*")])
def test_serve_refuses_a_trusted_proxy_that_is_no_address_or_network(tmp_path: Path, value: str, entry: str) -> None:
    # uvicorn keeps such an entry as a literal it compares with the peer's address, which never
    # matches: the proxy was silently not trusted, and the trail recorded its address for every caller.
    result = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "node"),
                             "--port", "0"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "FORWARDED_ALLOW_IPS": value})
    line = _one_line_error(result, "keytrail serve: $FORWARDED_ALLOW_IPS: ")
    assert f"{entry!r} is no IP address or network" in line
    assert not (tmp_path / "node").exists()


def test_serve_names_a_folder_given_as_a_tls_file_as_no_file(tmp_path: Path) -> None:
    # It said "no such file" of a folder that is there.
    (tmp_path / "cert.pem").write_text("x")
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--tls-cert", tmp_path / "cert.pem",
                       "--tls-key", tmp_path)
    assert _one_line_error(result, "keytrail serve: ") == f"keytrail serve: --tls-key: not a file: {tmp_path}\n"


def test_serve_refuses_a_file_as_its_data_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = _keytrail("serve", "--data-dir", tmp_path / "file", "--port", "0")
    _one_line_error(result, f"keytrail serve: --data-dir: {tmp_path / 'file'} is not a directory")


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def test_detect_and_consume_say_in_one_line_that_kafka_is_out_of_reach(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    result = _keytrail("detect", "--kafka", bootstrap, "--data-dir", tmp_path / "detect")
    # In words, not aiokafka's repr of its addresses ("[('127.0.0.1', 1, <AddressFamily.AF_INET: 2>)]").
    out_of_reach = "no broker answered there (is it running, and is the address right?)\n"
    assert _one_line_error(result, f"keytrail detect: --kafka {bootstrap}: ", code=1).endswith(out_of_reach)
    result = _keytrail("consume", "--kafka", bootstrap, "--data-dir", tmp_path / "consume")
    assert _one_line_error(result, f"keytrail consume: --kafka {bootstrap}: ", code=1).endswith(out_of_reach)


def test_detect_warns_of_an_mqtt_password_on_its_command_line(tmp_path: Path) -> None:
    # Every user of the machine reads a command line: the warning says so (and where the URL goes
    # instead) without repeating the password.
    bootstrap = f"127.0.0.1:{_closed_port()}"
    result = _keytrail("detect", "--kafka", bootstrap, "--mqtt", "mqtt://alarms:s3cret-pw@127.0.0.1:1883",
                       "--data-dir", tmp_path)
    warning, error = result.stderr.splitlines()
    assert warning.startswith("keytrail detect: warning: --mqtt names a password on the command line")
    assert "--config" in warning and "s3cret-pw" not in result.stderr
    assert error.startswith(f"keytrail detect: --kafka {bootstrap}: ") and result.returncode == 1


def test_consume_refuses_two_sources_in_one_line(tmp_path: Path) -> None:
    log = _cloudtrail_gzip(tmp_path / "a.json.gz")
    result = _keytrail("consume", "--kafka", "127.0.0.1:9092", "--cloudtrail", log, "--data-dir", tmp_path / "d")
    assert "two sources" in _one_line_error(result, "keytrail consume: ")
    assert not (tmp_path / "d").exists()


def test_detect_refuses_two_sources_in_one_line(tmp_path: Path) -> None:
    log = _cloudtrail_gzip(tmp_path / "a.json.gz")
    result = _keytrail("detect", "--cloudtrail", log, "--kafka", "127.0.0.1:9092", "--format", "json",
                       "--data-dir", tmp_path / "d")
    line = _one_line_error(result, "keytrail detect: ")
    assert line == "keytrail detect: --kafka and --cloudtrail name two sources: give one\n"
    assert result.stdout == "" and not (tmp_path / "d").exists()  # no offline run, no live one


def test_detect_refuses_a_metrics_endpoint_for_an_offline_run(tmp_path: Path) -> None:
    log = _cloudtrail_gzip(tmp_path / "a.json.gz")
    result = _keytrail("detect", "--cloudtrail", log, "--metrics-port", "9464", "--format", "json")
    line = _one_line_error(result, "keytrail detect: ")
    assert line == "keytrail detect: --metrics-port goes with --kafka (a live detector), not --cloudtrail\n"
    assert result.stdout == ""


def test_detect_says_in_one_line_that_its_metrics_port_is_taken(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _keytrail("detect", "--kafka", "127.0.0.1:9", "--data-dir", tmp_path / "node", "--metrics-port",
                          str(port))
    line = _one_line_error(result, f"keytrail detect: --metrics-port: cannot listen on 127.0.0.1:{port} (")
    assert "Address already in use" in line
    assert not (tmp_path / "node").exists()  # refused before the detector started (it made the data dir for its lock)


def test_consume_refuses_a_metrics_endpoint_for_a_run_that_ends(tmp_path: Path) -> None:
    from keytrail.pipeline.query import state_dir

    log, node = _cloudtrail_gzip(tmp_path / "a.json.gz"), tmp_path / "node"
    fill_trail(node, 2)
    expected = ("keytrail consume: --metrics-port goes with a live consumer (--kafka, or the embedded log "
                "with --follow), not --cloudtrail or --no-follow\n")
    for run in (("--cloudtrail", log), ("--no-follow",)):
        result = _keytrail("consume", "--data-dir", node, *run, "--metrics-port", "9465")
        assert _one_line_error(result, "keytrail consume: ") == expected
        assert not state_dir(node).exists()  # refused before anything was counted


def test_consume_says_in_one_line_that_its_metrics_port_is_taken(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _keytrail("consume", "--data-dir", tmp_path / "node", "--metrics-port", str(port))
    line = _one_line_error(result, f"keytrail consume: --metrics-port: cannot listen on 127.0.0.1:{port} (")
    assert "Address already in use" in line
    assert not (tmp_path / "node").exists()  # refused before the consumer started


def test_audit_import_and_export_name_a_file_where_a_folder_belongs(tmp_path: Path) -> None:
    log = _cloudtrail_gzip(tmp_path / "a.json.gz")
    (tmp_path / "file").write_text("x")
    result = _keytrail("audit", "import", log, "--data-dir", tmp_path / "file")
    _one_line_error(result, f"keytrail audit: --data-dir: cannot write the event log in {tmp_path / 'file'}: "
                            "Not a directory", code=1)
    fill_trail(tmp_path / "node", 2)
    result = _keytrail("audit", "export", tmp_path / "file", "--data-dir", tmp_path / "node")
    _one_line_error(result, f"keytrail audit: cannot write CloudTrail log files under {tmp_path / 'file'}: "
                            "Not a directory", code=1)


_NO_LOG_FILES = ("no CloudTrail log files (.json, .jsonl, .ndjson, gzipped or not, or CloudWatch Logs' or Firehose's "
                 "objects) found under ")


def test_audit_import_of_folders_holding_no_log_file_is_refused_and_makes_nothing(tmp_path: Path) -> None:
    # It said "imported 0 KMS records from 0 files; …; 0 problems" and exited 0, having made the data
    # dir and a new signed trail for nothing: the folder named was the wrong one.
    (tmp_path / "logs" / "2026").mkdir(parents=True)
    (tmp_path / "logs" / "README.txt").write_text("not a log")
    (tmp_path / "more").mkdir()
    result = _keytrail("audit", "import", tmp_path / "logs", tmp_path / "more", "--data-dir", tmp_path / "node")
    line = _one_line_error(result, f"keytrail audit: {_NO_LOG_FILES}", code=1)
    assert line.endswith(f" under {tmp_path / 'logs'}, {tmp_path / 'more'}\n"), line
    assert result.stdout == "" and not (tmp_path / "node").exists()
    _cloudtrail_gzip(tmp_path / "logs" / "2026" / "a.json.gz")  # one, deep down, is enough (300 copies of a record)
    result = _keytrail("audit", "import", tmp_path / "logs", tmp_path / "more", "--data-dir", tmp_path / "node")
    assert result.returncode == 0 and result.stdout.startswith("imported 1 KMS record from 1 file;"), result


#: The options naming a server, an address to listen on or a consumer group, whatever the command.
_ADDRESS_OPTIONS = {"--host", "--metrics-host", "--kafka", "--mqtt", "--store", "--group"}


def _address_options() -> list[tuple[list[str], str]]:
    """(command path, option) for each option of `_ADDRESS_OPTIONS` of every command, found by
    walking the commands as the `keytrail` group builds them: one added later is covered too."""
    from keytrail.cli.commands import COMMANDS, load_module_commands

    found: list[tuple[list[str], str]] = []

    def walk(path: list[str], command: Any) -> None:  # typer's own click (typer._click), a group or not
        for sub_name, sub in getattr(command, "commands", {}).items():
            walk([*path, sub_name], sub)
        found.extend((path, option) for param in command.params for option in param.opts if option in _ADDRESS_OPTIONS)

    for name, listing in COMMANDS.items():
        walk([name], load_module_commands(listing.module)[name])
    return found


def test_every_server_or_address_option_refuses_an_empty_value_saying_so(tmp_path: Path) -> None:
    # `detect --kafka ""` said "give --cloudtrail PATH… (offline) or --kafka BOOTSTRAP (live)", and
    # `--host ""` or `--metrics-host ""` "cannot listen on :4599 (Name or service not known)", and
    # `consume --kafka B --group ""` ran as a group without a name: an unset variable ("$BOOTSTRAP")
    # was not named as such. Nothing is made (no data dir).
    options = _address_options()
    assert {(" ".join(path), option) for path, option in options} >= {
        ("serve", "--host"), ("serve", "--kafka"), ("serve", "--mqtt"), ("serve", "--store"),
        ("detect", "--kafka"), ("detect", "--mqtt"), ("detect", "--metrics-host"),
        ("consume", "--kafka"), ("consume", "--metrics-host"), ("consume", "--group"), ("root-key rotate", "--store")}
    for path, option in options:
        result = _keytrail(*path, option, "", "--data-dir", tmp_path / "node")
        line = _one_line_error(result, f"keytrail {' '.join(path)}: Invalid value for '{option}'")
        assert ": empty (an unset variable?): give " in line, line
        assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(("value", "complaint"), [(" ", "blank (' '): give "),
                                                  ("\t127.0.0.1 ", "'\\t127.0.0.1 ' has white space around it: give ")])
def test_every_server_or_address_option_refuses_white_space_around_its_value_quoting_it(
        tmp_path: Path, value: str, complaint: str) -> None:
    # `--host ' '` (`"$HOST "` with HOST unset) said "cannot listen on  :4599 (Name or service not
    # known)": the address it could not resolve was invisible in the line.
    for path, option in _address_options():
        result = _keytrail(*path, option, value, "--data-dir", tmp_path / "node")
        line = _one_line_error(result, f"keytrail {' '.join(path)}: Invalid value for '{option}'")
        assert f": {complaint}" in line, line
        assert not (tmp_path / "node").exists()


@pytest.mark.parametrize("command", ["serve", "root-key rotate"])
def test_an_empty_key_store_variable_is_refused_not_taken_for_sqlite(tmp_path: Path, command: str) -> None:
    # KEYTRAIL_STORE="${PG_URL}" with PG_URL unset: click passes over an empty variable as if unset, and a
    # node meant to share a PostgreSQL store started on an SQLite store of its own, without a word.
    new_key = tmp_path / "new.key"
    new_key.write_bytes(os.urandom(32))
    new_key.chmod(0o600)
    options = ["--port", "0"] if command == "serve" else ["--new-key", str(new_key)]
    result = subprocess.run([sys.executable, "-m", "keytrail", *command.split(), *options,
                             "--data-dir", str(tmp_path / "node")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "KEYTRAIL_STORE": ""})
    line = _one_line_error(result, f"keytrail {command}: Invalid value for '--store'")
    assert "$KEYTRAIL_STORE is empty (an unset variable?): give the key store's URL, postgresql://" in line, line
    assert not (tmp_path / "node").exists()


#: Every command reading CloudTrail log files: its arguments before the paths (`out` the file or data
#: dir it would write), what its complaint starts with, and its exit status for bad input.
_LOG_READERS: dict[str, tuple[Callable[[Path], list[str | Path]], str, int]] = {
    "audit import": (lambda out: ["audit", "import", "--data-dir", out], "keytrail audit: ", 1),
    # detect offline prints its alarms and writes nowhere (a --data-dir is refused with --cloudtrail)
    "detect": (lambda out: ["detect", "--cloudtrail"], "keytrail detect: --cloudtrail: ", 2),
    "report": (lambda out: ["report", "--out", out, "--cloudtrail"], "keytrail report: --cloudtrail: ", 2),
    "consume": (lambda out: ["consume", "--data-dir", out, "--cloudtrail"], "keytrail consume: --cloudtrail: ", 2),
}


@pytest.mark.parametrize("command", _LOG_READERS)
def test_every_reader_of_cloudtrail_files_refuses_a_folder_holding_none_and_writes_nothing(
    tmp_path: Path, command: str
) -> None:
    # detect printed a note, report wrote an empty report and consume counted 0 records, each exiting
    # 0 as for a quiet period, where the folder named was the wrong one (audit import refused it).
    (tmp_path / "logs" / "2026").mkdir(parents=True)
    (tmp_path / "logs" / "README.txt").write_text("not a log")
    arguments, prefix, code = _LOG_READERS[command]
    result = _keytrail(*arguments(tmp_path / "out"), tmp_path / "logs")
    line = _one_line_error(result, prefix, code)
    assert line == f"{prefix}{_NO_LOG_FILES}{tmp_path / 'logs'}\n"
    assert result.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", _LOG_READERS)
def test_every_reader_of_cloudtrail_files_refuses_digest_files_alone(tmp_path: Path, command: str) -> None:
    # The digest folder of a trail bucket (CloudTrail-Digest/, beside CloudTrail/) named for the logs'
    # was read as files holding nothing: "imported 0 KMS records from 0 files; …; 1 digest file passed
    # over", exit 0. A digest file named alone (a shell's glob of that folder) is the same mistake.
    from tests.unit.audit.test_cloudtrail_files import _bucket_with_digest_and_insights

    account = _bucket_with_digest_and_insights(tmp_path / "bucket") / "AWSLogs" / "111122223333"
    [digest] = (account / "CloudTrail-Digest").rglob("*.json.gz")
    arguments, prefix, code = _LOG_READERS[command]
    for named in (account / "CloudTrail-Digest", digest):
        result = _keytrail(*arguments(tmp_path / "out"), named)
        line = _one_line_error(result, prefix, code)
        assert line == (f"{prefix}only CloudTrail digest files found under {named}: digest files hold no records; "
                        "name the log files' folder (AWSLogs/<account>/CloudTrail/, not CloudTrail-Digest/)\n")
        assert result.stdout == "" and not (tmp_path / "out").exists()
    result = _keytrail(*arguments(tmp_path / "out"), account / "CloudTrail-Digest", account / "CloudTrail")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_report_and_import_of_a_trail_bucket_say_nothing_of_its_digest_files(tmp_path: Path) -> None:
    from tests.unit.audit.test_cloudtrail_files import _bucket_with_digest_and_insights

    bucket = _bucket_with_digest_and_insights(tmp_path / "bucket")
    result = _keytrail("report", "--cloudtrail", bucket, "--out", tmp_path / "report.json")
    assert result.returncode == 0 and "CloudTrail-Digest" not in result.stderr, result.stderr
    result = _keytrail("audit", "import", bucket, "--data-dir", tmp_path / "node")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout == ("imported 9 KMS records from 2 files; skipped 2 records of other services and 0 already "
                             "in the event log; 0 problems; 1 digest file passed over\n")


def test_serve_makes_a_new_data_dir_the_owners_only(tmp_path: Path) -> None:
    # It holds the root key, principals and the audit trail, and what is derived from it (who used
    # which key, alarms): files the owner only may read, whatever mode each is given.
    # Started, not refused: a refused start removes the data dir it made.
    serve = subprocess.Popen([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "node"),
                              "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert serve.stdout is not None and serve.stdout.readline().startswith("Created ")  # built, announced
        assert oct((tmp_path / "node").stat().st_mode & 0o777) == "0o700"
    finally:
        serve.terminate()
        serve.communicate(timeout=60)


def test_a_missing_settings_or_price_file_is_named_without_python_error_text(tmp_path: Path) -> None:
    gone = tmp_path / "gone.toml"
    for args, complaint in (
        (["detect", "--cloudtrail", _cloudtrail_gzip(tmp_path / "a.json.gz"), "--config", gone],
         f"keytrail detect: {gone}: No such file or directory"),
        (["analyze", "--inventory", tmp_path / "a.json.gz", "--config", gone],
         f"keytrail analyze: {gone}: No such file or directory"),
        (["serve", "--data-dir", tmp_path / "node", "--port", "0", "--config", gone],
         f"keytrail serve: --config: {gone}: No such file or directory"),
        (["cost", "--data-dir", tmp_path, "--prices", gone],
         f"keytrail cost: --prices: No such file or directory: {gone}"),
        (["report", "--cloudtrail", tmp_path / "a.json.gz", "--out", tmp_path / "r.html", "--prices", gone],
         f"keytrail report: --prices: No such file or directory: {gone}"),
    ):
        assert _one_line_error(_keytrail(*args), complaint) == complaint + "\n"


@pytest.mark.parametrize(("args", "message"), [
    # Each was accepted and ignored: alarms never published, a consumer of the embedded log that
    # never stopped, time rules not run as of the time asked, a Kafka consumer told not to follow
    # that followed the topic until stopped, offline alarms written to no alarms.jsonl of the
    # --data-dir named, a live detector asked for JSON lines that printed nothing.
    (["detect", "--cloudtrail", "{logs}", "--mqtt", "mqtt://127.0.0.1:1883"],
     "keytrail detect: --mqtt goes with --kafka (a live detector): --cloudtrail prints its alarms"),
    (["detect", "--kafka", "127.0.0.1:9", "--as-of", "2026-01-01", "--data-dir", "{tmp}"],
     "keytrail detect: --as-of goes with --cloudtrail (offline), not --kafka"),
    (["consume", "--data-dir", "{tmp}", "--exit-when-idle", "2"],
     "keytrail consume: --exit-when-idle goes with --kafka; on the embedded log, --no-follow stops at its end"),
    (["detect", "--cloudtrail", "{logs}", "--data-dir", "{tmp}"],
     "keytrail detect: --data-dir goes with --kafka (a live detector): --cloudtrail writes no alarms.jsonl, it "
     "prints its alarms (--format json > FILE)"),
    (["detect", "--cloudtrail", "{logs}", "--tick-every", "1"],
     "keytrail detect: --tick-every goes with --kafka (a live detector): --cloudtrail judges time rules once, as of "
     "--as-of (default: the last event)"),
    (["detect", "--kafka", "127.0.0.1:9", "--format", "json", "--data-dir", "{tmp}"],
     "keytrail detect: --format goes with --cloudtrail (offline, whose alarms it prints): --kafka writes them to "
     "<data-dir>/alarms.jsonl and the hooks"),
    (["consume", "--data-dir", "{tmp}", "--no-follow", "--group", "nightly"],
     "keytrail consume: --group goes with --kafka (the consumer group sharing the topic's partitions)"),
    (["consume", "--data-dir", "{tmp}", "--kafka", "127.0.0.1:9", "--no-follow"],
     "keytrail consume: --no-follow goes with the embedded log; with --kafka, --exit-when-idle S stops once the "
     "topic is idle for S seconds"),
])
def test_an_option_of_the_other_mode_is_refused_not_ignored(tmp_path: Path, args: list[str], message: str) -> None:
    logs = _cloudtrail_gzip(tmp_path / "a.json.gz")
    fill_trail(tmp_path, 1)
    result = _keytrail(*(a.format(logs=logs, tmp=tmp_path) for a in args))
    assert _one_line_error(result, message) == message + "\n"


def test_analyze_refuses_an_inventory_with_a_data_dir_rather_than_pass_the_node_over(tmp_path: Path) -> None:
    # The inventory was analyzed and the node's keys and principals left out, saying nothing.
    inventory = tmp_path / "keys.json"
    inventory.write_text(json.dumps([{"KeyArn": KEY_ARN}]))
    result = _keytrail("analyze", "--inventory", inventory, "--data-dir", tmp_path)
    assert _one_line_error(result, "keytrail analyze: ") == \
        "keytrail analyze: --inventory and --data-dir name two sets of keys: give one\n"


def test_analyze_names_an_inventory_or_principals_file_that_is_a_folder_without_python_error_text(
        tmp_path: Path) -> None:
    # Each said "keytrail analyze: [Errno 21] Is a directory: '<path>'", naming neither option nor file.
    inventory = tmp_path / "inventory.json"
    inventory.write_text("[]")
    line = _one_line_error(_keytrail("analyze", "--inventory", tmp_path), "keytrail analyze: ")
    assert line == f"keytrail analyze: --inventory {tmp_path}: cannot read it: Is a directory\n"
    line = _one_line_error(_keytrail("analyze", "--inventory", inventory, "--principals", tmp_path),
                           "keytrail analyze: ")
    assert line == f"keytrail analyze: {tmp_path}: cannot read the principals file: Is a directory\n"


def test_analyze_names_an_inventory_that_is_not_json(tmp_path: Path) -> None:
    inventory = tmp_path / "keys.json"
    inventory.write_text("[")
    result = _keytrail("analyze", "--inventory", inventory)
    assert "not valid JSON" in _one_line_error(result, f"keytrail analyze: --inventory {inventory}: ")


def test_analyze_escapes_what_an_inventory_holds_in_its_one_line(tmp_path: Path) -> None:
    # A KeyArn with an escape sequence (setting the terminal's title) was echoed raw on stderr.
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps([{"KeyArn": "arn:aws:kms:us-east-1:111122223333:key/x\x1b]0;pwned\x07",
                                      "Policy": {"Statement": []}}]))
    result = _keytrail("analyze", "--inventory", inventory)
    assert "\x1b" not in result.stderr and "\\x1b]0;pwned\\x07" in result.stderr
    _one_line_error(result, "keytrail analyze: ")


def test_demo_names_a_data_dir_it_cannot_create(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where a folder is asked for")
    wanted = tmp_path / "file" / "demo"
    result = _keytrail("demo", "--data-dir", wanted)
    _one_line_error(result, f"keytrail demo: --data-dir: cannot create {wanted}: Not a directory")


def test_demo_refuses_a_data_dir_others_can_write_before_writing_in_it(tmp_path: Path) -> None:
    # Made under umask 002: serve refused it after the demo wrote its principals file there, and the
    # folder, no longer empty, was refused by the next demo too.
    wanted = tmp_path / "demo"
    wanted.mkdir()
    wanted.chmod(0o775)
    result = _keytrail("demo", "--data-dir", wanted)
    _one_line_error(result, f"keytrail demo: --data-dir: {wanted} can be written by other users (mode 0775), which "
                            f"serve refuses: chmod 700 it, or give a new folder")
    assert list(wanted.iterdir()) == []


@pytest.mark.parametrize(("url", "complaint"), [
    ("postgresql://u:pw-SECRET@127.0.0.1:notaport/db", "127.0.0.1:notaport/db: invalid literal for int()"),
    ("postgresql://u:pw-SECRET@[bad/db", "[bad/db: Invalid IPv6 URL"),
    ("postgresql://u:pw-SECRET@127.0.0.1:1/db?sslmode=bogus", "127.0.0.1:1/db?sslmode=bogus: `sslmode` parameter"),
    # A password in the query string (libpq takes one there) was repeated whole.
    ("postgresql://u@127.0.0.1:1/db?password=pw-SECRET&sslmode=bogus",
     "127.0.0.1:1/db?password=***&sslmode=bogus: `sslmode` parameter"),
    ("postgresql:///db?host=127.0.0.1&port=1&password=pw%2DSECRET&sslmode=bogus",
     "postgresql:///db?host=127.0.0.1&port=1&password=***&sslmode=bogus: `sslmode` parameter"),
    # Only the first password was hidden: one in the query besides the URL's own, a second
    # `password=`, and `sslpassword=` (the client TLS key's passphrase, read there too) were repeated.
    ("postgresql://u:pw-SECRET@127.0.0.1:1/db?password=pw-SECRET-2&sslmode=bogus",
     "127.0.0.1:1/db?password=***&sslmode=bogus: `sslmode` parameter"),
    ("postgresql://u@127.0.0.1:1/db?password=pw-SECRET&password=pw-SECRET-2&sslmode=bogus",
     "127.0.0.1:1/db?password=***&password=***&sslmode=bogus: `sslmode` parameter"),
    ("postgresql://u@127.0.0.1:1/db?sslpassword=pw-SECRET&sslmode=bogus",
     "127.0.0.1:1/db?sslpassword=***&sslmode=bogus: `sslmode` parameter"),
])
def test_serve_names_a_store_url_it_cannot_parse_without_its_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, complaint: str) -> None:
    monkeypatch.setenv("KEYTRAIL_STORE", url)  # the environment: no warning of a password in the arguments
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0")
    _one_line_error(result, f"keytrail serve: cannot open the key store at {complaint}")
    assert "pw-SECRET" not in result.stderr + result.stdout


@pytest.mark.parametrize("url", ["postgresql://u:pw-SECRET@127.0.0.1:1/db",
                                 "postgresql://u@127.0.0.1:1/db?password=pw-SECRET",
                                 "postgresql://u@127.0.0.1:1/db?sslpassword=pw-SECRET"])
def test_serve_warns_of_a_store_password_on_its_command_line(tmp_path: Path, url: str) -> None:
    # Every user of the machine reads a command line (ps, /proc/<pid>/cmdline): serve says so.
    result = _keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--store", url)
    warning, error = result.stderr.splitlines()
    assert warning.endswith("WARNING keytrail: --store names the database password on the command line, where every "
                            "user of this machine can read it: give it in $PGPASSWORD or a passfile, or the whole URL "
                            "in $KEYTRAIL_STORE")
    assert error.startswith("keytrail serve: cannot open the key store at 127.0.0.1:1/db")
    assert result.returncode == 2 and "pw-SECRET" not in result.stderr + result.stdout


@pytest.mark.parametrize("tls", [[], ["--tls-self-signed"]], ids=["http", "dev-certificate"])
def test_serve_on_a_key_store_it_cannot_reach_creates_no_credentials(tmp_path: Path, tls: list[str]) -> None:
    # A retry would take a principals file or root key left by the failed start for a node of its
    # own, and print no `export` line; the failed start must not print one either.
    data = tmp_path / "node"
    result = _keytrail("serve", "--data-dir", data, "--port", "0", "--store", "postgresql://u@127.0.0.1:1/db", *tls)
    _one_line_error(result, "keytrail serve: cannot open the key store at 127.0.0.1:1/db: ")
    assert result.stdout == ""
    assert not data.exists() or list(data.iterdir()) == []


def test_serve_that_cannot_open_its_audit_trail_keeps_no_credentials(tmp_path: Path) -> None:
    # An `audit import` (here: this process) writes the event log of a new data dir: serve fails
    # after its key store opened, and must not leave a principals file nobody was told of on retry.
    data = tmp_path / "node"
    writer = SegmentLog(event_log_dir(data), writable=True)
    try:
        result = _keytrail("serve", "--data-dir", data, "--port", "0")
    finally:
        writer.close()
    _one_line_error(result, f"keytrail serve: the event log {event_log_dir(data)} is in use by another process")
    assert result.stdout == "" and not (data / "principals.toml").exists()


def test_serve_refused_for_an_event_log_held_names_every_program_that_holds_one(tmp_path: Path) -> None:
    # Held as `keytrail root-key rotate` holds it: serve asked "is another keytrail serve running",
    # of a serve that did not exist.
    data = tmp_path / "node"
    SegmentLog(event_log_dir(data), writable=True).close()
    lock = os.open(event_log_dir(data) / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _keytrail("serve", "--data-dir", data, "--port", "0")
    finally:
        os.close(lock)
    assert _one_line_error(result, "keytrail serve: ") == (
        f"keytrail serve: the event log {event_log_dir(data)} is in use by another process: another keytrail serve, "
        f"keytrail root-key rotate or keytrail audit import on --data-dir {data}: stop it, or let it finish, first\n")


def test_report_over_an_unreadable_cloudtrail_file_writes_the_rest_and_fails(tmp_path: Path) -> None:
    # As `consume --cloudtrail` and `audit import`: a script must not mail a report of part of the
    # logs as if it were all of them.
    (tmp_path / "logs").mkdir()
    _cloudtrail_gzip(tmp_path / "logs" / "a.json.gz")
    _damaged_inside(_cloudtrail_gzip(tmp_path / "logs" / "b.json.gz"))
    out = tmp_path / "r.json"
    result = _keytrail("report", "--cloudtrail", tmp_path / "logs", "--out", out)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    [problem, wrote, error] = result.stderr.splitlines()
    # as every reader says it
    assert problem.startswith(f"skipped: {tmp_path / 'logs' / 'b.json.gz'}: line 1: cannot read further")
    assert wrote.startswith(f"wrote {out} (json: 1 event,")  # 300 records of one eventID
    assert error == ("keytrail report: 1 problem in the CloudTrail log files (above): the report leaves out what "
                     "could not be read")


def test_report_since_after_the_last_event_without_until_is_refused_in_one_line(tmp_path: Path) -> None:
    # The default --until is a second after the last event: a later --since made an inverted period
    # ("2030-01-01 → 2026-…") holding nothing, reported as if no key had been used.
    logs = tmp_path / "logs"
    logs.mkdir()
    _cloudtrail_gzip(logs / "a.json.gz")  # its events: 2026-01-05T12:00:00Z
    out = tmp_path / "r.html"
    result = _keytrail("report", "--cloudtrail", logs, "--since", "2030-01-01", "--out", out)
    _one_line_error(result, "keytrail report: --since 2030-01-01 is not before --until, by default one second after "
                            "the last event not dated after now (2026-01-05T12:00:01Z): give an earlier --since, "
                            "or an --until")
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["cost", "--prices"], ["consume", "--prices"], ["report", "--out", "r.csv", "--prices"],
    ["analyze", "--inventory"], ["analyze", "--config"], ["detect", "--config"], ["serve", "--config"],
], ids=lambda command: " ".join(command))
def test_every_file_option_refuses_a_fifo_in_one_line_without_waiting_on_it(tmp_path: Path,
                                                                             command: list[str]) -> None:
    # Read as it came, a FIFO waited for a writer for ever, saying nothing.
    fifo, data = tmp_path / "settings", tmp_path / "data"
    os.mkfifo(fifo)
    (data / "audit" / "log").mkdir(parents=True)  # report reads its options before the event log
    name, *options = command
    where = ["--cloudtrail", str(_cloudtrail_gzip(tmp_path / "a.json.gz"))] if name == "detect" else []
    if name in ("cost", "consume", "report", "serve") or command == ["analyze", "--config"]:
        where = ["--data-dir", str(data)]
    if name == "serve":  # it binds its port before it reads --config: not 4599, which a node may hold
        where += ["--port", "0"]
    line = _one_line_error(_keytrail(name, *where, *options, fifo), f"keytrail {name}: ")
    assert str(fifo) in line and "not a regular file (a FIFO, a device or a socket in a file's place)" in line


def test_consume_names_a_fifo_given_as_a_cloudtrail_log_file_and_counts_nothing(tmp_path: Path) -> None:
    fifo = tmp_path / "trail.json"
    os.mkfifo(fifo)
    result = _keytrail("consume", "--data-dir", tmp_path / "data", "--cloudtrail", fifo)
    assert (result.returncode, result.stderr.splitlines()[0]) == (1, f"skipped: {fifo}: not a regular file")
    assert "Traceback" not in result.stderr


def test_csv_of_the_queries_holds_values_as_they_are_and_the_table_shows_them_escaped(tmp_path: Path) -> None:
    # `usage --format csv` wrote a principal's newline and tab as the text \n and \t, where its JSON
    # and the report's CSV hold them as they are (docs/reports.md): a join of the two missed it.
    principal = f'arn:aws:iam::{ACCOUNT}:user/a,"b"\nc\u00e9\td\x1b[2J'
    record = {"eventSource": "kms.amazonaws.com", "eventName": "Decrypt", "eventTime": "2026-01-05T12:00:00Z",
              "eventID": "e-1", "awsRegion": "us-east-1", "recipientAccountId": ACCOUNT,
              "userIdentity": {"type": "IAMUser", "arn": principal, "accountId": ACCOUNT},
              "resources": [{"ARN": KEY_ARN}]}
    (tmp_path / "trail.json").write_text(json.dumps({"Records": [record]}))
    node = tmp_path / "node"
    assert _keytrail("consume", "--cloudtrail", tmp_path / "trail.json", "--data-dir", node).returncode == 0
    written = _keytrail("usage", "--data-dir", node, "--by", "principal", "--format", "csv")
    assert written.returncode == 0, written.stderr
    assert [row["principalArn"] for row in csv.DictReader(io.StringIO(written.stdout, newline=""))] == [principal]
    shown = _keytrail("usage", "--data-dir", node, "--by", "principal")
    assert "\x1b" not in shown.stdout and "\\n" in shown.stdout and "\\x1b[2J" in shown.stdout


@pytest.mark.parametrize("command", ["detect", "analyze"])
def test_an_unknown_alarm_format_is_refused_before_any_input_is_read(tmp_path: Path, command: str) -> None:
    # --format xml was refused only when the alarms were printed, after a whole run over the input.
    source = ["--cloudtrail", tmp_path / "missing.json"] if command == "detect" else ["--inventory",
                                                                                      tmp_path / "missing.json"]
    result = _keytrail(command, *source, "--format", "xml")
    _one_line_error(result, f"keytrail {command}: Invalid value for '--format': 'xml' is not one of 'table', 'json'.")
