"""Denied calls are the AccessDenied errors, each event counted once."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from keytrail.pipeline.frame import frame_from_records
from keytrail.reports.denied import DeniedTally, denied_calls
from tests.unit.reports.records import key_arn, record, user_arn

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)


def test_denied_calls_count_access_denied_only() -> None:
    key = key_arn("k1")
    frame = frame_from_records([
        record("Decrypt", T0, key, user_arn("mallory"), error="AccessDenied"),
        record("Decrypt", T0 + timedelta(minutes=5), key, user_arn("mallory"), error="AccessDeniedException"),
        record("Decrypt", T0, key, user_arn("alice"), error="InvalidCiphertextException"),
        record("Decrypt", T0, key, user_arn("alice")),
    ])
    rows = denied_calls(frame).sort("errorCode").to_dicts()
    assert [(r["principalArn"], r["errorCode"], r["count"]) for r in rows] == [
        (user_arn("mallory"), "AccessDenied", 1), (user_arn("mallory"), "AccessDeniedException", 1)]


def test_a_denial_recorded_without_resources_is_of_the_key_its_error_message_names() -> None:
    # As the detector's unauthorized-decrypt alarm names it: the table said "(no key)".
    key = key_arn("1234abcd-12ab-34cd-56ef-1234567890ab")
    denied = record("Decrypt", T0, key, user_arn("eve"), error="AccessDenied")
    denied["errorMessage"] = f"User: {user_arn('eve')} is not authorized to perform: kms:Decrypt on resource: {key}"
    del denied["resources"]
    [row] = denied_calls(frame_from_records([denied])).to_dicts()
    assert (row["keyArn"], row["count"]) == (key, 1)


def test_tally_counts_a_redelivered_event_once_and_keeps_first_and_last_time() -> None:
    key = key_arn("k1")
    first = record("Decrypt", T0, key, user_arn("mallory"), error="AccessDenied")
    later = record("Decrypt", T0 + timedelta(hours=2), key, user_arn("mallory"), error="AccessDenied")
    tally = DeniedTally()
    tally.add(frame_from_records([first, first]))
    tally.add(frame_from_records([later, first]))
    [row] = tally.frame().to_dicts()
    assert row["count"] == 2
    assert (row["firstDenied"], row["lastDenied"]) == (T0, T0 + timedelta(hours=2))


def test_tally_keeps_only_the_period() -> None:
    key = key_arn("k1")
    tally = DeniedTally(since=T0, until=T0 + timedelta(hours=1))
    tally.add(frame_from_records([
        record("Encrypt", T0 - timedelta(seconds=1), key, error="AccessDenied"),
        record("Encrypt", T0, key, error="AccessDenied"),
        record("Encrypt", T0 + timedelta(hours=1), key, error="AccessDenied"),
    ]))
    assert tally.frame().get_column("count").to_list() == [1]


def test_tally_bounds_inside_a_minute_act_on_whole_minutes_as_usage_does() -> None:
    # `keytrail usage` (the report's usage table) keeps minutes, and takes those that start in
    # [since, until): the denied table must count the same AccessDenied calls as its errorCount.
    key = key_arn("k1")
    inside = T0 + timedelta(seconds=59)
    since, until = T0 + timedelta(seconds=30), T0 + timedelta(seconds=30)
    calls = frame_from_records([record("Decrypt", inside, key, user_arn("mallory"), error="AccessDenied")])
    after, before = DeniedTally(since=since), DeniedTally(until=until)
    after.add(calls)
    before.add(calls)
    assert after.frame().height == 0
    assert before.frame().get_column("count").to_list() == [1]

def test_empty_tally_has_the_denied_columns() -> None:
    assert DeniedTally().frame().columns == ["keyArn", "principalArn", "accountId", "eventName", "errorCode",
                                             "count", "firstDenied", "lastDenied"]


_HELD_BY_A_LONG_TALLY = """
import polars as pl
from keytrail.pipeline.frame import empty_frame
from keytrail.reports.denied import DeniedTally

def resident_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon")).split()[1]) // 1024

def batch(number, size=50_000):
    rows = range(size)
    return empty_frame().vstack(pl.DataFrame({
        "eventID": [f"{number:08d}-0000-4000-8000-{i:012d}" for i in rows],
        "eventTime": [None] * size,
        "eventName": ["Decrypt"] * size,
        "keyArn": [f"arn:aws:kms:us-east-1:111122223333:key/{number}-{i:036d}" for i in rows],
        "principalArn": [f"arn:aws:iam::111122223333:role/service-{number}-{i:030d}" for i in rows],
        "errorCode": ["AccessDenied" if i % 1000 == 0 else None for i in rows],
    }).select(pl.col(c).cast(t) if c in ("eventID", "eventTime", "eventName", "keyArn", "principalArn",
                                          "errorCode") else pl.lit(None, t).alias(c)
              for c, t in empty_frame().schema.items()))

tally, before = DeniedTally(), resident_mb()
for number in range(40):
    tally.add(batch(number))
print(resident_mb() - before, tally.frame().height)
"""


def test_a_long_tally_holds_its_denied_rows_not_the_batches_they_came_from() -> None:
    # 40 batches of 50,000 events (≈ 9 MB of strings each), 50 denied calls in each: what the tally
    # keeps is 2,000 rows, not the batches. Measured in a process of its own with polars' allocator
    # returning freed pages at once, so resident memory is what is still referenced.
    env = {**os.environ, "_RJEM_MALLOC_CONF": "dirty_decay_ms:0,muzzy_decay_ms:0"}
    run = subprocess.run([sys.executable, "-c", _HELD_BY_A_LONG_TALLY], env=env, capture_output=True,
                         text=True, check=True)
    held_mb, rows = map(int, run.stdout.split())
    assert rows == 40 * 50
    assert held_mb < 60  # ≈ 360 MB when each kept row pinned its batch's strings
