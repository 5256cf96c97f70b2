"""AuditTrail + shipper against a real Kafka-protocol broker (tansu, memory storage)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from botocore.exceptions import ClientError

from keytrail.audit.records import to_cloudtrail
from keytrail.audit.schema import SCHEMA_PATH, EventCodec, load_schema
from keytrail.audit.shipper import AUDIT_TOPIC, ShippedOffset
from keytrail.audit.trail import AuditSettings, AuditTrail
from tests.support.audit_records import ACCOUNT, APP, KEY_ARN, ROOT, encrypt_call
from tests.support.mounts import filled, small_filesystem
from tests.support.processes import child_commands
from tests.support.server import KeytrailServer
from tests.support.services import free_port, kafka_broker, topic_values
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


def _audit_topic(bootstrap: str) -> list[bytes]:
    return asyncio.run(topic_values(bootstrap, AUDIT_TOPIC))


def _shipper_pid(server: KeytrailServer) -> int:
    """The pid of serve's audit shipper process (audit/shipping.py)."""
    assert server.proc is not None
    [pid] = [pid for pid, argv in child_commands(server.proc.pid).items() if b"keytrail.audit.shipping" in argv]
    return pid


def _shipped_once(server: KeytrailServer, bootstrap: str) -> int:
    """Wait until every record of the trail is on the topic, once; how many there are."""
    offset_file = server.data_dir / "audit" / "shipped-offset"
    eventually_blocking(lambda: offset_file.exists() and ShippedOffset(offset_file).value > 0, what="records shipped")
    eventually_blocking(lambda: len(_audit_topic(bootstrap)) == ShippedOffset(offset_file).value,
                        what="the topic as long as what was shipped")
    return ShippedOffset(offset_file).value


def test_a_shipped_offset_a_full_disk_cannot_take_sends_nothing_again(tmp_path: Path) -> None:
    """Writing shipped-offset on a full disk was taken for a broker failure: the batch Kafka had
    acknowledged was sent again 4-5 times a second, forever, each time with a false 'resumed' line."""
    with kafka_broker() as bootstrap, small_filesystem(tmp_path / "disk", "8m") as disk:
        server = KeytrailServer(disk / "data", "--kafka", bootstrap, "--no-detector")
        server.log = tmp_path / "server.log"  # off the full disk
        server.start()
        try:
            kms = server.client("alice")
            key = kms.create_key()["KeyMetadata"]["KeyId"]
            before = _shipped_once(server, bootstrap)
            shipper = _shipper_pid(server)
            os.kill(shipper, signal.SIGSTOP)  # the calls' records are durable before it ships them
            for _ in range(3):
                kms.encrypt(KeyId=key, Plaintext=b"x")
            filler = filled(disk)
            os.kill(shipper, signal.SIGCONT)
            eventually_blocking(lambda: len(_audit_topic(bootstrap)) >= before + 3,
                                what="the calls shipped")
            time.sleep(3)  # the offset's write retried meanwhile
            assert len(_audit_topic(bootstrap)) == before + 3  # nothing sent again
            offset_file = disk / "data" / "audit" / "shipped-offset"
            assert ShippedOffset(offset_file).value == before
            filler.unlink()
            eventually_blocking(lambda: ShippedOffset(offset_file).value == before + 3, what="the offset written")
        finally:
            assert server.stop() == 0
    log = server.log.read_text()
    assert len(re.findall(r" WARNING keytrail\.audit\.shipper: audit shipping cannot write \S+shipped-offset: "
                          r"\[Errno 28\] No space left on device", log)) == 1, log
    assert re.search(r" WARNING keytrail\.audit\.shipper: audit shipping wrote \S+shipped-offset again after ",
                     log), log
    assert "paused" not in log and "resumed" not in log, log


def test_a_broker_that_restarts_empty_after_an_outage_with_calls_is_said_to_have_lost_records(tmp_path: Path) -> None:
    """The calls made while the broker was down failed a send: the shipper connected afresh, the
    offsets Kafka had acknowledged forgotten with the link, and the restarted broker's offsets from 0
    went unnoticed, the records shipped before gone from Kafka without an error."""
    port = free_port()
    with kafka_broker(port) as bootstrap:
        server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap, "--no-detector").start()
        kms = server.client("alice")
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        for _ in range(5):
            kms.encrypt(KeyId=key, Plaintext=b"x")
        before = _shipped_once(server, bootstrap)
    try:  # the broker is gone, and so are the records it held (memory storage)
        during = {kms.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["RequestId"] for _ in range(3)}
        eventually_blocking(lambda: " paused: " in server.log.read_text(), what="shipping paused")
        time.sleep(2)  # a retry or two, each on a new link
        with kafka_broker(port):
            eventually_blocking(lambda: "lost records" in server.log.read_text(), what="the loss logged")
            offset_file = tmp_path / "data" / "audit" / "shipped-offset"
            eventually_blocking(lambda: ShippedOffset(offset_file).value == before + 3, what="the calls shipped")
            delivered = {EventCodec().decode(value)["requestID"] for value in _audit_topic(bootstrap)}
    finally:
        assert server.stop() == 0
    assert delivered == during  # shipping went on; the records lost are not sent again by themselves
    log = server.log.read_text()
    [lost] = re.findall(r" ERROR keytrail\.audit\.shipper: (.*)", log)
    assert re.fullmatch(rf"audit shipping to {bootstrap}: {AUDIT_TOPIC}\[\d\] acknowledged at offset 0, expected "
                        rf"\d+ or more: the broker lost records\. Records this node shipped before offset {before} "
                        r"may be gone from Kafka; .*", lost), lost
