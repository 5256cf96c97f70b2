"""Events/s through the metrics consumer and the detector from each source they read: the embedded
event log (serve's children) and the Kafka audit topic (`keytrail consume --kafka`, `keytrail detect
--kafka`).

    PYTHONPATH=src:. python bench/pipeline_sources.py [--kafka HOST:PORT] [--events 100000]

Setup, not timed: the pipeline benchmark's generated events (bench/pipeline_throughput.py's
generator and settings) in an event log under --workdir, reused when already written, and, with
--kafka, the same values produced to a fresh topic of 3 partitions, keyed by key ARN as the
shipper keys them. Then each stage reads every event once from each source, in a fresh process
pinned to one CPU (POLARS_MAX_THREADS=1), through the code the live paths run: the consumer's
`MetricsConsumer` over `SegmentLogSource` or `KafkaSource`; the detector's `follow_event_log` and
`avro_events` (serve's detector child) or `kafka_values` (`keytrail detect --kafka`). Prints one
line per run and, last, a JSON line of all runs: events per CPU second over the whole run, events
per second from the first batch to the last (a Kafka consumer group's join and its final idle
wait left out). The broker's own CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STAGES = ("consumer", "detector")
SOURCES = ("embedded", "kafka")
_PARTITIONS = 3
_PRODUCE_CHUNK = 5_000
_KAFKA_IDLE_SECONDS = 1.0  # a Kafka consumer group that saw nothing this long has read the topic
_IDLE_FETCHES = 20  # the detector's empty fetches (0.5 s each) before it reports what it read


@dataclass(frozen=True, slots=True)
class Run:
    stage: str
    source: str
    events: int
    wall_s: float
    cpu_s: float

    @property
    def line(self) -> str:
        return (f"{self.stage:<9} {self.source:<9} {self.events:>9,} events  {self.wall_s:6.2f} s  "
                f"{_rate(self.events, self.wall_s):>9,.0f} events/s  {_rate(self.events, self.cpu_s):>9,.0f} per CPU s")


def _rate(events: int, seconds: float) -> float:
    return events / seconds if seconds > 0 else float("nan")  # nan: too few events to time


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the timed runs (each in its own process) -----------------------------------------------------

class _Clock:
    """When the first batch of events arrived and when the last one was done: the wall time of
    reading them, without a Kafka consumer group's join before or its idle wait after."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0

    def arrived(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def done(self) -> None:
        self.last = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.last - (self.first or self.last)


class _TimedSource:
    """A consumer Source that tells `clock` when batches come and when each was processed."""

    def __init__(self, source: Any, clock: _Clock) -> None:
        self.source, self.clock = source, clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)

    async def batches(self, start_at: Any) -> AsyncIterator[Any]:
        async for batch in self.source.batches(start_at):
            self.clock.arrived()
            yield batch
            self.clock.done()  # the runner asks for the next batch once this one is processed


async def _consume(workdir: Path, scratch: Path, kafka: str | None, topic: str, clock: _Clock) -> int:
    from keytrail.pipeline.consumer import ConsumerSettings, MetricsConsumer, event_log_dir
    from keytrail.pipeline.kafka_source import KafkaSource
    from keytrail.pipeline.segment_source import SegmentLogSource

    settings = ConsumerSettings(scratch, max_records=20_000, export_seconds=None)  # state only: the source is given
    source: Any = (SegmentLogSource(event_log_dir(workdir), max_records=20_000) if kafka is None else
                   KafkaSource(kafka, group_id=f"bench-{uuid.uuid4()}", topic=topic, max_records=20_000,
                               idle_seconds=_KAFKA_IDLE_SECONDS))
    return (await MetricsConsumer(settings, _TimedSource(source, clock)).run()).records


async def _detect(workdir: Path, scratch: Path, kafka: str | None, topic: str, expected: int, clock: _Clock) -> int:
    from keytrail.cli.tail import DETECTOR_BATCH, follow_event_log
    from keytrail.detect.avro_events import avro_events
    from keytrail.detect.runner import DetectorRunner
    from keytrail.detect.sources import kafka_values

    read = 0
    async with DetectorRunner.open(scratch) as runner:
        if kafka is None:  # as serve's detector child reads the log, until it has caught up
            async for values, _ in follow_event_log(workdir, batch=DETECTOR_BATCH, idle_seconds=0.01):
                if not values:
                    break
                clock.arrived()
                async for events in avro_events(values, chunk=1_000):
                    await runner.feed_events(events)
                read += len(values)
                clock.done()
        else:  # as `keytrail detect --kafka` reads the topic, until every event has come
            idle_fetches = 0
            async for batch in kafka_values(kafka, topic=topic):
                values = batch.values
                if values:
                    clock.arrived()
                    await runner.feed_values(values)
                    read += len(values)
                    clock.done()
                idle_fetches = 0 if values else idle_fetches + 1
                if read >= expected or idle_fetches >= _IDLE_FETCHES:
                    break
    return read


def measure(stage: str, source: str, workdir: Path, kafka: str | None, topic: str, expected: int) -> Run:
    """One timed run in this process; what it imports is imported before the clocks start."""
    import keytrail.cli.tail
    import keytrail.detect.avro_events
    import keytrail.detect.runner
    import keytrail.pipeline.consumer
    import keytrail.pipeline.kafka_source  # noqa: F401

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    broker = kafka if source == "kafka" else None
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="keytrail-bench-sources-") as scratch:
        cpu = _cpu_seconds()
        if stage == "consumer":
            events = asyncio.run(_consume(workdir, Path(scratch), broker, topic, clock))
        else:
            events = asyncio.run(_detect(workdir, Path(scratch), broker, topic, expected, clock))
        cpu = _cpu_seconds() - cpu
    return Run(stage, source, events, round(clock.seconds, 4), round(cpu, 4))


# --- setup ----------------------------------------------------------------------------------------

async def _produce(workdir: Path, kafka: str, topic: str) -> int:
    """Copy the log's values to `topic`, keyed as the shipper keys them; returns how many."""
    from keytrail.audit.schema import message_key_bytes
    from keytrail.pipeline.consumer import event_log_dir
    from keytrail.transport.kafka import KafkaProducerLink, ensure_topic
    from keytrail.transport.segment_log import SegmentLog

    await ensure_topic(kafka, topic, _PARTITIONS)
    log = SegmentLog(event_log_dir(workdir))
    offset, end = log.start_offset(), log.end_offset()
    async with KafkaProducerLink(kafka) as link:
        while offset < end:
            batch = log.read(offset, _PRODUCE_CHUNK)
            await link.send_batch(topic, [(message_key_bytes(value), value, []) for _, value in batch])
            offset = batch[-1][0] + 1
    return end - log.start_offset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/keytrail-bench-sources"))
    parser.add_argument("--kafka", help="a Kafka-protocol broker: also measure reading the audit topic")
    parser.add_argument("--run", nargs=2, metavar=("STAGE", "SOURCE"), help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        stage, source = args.run
        print(json.dumps(asdict(measure(stage, source, args.workdir, args.kafka, args.topic, args.events))))
        return
    from bench.pipeline_throughput import write_log

    write_log(args.workdir, args.events)
    topic = f"keytrail.bench.{uuid.uuid4().hex[:12]}"
    sources = SOURCES if args.kafka else SOURCES[:1]
    if args.kafka:
        started = time.perf_counter()
        produced = asyncio.run(_produce(args.workdir, args.kafka, topic))
        print(f"produced {produced:,} events to {topic} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    runs = []
    for stage in STAGES:
        for source in sources:
            command = [sys.executable, __file__, "--run", stage, source, "--workdir", str(args.workdir),
                       "--events", str(args.events), "--topic", topic, *(["--kafka", args.kafka] if args.kafka else [])]
            done = subprocess.run(command, check=True, env=env, stdout=subprocess.PIPE, text=True, timeout=600)
            run = Run(**json.loads(done.stdout))
            print(run.line, flush=True)
            runs.append(asdict(run))
    if not args.kafka:
        print("kafka: not measured (no --kafka broker)")
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
