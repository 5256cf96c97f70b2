"""Calling what may wait forever on a FIFO put in a file's place, without the test waiting forever."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


def outcome_beside_a_fifo(fifo: Path, call: Callable[[], object]) -> list[object]:
    """What `call` returned or raised (an Exception), run in a thread given 30 s. A call still
    waiting then (opening the FIFO for a writer or a reader, or writing into it) fails the test,
    once the FIFO, opened both ways at once and closed, let it go."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    waited = thread.is_alive()
    if waited:
        os.close(os.open(fifo, os.O_RDWR))  # a reader and a writer: an open waiting for either returns
        thread.join(timeout=30)
    assert not waited, f"waited on the FIFO at {fifo}"
    assert len(outcome) == 1, outcome
    return outcome
