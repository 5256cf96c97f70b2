"""The lengths check of Avro bodies that runs before polars' reader (pipeline/avro_bounds.py)."""

from __future__ import annotations

import json

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
