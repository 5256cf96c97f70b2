"""Kafka over aiokafka: topic creation and an acknowledged batch producer.

acks=all, no idempotence and no transactions (the test broker, tansu, supports neither, and
at-least-once delivery does not need them: consumers deduplicate by eventID).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

_YIELD_EVERY = 100

__all__ = ["KafkaProducerLink", "ensure_topic"]

_TOPIC_EXISTS = 36


async def ensure_topic(bootstrap: str, topic: str, partitions: int, *, timeout_ms: int = 10_000) -> None:
    """Create `topic` with `partitions` unless it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        if topic in await admin.list_topics():
            return
        response = await admin.create_topics([NewTopic(topic, partitions, 1)])
        for name, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_EXISTS):
                raise RuntimeError(f"cannot create Kafka topic {name}: error {code} {rest}")
    finally:
        await admin.close()


class KafkaProducerLink:
    """An aiokafka producer that sends batches and returns only when the broker acknowledged
    every message of the batch."""

    def __init__(self, bootstrap: str, *, linger_ms: int = 5, request_timeout_ms: int = 10_000) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=linger_ms,
            max_batch_size=256 << 10, request_timeout_ms=request_timeout_ms,
        )

    async def __aenter__(self) -> KafkaProducerLink:
        await self._producer.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self._producer.stop()

    async def topic_exists(self, topic: str) -> bool:
        """Ask the broker (not the cached metadata) whether `topic` exists."""
        cluster = await self._producer.client.fetch_all_metadata()
        return topic in cluster.topics()

    async def send_batch(self, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Send (key, value) messages in order; return once all are acknowledged, else raise."""
        futures = []
        for index, (key, value) in enumerate(messages, 1):
            futures.append(await self._producer.send(topic, value, key=key))
            if index % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a big batch must not hold the serving loop for tens of ms
        await asyncio.gather(*futures)
