"""serve --kafka against an audit topic an operator's cluster already has, set up to lose records or to
refuse every write (tansu keeps and reports a topic's settings, without acting on them)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from keytrail.audit.shipper import AUDIT_TOPIC, ShippedOffset, Shipper
from keytrail.transport.segment_log import SegmentLog
from tests.support.kafka_proxy import KafkaProxy
from tests.support.server import KeytrailServer
from tests.support.services import free_port, kafka_broker, topic_values
from tests.support.waits import eventually, eventually_blocking

pytestmark = pytest.mark.integration


async def _make_topic(bootstrap: str, settings: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(AUDIT_TOPIC, 1, 1, topic_configs=settings)])
    finally:
        await admin.close()


async def _delete_topic(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([AUDIT_TOPIC])
    finally:
        await admin.close()


def _shipped(bootstrap: str) -> list[bytes]:
    return asyncio.run(topic_values(bootstrap, AUDIT_TOPIC))


@pytest.mark.parametrize(("settings", "said"), [
    ({"cleanup.policy": "compact"},
     "topic keytrail.audit.v1 has cleanup.policy=compact: Kafka would keep only the latest record of each key ARN "
     "and delete the audit history before it. Nothing is shipped to it until it is set to delete "
     "(kafka-configs.sh --alter --entity-type topics --entity-name keytrail.audit.v1 --add-config "
     "cleanup.policy=delete); the records wait in the event log"),
    ({"min.insync.replicas": "2"},
     "topic keytrail.audit.v1 has min.insync.replicas=2 but 1 replica(s) per partition: Kafka refuses every write "
     "keytrail makes (acks=all) with NotEnoughReplicas. Nothing is shipped to it until min.insync.replicas is at "
     "most 1 or the topic has more replicas; the records wait in the event log"),
], ids=["compacted", "min-insync-above-replicas"])
def test_an_audit_topic_set_up_to_lose_records_gets_none_and_is_named_until_it_is_put_right(
        tmp_path: Path, settings: dict[str, str], said: str) -> None:
    """A compacted audit topic keeps one record per key ARN: the calls before each key's latest were
    deleted by Kafka, no consumer told. One whose min.insync.replicas exceeds its replicas refuses
    every acks=all write, which looked like a broker briefly down. serve shipped to either as to any
    topic. Now it ships nothing there, says why at ERROR, keeps serving from the event log, and
    ships every record once the topic is put right (here: deleted, and made anew by the shipper)."""
    with kafka_broker() as bootstrap:
        asyncio.run(_make_topic(bootstrap, settings))
        server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap, "--no-detector").start()
        try:
            kms = server.client()
            key = kms.create_key()["KeyMetadata"]["KeyId"]
            for _ in range(3):
                kms.encrypt(KeyId=key, Plaintext=b"x")  # same key ARN: what compaction would drop
            eventually_blocking(lambda: said in server.log.read_text(), what="the topic's settings named")
            assert _shipped(bootstrap) == []
            asyncio.run(_delete_topic(bootstrap))
            eventually_blocking(lambda: len(_shipped(bootstrap)) == 4, what="every record shipped")
        finally:
            assert server.stop() == 0
    log = server.log.read_text()
    assert len(re.findall(r" ERROR keytrail\.audit\.shipper: audit shipping to \S+ is stuck: ", log)) == 1, log
    assert re.search(r" WARNING keytrail\.audit\.shipper: audit shipping to \S+ resumed after \d+ s stuck", log), log
    assert "Traceback" not in log, log


def test_an_audit_topic_a_consumer_had_the_broker_make_is_named_when_it_has_fewer_replicas_than_asked(
        tmp_path: Path) -> None:
    """`keytrail consume --kafka` started before serve subscribes to the audit topic, which a broker
    that makes topics on first use (auto.create.topics.enable, Apache Kafka's default) makes with
    its own defaults: serve --kafka-replication-factor 2 then shipped the audit trail to partitions
    of one replica, one broker's disk, saying nothing. It still ships there (the topic is the
    operator's), and says in one warning what the topic lacks and why it may be so."""
    with kafka_broker() as bootstrap:
        consume = subprocess.run([sys.executable, "-m", "keytrail", "consume", "--kafka", bootstrap,
                                  "--data-dir", str(tmp_path / "consumer"), "--exit-when-idle", "1"],
                                 capture_output=True, text=True, timeout=60)
        assert consume.returncode == 0, consume.stderr
        server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap, "--kafka-replication-factor", "2",
                                "--no-detector").start()
        try:
            server.client().create_key()
            eventually_blocking(lambda: len(_shipped(bootstrap)) == 1, what="the call shipped")
        finally:
            assert server.stop() == 0
    log = server.log.read_text()
    warnings = re.findall(r" WARNING keytrail\.transport\.topic_settings: (.*)", log)
    assert warnings == [
        "Kafka topic keytrail.audit.v1 exists with 4 partition(s) of 1 replica(s), where 3 partition(s) of 2 "
        "replica(s) were asked for (--kafka-partitions, --kafka-replication-factor): made before, by hand or by the "
        "broker at a client's first request (auto.create.topics.enable, num.partitions, default.replication.factor). "
        "It is used as it is; add partitions or replicas to it (kafka-topics.sh --alter, kafka-reassign-partitions.sh) "
        "for more"], log


def _record(offset: int) -> bytes:
    """An audit record of about 1 KB whose first field (keyArn) message_key_bytes reads: one key, one partition."""
    key = b"arn:aws:kms:us-east-1:111122223333:key/one"
    return b"\xc3\x01" + bytes(8) + b"\x02" + bytes([2 * len(key)]) + key + offset.to_bytes(4, "big") + bytes(1000)


async def test_record_batches_are_no_larger_than_the_audit_topic_s_max_message_bytes(tmp_path: Path) -> None:
    """Kafka holds a topic's max.message.bytes against a whole record batch: the shipper sent batches
    of up to 256 KiB, so on a topic taking 20 KB it was refused at every retry once a round held more
    than 20 KB of one partition's records, each of them ~1 KB, and shipping stuck for good (naming a
    record of ~1 KB as too large). It now sends batches the topic takes. tansu does not enforce the
    limit: a proxy before it measures the produce requests."""
    records, limit, proxy_port = [_record(offset) for offset in range(100)], 20_000, free_port()
    with kafka_broker(advertised_port=proxy_port) as direct:
        async with KafkaProxy(int(direct.rsplit(":", 1)[1]), proxy_port) as proxy:
            await _make_topic(proxy.bootstrap, {"max.message.bytes": str(limit)})
            log = SegmentLog(tmp_path / "log", writable=True)
            log.append(records)
            log.sync()
            shipped = ShippedOffset(tmp_path / "shipped-offset")
            shipper = Shipper(proxy.bootstrap, tmp_path / "log", shipped, partitions=1,
                              durable_end=lambda: len(records), committed=asyncio.Event())
            running = asyncio.create_task(shipper.run())
            await eventually(lambda: shipped.value == len(records), what="every record shipped")
            await shipper.stop()
            await asyncio.wait_for(running, 10)
            assert sorted(await topic_values(proxy.bootstrap, AUDIT_TOPIC)) == sorted(records)
    assert 0 < proxy.largest_produce <= limit + 200  # the batch, and the produce request's own fields
