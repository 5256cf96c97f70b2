"""`DetectorRunner.feed_values`: the audit topic's values, Avro or JSON, damaged ones skipped."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.unit.detect.records import T0, denied, event, key_arn, user

from keytrail.audit.schema import encode
from keytrail.detect.runner import DetectorRunner


def _records() -> list[dict[str, Any]]:
    """Denied decrypts by eve (an alarm whose count grows) among a few allowed calls."""
    records = [denied("Decrypt", T0 + timedelta(seconds=i), key_arn(7), user("eve")) for i in range(4)]
    records.insert(2, event("Encrypt", T0 + timedelta(seconds=1), key_arn(7), user("alice")))
    return records


def _summary(runner: DetectorRunner) -> list[tuple[str, str | None, int]]:
    return [(alarm.rule, alarm.key_arn, alarm.count) for alarm in runner.alarms()]


async def _fed_records(tmp_path: Path, records: list[dict[str, Any]]) -> list[tuple[str, str | None, int]]:
    runner = DetectorRunner.open(tmp_path / "records")
    await runner.feed(records)
    return _summary(runner)


async def test_avro_and_json_values_give_the_alarms_their_records_give(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    records = _records()
    values = [encode(r) for r in records[:3]] + [json.dumps(records[3]).encode(), encode(records[4])]
    runner = DetectorRunner.open(tmp_path / "values")
    with caplog.at_level(logging.WARNING):
        await runner.feed_values(values)
    expected = await _fed_records(tmp_path, records)
    assert _summary(runner) == expected and expected[0][2] == 4  # eve's four denied decrypts, one alarm
    assert not caplog.text  # the Avro values went through the columnar reader, none one by one


async def test_values_nobody_can_read_are_skipped_and_the_rest_kept(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    records = _records()
    good = [encode(r) for r in records]
    damaged = good[0][:10] + b"\xff" * 40  # a known writer's header over a body that is no record
    values = [good[0], good[1], damaged, good[2], b"\xc3\x01 no known writer", b"not json", good[3], good[4]]
    runner = DetectorRunner.open(tmp_path / "values")
    with caplog.at_level(logging.WARNING):
        await runner.feed_values(values)
    assert _summary(runner) == await _fed_records(tmp_path, records)
    assert "decoding them one by one" in caplog.text  # the damaged value sent its run to the record decoder


@pytest.mark.parametrize("odd", [b"null", b"123", b"[]", b'"text"'])
async def test_a_json_value_that_is_no_object_is_skipped_and_the_rest_of_its_batch_judged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, odd: bytes
) -> None:
    # JSON that parses to no record (another producer's null, a number, a list) went on to the
    # rules, which failed on it: the detector passed over the rest of the fetch (up to 5,000 calls).
    records = _records()
    values = [encode(r) for r in records[:2]] + [odd] + [encode(r) for r in records[2:]]
    runner = DetectorRunner.open(tmp_path / "values")
    with caplog.at_level(logging.WARNING):
        await runner.feed_values(values)
    assert _summary(runner) == await _fed_records(tmp_path, records)
    assert "skipping an audit message that cannot be decoded: not a JSON object" in caplog.text


async def test_a_value_that_made_the_columnar_reader_panic_is_skipped_without_panic_text(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """polars' reader panicked on some damaged bodies (here: a value cut two bytes after its header):
    its PanicException is no Exception, so it went through the fallback to the record decoder and
    ended `detect --kafka`, and Rust printed its panic text on stderr. The reader now reports the
    damage as an error, and the record decoder skips the value."""
    import polars as pl

    from keytrail.detect.avro_events import EVENT_FIELDS
    from keytrail.pipeline.decode import read_writer_columns

    records = _records()
    good = [encode(r) for r in records]
    values = [good[0], good[1][:12], *good[2:]]
    with pytest.raises(pl.exceptions.ComputeError):  # what the damage does to the reader now
        read_writer_columns(values[0][:10], values, EVENT_FIELDS)
    runner = DetectorRunner.open(tmp_path / "values")
    await runner.feed_values(values)
    assert _summary(runner) == await _fed_records(tmp_path, [records[0], *records[2:]])
    assert "panicked" not in capfd.readouterr().err


@pytest.mark.parametrize("millis", [2**62, -(2**60), 253402300800000])  # the last: 10000-01-01
async def test_a_value_whose_event_time_is_past_a_dates_range_is_skipped_and_the_rest_of_its_batch_judged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, millis: int
) -> None:
    """A poisoned message: its eventTime long, damaged, read by the columnar reader as any long. Its
    event's time overflowed (OverflowError, which the per-record skip did not catch), so the batch
    was passed over, every other call in it (up to 5,000) unjudged."""
    from keytrail.audit import schema

    records = _records()
    values = [encode(r) for r in records]
    _, start = schema._event_id_span(values[1])  # eventTime follows eventID
    _, end = schema._read_long(values[1], start)
    values[1] = values[1][:start] + schema.avro_long(millis) + values[1][end:]
    runner = DetectorRunner.open(tmp_path / "values")
    with caplog.at_level(logging.WARNING):
        await runner.feed_values(values)
    assert _summary(runner) == await _fed_records(tmp_path, [records[0], *records[2:]])
    assert f"skipping unreadable CloudTrail record {records[1]['eventID']}" in caplog.text


async def test_the_runner_s_lag_is_what_its_source_held_after_the_last_batch_judged(tmp_path: Path) -> None:
    # `detect --kafka --metrics-port` serves it as keytrail_detector_lag: how far behind its alarms are.
    from collections.abc import AsyncIterator

    from keytrail.detect.sources import ValueBatch

    runner, values = DetectorRunner.open(tmp_path), [encode(record) for record in _records()]
    seen: list[dict[str, int]] = []

    async def batches() -> AsyncIterator[ValueBatch]:
        yield ValueBatch(values[:2], "p0", lag={"keytrail.audit.v1-0": 3, "keytrail.audit.v1-1": 5})
        seen.append(dict(runner.lag))  # asked for the next batch: the first is judged
        yield ValueBatch(values[2:], "p1", lag={"keytrail.audit.v1-0": 0, "keytrail.audit.v1-1": 5})

    await runner.run(batches())
    assert seen == [{"keytrail.audit.v1-0": 3, "keytrail.audit.v1-1": 5}]
    assert runner.lag == {"keytrail.audit.v1-0": 0, "keytrail.audit.v1-1": 5}


async def test_a_runner_behind_its_source_keeps_one_alarm_for_calls_of_one_window(tmp_path: Path) -> None:
    # A live detector hours behind the clock (a slower partition, a backlog) ticked as of the clock
    # and let go of the open alarm of the events it was reading: the same principal denied on the
    # same key ten minutes later (stream time) paged again as a second alarm.
    from collections.abc import AsyncIterator

    from keytrail.clock import ManualClock
    from keytrail.detect.alarms import Alarm
    from keytrail.detect.sources import ValueBatch

    runner = DetectorRunner.open(tmp_path, clock=ManualClock(T0 + timedelta(hours=5)))
    calls = [denied("Decrypt", T0 + timedelta(minutes=minute), key_arn(7), user("eve")) for minute in (0, 10)]

    async def batches() -> AsyncIterator[ValueBatch]:
        yield ValueBatch([encode(calls[0])], "p0", lag={"keytrail.audit.v1-0": 1})
        yield ValueBatch([encode(calls[1])], "p0", lag={"keytrail.audit.v1-0": 0})

    announced: list[Alarm] = []
    await runner.run(batches(), tick_every=0.0, announce=announced.extend)
    assert len({alarm.alarm_id for alarm in announced}) == 1
    assert [alarm.count for alarm in announced] == [1, 2]  # raised, then its count at the tick after
