"""The shipper: what it sends to Kafka and how far it moves the shipped offset."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, cast

import pytest

from keytrail.audit.shipper import ShippedOffset, Shipper, _Pause
from keytrail.transport.kafka import BrokerLostRecords, KafkaProducerLink, Message, RecordsTooLarge
from keytrail.transport.segment_log import SegmentLog
from tests.support.audit_records import append_each
from tests.support.mounts import filled, small_filesystem
from tests.support.waits import eventually

# A payload whose first field (keyArn, a string in branch 2 of its union) message_key_bytes reads.
_HEADER = b"\xc3\x01" + bytes(8)


def _payload(offset: int) -> bytes:
    key = f"key-{offset}".encode()
    return _HEADER + b"\x02" + bytes([2 * len(key)]) + key


class _Link:
    """Stands for the Kafka producer: keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def send_batch(self, topic: str, messages: list[Message]) -> None:
        self.sent += messages


async def test_shipping_from_an_offset_retention_deleted_stops_at_the_durable_end(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path / "log", segment_bytes=100, writable=True)
    append_each(log, map(_payload, range(30)))
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
    assert [value for _, value, _ in link.sent] == [_payload(offset) for offset in range(start, 30)]
    assert shipped.value == 30


class _RefusingLink(_Link):
    """Stands for a broker whose topic takes records of at most `limit` bytes (max.message.bytes)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.tries = 0

    async def send_batch(self, topic: str, messages: list[Message]) -> None:
        self.tries += 1
        if any(len(value) > self.limit for _, value, _ in messages):
            raise RecordsTooLarge("MessageSizeTooLargeError")
        await super().send_batch(topic, messages)

    async def __aenter__(self) -> _RefusingLink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def _start_shipping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link: object, payloads: list[bytes],
                    shipped_before: int = 0, offset_file: Path | None = None
                    ) -> tuple[Shipper, ShippedOffset, asyncio.Task[None]]:
    """A shipper at work on a log of `payloads`, all durable, sending through `link` (the topic
    taken as there), `shipped_before` of them acknowledged earlier (the offset kept in `offset_file`)."""

    async def no_topic(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr("keytrail.audit.shipper.ensure_topic", no_topic)
    monkeypatch.setattr("keytrail.audit.shipper.KafkaProducerLink", lambda bootstrap, **settings: link)
    log = SegmentLog(tmp_path / "log", writable=True)
    log.append(payloads)
    log.sync()
    shipped = ShippedOffset(offset_file or tmp_path / "shipped-offset")
    if shipped_before:
        shipped.advance(shipped_before)
    shipper = Shipper("broker:9092", tmp_path / "log", shipped, partitions=1, durable_end=lambda: len(payloads),
                      committed=asyncio.Event())
    return shipper, shipped, asyncio.create_task(shipper.run())


async def test_a_record_the_broker_refuses_as_too_large_is_named_in_an_error_and_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An imported CloudTrail record of several MB is refused by a Kafka broker (1 MiB by default) at
    every retry: shipping went no further, logging 'paused: [Error 10] MessageSizeTooLargeError' as
    for a broker briefly down. Now an error names the record, its size and the topic setting: once,
    not at each retry (every 5 s, 720 lines an hour at ERROR), and shipping resumes by itself, saying
    so, once the topic takes the record."""
    link = _RefusingLink(limit=1000)
    payloads = [_payload(0), _payload(1) + b"x" * 5000, _payload(2)]
    shipper, shipped, running = _start_shipping(tmp_path, monkeypatch, link, payloads)
    await eventually(lambda: link.tries >= 3, what="a try and two retries")
    assert shipped.value == 0 and link.sent == []  # kept, not skipped: raising the topic's limit ships it
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    link.limit = 1 << 20  # the topic's max.message.bytes raised
    await eventually(lambda: shipped.value == 3, what="every record shipped")
    await shipper.stop()
    await asyncio.wait_for(running, 5)
    resumed = re.compile(r"audit shipping to broker:9092 resumed after \d+ s stuck$", re.MULTILINE)
    assert resumed.search(caplog.text), caplog.text
    assert len(errors) == 1, caplog.text
    assert errors[0] == (
        "audit shipping to broker:9092 is stuck: the broker refuses a record as too large (MessageSizeTooLargeError): "
        f"the largest of offsets 0 to 2 is offset 1, {len(_payload(1)) + 5000} bytes. Shipping retries it and goes "
        "no further until the topic's max.message.bytes (and the broker's message.max.bytes) take it; the records "
        "wait in the event log")


class _ForgetfulLink(_RefusingLink):
    """Stands for a broker that came back empty: it acknowledges at offset 0 again, once."""

    async def send_batch(self, topic: str, messages: list[Message]) -> None:
        if not self.sent:
            self.sent.append((None, b"", []))
            raise BrokerLostRecords(f"{topic}[0] acknowledged at offset 0, expected 2 or more: the broker lost records")
        await super().send_batch(topic, messages)


async def test_a_broker_that_lost_records_is_an_error_saying_how_to_send_them_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The records shipped before are gone from Kafka and never sent again: the log said only
    'paused: … the broker lost records', as for a broker briefly down, and not how to resend them."""
    link = _ForgetfulLink(limit=1 << 20)
    payloads = [_payload(offset) for offset in range(4)]  # 2 acknowledged before the broker restarted
    shipper, shipped, running = _start_shipping(tmp_path, monkeypatch, link, payloads, shipped_before=2)
    while shipped.value < 4:
        await asyncio.sleep(0.05)
    await shipper.stop()
    await asyncio.wait_for(running, 5)
    assert [value for _, value, _ in link.sent[1:]] == [_payload(2), _payload(3)]  # shipping went on
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error == (
        "audit shipping to broker:9092: keytrail.audit.v1[0] acknowledged at offset 0, expected 2 or more: the "
        "broker lost records. Records this node shipped before offset 2 may be gone from Kafka; to send them "
        f"again, stop serve and write the first offset to resend into {tmp_path / 'shipped-offset'} (consumers "
        "drop repeats by eventID)")


class _RestartedLink(_RefusingLink):
    """Stands for a broker that came back empty with its topic made again: it stores the first
    batch, acknowledging it at offset 0 again."""

    async def send_batch(self, topic: str, messages: list[Message]) -> None:
        await super().send_batch(topic, messages)
        if len(self.sent) == len(messages):
            raise BrokerLostRecords(f"{topic}[0] acknowledged at offset 0, expected 2 or more: the broker lost "
                                    "records", stored=True)


async def test_the_batch_that_tells_a_loss_stored_is_not_sent_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The broker stored the batch whose acknowledgements went back: sent again, it was on the
    topic twice (up to 2,000 records). Its acknowledgement counts, after the loss is said."""
    link = _RestartedLink(limit=1 << 20)
    payloads = [_payload(offset) for offset in range(4)]  # 2 acknowledged before the broker restarted
    shipper, shipped, running = _start_shipping(tmp_path, monkeypatch, link, payloads, shipped_before=2)
    while shipped.value < 4:
        await asyncio.sleep(0.05)
    await shipper.stop()
    await asyncio.wait_for(running, 5)
    assert [value for _, value, _ in link.sent] == [_payload(2), _payload(3)]  # once
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("audit shipping to broker:9092: keytrail.audit.v1[0] acknowledged at offset 0, expected "
                            "2 or more: the broker lost records. Records this node shipped before offset 2 may be "
                            "gone from Kafka; "), error


class _DownLink(_Link):
    """Stands for a broker that refuses `failures` connections (down), then takes records."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def __aenter__(self) -> _DownLink:
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError(111, "Connect call failed")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


async def test_a_broker_down_is_one_warning_while_it_lasts_and_one_when_shipping_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Retried every 0.2, 0.4, … 5 s, each failed retry wrote its own 'paused' warning: 720 lines
    an hour of one outage. Now the outage is one line (again at most once a minute while it lasts)
    and its end another."""
    link = _DownLink(failures=3)
    shipper, shipped, running = _start_shipping(tmp_path, monkeypatch, link, [_payload(0)])
    while shipped.value < 1:
        await asyncio.sleep(0.05)
    await shipper.stop()
    await asyncio.wait_for(running, 5)
    lines = [r.getMessage() for r in caplog.records if r.name == "keytrail.audit.shipper"]
    assert len(lines) == 2, lines  # three failed retries, one line
    assert lines[0] == "audit shipping to broker:9092 paused: [Errno 111] Connect call failed"
    assert re.fullmatch(r"audit shipping to broker:9092 resumed after \d+ s paused", lines[1]), lines


async def test_an_offset_a_full_disk_cannot_take_is_kept_in_memory_and_written_once_there_is_space(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Writing shipped-offset on a full disk failed as a broker failure would: the link torn down,
    'paused' and 'resumed' logged 4-5 times a second, and the batch Kafka had acknowledged sent
    again at each retry, forever. Now the offset is kept in memory and written once there is space."""
    link = _DownLink(failures=0)
    payloads = [_payload(offset) for offset in range(3)]
    with small_filesystem(tmp_path / "disk", "64k") as disk:
        filler = filled(disk)
        shipper, shipped, running = _start_shipping(tmp_path, monkeypatch, link, payloads,
                                                    offset_file=disk / "shipped-offset")
        await eventually(lambda: link.sent, what="the records sent")
        await asyncio.sleep(1.5)  # retries of the write after 0.2, 0.4 and 0.8 s
        assert [value for _, value, _ in link.sent] == payloads  # once: Kafka acknowledged them
        assert shipped.value == 3 and ShippedOffset(shipped.path).value == 0
        filler.unlink()
        await eventually(lambda: ShippedOffset(shipped.path).value == 3, what="the offset written", timeout=10)
        await shipper.stop()
        await asyncio.wait_for(running, 5)
    assert [value for _, value, _ in link.sent] == payloads
    lines = [r.getMessage() for r in caplog.records if r.name == "keytrail.audit.shipper"]
    assert len(lines) == 2, lines  # the failed retries are one line; no 'paused', no 'resumed'
    assert lines[0] == (f"audit shipping cannot write {shipped.path}: [Errno 28] No space left on device. Shipping "
                        "goes on and retries the write; a restart before then sends again the records from offset 0")
    assert re.fullmatch(rf"audit shipping wrote {re.escape(str(shipped.path))} again after \d+ s", lines[1]), lines


async def test_a_shipper_stopped_before_it_ran_still_ships_what_is_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipper child, still starting on a loaded machine as serve stopped it, read its stdin's end
    at once: `run` found the stop already set and returned without a connection attempt, the durable
    records neither shipped nor named as left behind."""
    link = _DownLink(failures=0)
    shipper, shipped, running = _start_shipping(tmp_path, monkeypatch, link, [_payload(0), _payload(1)])
    await shipper.stop()  # before `run` took its first step
    await asyncio.wait_for(running, 5)
    assert [value for _, value, _ in link.sent] == [_payload(0), _payload(1)]
    assert shipped.value == 2


async def test_a_shipper_stopped_with_the_broker_down_tries_once_more_and_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop during the wait between retries makes one more attempt (the broker may be back), then ends."""
    link = _DownLink(failures=100)
    shipper, shipped, running = _start_shipping(tmp_path, monkeypatch, link, [_payload(0)])
    while link.failures == 100:
        await asyncio.sleep(0.01)
    failures_before_stop = link.failures  # `run` waits to retry: its attempts never suspend here
    await shipper.stop()
    await asyncio.wait_for(running, 5)
    assert link.failures == failures_before_stop - 1 and shipped.value == 0


def test_a_long_outage_is_said_again_once_a_minute_with_the_retries_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    pause = _Pause("broker:9092", clock=lambda: now[0])
    for _ in range(13):  # a retry every 5 s for a minute and more
        pause.failed(ConnectionRefusedError(111, "Connect call failed"))
        now[0] += 5
    pause.failed(OSError("No route to host"))  # another reason: said at once
    assert [r.getMessage() for r in caplog.records] == [
        "audit shipping to broker:9092 paused: [Errno 111] Connect call failed",
        "audit shipping to broker:9092 paused for 60 s (12 retries since the last line): "
        "[Errno 111] Connect call failed",
        "audit shipping to broker:9092 paused for 65 s (1 retries since the last line): No route to host",
    ]


async def test_shipping_held_at_a_damaged_record_of_a_closed_segment_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The shipper shipped nothing past it, in silence, until the unshipped records reached the
    spool's cap and the node refused every call."""
    log = SegmentLog(tmp_path / "log", segment_bytes=100, writable=True)
    append_each(log, map(_payload, range(30)))
    log.sync()
    second = sorted((tmp_path / "log").glob("*.seg"))[1]
    data = bytearray(second.read_bytes())
    data[12] ^= 1  # a bit of its first record flipped
    second.write_bytes(bytes(data))
    held: list[int | None] = []
    shipper = Shipper("unused:9092", tmp_path / "log", ShippedOffset(tmp_path / "shipped-offset"), partitions=1,
                      durable_end=lambda: 30, committed=asyncio.Event(), on_held=held.append)
    link = cast(KafkaProducerLink, cast(Any, _Link()))
    with caplog.at_level("WARNING", logger="keytrail.transport.segment_reader"):
        while await shipper._ship_once(link):
            pass
        for _ in range(5):  # its polls while it waits there
            assert await shipper._ship_once(link) == 0
    log.close()
    assert shipper.shipped.value == int(second.stem)
    assert held == [int(second.stem)]  # told serve once, for keytrail_event_log_reader_held
    [line] = [r.getMessage() for r in caplog.records]
    held = f"the audit shipper reads the event log in {tmp_path / 'log'} no further than offset {int(second.stem)}"
    assert held in line
    assert "is damaged" in line and "not shipped to Kafka" in line
