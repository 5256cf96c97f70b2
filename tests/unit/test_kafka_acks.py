"""The Kafka link's check of acknowledgements, without a broker: when the batch that tells a loss
counts as stored, and what the link expects afterwards."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from keytrail.transport.kafka import BrokerLostRecords, KafkaProducerLink, NextOffsets

TOPIC = "t"


class _Cluster:
    def __init__(self, partitions: set[int] | None) -> None:
        self.partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions


def _link(next_offsets: NextOffsets, on_broker: set[int] | Exception | None) -> KafkaProducerLink:
    """A link, never started, whose broker has `on_broker`'s partitions of TOPIC (or fails with it)."""
    link = KafkaProducerLink("127.0.0.1:1", next_offsets=next_offsets)

    async def metadata() -> Any:
        if isinstance(on_broker, Exception):
            raise on_broker
        return _Cluster(on_broker)

    link._producer.client.fetch_all_metadata = metadata  # type: ignore[method-assign]
    return link


async def test_a_batch_acknowledged_at_offsets_gone_back_on_a_topic_the_broker_has_is_stored() -> None:
    """Every partition acknowledged it: the new log holds it, and its positions are what is expected next
    (a partition this batch missed expects nothing: its old position would tell the loss again)."""
    offsets: NextOffsets = {(TOPIC, 0): 10, (TOPIC, 1): 20, (TOPIC, 2): 30}
    link = _link(offsets, {0, 1, 2})
    with pytest.raises(BrokerLostRecords, match=r"t\[0\] acknowledged at offset 0, expected 10 or more: the broker "
                                                r"lost records") as lost:
        await link._check_acks(TOPIC, {0: [(0, 4), (4, 2)], 1: [(0, 3)]})
    assert lost.value.stored
    assert offsets == {(TOPIC, 0): 6, (TOPIC, 1): 3}
    await link._check_acks(TOPIC, {0: [(6, 1)], 2: [(0, 1)]})  # said once
    assert offsets == {(TOPIC, 0): 7, (TOPIC, 1): 3, (TOPIC, 2): 1}


async def test_a_batch_acknowledged_on_a_partition_the_broker_lacks_is_not_stored() -> None:
    offsets: NextOffsets = {(TOPIC, 0): 10, (TOPIC, 1): 20}
    link = _link(offsets, {0})  # the other partitions' writes were acknowledged and dropped
    with pytest.raises(BrokerLostRecords, match="expected 10 or more: the broker lost records") as lost:
        await link._check_acks(TOPIC, {0: [(0, 4)], 1: [(0, 3)]})
    assert not lost.value.stored
    assert offsets == {}  # sent again, its acknowledgements are checked afresh


async def test_an_acknowledgement_without_an_offset_is_not_stored() -> None:
    offsets: NextOffsets = {(TOPIC, 0): 10}
    link = _link(offsets, {0, 1})
    with pytest.raises(BrokerLostRecords) as lost:
        await link._check_acks(TOPIC, {0: [(10, 4)], 1: [(-1, 3)]})
    assert not lost.value.stored and offsets == {}


async def test_a_loss_whose_check_fails_is_told_at_the_next_send() -> None:
    """The broker gone again while its topic is looked for: the batch is not taken, nor are its
    positions, so the send made again after the reconnection still sees the offsets go back."""
    offsets: NextOffsets = {(TOPIC, 0): 10}
    link = _link(offsets, KafkaConnectionError("gone"))
    with pytest.raises(KafkaConnectionError):
        await link._check_acks(TOPIC, {0: [(0, 4)]})
    assert offsets == {(TOPIC, 0): 10}
    with pytest.raises(BrokerLostRecords) as lost:
        await _link(offsets, {0})._check_acks(TOPIC, {0: [(4, 4)]})
    assert lost.value.stored and offsets == {(TOPIC, 0): 8}
