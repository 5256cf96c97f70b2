"""`keytrail usage | cost | last-used`: JSON lines with exactly the CONTRACTS.md §4 fields."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from keytrail.cli.metrics import COST_FIELDS, LAST_USED_FIELDS, USAGE_FIELDS, register, table
from keytrail.pipeline.query import state_dir
from keytrail.pipeline.runner import Runner
from keytrail.pipeline.sources import RecordsSource
from keytrail.pipeline.synthetic import SyntheticSettings, generate_events
from keytrail.transport.segment_log import SegmentLog, event_log_dir
from tests.unit.reports.records import ACCOUNT, key_arn, record


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metrics")
    events = generate_events(2000, SyntheticSettings(keys=20, principals=10, seconds_per_event=30.0), seed=4)
    asyncio.run(Runner(state_dir(root), RecordsSource(events)).run())
    return root


def run(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_usage_json_has_exactly_the_contract_fields(data_dir: Path) -> None:
    code, out, _ = run("usage", "--data-dir", str(data_dir), "--format", "json")
    rows = lines(out)
    assert code == 0 and rows
    assert all(list(r) == USAGE_FIELDS for r in rows)
    assert sum(int(r["count"]) for r in rows) == 2000 - _duplicates()  # type: ignore[call-overload]


def _duplicates() -> int:
    events = list(
        generate_events(2000, SyntheticSettings(keys=20, principals=10, seconds_per_event=30.0), seed=4)
    )
    return len(events) - len({e["eventID"] for e in events})


def test_usage_by_day_adds_window_fields(data_dir: Path) -> None:
    code, out, _ = run(
        "usage",
        "--data-dir",
        str(data_dir),
        "--by",
        "operation,day",
        "--format",
        "json",
        "--since",
        "2026-10-01",
        "--until",
        "2026-10-02",
    )
    rows = lines(out)
    assert code == 0 and rows
    assert all(list(r) == ["windowStart", "windowEnd", *USAGE_FIELDS] for r in rows)
    assert {r["windowStart"] for r in rows} == {"2026-10-01T00:00:00Z"}
    assert all(r["keyArn"] is None and r["eventName"] for r in rows)


def test_cost_json_fields_and_exact_totals(data_dir: Path) -> None:
    code, out, _ = run("cost", "--data-dir", str(data_dir), "--format", "json")
    rows = lines(out)
    assert code == 0 and rows
    assert all(list(r) == COST_FIELDS for r in rows)
    by_account = lines(run("cost", "--data-dir", str(data_dir), "--by", "account", "--format", "json")[1])
    assert sum(int(r["requests"]) for r in rows) == sum(int(r["requests"]) for r in by_account)  # type: ignore[call-overload]


@pytest.mark.parametrize(("by", "dimensions"), [("account", ["accountId"]), ("key", ["keyArn"]),
                                                ("key,account", ["keyArn", "accountId"])])
def test_cost_table_and_csv_show_the_grouped_columns_only(data_dir: Path, by: str, dimensions: list[str]) -> None:
    code, out, _ = run("cost", "--data-dir", str(data_dir), "--by", by, "--format", "csv")
    money = ["keyMonths", "keyCost", "requests", "requestCost", "totalCost"]
    assert code == 0 and out.splitlines()[0] == ",".join([*dimensions, *money])
    code, out, _ = run("cost", "--data-dir", str(data_dir), "--by", by)
    assert code == 0 and out.splitlines()[0].split() == [*dimensions, *money]


@pytest.mark.parametrize("output", ["json", "csv"])
def test_rows_printed_a_slice_at_a_time_are_those_printed_whole(data_dir: Path, output: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # JSON and CSV go out a slice of rows at a time (a year of minute rows made whole took 1.9 GB):
    # the same lines, the CSV header once.
    from keytrail.cli import metrics

    args = ["usage", "--data-dir", str(data_dir), "--by", "key,principal,minute", "--format", output]
    code, whole, _ = run(*args)
    assert code == 0 and len(whole.splitlines()) > 100
    monkeypatch.setattr(metrics, "EMIT_SLICE_ROWS", 7)
    assert run(*args) == (0, whole, "")


def test_last_used_json_and_csv(data_dir: Path) -> None:
    code, out, _ = run("last-used", "--data-dir", str(data_dir), "--format", "json")
    rows = lines(out)
    assert code == 0 and rows and all(list(r) == LAST_USED_FIELDS for r in rows)
    assert all(str(r["lastUsedTime"]).endswith("Z") for r in rows if r["lastUsedTime"])
    code, out, _ = run("last-used", "--data-dir", str(data_dir), "--format", "csv")
    assert out.splitlines()[0] == ",".join(LAST_USED_FIELDS)


@pytest.mark.parametrize(
    "args",
    [
        ["usage", "--by", "colour"],
        ["usage", "--since", "last tuesday"],
        ["usage", "--by", "hour,day"],
        ["cost", "--prices", "/nonexistent/prices.toml"],
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(data_dir: Path, args: list[str]) -> None:
    code, _, err = run(*args, "--data-dir", str(data_dir))
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"keytrail {args[0]}: "), err  # names the command


def test_missing_data_dir_is_an_error(tmp_path: Path) -> None:
    code, _, err = run("usage", "--data-dir", str(tmp_path / "nope"))
    assert code != 0 and err == f"keytrail usage: no such data directory: {tmp_path / 'nope'}\n"
    (tmp_path / "file").write_text("x")  # it said "no such data directory" of a file there too
    code, _, err = run("usage", "--data-dir", str(tmp_path / "file"))
    assert code != 0 and err == f"keytrail usage: not a folder: {tmp_path / 'file'}\n"


def test_consuming_a_damaged_log_counts_what_precedes_it_and_fails(tmp_path: Path) -> None:
    from tests.support.audit_records import fill_trail, rewrite_segment

    fill_trail(tmp_path, 6)
    rewrite_segment(tmp_path, lambda r: [*r[:3], r[3][:-1] + b"!", *r[4:]], fix_checksums=False)
    code, _, err = run("consume", "--data-dir", str(tmp_path), "--no-follow")
    assert code == 1 and "consumed 3 records" in err
    assert "the record at offset 3 is damaged" in err and "the figures cover the records before it" in err
    assert "(keytrail audit verify tells more)" in err


@pytest.mark.parametrize("command", ["usage", "cost", "last-used"])
def test_an_empty_time_window_is_refused_not_answered_with_nothing(data_dir: Path, command: str) -> None:
    code, out, err = run(command, "--data-dir", str(data_dir), "--since", "2026-10-02", "--until", "2026-10-01")
    assert code == 2 and out == ""
    assert err == f"keytrail {command}: --since 2026-10-02 is not before --until 2026-10-01\n"


def test_last_used_until_keeps_a_key_used_again_later_with_its_earlier_use(tmp_path: Path) -> None:
    # `--until` asks "as of then": a key used before it and again after it was left out, as if
    # it did not exist; its last use before --until comes from the minute-level usage.
    used_twice, used_once, created_later = key_arn("twice"), key_arn("once"), key_arn("later")
    oct_ = datetime(2026, 10, 1, tzinfo=UTC)
    events = [record("Encrypt", oct_ + timedelta(days=4, hours=12, seconds=30), used_twice),
              record("Decrypt", oct_ + timedelta(days=4, hours=13), used_twice, error="AccessDenied"),
              record("Decrypt", oct_ + timedelta(days=19), used_twice),
              record("Sign", oct_ + timedelta(days=2), used_once, event_id="once-sign"),
              record("CreateKey", oct_ + timedelta(days=24), created_later)]
    asyncio.run(Runner(state_dir(tmp_path), RecordsSource(events)).run())
    code, out, _ = run("last-used", "--data-dir", str(tmp_path), "--until", "2026-10-10", "--format", "json")
    rows = {r["keyArn"]: r for r in lines(out)}
    assert code == 0 and set(rows) == {used_twice, used_once}  # the later key did not exist yet
    assert (rows[used_twice]["lastUsedTime"], rows[used_twice]["lastUsedOperation"], rows[used_twice]["eventId"]) \
        == ("2026-10-05T12:00:00Z", "Encrypt", None)  # the minute of the use; the denied Decrypt is no use
    assert (rows[used_once]["lastUsedTime"], rows[used_once]["eventId"]) == ("2026-10-03T00:00:00Z", "once-sign")
    _, out, _ = run("last-used", "--data-dir", str(tmp_path), "--format", "json")
    latest = {r["keyArn"]: r for r in lines(out)}
    assert latest[used_twice]["lastUsedTime"] == "2026-10-20T00:00:00Z"
    assert latest[used_twice]["lastUsedOperation"] == "Decrypt" and latest[used_twice]["eventId"] is not None
    assert latest[created_later]["lastUsedTime"] is None
    _, out, _ = run("last-used", "--data-dir", str(tmp_path), "--until", "2026-10-10", "--by", "key,principal",
                    "--format", "json")
    assert [r["lastUsedOperation"] for r in lines(out) if r["keyArn"] == used_twice] == ["Encrypt"]


def test_last_used_until_inside_a_minute_takes_no_use_of_that_minute_known_to_be_after_it(tmp_path: Path) -> None:
    # `--until 10:00:30` read the minute 10:00 as before it: a key whose one use was at 10:00:45 was
    # said used at 10:00:00, a key never used before then, and one used at 09:00 hid that use.
    at_ten = datetime(2026, 10, 1, 10, tzinfo=UTC)
    once, before, twice = key_arn("once"), key_arn("before"), key_arn("twice")
    events = [record("CreateKey", at_ten - timedelta(hours=2), once),
              record("Encrypt", at_ten + timedelta(seconds=45), once),
              record("Encrypt", at_ten - timedelta(hours=1), before),
              record("Encrypt", at_ten + timedelta(seconds=45), before),
              record("Encrypt", at_ten + timedelta(seconds=10), twice),  # in the minute, before --until
              record("Decrypt", at_ten + timedelta(seconds=45), twice)]
    asyncio.run(Runner(state_dir(tmp_path), RecordsSource(events)).run())
    _, out, _ = run("last-used", "--data-dir", str(tmp_path), "--until", "2026-10-01T10:00:30Z", "--format", "json")
    rows = {r["keyArn"]: (r["lastUsedTime"], r["lastUsedOperation"]) for r in lines(out)}
    assert rows == {once: (None, None), before: ("2026-10-01T09:00:00Z", "Encrypt"),
                    twice: ("2026-10-01T10:00:00Z", "Encrypt")}


def test_last_used_by_key_and_principal_lists_a_never_used_key_as_by_key_does(tmp_path: Path) -> None:
    # Per key x principal a key no one used had no row at all: `--by key` names it with null
    # times (never used), `--by key,principal` left it out, the one key worth deleting.
    used, idle, later = key_arn("used"), key_arn("idle"), key_arn("later")
    oct_ = datetime(2026, 10, 1, tzinfo=UTC)
    events = [record("CreateKey", oct_, used), record("CreateKey", oct_, idle),
              record("Decrypt", oct_ + timedelta(days=1), idle, error="AccessDenied"),
              record("Encrypt", oct_ + timedelta(days=2), used, event_id="used-encrypt"),
              record("CreateKey", oct_ + timedelta(days=20), later)]
    asyncio.run(Runner(state_dir(tmp_path), RecordsSource(events)).run())
    for until in ([], ["--until", "2026-10-10"]):
        _, out, _ = run("last-used", "--data-dir", str(tmp_path), *until, "--by", "key,principal", "--format", "json")
        rows = [(r["keyArn"], r["lastUsedPrincipalArn"], r["lastUsedTime"], r["eventId"]) for r in lines(out)]
        expected = [(used, "arn:aws:iam::111122223333:user/alice", "2026-10-03T00:00:00Z", "used-encrypt"),
                    (idle, None, None, None)] + ([] if until else [(later, None, None, None)])
        assert sorted(rows, key=str) == sorted(expected, key=str), until


def test_last_used_lists_a_key_whose_only_use_is_as_a_reencrypt_destination(tmp_path: Path) -> None:
    # AWS CloudTrail files seldom reach back to a key's CreateKey, and a ReEncrypt's usage row
    # names its source key alone: the key its ciphertexts moved to was in the state, used, but
    # `last-used` listed only the keys of usage rows and CreateKeys, so it was not listed at all.
    source, destination = key_arn("source"), key_arn("destination")
    reencrypt = record("ReEncrypt", datetime(2026, 10, 5, tzinfo=UTC), source, event_id="moved")
    reencrypt["resources"] += [{"ARN": destination, "accountId": ACCOUNT, "type": "AWS::KMS::Key"}]
    asyncio.run(Runner(state_dir(tmp_path), RecordsSource([reencrypt])).run())
    for until in ([], ["--until", "2026-10-06"]):
        _, out, _ = run("last-used", "--data-dir", str(tmp_path), *until, "--format", "json")
        rows = {r["keyArn"]: (r["lastUsedOperation"], r["eventId"]) for r in lines(out)}
        assert rows == {source: ("ReEncrypt", "moved"), destination: ("ReEncrypt", "moved")}, until


def test_cost_names_how_many_keys_it_has_no_storage_for(tmp_path: Path) -> None:
    # CloudTrail files seldom reach back to a key's CreateKey: such a key shows requests and no
    # storage, which read as "this key costs nothing to keep" unless the output says why.
    made, older = key_arn("made"), key_arn("older")
    oct_ = datetime(2026, 10, 1, tzinfo=UTC)
    events = [record("CreateKey", oct_, made), record("Encrypt", oct_ + timedelta(days=1), made),
              record("Encrypt", oct_ + timedelta(days=2), older)]
    asyncio.run(Runner(state_dir(tmp_path), RecordsSource(events)).run())
    code, out, err = run("cost", "--data-dir", str(tmp_path), "--format", "json")
    rows = {r["keyArn"]: r for r in lines(out)}
    assert code == 0 and rows[older]["keyMonths"] == 0 and rows[made]["keyMonths"] > 0
    assert err.strip() == ("note: 1 key in these figures was not created in the events (made before they start, "
                           "or AWS managed): storage is counted only from a cancelled deletion on, so most show none; "
                           "a customer managed key costs $1 per key-month")


def test_cloudtrail_s_own_calls_writing_its_log_files_are_not_billed(tmp_path: Path) -> None:
    # audit-anchors.md §1.4 E3 and §3.1: CloudTrail's GenerateDataKey (userIdentity AWSService)
    # for an SSE-KMS trail costs no one anything; the account's own Decrypt of a log file does.
    trail_key = key_arn("trail")
    when = datetime(2026, 10, 5, tzinfo=UTC)
    by_cloudtrail = record("GenerateDataKey", when, trail_key)
    by_cloudtrail["userIdentity"] = {"type": "AWSService", "invokedBy": "cloudtrail.amazonaws.com"}
    events = [by_cloudtrail, record("Decrypt", when, trail_key)]
    asyncio.run(Runner(state_dir(tmp_path), RecordsSource(events)).run())
    for flags in ((), ("--free-tier",)):
        _, out, _ = run("cost", "--data-dir", str(tmp_path), "--format", "json", *flags)
        [row] = lines(out)
        assert (row["requests"], row["requestCost"]) == (1, 0 if flags else 0.000003)
    _, out, _ = run("usage", "--data-dir", str(tmp_path), "--by", "principal", "--format", "json")
    assert {r["principalArn"]: r["count"] for r in lines(out)}["cloudtrail.amazonaws.com"] == 1  # still a call


def _corrected(original: dict[str, object], event_id: str) -> dict[str, object]:
    """CloudTrail's corrected copy of `original`: a record of its own, with a new eventID, that names
    the original in its addendum (audit-anchors.md §1.1)."""
    return {**original, "eventID": event_id, "addendum": {
        "reason": "UPDATED_DATA", "updatedFields": "responseElements", "originalEventID": original["eventID"],
        "originalRequestID": original["requestID"]}}


def corrected_copies(key: str) -> list[dict[str, object]]:
    """A key made Oct 1, rotated Oct 11 and used Oct 12, then corrected copies of both."""
    oct_ = datetime(2026, 10, 1, tzinfo=UTC)
    rotation = record("RotateKey", oct_ + timedelta(days=10), key)
    use = record("Decrypt", oct_ + timedelta(days=11), key)
    return [record("CreateKey", oct_, key), rotation, use,
            _corrected(rotation, "00000000-0000-4000-8000-00000000c0a1"),
            _corrected(use, "00000000-0000-4000-8000-00000000c0a2")]


def test_a_corrected_copy_of_an_event_counts_once(tmp_path: Path) -> None:
    # Counted under its own new eventID, the copy of a RotateKey billed the key a rotation more
    # (+$1 a key-month) and the copy of a Decrypt a request more.
    key = key_arn("corrected")
    asyncio.run(Runner(state_dir(tmp_path), RecordsSource(corrected_copies(key))).run())
    _, out, _ = run("cost", "--data-dir", str(tmp_path), "--since", "2026-10-01", "--until", "2026-11-01",
                    "--format", "json")
    [row] = lines(out)
    assert (row["keyCost"], row["requests"]) == (round((240 * 1 + 504 * 2) / 744, 10), 2)
    _, out, _ = run("usage", "--data-dir", str(tmp_path), "--by", "operation", "--format", "json")
    assert {r["eventName"]: r["count"] for r in lines(out)} == {"CreateKey": 1, "RotateKey": 1, "Decrypt": 1}


_NOTHING_COUNTED_QUERIES = [
    ["usage"], ["usage", "--by", "key"], ["usage", "--by", "operation,day"], ["usage", "--by", "hour"],
    ["cost"], ["cost", "--by", "account"], ["cost", "--by", "key", "--free-tier"], ["cost", "--until", "2026-01-01"],
    ["last-used"], ["last-used", "--by", "key,principal"], ["last-used", "--since", "2026-01-01"],
]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
@pytest.mark.parametrize("query", _NOTHING_COUNTED_QUERIES, ids=" ".join)
def test_a_data_dir_that_counted_nothing_yet_answers_as_an_empty_state_does(
    tmp_path: Path, query: list[str], fmt: str
) -> None:
    """A data dir without metrics state is answered without polars: as one whose state counted
    nothing, word for word (the same note on stderr where its event log holds uncounted events)."""
    from keytrail.pipeline.state import PartitionState
    from keytrail.transport.segment_log import SegmentLog, event_log_dir

    new, empty = tmp_path / "new", tmp_path / "empty"
    state_dir(empty).mkdir(parents=True)
    PartitionState(state_dir(empty) / "segment-log.sqlite").close()
    event_log_dir(new).mkdir(parents=True)  # a node that started and logged nothing yet
    assert run(*query, "--data-dir", str(new), "--format", fmt) == run(*query, "--data-dir", str(empty),
                                                                      "--format", fmt)
    log = SegmentLog(event_log_dir(new), writable=True)
    log.append([b"{}"])
    log.close()
    code, out, err = run(*query, "--data-dir", str(new), "--format", fmt)
    assert (code, out) == run(*query, "--data-dir", str(empty), "--format", fmt)[:2]
    assert err.startswith("note: 1 event of the event log in") and err.count("\n") == 1


def test_a_new_trail_started_beside_the_metrics_of_the_old_one_is_counted(tmp_path: Path) -> None:
    # `keytrail serve` and `audit verify` advise moving <data-dir>/audit aside to start a new trail
    # (a trail that cannot be signed on, such as one an older keytrail crashed before its first
    # digest); metrics/ stays. The new log's offsets start at 0 again, below the offset the state
    # had counted to: the consumer waited there, and counted none of the new calls until the new
    # log grew past the old one's end.
    from keytrail.pipeline.segment_source import SegmentLogSource
    from keytrail.transport.segment_log import event_log_dir
    from tests.support.audit_records import fill_trail

    fill_trail(tmp_path, 6)
    # The old trail counted as `keytrail consume` counts it (the command's lock is this process's
    # until it exits, so only one `consume` runs here).
    asyncio.run(Runner(state_dir(tmp_path), SegmentLogSource(event_log_dir(tmp_path))).run())
    (tmp_path / "audit").rename(tmp_path / "audit.old")
    fill_trail(tmp_path, 2, first=100)
    code, _, err = run("consume", "--data-dir", str(tmp_path), "--no-follow")
    assert code == 0 and "2 counted" in err, err
    code, out, _ = run("usage", "--data-dir", str(tmp_path), "--format", "json")
    assert code == 0 and sum(row["count"] for row in lines(out)) == 8  # type: ignore[misc]


def test_the_queries_say_a_new_trail_beside_the_old_ones_metrics_is_not_counted_yet(tmp_path: Path) -> None:
    # Its offsets from 0 lie below the state's: the note took it for counted, and usage answered
    # from the old trail alone, in silence.
    from keytrail.pipeline.segment_source import SegmentLogSource
    from keytrail.transport.segment_log import event_log_dir
    from tests.support.audit_records import fill_trail

    fill_trail(tmp_path, 6)
    asyncio.run(Runner(state_dir(tmp_path), SegmentLogSource(event_log_dir(tmp_path))).run())
    (tmp_path / "audit").rename(tmp_path / "audit.old")
    fill_trail(tmp_path, 2, first=100)
    code, _, err = run("usage", "--data-dir", str(tmp_path), "--format", "json")
    assert code == 0 and err.startswith(f"note: 2 events of the event log in {tmp_path} are not counted yet"), err


def test_a_trail_restored_from_an_older_backup_beside_newer_metrics_is_counted(tmp_path: Path) -> None:
    # <data-dir>/audit restored from a backup older than metrics/ (which the docs call rebuilt, so
    # kept): the restored node's calls take the offsets of the calls made after the backup. Once
    # the log had grown past the offset the state covered before the consumer looked, it read on
    # from there, and the calls below it were never counted, without a word.
    import shutil

    from keytrail.pipeline.segment_source import SegmentLogSource
    from keytrail.transport.segment_log import event_log_dir
    from tests.support.audit_records import fill_trail

    fill_trail(tmp_path, 3)
    shutil.copytree(tmp_path / "audit", tmp_path / "backup")
    fill_trail(tmp_path, 4, first=3)
    asyncio.run(Runner(state_dir(tmp_path), SegmentLogSource(event_log_dir(tmp_path))).run())  # counts 7
    shutil.rmtree(tmp_path / "audit")
    (tmp_path / "backup").rename(tmp_path / "audit")
    fill_trail(tmp_path, 5, first=100)  # offsets 3..7: past the 7 the state covers
    code, _, err = run("consume", "--data-dir", str(tmp_path), "--no-follow")
    assert code == 0 and "5 counted" in err, err
    code, out, _ = run("usage", "--data-dir", str(tmp_path), "--format", "json")
    assert code == 0 and sum(row["count"] for row in lines(out)) == 12  # type: ignore[misc]


def test_table_cells_escape_control_characters_of_a_record() -> None:
    # An imported record names anyone: a newline in a principal's ARN forged a row of the usage and
    # last-used tables, an escape sequence or U+202E drove the terminal (CWE-117), as `audit tail` escapes.
    principal = "arn:aws:iam::111122223333:user/m\nforged  Decrypt\x1b[2K\u202e"
    lines = table([{"principalArn": principal, "count": 1}], ["principalArn", "count"]).splitlines()
    assert len(lines) == 2 and all(line.isprintable() for line in lines)
    assert "user/m\\nforged  Decrypt\\x1b[2K\\u202e" in lines[1]


def test_consume_kafka_is_refused_while_the_data_dirs_own_consumer_counts_there(tmp_path: Path) -> None:
    """serve's consumer counts the node's events from its event log there, and they reach Kafka too:
    `consume --kafka` into that data dir counted each call twice in `usage`, `cost` and /metrics."""
    import fcntl

    from keytrail.pipeline.layout import consumer_lock

    lock = consumer_lock(tmp_path)
    lock.parent.mkdir(parents=True)
    writer = SegmentLog(event_log_dir(tmp_path), writable=True)  # serve writes the event log
    try:
        with lock.open("w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # as serve's consumer child holds it
            code, _, err = run("consume", "--data-dir", str(tmp_path), "--kafka", "127.0.0.1:1",
                               "--exit-when-idle", "1")
    finally:
        writer.close()
    assert code == 2
    assert err == (f"keytrail consume: the metrics consumer of {tmp_path} is already running (keytrail serve runs "
                   "one, counting its event log): --kafka would count those events twice; give another --data-dir\n")


def test_a_second_consume_is_refused_naming_the_consume_that_runs(tmp_path: Path) -> None:
    """With no serve on the data dir, the consumer holding its lock is another `keytrail consume`:
    the refusal said serve ran one."""
    import fcntl

    from keytrail.pipeline.layout import consumer_lock

    SegmentLog(event_log_dir(tmp_path), writable=True).close()
    lock = consumer_lock(tmp_path)
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a `keytrail consume` of the event log holds it
        code, _, err = run("consume", "--data-dir", str(tmp_path), "--no-follow")
    assert code == 2
    assert err == (f"keytrail consume: the metrics consumer of {tmp_path} is already running (another keytrail "
                   "consume runs it): stop it first\n")


def test_consume_kafka_is_refused_while_an_event_log_consumer_keeps_kafka_consumers_out(tmp_path: Path) -> None:
    """The event log's consumer holds metrics/kafka-consumers.lock exclusively (pipeline/kafka_lock.py):
    that alone refuses `consume --kafka`, as it does between serve's check and its child's start."""
    import fcntl

    from keytrail.pipeline.layout import kafka_consumers_lock

    lock = kafka_consumers_lock(tmp_path)
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = run("consume", "--data-dir", str(tmp_path), "--kafka", "127.0.0.1:1", "--exit-when-idle", "1")
    assert code == 2
    assert err == (f"keytrail consume: the metrics consumer of {tmp_path} is already running (another keytrail "
                   "consume runs it, counting its event log): --kafka would count those events twice; give another "
                   "--data-dir\n")


def test_consume_of_the_event_log_is_refused_while_consume_kafka_counts_there(tmp_path: Path) -> None:
    """The other order: Kafka carries the events of the log too, so each would count twice."""
    import fcntl

    from keytrail.pipeline.layout import kafka_consumers_lock
    from keytrail.transport.segment_log import event_log_dir

    event_log_dir(tmp_path).mkdir(parents=True)
    lock = kafka_consumers_lock(tmp_path)
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # as each `consume --kafka` holds it
        code, _, err = run("consume", "--data-dir", str(tmp_path), "--no-follow")
    assert code == 2
    assert err == (f"keytrail consume: keytrail consume --kafka counts into {tmp_path} ({lock} is held): counting the "
                   "event log there too would count each of its calls twice, as Kafka carries them; stop it, or give "
                   "it another --data-dir\n")


@pytest.mark.parametrize("output", ["table", "csv"])
def test_a_table_cut_short_by_a_full_disk_is_an_error_not_exit_0(data_dir: Path, tmp_path: Path, output: str) -> None:
    # `keytrail usage > FILE` on a disk that filled: the table, written in one piece, stopped where
    # the disk did, with exit 0, as if the file held every row.
    import os
    import subprocess
    import sys

    from tests.support.mounts import small_filesystem

    with small_filesystem(tmp_path / "disk", "64k") as disk, (disk / "usage.txt").open("w") as out:
        result = subprocess.run([sys.executable, "-m", "keytrail", "usage", "--data-dir", str(data_dir),
                                 "--by", "key,principal,operation,minute", "--format", output], stdout=out,
                                stderr=subprocess.PIPE, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert (result.returncode, result.stderr) == (1, "keytrail usage: No space left on device\n")


@pytest.mark.parametrize("command", ["usage", "cost", "last-used"])
def test_a_folder_no_node_or_consumer_used_is_refused_not_answered_as_a_quiet_period(tmp_path: Path,
                                                                                    command: str) -> None:
    code, out, err = run(command, "--data-dir", str(tmp_path))
    assert (code, out) == (2, "")
    assert err == f"keytrail {command}: {tmp_path} holds no metrics and no event log: is --data-dir right?\n"
