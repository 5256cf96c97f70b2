"""Kafka hook: alarms on `keytrail.alarms.v1`, Avro single-object encoded, keyed by key ARN."""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaProducer

from keytrail.detect.alarms import Alarm
from keytrail.detect.avro import encode_alarm

__all__ = ["ALARMS_TOPIC", "KafkaSink"]

log = logging.getLogger(__name__)

ALARMS_TOPIC = "keytrail.alarms.v1"


class KafkaSink:
    """Sends each alarm and waits for the broker's ack (in the sink's own worker, never inline)."""

    def __init__(self, bootstrap: str, topic: str = ALARMS_TOPIC) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self._producer: AIOKafkaProducer | None = None

    async def deliver(self, alarm: Alarm) -> None:
        producer = await self._start()
        key = (alarm.key_arn or alarm.account_id or alarm.rule).encode()
        try:
            await producer.send_and_wait(self.topic, encode_alarm(alarm), key=key)
        except Exception:
            await self.aclose()  # start afresh on the next alarm
            raise

    async def _start(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=False,
                request_timeout_ms=10_000,
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def aclose(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
