"""`keytrail detect --kafka` over an audit topic of several partitions (docker-compose's scale-out:
keytrail.audit.v1 has 3 by default, records keyed by key ARN). One principal's denials of different
keys sit in different partitions, and `unauthorized-decrypt` gives the first keys it is denied on
their own alarm and folds the rest into its flood alarm (key-reconnaissance likewise raises at the
call that reaches `min_keys`): which keys come first must not depend on how the broker's fetches
interleave the partitions. It did: every restart paged new alarms for denials already alarmed on,
and two detectors over the same topic disagreed. Real processes, a real broker (tansu)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from keytrail.audit.schema import encode
from keytrail.transport.kafka import partition_for
from tests.support.http import http_get
from tests.support.services import free_port, kafka_broker, kafka_topic
from tests.support.waits import eventually
from tests.unit.detect.records import T0, denied, event, key_arn, user

pytestmark = pytest.mark.integration

AUDIT = "keytrail.audit.v1"
PARTITIONS = 4
CONFIG = "[rules.key-reconnaissance.parameters]\nmin_keys = 5\n"


def keys_over_partitions(per_partition: int = 2) -> list[str]:
    """Key ARNs that the shipper's partitioner (murmur2 of the key ARN) spreads over every partition."""
    chosen: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for n in range(1, 200):
        arn = key_arn(n)
        slot = chosen[partition_for(arn.encode(), list(range(PARTITIONS)))]
        if len(slot) < per_partition:
            slot.append(arn)
    keys = [arn for slot in chosen.values() for arn in slot]
    assert len(keys) == PARTITIONS * per_partition
    return keys


def workload() -> list[dict[str, Any]]:
    """Calls in the order a node logs them: allowed Encrypts, two principals denied on keys of
    every partition (their first denials spread over partitions in an order no partition-by-
    partition read keeps), and one describing every key (key-reconnaissance at 5 keys)."""
    rng, keys = random.Random(11), keys_over_partitions()
    calls = []
    for i in range(2400):
        at, key, roll = T0 + timedelta(milliseconds=250 * i), rng.choice(keys), rng.random()
        if roll < 0.06:
            calls.append(denied("Encrypt", at, key, user("eve")))
        elif roll < 0.1:
            calls.append(denied("ReEncrypt", at, key, user("bob")))
        elif roll < 0.12:
            calls.append(event("DescribeKey", at, key, user("scout")))
        else:
            calls.append(event("Encrypt", at, key, user(rng.choice(["alice", "app"]))))
    return calls


async def make_topic(bootstrap: str) -> None:
    await kafka_topic(bootstrap, AUDIT, PARTITIONS)


async def ship(producer: AIOKafkaProducer, calls: list[tuple[int, dict[str, Any]]], rounds: int = 1) -> None:
    """Send calls keyed by key ARN as the shipper does: a round's records go to every partition at
    once, each stamped when written (in log order, a millisecond apart), the next round once the
    broker took the last."""
    size = -(-len(calls) // rounds)
    for start in range(0, len(calls), size):
        for stamp, call in calls[start:start + size]:
            key = call["resources"][0]["ARN"].encode()
            await producer.send(AUDIT, encode(call), key=key, timestamp_ms=stamp)
        await producer.flush()
        await asyncio.sleep(0.05)


class Detector:
    """A `keytrail detect --kafka` process serving its lag, to tell when it has judged the topic."""

    def __init__(self, bootstrap: str, data_dir: Path, config: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keytrail", "detect", "--kafka", bootstrap, "--data-dir", str(data_dir),
             "--config", str(config), "--tick-every", "0.5", "--metrics-port", str(self.port)],
            stderr=subprocess.PIPE)

    def judged_all(self) -> bool:
        """Whether every partition's records are judged (its lag, the records not judged yet, is 0)."""
        assert self.proc.poll() is None, self.proc.communicate()[1].decode()
        try:
            text = http_get(f"http://127.0.0.1:{self.port}/metrics")[2]
        except OSError:
            return False  # not listening yet
        pattern = re.compile(r'^keytrail_detector_lag\{partition="([^"]+)"\} (\S+)$')
        lag = {m[1]: float(m[2]) for m in map(pattern.match, text.splitlines()) if m}
        return len(lag) == PARTITIONS and set(lag.values()) == {0.0}

    async def stop_once_judged(self) -> None:
        await eventually(self.judged_all, what="the detector to judge the whole topic", interval=0.2)
        self.proc.terminate()
        _, stderr = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, stderr.decode()
        assert "Traceback" not in stderr.decode()


def final_states(lines: list[str]) -> dict[str, tuple[Any, ...]]:
    """Each alarm's latest state (the last line of its alarmId), the fields a responder reads."""
    states = {}
    for alarm in map(json.loads, lines):
        states[alarm["alarmId"]] = (alarm["rule"], alarm["keyArn"], alarm["principalArn"], alarm["count"],
                                    alarm["severity"], alarm["firstSeen"], alarm["lastSeen"])
    return states


async def test_detectors_over_a_partitioned_topic_agree_across_restarts_fresh_data_dirs_and_offline(
    tmp_path: Path,
) -> None:
    calls = workload()
    written = int(time.time() * 1000) - 60_000
    stamped = [(written + index, call) for index, call in enumerate(calls)]
    config = tmp_path / "keytrail.toml"
    config.write_text(CONFIG)
    first_dir, fresh_dir = tmp_path / "first", tmp_path / "fresh"
    with kafka_broker() as bootstrap:
        await make_topic(bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            half = len(stamped) // 2
            await ship(producer, stamped[:half])
            first = Detector(bootstrap, first_dir, config)  # replays the first half, reads the rest live
            await ship(producer, stamped[half:], rounds=30)
        finally:
            await producer.stop()
        await first.stop_once_judged()
        delivered = (first_dir / "alarms.jsonl").read_text()
        await Detector(bootstrap, first_dir, config).stop_once_judged()  # restarted: it re-reads the topic
        assert (first_dir / "alarms.jsonl").read_text() == delivered  # and sends nothing alarms.jsonl holds
        await Detector(bootstrap, fresh_dir, config).stop_once_judged()
    alarms = final_states(delivered.splitlines())
    assert final_states((fresh_dir / "alarms.jsonl").read_text().splitlines()) == alarms
    eve = [state for state in alarms.values() if state[:3:2] == ("unauthorized-decrypt", user("eve")["arn"])]
    assert sorted(state[1] is None for state in eve) == [False, False, False, True]  # 3 keys of its own, 1 flood
    assert {state[0] for state in alarms.values()} == {"unauthorized-decrypt", "key-reconnaissance"}

    trail = tmp_path / "trail.json"  # the node's export of the same calls, in its log's order
    trail.write_text(json.dumps({"Records": calls}))
    offline = subprocess.run([sys.executable, "-m", "keytrail", "detect", "--cloudtrail", str(trail), "--config",
                              str(config), "--format", "json"], capture_output=True, text=True, timeout=60)
    assert offline.returncode == 0, offline.stderr
    assert final_states(offline.stdout.splitlines()) == alarms


async def test_a_partition_read_far_ahead_pauses_and_the_topic_is_still_read_in_written_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Partition 0's records were all written after partition 1's, and the broker hands out both at
    once: partition 0's wait, up to their share of what may be held, its fetching paused meanwhile."""
    from keytrail.detect import sources

    monkeypatch.setattr(sources, "HELD_RECORDS", 200)
    written = int(time.time() * 1000) - 60_000
    late = [(0, written + 1000 + n, f"late {n}".encode()) for n in range(600)]
    early = [(1, written + n, f"early {n}".encode()) for n in range(600)]
    got: list[bytes] = []
    with kafka_broker() as bootstrap:
        await kafka_topic(bootstrap, AUDIT, 2)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        for partition, stamp, value in late + early:
            await producer.send(AUDIT, value, partition=partition, timestamp_ms=stamp)
        await producer.stop()
        batches = sources.kafka_values(bootstrap)
        async with asyncio.timeout(30):
            async for batch in batches:
                got += batch.values
                assert sum(batch.lag.values()) <= 1200 - len(got)  # held records are not judged yet
                if len(got) == 1200:
                    break
        await batches.aclose()
    assert got == [value for _, _, value in early + late]
