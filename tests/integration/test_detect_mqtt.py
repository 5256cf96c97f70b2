"""Alarms on MQTT: delivered to a real Mosquitto on keytrail/alarms/<rule>, QoS 1, reconnecting."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import aiomqtt
import pytest

from keytrail.detect.engine import Detector
from keytrail.detect.hooks import HooksConfig
from keytrail.detect.runner import DetectorRunner
from keytrail.detect.sinks import DeliveryError, HookDown
from keytrail.detect.sinks.mqtt import MqttSink
from tests.support.services import free_port, mosquitto, wait_for_port
from tests.unit.detect.records import T0, denied, key_arn, user

pytestmark = pytest.mark.integration


async def next_message(messages: AsyncIterator[aiomqtt.Message]) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(aiter(messages)), 10)


async def _alarm_of(messages: AsyncIterator[aiomqtt.Message], event_id: str) -> aiomqtt.Message:
    """The first message whose alarm names `event_id`: the machine's broker is shared, and another
    test run on this machine may publish alarms of its own on the same topics."""
    async def first() -> aiomqtt.Message:
        async for message in messages:
            if event_id in json.loads(message.payload).get("eventIds", []):  # type: ignore[arg-type]
                return message
        raise AssertionError("the subscription ended")

    return await asyncio.wait_for(first(), 10)


async def test_denied_decrypt_alarm_arrives_on_its_rule_topic(tmp_path: Path) -> None:
    url = mosquitto()
    async with aiomqtt.Client("127.0.0.1", int(url.rsplit(":", 1)[1])) as subscriber:
        await subscriber.subscribe("keytrail/alarms/#", qos=1)
        runner = DetectorRunner.open(tmp_path, hooks=HooksConfig(mqtt=url))
        record = denied("Decrypt", T0, key_arn(7), user("eve"))
        await runner.feed([record])
        message = await _alarm_of(subscriber.messages, record["eventID"])
        await runner.close()
    assert str(message.topic) == "keytrail/alarms/unauthorized-decrypt"
    assert message.qos == 1
    alarm = json.loads(message.payload)  # type: ignore[arg-type]
    assert alarm["rule"] == "unauthorized-decrypt" and alarm["keyArn"] == key_arn(7)
    assert alarm["principalArn"] == "arn:aws:iam::111122223333:user/eve"
    assert alarm["eventIds"] == [record["eventID"]] and alarm["severity"] == "HIGH"
    assert json.loads((tmp_path / "alarms.jsonl").read_text()) == alarm  # alarms.jsonl always


@pytest.fixture
def private_broker() -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A Mosquitto of our own on a free port, which the test may stop and start again."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    procs = [
        subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ]
    wait_for_port(port)
    yield port, procs
    for proc in procs:
        proc.terminate()
        proc.wait(5)


async def test_sink_reconnects_after_the_broker_restarts(private_broker) -> None:  # type: ignore[no-untyped-def]
    port, procs = private_broker
    sink = MqttSink(f"mqtt://127.0.0.1:{port}", backoff=0.2, attempts=20, timeout=2)
    records = [denied("Decrypt", T0 + timedelta(hours=2 * i), key_arn(1), user("eve")) for i in range(2)]
    detector = Detector()
    first, second = detector.process(records)
    await sink.deliver(first)
    procs[0].terminate()
    procs[0].wait(5)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    async def restart_later() -> None:
        await asyncio.sleep(0.5)
        procs.append(
            subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    restart = asyncio.create_task(restart_later())
    delivery = asyncio.create_task(sink.deliver(second))  # fails, backs off, reconnects
    await restart
    await asyncio.to_thread(wait_for_port, port)
    async with aiomqtt.Client("127.0.0.1", port) as subscriber:
        await subscriber.subscribe("keytrail/alarms/+", qos=1)
        await asyncio.wait_for(delivery, 20)
        # the retried publish may land before we subscribed; publish once more over the same session
        await sink.deliver(second)
        message = await next_message(subscriber.messages)
    await sink.aclose()
    assert json.loads(message.payload)["alarmId"] == second.alarm_id  # type: ignore[arg-type]


async def test_a_broker_out_of_reach_is_down_at_the_last_failure_without_a_wait_then_probed_once() -> None:
    waits: list[float] = []

    async def recorded(seconds: float) -> None:
        waits.append(seconds)

    sink = MqttSink(f"mqtt://127.0.0.1:{free_port()}", attempts=3, backoff=0.25, timeout=2, sleep=recorded)
    [alarm] = Detector().process([denied("Decrypt", T0, key_arn(1), user("eve"))])
    with pytest.raises(HookDown, match="broker out of reach"):
        await sink.deliver(alarm)
    assert waits == [0.25, 0.5]  # between the attempts; none after the last (it waited 1.0 s more, 8 s by default)
    with pytest.raises(HookDown):
        await sink.deliver(alarm)  # the dispatcher's probe of a hook known down: one attempt, no wait
    await sink.aclose()
    assert waits == [0.25, 0.5]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def _forward_to(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection of a TCP proxy to 127.0.0.1:`port`."""
    upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


async def test_alarms_raised_during_a_broker_outage_arrive_in_order_once_it_is_back(
    private_broker, tmp_path: Path, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    """Each alarm had its own five attempts and was then given up on: during an hour-long outage
    nearly every alarm raised never reached MQTT. Now the first alarm's attempts find the broker
    down, and the alarms wait, queued and in the outbox, until a probe finds it back. The hook
    reaches the broker through a proxy that is not there during the outage, so the subscriber is
    on the broker before the hook can publish anything."""
    from keytrail.detect.sinks import Dispatcher
    from keytrail.detect.sinks.outbox import Outbox

    port, _ = private_broker
    hook_port = free_port()
    sink = MqttSink(f"mqtt://127.0.0.1:{hook_port}", attempts=2, backoff=0.05, timeout=1)
    outbox = tmp_path / "alarm-outbox-mqtt.jsonl"
    dispatcher = Dispatcher([sink], outboxes=[Outbox(outbox)], pause=(0.05, 0.2))
    records = [denied("Decrypt", T0 + timedelta(hours=2 * i), key_arn(i), user("eve")) for i in range(20)]
    alarms = Detector().process(records)
    async with aiomqtt.Client("127.0.0.1", port) as subscriber:
        await subscriber.subscribe("keytrail/alarms/#", qos=1)
        with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
            for alarm in alarms:
                dispatcher.publish(alarm)
                await asyncio.sleep(0.05)  # 1 s of outage: each alarm's own attempts would have been spent
            assert dispatcher.failed == 0 and len(outbox.read_text().splitlines()) == 20
            proxy = await asyncio.start_server(functools.partial(_forward_to, port), "127.0.0.1", hook_port)
            received = [json.loads(message.payload)["alarmId"]  # type: ignore[arg-type]
                        for message in [await next_message(subscriber.messages) for _ in alarms]]
            await dispatcher.close(timeout=5)
    proxy.close()
    assert received == [alarm.alarm_id for alarm in alarms] and dispatcher.failed == 0
    assert outbox.read_text() == ""  # nothing owed any more
    down = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    # one line for the outage, not one per alarm, naming the broker
    assert len(down) == 1 and f"MQTT mqtt://127.0.0.1:{hook_port}" in down[0]
    assert f"alarm hook MQTT mqtt://127.0.0.1:{hook_port} is back" in caplog.text
    assert sum("attempt" in r.getMessage() for r in caplog.records) == 2  # the first alarm's two, no probe's


async def _hang_up_on(poison: bytes, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection of a proxy to the broker on `port` that hangs up on a publish holding
    `poison` (as a broker or a gateway in front of it does on a payload it chokes on)."""
    upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)

    async def to_broker() -> None:
        with contextlib.suppress(ConnectionError):
            while (data := await reader.read(65536)) and poison not in data:
                upstream_writer.write(data)
                await upstream_writer.drain()
        upstream_writer.close()
        writer.close()

    await asyncio.gather(to_broker(), _pipe(upstream_reader, writer))


async def test_an_alarm_the_broker_hangs_up_on_alone_is_dead_lettered_and_the_others_arrive(
    private_broker, tmp_path: Path, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    """Every failed MQTT delivery is the broker down, so an alarm the broker (or a proxy before it)
    hung up on each time held the hook, and every later alarm, for good. Once an alarm behind it
    goes out, it is tried once more, and failing again (after a second one behind it went out
    too) is dead-lettered; the others arrive."""
    from keytrail.detect.sinks import Dispatcher

    port, _ = private_broker
    alarms = Detector().process([denied("Decrypt", T0 + timedelta(hours=2 * i), key_arn(i), user("eve"))
                                 for i in range(4)])
    poisoned = alarms[1].alarm_id
    proxy = await asyncio.start_server(functools.partial(_hang_up_on, poisoned.encode(), port), "127.0.0.1", 0)
    hook_port = proxy.sockets[0].getsockname()[1]
    sink = MqttSink(f"mqtt://127.0.0.1:{hook_port}", attempts=2, backoff=0.05, timeout=2,
                    dead_letter=tmp_path / "alarm-dead-letter-mqtt.jsonl")
    dispatcher = Dispatcher([sink], pause=(0.05, 0.2), send_ahead_after=1)
    async with aiomqtt.Client("127.0.0.1", port) as subscriber:
        await subscriber.subscribe("keytrail/alarms/#", qos=1)
        with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
            for alarm in alarms:
                dispatcher.publish(alarm)
            received = [json.loads(message.payload)["alarmId"]  # type: ignore[arg-type]
                        for message in [await next_message(subscriber.messages) for _ in range(3)]]
            await dispatcher.close(timeout=10)
    proxy.close()
    assert received == [alarms[0].alarm_id, alarms[2].alarm_id, alarms[3].alarm_id]
    [entry] = [json.loads(line) for line in (tmp_path / "alarm-dead-letter-mqtt.jsonl").read_text().splitlines()]
    assert entry["alarmId"] == poisoned and entry["hook"] == "MQTT" and entry["alarm"] == alarms[1].to_json()
    assert any(f"keeps failing on alarm {poisoned}" in r.getMessage() for r in caplog.records)
    assert dispatcher.failed == 1


async def test_an_alarm_mqtt_had_not_taken_when_serve_was_killed_arrives_after_the_restart(tmp_path: Path) -> None:
    """The broker is down when the alarm is raised: alarms.jsonl has it, the MQTT hook is still
    retrying when serve is killed. The restart announces nothing alarms.jsonl holds, so the hook's
    outbox is what brings the alarm to the broker once it is back."""
    from botocore.exceptions import ClientError

    from tests.support.server import KeytrailServer

    port = free_port()
    server = KeytrailServer(tmp_path / "data", "--mqtt", f"mqtt://127.0.0.1:{port}").start()
    jsonl = tmp_path / "data" / "alarms.jsonl"
    try:
        alice = server.client("alice")
        blob = alice.encrypt(KeyId=alice.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"]
        with pytest.raises(ClientError, match="AccessDenied"):
            server.client("bob").decrypt(CiphertextBlob=blob)
        async with asyncio.timeout(30):
            while not (jsonl.exists() and jsonl.read_text()):
                await asyncio.sleep(0.1)
    finally:
        server.kill()
    alarm_id = json.loads(jsonl.read_text().splitlines()[0])["alarmId"]
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_for_port, port)
        async with aiomqtt.Client("127.0.0.1", port) as subscriber:
            await subscriber.subscribe("keytrail/alarms/#", qos=1)
            await asyncio.to_thread(server.start)
            try:
                async with asyncio.timeout(30):
                    async for message in subscriber.messages:
                        if json.loads(message.payload)["alarmId"] == alarm_id:  # type: ignore[arg-type]
                            break
            finally:
                await asyncio.to_thread(server.stop)
    finally:
        broker.terminate()
        broker.wait(5)
    assert str(message.topic) == "keytrail/alarms/unauthorized-decrypt"


async def test_a_broker_that_never_answers_the_connect_costs_no_socket_or_task_per_attempt() -> None:
    """A hung broker (or a proxy with nothing behind it) takes the TCP connection and never sends
    CONNACK: each timed-out attempt left its socket open with a task reading it, so a long outage
    like this ran the detector out of file descriptors."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; lets go once the client closes its end
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = MqttSink(f"mqtt://127.0.0.1:{port}", attempts=4, backoff=0, timeout=0.2)
    [alarm] = Detector().process([denied("Decrypt", T0, key_arn(1), user("eve"))])
    sockets, tasks = len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())
    for _ in range(3):
        with pytest.raises(DeliveryError):
            await sink.deliver(alarm)
    await asyncio.sleep(0.5)  # the closes reach the server
    assert (len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())) == (sockets, tasks)  # not 24 and 24 more
    await sink.aclose()
    server.close()
    await server.wait_closed()


async def test_a_stop_while_waiting_for_a_connack_leaves_no_error_in_the_event_loop() -> None:
    """The hooks' drain cut off by a stop cancels a delivery that waits for a hung broker's CONNACK:
    aiomqtt's disconnect callback then read the cancelled wait and raised CancelledError in the
    event loop, a traceback on stderr as `serve --mqtt` ended."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # never answers; lets go once the client closes its end
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    sink = MqttSink(f"mqtt://127.0.0.1:{server.sockets[0].getsockname()[1]}", timeout=30)
    [alarm] = Detector().process([denied("Decrypt", T0, key_arn(1), user("eve"))])
    loop, errors = asyncio.get_running_loop(), []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        delivery = asyncio.create_task(sink.deliver(alarm))
        await asyncio.wait_for(accepted.wait(), 10)
        await asyncio.sleep(0.2)  # the CONNECT is sent: the sink waits for the CONNACK
        delivery.cancel()
        with pytest.raises(asyncio.CancelledError):
            await delivery
        await sink.aclose()
        await asyncio.sleep(0.5)  # the DISCONNECT is written, the socket closed
    finally:
        loop.set_exception_handler(None)
        server.close()
        await server.wait_closed()
    assert errors == []


async def test_a_close_during_an_outage_keeps_the_alarms_in_the_outbox_without_waiting_out_the_drain(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hook known down, probed every few seconds at most, held every stop of serve and detect
    for the whole drain (10 s), though what it is owed waits in its outbox for the next start."""
    from keytrail.detect.sinks import Dispatcher
    from keytrail.detect.sinks.outbox import Outbox

    port = free_port()
    sink = MqttSink(f"mqtt://127.0.0.1:{port}", attempts=1, backoff=0)  # nothing listens there
    outbox = tmp_path / "alarm-outbox-mqtt.jsonl"
    dispatcher = Dispatcher([sink], outboxes=[Outbox(outbox)], pause=(60.0, 60.0))
    [alarm] = Detector().process([denied("Decrypt", T0, key_arn(1), user("eve"))])
    with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
        dispatcher.publish(alarm)
        while f"MQTT mqtt://127.0.0.1:{port} is down" not in caplog.text:
            await asyncio.sleep(0.05)
        await asyncio.wait_for(dispatcher.close(timeout=3600), 60)  # the drain's full hour: a hang
    assert "1 alarm(s) not delivered when the hooks closed" in caplog.text
    assert f"MQTT mqtt://127.0.0.1:{port} (down; kept for the next start) 1" in caplog.text
    assert alarm.alarm_id in outbox.read_text()
