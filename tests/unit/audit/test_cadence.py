"""A digest each interval, over no new record too (as CloudTrail's hourly digest files), and what
`keytrail audit verify` tells from that cadence: a node down without a clean stop, and digests
removed while records written after them were kept."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from keytrail.audit.integrity import load_digests
from keytrail.audit.schema import decode, encode
from keytrail.audit.trail import AuditSettings, AuditTrail, audit_paths
from keytrail.audit.verification import check
from keytrail.cli.audit import audit_app
from tests.support.audit_records import T0, encrypt_call, rewrite_segment


@dataclass
class Clock:
    """The node's clock, set by the test (digests and records take their times from it)."""

    at: datetime = T0

    def now(self) -> datetime:
        return self.at


async def _session(data_dir: Path, clock: Clock, calls: range, *, every: timedelta = timedelta(0),
                   crash: bool = False) -> None:
    """A node that serves `calls`, one each `every`, then stops (without its final digest, as
    after kill -9, when `crash`)."""
    async with AuditTrail.open(AuditSettings(data_dir=data_dir), now=clock.now) as trail:
        for index in calls:
            clock.at += every
            await trail.record(encrypt_call(index, event_time=clock.at))
    if crash:
        sorted(audit_paths(data_dir)[1].digests.glob("*.json"))[-1].unlink()


async def test_an_idle_node_signs_a_digest_each_interval_naming_the_previous(tmp_path: Path) -> None:
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path, digest_interval_s=0.05)):
        await asyncio.sleep(0.5)  # no call at all
    digests = [digest for _, digest in load_digests(audit_paths(tmp_path)[1])]
    idle = digests[1:-1]  # between the genesis digest and the final one
    assert len(idle) >= 4, digests
    assert all((d["startOffset"], d["endOffset"], d["intervalSeconds"]) == (0, 0, 0.05) for d in idle)
    assert check(tmp_path).problems == []  # each names the one before it


async def test_a_node_down_for_hours_without_a_clean_stop_is_noted(tmp_path: Path) -> None:
    clock = Clock()
    await _session(tmp_path, clock, range(5), crash=True)
    clock.at = T0 + timedelta(hours=5)
    await _session(tmp_path, clock, range(5, 10))
    verdict = check(tmp_path)
    assert verdict.problems == []
    assert ("no digest from 0000000000.json of 2026-11-28T12:00:00Z to 0000000001.json of 2026-11-28T17:00:00Z "
            "(5.0 h; the node signs one every 1.0 h) and no clean stop between: the node was down after a crash or "
            "hung, or the digests and records of that time were removed and a node started again on what was left "
            "(check with --digests)") in verdict.notes


async def test_a_span_without_digests_in_a_data_dir_whose_dev_clock_moved_says_so(tmp_path: Path) -> None:
    """`serve --dev-clock` moved 5 hours forward leaves the same span as a 5-hour outage: the note
    named only a crash, a hang or removed digests, and sent the developer looking for one."""
    from keytrail.cli.node import record_dev_clock
    from keytrail.clock import utc_now

    clock = Clock()
    await _session(tmp_path, clock, range(5), crash=True)
    clock.at = T0 + timedelta(hours=5)
    await _session(tmp_path, clock, range(5, 10))
    record_dev_clock(tmp_path, utc_now() + timedelta(hours=5))
    [span] = [note for note in check(tmp_path).notes if note.startswith("no digest from")]
    assert "the node was down after a crash or hung (this data dir's dev clock, `serve --dev-clock`, went 5.0 h " \
           "ahead: moving it forward leaves such a span), or the digests" in span, span


async def test_a_clean_stop_explains_hours_without_digests(tmp_path: Path) -> None:
    clock = Clock()
    await _session(tmp_path, clock, range(5))
    clock.at = T0 + timedelta(hours=5)
    await _session(tmp_path, clock, range(5, 10))
    verdict = check(tmp_path)
    assert verdict.problems == [] and not [note for note in verdict.notes if note.startswith("no digest from")]


async def test_records_written_hours_after_the_newest_digest_show_the_digests_since_were_removed(
        tmp_path: Path) -> None:
    await _session(tmp_path, Clock(), range(3), every=timedelta(hours=1))  # a digest with each hour's call
    digests = audit_paths(tmp_path)[1].digests
    for signing_the_calls in sorted(digests.glob("*.json"))[1:]:  # only the genesis digest of 12:00 is left
        signing_the_calls.unlink()
    result = CliRunner().invoke(audit_app, ["verify", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stdout == (
        f"record {encrypt_call(2).event_id} at offset 2 was written at 2026-11-28T15:00:00Z, 3.0 h after the newest "
        "digest 0000000000.json of 2026-11-28T12:00:00Z, though a running node signs one every 1.0 h: the digests "
        "signed since were removed, and the records at offsets 0..2 are unsigned (they may have been altered or "
        "removed with their hashes)\n")
    assert json.loads((digests / "0000000000.json").read_text())["intervalSeconds"] == 3600


async def test_calls_served_hours_after_a_crash_are_no_late_records(tmp_path: Path) -> None:
    clock = Clock()
    await _session(tmp_path, clock, range(5), crash=True)
    clock.at = T0 + timedelta(hours=5)
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path), now=clock.now) as trail:
        await trail.record(encrypt_call(5, event_time=clock.at))
        # The restart signed a digest before its first call (the newest one before it is of 12:00).
        assert check(tmp_path).problems == []


async def test_a_clock_set_back_starts_the_cadence_again_rather_than_wait_for_it(tmp_path: Path) -> None:
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path), now=Clock().now) as trail:
        chain = trail.spool.chain
        assert chain.seconds_until_due(T0 + timedelta(minutes=20)) == 40 * 60
        assert chain.digest_due(T0 + timedelta(hours=1))
        assert chain.digest_due(T0 - timedelta(days=1))  # not a day and an hour of silence


async def test_digests_removed_are_named_though_the_last_records_time_was_set_back(tmp_path: Path) -> None:
    await _session(tmp_path, Clock(), range(3), every=timedelta(hours=1))  # a digest with each hour's call
    digests = audit_paths(tmp_path)[1].digests
    for signing_the_calls in sorted(digests.glob("*.json"))[1:]:  # only the genesis digest of 12:00 is left
        signing_the_calls.unlink()

    def back_date_the_last(records: list[bytes]) -> list[bytes]:  # unsigned now: its hash is rewritten too
        event = decode(records[-1])
        event["eventTime"] = "2026-11-28T12:30:00Z"
        return [*records[:-1], encode(event)]

    rewrite_segment(tmp_path, back_date_the_last)
    _, paths = audit_paths(tmp_path)
    stored = paths.hashes.read_bytes()
    paths.hashes.write_bytes(stored[:-32] + hashlib.sha256(_last_payload(tmp_path)).digest())
    problems = check(tmp_path).problems
    assert len(problems) == 1 and problems[0].startswith(
        f"record {encrypt_call(1).event_id} at offset 1 was written at 2026-11-28T14:00:00Z, 2.0 h after"), problems


def _last_payload(data_dir: Path) -> bytes:
    from keytrail.transport.segment_log import SegmentLog

    log = SegmentLog(audit_paths(data_dir)[0])
    return log.read(log.end_offset() - 1, 1)[0][1]
