"""Once a node has started, the calls in flight do not set off the cyclic collector: the objects
each holds until it ends (≈ 55 tracked: coroutines, futures, the call's values) counted towards the
young generation's default 700, and with ≈ 30 calls queued a young collection walked every call in
flight again each 26-55 calls. What that cost the serving thread is measured with a serve under
bench/openloop.py and gc callbacks, not here."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from keytrail.cli import node

CALLS_IN_FLIGHT = 64  # bench/openloop.py's connections, each with a call in flight
TRACKED_PER_CALL = 55


@pytest.fixture
def started() -> Iterator[None]:
    """The collector as a node leaves it after its start; as it was, afterwards."""
    threshold = gc.get_threshold()
    node._freeze_start_objects()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_calls_in_flight_set_off_no_young_collection_after_the_start(started: None) -> None:
    collections: list[int] = []

    def counted(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()  # the count of tracked objects starts from nothing
    gc.callbacks.append(counted)
    try:
        # A list and its dicts: TRACKED_PER_CALL tracked objects a call.
        in_flight = [[{"call": n} for _ in range(TRACKED_PER_CALL - 1)] for n in range(CALLS_IN_FLIGHT)]
        for _ in range(10_000):  # what each loop pass makes and drops again
            made = [{"made": True}]
    finally:
        gc.callbacks.remove(counted)
    assert len(in_flight) == CALLS_IN_FLIGHT and made
    assert collections == []
