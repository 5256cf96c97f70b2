"""Kafka hook: alarms on `keytrail.alarms.v1`, Avro single-object encoded, keyed by key ARN (the
account id for an alarm about no one key); the hook makes the topic where the broker does not."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidMessageError,
    InvalidTimestampError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
)

from keytrail.detect.alarms import Alarm
from keytrail.detect.avro import encode_alarm
from keytrail.detect.sinks import Attempts, DeliveryError, Failure, HookDown
from keytrail.detect.sinks.dead_letter import DeadLetters
from keytrail.transport.addresses import redacted
from keytrail.transport.kafka import ensure_topic, quiet_bootstrap
from keytrail.transport.kafka_security import KafkaSecurityError, kafka_client_options

__all__ = ["ALARMS_TOPIC", "KafkaSink"]


ALARMS_TOPIC = "keytrail.alarms.v1"
# What the broker answers about the record itself: that alarm is given up on after its attempts.
# Anything else (no broker, a timeout, no leader, no authorization yet) is the hook down: the
# alarms wait for it. aiokafka's `retriable` does not tell: a send timing out is not retriable.
REFUSALS = (CorruptRecordException, InvalidMessageError, InvalidTimestampError, MessageSizeTooLargeError,
            RecordListTooLargeError, RecordTooLargeError)
# A record that times out on a producer that is started (it reached a broker and has the cluster's
# metadata) may be about that record alone: the broker, or a proxy before it, never acknowledging
# it while it takes others. Like a webhook left unanswered once connected, it is the hook down,
# `reached`: the dispatcher then tries the alarms behind it, and gives it up (dead-lettered) only if
# the broker takes those and still times out on it. A broker really gone fails the producer's next
# start (each failed attempt starts afresh), so the head's last attempt is not `reached`, and a
# broker taking nothing takes no alarm behind either: nothing is given up. A produce request left
# unanswered fails with RequestTimedOutError (Kafka error 7: aiokafka's request timeout, which the
# record's batch does not outlive), the same error code a broker answers when the replicas do not
# acknowledge in time; KafkaTimeoutError is a batch expiring before it was sent (no leader).
SEND_TIMEOUTS = (KafkaTimeoutError, RequestTimedOutError)
REQUEST_TIMEOUT_MS = 10_000
# How the hook makes its topic on a broker that makes no topic by itself (auto.create.topics.enable
# =false, Amazon MSK's default), where nothing else would: as many partitions as `serve` gives the
# audit topic by default, each on up to three brokers. A topic made beforehand, or by a broker that
# makes topics, is used as it is.
TOPIC_PARTITIONS = 3
TOPIC_REPLICAS = 3


class KafkaSink:
    """Sends each alarm and waits for the broker's ack (in the sink's own worker, never inline);
    a broker out of reach is tried again with backoff, as the MQTT hook does, and then is the hook
    down (`HookDown`); a record the broker refuses is given up on after its attempts: written to
    `dead_letter` (as serve and detect make it), else raised as a `DeliveryError`."""

    def __init__(
        self, bootstrap: str, topic: str = ALARMS_TOPIC, *, attempts: int = 5, backoff: float = 0.5,
        dead_letter: Path | None = None,
    ) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.name = f"Kafka {redacted(bootstrap, query=False)}"  # how log lines call it: no credentials
        self.attempts, self.backoff = attempts, backoff
        self.dead_letters = DeadLetters(dead_letter, "Kafka") if dead_letter is not None else None
        self._producer: AIOKafkaProducer | None = None
        self._attempts = Attempts("Kafka", attempts, backoff)
        # How long the broker has to answer a produce request: past it the record times out alone
        # (SEND_TIMEOUTS). Tests that hold a request shorten it.
        self.request_timeout_ms = REQUEST_TIMEOUT_MS

    async def deliver(self, alarm: Alarm) -> None:
        value, key = encode_alarm(alarm), (alarm.key_arn or alarm.account_id or alarm.rule).encode()
        failure = await self._attempts.run(lambda: self._send(value, key), alarm.alarm_id)
        if failure is not None and failure.down:
            raise HookDown(f"Kafka: broker out of reach ({failure.reason}); alarm {alarm.alarm_id} not delivered",
                           reached=failure.reached)
        if failure is not None and self.dead_letters is not None:
            await asyncio.to_thread(self.dead_letters.add, alarm, failure.reason, self.attempts)
        elif failure is not None:
            raise DeliveryError(f"Kafka: gave up on alarm {alarm.alarm_id} after {self.attempts} attempts: "
                                f"{failure.reason}")

    async def _send(self, value: bytes, key: bytes) -> Failure | None:
        try:
            producer = await self._start()
        # No broker, or none keytrail may reach (its TLS or SASL settings, a CA file gone since the
        # start checked them): out of reach for every alarm.
        except (KafkaError, OSError, KafkaSecurityError) as exc:
            await self.aclose()
            return Failure(str(exc) or type(exc).__name__, down=not isinstance(exc, REFUSALS))
        try:
            await self._send_and_wait(producer, value, key)
            return None
        except (KafkaError, OSError) as exc:
            await self.aclose()  # start afresh on the next attempt
            return Failure(str(exc) or type(exc).__name__, down=not isinstance(exc, REFUSALS),
                           reached=isinstance(exc, SEND_TIMEOUTS))

    async def _send_and_wait(self, producer: AIOKafkaProducer, value: bytes, key: bytes) -> None:
        """Send and wait for the broker's ack; the topic made first if the broker lacks it and did not
        make it when the producer asked for it (aiokafka's metadata requests ask the broker to)."""
        try:
            await producer.send_and_wait(self.topic, value, key=key)
        except UnknownTopicOrPartitionError:
            await self._make_topic(producer)
            await producer.send_and_wait(self.topic, value, key=key)

    async def _make_topic(self, producer: AIOKafkaProducer) -> None:
        """Make the topic, each partition on as many of the cluster's brokers as TOPIC_REPLICAS allows."""
        replicas = max(1, min(TOPIC_REPLICAS, len(producer.client.cluster.brokers())))
        try:
            await ensure_topic(self.bootstrap, self.topic, TOPIC_PARTITIONS, replicas,
                               timeout_ms=self.request_timeout_ms)
        except RuntimeError as exc:  # the broker refused to make it: a policy, no authorization
            # The hook is down until someone makes the topic; the reason goes in its log line.
            raise UnknownTopicOrPartitionError(
                f"topic {self.topic} does not exist, and the broker refused to make it ({exc}): make it") from exc

    async def _start(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=False,
                request_timeout_ms=self.request_timeout_ms,
                **kafka_client_options(),
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
