"""The in-process detector end to end: boto3 scenarios against `keytrail serve --mqtt --kafka`.

Each rule's alarm arrives on MQTT `keytrail/alarms/<rule>` with the CONTRACTS §5 fields, is in
`<data-dir>/alarms.jsonl` and on Kafka `keytrail.alarms.v1`; benign traffic of the same volume
by the same principals fires nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from botocore.exceptions import ClientError

from keytrail.detect.avro import decode_alarm
from tests.integration.e2e.support import consume, private_mosquitto
from tests.support.server import ACCOUNT, KeytrailServer
from tests.support.services import kafka_broker

pytestmark = pytest.mark.integration

ALICE, BOB = f"arn:aws:iam::{ACCOUNT}:user/alice", f"arn:aws:iam::{ACCOUNT}:user/bob"
FIELDS = {"alarmId", "rule", "severity", "keyArn", "principalArn", "accountId", "region", "firstSeen",
          "lastSeen", "count", "summary", "eventIds", "recommendation"}
SPIKE_CALLS = 120  # usage-spike needs >= 100 calls in one minute and 60 minutes of history


def _policy(*statements: dict[str, Any]) -> str:
    admin = {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
             "Action": "kms:*", "Resource": "*"}
    return json.dumps({"Version": "2012-10-17", "Statement": [admin, *statements]})


PUBLIC_DECRYPT = {"Sid": "Anyone", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}
BOB_DECRYPT = {"Sid": "Bob", "Effect": "Allow", "Principal": {"AWS": BOB}, "Action": "kms:Decrypt",
               "Resource": "*"}


class Alarms:
    """What arrived on MQTT while the scenarios ran, and what the data dir and Kafka hold."""

    def __init__(self, data_dir: Path) -> None:
        self.mqtt: list[tuple[str, dict[str, Any]]] = []
        self.data_dir = data_dir

    def jsonl(self) -> list[dict[str, Any]]:
        path = self.data_dir / "alarms.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    async def until(self, found: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30) -> dict[str, Any]:
        """The first MQTT alarm for which `found` holds (waiting for it with a deadline)."""
        async with asyncio.timeout(timeout):
            while True:
                for _, alarm in self.mqtt:
                    if found(alarm):
                        return alarm
                await asyncio.sleep(0.05)
        raise AssertionError(what)  # pragma: no cover - the timeout raises first


@asynccontextmanager
async def mqtt_alarms(data_dir: Path, url: str) -> AsyncIterator[Alarms]:
    """Subscribe to keytrail/alarms/# (QoS 1) before any traffic; collect in the background."""
    alarms = Alarms(data_dir)
    port = int(url.rsplit(":", 1)[1])
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("keytrail/alarms/#", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                alarms.mqtt.append((str(message.topic), json.loads(bytes(message.payload))))

        task = asyncio.create_task(collect())
        try:
            yield alarms
        finally:
            task.cancel()


def _denied_decrypt(server: KeytrailServer, blob: bytes) -> None:
    with pytest.raises(ClientError) as denied:
        server.client("bob").decrypt(CiphertextBlob=blob)
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"


def _align_to_minute_start(server: KeytrailServer) -> None:
    """Advance the dev clock to one second past a minute boundary, so a burst stays in one minute."""
    now = datetime.fromisoformat(server.advance(0).replace("Z", "+00:00"))
    server.advance(61 - now.second - now.microsecond / 1e6)


def _spike(server: KeytrailServer) -> str:
    """A key used once an hour, then SPIKE_CALLS times in one minute by the same principal."""
    alice = server.client("alice")
    arn = alice.create_key(Description="spike")["KeyMetadata"]["Arn"]
    alice.encrypt(KeyId=arn, Plaintext=b"baseline")
    server.advance(61 * 60)
    _align_to_minute_start(server)
    for _ in range(SPIKE_CALLS):
        alice.encrypt(KeyId=arn, Plaintext=b"burst")
    return str(arn)


def _check_alarm(alarm: dict[str, Any], topic: str, rule: str, key_arn: str) -> None:
    assert topic == f"keytrail/alarms/{rule}"
    assert set(alarm) >= FIELDS and alarm["rule"] == rule and alarm["keyArn"] == key_arn
    assert alarm["severity"] in ("LOW", "MEDIUM", "HIGH", "CRITICAL")
    assert alarm["accountId"] == ACCOUNT and alarm["region"] == "us-east-1"
    assert alarm["count"] >= 1 and alarm["summary"] and alarm["recommendation"]
    assert alarm["firstSeen"] <= alarm["lastSeen"]


async def test_each_rule_fires_on_mqtt_in_alarms_jsonl_and_on_kafka(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with kafka_broker() as bootstrap, private_mosquitto() as mqtt:
        server = KeytrailServer(data, "--kafka", bootstrap, "--mqtt", mqtt).start()
        try:
            async with mqtt_alarms(data, mqtt) as alarms:
                expected = await _scenarios(server, alarms)
        finally:
            assert server.stop() == 0
        by_id = {alarm.alarm_id: alarm for alarm in await _kafka_alarms(bootstrap, expected)}
    stored = {alarm["alarmId"]: alarm for alarm in alarms.jsonl()}
    for rule, (alarm, topic, key_arn) in expected.items():
        _check_alarm(alarm, topic, rule, key_arn)
        _check_alarm(stored[alarm["alarmId"]], topic, rule, key_arn)  # alarms.jsonl holds it too
        _check_alarm(by_id[alarm["alarmId"]].to_json(), topic, rule, key_arn)  # and Kafka, in Avro


async def _scenarios(server: KeytrailServer, alarms: Alarms) -> dict[str, tuple[dict[str, Any], str, str]]:
    """Drive each rule through boto3; return rule -> (its MQTT alarm, topic, key ARN)."""
    alice = server.client("alice")
    run = asyncio.to_thread
    found: dict[str, tuple[dict[str, Any], str, str]] = {}

    async def expect(rule: str, key_arn: str, principal: str | None = None) -> None:
        def match(alarm: dict[str, Any]) -> bool:
            return alarm["rule"] == rule and alarm["keyArn"] == key_arn and \
                (principal is None or alarm["principalArn"] == principal)
        alarm = await alarms.until(match, f"no {rule} alarm on {key_arn}")
        topic = next(t for t, a in alarms.mqtt if a is alarm)
        found[rule] = (alarm, topic, key_arn)

    secret = (await run(alice.create_key, Description="secret"))["KeyMetadata"]["Arn"]
    blob = (await run(alice.encrypt, KeyId=secret, Plaintext=b"payroll"))["CiphertextBlob"]
    await run(_denied_decrypt, server, blob)
    await expect("unauthorized-decrypt", secret, BOB)
    public = (await run(alice.create_key, Policy=_policy(PUBLIC_DECRYPT)))["KeyMetadata"]["Arn"]
    await expect("permissive-key", public, ALICE)
    await run(alice.decrypt, CiphertextBlob=blob)  # in use a moment ago...
    await run(alice.schedule_key_deletion, KeyId=secret, PendingWindowInDays=7)  # ...and now doomed
    await expect("key-deletion-in-use", secret, ALICE)
    spiking = await run(_spike, server)
    await expect("usage-spike", spiking, ALICE)
    rotating = (await run(alice.create_key, Description="rotating"))["KeyMetadata"]["Arn"]
    await run(alice.enable_key_rotation, KeyId=rotating)
    await run(alice.disable_key_rotation, KeyId=rotating.rsplit("/", 1)[1])  # by key id, as the console does
    await expect("rotation-disabled", rotating, ALICE)
    idle = (await run(alice.create_key, Description="idle"))["KeyMetadata"]["Arn"]
    await run(server.advance, 91 * 86400)
    await expect("unused-key", idle)
    return found


async def _kafka_alarms(bootstrap: str, expected: dict[str, tuple[dict[str, Any], str, str]]) -> list[Any]:
    want = {alarm["alarmId"] for alarm, _, _ in expected.values()}
    messages = await consume(bootstrap, "keytrail.alarms.v1",
                             lambda got: want <= {decode_alarm(value).alarm_id for _, value in got})
    return [decode_alarm(value) for _, value in messages]


async def test_benign_traffic_of_the_same_volume_fires_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with private_mosquitto() as mqtt:
        server = KeytrailServer(data, "--mqtt", mqtt).start()
        try:
            async with mqtt_alarms(data, mqtt) as alarms:
                await asyncio.to_thread(_benign, server)
                sentinel = await asyncio.to_thread(_sentinel, server)
                await alarms.until(lambda alarm: alarm["keyArn"] == sentinel, "no sentinel alarm")
        finally:
            assert server.stop() == 0
    assert [alarm["keyArn"] for _, alarm in alarms.mqtt] == [sentinel]
    assert [alarm["keyArn"] for alarm in alarms.jsonl()] == [sentinel]


def _sentinel(server: KeytrailServer) -> str:
    """One denied decrypt after the benign traffic: the detector reads the log in order, so once
    its alarm arrived every benign event before it was evaluated (no fixed wait)."""
    alice = server.client("alice")
    key = alice.create_key(Description="sentinel")["KeyMetadata"]["Arn"]
    _denied_decrypt(server, alice.encrypt(KeyId=key, Plaintext=b"s")["CiphertextBlob"])
    return str(key)


def _benign(server: KeytrailServer) -> None:
    """The same principals and volume as the scenarios, every call allowed and expected."""
    alice, bob, app = server.client("alice"), server.client("bob"), server.client("app")
    shared = alice.create_key(Policy=_policy(BOB_DECRYPT))["KeyMetadata"]["Arn"]  # bob by name: not public
    blob = alice.encrypt(KeyId=shared, Plaintext=b"payroll")["CiphertextBlob"]
    bob.decrypt(CiphertextBlob=blob)
    alice.put_key_policy(KeyId=shared, PolicyName="default", Policy=_policy(BOB_DECRYPT))
    alice.enable_key_rotation(KeyId=shared)  # turning rotation on is what the rotation rule asks for
    unused = alice.create_key(Description="never used")["KeyMetadata"]["Arn"]
    alice.schedule_key_deletion(KeyId=unused, PendingWindowInDays=7)  # not in use: nothing to warn of
    busy = alice.create_key(Description="busy")["KeyMetadata"]["Arn"]
    for _ in range(SPIKE_CALLS):  # a busy key from its first minute has no quieter baseline
        app.encrypt(KeyId=busy, Plaintext=b"steady")
    app.decrypt(CiphertextBlob=blob)
