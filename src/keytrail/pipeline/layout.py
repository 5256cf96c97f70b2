"""Where the metrics pipeline keeps its state in a data directory: without polars, so that a
query can tell that nothing was counted yet before loading it (`keytrail usage` on a new node)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CLOUDTRAIL_PARTITION", "SEGMENT_LOG_PARTITION", "consumer_lock", "counted_partitions",
           "kafka_consumers_lock", "state_dir"]

#: The partition the embedded event log's state is kept as (`segment_source.SegmentLogSource`'s
#: batches): here for the queries, which need the name and not the source (asyncio, the decoder).
SEGMENT_LOG_PARTITION = "segment-log"
#: The partition CloudTrail log files are counted as (`consume --cloudtrail`, `report --cloudtrail`).
CLOUDTRAIL_PARTITION = "cloudtrail-files"


def state_dir(data_dir: Path) -> Path:
    """Where the pipeline keeps its per-partition state files."""
    return data_dir / "metrics" / "state"


def consumer_lock(data_dir: Path) -> Path:
    """Held by the metrics consumer (serve's child, or keytrail consume) while it owns the state."""
    return state_dir(data_dir).parent / "consumer.lock"


def kafka_consumers_lock(data_dir: Path) -> Path:
    """Held shared by each `consume --kafka` counting into the data dir, exclusively by the consumer
    of its embedded event log (pipeline/kafka_lock.py)."""
    return state_dir(data_dir).parent / "kafka-consumers.lock"


def counted_partitions(data_dir: Path) -> list[Path]:
    """The state file of each partition the consumer has counted events of, in name order."""
    return sorted(state_dir(data_dir).glob("*.sqlite"))
