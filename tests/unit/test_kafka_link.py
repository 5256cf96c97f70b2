"""The shipper's Kafka link, without a broker: how it reports a refusal it cannot get past."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError

from keytrail.transport.kafka import KafkaProducerLink, RecordsTooLarge


@pytest.mark.parametrize("refusal", [MessageSizeTooLargeError, RecordListTooLargeError])
async def test_a_batch_the_broker_refuses_for_its_size_is_records_too_large(refusal: type[Exception]) -> None:
    """Kafka refuses a record over the topic's max.message.bytes at every retry: the shipper must
    tell that from a broker out of reach (RecordsTooLarge), to say which record and what to raise."""
    link = KafkaProducerLink("127.0.0.1:1")  # never started: the two steps below stand for the broker

    async def build(topic: str, messages: Any) -> dict[int, list[Any]]:
        return {0: []}

    async def refuse(topic: str, partition: int, builders: Any) -> list[tuple[int, int]]:
        raise refusal()

    link._build = build  # type: ignore[method-assign]
    link._send_partition = refuse  # type: ignore[method-assign]
    with pytest.raises(RecordsTooLarge, match=refusal.__name__):
        await link.send_batch("topic", [(b"key", b"value", [])])
