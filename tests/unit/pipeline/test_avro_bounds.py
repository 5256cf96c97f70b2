"""The lengths check of Avro bodies that runs before polars' reader (pipeline/avro_bounds.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from keytrail.audit import schema
from keytrail.pipeline.avro_bounds import body_check
from keytrail.pipeline.synthetic import SyntheticSettings, generate_events

_CHECK = body_check(json.loads(schema.SCHEMA_PATH.read_bytes()))
_VALUES = [schema.encode(event) for event in generate_events(40, SyntheticSettings(keys=4, principals=4), seed=3)]


def test_every_whole_event_passes() -> None:
    assert all(_CHECK(value, 10) for value in _VALUES)


def test_a_value_cut_anywhere_or_run_on_fails() -> None:
    value = _VALUES[7]
    assert not any(_CHECK(value[:end], 10) for end in range(10, len(value)))
    assert not _CHECK(value + b"\x00", 10)


def test_a_length_past_the_end_or_a_branch_that_is_none_fails() -> None:
    value = _VALUES[9]
    assert not _CHECK(value[:10] + b"\x02\x80\x80\x80\x80\x10" + value[12:], 10)  # keyArn's length 2**31
    assert not _CHECK(value[:10] + b"\x04" + value[11:], 10)  # keyArn's union has no third branch
    assert not _CHECK(value[:10] + b"\x02\x01" + value[12:], 10)  # a negative length


def test_only_values_from_outside_the_event_log_are_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    # The embedded log's values are keytrail's own encoder's, each frame's CRC32 checked: walking
    # them too cost serve's detector child ~6 µs an event, a quarter of its time per event.
    from keytrail.detect import avro_events
    from keytrail.pipeline import decode

    walked: list[int] = []
    real = decode._refuse_lengths_past_ends
    monkeypatch.setattr(decode, "_refuse_lengths_past_ends",
                        lambda prefix, values: (walked.append(len(values)), real(prefix, values))[1])
    from_log = asyncio.run(avro_events.avro_rows(_VALUES, from_event_log=True))
    assert walked == []
    from_outside = asyncio.run(avro_events.avro_rows(_VALUES))
    assert walked == [len(_VALUES)]
    assert from_log == from_outside and len(from_log) == len(_VALUES)
