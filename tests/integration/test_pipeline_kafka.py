"""Consumers in one group against the real Kafka-protocol broker (tansu): combined result exact."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keytrail.audit import schema
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.runner import Runner
from keytrail.pipeline.state import PartitionState
from keytrail.pipeline.synthetic import SyntheticSettings, generate_events
from tests.support.http import http_get
from tests.support.services import free_port, kafka_broker, kafka_topic
from tests.support.waits import eventually
from tests.unit.detect.records import ACCOUNT, T0, denied, event, key_arn, user
from tests.unit.pipeline import reference

pytestmark = pytest.mark.integration

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from keytrail.pipeline.kafka_source import AUDIT_TOPIC, KafkaSource  # noqa: E402

UNTIL = datetime(2026, 10, 5, tzinfo=UTC)
SETTINGS = SyntheticSettings(
    keys=40, principals=20, seconds_per_event=20.0, lifecycle_share=0.01, duplicate_share=0.02,
    same_second_share=0.3,  # same-second uses of a key: its partition's offsets order them
)


async def _produce(bootstrap: str, events: list[dict[str, Any]], partitions: int = 4) -> None:
    await kafka_topic(bootstrap, AUDIT_TOPIC, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for event in events:
            key = event["resources"][0]["ARN"].encode()
            await producer.send(AUDIT_TOPIC, schema.encode(event), key=key)
        await producer.flush()
    finally:
        await producer.stop()


def _exact(data_dir: Path, events: list[dict[str, Any]]) -> None:
    store = MetricsStore(data_dir)
    usage = store.usage(["minute", "keyArn", "principalArn", "accountId", "eventName"])
    assert {r[:5]: (r[5], r[6]) for r in usage.iter_rows()} == reference.usage(events)
    last = {
        (r["keyArn"], r["principalArn"]): (r["lastUsedTime"], r["eventId"], r["lastUsedOperation"])
        for r in store.last_used().iter_rows(named=True)
    }
    assert last == reference.last_used(events)
    prices = PriceTable(free_tier_requests=150)
    got = {
        (r["keyArn"], r["accountId"]): {k: r[k] for k in ("keyMonths", "keyCost", "requests", "requestCost")}
        for r in store.cost(prices, until=UNTIL).iter_rows(named=True)
    }
    assert got == reference.cost(events, prices, UNTIL)


async def test_two_consumers_in_one_group_combine_to_the_exact_result(tmp_path: Path) -> None:
    events = list(generate_events(3000, SETTINGS, seed=21))
    with kafka_broker() as bootstrap:
        await _produce(bootstrap, events)
        sources = [KafkaSource(bootstrap, group_id="metrics-test", idle_seconds=8.0) for _ in range(2)]
        runners = [Runner(state_dir(tmp_path), source) for source in sources]
        stats = await asyncio.wait_for(asyncio.gather(*(r.run() for r in runners)), timeout=120)
    assert sum(s.records for s in stats) >= len(events)
    assert all(s.counted > 0 for s in stats), "both consumers should have owned partitions"
    assert len(MetricsStore(tmp_path).partitions()) == 4
    _exact(tmp_path, events)


def _consume(bootstrap: str, data_dir: Path, idle_seconds: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "keytrail.cli.metrics",
        "consume",
        "--kafka",
        bootstrap,
        "--data-dir",
        str(data_dir),
        "--group",
        "metrics-kill",
        "--exit-when-idle",
        str(idle_seconds),
        "--batch-size",
        "200",
        "--checkpoint-records",
        "600",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _covered(data_dir: Path) -> int:
    total = 0
    for path in state_dir(data_dir).glob("*.sqlite"):
        state = PartitionState(path)
        total += state.persisted_offset
        state.close()
    return total


async def test_consumer_joining_then_one_killed_still_gives_the_exact_result(tmp_path: Path) -> None:
    events = list(generate_events(8000, SETTINGS, seed=23))
    with kafka_broker() as bootstrap:
        await _produce(bootstrap, events)
        first = _consume(bootstrap, tmp_path, idle_seconds=25)
        await eventually(lambda: _covered(tmp_path) >= 1500 or first.poll() is not None, timeout=120,
                         what="the first consumer persisting 1500 events' offsets (or exiting)", interval=0.05)
        second = _consume(bootstrap, tmp_path, idle_seconds=25)  # joins: the group rebalances mid-stream
        await asyncio.sleep(3)
        first.kill()  # SIGKILL: its partitions move to the second after the session timeout
        first.wait()
        # Stopped once every offset is persisted, not after its 25 idle seconds (which must outlast
        # the session timeout, to be there when the partitions come): SIGTERM persists and exits 0.
        async with asyncio.timeout(180):
            while _covered(tmp_path) < len(events):
                assert second.poll() is None, second.stderr.read() if second.stderr else ""
                await asyncio.sleep(0.2)
        second.terminate()
        assert await asyncio.to_thread(second.wait, 30) == 0, second.stderr.read() if second.stderr else ""
        # --exit-when-idle: a member that joins after the group read everything finds nothing to
        # count and stops by itself.
        last = _consume(bootstrap, tmp_path, idle_seconds=1)
        assert await asyncio.to_thread(last.wait, 60) == 0, last.stderr.read() if last.stderr else ""
    assert _covered(tmp_path) == len(events)
    _exact(tmp_path, events)


async def test_messages_that_are_not_audit_events_are_skipped_not_fatal(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    events = list(generate_events(300, SETTINGS, seed=25))
    with kafka_broker() as bootstrap:
        await _produce(bootstrap, events[:150], partitions=1)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:  # a tombstone, another producer's bytes, an event of a schema nobody knows
            for junk in (None, b"junk", b"\xc3\x01" + b"\xff" * 8 + b"body"):
                await producer.send_and_wait(AUDIT_TOPIC, junk, key=b"k")
        finally:
            await producer.stop()
        await _produce(bootstrap, events[150:], partitions=1)
        source = KafkaSource(bootstrap, group_id="metrics-junk", idle_seconds=4.0)
        stats = await asyncio.wait_for(Runner(state_dir(tmp_path), source).run(), timeout=120)
    assert stats.records == len(events)
    assert "skipped 2 messages that are not keytrail audit events (offsets 150, 151)" in caplog.text
    assert ("skipped 1 audit events of an Avro schema this keytrail does not know (fingerprint ffffffffffffffff; "
            "offsets 152): their calls are not counted; a newer keytrail writes them, upgrade this one") in caplog.text
    _exact(tmp_path, events)


async def test_a_member_idle_without_a_partition_says_so_rather_than_caught_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # --exit-when-idle: a member that the group gives no partition (another member holds the only
    # one) read nothing and said only "consumed 0 records", as a member that had caught up does.
    events = list(generate_events(50, SETTINGS, seed=27))
    with kafka_broker() as bootstrap:
        await _produce(bootstrap, events, partitions=1)
        # Its member id sorts first ("a-holder-…" before aiokafka's "aiokafka-…"), so the group's
        # round robin gives it the one partition.
        holder = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="metrics-idle", client_id="a-holder",
                                  enable_auto_commit=False)
        holder.subscribe([AUDIT_TOPIC])
        await holder.start()
        try:
            await eventually(lambda: bool(holder.assignment()), what="the first member's partition", timeout=30)
            source = KafkaSource(bootstrap, group_id="metrics-idle", idle_seconds=2.0)
            stats = await asyncio.wait_for(Runner(state_dir(tmp_path), source).run(), timeout=120)
        finally:
            await holder.stop()
    assert stats.records == 0
    assert (f"stopped after 2 idle seconds holding no partition of {AUDIT_TOPIC}: the group metrics-idle gave "
            "them to other members") in caplog.text


async def test_an_audit_event_with_a_damaged_body_is_skipped_and_the_partition_read_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = list(generate_events(300, SETTINGS, seed=26))
    with kafka_broker() as bootstrap:
        await _produce(bootstrap, events[:150], partitions=1)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:  # a known writer's header before bytes that are no event of it: polars fails the batch
            await producer.send_and_wait(AUDIT_TOPIC, schema.encode(events[0])[:10] + b"\xff" * 40, key=b"k")
        finally:
            await producer.stop()
        await _produce(bootstrap, events[150:], partitions=1)
        source = KafkaSource(bootstrap, group_id="metrics-damaged", idle_seconds=4.0)
        stats = await asyncio.wait_for(Runner(state_dir(tmp_path), source).run(), timeout=120)
    assert (stats.records, stats.unreadable) == (len(events) + 1, 1)
    assert "keytrail.audit.v1-0: skipped 1 audit values that cannot be decoded (offsets 150)" in caplog.text
    _exact(tmp_path, events)


async def test_standalone_consume_serves_its_requests_cost_and_lag_at_metrics(tmp_path: Path) -> None:
    """docker-compose's `consume` service (`--metrics-port`): Prometheus reads the consumer's figures
    there, as it reads serve's at the node's /metrics."""
    key, port = key_arn(7), free_port()
    events = [event("Decrypt", T0 + timedelta(seconds=n), key) for n in range(5)]
    events.append(denied("Decrypt", T0 + timedelta(seconds=9), key, user("eve")))
    with kafka_broker() as bootstrap:
        await _produce(bootstrap, events, partitions=2)
        proc = _consume_with_metrics(bootstrap, tmp_path, "metrics-scrape", port)
        try:
            async with asyncio.timeout(60):  # scraped once counted: the cost is computed at most once a minute
                while sum(MetricsStore(tmp_path).outcomes().values()) < len(events):
                    assert proc.poll() is None, proc.communicate()[1]
                    await asyncio.sleep(0.2)
            status, kind, text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
            other = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/other")
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr  # SIGTERM: state persisted, clean exit
    assert (status, kind) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert other[0] == 404
    samples = _samples(text)
    assert samples['keytrail_kms_requests_total{operation="Decrypt",outcome="success"}'] == 5, text
    assert samples['keytrail_kms_requests_total{operation="Decrypt",outcome="AccessDenied"}'] == 1
    assert samples['keytrail_kms_denied_requests_total{operation="Decrypt"}'] == 1
    assert samples[f'keytrail_kms_cost_usd{{account="{ACCOUNT}"}}'] > 0  # the key's months since T0
    assert _lag(samples) == {"keytrail.audit.v1-0": 0, "keytrail.audit.v1-1": 0}, text  # both read to their end
    # Restarted caught up, it had no figure for a partition until a batch of it came (none will):
    # a blank lag panel, an absent() alert firing. Now every partition it reads has one at once.
    with kafka_broker() as bootstrap:
        await _produce(bootstrap, events, partitions=2)
        again = tmp_path / "again"
        for run in range(2):
            proc = _consume_with_metrics(bootstrap, again, f"metrics-scrape-{run}", port)
            try:
                async with asyncio.timeout(60):
                    while len(lag := _lag(_samples(await _metrics_text(port)))) < 2 or any(lag.values()):
                        assert proc.poll() is None, proc.communicate()[1]
                        await asyncio.sleep(0.2)
            finally:
                proc.terminate()
                proc.communicate(timeout=15)
            assert sum(MetricsStore(again).outcomes().values()) == len(events)  # counted once, in the first run


@pytest.mark.parametrize("joined", [True, False], ids=["after-joining", "while-joining"])
async def test_consume_stops_on_sigterm_with_the_broker_gone(tmp_path: Path, joined: bool) -> None:
    """A consumer told to stop while the broker is down hung until the broker came back (aiokafka
    looks for the group's coordinator for ever, to finish joining or to leave), or, once joined,
    exited 1 with a traceback (aiokafka's stop re-raises the cancellation of a retrying fetch)."""
    events = [event("Decrypt", T0 + timedelta(seconds=n), key_arn(3)) for n in range(4)]
    port = free_port()
    with kafka_broker() as bootstrap:
        await _produce(bootstrap, events, partitions=1)
        proc = _consume_with_metrics(bootstrap, tmp_path, "metrics-gone", port)
        # /metrics answers once the consumer runs, its SIGTERM handler set; joining takes tansu ~5 s.
        await eventually(lambda: _metrics_answer(port) or proc.poll() is not None, timeout=60,
                         what="the consumer's /metrics (or its exit)", interval=0.1)
        if joined:
            await eventually(lambda: _covered(tmp_path) == len(events) or proc.poll() is not None, timeout=60,
                             what="the consumer persisting the events' offsets (or exiting)", interval=0.1)
    proc.terminate()  # the broker is gone
    try:
        returncode = await asyncio.to_thread(proc.wait, 30)
    finally:
        proc.kill()
    stderr = proc.communicate()[1].decode()
    assert "Traceback" not in stderr
    if not joined and returncode == 1:
        # /metrics answers before the consumer's first connection to the broker: the broker gone
        # by then, it says so in one line (the start of a consumer that cannot reach its broker).
        assert stderr.splitlines()[-1] == f"keytrail consume: --kafka {bootstrap}: no broker answered there (is it " \
                                          "running, and is the address right?)", stderr
        return
    assert returncode == 0, stderr
    assert stderr.splitlines()[-1].startswith(f"consumed {len(events) if joined else 0} records"), stderr
    if joined:
        assert sum(MetricsStore(tmp_path).outcomes().values()) == len(events)


def _consume_with_metrics(bootstrap: str, data_dir: Path, group: str, port: int) -> subprocess.Popen[bytes]:
    """`keytrail consume --kafka` as docker-compose runs it, serving /metrics on `port`."""
    return subprocess.Popen(
        [sys.executable, "-m", "keytrail", "consume", "--kafka", bootstrap, "--data-dir", str(data_dir),
         "--group", group, "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _metrics_answer(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    except OSError:  # not listening yet
        return False


async def _metrics_text(port: int) -> str:
    try:
        return (await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics"))[2]
    except OSError:  # not listening yet
        return ""


def _lag(samples: dict[str, float]) -> dict[str, float]:
    prefix = 'keytrail_pipeline_consumer_lag{partition="'
    return {name[len(prefix):-2]: value for name, value in samples.items() if name.startswith(prefix)}


def _samples(text: str) -> dict[str, float]:
    """Prometheus text format: each sample's name and labels → its value."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}




async def test_a_partition_whose_log_began_again_is_read_from_its_start_not_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that came back empty (memory storage, lost disks) or a topic deleted and created
    again holds offsets from 0 again, below what the consumer's state covers: aiokafka went back to
    the partition's start and the runner skipped every record there as counted already, silently.
    Now the consumer says the log began again and counts them (repeats dropped by eventID)."""
    events = list(generate_events(300, SETTINGS, seed=27))
    port = free_port()
    with kafka_broker(port) as bootstrap:
        await _produce(bootstrap, events[:200], partitions=1)
        source = KafkaSource(bootstrap, group_id="metrics-reset", idle_seconds=4.0)
        await asyncio.wait_for(Runner(state_dir(tmp_path), source).run(), timeout=120)
    with kafka_broker(port) as bootstrap:  # back empty: offsets 0-149 again, the state covers 0-199
        await _produce(bootstrap, events[190:], partitions=1)  # ten shipped again, as the shipper does
        source = KafkaSource(bootstrap, group_id="metrics-reset", idle_seconds=4.0)
        stats = await asyncio.wait_for(Runner(state_dir(tmp_path), source).run(), timeout=120)
    assert stats.records == 110 and stats.redelivered == 0  # none skipped as counted already
    assert caplog.text.count("keytrail.audit.v1-0 ends at offset 110, below where this consumer reads (200)") == 1
    _exact(tmp_path, events)


async def test_records_retention_deleted_before_the_consumer_read_them_are_said_lost_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The consumer stopped at offset 100; retention then deleted the partition's records below 150.
    Kafka answers its fetch from 100 out of range and aiokafka resets to the log's start: the run
    counted from 150 on and said nothing of the 50 calls no figure will hold. Now one line says so,
    in the words the embedded event log's consumer uses (a proxy before tansu, whose memory
    storage has no retention, makes the log start at 150)."""
    from tests.support.kafka_proxy import KafkaProxy

    events, proxy_port = list(generate_events(200, SETTINGS, seed=31)), free_port()
    with kafka_broker(advertised_port=proxy_port) as direct:
        async with KafkaProxy(int(direct.rsplit(":", 1)[1]), proxy_port) as proxy:
            await _produce(proxy.bootstrap, events[:100], partitions=1)
            source = KafkaSource(proxy.bootstrap, group_id="metrics-retention", idle_seconds=3.0)
            await asyncio.wait_for(Runner(state_dir(tmp_path), source).run(), timeout=120)
            for part in (events[100:150], events[150:]):  # a batch begins at 150, as retention deletes whole ones
                await _produce(proxy.bootstrap, part, partitions=1)
            proxy.delete_below(AUDIT_TOPIC, 0, 150)
            source = KafkaSource(proxy.bootstrap, group_id="metrics-retention", idle_seconds=3.0)
            with caplog.at_level("WARNING", logger="keytrail.pipeline"):
                stats = await asyncio.wait_for(Runner(state_dir(tmp_path), source).run(), timeout=120)
    assert stats.records == 50
    lost = [r.getMessage() for r in caplog.records if "no longer holds" in r.getMessage()]
    assert lost == ["keytrail.audit.v1-0 no longer holds the 50 records at offsets 100..149: retention deleted "
                    "them before this consumer read them, and their calls are not counted; reading on from offset 150"]
