"""Alarms on Kafka (keytrail.alarms.v1, Avro single-object) and the standalone `detect --kafka`."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from keytrail.detect.avro import decode_alarm
from keytrail.detect.engine import Detector
from keytrail.detect.hooks import HooksConfig
from keytrail.detect.runner import DetectorRunner
from keytrail.detect.sinks.kafka import ALARMS_TOPIC
from tests.support.http import http_get
from tests.support.kafka_proxy import KafkaProxy
from tests.support.services import free_port, kafka_broker, kafka_topic
from tests.unit.detect.records import T0, denied, event, key_arn, user

pytestmark = pytest.mark.integration

AUDIT = "keytrail.audit.v1"


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    with kafka_broker() as address:
        yield address


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[tuple[bytes, bytes]]:
    """The first `count` or more messages of `topic`, or those that came within `timeout` s: too
    few then fail the caller's assertion, which shows the ones that came (a bare TimeoutError did not)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        got: list[tuple[bytes, bytes]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got) < count and asyncio.get_running_loop().time() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                got += [(m.key, m.value) for m in messages]
        return got
    finally:
        await consumer.stop()


async def _topic_listed(bootstrap: str, topic: str, timeout: float) -> None:
    """Wait until the broker lists `topic` (listing makes no topic, as a consumer's metadata may)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        async with asyncio.timeout(timeout):
            while topic not in await admin.list_topics():
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def test_alarm_is_delivered_to_the_alarms_topic(bootstrap: str, tmp_path: Path) -> None:
    runner = DetectorRunner.open(tmp_path, hooks=HooksConfig(kafka=bootstrap))
    [raised] = await runner.feed([denied("Decrypt", T0, key_arn(3), user("eve"))])
    await runner.close()
    [(key, value)] = await consume(bootstrap, ALARMS_TOPIC, 1)
    assert key == key_arn(3).encode()
    assert decode_alarm(value) == raised


async def test_alarm_reaches_a_broker_that_makes_no_topic_by_itself(tmp_path: Path) -> None:
    """A broker with auto.create.topics.enable=false (Amazon MSK's default) makes no topic a
    producer names. Nothing made the alarms topic, so there the Kafka hook was down for good and no
    alarm ever reached it, while the audit topic, which the shipper makes, filled as usual. The
    hook makes its topic too."""
    proxy_port = free_port()
    with kafka_broker(advertised_port=proxy_port) as direct:
        async with KafkaProxy(int(direct.rsplit(":", 1)[1]), proxy_port) as proxy:
            proxy.refuse_topic_creation()
            runner = DetectorRunner.open(tmp_path, hooks=HooksConfig(kafka=proxy.bootstrap))
            [raised] = await runner.feed([denied("Decrypt", T0, key_arn(5), user("eve"))])
            # The producer waits out its request timeout (10 s) for the broker to make the topic
            # before the hook makes it; a consumer of a topic that does not exist fails at once.
            await _topic_listed(proxy.bootstrap, ALARMS_TOPIC, timeout=30)
            got = await consume(proxy.bootstrap, ALARMS_TOPIC, 1)
            await runner.close()
    assert proxy.creations_refused > 0  # the broker was asked to make the topic, and did not
    assert [decode_alarm(value) for _, value in got] == [raised]
    assert runner.dispatcher.failed == 0


async def test_alarm_waits_out_a_broker_that_is_briefly_down(tmp_path: Path) -> None:
    port = free_port()
    runner = DetectorRunner.open(tmp_path, hooks=HooksConfig(kafka=f"127.0.0.1:{port}"))
    [raised] = await runner.feed([denied("Decrypt", T0, key_arn(4), user("eve"))])
    await asyncio.sleep(1.0)  # the first attempts find no broker
    with kafka_broker(port) as bootstrap:
        await runner.close()
        [(_, value)] = await consume(bootstrap, ALARMS_TOPIC, 1)
    assert decode_alarm(value) == raised
    assert runner.dispatcher.failed == 0


async def test_alarms_raised_while_the_broker_is_down_go_out_in_order_once_it_is_back(tmp_path: Path) -> None:
    """Each alarm had its own attempts and was then given up on, so a broker down for longer than
    they last lost every alarm raised meanwhile: now they wait for it, and go out in order."""
    from keytrail.detect.sinks import Dispatcher
    from keytrail.detect.sinks.kafka import KafkaSink

    port = free_port()
    dispatcher = Dispatcher([KafkaSink(f"127.0.0.1:{port}", attempts=2, backoff=0.05)], pause=(0.1, 0.5))
    # one key: the alarms share a partition, whose order the consumer sees
    alarms = Detector().process([denied("Decrypt", T0 + timedelta(seconds=i), key_arn(20), user(f"eve{i}"))
                                 for i in range(5)])
    for alarm in alarms:
        dispatcher.publish(alarm)
    await asyncio.sleep(1.5)  # the first alarm's two attempts are long spent
    with kafka_broker(port) as bootstrap:
        await dispatcher.close(timeout=20)
        got = await consume(bootstrap, ALARMS_TOPIC, len(alarms))
    assert [decode_alarm(value) for _, value in got] == alarms and dispatcher.failed == 0


async def test_a_record_kafka_will_not_take_is_dead_lettered_and_the_alarms_behind_it_go_out(
    bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal path had no test. tansu (the suite's broker, 0.6.0) refuses no record: it took a
    12 MB record on a topic whose max.message.bytes is 200, and an invalid topic name fails every
    record alike (UnknownTopicOrPartition). So the refusal comes from aiokafka, at the producer's
    max_request_size (1 MiB, as a Kafka broker's default message.max.bytes): MessageSizeTooLargeError,
    what a real broker's refusal of the record raises too."""
    import dataclasses

    from keytrail.detect.sinks import Dispatcher
    from keytrail.detect.sinks.kafka import KafkaSink

    topic, dead_letter = "keytrail.alarms.refusal-test", tmp_path / "alarm-dead-letter-kafka.jsonl"
    sink = KafkaSink(bootstrap, topic, attempts=2, backoff=0.05, dead_letter=dead_letter)
    dispatcher = Dispatcher([sink], pause=(0.1, 0.5))
    first, huge, last = Detector().process([denied("Decrypt", T0 + timedelta(seconds=i), key_arn(21), user(f"eve{i}"))
                                            for i in range(3)])
    huge = dataclasses.replace(huge, summary="x" * (1 << 20))  # over 1 MiB encoded
    with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
        for alarm in (first, huge, last):
            dispatcher.publish(alarm)
        await dispatcher.close(timeout=20)
    got = await consume(bootstrap, topic, 2)
    assert [decode_alarm(value) for _, value in got] == [first, last] and dispatcher.failed == 0
    [entry] = [json.loads(line) for line in dead_letter.read_text().splitlines()]
    assert entry["alarmId"] == huge.alarm_id and entry["hook"] == "Kafka" and entry["attempts"] == 2
    assert "MessageSizeTooLarge" in entry["error"] and entry["alarm"]["summary"] == huge.summary
    assert any(f"gave up on alarm {huge.alarm_id}" in r.getMessage() for r in caplog.records)



async def test_a_record_the_broker_leaves_unanswered_alone_is_dead_lettered_and_the_alarms_behind_go_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker is reachable and takes every record but one, whose produce requests it never
    answers (a proxy before it holds them): that record times out alone, counts as the hook
    reached, and is dead-lettered once the broker took two alarms behind it (docs/detection-rules.md,
    strikes). aiokafka fails it with RequestTimedOutError (the fake producer's KafkaTimeoutError
    alone was taken for the hook reached: this record was the hook out of reach, probed for ever,
    and the alarms behind it never tried). One attempt per delivery: each held request costs the
    producer's request timeout, shortened here to 2 s."""
    from keytrail.detect.sinks import Dispatcher
    from keytrail.detect.sinks.kafka import KafkaSink

    topic, dead_letter, proxy_port = "keytrail.alarms.held-test", tmp_path / "dead.jsonl", free_port()
    alarms = Detector().process([denied("Decrypt", T0 + timedelta(seconds=i), key_arn(22), user(f"eve{i}"))
                                 for i in range(4)])  # one key: one partition, whose order the consumer sees
    with kafka_broker(advertised_port=proxy_port) as direct:
        async with KafkaProxy(int(direct.rsplit(":", 1)[1]), proxy_port) as proxy:
            proxy.hold_produce(alarms[1].alarm_id.encode())
            sink = KafkaSink(proxy.bootstrap, topic, attempts=1, backoff=0.05, dead_letter=dead_letter)
            sink.request_timeout_ms = 2_000
            dispatcher = Dispatcher([sink], pause=(0.1, 0.5), send_ahead_after=0)
            with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
                for alarm in alarms:
                    dispatcher.publish(alarm)
                await dispatcher.close(timeout=60)
            got = [decode_alarm(value) for _, value in await consume(proxy.bootstrap, topic, 3, timeout=5)]
    failures = [r.getMessage() for r in caplog.records if "attempt 1 failed" in r.getMessage()]
    assert [a.alarm_id for a in got] == [alarms[i].alarm_id for i in (0, 2, 3)], (proxy.held, failures)
    assert proxy.held == 3 and dispatcher.failed == 1  # its try, and one after each of the two taken behind it
    [letter] = [json.loads(line) for line in dead_letter.read_text().splitlines()]
    assert letter["alarmId"] == alarms[1].alarm_id and letter["hook"] == "Kafka"


def audit_encoder(kind: str) -> Callable[[dict[str, Any]], bytes]:
    if kind == "json":
        return lambda record: json.dumps(record).encode()
    from keytrail.audit import schema  # the audit branch's codec, once merged
    return schema.encode  # type: ignore[no-any-return]


@pytest.mark.parametrize("encoding", ["avro", "json"])
async def test_standalone_detect_reads_the_audit_topic(bootstrap: str, tmp_path: Path, encoding: str) -> None:
    encode = audit_encoder(encoding)
    key = key_arn(4 if encoding == "json" else 5)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    records = [denied("Decrypt", T0, key, user("mallory")) for _ in range(3)]
    for record in records:
        await producer.send_and_wait("keytrail.audit.v1", encode(record), key=key.encode())
    await producer.stop()
    script = (
        "import typer; from keytrail.cli.detect import register; app = typer.Typer(); register(app); app()"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            "detect",
            "--kafka",
            bootstrap,
            "--data-dir",
            str(tmp_path),
            "--tick-every",
            "0.5",
        ]
    )
    try:
        async with asyncio.timeout(60):
            while _latest(tmp_path / "alarms.jsonl", key) != 3:
                await asyncio.sleep(0.2)
    finally:
        proc.terminate()
        returncode = proc.wait(10)
    assert returncode == 0  # SIGTERM: hooks drained, clean exit


async def test_standalone_detect_publishes_its_alarms_to_the_alarms_topic(bootstrap: str, tmp_path: Path) -> None:
    """As serve's detector does with serve's --kafka (contract: keytrail.alarms.v1 with --kafka):
    where the nodes run --no-detector (docker-compose.yml), this detector is the only one."""
    from keytrail.audit.schema import encode

    key = key_arn(23)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await producer.send_and_wait(AUDIT, encode(denied("Decrypt", T0, key, user("oscar"))), key=key.encode())
    await producer.stop()
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", "detect", "--kafka", bootstrap, "--data-dir",
                             str(tmp_path), "--tick-every", "0.5"])
    try:
        async with asyncio.timeout(60):
            while _latest(tmp_path / "alarms.jsonl", key) == 0:
                await asyncio.sleep(0.2)
        mine = await _alarms_published_on(bootstrap, key)
    finally:
        proc.terminate()
        proc.wait(10)
    assert [alarm.rule for alarm in mine] == ["unauthorized-decrypt"]


async def test_standalone_detect_serves_its_alarm_counts_at_metrics(bootstrap: str, tmp_path: Path) -> None:
    """docker-compose's nodes run --no-detector: Prometheus reads the alarm counters here."""
    from keytrail.audit.schema import encode

    key, port = key_arn(9), free_port()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await producer.send_and_wait(AUDIT, encode(denied("Decrypt", T0, key, user("trudy"))), key=key.encode())
    await producer.stop()
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", "detect", "--kafka", bootstrap, "--data-dir",
                             str(tmp_path), "--tick-every", "0.5", "--metrics-port", str(port)])
    try:
        async with asyncio.timeout(60):
            while _latest(tmp_path / "alarms.jsonl", key) == 0:
                await asyncio.sleep(0.2)
        status, kind, text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        assert (status, kind) == (200, "text/plain; version=0.0.4; charset=utf-8")
        assert await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/other") == (404, "application/json",
                                                                                   '{"message":"Not Found"}')
        async with asyncio.timeout(30):  # the topic read to its end: nothing left to judge on any partition
            while set((lag := _lag_samples(text)).values()) != {0}:
                await asyncio.sleep(0.2)
                text = (await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics"))[2]
    finally:
        proc.terminate()
        returncode = proc.wait(10)
    assert returncode == 0
    [mine] = [a for a in map(json.loads, (tmp_path / "alarms.jsonl").read_text().splitlines()) if a["keyArn"] == key]
    samples = _alarm_samples(text)
    assert samples[(mine["rule"], mine["severity"])] >= 1, text  # ≥: the topic holds other tests' alarms too
    assert samples[("key-deletion-in-use", "CRITICAL")] == 0  # every kind from the start: increase() sees the first
    assert "# TYPE keytrail_alarms_total counter" in text
    assert f"{AUDIT}-0" in lag and "# TYPE keytrail_detector_lag gauge" in text  # how far behind it is, per partition




def _lag_samples(text: str) -> dict[str, float]:
    pattern = re.compile(r'^keytrail_detector_lag\{partition="([^"]+)"\} (\S+)$')
    return {m[1]: float(m[2]) for m in map(pattern.match, text.splitlines()) if m}


def _alarm_samples(text: str) -> dict[tuple[str, str], float]:
    pattern = re.compile(r'^keytrail_alarms_total\{rule="([^"]+)",severity="(\w+)"\} (\S+)$')
    return {(m[1], m[2]): float(m[3]) for m in map(pattern.match, text.splitlines()) if m}


async def _alarms_published_on(bootstrap: str, key: str, timeout: float = 15.0) -> list[Any]:
    """The alarms on `key` in the alarms topic, once there is one (the topic holds other tests' too)."""
    consumer = AIOKafkaConsumer(ALARMS_TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        mine: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while not mine and asyncio.get_running_loop().time() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                mine += [decode_alarm(m.value) for m in messages if m.key == key.encode()]
        return mine
    finally:
        await consumer.stop()


def _latest(path: Path, key: str) -> int:
    """The latest count of the alarm on `key` in alarms.jsonl (0 if none yet)."""
    lines = path.read_text().splitlines() if path.exists() else []
    counts = [alarm["count"] for alarm in map(json.loads, lines) if alarm["keyArn"] == key]
    return int(counts[-1]) if counts else 0


# `keytrail detect --kafka` with unauthorized-decrypt tripping over one odd event (a rule bug)
_TRIPPING_DETECT = """
import typer
from keytrail.cli.detect import register
from keytrail.detect.checks.unauthorized import UnauthorizedDecrypt
observe = UnauthorizedDecrypt.observe
def tripping(self, event):
    if (event.principal_arn or "").endswith(":user/odd"):
        raise TypeError("a rule tripping over an odd event")
    return observe(self, event)
UnauthorizedDecrypt.observe = tripping
app = typer.Typer(); register(app); app()
"""


async def test_standalone_detect_logs_a_batch_a_rule_fails_on_and_goes_on(bootstrap: str, tmp_path: Path) -> None:
    from keytrail.audit.schema import encode

    key, errors = key_arn(6), tmp_path / "stderr.log"

    async def send(records: list[dict[str, Any]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        for record in records:
            await producer.send_and_wait("keytrail.audit.v1", encode(record), key=key.encode())
        await producer.stop()

    await send([denied("Decrypt", T0, key, user("odd"))])
    args = ["detect", "--kafka", bootstrap, "--data-dir", str(tmp_path), "--tick-every", "0.5"]
    with errors.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", _TRIPPING_DETECT, *args], stderr=stderr)
    try:
        async with asyncio.timeout(60):
            while "tripping" not in errors.read_text():
                assert proc.poll() is None, errors.read_text()
                await asyncio.sleep(0.2)
            await send([denied("Decrypt", T0, key, user("mallory")) for _ in range(3)])
            while _latest(tmp_path / "alarms.jsonl", key) != 3:
                assert proc.poll() is None, errors.read_text()
                await asyncio.sleep(0.2)
    finally:
        proc.terminate()
        returncode = proc.wait(10)
    assert returncode == 0
    [line] = [line for line in errors.read_text().splitlines() if "tripping" in line]
    assert "keytrail.audit.v1 partition 0 offsets" in line and "TypeError" in line
    assert "Traceback" not in errors.read_text()


async def test_standalone_detect_judges_time_rules_only_once_every_partition_is_replayed(tmp_path: Path) -> None:
    """A restart re-reads the topic, and a partition of a few events is read whole while a busy one
    is months behind in event time: a tick then found the busy key idle since its last use read."""

    from keytrail.audit.schema import encode

    busy, quiet, days = key_arn(7), key_arn(8), 300
    config = tmp_path / "keytrail.toml"
    config.write_text("[rules.unused-key]\nparameters = { unused_days = 30 }\n")
    with kafka_broker() as bootstrap:
        await kafka_topic(bootstrap, AUDIT, 2)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        for day in range(days):  # both keys in daily use: neither is ever idle for 30 days
            at = T0 + timedelta(days=day)
            for second in range(60):  # the busy key fills more than one fetch of its partition
                await producer.send(AUDIT, encode(event("Decrypt", at + timedelta(seconds=second), busy)), partition=0)
            await producer.send(AUDIT, encode(event("Decrypt", at, quiet)), partition=1)
        last = denied("Decrypt", T0 + timedelta(days=days), busy, user("mallory"))  # tells the replay is over
        await producer.send_and_wait(AUDIT, encode(last), partition=0)
        await producer.stop()
        proc = subprocess.Popen([sys.executable, "-m", "keytrail", "detect", "--kafka", bootstrap, "--data-dir",
                                 str(tmp_path), "--config", str(config), "--tick-every", "0"])
        try:
            async with asyncio.timeout(120):
                while _latest(tmp_path / "alarms.jsonl", busy) == 0:
                    await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # the tick after the last batch
        finally:
            proc.terminate()
            assert proc.wait(10) == 0
    alarms = [json.loads(line) for line in (tmp_path / "alarms.jsonl").read_text().splitlines()]
    assert [a["rule"] for a in alarms] == ["unauthorized-decrypt"]


async def test_standalone_detect_owes_each_hook_its_alarm_once_across_kill_and_restarts(
    bootstrap: str, tmp_path: Path
) -> None:
    """The on-call's guarantee, with real parts: the alarm is raised while the webhook refuses
    connections and the MQTT broker is out of reach; the detector is killed (-9). Started again
    with both back, it sends each of them the alarm once, from their outboxes; started once more,
    nothing. Every hook carries the same document as alarms.jsonl (Kafka's in Avro), and the
    webhook's signature verifies."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import aiomqtt

    from keytrail.audit.schema import encode
    from keytrail.detect.sinks.webhook import SIGNATURE_HEADER, verify_signature
    from tests.support.services import mosquitto

    key, webhook_port, posts = key_arn(31), free_port(), []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if json.loads(body)["keyArn"] == key:  # the audit topic holds the other tests' records too
                posts.append((body, self.headers[SIGNATURE_HEADER]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    def detect(mqtt: str) -> subprocess.Popen[bytes]:
        settings = tmp_path / f"settings-{free_port()}.toml"
        settings.write_text(f'[hooks]\nmqtt = "{mqtt}"\n[[hooks.webhook]]\n'
                            f'url = "http://127.0.0.1:{webhook_port}/hook"\nsecret = "s3cret"\n')
        return subprocess.Popen([sys.executable, "-m", "keytrail", "detect", "--kafka", bootstrap, "--data-dir",
                                 str(tmp_path / "data"), "--config", str(settings), "--tick-every", "0.5"])

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    await producer.send_and_wait(AUDIT, encode(denied("Decrypt", T0, key, user("quinn"))), key=key.encode())
    await producer.stop()
    jsonl = tmp_path / "data" / "alarms.jsonl"
    first = detect(f"mqtt://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        async with asyncio.timeout(60):
            while _latest(jsonl, key) == 0:
                await asyncio.sleep(0.2)
    finally:
        first.kill()
        first.wait(10)
    receiver = ThreadingHTTPServer(("127.0.0.1", webhook_port), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    mqtt: list[bytes] = []
    try:
        async with aiomqtt.Client("127.0.0.1", 1883) as subscriber:
            await subscriber.subscribe("keytrail/alarms/#", qos=1)

            async def collect() -> None:
                async for message in subscriber.messages:
                    if json.loads(message.payload)["keyArn"] == key:  # type: ignore[arg-type]
                        mqtt.append(message.payload)  # type: ignore[arg-type]

            collecting = asyncio.create_task(collect())
            outbox = tmp_path / "data" / "alarm-outbox-mqtt.jsonl"
            for _ in range(2):  # back with both hooks up, then once more
                started = outbox.stat().st_mtime_ns
                proc = detect(mosquitto())
                try:
                    async with asyncio.timeout(60):
                        while not (posts and mqtt and outbox.stat().st_mtime_ns != started):  # rewritten at start
                            await asyncio.sleep(0.2)
                    await asyncio.sleep(3)  # time for a second copy to come, if one would
                finally:
                    proc.terminate()
                    assert proc.wait(20) == 0
            collecting.cancel()
    finally:
        receiver.shutdown()
        receiver.server_close()
    [line] = [alarm for alarm in map(json.loads, jsonl.read_text().splitlines()) if alarm["keyArn"] == key]
    [kafka] = await _alarms_published_on(bootstrap, key)
    [(body, signature)], [payload] = posts, mqtt
    assert json.loads(body) == json.loads(payload) == kafka.to_json() == line
    assert verify_signature(b"s3cret", body, signature)


async def test_standalone_detect_with_its_broker_gone_writes_each_aiokafka_line_once(tmp_path: Path) -> None:
    """aiokafka logs some 40 lines a second while the broker is down (each failed connect, metadata
    refresh and fetch): `detect --kafka` writes each distinct one once, then leaves them out for a minute."""
    key, errors, alarms = key_arn(7), tmp_path / "stderr.log", tmp_path / "data" / "alarms.jsonl"
    encode = audit_encoder("avro")
    with kafka_broker() as bootstrap, errors.open("w") as stderr:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        for record in [denied("Decrypt", T0, key, user("mallory")) for _ in range(3)]:
            await producer.send_and_wait(AUDIT, encode(record), key=key.encode())
        await producer.stop()
        proc = subprocess.Popen([sys.executable, "-m", "keytrail", "detect", "--kafka", bootstrap, "--data-dir",
                                 str(alarms.parent), "--tick-every", "0.5"], stderr=stderr)
        async with asyncio.timeout(60):  # the alarm raised: detect reads the topic
            while _latest(alarms, key) != 3:
                assert proc.poll() is None, errors.read_text()
                await asyncio.sleep(0.2)
    try:
        async with asyncio.timeout(30):
            while "Unable connect to node" not in errors.read_text():
                await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # unthinned: over a hundred lines
    finally:
        proc.terminate()
        proc.wait(20)
    lines = errors.read_text().splitlines()
    assert 1 <= sum("Unable connect to node" in line for line in lines) <= 2, lines
    assert len(lines) < 20, lines


async def test_standalone_detect_reads_on_once_the_broker_comes_back_empty(tmp_path: Path) -> None:
    """A broker that restarted empty (memory storage, a lost disk) or the topic created anew holds
    offsets from 0 again, below where the detector read: tansu answers those fetches with no record,
    and the detector waited there, silently, raising nothing on the calls shipped since. Now it says
    the log began again and reads it from its start."""
    from keytrail.audit.schema import encode

    port, first, second = free_port(), key_arn(31), key_arn(32)

    async def produce(bootstrap: str, key: str, count: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        for n in range(count):
            record = denied("Decrypt", T0 + timedelta(seconds=n), key, user(f"trudy{key[-2:]}"))
            await producer.send_and_wait(AUDIT, encode(record), key=b"one partition")
        await producer.stop()

    proc: subprocess.Popen[bytes] | None = None
    try:
        with kafka_broker(port) as bootstrap:
            await produce(bootstrap, first, 6)
            proc = subprocess.Popen([sys.executable, "-m", "keytrail", "detect", "--kafka", bootstrap, "--data-dir",
                                     str(tmp_path), "--tick-every", "0.5"], stderr=subprocess.PIPE)
            async with asyncio.timeout(60):
                while _latest(tmp_path / "alarms.jsonl", first) != 6:
                    await asyncio.sleep(0.2)
        with kafka_broker(port):  # the same address, back empty
            await produce(bootstrap, second, 2)  # offsets 0-1, below the 6 read
            async with asyncio.timeout(60):
                while _latest(tmp_path / "alarms.jsonl", second) != 2:
                    assert proc.poll() is None
                    await asyncio.sleep(0.2)
    finally:
        if proc is not None:
            proc.terminate()
    stderr = proc.communicate(timeout=10)[1].decode()
    assert re.search(r"audit\.v1-\d ends at offset [0-2], below where this detector reads \(6\)", stderr), stderr
    assert "Traceback" not in stderr


async def test_standalone_detect_says_in_one_line_what_retention_deleted_before_it_read_it(
    caplog: pytest.LogCaptureFixture
) -> None:
    """The detector, behind, reads the partition at 20 when retention deletes the records below 60:
    Kafka answers its fetch out of range and aiokafka goes on from the log's start, and 40 calls
    went unjudged in silence. Now one line says so, in the words of the embedded log's detector (a
    proxy before tansu, whose memory storage has no retention, makes the log start at 60)."""

    from keytrail.audit.schema import encode
    from keytrail.detect.sources import kafka_values
    from tests.support.waits import eventually

    values = [encode(event("Decrypt", T0 + timedelta(seconds=i), key_arn(6))) for i in range(100)]
    got: list[bytes] = []

    async def detector(bootstrap: str) -> None:
        async for batch in kafka_values(bootstrap):
            got.extend(batch.values)

    proxy_port = free_port()
    with kafka_broker(advertised_port=proxy_port) as direct:
        async with KafkaProxy(int(direct.rsplit(":", 1)[1]), proxy_port) as proxy:
            await kafka_topic(proxy.bootstrap, AUDIT, 1)
            producer = AIOKafkaProducer(bootstrap_servers=proxy.bootstrap)
            await producer.start()
            await _sent(producer, values[:20])
            reading = asyncio.create_task(detector(proxy.bootstrap))
            try:
                await eventually(lambda: len(got) == 20, what="the first 20 values read")
                proxy.delete_below(AUDIT, 0, 60)
                await eventually(lambda: proxy.fetched_from_log_start > 0, what="a fetch from the new log start")
                for part in (values[20:60], values[60:]):  # a batch begins at 60, as retention deletes whole ones
                    await _sent(producer, part)
                await eventually(lambda: len(got) == 60, what="the values from the new log start read")
            finally:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
                await producer.stop()
    assert got == values[:20] + values[60:]
    lost = [r.getMessage() for r in caplog.records if "no longer holds" in r.getMessage()]
    assert lost == ["keytrail.audit.v1-0 no longer holds the 40 records at offsets 20..59: retention deleted them "
                    "before this detector read them, and their calls were not judged; reading on from offset 60"]


async def _sent(producer: AIOKafkaProducer, values: list[bytes]) -> None:
    """Send `values` to the audit topic's partition 0 in one batch, acknowledged."""
    for value in values:
        await producer.send(AUDIT, value, partition=0)
    await producer.flush()


async def test_standalone_detect_judges_history_audit_import_added_as_of_its_end(tmp_path: Path) -> None:
    """Last year's CloudTrail imported into a node that ships to Kafka: `detect --kafka` judged its
    keys as of the clock, and every key of it was idle for months, the one in use until the history
    ends too. The shipper marks those records, and the detector judges them as of the history's end,
    as serve's detector and `detect --cloudtrail` do."""
    from keytrail.transport.topics import IMPORTED_HEADER
    from tests.support.server import KeytrailServer
    from tests.unit.detect.records import create_key

    start, in_use, idle = datetime(2025, 1, 1, tzinfo=UTC), key_arn(41), key_arn(42)
    history = [create_key(start, in_use), create_key(start, idle), event("Decrypt", start, idle),
               *[event("Decrypt", start + timedelta(days=day), in_use) for day in range(0, 200, 5)]]
    trail = tmp_path / "trail.json"
    trail.write_text(json.dumps({"Records": history}))
    node = tmp_path / "node"
    imported = subprocess.run([sys.executable, "-m", "keytrail", "audit", "import", "--data-dir", str(node),
                               str(trail)], capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    with kafka_broker() as bootstrap:
        server = KeytrailServer(node, "--kafka", bootstrap, "--no-detector").start()
        try:
            server.client("alice").create_key()  # a call this node answered: no mark
            # read while the node runs: its shipper, still starting on a loaded machine, may not have
            # shipped them all within the 5 s a stop gives it (the rest would go at its next start)
            headers = await _headers(bootstrap, len(history) + 1)
        finally:
            assert server.stop() == 0
        proc = subprocess.Popen([sys.executable, "-m", "keytrail", "detect", "--kafka", bootstrap,
                                 "--data-dir", str(tmp_path / "detector"), "--tick-every", "0"])
        alarms = tmp_path / "detector" / "alarms.jsonl"
        try:
            async with asyncio.timeout(60):
                while _latest(alarms, idle) == 0:
                    await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # the ticks after the last batch
        finally:
            proc.terminate()
            assert proc.wait(10) == 0
    assert {event_id: headers.pop(event_id) for event_id in [record["eventID"] for record in history]} == {
        record["eventID"]: [IMPORTED_HEADER] for record in history}
    assert list(headers.values()) == [[]]  # the CreateKey this node answered
    unused = {alarm["keyArn"] for alarm in map(json.loads, alarms.read_text().splitlines())
              if alarm["rule"] == "unused-key"}
    assert unused == {idle}


async def _headers(bootstrap: str, count: int) -> dict[str, list[tuple[str, bytes]]]:
    """The headers of the audit topic's first `count` messages, by their eventID."""
    from keytrail.audit.schema import decode

    consumer = AIOKafkaConsumer(AUDIT, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        got: dict[str, list[tuple[str, bytes]]] = {}
        async with asyncio.timeout(30):
            while len(got) < count:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    got |= {decode(m.value)["eventID"]: list(m.headers) for m in messages}
        return got
    finally:
        await consumer.stop()
