"""Keeping `consume --kafka` and the consumer of a node's own event log apart on one data dir.

A node's calls reach both its embedded event log and Kafka: counted from both into one data dir's
metrics, each call counts twice in usage, cost and /metrics. Members of one Kafka consumer group
may share a data dir (the group gives each its own partitions), so each `consume --kafka` holds
`metrics/kafka-consumers.lock` shared; the event log's consumer (serve's, in its child or in its
process, or `keytrail consume` on the log) holds it exclusively. The kernel then lets only one
side in, whichever starts first, and a process that dies loses its lock with it. Each holds its
lock for the rest of its life: the descriptor is never closed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from keytrail.owner_only import open_file
from keytrail.pipeline.layout import kafka_consumers_lock

__all__ = ["hold_as_event_log_consumer", "hold_as_kafka_consumer", "kafka_consumers_counting",
           "kafka_consumers_running", "lock_for_life"]


def lock_for_life(path: Path, *, shared: bool = False) -> bool:
    """Take an exclusive (or `shared`) lock on `path` for the rest of the process's life, the file
    made if there is none; False (and nothing held) while another process holds one that excludes it."""
    fd = open_file(path, os.O_RDWR)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    return True  # the descriptor stays open: the lock lasts as long as the process


def hold_as_kafka_consumer(data_dir: Path) -> bool:
    """Join the `consume --kafka` processes of `data_dir`; False while its event log's consumer counts there."""
    return lock_for_life(kafka_consumers_lock(data_dir), shared=True)


def hold_as_event_log_consumer(data_dir: Path) -> bool:
    """Keep `consume --kafka` out of `data_dir`; False while one counts there (or, for a caller
    that does not hold the data dir's `consumer.lock`, while another event log consumer does)."""
    return lock_for_life(kafka_consumers_lock(data_dir))


def kafka_consumers_running(data_dir: Path) -> bool:
    """Whether a `consume --kafka` holds `data_dir`'s lock now: what serve checks before it builds
    anything, to refuse in one line. Only shared holders count: the exclusive one is an event log
    consumer (a `keytrail consume`, the child of a serve still stopping), which serve's child waits
    for. Probes taken and dropped at once; the file is never made. Opened without waiting: a FIFO
    in its place held serve's start for a writer forever."""
    try:
        fd = os.open(kafka_consumers_lock(data_dir), os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        return not _could_lock(fd, fcntl.LOCK_EX) and _could_lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)  # closing drops a lock a probe took


def kafka_consumers_counting(data_dir: Path) -> str:
    """Why an event log consumer does not count `data_dir` (serve, its consumer child, `keytrail consume`)."""
    return (f"keytrail consume --kafka counts into {data_dir} ({kafka_consumers_lock(data_dir)} is held): counting "
            "the event log there too would count each of its calls twice, as Kafka carries them; stop it, or give "
            "it another --data-dir")


def _could_lock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True
