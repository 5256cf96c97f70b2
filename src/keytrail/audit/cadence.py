"""The digests' cadence, as `keytrail audit verify` checks it offline.

A running node signs a digest every `intervalSeconds` (the digest says which), over no new record
too, as CloudTrail delivers a digest file every hour whatever was logged, and a final one when it
stops cleanly. So, from the digests and records alone, with no clock of its own:

- two digests further apart than the interval (plus slack) with no clean stop between: the node
  was down after a crash, or hung, or what it signed meanwhile was removed and a node started on
  what was left (a note: a crash and a long outage look the same);
- a record in the log written later than the newest digest's interval (plus slack) after it (by
  its own eventTime, which whoever removed the digests could set back too: `--digests` is sure): the
  node was running then, so the digests it signed since were removed (a problem: the records they
  signed are now unsigned and could have been edited with their hashes).

Digests without `intervalSeconds` (written by a keytrail that signed only over new records) promise
nothing and are not checked.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from keytrail.audit.integrity import IMPORT_ORIGIN
from keytrail.audit.schema import SchemaError, decode
from keytrail.transport.segment_log import SegmentLog

__all__ = ["MIN_SLACK_SECONDS", "duration", "late_records", "silent_spans", "slack"]

# How late a digest may be before its absence says something: the timer waits behind a busy spool
# or a slow fsync, and `digestEndTime` has whole seconds.
MIN_SLACK_SECONDS = 60.0


def slack(interval: float) -> float:
    """The delay allowed past the interval: a quarter of it, at least a minute."""
    return max(MIN_SLACK_SECONDS, interval / 4)


def silent_spans(digests: list[dict[str, Any]], dev_clock_ahead: float = 0.0) -> list[str]:
    """A note for each span between consecutive valid `digests` longer than the earlier one's
    interval (plus slack) that no clean stop explains. `dev_clock_ahead`: how far the data dir's
    dev clock (`serve --dev-clock`) went ahead of the wall clock: moving it forward leaves such a
    span too, which is then no sign of a crash."""
    moved = (f"this data dir's dev clock, `serve --dev-clock`, went {duration(dev_clock_ahead)} ahead: moving it "
             "forward leaves such a span") if dev_clock_ahead > 0 else ""
    return [note for earlier, later in itertools.pairwise(digests) if (note := _span_note(earlier, later, moved))]


def _span_note(earlier: dict[str, Any], later: dict[str, Any], moved: str) -> str | None:
    """The note on the span from `earlier` to `later`, if longer than allowed. One session that ran
    no longer than allowed between them (by a clock no wall-clock step moves) had its clock moved
    ahead: said so, where it was told as a crash, a hang or digests removed (a node whose wall
    clock NTP set 48 h ahead and back: "the node was down after a crash or hung")."""
    allowed = _allowed_silence(earlier)
    silence = (_signed_at(later) - _signed_at(earlier)).total_seconds()
    if allowed is None or silence <= allowed:
        return None
    ran = _ran_between(earlier, later)
    if ran is not None and ran <= allowed:
        how = moved or "its wall clock was stepped ahead (NTP, a date set by hand)"
        return (f"digest {_named(later)} is dated {duration(silence)} after {_named(earlier)}, but the node ran "
                f"{duration(ran)} between them, in one session: {how}; the node was not down, and no digest is missing")
    return (f"no digest from {_named(earlier)} to {_named(later)} ({duration(silence)}; the node signs one every "
            f"{duration(earlier['intervalSeconds'])}) and no clean stop between: the node was down after a crash or "
            f"hung{f' ({moved})' if moved else ''}, or the digests and records of that time were removed and a node "
            "started again on what was left (check with --digests)")


def late_records(log: SegmentLog, newest: dict[str, Any]) -> list[str]:
    """A problem when a record after the `newest` digest was written longer after it than that
    digest's interval (plus slack): the node then running signed digests that are gone."""
    allowed, end = _allowed_silence(newest), log.end_offset()
    if allowed is None or newest.get("origin") == IMPORT_ORIGIN or end <= int(newest["endOffset"]):
        return []  # an import's records carry AWS's event times, not the node's
    latest = _latest_record(log, int(newest["endOffset"]))
    if latest is None or (latest[2] - _signed_at(newest)).total_seconds() <= allowed:
        return []
    offset, event, written = latest
    return [f"record {event.get('eventID')} at offset {offset} was written at {written:%Y-%m-%dT%H:%M:%SZ}, "
            f"{duration((written - _signed_at(newest)).total_seconds())} after the newest digest {_named(newest)}, "
            f"though a running node signs one every {duration(newest['intervalSeconds'])}: the digests signed since "
            f"were removed, and the records at offsets {newest['endOffset']}..{end - 1} are unsigned (they may have "
            "been altered or removed with their hashes)"]


def _latest_record(log: SegmentLog, start: int) -> tuple[int, dict[str, Any], datetime] | None:
    """The record from `start` on with the latest eventTime: its offset, event and time. Every one,
    not the last alone: these records are unsigned, and whoever removed the digests since could
    set the last one's time back and leave the others as they were."""
    latest: tuple[int, dict[str, Any], datetime] | None = None
    while batch := log.read(start, 4096):
        for offset, payload in batch:
            event = _decoded(payload)
            written = _event_time(event)
            if written is not None and (latest is None or written >= latest[2]):
                latest = (offset, event, written)
        start = batch[-1][0] + 1
    return latest


def _ran_between(earlier: dict[str, Any], later: dict[str, Any]) -> float | None:
    """Seconds the node ran from `earlier` to `later` when one session signed both (None: digests of
    two sessions, or of a keytrail that named none)."""
    session = earlier.get("session")
    if session is None or later.get("session") != session:
        return None
    ran = float(later.get("runningSeconds", 0)) - float(earlier.get("runningSeconds", 0))
    return ran if ran >= 0 else None


def _allowed_silence(digest: dict[str, Any]) -> float | None:
    """Seconds until the digest after `digest` is late (None: a clean stop's final digest, or
    one that names no interval)."""
    interval = digest.get("intervalSeconds")
    if digest.get("final") or isinstance(interval, bool) or not isinstance(interval, int | float):
        return None
    return interval + slack(interval)


def _signed_at(digest: dict[str, Any]) -> datetime:
    return datetime.strptime(str(digest["digestEndTime"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _named(digest: dict[str, Any]) -> str:
    return f"{int(digest['sequence']):010d}.json of {digest['digestEndTime']}"


def _decoded(payload: bytes) -> dict[str, Any]:
    try:
        return decode(payload)
    except (SchemaError, ValueError, EOFError, IndexError, KeyError):
        return {}


def _event_time(event: dict[str, Any]) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(event["eventTime"]))
    except (KeyError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:g} s"
