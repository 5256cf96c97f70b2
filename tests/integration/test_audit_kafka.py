"""AuditTrail + shipper against a real Kafka-protocol broker (tansu, memory storage)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from botocore.exceptions import ClientError

from keytrail.audit.records import to_cloudtrail
from keytrail.audit.schema import SCHEMA_PATH, EventCodec, load_schema
from keytrail.audit.shipper import AUDIT_TOPIC
from keytrail.audit.trail import AuditSettings, AuditTrail
from tests.support.audit_records import ACCOUNT, APP, KEY_ARN, ROOT, encrypt_call
from tests.support.server import KeytrailServer
from tests.support.services import free_port, kafka_broker
from tests.support.waits import eventually_blocking

pytestmark = pytest.mark.integration


async def _consume(bootstrap: str, want: int, timeout: float = 60.0) -> list[tuple[bytes | None, bytes]]:
    """Read the audit topic from the beginning until `want` distinct events arrived."""
    consumer = AIOKafkaConsumer(AUDIT_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    messages: list[tuple[bytes | None, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            while len({value for _, value in messages}) < want:
                batches = await consumer.getmany(timeout_ms=500)
                messages += [(m.key, m.value) for ms in batches.values() for m in ms]
    finally:
        await consumer.stop()
    return messages


def _calls() -> list:
    calls = [encrypt_call(i) for i in range(30)]
    calls += [encrypt_call(30 + i, APP) for i in range(10)]
    calls += [encrypt_call(40 + i, ROOT, resources=(), event_name="ListKeys", read_only=True,
                           request_parameters={}) for i in range(5)]
    calls += [encrypt_call(45, error_code="AccessDeniedException", error_message="not authorized")]
    return calls


async def test_records_arrive_one_to_one_keyed_by_key_arn(tmp_path: Path) -> None:
    calls = _calls()
    with kafka_broker() as bootstrap:
        settings = AuditSettings(data_dir=tmp_path, kafka_bootstrap=bootstrap, partitions=3)
        async with AuditTrail.open(settings) as trail:
            await asyncio.gather(*(trail.record(call) for call in calls))
            assert await trail.flush_shipping(60)
        messages = await _consume(bootstrap, len(calls))
    codec = EventCodec(reader_schema=load_schema(SCHEMA_PATH))  # decoded with the schema file
    by_id = {}
    for key, value in messages:
        event = codec.decode(value)
        assert key == (KEY_ARN if event["eventName"] != "ListKeys" else ACCOUNT).encode()
        by_id[event["eventID"]] = event
    assert len(messages) == len(calls)  # one to one: no loss, no duplicate on a healthy broker
    assert by_id == {call.event_id: to_cloudtrail(call) for call in calls}
    text = json.dumps(list(by_id.values()))
    assert "plaintext" not in text.lower() and "ciphertextBlob" not in text


async def test_broker_outage_records_wait_in_the_spool_and_are_all_delivered(tmp_path: Path) -> None:
    port = free_port()
    before = [encrypt_call(i) for i in range(50)]
    during = [encrypt_call(100 + i) for i in range(50)]
    with kafka_broker(port) as bootstrap:
        settings = AuditSettings(data_dir=tmp_path, kafka_bootstrap=bootstrap)
        trail = AuditTrail.open(settings)
        await trail.start()
        await asyncio.gather(*(trail.record(call) for call in before))
        assert await trail.flush_shipping(60)
        first = await _consume(bootstrap, len(before))
    # Broker down: the KMS keeps getting durable answers; records wait in the spool.
    for call in during:
        await trail.record(call)
    assert trail.shipped.value == len(before)
    with kafka_broker(port) as bootstrap:  # back (empty: memory storage); shipping resumes by itself
        assert await trail.flush_shipping(90)
        second = await _consume(bootstrap, len(during))
        await trail.close()
    codec = EventCodec()
    delivered = {codec.decode(value)["eventID"] for _, value in first + second}
    assert delivered == {call.event_id for call in before + during}


async def test_shipping_resumes_after_restart_from_the_persisted_offset(tmp_path: Path) -> None:
    calls = [encrypt_call(i) for i in range(20)]
    with kafka_broker() as bootstrap:
        async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:  # no Kafka yet
            for call in calls:
                await trail.record(call)
        settings = AuditSettings(data_dir=tmp_path, kafka_bootstrap=bootstrap)
        async with AuditTrail.open(settings) as trail:
            assert await trail.flush_shipping(60)
        messages = await _consume(bootstrap, len(calls))
    assert len(messages) == len(calls)


async def test_the_shipper_is_a_process_of_its_own_restarted_when_killed_and_close_ships_the_rest(
        tmp_path: Path) -> None:
    calls = [encrypt_call(i) for i in range(70)]
    with kafka_broker() as bootstrap:
        trail = AuditTrail.open(AuditSettings(data_dir=tmp_path, kafka_bootstrap=bootstrap))
        await trail.start()
        await asyncio.gather(*(trail.record(call) for call in calls[:30]))
        assert await trail.flush_shipping(60)
        first = trail.shipper_pid
        assert first is not None and first != os.getpid()
        os.kill(first, signal.SIGKILL)
        await asyncio.gather(*(trail.record(call) for call in calls[30:60]))  # answered meanwhile
        assert await trail.flush_shipping(60)  # by the shipper started in its place
        assert trail.shipper_pid not in (None, first)
        await asyncio.gather(*(trail.record(call) for call in calls[60:]))
        await trail.close()  # not flushed: close gives the shipper the last durable end and time to ship it
        assert trail.shipped.value == len(calls)
        messages = await _consume(bootstrap, len(calls))
    delivered = [EventCodec().decode(value)["eventID"] for _, value in messages]
    assert sorted(delivered) == sorted(call.event_id for call in calls)  # one to one


async def _replicas_by_partition(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition of `topic` and how many brokers keep it (none while it does not exist: asked
    for by name first, a missing topic would be created by the broker, with its own defaults)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return {}
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {part["partition"]: len(part["replicas"]) for part in described["partitions"]}


def test_serve_creates_the_audit_topic_with_the_partitions_and_replicas_it_is_given(tmp_path: Path) -> None:
    """`serve --kafka-partitions --kafka-replication-factor` shape the topic the shipper creates when it
    is missing (tansu keeps every replica on its one broker, and says how many there are)."""
    with kafka_broker() as bootstrap:
        server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap, "--kafka-partitions", "5",
                                "--kafka-replication-factor", "2").start()
        try:
            server.client("alice").create_key()
            eventually_blocking(lambda: asyncio.run(_replicas_by_partition(bootstrap, AUDIT_TOPIC)),
                                what="the audit topic created")
            assert asyncio.run(_replicas_by_partition(bootstrap, AUDIT_TOPIC)) == {p: 2 for p in range(5)}
        finally:
            assert server.stop() == 0


def test_serve_refuses_calls_once_kafka_lags_by_its_max_unshipped_bytes(tmp_path: Path) -> None:
    """`serve --max-unshipped-bytes`: with the broker gone, calls go on until that much audit log waits
    to be shipped, then fail with KMSInternalException naming the spool's cap (no crypto without audit)."""
    server = KeytrailServer(tmp_path / "data", "--kafka", f"127.0.0.1:{free_port()}",
                            "--max-unshipped-bytes", str(1 << 20)).start()
    try:
        kms = server.client("alice")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        answered = 0
        with pytest.raises(ClientError) as refused:
            for _ in range(5000):  # a record is ≈ 1.5 KB: the cap is reached long before
                kms.encrypt(KeyId=key_id, Plaintext=b"x")
                answered += 1
        error = refused.value.response["Error"]
        assert error["Code"] == "KMSInternalException" and "audit spool" in error["Message"], error
        assert 300 < answered < 2000  # the cap, not the default 1 GiB, and not at once
        status, body = server.get("/_keytrail/health")
        assert status == 503 and f"over its cap of {1 << 20} bytes" in json.loads(body)["audit"], body
        # What health says, /metrics says too, with the bytes against the cap, for an alert rule.
        metrics = server.get("/metrics")[1].decode()
        assert 'keytrail_healthy{part="audit"} 0' in metrics and 'keytrail_healthy{part="keyStore"} 1' in metrics
        assert f"keytrail_audit_unshipped_bytes_limit {1 << 20}" in metrics
        unshipped = int(re.search(r"^keytrail_audit_unshipped_bytes (\d+)$", metrics, re.M)[1])  # type: ignore[index]
        assert unshipped > 1 << 20
    finally:
        server.stop()
