"""`keytrail audit …` commands: events, verify, import, export, tail, and bad input."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import zlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from unittest.mock import patch

import pytest
from typer.testing import CliRunner

from keytrail.audit.trail import audit_paths
from keytrail.cli import audit as audit_cli
from keytrail.cli.audit import audit_app
from keytrail.transport.segment_log import SegmentLog, event_log_dir
from tests.support.audit_records import T0, encrypt_call, fill_trail, flip_bit, rewrite_segment
from tests.support.processes import interruptible

EXAMPLES = Path(__file__).parent / "data" / "aws_documented_examples.json"
runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(audit_app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_events_prints_one_cloudtrail_json_record_per_line_oldest_first(tmp_path: Path) -> None:
    fill_trail(tmp_path, 3)
    code, out, _ = _run("events", "--data-dir", str(tmp_path), "--format", "json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3 and all(e["eventSource"] == "kms.amazonaws.com" for e in lines)
    assert sorted(e["eventID"] for e in lines) == sorted(encrypt_call(i).event_id for i in range(3))


def test_events_after_an_import_of_older_history_are_oldest_first_by_event_time(tmp_path: Path) -> None:
    # Records `audit import` appended came after the node's newer calls, in the files' order.
    fill_trail(tmp_path, 3, first=10)  # Encrypt calls at T0 + 10, 11, 12 s
    example = json.loads(EXAMPLES.read_text())["Records"][0]
    seconds = [20, 1, 11, 5]  # one file, out of order, one at the same time as a stored call
    imported = [{**example, "eventID": f"10000000-0000-4000-8000-{i:012d}",
                 "eventTime": (T0 + timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%SZ")}
                for i, s in enumerate(seconds)]
    (tmp_path / "older.json").write_text(json.dumps({"Records": imported}))
    assert _run("import", str(tmp_path / "older.json"), "--data-dir", str(tmp_path))[0] == 0
    code, out, err = _run("events", "--data-dir", str(tmp_path))
    assert (code, err) == (0, "")
    shown = [(e["eventTime"], e["eventID"]) for e in map(json.loads, out.splitlines())]
    stored = [encrypt_call(i) for i in (10, 11, 12)]
    assert [event_id for _, event_id in shown] == [
        imported[1]["eventID"], imported[3]["eventID"], stored[0].event_id, stored[1].event_id,
        imported[2]["eventID"],  # the same second as the call at 11 s, stored after it
        stored[2].event_id, imported[0]["eventID"]]
    assert [time for time, _ in shown] == sorted(time for time, _ in shown)


def test_verify_exit_codes(tmp_path: Path) -> None:
    fill_trail(tmp_path, 6)
    assert _run("verify", "--data-dir", str(tmp_path))[0] == 0
    rewrite_segment(tmp_path, lambda r: r[:2] + r[3:])
    code, out, _ = _run("verify", "--data-dir", str(tmp_path))
    assert code == 1 and "offset 2 is missing" in out


def test_verify_checks_the_digests_against_a_public_key_kept_elsewhere(tmp_path: Path) -> None:
    from keytrail.audit.integrity import fingerprint, signing_key

    node, elsewhere = tmp_path / "node", tmp_path / "elsewhere.pem"
    fill_trail(node, 3)
    _, paths = audit_paths(node)
    elsewhere.write_bytes(paths.public_key.read_bytes())
    code, out, _ = _run("verify", "--data-dir", str(node), "--public-key", str(elsewhere))
    assert code == 0, out
    assert f"digests signed by the key with SHA-256 fingerprint {fingerprint(signing_key(paths).public_key())}" in out
    other = tmp_path / "other"
    fill_trail(other, 1)  # another node's key: not the one this trail was signed with
    code, out, _ = _run("verify", "--data-dir", str(node), "--public-key", str(audit_paths(other)[1].public_key))
    assert code == 1 and "the signing key was replaced" in out and "signature invalid" in out


def test_verify_with_a_public_key_that_is_no_file_says_so_as_digests_does(tmp_path: Path) -> None:
    # A mistyped path is the caller's mistake, said on stderr in one line, not a problem of the trail.
    fill_trail(tmp_path / "node", 1)
    code, out, err = _run("verify", "--data-dir", str(tmp_path / "node"), "--public-key", str(tmp_path / "missing"))
    assert (code, out) == (1, "")
    assert err == f"keytrail audit: --public-key: {tmp_path / 'missing'} is not a file\n"


def test_verify_with_a_public_key_file_that_is_no_public_key_says_so_in_one_line(tmp_path: Path) -> None:
    # It was printed as a problem of the trail, on stdout, in cryptography's words (a link to its FAQ).
    fill_trail(tmp_path / "node", 1)
    private, text = audit_paths(tmp_path / "node")[1].private_key, tmp_path / "notes.txt"
    text.write_text("not a key\n")
    code, out, err = _run("verify", "--data-dir", str(tmp_path / "node"), "--public-key", str(text))
    assert (code, out, err) == (1, "", f"keytrail audit: --public-key {text} cannot be read (not a PEM public "
                                      "key): cannot verify digests\n")
    code, out, err = _run("verify", "--data-dir", str(tmp_path / "node"), "--public-key", str(private))
    assert (code, out) == (1, "")
    assert err == f"keytrail audit: --public-key {private} cannot be read (a private key, not the public " \
                  "signing-key.pub.pem): cannot verify digests\n"


def test_verify_with_digests_that_are_no_folder_says_so_in_one_line(tmp_path: Path) -> None:
    fill_trail(tmp_path / "node", 1)
    (tmp_path / "file").write_text("")
    code, _, err = _run("verify", "--data-dir", str(tmp_path / "node"), "--digests", str(tmp_path / "file"))
    assert code == 1 and err == f"keytrail audit: --digests: {tmp_path / 'file'} is not a folder\n"
    code, out, _ = _run("verify", "--data-dir", str(tmp_path / "node"), "--digests", str(tmp_path))
    assert code == 1 and out == f"--digests {tmp_path} holds no digest (<sequence>.json, as in " \
        f"{audit_paths(tmp_path / 'node')[1].digests})\n"


def test_import_and_export(tmp_path: Path) -> None:
    code, out, err = _run("import", str(EXAMPLES), "--data-dir", str(tmp_path / "node"))
    assert code == 0, err
    assert "imported 9 KMS records" in out and "skipped 1 record of other services" in out
    out_dir, node = str(tmp_path / "out"), str(tmp_path / "node")
    code, out, _ = _run("export", "--format", "cloudtrail", out_dir, "--data-dir", node)
    files = list((tmp_path / "out" / "AWSLogs").rglob("*.json.gz"))
    assert code == 0 and files
    plural = "" if len(files) == 1 else "s"
    assert out == f"wrote {len(files)} CloudTrail log file{plural} under {tmp_path / 'out' / 'AWSLogs'}\n"


def test_a_record_imported_without_event_version_or_user_identity_is_exported_without_them(tmp_path: Path) -> None:
    # They came out as `"eventVersion": ""` (no major.minor a reader can parse) and `"userIdentity": {}`.
    record = {k: v for k, v in json.loads(EXAMPLES.read_text())["Records"][0].items()
              if k not in ("eventVersion", "userIdentity")}
    (tmp_path / "in.json").write_text(json.dumps({"Records": [record]}))
    node, out = str(tmp_path / "node"), tmp_path / "out"
    assert _run("import", str(tmp_path / "in.json"), "--data-dir", node)[0] == 0
    assert _run("export", "--format", "cloudtrail", str(out), "--data-dir", node)[0] == 0
    [exported] = out.rglob("*.json.gz")
    assert json.loads(gzip.decompress(exported.read_bytes()))["Records"] == [record]
    assert [json.loads(line) for line in _run("events", "--data-dir", node, "--format", "json")[1].splitlines()] \
        == [record]


def test_an_import_of_a_gzip_file_cut_short_says_it_was_read_in_part(tmp_path: Path) -> None:
    # It said "imported 0 KMS records from 0 files": the file was read, and its records before the
    # cut are now imported.
    records = json.loads(EXAMPLES.read_text())["Records"]
    compressor = zlib.compressobj(wbits=31)  # gzip, flushed after four records, then cut off
    text = '{"Records": [\n' + ",\n".join(json.dumps(r) for r in records[:4]) + ",\n"
    (tmp_path / "cut.json.gz").write_bytes(compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH))
    node = str(tmp_path / "node")
    code, out, err = _run("import", str(tmp_path / "cut.json.gz"), "--data-dir", node)
    assert (code, out) == (1, "imported 4 KMS records from 1 file read in part; skipped 0 records of other services "
                              "and 0 already in the event log; 1 problem\n")
    assert err == (f"skipped: {tmp_path / 'cut.json.gz'}: line 6: cannot read further: Compressed file ended "
                   "before the end-of-stream marker was reached\n")
    code, out, _ = _run("import", str(tmp_path / "cut.json.gz"), str(EXAMPLES), "--data-dir", node)
    assert (code, out) == (1, "imported 5 KMS records from 2 files (1 read in part); skipped 1 record of other "
                              "services and 8 already in the event log; 1 problem\n")


def test_an_import_run_again_over_the_same_files_counts_their_records_as_already_in_the_log(
    tmp_path: Path
) -> None:
    node = str(tmp_path / "node")
    assert _run("import", str(EXAMPLES), "--data-dir", node)[1] == (
        "imported 9 KMS records from 1 file; skipped 1 record of other services and 0 already in the event log; "
        "0 problems\n")
    code, out, err = _run("import", str(EXAMPLES), "--data-dir", node)
    assert (code, err) == (0, "")
    assert out == ("imported 0 KMS records from 1 file; skipped 1 record of other services and 9 already in the "
                   "event log; 0 problems\n")
    code, out, _ = _run("events", "--data-dir", node)
    assert code == 0 and len(out.splitlines()) == 9


def test_an_export_into_the_data_dir_is_its_owners_alone(tmp_path: Path) -> None:
    # Inside the data dir the log files are what the rest there is: 0600 in 0700 folders, whatever
    # the umask; elsewhere, the umask's mode as any command's output.
    node = tmp_path / "node"
    assert _run("import", str(EXAMPLES), "--data-dir", str(node))[0] == 0
    previous = os.umask(0o022)
    try:
        for out, modes in ((node / "export", {0o600, 0o700}), (tmp_path / "elsewhere", {0o644, 0o755})):
            assert _run("export", str(out), "--data-dir", str(node))[0] == 0
            made = [out, *out.rglob("*")]
            assert {path.stat().st_mode & 0o777 for path in made} == modes and len(made) > 8
    finally:
        os.umask(previous)


def test_bad_input_is_one_line_error_and_nonzero_exit(tmp_path: Path) -> None:
    code, _, err = _run("import", str(tmp_path / "nope.json"), "--data-dir", str(tmp_path))
    assert code == 1 and err.strip().count("\n") == 0 and "no such file" in err
    code, _, err = _run("events", "--data-dir", str(tmp_path / "empty"))
    assert code == 1 and err == f"keytrail audit: no audit event log in {tmp_path / 'empty'} (is --data-dir right?)\n"


def test_import_refuses_while_another_process_writes_the_log(tmp_path: Path) -> None:
    from keytrail.transport.segment_log import SegmentLog

    writer = SegmentLog(audit_paths(tmp_path)[0], writable=True)
    try:
        code, _, err = _run("import", str(EXAMPLES), "--data-dir", str(tmp_path))
    finally:
        writer.close()
    # Said as if only serve wrote the log, where as often another import still runs on it.
    assert code == 1 and err == (
        f"keytrail audit: the event log {audit_paths(tmp_path)[0]} is in use by another process (a `keytrail serve`, "
        "`keytrail root-key rotate` or another `keytrail audit import`: stop it, or let it finish, first)\n")


def test_tail_follows_new_events(tmp_path: Path) -> None:
    fill_trail(tmp_path, 2)
    command = [sys.executable, "-c", "from keytrail.cli.audit import audit_app; audit_app()",
               "tail", "--data-dir", str(tmp_path), "--format", "json", "--interval", "0.05"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as tail:
        assert tail.stdout is not None
        first = [json.loads(tail.stdout.readline()) for _ in range(2)]
        fill_trail(tmp_path, 1)  # a new session appends one more event (same ids, new offset)
        followed = json.loads(tail.stdout.readline())
        tail.terminate()  # stopped as Ctrl-C stops it: exit 0 (was the default action's 143)
        assert tail.wait(30) == 0
    assert {e["eventName"] for e in first} == {"Encrypt"}
    assert followed["eventID"] == encrypt_call(0).event_id


def test_events_as_text_read_records_whatever_their_resources_hold(tmp_path: Path) -> None:
    record = json.loads(EXAMPLES.read_text())["Records"][0]
    odd = [{**record, "eventID": f"r{i}", "resources": resources}
           for i, resources in enumerate([["arn:x"], [{"ARN": 5}, {"ARN": "arn:aws:kms:k"}], {"ARN": "a"}, 7])]
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"Records": odd}))
    assert _run("import", str(path), "--data-dir", str(tmp_path / "node"))[0] == 0
    code, out, _ = _run("events", "--data-dir", str(tmp_path / "node"), "--format", "text")
    assert code == 0
    assert [line.split()[-1] for line in out.splitlines()] == ["-", "arn:aws:kms:k", "-", "-"]


def test_text_lines_escape_control_characters_so_a_record_cannot_forge_lines_or_drive_the_terminal(
        tmp_path: Path) -> None:
    record = json.loads(EXAMPLES.read_text())["Records"][0]
    forged = "2026-11-01T10:00:04Z Decrypt OK arn:aws:iam::444455556666:user/forged -"
    odd = {**record, "eventID": "r0", "eventName": f"Decrypt\n{forged}",
           "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::444455556666:user/m\x1b[2K\rX\u202e"}}
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"Records": [odd]}))
    assert _run("import", str(path), "--data-dir", str(tmp_path / "node"))[0] == 0
    for command in ("events", "tail"):
        extra = ("--no-follow",) if command == "tail" else ()
        code, out, _ = _run(command, "--data-dir", str(tmp_path / "node"), "--format", "text", *extra)
        assert code == 0
        assert len(out.splitlines()) == 1  # the newline in eventName forged no second line
        assert "\\n2026-11-01T10:00:04Z" in out and "user/m\\x1b[2K\\rX\\u202e" in out
        assert out.removesuffix("\n").isprintable()


def test_text_lines_name_the_account_of_a_caller_cloudtrail_gives_no_arn(tmp_path: Path) -> None:
    record = json.loads(EXAMPLES.read_text())["Records"][0]
    # A key owner's copy of a call from another account: CloudTrail names the caller's account alone.
    other = {"type": "AWSAccount", "principalId": "AIDAEXAMPLE", "accountId": "777788889999"}
    path = tmp_path / "cross.json"
    path.write_text(json.dumps({"Records": [{**record, "eventID": "r0", "userIdentity": other}]}))
    assert _run("import", str(path), "--data-dir", str(tmp_path / "node"))[0] == 0
    code, out, _ = _run("events", "--data-dir", str(tmp_path / "node"), "--format", "text")
    assert code == 0
    assert out.split()[3] == "777788889999"


@pytest.mark.parametrize("writer", [False, True], ids=["closed", "a writer at work"])
def test_reading_a_damaged_log_says_so_and_fails(tmp_path: Path, writer: bool) -> None:
    # With a node writing the segment, the damage was taken for a record still being written:
    # `events` printed the two records before it and exited 0.
    fill_trail(tmp_path, 6)
    node = SegmentLog(audit_paths(tmp_path)[0], writable=True) if writer else None  # opened before the damage
    rewrite_segment(tmp_path, lambda r: [*r[:2], r[2][:-1] + b"!", *r[3:]], fix_checksums=False)
    code, out, err = _run("events", "--data-dir", str(tmp_path))
    assert code == 1 and len(out.splitlines()) == 2  # what lies before the damage, then the complaint
    assert "the record at offset 2 is damaged" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run("export", str(tmp_path / "out"), "--data-dir", str(tmp_path))
    assert code == 1 and "is damaged" in err
    if node is not None:
        node.close()


@pytest.mark.parametrize("remove", ["delete", "empty", "rename"])
def test_reading_a_log_with_a_segment_gone_between_others_says_so_and_fails(tmp_path: Path, remove: str) -> None:
    # Readers stop where the records of a segment are missing: events, export and tail printed the
    # segments before it and exited 0, as if the log ended there.
    fill_trail(tmp_path, 60, segment_bytes=2000)
    second = sorted(audit_paths(tmp_path)[0].glob("*.seg"))[1]
    if remove == "delete":
        second.unlink()
    elif remove == "empty":
        second.write_bytes(b"")
    else:  # one record later: nothing is lost from the files, but readers stop at the first
        second.rename(second.with_name(f"{int(second.stem) + 1:020d}.seg"))
    start = int(second.stem)
    for command in (["events"], ["export", str(tmp_path / "out")], ["tail", "--no-follow", "-n", "100"]):
        code, _, err = _run(*command, "--data-dir", str(tmp_path))
        assert code == 1 and len(err.strip().splitlines()) == 1, (command, err)
        assert f"the records at offsets {start}.." in err and "are missing" in err, (command, err)
    assert _run("events", "--data-dir", str(tmp_path))[1].count("\n") == start  # those before the gap


def test_tail_following_an_idle_log_ends_quietly_once_its_reader_is_gone(tmp_path: Path) -> None:
    fill_trail(tmp_path, 2)
    command = [sys.executable, "-m", "keytrail", "audit", "tail", "--data-dir", str(tmp_path), "--format", "json",
               "--interval", "0.05"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as tail:
        assert tail.stdout is not None and tail.stderr is not None
        assert json.loads(tail.stdout.readline())["eventName"] == "Encrypt"
        tail.stdout.close()  # as `| head -1` does after its line; no event comes after
        try:
            code = tail.wait(timeout=20)
        finally:
            tail.kill()
        assert (code, tail.stderr.read()) == (1, b"")  # no traceback, as for `audit events | head -1`


def test_an_export_stopped_by_a_log_it_cannot_read_says_so_not_that_it_cannot_write(tmp_path: Path) -> None:
    fill_trail(tmp_path / "node", 3)
    segment = next(audit_paths(tmp_path / "node")[0].glob("*.seg"))
    segment.unlink()
    segment.mkdir()  # read as a segment, it fails with EISDIR, as one of mode 000 with EACCES
    code, _, err = _run("export", str(tmp_path / "out"), "--data-dir", str(tmp_path / "node"))
    assert (code, err) == (1, f"keytrail audit: cannot read the event log in {tmp_path / 'node'}: "
                              f"Is a directory: {segment}\n")  # the segment named


def test_tail_follows_a_new_trail_started_after_the_old_was_moved_aside(tmp_path: Path) -> None:
    fill_trail(tmp_path, 20)
    command = _tail_json(tmp_path, 1)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as tail:
        assert tail.stdout is not None and tail.stderr is not None
        assert _event_id_shown(tail) == encrypt_call(19).event_id
        (tmp_path / "audit").rename(tmp_path / "audit.old")  # as docs/audit-events.md advises for a new trail
        fill_trail(tmp_path, 3)  # its offsets 0..2, below the 20 shown
        followed = [_event_id_shown(tail) for _ in range(3)]
        tail.terminate()
        note = tail.stderr.read()
    assert sorted(followed) == [encrypt_call(i).event_id for i in range(3)]
    assert "the event log's folder was replaced" in note


def test_tail_reading_a_folder_swapped_in_after_its_last_look_follows_the_new_trail_not_a_cut(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The swap landing between `tail`'s look at the folder and its read: the read went through the
    old folder's index (its segment has the same name), said the log was cut back, showed the new
    trail's records, then found the folder replaced and showed them again."""
    fill_trail(tmp_path, 20)
    followed, shown = audit_cli._FollowedLog(event_log_dir(tmp_path)), audit_cli._ShownRecords()
    offset = audit_cli._show_new(tmp_path, audit_cli.Format.json, followed, 0, shown)
    capsys.readouterr()
    (tmp_path / "audit").rename(tmp_path / "audit.old")
    fill_trail(tmp_path, 3)
    offset = audit_cli._show_new(tmp_path, audit_cli.Format.json, followed, offset, shown)
    out, err = capsys.readouterr()
    assert sorted(json.loads(line)["eventID"] for line in out.splitlines()) == sorted(
        encrypt_call(i).event_id for i in range(3))
    assert offset == 3
    assert "the event log's folder was replaced" in err and "cut back" not in err


def _event_id_shown(tail: subprocess.Popen[str]) -> str:
    """The eventID of the next line `tail` prints; if it ended instead, what it said, in the failure."""
    assert tail.stdout is not None and tail.stderr is not None
    line = tail.stdout.readline()
    assert line, f"audit tail ended, exit {tail.wait(10)}: {tail.stderr.read()}"
    return str(json.loads(line)["eventID"])


def _frames(segment: Path) -> list[tuple[int, bytes]]:
    """(file position, payload) of each record of a segment file."""
    data, frames, position = segment.read_bytes(), [], 0
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "little")
        frames.append((position, data[position + 8 : position + 8 + length]))
        position += 8 + length
    return frames


def _cut_back(segment: Path, offset: int) -> None:
    """Cut the segment back to record `offset`, in place, as a writer opening after a crash cuts a
    torn tail."""
    with segment.open("r+b") as handle:
        handle.truncate(_frames(segment)[offset][0])


def _append(log_dir: Path, payloads: list[bytes]) -> None:
    writer = SegmentLog(log_dir, writable=True)
    writer.append(payloads)
    writer.sync()
    writer.close()


def test_tail_following_a_segment_cut_back_shows_each_new_record_once(tmp_path: Path) -> None:
    """The reader's index of a segment cut back in place pointed past the file's end, or into the
    new records once the file grew again: `tail` showed nothing more, in silence."""
    log_dir, segment, payloads = _trail_to_tail(tmp_path, 20)
    command = _tail_json(tmp_path, 20)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as tail:
        assert tail.stdout is not None and tail.stderr is not None
        shown = [json.loads(tail.stdout.readline())["eventID"] for _ in range(20)]
        # Cut back below five records shown, then eight new ones: the file ends past where it did.
        _cut_back(segment, 15)
        _append(log_dir, payloads[:8])
        after_cut = [json.loads(tail.stdout.readline())["eventID"] for _ in range(8)]
        first_note = tail.stderr.readline()
        # Cut back again, the file now shorter than what was read; the note says it was noticed.
        _cut_back(segment, 18)
        second_note = tail.stderr.readline()
        _append(log_dir, payloads[10:12])
        after_second = [json.loads(tail.stdout.readline())["eventID"] for _ in range(2)]
        tail.terminate()
        rest = tail.stdout.read()
    assert shown == [encrypt_call(i).event_id for i in range(20)]
    assert after_cut == [encrypt_call(i).event_id for i in range(8)]  # offsets 15…22: each once, none before
    assert after_second == [encrypt_call(i).event_id for i in (10, 11)]
    assert rest == ""
    assert "cut back to offset 15" in first_note and "the 5 records shown from there" in first_note
    assert "cut back to offset 18" in second_note and "the 5 records shown from there" in second_note


def _trail_to_tail(data_dir: Path, records: int) -> tuple[Path, Path, list[bytes]]:
    """A trail of `records` calls in `data_dir`: its log folder, newest segment and that segment's payloads."""
    fill_trail(data_dir, records)
    log_dir = audit_paths(data_dir)[0]
    segment = sorted(log_dir.glob("*.seg"))[-1]
    return log_dir, segment, [payload for _, payload in _frames(segment)]


def _tail_json(data_dir: Path, last: int) -> list[str]:
    """`audit tail` in JSON from the last `last` records on, polling every 0.05 s."""
    return [sys.executable, "-m", "keytrail", "audit", "tail", "--data-dir", str(data_dir), "--format", "json",
            "-n", str(last), "--interval", "0.05"]


def test_tail_held_at_a_damaged_record_says_so_and_shows_on_once_it_is_restored(tmp_path: Path) -> None:
    """Damage in the segment a node writes held `tail` in silence: the calls after it never shown."""
    log_dir, segment, payloads = _trail_to_tail(tmp_path, 4)
    writer = SegmentLog(log_dir, writable=True)  # the node, at work
    damaged_at = len(_framed(payloads[:2])) + 8  # the first byte of record 2's payload
    flip_bit(segment, damaged_at)
    writer.append(payloads[:2])  # offsets 4 and 5, after the damage
    writer.sync()
    with subprocess.Popen(_tail_json(tmp_path, 4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as tail:
        assert tail.stdout is not None and tail.stderr is not None
        shown = [json.loads(tail.stdout.readline())["eventID"] for _ in range(2)]
        held = tail.stderr.readline()
        flip_bit(segment, damaged_at)  # restored
        shown += [json.loads(tail.stdout.readline())["eventID"] for _ in range(4)]
        again = tail.stderr.readline()
        tail.terminate()
        assert tail.wait(30) == 0
    writer.close()
    assert shown == [encrypt_call(i).event_id for i in (0, 1, 2, 3, 0, 1)]
    assert held.startswith(f"the audit tail reads the event log in {log_dir} no further than offset 2, at least 1 ")
    assert f"{segment.name}: the record at offset 2 is damaged" in held and "not shown, until the segment" in held
    assert again == f"the audit tail reads the event log in {log_dir} again (it was held at offset 2)\n"


def test_tail_following_a_log_into_a_new_segment_shows_each_record_once_and_no_cut(tmp_path: Path) -> None:
    """Records shown from a segment, then from the next one the writer rolled to: the checksums
    kept for the shown records were trimmed to the new segment's but counted from the wrong
    offset, so the next poll took the log for cut back, said so, and showed records again."""
    log_dir, _, payloads = _trail_to_tail(tmp_path, 20)
    command = _tail_json(tmp_path, 20)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as tail:
        assert tail.stdout is not None and tail.stderr is not None
        shown = [json.loads(tail.stdout.readline())["eventID"] for _ in range(20)]
        writer = SegmentLog(log_dir, writable=True)
        writer.roll()  # offsets 20… in a segment of their own, as a full segment rolls
        writer.append(payloads[:5])
        writer.sync()
        after_roll = [json.loads(tail.stdout.readline())["eventID"] for _ in range(5)]
        writer.append(payloads[5:7])  # a poll or more later: what follows is shown once, nothing again
        writer.sync()
        writer.close()
        after = [json.loads(tail.stdout.readline())["eventID"] for _ in range(2)]
        tail.terminate()
        rest, notes = tail.stdout.read(), tail.stderr.read()
    assert shown == [encrypt_call(i).event_id for i in range(20)]
    assert after_roll + after == [encrypt_call(i).event_id for i in range(7)]
    assert rest == "" and "cut back" not in notes



def test_tail_says_how_many_records_retention_deleted_before_it_showed_them(tmp_path: Path) -> None:
    """Stopped (Ctrl-Z) or far behind for longer than retention waits for readers, `tail` went on
    from the oldest record kept with nothing to say that lines were missing from its output."""
    log_dir, _, payloads = _trail_to_tail(tmp_path, 5)
    command = _tail_json(tmp_path, 5)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as tail:
        assert tail.stdout is not None and tail.stderr is not None
        shown = [json.loads(tail.stdout.readline())["eventID"] for _ in range(5)]
        tail.send_signal(signal.SIGSTOP)
        writer = SegmentLog(log_dir, writable=True)
        for start in (0, 2, 0):  # offsets 5…10 in three segments, as full segments roll
            writer.roll()
            writer.append(payloads[start : start + 2])
        writer.sync()
        assert writer.delete_before(9) == 3  # retention: the segments before the one holding offset 9
        writer.close()
        tail.send_signal(signal.SIGCONT)
        after = [json.loads(tail.stdout.readline())["eventID"] for _ in range(2)]
        tail.terminate()
        notes = tail.stderr.read()
    assert shown == [encrypt_call(i).event_id for i in range(5)]
    assert after == [encrypt_call(i).event_id for i in (0, 1)]  # offsets 9 and 10
    assert notes == ("keytrail audit tail: the 4 records at offsets 5..8 were deleted by retention before they were "
                    "shown; following the log from offset 9\n")

def _framed(payloads: list[bytes]) -> bytes:
    return b"".join(len(p).to_bytes(4, "little") + zlib.crc32(p).to_bytes(4, "little") + p for p in payloads)


def _tail_with_steps(data_dir: Path, steps: dict[int, Callable[[], None]],
                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[list[str], str]:
    """Follow the log with `tail -n 20` (json), running `steps[n]` just before the n-th read of the
    log any reader makes (from 0), for a few polls after the last step: the eventIDs shown, and
    stderr."""
    reads, read = itertools.count(), SegmentLog.read

    def read_after_step(log: SegmentLog, offset: int, max_records: int) -> list[tuple[int, bytes]]:
        if step := steps.get(next(reads)):
            step()
        return read(log, offset, max_records)

    polls = itertools.count()

    def next_poll(_: float) -> None:  # each poll reads at least once: then the steps are all past
        if next(polls) > max(steps) + 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(SegmentLog, "read", read_after_step)
    monkeypatch.setattr(audit_cli.time, "sleep", next_poll)
    audit_cli.tail(data_dir, audit_cli.Format.json, lines=20, follow=True, interval=0.05)
    out, err = capsys.readouterr()
    return [json.loads(line)["eventID"] for line in out.splitlines()], err


def test_tail_shows_each_record_once_wherever_a_cut_and_the_records_after_it_land_between_its_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Cut back to record 15 after the 20 were read, then 8 new records written (in one write, or
    seen half-written), each step just before any one of tail's reads. The new records are framed
    as the old, so the reader's index reads them at offsets 20… as if they followed: landing
    between two reads of one poll (on a loaded machine, the test's cut and append went between the
    read showing the 20 and the poll's last read) the next poll's look, at record 0 and at the
    last shown, found the log as shown, and tail waited for good, the cut unsaid; landing between
    the look and the read, tail showed records 20… then again from the cut."""
    fill_trail(tmp_path / "filled", 20)
    filled = sorted(audit_paths(tmp_path / "filled")[0].glob("*.seg"))[-1]
    new = _framed([payload for _, payload in _frames(filled)][:8])
    old_ids, new_ids = [encrypt_call(i).event_id for i in range(20)], [encrypt_call(i).event_id for i in range(8)]
    whole = [(cut, len(new), write, write) for cut in range(1, 9) for write in range(cut, 10)]
    halves = [(cut, split, first, rest) for split in (len(new) * 7 // 16, len(new) * 13 // 16)
              for cut in range(1, 6) for first in range(cut, 7) for rest in range(first + 1, 8)]
    for case, (cut, split, first, rest) in enumerate(whole + halves):
        data_dir = tmp_path / str(case)
        shutil.copytree(tmp_path / "filled", data_dir)
        segment = sorted(audit_paths(data_dir)[0].glob("*.seg"))[-1]
        steps = {cut: lambda segment=segment: _cut_back(segment, 15)}
        for step, part in ((first, new[:split]), (rest, new[split:])):  # the writer's one write(2), seen in two
            steps[step] = lambda before=steps.get(step), part=part, segment=segment: _after(before, segment, part)
        shown, notes = _tail_with_steps(data_dir, steps, monkeypatch, capsys)
        monkeypatch.undo()
        kept = len(shown) - 8  # 15 when the cut came before the 5 records after it were shown
        where = f"cut before read {cut}, the new records before reads {first} and {rest} (split at {split})"
        assert shown == old_ids[:kept] + new_ids and kept in (15, 20), where
        assert notes == ("" if kept == 15 else "keytrail audit tail: the event log was cut back to offset 15 (a torn "
                         "tail cut by a restarted keytrail serve): the 5 records shown from there are no longer in "
                         "it; following the log from there\n"), where


def _after(before: Callable[[], None] | None, segment: Path, part: bytes) -> None:
    if before is not None:
        before()
    with segment.open("ab") as handle:
        handle.write(part)


@pytest.mark.parametrize(("signame", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_export_stopped_by_a_signal_says_what_it_left_in_one_line(tmp_path: Path, signame: str,
                                                                    status: int) -> None:
    """Stopped halfway, export exited 130 without a word (and 143's SIGTERM killed it where it was),
    though the folder then holds part of the log, which a second export beside it would double."""
    fill_trail(tmp_path / "node", 5)
    out = tmp_path / "out"
    stopped_halfway = f"""
import os, signal, sys
from keytrail.audit import cloudtrail_files
write = cloudtrail_files._write_log_file
def write_then_stop(*args, **kwargs):
    path = write(*args, **kwargs)
    os.kill(os.getpid(), signal.{signame})  # Ctrl-C, or `kill <pid>`, after the first file
    return path
cloudtrail_files._write_log_file = write_then_stop
cloudtrail_files.EXPORT_FILE_RECORDS = 2
from keytrail.cli import main
sys.argv = ["keytrail", "audit", "export", "--data-dir", {str(tmp_path / "node")!r}, {str(out)!r}]
main()
"""
    result = subprocess.run([sys.executable, "-c", stopped_halfway], capture_output=True, text=True, timeout=120,
                            preexec_fn=interruptible)
    assert result.returncode == status, result.stderr
    assert result.stderr.strip() == (
        f"keytrail audit: export stopped before the end: {out / 'AWSLogs'} holds part of the event log (run the same "
        "export again to finish it: it writes the same files over these)")
    assert len(list(out.rglob("*.json.gz"))) == 1


def test_an_export_killed_halfway_is_finished_by_running_it_again_into_the_same_folder(tmp_path: Path) -> None:
    """The second export wrote all files again beside the first one's: every record they held twice."""
    fill_trail(tmp_path / "node", 9)
    out, whole = tmp_path / "out", tmp_path / "whole"
    killed_halfway = f"""
import os, sys
from keytrail.audit import cloudtrail_files
write, written = cloudtrail_files._write_log_file, []
def write_then_die(*args, **kwargs):
    written.append(write(*args, **kwargs))
    if len(written) == 2:
        os._exit(137)  # kill -9 after the second file
    return written[-1]
cloudtrail_files._write_log_file = write_then_die
cloudtrail_files.EXPORT_FILE_RECORDS = 2
from keytrail.cli import main
sys.argv = ["keytrail", "audit", "export", "--data-dir", {str(tmp_path / "node")!r}, {str(out)!r}]
main()
"""
    killed = subprocess.run([sys.executable, "-c", killed_halfway], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 137 and len(list(out.rglob("*.json.gz"))) == 2, killed.stderr
    with patch("keytrail.audit.cloudtrail_files.EXPORT_FILE_RECORDS", 2):
        assert _run("export", str(out), "--data-dir", str(tmp_path / "node"))[0] == 0
        assert _run("export", str(whole), "--data-dir", str(tmp_path / "node"))[0] == 0
    assert _exported(out) == _exported(whole) and len(_exported(whole)) == 5


def test_an_export_run_again_after_the_log_grew_replaces_its_files_never_doubles_a_record(tmp_path: Path) -> None:
    """A periodic export into one folder (for Athena, say): the first run's last file of an hour
    was written again, under a new name, with the records since, beside the one it replaced."""
    node, out, whole = tmp_path / "node", tmp_path / "out", tmp_path / "whole"
    fill_trail(node, 3)
    assert _run("export", str(out), "--data-dir", str(node))[0] == 0
    before = _exported(out)
    fill_trail(node, 4, first=3)  # the same account, Region and hour: the first run's file grows
    assert _run("export", str(out), "--data-dir", str(node))[0] == 0
    assert _run("export", str(whole), "--data-dir", str(node))[0] == 0
    after = _exported(out)
    assert after == _exported(whole) and before.keys() <= after.keys()
    every_record = [event_id for ids in after.values() for event_id in ids]
    assert len(every_record) == len(set(every_record)) == 7


def test_an_export_of_a_restored_log_into_the_folder_of_an_earlier_export_keeps_its_files(tmp_path: Path) -> None:
    """A node restored from an older backup numbers its new calls from the backup's end again, at
    offsets an export taken before the restore named files by: the nightly export wrote its files
    over those, and the calls only that export still held were gone from it without a word."""
    node, backup, out = tmp_path / "node", tmp_path / "backup", tmp_path / "out"
    fill_trail(node, 3)
    shutil.copytree(node, backup)
    fill_trail(node, 4, first=3)  # calls after the backup: in the export, then lost with the restore
    assert _run("export", str(out), "--data-dir", str(node))[0] == 0
    before = _exported(out)
    shutil.rmtree(node)
    shutil.copytree(backup, node)
    fill_trail(node, 2, first=100)  # the restored node's calls, at the offsets of 3 and 4
    code, stdout, err = _run("export", str(out), "--data-dir", str(node))
    [name] = before
    assert (code, stdout) == (1, "")
    assert err == (f"keytrail audit: {out / name} holds records the event log does not (eventID "
                   f"{encrypt_call(3).event_id} first): the log was restored from an older backup, or is another "
                   "trail, since that export; export into another folder (that file keeps calls the log no "
                   "longer holds)\n")
    assert _exported(out) == before


def _exported(out: Path) -> dict[str, list[str]]:
    """Each file's name (under AWSLogs) and the eventIDs it holds."""
    return {str(path.relative_to(out)): [record["eventID"] for record in json.loads(gzip.decompress(
        path.read_bytes()))["Records"]] for path in sorted(out.rglob("*")) if path.is_file()}
