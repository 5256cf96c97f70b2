"""`keytrail audit verify` on the digests of a node whose clock was moved ahead while it ran: a
span between two digests that the node did not spend down is told as a clock step, not a crash."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from keytrail.audit.integrity import load_digests
from keytrail.audit.trail import AuditSettings, AuditTrail, audit_paths
from keytrail.audit.verification import check
from tests.support.audit_records import T0, encrypt_call
from tests.unit.audit.test_cadence import Clock, _session


async def test_a_clock_set_hours_ahead_while_the_node_runs_is_no_outage(tmp_path: Path) -> None:
    """NTP set the node's clock 5 h ahead between two calls: the digest the next call brought was
    5 h after the one before, and verify said the node was down after a crash or hung, or the
    digests of that time were removed, of a node that never stopped."""
    clock = Clock()
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path), now=clock.now) as trail:
        await trail.record(encrypt_call(0, event_time=clock.at))
        clock.at += timedelta(hours=5)
        await trail.record(encrypt_call(1, event_time=clock.at))
    verdict = check(tmp_path)
    assert verdict.problems == []
    assert not [note for note in verdict.notes if note.startswith("no digest from")], verdict.notes
    [stepped] = [note for note in verdict.notes if " in one session: " in note]
    assert stepped.startswith("digest 0000000001.json of 2026-11-28T17:00:00Z is dated 5.0 h after "
                              "0000000000.json of 2026-11-28T12:00:00Z, but the node ran "), stepped
    assert stepped.endswith(" between them, in one session: its wall clock was stepped ahead (NTP, a date set by "
                            "hand); the node was not down, and no digest is missing"), stepped


async def test_each_session_names_itself_and_how_long_it_ran_in_its_digests(tmp_path: Path) -> None:
    clock = Clock()
    await _session(tmp_path, clock, range(2))
    await _session(tmp_path, clock, range(2, 4))
    digests = [digest for _, digest in load_digests(audit_paths(tmp_path)[1])]
    sessions = [digest["session"] for digest in digests]
    assert len(set(sessions)) == 2 and sessions == sorted(sessions, key=sessions.index)  # one run each
    assert all(digest["runningSeconds"] >= 0 for digest in digests)


async def test_digests_of_two_sessions_hours_apart_are_still_an_outage(tmp_path: Path) -> None:
    """A crash and a start 5 hours later: the second session's digests say nothing of the hours
    between, so the note stays the outage's."""
    clock = Clock()
    await _session(tmp_path, clock, range(5), crash=True)
    clock.at = T0 + timedelta(hours=5)
    await _session(tmp_path, clock, range(5, 10))
    notes = check(tmp_path).notes
    assert [note for note in notes if note.startswith("no digest from")] and not [
        note for note in notes if " in one session: " in note]
