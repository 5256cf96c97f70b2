"""The lock that keeps `consume --kafka` and the consumer of a node's event log apart on one data
dir (pipeline/kafka_lock.py): counted from both, each of the node's calls counted twice. The other
side's lock is taken here as another process takes it (its own open file: flock locks of two
opens exclude each other, in one process too), and let go by closing it, as that process's exit does."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from keytrail.pipeline.kafka_lock import (
    hold_as_event_log_consumer,
    hold_as_kafka_consumer,
    kafka_consumers_counting,
    kafka_consumers_running,
)
from keytrail.pipeline.layout import kafka_consumers_lock


@contextmanager
def _held(data_dir: Path, operation: int) -> Iterator[None]:
    """`data_dir`'s lock held by another holder, shared (a `consume --kafka`) or exclusive (serve's consumer)."""
    path = kafka_consumers_lock(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def test_kafka_consumers_share_a_data_dir(tmp_path: Path) -> None:
    # Members of one consumer group, each counting the partitions the group gives it.
    with _held(tmp_path, fcntl.LOCK_SH):
        assert hold_as_kafka_consumer(tmp_path)
        assert kafka_consumers_running(tmp_path)


def test_the_event_log_consumer_is_kept_out_while_a_kafka_consumer_counts(tmp_path: Path) -> None:
    with _held(tmp_path, fcntl.LOCK_SH):
        assert not hold_as_event_log_consumer(tmp_path)
    # Refused, it held nothing: once the Kafka consumer is gone it gets in.
    assert hold_as_event_log_consumer(tmp_path)
    assert not kafka_consumers_running(tmp_path)


def test_a_kafka_consumer_is_kept_out_while_the_event_log_consumer_counts(tmp_path: Path) -> None:
    with _held(tmp_path, fcntl.LOCK_EX):
        assert not hold_as_kafka_consumer(tmp_path)
        # An exclusive holder is an event log consumer (a serve's child still stopping, `keytrail
        # consume`), which serve's own child waits for: no reason for serve to refuse.
        assert not kafka_consumers_running(tmp_path)
    assert hold_as_kafka_consumer(tmp_path)


def test_the_probe_neither_makes_the_lock_nor_keeps_it(tmp_path: Path) -> None:
    # serve probes before anything is written: a data dir it is refused on stays as it was.
    assert not kafka_consumers_running(tmp_path)
    assert not kafka_consumers_lock(tmp_path).exists()
    with _held(tmp_path, fcntl.LOCK_SH):
        assert kafka_consumers_running(tmp_path)
        assert kafka_consumers_running(tmp_path)  # the first probe let go of what it tried
    with _held(tmp_path, fcntl.LOCK_EX):  # and nothing of the probes stayed behind
        pass


def test_the_probe_does_not_wait_on_a_fifo_in_place_of_the_lock(tmp_path: Path) -> None:
    # Opened as it came, a FIFO (whoever can write the data dir can make one) held serve's start
    # for a writer forever; as a lock it is as good as a file.
    import threading

    lock = kafka_consumers_lock(tmp_path)
    lock.parent.mkdir(parents=True)
    os.mkfifo(lock)
    outcome: list[bool] = []
    probing = threading.Thread(target=lambda: outcome.append(kafka_consumers_running(tmp_path)), daemon=True)
    probing.start()
    probing.join(timeout=30)
    if probing.is_alive():  # waiting on the FIFO: a writer lets it go
        os.close(os.open(lock, os.O_WRONLY))
    assert outcome == [False]
    assert hold_as_event_log_consumer(tmp_path) and not hold_as_kafka_consumer(tmp_path)


def test_a_kafka_consumer_killed_holds_the_data_dir_no_longer(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from keytrail.pipeline.kafka_lock import hold_as_kafka_consumer; "
         "print(hold_as_kafka_consumer(Path(sys.argv[1])), flush=True); sys.stdin.read()", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "True\n"
        assert kafka_consumers_running(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert not kafka_consumers_running(tmp_path)
    assert hold_as_event_log_consumer(tmp_path)


def test_the_refusal_names_the_data_dir_the_lock_and_what_to_do(tmp_path: Path) -> None:
    assert kafka_consumers_counting(tmp_path) == (
        f"keytrail consume --kafka counts into {tmp_path} ({tmp_path}/metrics/kafka-consumers.lock is held): counting "
        "the event log there too would count each of its calls twice, as Kafka carries them; stop it, or give it "
        "another --data-dir")
