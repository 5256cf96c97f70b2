"""The shipper: what it sends to Kafka and how far it moves the shipped offset."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from keytrail.audit.shipper import ShippedOffset, Shipper
from keytrail.transport.kafka import KafkaProducerLink
from keytrail.transport.segment_log import SegmentLog

# A payload whose first field (keyArn, a string in branch 2 of its union) message_key_bytes reads.
_HEADER = b"\xc3\x01" + bytes(8)


def _payload(offset: int) -> bytes:
    key = f"key-{offset}".encode()
    return _HEADER + b"\x02" + bytes([2 * len(key)]) + key


class _Link:
    """Stands for the Kafka producer: keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes]] = []

    async def send_batch(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
        self.sent += messages


async def test_shipping_from_an_offset_retention_deleted_stops_at_the_durable_end(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path / "log", segment_bytes=100, writable=True)
    log.append([_payload(offset) for offset in range(30)])
    log.sync()
    log.delete_before(10)  # retention: the first records are gone
    start = log.start_offset()
    assert start > 0
    log.append([_payload(offset) for offset in range(30, 40)])  # written, not yet durable (fsync in flight)
    shipped = ShippedOffset(tmp_path / "shipped-offset")  # 0: its file was lost, shipping starts over
    shipper = Shipper("unused:9092", tmp_path / "log", shipped, partitions=1,
                      durable_end=lambda: 30, committed=asyncio.Event())
    link = _Link()
    while await shipper._ship_once(cast(KafkaProducerLink, cast(Any, link))):  # a segment a round
        pass
    assert [value for _, value in link.sent] == [_payload(offset) for offset in range(start, 30)]
    assert shipped.value == 30
