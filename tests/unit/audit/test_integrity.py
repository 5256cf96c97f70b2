"""Tamper evidence: `verify` passes on an untouched log and names each kind of tampering."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keytrail.audit.cloudtrail_files import iter_events
from keytrail.audit.integrity import canonical, signing_key, verify, write_retention_floor
from keytrail.audit.schema import decode, encode
from keytrail.audit.trail import AuditSettings, AuditTrail, audit_paths
from keytrail.clock import DEV_CLOCK_FILE
from keytrail.transport.segment_log import Frame, SegmentLog
from tests.support.audit_records import (
    cut_back_to,
    encrypt_call,
    fill_trail,
    flip_bit,
    rewrite_segment,
    sign_again_with_a_new_key,
)
from tests.support.fifo import outcome_beside_a_fifo


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    fill_trail(tmp_path, 20)
    return tmp_path


def test_untouched_log_verifies_clean(data_dir: Path) -> None:
    assert verify(data_dir) == []


def test_private_key_is_owner_only_and_public_key_is_exported(data_dir: Path) -> None:
    _, paths = audit_paths(data_dir)
    assert stat.S_IMODE(os.stat(paths.private_key).st_mode) == 0o600
    assert paths.public_key.read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_a_signing_key_other_users_can_read_is_warned_about(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The root key and the principals file copied with a loose mode (a backup restored with the
    wrong umask, a `cp`) were warned of; the signing key, which signs digests that pass verify, not."""
    _, paths = audit_paths(data_dir)
    caplog.set_level(logging.WARNING)
    signing_key(paths)
    assert caplog.records == []
    paths.private_key.chmod(0o644)
    signing_key(paths)
    assert [record.getMessage() for record in caplog.records] == [
        f"the audit signing key {paths.private_key} can be read by other users (mode 0644): chmod 600 it"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid takes root")
def test_a_signing_key_another_user_owns_or_can_write_is_said_so(data_dir: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    # 0622 was said to be one others "can read", one another user owns not at all.
    _, paths = audit_paths(data_dir)
    caplog.set_level(logging.WARNING)
    signing_key(paths)
    paths.private_key.chmod(0o622)
    signing_key(paths)
    os.chown(paths.private_key, 4242, -1)
    signing_key(paths)
    assert [record.getMessage() for record in caplog.records] == [
        f"the audit signing key {paths.private_key} can be written by other users (mode 0622): chmod 600 it",
        f"the audit signing key {paths.private_key} is owned by uid 4242, not by uid 0 that keytrail runs as: "
        "chown it to uid 0"]


def test_missing_record_is_named(data_dir: Path) -> None:
    rewrite_segment(data_dir, lambda records: records[:5] + records[6:])
    problems = verify(data_dir)
    assert any("offset 5 is missing" in p for p in problems), problems


def _altered(records: list[bytes]) -> list[bytes]:
    event = decode(records[7])
    event["errorCode"] = None
    event["sourceIPAddress"] = "203.0.113.66"
    return [*records[:7], encode(event), *records[8:]]


def test_altered_record_is_named(data_dir: Path) -> None:
    rewrite_segment(data_dir, _altered)
    problems = verify(data_dir)
    assert any("offset 7 was altered" in p for p in problems), problems


def test_altered_record_with_stale_checksum_is_named(data_dir: Path) -> None:
    rewrite_segment(data_dir, _altered, fix_checksums=False)
    problems = verify(data_dir)
    assert any("offset 7: checksum mismatch" in p for p in problems), problems


def test_reordered_records_are_named(data_dir: Path) -> None:
    rewrite_segment(data_dir, lambda r: [*r[:3], r[4], r[3], *r[5:]])
    problems = verify(data_dir)
    assert len(problems) == 1 and "reordered" in problems[0], problems


def test_inserted_record_is_named(data_dir: Path) -> None:
    def insert(records: list[bytes]) -> list[bytes]:
        forged = decode(records[2])
        forged["eventID"] = "forged-event"
        return [*records[:3], encode(forged), *records[3:]]

    rewrite_segment(data_dir, insert)
    # Named once, where it is: the signed records it pushed along are not "inserted after" anything.
    assert verify(data_dir) == ["record forged-event at offset 3 was inserted (not in the hash chain)"]


def test_bytes_that_are_no_record_are_named(data_dir: Path) -> None:
    log_dir, _ = audit_paths(data_dir)
    # a segment file written in by hand: a frame whose checksum fails, then more bytes
    (log_dir / f"{10**6:020d}.seg").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello, more junk")
    problems = verify(data_dir)
    assert f"{10**6:020d}.seg: the record at offset 1000000 is damaged; the 24 bytes from there to the segment's " \
           "end cannot be read" in problems, problems


def test_a_torn_last_write_is_named_as_such_and_is_no_missing_record(data_dir: Path) -> None:
    from keytrail.audit.verification import check

    log_dir, paths = audit_paths(data_dir)
    sorted(paths.digests.glob("*.json"))[-1].unlink()  # no final digest: as after a crash
    [segment] = log_dir.glob("*.seg")
    with segment.open("ab") as handle:
        handle.write(b"\x30\x00\x00\x00\x01\x02\x03\x04half a record")  # a crash in the middle of a write
    verdict = check(data_dir)
    assert verdict.problems == []  # its call was never answered: the record was no stored event
    assert f"{segment.name}: the 21 bytes from record offset 20 to the end are no whole record (a write torn by a " \
           "crash, cut and kept aside when keytrail serve next opens the log, or damage): not a stored event, as a " \
           "record is answered only once it is whole on disk" in verdict.notes


def test_signed_records_cut_mid_record_are_missing_though_the_cut_looks_like_a_torn_write(data_dir: Path) -> None:
    log_dir, _ = audit_paths(data_dir)
    [segment] = log_dir.glob("*.seg")
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) * 3 // 4])  # records 15.. signed, then cut in the middle of one
    problems = verify(data_dir)
    assert "records at offsets 15..19 are missing" in problems, problems


def test_hashes_of_records_a_crash_kept_off_the_disk_are_no_missing_records(tmp_path: Path) -> None:
    from keytrail.audit.verification import check

    fill_trail(tmp_path, 10)
    _, paths = audit_paths(tmp_path)
    sorted(paths.digests.glob("*.json"))[-1].unlink()  # no final digest: as after a crash
    with paths.hashes.open("ab") as hashes:  # hashed (and the hash file written) before the power went
        hashes.write(bytes(range(32)) * 3)
    verdict = check(tmp_path)
    assert verdict.problems == [], verdict.problems
    assert "the hashes of records at offsets 10..12 are stored but the records are not in the log and no digest " \
           "signs them: records a crash kept from being written (never answered), or removed since; verify " \
           "cannot tell which" in verdict.notes
    assert any(note.startswith("the newest digest is not the final one keytrail serve or audit import signs when it "
                               "stops: the writer crashed") for note in verdict.notes), verdict.notes


@pytest.mark.parametrize(("interval", "said"), [(3600, "within 1.0 h,"), (86_400, "within 24.0 h,"),
                                               (5, "within 5 s,")])
async def test_records_not_signed_yet_are_said_to_be_signed_within_the_nodes_digest_interval(
        tmp_path: Path, interval: int, said: str) -> None:
    # "within the hour" was said whatever `serve --digest-interval` the digests name.
    from keytrail.audit.trail import AuditSettings, AuditTrail
    from keytrail.audit.verification import check
    from tests.support.audit_records import encrypt_call

    async with AuditTrail.open(AuditSettings(data_dir=tmp_path, digest_interval_s=interval)) as trail:
        for i in range(3):
            await trail.record(encrypt_call(i))
        assert f"records at offsets 0..2 are not signed yet (a digest signs them {said} when a segment closes and " \
               "when keytrail serve stops)" in check(tmp_path).notes


def test_records_a_crashed_writer_left_unsigned_are_said_to_be_signed_when_the_log_next_opens(tmp_path: Path) -> None:
    # With no writer at work no digest comes "within the hour": the next to open the log signs them.
    from keytrail.audit.verification import check

    fill_trail(tmp_path, 10)
    _, paths = audit_paths(tmp_path)
    sorted(paths.digests.glob("*.json"))[-1].unlink()  # no final digest: as after a crash
    assert "records at offsets 0..9 are not signed yet (no writer is at work: keytrail serve or keytrail audit " \
           "import signs them when it next opens the log)" in check(tmp_path).notes


def test_a_digest_file_renamed_is_named(data_dir: Path) -> None:
    """A digest's file name is not signed: renamed (its place in the name order kept), it passed."""
    _, paths = audit_paths(data_dir)
    newest = sorted(paths.digests.glob("*.json"))[-1]
    renamed = newest.with_name(f"{int(newest.stem) + 6:010d}.json")
    newest.rename(renamed)
    assert verify(data_dir) == [f"digest {renamed.name}: signs sequence {int(newest.stem)}, which is not its file "
                                "name's (the file was renamed)"]


@pytest.mark.parametrize("new_name", ["0000000009.json", "2026-01-05T13.json", "0000000000x.json"])
def test_a_digest_file_renamed_out_of_its_place_is_named_in_one_line(tmp_path: Path, new_name: str) -> None:
    """Checked in name order, a digest renamed past others (to another's number, or to any name,
    as another hour's) broke the chain where it went and where it was: a line for each digest
    between them (sequence, chain, offsets), and records "inserted after the final digest"."""
    for first in (0, 5, 10):
        fill_trail(tmp_path, 5, first=first)  # three sessions: six digests
    _, paths = audit_paths(tmp_path)
    (paths.digests / "0000000002.json").rename(paths.digests / new_name)
    assert verify(tmp_path) == [f"digest {new_name}: signs sequence 2, which is not its file name's (the file was "
                                "renamed)"]


def test_two_digest_files_swapped_are_each_named_once(tmp_path: Path) -> None:
    for first in (0, 5, 10):
        fill_trail(tmp_path, 5, first=first)
    _, paths = audit_paths(tmp_path)
    second, third = paths.digests / "0000000002.json", paths.digests / "0000000003.json"
    second.rename(paths.digests / "swap")
    third.rename(second)
    (paths.digests / "swap").rename(third)
    assert verify(tmp_path) == [f"digest {name}: signs sequence {sequence}, which is not its file name's (the file "
                                "was renamed)" for name, sequence in [(third.name, 2), (second.name, 3)]]


@pytest.mark.parametrize("new_name", ["0000000009.json", "2026-01-05T13.json"])
def test_a_digest_renamed_to_sort_last_stops_the_trail_rather_than_being_signed_on_from(
        tmp_path: Path, new_name: str) -> None:
    # The writer took the last file by name for the newest digest: the opening digest 4 renamed
    # past the final digest 5 had the next start sign digest 5 again, written over the real one.
    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    for first in (0, 5, 10):
        fill_trail(tmp_path, 5, first=first)
    _, paths = audit_paths(tmp_path)
    final = (paths.digests / "0000000005.json").read_bytes()
    (paths.digests / "0000000004.json").rename(paths.digests / new_name)
    with pytest.raises(IntegrityFileUnusable, match=f"the newest audit digest by name, .*{new_name}, signs sequence "
                                                    "4: it was renamed"):
        AuditTrail.open(AuditSettings(data_dir=tmp_path))
    assert (paths.digests / "0000000005.json").read_bytes() == final


def test_a_stray_file_in_the_log_folder_is_not_a_segment(data_dir: Path) -> None:
    log_dir, _ = audit_paths(data_dir)
    (log_dir / "backup.seg").write_bytes(b"anything")
    assert verify(data_dir) == []


def test_altered_hash_store_breaks_signed_chain(data_dir: Path) -> None:
    _, paths = audit_paths(data_dir)
    hashes = bytearray(paths.hashes.read_bytes())
    hashes[32 * 4] ^= 0xFF
    paths.hashes.write_bytes(bytes(hashes))
    problems = verify(data_dir)
    assert any("do not match the signed chain" in p for p in problems), problems


def test_deleted_digest_breaks_digest_chain(tmp_path: Path) -> None:
    fill_trail(tmp_path, 5)
    fill_trail(tmp_path, 5)  # second session: a digest naming the first session's
    _, paths = audit_paths(tmp_path)
    digests = sorted(paths.digests.glob("*.json"))
    assert len(digests) == 4  # the genesis digest, the first session's final one, the second's opening and final
    assert verify(tmp_path) == []
    digests[0].unlink()
    problems = verify(tmp_path)
    assert any("digest chain broken" in p or "sequence" in p for p in problems), problems


def test_edited_digest_fails_its_signature(data_dir: Path) -> None:
    _, paths = audit_paths(data_dir)
    path = sorted(paths.digests.glob("*.json"))[0]
    digest = json.loads(path.read_text())
    digest["endOffset"] = 10
    path.write_text(json.dumps(digest))
    problems = verify(data_dir)
    assert any("signature invalid" in p for p in problems), problems


@pytest.mark.parametrize("content", [b"[1, 2]", b'"a digest"', b"[" * 100_000 + b"]" * 100_000])
def test_a_digest_or_floor_that_is_json_but_no_object_is_a_problem_not_a_crash(
        tmp_path: Path, content: bytes) -> None:
    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    fill_trail(tmp_path, 5)
    fill_trail(tmp_path, 5)
    _, paths = audit_paths(tmp_path)
    digests = sorted(paths.digests.glob("*.json"))
    digests[1].write_bytes(content)
    paths.retention_floor.write_bytes(content)
    problems = verify(tmp_path)
    assert "digest 0000000001.json: signature invalid (digest altered or not ours)" in problems, problems
    assert any(p.startswith(f"retention floor {paths.retention_floor} is not signed") for p in problems), problems
    digests[-1].write_bytes(content)  # the newest: the trail cannot sign on from it
    with pytest.raises(IntegrityFileUnusable, match=f"newest audit digest {digests[-1]} cannot be read"):
        AuditTrail.open(AuditSettings(data_dir=tmp_path))


async def test_verify_on_a_live_node_is_clean(tmp_path: Path) -> None:
    from keytrail.audit.trail import AuditSettings, AuditTrail
    from tests.support.audit_records import encrypt_call

    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        for i in range(5):
            await trail.record(encrypt_call(i))
        assert verify(tmp_path) == []  # records after the last digest, hashes not yet synced


def _insert_a_copy_at_5(records: list[bytes]) -> list[bytes]:
    return [*records[:5], encode(decode(records[5]) | {"eventID": "copy"}), *records[5:]]


@pytest.mark.parametrize(("edit", "named"), [
    (lambda records: records[:5] + records[6:], "record at offset 5 is missing"),
    (_insert_a_copy_at_5, "record copy at offset 5 was inserted (not in the hash chain)"),
])
async def test_verify_on_a_live_node_names_the_record_removed_or_inserted_and_no_other(
        tmp_path: Path, edit: object, named: str) -> None:
    # A running node hashes its newest records a little later: with a record removed before them,
    # the first of those was named inserted, and with one inserted, the newest hashed one missing.
    from keytrail.audit.trail import AuditSettings, AuditTrail
    from tests.support.audit_records import encrypt_call

    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        for i in range(300):  # more than the hashes the node holds back in its write buffer
            await trail.record(encrypt_call(i))
        assert 0 < audit_paths(tmp_path)[1].hashes.stat().st_size // 32 < 300
        rewrite_segment(tmp_path, edit)
        assert verify(tmp_path) == [named]


async def test_verify_on_a_live_node_takes_no_record_for_inserted_when_the_newest_hashed_is_recorded_again(
        tmp_path: Path) -> None:
    # After a kill -9, a call's owed record can be recorded again, byte for byte, after newer calls'
    # records (a shared store waits 120 s first). Matched at its last place, that copy of the newest
    # hashed record named every record between the two "inserted": a false alarm of tampering.
    from keytrail.audit.trail import AuditSettings, AuditTrail
    from tests.support.audit_records import encrypt_call

    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        for i in range(300):
            await trail.record(encrypt_call(i))
        hashed = audit_paths(tmp_path)[1].hashes.stat().st_size // 32
        assert 0 < hashed < 300
        await trail.record(encrypt_call(hashed - 1))  # the newest hashed record, again
        assert audit_paths(tmp_path)[1].hashes.stat().st_size // 32 == hashed
        assert not [problem for problem in verify(tmp_path) if "inserted" in problem]


@pytest.mark.parametrize("left", [b"", b"\x00garbage\xff"])
def test_a_signing_key_or_newest_digest_that_cannot_be_read_stops_the_trail_in_one_line(
        data_dir: Path, left: bytes) -> None:
    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    _, paths = audit_paths(data_dir)
    newest = sorted(paths.digests.glob("*.json"))[-1]
    kept = newest.read_bytes()
    newest.write_bytes(left)  # a chain continued from here could not be linked to the old one
    with pytest.raises(IntegrityFileUnusable, match=f"newest audit digest {newest} cannot be read"):
        AuditTrail.open(AuditSettings(data_dir=data_dir))
    newest.write_bytes(kept)
    paths.private_key.write_bytes(left)  # a new key would sign a chain verify cannot trust
    with pytest.raises(IntegrityFileUnusable, match="audit signing key .* cannot be read .*restore it from a backup"):
        AuditTrail.open(AuditSettings(data_dir=data_dir))


def test_a_public_key_that_cannot_be_read_is_a_verify_problem_not_a_crash(data_dir: Path) -> None:
    _, paths = audit_paths(data_dir)
    paths.public_key.write_bytes(b"")
    [problem] = verify(data_dir)
    assert problem.startswith(f"public key {paths.public_key} cannot be read")


def test_a_zero_filled_tail_is_named_a_torn_write_not_records(data_dir: Path) -> None:
    from keytrail.audit.verification import check

    log_dir, paths = audit_paths(data_dir)
    sorted(paths.digests.glob("*.json"))[-1].unlink()  # no final digest: as after a crash
    [segment] = log_dir.glob("*.seg")
    with segment.open("ab") as handle:
        handle.write(bytes(4096))  # a crash kept the file's new length, not its data
    assert verify(data_dir) == []
    assert f"{segment.name}: the 4096 bytes from record offset 20 to the end are no whole record (a write torn by a " \
           "crash, cut and kept aside when keytrail serve next opens the log, or damage): not a stored event, as a " \
           "record is answered only once it is whole on disk" in check(data_dir).notes


# Bytes appended to the newest segment of a trail stopped cleanly, each what a crash's torn write
# looks like: bytes that begin no frame, zeros, a header of zeros with more after it, a header
# naming a length past the end.
_APPENDED_AFTER_A_CLEAN_STOP = {
    "text": b"EVIL-INJECTED-BYTES-after-clean-stop",
    "zeros": bytes(4096),
    "zero header": bytes(8) + b"bytes after a header of zeros",
    "huge length": struct.pack("<II", 1 << 30, 0) + b"no record of that length follows",
}


@pytest.mark.parametrize("appended", _APPENDED_AFTER_A_CLEAN_STOP.values(), ids=_APPENDED_AFTER_A_CLEAN_STOP)
def test_bytes_appended_after_a_clean_stop_are_named_not_taken_for_a_crashs_torn_write(
        data_dir: Path, tmp_path_factory: pytest.TempPathFactory, appended: bytes) -> None:
    # They passed as a torn write (exit 0): a final digest proves the writer stopped cleanly, so no
    # crash left them.
    import shutil

    from keytrail.audit.verification import OffNode, check

    log_dir, paths = audit_paths(data_dir)
    kept = tmp_path_factory.mktemp("off-node")
    shutil.copytree(paths.digests, kept / "digests")
    shutil.copy(paths.public_key, kept / "signing-key.pub.pem")
    [segment] = log_dir.glob("*.seg")
    with segment.open("ab") as handle:
        handle.write(appended)
    said = (f"{segment.name}: the {len(appended)} bytes from record offset 20 to the end are no whole record, after "
            "the final digest 0000000001.json, signed when keytrail last stopped cleanly: written in while no node "
            "ran, not a write torn by a crash")
    assert check(data_dir).problems == [said]
    assert check(data_dir, OffNode(kept / "signing-key.pub.pem", kept / "digests")).problems == [said]


def _start_over_bytes_appended(data_dir: Path, caplog: pytest.LogCaptureFixture) -> tuple[str, Path]:
    """Append bytes to the newest segment, open the trail and close it: what the start said of
    them, and where it kept them."""
    [segment] = audit_paths(data_dir)[0].glob("*.seg")
    with segment.open("ab") as handle:
        handle.write(b"EVIL-INJECTED-BYTES-after-clean-stop")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        asyncio.run(AuditTrail.open(AuditSettings(data_dir=data_dir)).close())  # it starts
    [kept] = segment.parent.glob("*.cut-at-*")
    assert kept.read_bytes() == b"EVIL-INJECTED-BYTES-after-clean-stop"
    [said] = [record.getMessage() for record in caplog.records if "record offset 20" in record.getMessage()]
    return said, kept


def test_bytes_a_start_cuts_after_a_clean_stop_are_not_called_a_crashs_torn_write(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The start called them "a write torn by a crash"; they are still cut and kept aside.
    fill_trail(tmp_path, 20)
    said, kept = _start_over_bytes_appended(tmp_path, caplog)
    assert said == (f"event log {kept.name.split('.cut-at-')[0]}: the 36 bytes after record offset 20 follow the final "
                    "digest 0000000001.json, signed when keytrail last stopped cleanly: written in while no node ran, "
                    f"not a write torn by a crash; cut, and kept in {kept.name}")


def test_bytes_a_start_cuts_after_a_crash_are_a_torn_write(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fill_trail(tmp_path, 20)
    sorted(audit_paths(tmp_path)[1].digests.glob("*.json"))[-1].unlink()  # no final digest: as after a crash
    said, kept = _start_over_bytes_appended(tmp_path, caplog)
    assert said == (f"event log {kept.name.split('.cut-at-')[0]}: the 36 bytes after record offset 20 were a write "
                    f"torn by a crash; cut, and kept in {kept.name}")


@pytest.mark.parametrize("floor", [8, 10**9])
def test_a_retention_floor_moved_up_does_not_hide_records_still_in_the_log(data_dir: Path, floor: int) -> None:
    # The floor only excuses records retention deleted; records still on disk are checked whatever
    # it says (even signed by the trail's own key: whoever alters records may hold that key too).
    rewrite_segment(data_dir, _altered)
    _, paths = audit_paths(data_dir)
    write_retention_floor(paths, floor, signing_key(paths))
    problems = verify(data_dir)
    assert any("offset 7 was altered" in p for p in problems), problems


def test_a_forged_retention_floor_does_not_excuse_the_oldest_segments_deleted(tmp_path: Path) -> None:
    fill_trail(tmp_path, 60, segment_bytes=2000)
    log_dir, paths = audit_paths(tmp_path)
    oldest, kept = sorted(log_dir.glob("*.seg"))[:2]
    oldest.unlink()  # the first records gone, and a floor saying retention deleted them
    paths.retention_floor.write_text(kept.name[:20].lstrip("0"))
    problems = verify(tmp_path)
    assert problems[0].startswith(f"retention floor {paths.retention_floor} is not signed by the trail's key"), problems
    assert f"records at offsets 0..{int(kept.name[:20]) - 1} are missing (segment files deleted outside retention)" \
        in problems, problems



def _retention_on_a_running_node(data_dir: Path) -> None:
    """What retention does on a running node: note the floor (signed), then delete below it."""
    from keytrail.transport.segment_log import SegmentLog

    log_dir, paths = audit_paths(data_dir)
    writer = SegmentLog(log_dir, writable=True)
    floor = writer.kept_from(30)
    if floor > writer.start_offset():
        write_retention_floor(paths, floor, signing_key(paths))
        writer.delete_before(floor)
    writer.close()


def test_retention_deleting_segments_after_verify_read_the_floor_is_not_named_tampering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit verify` on a running node read the floor, then the log: segments retention deleted
    between the two were named `deleted outside retention`, and an intact trail failed (exit 1)."""
    from keytrail.audit import verification

    fill_trail(tmp_path, 60, segment_bytes=2000)
    read_floor = verification.read_retention_floor
    calls: list[int] = []

    def retention_after_the_first_read(*args: object) -> tuple[int, str | None]:
        floor = read_floor(*args)  # type: ignore[arg-type]
        if not calls:
            _retention_on_a_running_node(tmp_path)
        calls.append(floor[0])
        return floor

    monkeypatch.setattr(verification, "read_retention_floor", retention_after_the_first_read)
    assert verify(tmp_path) == []
    assert calls[0] == 0 and audit_paths(tmp_path)[0].joinpath("00000000000000000000.seg").exists() is False


def test_retention_deleting_a_segment_verify_has_yet_to_open_has_it_read_the_log_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment listed, then deleted by retention before verify opened it, ended verify in a
    FileNotFoundError traceback on an intact trail."""
    from keytrail.transport.segment_log import SegmentLog

    fill_trail(tmp_path, 60, segment_bytes=2000)
    frames = SegmentLog.frames
    reads: list[int] = []

    def retention_after_the_first_record(log: SegmentLog) -> Iterator[Frame]:
        for number, frame in enumerate(frames(log)):
            if number == 0:
                reads.append(frame.offset)
            if number == 1 and len(reads) == 1:
                _retention_on_a_running_node(tmp_path)
            yield frame

    monkeypatch.setattr(SegmentLog, "frames", retention_after_the_first_record)
    assert verify(tmp_path) == []
    assert reads[0] == 0 and reads[1] > 0  # read again, from the oldest segment retention kept

def test_a_segment_renamed_to_start_later_is_named_though_every_record_is_still_there(tmp_path: Path) -> None:
    # Readers stop at the offset it no longer starts at: the records after it are hidden from them.
    fill_trail(tmp_path, 60, segment_bytes=2000)
    second = sorted(audit_paths(tmp_path)[0].glob("*.seg"))[1]
    later = second.with_name(f"{int(second.stem) + 1:020d}.seg")
    second.rename(later)
    problems = verify(tmp_path)
    assert any(p.startswith(f"{later.name} starts at record offset {int(second.stem) + 1} but ") for p in problems), \
        problems


@pytest.mark.parametrize("kept", [0, 3])
def test_a_hash_store_cut_short_is_rebuilt_from_the_log_without_breaking_the_chain(tmp_path: Path, kept: int) -> None:
    fill_trail(tmp_path, 5)  # a digest signs offsets 0..4
    _, paths = audit_paths(tmp_path)
    with paths.hashes.open("r+b") as hashes:  # lost or cut below what the digest signed
        hashes.truncate(32 * kept)
    fill_trail(tmp_path, 5)
    assert verify(tmp_path) == []


def test_hashes_lost_with_records_retention_deleted_are_reported_and_later_digests_still_verify(
        tmp_path: Path) -> None:
    fill_trail(tmp_path, 60, segment_bytes=2000, retention_bytes=5000, reader_grace_s=0)
    _, paths = audit_paths(tmp_path)
    signed = len(list(paths.digests.glob("*.json")))
    paths.hashes.write_bytes(b"")  # the hashes of records no longer in the log cannot come back
    # Reopened without retention: a retention that runs drops the hashes of the records it deleted
    # (placeholders here), and checks the digests that sign them for their signatures and links only.
    fill_trail(tmp_path, 5, segment_bytes=2000)
    problems = verify(tmp_path)
    assert problems and all("do not match the signed chain" in p for p in problems), problems
    assert not any(f"{signed:010d}.json" in p for p in problems), problems  # the new records' digest


def test_a_log_cut_below_its_last_digest_stops_the_trail_in_one_line(data_dir: Path) -> None:
    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    rewrite_segment(data_dir, lambda records: records[:15])  # the last 5 signed records deleted
    with pytest.raises(IntegrityFileUnusable, match="the audit log ends at offset 15 but the last signed digest "
                                                     "covers records up to 20: signed records are gone"):
        AuditTrail.open(AuditSettings(data_dir=data_dir))
    assert any("missing" in problem for problem in verify(data_dir))  # and verify still tells which


def test_a_trail_whose_digests_were_all_deleted_is_named_and_not_signed_again(data_dir: Path) -> None:
    import shutil

    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    _, paths = audit_paths(data_dir)
    shutil.rmtree(paths.digests)  # with them, every signature over records an attacker may have edited
    assert any(p.startswith(f"no signed digest in {paths.digests}: the folder is gone (the digests were deleted)")
               for p in verify(data_dir))
    paths.digests.write_text("x")  # a file where the folder was: said so, not "deleted"
    assert any(p.startswith(f"no signed digest in {paths.digests}: it is not a folder (the digests were replaced)")
               for p in verify(data_dir))
    paths.digests.unlink()
    with pytest.raises(IntegrityFileUnusable, match="holds records up to offset 20 but its signed digests are gone"):
        AuditTrail.open(AuditSettings(data_dir=data_dir))  # a new chain would vouch for the log as it is now
    shutil.rmtree(paths.root)  # the key too: a new key would sign the records afresh
    with pytest.raises(IntegrityFileUnusable, match="its signing key and digests are gone"):
        AuditTrail.open(AuditSettings(data_dir=data_dir))


def test_a_trail_an_older_keytrail_crashed_before_its_first_digest_is_refused_saying_why(data_dir: Path) -> None:
    # Keytrail before the genesis digest made the signing key with the trail but signed the first
    # digest only at the first hour or a clean stop: its trail killed before then has the key and no
    # digest. Refused as digests gone (the log may have been edited since), but a backup has none
    # either: the message names that case and the way on (docs/operations.md, Upgrading, step 8).
    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    _, paths = audit_paths(data_dir)
    for digest in paths.digests.iterdir():  # the old version's trail as its crash left it
        digest.unlink()
    with pytest.raises(IntegrityFileUnusable) as refused:
        AuditTrail.open(AuditSettings(data_dir=data_dir))
    message = str(refused.value)
    assert "its signed digests are gone" in message and f"move {data_dir / 'audit'} aside" in message
    assert "a trail an older keytrail crashed before signing its first digest never had one" in message
    assert "(docs/operations.md, Upgrading)" in message


async def test_digests_that_cannot_be_listed_are_named_so_not_gone(data_dir: Path) -> None:
    # Listed with glob, a digests folder the writer could not read (no permission, a file in its
    # place) held no digest: "its signed digests are gone ... move the trail aside to start a new one".
    import shutil

    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    _, paths = audit_paths(data_dir)
    shutil.move(paths.digests, data_dir / "kept")
    paths.digests.write_text("x")
    with pytest.raises(IntegrityFileUnusable) as refused:
        AuditTrail.open(AuditSettings(data_dir=data_dir))
    assert str(refused.value).startswith(f"cannot list the audit digests in {paths.digests} (Not a directory)")
    assert "gone" not in str(refused.value)
    paths.digests.unlink()
    shutil.move(data_dir / "kept", paths.digests)
    async with AuditTrail.open(AuditSettings(data_dir=data_dir)):  # the trail as it was
        pass
    assert verify(data_dir) == []


def test_a_trail_refused_on_open_gets_no_signing_key(data_dir: Path) -> None:
    # The key was made before the checks refused the trail: kept, announced by nothing, and the
    # next refusal then said that only the digests were gone.
    import shutil

    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    _, paths = audit_paths(data_dir)
    shutil.rmtree(paths.root)
    for _ in range(2):
        with pytest.raises(IntegrityFileUnusable, match="its signing key and digests are gone"):
            AuditTrail.open(AuditSettings(data_dir=data_dir))
    assert not paths.root.exists()


async def test_a_live_trail_has_a_genesis_digest_before_its_first_record(tmp_path: Path) -> None:
    from keytrail.audit.trail import AuditSettings, AuditTrail
    from tests.support.audit_records import encrypt_call

    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        await trail.record(encrypt_call(1))
        _, paths = audit_paths(tmp_path)
        [genesis] = [json.loads(p.read_text()) for p in paths.digests.glob("*.json")]
        assert (genesis["sequence"], genesis["startOffset"], genesis["endOffset"]) == (0, 0, 0)
        assert verify(tmp_path) == []  # the live record is not signed yet, and the trail has its digest 0


def test_a_trail_signed_again_with_another_key_fails_against_the_public_key_kept_elsewhere(
        data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    _, paths = audit_paths(data_dir)
    kept = tmp_path_factory.mktemp("off-node") / "signing-key.pub.pem"
    kept.write_bytes(paths.public_key.read_bytes())
    assert verify(data_dir, kept) == []
    sign_again_with_a_new_key(data_dir)
    assert verify(data_dir) == []  # the data dir alone cannot tell: the key in it is the attacker's
    problems = verify(data_dir, kept)
    assert problems[0].startswith(f"the node's public key {paths.public_key} has the fingerprint "), problems
    assert "the signing key was replaced" in problems[0]
    assert any(p.endswith("signature invalid (digest altered or not ours)") for p in problems[1:]), problems


def test_verify_with_a_public_key_that_cannot_be_read_says_so_in_one_line(data_dir: Path, tmp_path: Path) -> None:
    assert verify(data_dir, tmp_path / "nowhere.pem") == [
        f"--public-key {tmp_path / 'nowhere.pem'} is missing: cannot verify digests"]
    assert verify(data_dir, tmp_path)[0].startswith(f"--public-key {tmp_path} cannot be read")


def test_a_trail_cut_back_with_its_newest_digests_fails_against_the_digests_kept_off_the_node(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    import shutil

    from keytrail.audit.verification import OffNode, check

    kept = tmp_path_factory.mktemp("off-node") / "digests"
    node = tmp_path / "node"
    fill_trail(node, 10)
    fill_trail(node, 10)  # a second session: its digest signs records 10..19
    _, paths = audit_paths(node)
    shutil.copytree(paths.digests, kept)  # as the operator ships them off the node
    assert check(node, OffNode(digests=kept)).problems == []
    cut_back_to(node, records=10, digests=2)
    assert verify(node) == []  # the node alone cannot tell: what is left is a trail that once was
    assert check(node).notes[1].startswith("the newest digest, 0000000001.json of ")
    assert "signs the records before offset 10" in check(node).notes[1]
    problems = check(node, OffNode(digests=kept)).problems
    assert problems == [f"digest {name}, kept off the node, is gone from {paths.digests}: the trail was cut back (the "
                        "records it signed are named missing when their hashes remain)"
                        for name in ("0000000002.json", "0000000003.json")]


def test_a_trail_cut_back_below_what_kafka_acknowledged_is_named(tmp_path: Path) -> None:
    fill_trail(tmp_path, 10)
    fill_trail(tmp_path, 10)
    (tmp_path / "audit" / "shipped-offset").write_text("20")
    assert verify(tmp_path) == []
    cut_back_to(tmp_path, records=10, digests=2)  # consistent in itself, but Kafka holds what it lost
    assert verify(tmp_path) == [f"records at offsets 10..19 are missing: Kafka acknowledged them "
                                f"({tmp_path / 'audit' / 'shipped-offset'}) but the log ends before them"]


def test_a_trail_cut_back_below_what_kafka_acknowledged_does_not_open(tmp_path: Path) -> None:
    """The trail opened, and its new records took offsets below the shipped offset, from which the
    shipper ships: none of them reached Kafka, without a word, until the log grew past it (and by
    then verify no longer saw the cut). A log restored from a backup without its shipped-offset, too."""
    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    fill_trail(tmp_path, 10)
    fill_trail(tmp_path, 10)
    shipped = tmp_path / "audit" / "shipped-offset"
    shipped.write_text("20")
    cut_back_to(tmp_path, records=10, digests=2)
    with pytest.raises(IntegrityFileUnusable) as refused:
        AuditTrail.open(AuditSettings(data_dir=tmp_path))
    assert str(refused.value) == (
        f"the audit log ends at offset 10 but Kafka acknowledged records up to offset 19 ({shipped}): records "
        f"it shipped are gone (`keytrail audit verify` names them); restore {tmp_path / 'audit' / 'log'} from a "
        f"backup, or, if the log was restored from an older backup on purpose, write 10 into {shipped} so that "
        "the calls from there on are shipped (Kafka keeps those the restore undid)")
    assert shipped.read_text() == "20" and len(verify(tmp_path)) == 1  # the evidence left as it was
    shipped.write_text("10")
    fill_trail(tmp_path, 3, first=50)  # as the message says: the trail opens, its records ship from 10
    assert verify(tmp_path) == []


def test_a_damaged_record_kafka_acknowledged_records_follow_is_not_cut_until_the_shipped_offset_says_so(
        tmp_path: Path) -> None:
    """As after a crash before any digest signed them: records 0..9 shipped, record 5 damaged since.
    The writer cut records 5..9, then the trail refused to open (the log ended below the shipped
    offset). Now it refuses first, and cuts once the operator wrote the damaged offset there."""
    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    fill_trail(tmp_path, 10)
    digests = sorted((tmp_path / "audit" / "integrity" / "digests").glob("*.json"))
    for newer in digests[1:]:  # only the genesis digest: none signs the records yet
        newer.unlink()
    shipped = tmp_path / "audit" / "shipped-offset"
    shipped.write_text("10")
    log_dir = tmp_path / "audit" / "log"
    [segment] = log_dir.glob("*.seg")
    flip_bit(segment, _frame_position(segment, 5) + 20)
    before = segment.read_bytes()
    with pytest.raises(IntegrityFileUnusable) as refused:
        AuditTrail.open(AuditSettings(data_dir=tmp_path))
    assert str(refused.value) == (
        f"the audit log {log_dir} is damaged at record offset 5 ({segment.name}), and Kafka acknowledged records up "
        f"to offset 9 ({shipped}): nothing was cut (`keytrail audit verify` names the damage); restore {log_dir} "
        f"from a backup, or, to go on without the records from offset 5 on (Kafka keeps them), write 5 into "
        f"{shipped}, or move {log_dir.parent} aside to start a new trail")
    assert segment.read_bytes() == before and not list(log_dir.glob("*.cut-at-*"))
    shipped.write_text("5")
    fill_trail(tmp_path, 3, first=50)  # as the message says: cut at 5, the new records from there
    assert SegmentLog(log_dir).end_offset() == 8


def _frame_position(segment: Path, record: int) -> int:
    """Where the frame of `record` (counted from the segment's first) begins in `segment`."""
    data, position = segment.read_bytes(), 0
    for _ in range(record):
        position += 8 + int.from_bytes(data[position:position + 4], "little")
    return position


def test_records_added_by_audit_import_are_told_from_calls_the_node_answered(tmp_path: Path) -> None:
    import asyncio

    from keytrail.audit.cloudtrail_files import import_cloudtrail
    from keytrail.audit.verification import check

    fill_trail(tmp_path, 5)
    report = asyncio.run(import_cloudtrail(tmp_path, [Path(__file__).parent / "data" / "aws_documented_examples.json"]))
    fill_trail(tmp_path, 5)  # served again after the import
    verdict = check(tmp_path)
    assert verdict.problems == []
    imported = [note for note in verdict.notes if "keytrail audit import" in note]
    assert imported == [f"records at offsets 5..{4 + report.records} were added by keytrail audit import (digest "
                        "0000000003.json): AWS CloudTrail records, not calls this node answered"]
    _, paths = audit_paths(tmp_path)
    import_digest = paths.digests / "0000000003.json"
    digest = json.loads(import_digest.read_text())
    del digest["origin"]  # passing imported records off as served ones breaks the signature
    import_digest.write_text(json.dumps(digest))
    assert any(p.startswith("digest 0000000003.json: signature invalid") for p in verify(tmp_path))


def test_records_added_after_a_clean_stop_are_named_and_not_signed_on_the_next_start(tmp_path: Path) -> None:
    from keytrail.audit.integrity import IntegrityFileUnusable
    from keytrail.audit.trail import AuditSettings, AuditTrail

    fill_trail(tmp_path, 10)  # stopped cleanly: its final digest signs all ten
    forged: list[bytes] = []

    def forge(records: list[bytes]) -> list[bytes]:
        event = decode(records[3])
        event["eventID"] = "forged-after-stop"
        forged.append(encode(event))
        return [*records, *forged]

    rewrite_segment(tmp_path, forge)
    _, paths = audit_paths(tmp_path)
    with paths.hashes.open("ab") as hashes:  # its hash too, as a careful forger would write it
        hashes.write(hashlib.sha256(forged[0]).digest())
    assert ("records at offsets 10..10 were inserted after the final digest 0000000001.json, signed when keytrail "
            "last stopped cleanly (no node wrote them)") in verify(tmp_path)
    with pytest.raises(IntegrityFileUnusable, match=r"records at offsets 10\.\.10 after the final digest"):
        AuditTrail.open(AuditSettings(data_dir=tmp_path))  # signing it would vouch for it


def test_a_trail_whose_integrity_folder_is_gone_is_checked_against_the_public_key_kept(
        data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    import shutil

    _, paths = audit_paths(data_dir)
    kept = tmp_path_factory.mktemp("off-node") / "signing-key.pub.pem"
    kept.write_bytes(paths.public_key.read_bytes())
    shutil.rmtree(paths.root)
    problems = verify(data_dir, kept)
    assert problems[0] == (f"public key {paths.public_key} is missing: cannot verify digests (the integrity files "
                           "were removed or damaged); the digests are checked against the --public-key copy")
    assert problems[1].startswith("no signed digest in ") and problems[2:] == [
        "records at offsets 0..19 were inserted (not in the hash chain): the first is 00000000-0000-4000-8000-"
        "000000000000"], problems


def test_verify_says_which_records_the_newest_digest_signs_and_whether_it_is_a_clean_stop(tmp_path: Path) -> None:
    # A digest's endOffset is the first offset it does not sign: "up to offset 0" read as signing
    # record 0 of a trail that has none.
    from keytrail.audit.verification import check

    fill_trail(tmp_path / "empty", 0)
    assert check(tmp_path / "empty").notes[1].endswith(
        "signs no record yet; it is the final digest of a clean stop")
    fill_trail(tmp_path / "node", 10)
    assert check(tmp_path / "node").notes[1].endswith(
        "signs the records before offset 10; it is the final digest of a clean stop")


def test_a_segment_deleted_with_the_hash_store_is_named_not_a_crash(tmp_path: Path) -> None:
    # The hash store rebuilt after both were lost holds one zero placeholder per record gone, so the
    # same hash stands at many offsets: verify matched records by hash alone and died (KeyError).
    fill_trail(tmp_path, 30, segment_bytes=2000)
    log_dir, paths = audit_paths(tmp_path)
    sorted(log_dir.glob("*.seg"))[1].unlink()
    paths.hashes.unlink()
    fill_trail(tmp_path, 5, first=30, segment_bytes=2000)
    problems = verify(tmp_path)
    assert any("the records at offsets 3..5 are missing" in p for p in problems), problems
    # The rebuilt store holds the hashes of the records after the gap: they are intact, not altered.
    assert [p for p in problems if p.startswith("record")] == ["records at offsets 3..5 are missing"], problems


def test_a_hash_store_deleted_is_named_as_such_not_as_hashes_running_to_minus_one(data_dir: Path) -> None:
    _, paths = audit_paths(data_dir)
    newest = sorted(paths.digests.glob("*.json"))[-1].name
    paths.hashes.unlink()
    assert f"digest {newest}: covers offsets 0..19 but no record hash is stored (hashes.bin is empty or gone)" \
        in verify(data_dir)


@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_a_hash_store_deleted_or_emptied_is_said_once_not_each_record_as_inserted(data_dir: Path, loss: str) -> None:
    # Each of the 20 records was named "inserted (not in the hash chain)": a line per record, tens
    # of thousands on a busy node, for the one loss the digest's line names already.
    _, paths = audit_paths(data_dir)
    newest = sorted(paths.digests.glob("*.json"))[-1].name
    if loss == "deleted":
        paths.hashes.unlink()
    else:
        paths.hashes.write_bytes(b"")
    assert verify(data_dir) == [
        f"digest {newest}: covers offsets 0..19 but no record hash is stored (hashes.bin is empty or gone)",
        "20 records at offsets 0..19 cannot be checked against the hash chain: no record hash is stored "
        "(hashes.bin is empty or gone)"]


def test_the_records_of_a_segment_deleted_are_named_missing_in_one_line(tmp_path: Path) -> None:
    # Named one line each: the last segment of a busy node deleted was some 45,000 lines.
    fill_trail(tmp_path, 60, segment_bytes=2000)
    log_dir, _ = audit_paths(tmp_path)
    # The log's tail: its last segment that holds records, and the empty one the spool starts once a
    # batch fills a segment.
    segments = sorted(log_dir.glob("*.seg"))
    tail = segments[max(index for index, segment in enumerate(segments) if segment.stat().st_size):]
    for segment in tail:
        segment.unlink()
    assert verify(tmp_path) == [f"records at offsets {int(tail[0].name[:20])}..59 are missing"]
    rewrite_segment(tmp_path, lambda records: [*records[:2], *records[3:]])  # one record: named alone
    assert verify(tmp_path)[0] == "record at offset 2 is missing"


def test_records_moved_together_are_named_in_one_line(data_dir: Path) -> None:
    # A line per record: two segments swapped were some 45,000 lines, as a segment deleted was.
    rewrite_segment(data_dir, lambda r: [*r[:3], *r[8:13], *r[3:8], *r[13:]])
    assert verify(data_dir) == ["records at offsets 3..7 are out of order (were at offsets 8..12: reordered): the "
                                "first is 00000000-0000-4000-8000-000000000008"]


def test_records_inserted_or_altered_together_are_named_in_one_line_each_run(data_dir: Path) -> None:
    def forge(records: list[bytes]) -> list[bytes]:
        forged = []
        for index in (2, 3, 4):
            event = decode(records[index])
            event["eventID"] = f"forged-{index}"
            forged.append(encode(event))
        return [*records[:5], *forged, *records[5:9], *map(_with_another_ip, records[9:12]), *records[12:]]

    rewrite_segment(data_dir, forge)
    assert verify(data_dir) == [
        "records at offsets 12..14 were altered: the first is 00000000-0000-4000-8000-000000000009",
        "records at offsets 5..7 were inserted (not in the hash chain): the first is forged-2"]


def _with_another_ip(record: bytes) -> bytes:
    event = decode(record)
    event["sourceIPAddress"] = "203.0.113.66"
    return encode(event)


def test_many_records_altered_are_diffed_a_stretch_between_unaltered_records_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # verify diffed the whole log's hashes with one difflib pass, quadratic in the records altered:
    # with 43,000 of 100,000 altered it ran 12 minutes (10,000 of 20,000 here: 30 s of CPU). The
    # records whose hash is unique anchor the diff; difflib sees only the stretches between them.
    import difflib

    from keytrail.audit import hash_diff

    compared: list[int] = []

    class Counting(difflib.SequenceMatcher):  # type: ignore[type-arg]
        def __init__(self, junk: None, a: list[bytes], b: list[bytes], autojunk: bool) -> None:
            compared.append(max(len(a), len(b)))
            super().__init__(junk, a, b, autojunk)

    monkeypatch.setattr(hash_diff.difflib, "SequenceMatcher", Counting)
    expected = [hashlib.sha256(b"%d" % i).digest() for i in range(20_000)]
    actual = [hashlib.sha256(b"altered %d" % i).digest() if i % 2 else h for i, h in enumerate(expected)]
    findings = hash_diff.diff_hashes(expected, actual, 100)
    assert findings == [(f"record {{event}} at offset {100 + i} was altered", i) for i in range(1, 20_000, 2)]
    assert compared and max(compared) <= 2  # one altered record between two anchors, never the whole log


@pytest.mark.parametrize(("field", "value"), [
    ("chainHead", "not hex"), ("chainHead", None), ("digestEndTime", "yesterday"), ("startOffset", "0"),
    ("sequence", None), ("endOffset", True), ("intervalSeconds", "hourly"), ("final", "yes"),
])
def test_a_digest_signed_with_the_data_dirs_key_but_malformed_is_a_problem_not_a_crash(
        data_dir: Path, field: str, value: object) -> None:
    # The signing key is in the data dir: whoever can write it can sign any JSON object.
    _, paths = audit_paths(data_dir)
    newest = sorted(paths.digests.glob("*.json"))[-1]
    body = {k: v for k, v in json.loads(newest.read_bytes()).items() if k != "signature"} | {field: value}
    newest.write_bytes(canonical({**body, "signature": signing_key(paths).sign(canonical(body)).hex()}))
    problems = verify(data_dir)
    assert any(p.startswith(f"digest {newest.name}: signed, but not as keytrail writes a digest: {field} ")
               for p in problems), problems


@pytest.mark.parametrize("end", [2**63, 10**12])
def test_a_digest_signed_with_the_data_dirs_key_reaching_past_any_log_is_a_problem_not_a_crash(
        data_dir: Path, end: int) -> None:
    # Its endOffset set how much of hashes.bin verify read: 2**63 was an OverflowError, 10**12 a
    # MemoryError, each a traceback of `keytrail audit verify`.
    _, paths = audit_paths(data_dir)
    newest = sorted(paths.digests.glob("*.json"))[-1]
    body = {k: v for k, v in json.loads(newest.read_bytes()).items() if k != "signature"} | {"endOffset": end}
    newest.write_bytes(canonical({**body, "signature": signing_key(paths).sign(canonical(body)).hex()}))
    problems = verify(data_dir)
    assert any(p.startswith(f"digest {newest.name}: covers offsets ") and f"..{end - 1} but " in p
               for p in problems), problems


def test_a_hash_store_grown_far_past_the_log_is_named_in_one_line_and_not_read_whole(data_dir: Path) -> None:
    # A sparse hashes.bin takes a few bytes on disk; read whole, 3 GiB of it took verify 14 GB of
    # memory and named one zero hash "missing" among a hundred million.
    _, paths = audit_paths(data_dir)
    os.truncate(paths.hashes, 32 * 200_000)
    assert verify(data_dir) == [
        f"{paths.hashes} holds 200000 record hashes, though the log and the signed digests end at offset 20: "
        "hashes written in (a crash leaves at most a few thousand past the end); those past the end are not read"]


def test_a_digest_grown_huge_is_named_without_being_read_into_memory(data_dir: Path, tmp_path: Path) -> None:
    import tracemalloc

    _, paths = audit_paths(data_dir)
    kept = tmp_path / "kept"
    kept.mkdir()
    first = sorted(paths.digests.glob("*.json"))[0]
    (kept / first.name).write_bytes(first.read_bytes())
    os.truncate(first, 256 << 20)  # sparse: a few bytes on disk, 256 MiB to whoever reads it whole
    tracemalloc.start()
    try:
        problems = verify_against_copies(data_dir, kept)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"digest {first.name}: signature invalid (digest altered or not ours)" in problems, problems
    assert f"digest {first.name} differs from its copy kept off the node (digest replaced)" in problems, problems
    assert peak < 32 << 20, peak


def verify_against_copies(data_dir: Path, digests: Path) -> list[str]:
    from keytrail.audit.verification import OffNode, check

    return check(data_dir, OffNode(digests=digests)).problems


def test_records_whose_hashes_a_crash_took_with_it_are_noted_not_named_inserted(tmp_path: Path) -> None:
    from keytrail.audit.verification import check

    fill_trail(tmp_path, 5)
    fill_trail(tmp_path, 5, first=5)  # opens with a digest signing 0..4, adds 5..9
    _, paths = audit_paths(tmp_path)
    # As after kill -9: no final digest, and the hashes of 5..9 were still in the writer's buffer.
    sorted(paths.digests.glob("*.json"))[-1].unlink()
    with paths.hashes.open("r+b") as hashes:
        hashes.truncate(32 * 5)
    verdict = check(tmp_path)
    assert verdict.problems == [], verdict.problems
    assert "records at offsets 5..9 have no stored hash, and no digest signs them: written just before the writer " \
           "crashed (it hashes and signs them when the log next opens), or added since; verify cannot tell " \
           "which" in verdict.notes, verdict.notes


def test_a_record_inserted_before_a_crashed_writers_newest_hashed_one_is_still_named(tmp_path: Path) -> None:
    fill_trail(tmp_path, 5)
    fill_trail(tmp_path, 5, first=5)
    _, paths = audit_paths(tmp_path)
    sorted(paths.digests.glob("*.json"))[-1].unlink()
    with paths.hashes.open("r+b") as hashes:
        hashes.truncate(32 * 8)  # 8 and 9 unhashed
    rewrite_segment(tmp_path, _insert_a_copy_at_5)
    assert any("offset 5 was inserted" in p for p in verify(tmp_path))


@pytest.mark.parametrize("copy_base", [22, 1000])
def test_a_segment_copied_under_another_name_has_its_copies_named_by_their_own_event_ids_and_offsets(
        tmp_path: Path, copy_base: int) -> None:
    """verify counted the records it read one after another but looked their eventIDs up by the
    offsets the segment names give them: a segment copied between two others had the genuine
    records after it named inserted (their eventIDs under the copies' places), one copied past the
    end had copies named at offsets no file gives them, with no eventID."""
    fill_trail(tmp_path, 30, segment_bytes=4000)  # segments of 5 records: 0, 5, …, 25
    log_dir, _ = audit_paths(tmp_path)
    source = log_dir / f"{20:020d}.seg"
    (log_dir / f"{copy_base:020d}.seg").write_bytes(source.read_bytes())
    problems = verify(tmp_path)
    inserted = [p for p in problems if "inserted (not" in p]
    assert inserted == [f"records at offsets {copy_base}..{copy_base + 4} were inserted (not in the hash chain): "
                        "the first is 00000000-0000-4000-8000-000000000020"]
    if copy_base > 30:  # after the clean stop's final digest, and named there too
        after = f"records at offsets {copy_base}..{copy_base + 4} were inserted after the final digest "
        assert any(p.startswith(after) for p in problems), problems


def _fifo_in_place_of(data_dir: Path, name: str) -> Path:
    log_dir, paths = audit_paths(data_dir)
    path = {"digest": paths.digests / "0000000001.json", "public key": paths.public_key,
            "retention floor": paths.retention_floor, "hash store": paths.hashes,
            "segment": sorted(log_dir.glob("*.seg"))[-1], "writer lock": log_dir / "LOCK",
            "shipped offset": log_dir.parent / "shipped-offset", "dev clock": data_dir / DEV_CLOCK_FILE}[name]
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def _named_not_regular(error: object, path: Path) -> bool:
    return isinstance(error, OSError) and error.filename == str(path) and "not a regular file" in str(error.strerror)


@pytest.mark.parametrize("name", ["digest", "public key", "retention floor", "hash store", "segment", "writer lock",
                                  "shipped offset", "dev clock"])
def test_a_fifo_put_in_place_of_a_trail_file_is_named_not_waited_on(data_dir: Path, name: str) -> None:
    """verify opened and read the trail's files as they came: a FIFO in place of any of them (made
    by whoever can write the data dir) kept it waiting for a writer forever, so a scheduled verify
    never ended and never said the trail was tampered with."""
    fifo = _fifo_in_place_of(data_dir, name)
    outcome = outcome_beside_a_fifo(fifo, lambda: verify(data_dir))
    if name in ("writer lock", "dev clock"):  # no trail file: asked only whether a writer is at work, how far
        assert outcome == [[]]                # a dev clock went (as none: `serve --dev-clock` moved no clock)
    elif isinstance(outcome[0], OSError):  # the CLI says it in one line, exit 1
        assert _named_not_regular(outcome[0], fifo)
    else:  # named as a problem of the trail
        assert isinstance(outcome[0], list) and outcome[0], outcome


def test_a_fifo_in_place_of_the_signing_key_is_named_not_waited_on(data_dir: Path) -> None:
    """serve read the signing key as it came: a FIFO in its place kept its start waiting for a
    writer forever, where verify's files are named (test above)."""
    _, paths = audit_paths(data_dir)
    paths.private_key.unlink()
    os.mkfifo(paths.private_key)
    outcome = outcome_beside_a_fifo(paths.private_key, lambda: signing_key(paths))
    assert _named_not_regular(outcome[0], paths.private_key)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_hash_store_that_is_no_regular_file_stops_the_trail_from_opening_in_words_naming_it(
        data_dir: Path, kind: str) -> None:
    """The hash store was opened as it came: a FIFO in its place stopped `serve` with "File or
    stream is not seekable", a link to a device with "Invalid argument", neither naming the file."""
    _, paths = audit_paths(data_dir)
    paths.hashes.unlink()
    if kind == "fifo":
        os.mkfifo(paths.hashes)
    else:
        paths.hashes.symlink_to("/dev/null")
    outcome = outcome_beside_a_fifo(paths.hashes, lambda: AuditTrail.open(AuditSettings(data_dir=data_dir)))
    assert _named_not_regular(outcome[0], paths.hashes)


def test_serve_refuses_a_fifo_in_place_of_the_hash_store_in_one_line(data_dir: Path) -> None:
    _, paths = audit_paths(data_dir)
    paths.hashes.unlink()
    os.mkfifo(paths.hashes)
    result = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data_dir), "--port", "0"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("keytrail serve: not a regular file (a FIFO, a device or a socket in a file's place): "
                             f"{paths.hashes}\n")


def test_a_hash_store_swapped_for_a_fifo_while_the_trail_runs_holds_no_call(tmp_path: Path) -> None:
    """The trail opens the hash store once and keeps it: a FIFO put in its place meanwhile is never
    written to, however many hashes follow (more than a pipe holds), and the next open names it."""
    _, paths = audit_paths(tmp_path)

    async def record_around_a_swap() -> int:
        async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
            await trail.record(encrypt_call(0))
            paths.hashes.unlink()
            os.mkfifo(paths.hashes)
            await asyncio.gather(*(trail.record(encrypt_call(i)) for i in range(1, 3001)))  # 96 KB of hashes
            return trail.spool.chain.end

    assert outcome_beside_a_fifo(paths.hashes, lambda: asyncio.run(record_around_a_swap())) == [3001]
    assert stat.S_ISFIFO(paths.hashes.lstat().st_mode)
    assert sum(1 for _ in iter_events(tmp_path)) == 3001
    outcome = outcome_beside_a_fifo(paths.hashes, lambda: AuditTrail.open(AuditSettings(data_dir=tmp_path)))
    assert _named_not_regular(outcome[0], paths.hashes)


def test_a_fifo_in_place_of_the_shipped_offset_stops_the_trail_from_opening_in_words_naming_it(data_dir: Path) -> None:
    """Read at every open (serve, audit import), the shipped offset was read as it came: a FIFO in
    its place kept the open waiting for a writer forever."""
    fifo = _fifo_in_place_of(data_dir, "shipped offset")
    outcome = outcome_beside_a_fifo(fifo, lambda: AuditTrail.open(AuditSettings(data_dir=data_dir)))
    assert _named_not_regular(outcome[0], fifo)
