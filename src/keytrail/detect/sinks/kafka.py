"""Kafka hook: alarms on `keytrail.alarms.v1`, Avro single-object encoded, keyed by key ARN."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from keytrail.detect.alarms import Alarm
from keytrail.detect.avro import encode_alarm
from keytrail.detect.sinks import DeliveryError, retry_waits
from keytrail.transport.kafka import quiet_bootstrap

__all__ = ["ALARMS_TOPIC", "KafkaSink"]

log = logging.getLogger(__name__)

ALARMS_TOPIC = "keytrail.alarms.v1"


class KafkaSink:
    """Sends each alarm and waits for the broker's ack (in the sink's own worker, never inline);
    a broker out of reach is tried again with backoff, as the MQTT hook does, before giving up."""

    def __init__(
        self, bootstrap: str, topic: str = ALARMS_TOPIC, *, attempts: int = 5, backoff: float = 0.5
    ) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.attempts, self.backoff = attempts, backoff
        self._producer: AIOKafkaProducer | None = None

    async def deliver(self, alarm: Alarm) -> None:
        value, key = encode_alarm(alarm), (alarm.key_arn or alarm.account_id or alarm.rule).encode()
        for attempt, wait in enumerate(retry_waits(self.attempts, self.backoff), 1):
            try:
                producer = await self._start()
                await producer.send_and_wait(self.topic, value, key=key)
                return
            except (KafkaError, OSError) as exc:
                log.warning("Kafka send of alarm %s failed (attempt %d): %s", alarm.alarm_id, attempt, exc)
                await self.aclose()  # start afresh on the next attempt
            if wait is not None:
                await asyncio.sleep(wait)
        raise DeliveryError(f"Kafka: gave up on alarm {alarm.alarm_id} after {self.attempts} attempts")

    async def _start(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=False,
                request_timeout_ms=10_000,
            )
            try:
                with quiet_bootstrap():  # the failure is logged once, by `deliver`
                    await producer.start()
            except BaseException:
                await producer.stop()  # what start opened before it failed
                raise
            self._producer = producer
        return self._producer

    async def aclose(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError):  # a broken producer: why we close it
                await producer.stop()
