"""MQTT hook: each alarm as JSON on `keytrail/alarms/<rule>`, QoS 1, reconnecting on failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiomqtt

from keytrail.detect.alarms import Alarm
from keytrail.detect.hooks import mqtt_url_problem, shown_url
from keytrail.detect.sinks import Attempts, DeliveryError, Failure, HookDown
from keytrail.detect.sinks.dead_letter import DeadLetters

__all__ = ["DeliveryError", "HookDown", "MqttSink"]



class MqttSink:
    """Publishes alarms over one connection, reopened (with backoff) whenever it breaks. A broker
    takes any alarm it can be reached for (QoS 1 knows no refusal): a failed delivery is the broker
    down (`HookDown`), never an alarm given up on by the sink; `dead_letter` is where the
    dispatcher puts one the broker hangs up on while it takes the alarms behind it."""

    def __init__(
        self,
        url: str,
        topic_prefix: str = "keytrail/alarms",
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        timeout: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        dead_letter: Path | None = None,
    ) -> None:
        if problem := mqtt_url_problem(url):
            raise ValueError(problem)
        parts = urlsplit(url)
        self.name = f"MQTT {shown_url(url)}"  # how log lines call it: no user name or password
        self._host = parts.hostname or ""  # never empty: mqtt_url_problem checked it
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._tls = ssl.create_default_context() if parts.scheme == "mqtts" else None
        self.topic_prefix, self.attempts, self.backoff, self.timeout = (
            topic_prefix,
            attempts,
            backoff,
            timeout,
        )
        self._attempts = Attempts("MQTT", attempts, backoff, sleep)
        self.dead_letters = DeadLetters(dead_letter, "MQTT") if dead_letter is not None else None
        self._client: aiomqtt.Client | None = None

    def topic(self, alarm: Alarm) -> str:
        return f"{self.topic_prefix}/{alarm.rule}"

    async def deliver(self, alarm: Alarm) -> None:
        payload = json.dumps(alarm.to_json(), separators=(",", ":"))
        failure = await self._attempts.run(lambda: self._publish(self.topic(alarm), payload), alarm.alarm_id)
        if failure is not None:
            raise HookDown(f"MQTT: broker out of reach ({failure.reason}); alarm {alarm.alarm_id} not delivered",
                           reached=failure.reached)

    async def _publish(self, topic: str, payload: str) -> Failure | None:
        connected = False
        try:
            client = await self._connect()
            connected = True
            await client.publish(topic, payload, qos=1, timeout=self.timeout)
            return None
        except (aiomqtt.MqttError, OSError) as exc:
            await self._disconnect()  # start afresh on the next attempt
            # Connected, the publish failed: the broker hung up on this alarm, or has no room for it.
            return Failure(str(exc) or type(exc).__name__, down=True, reached=connected)

    async def _connect(self) -> aiomqtt.Client:
        if self._client is None:
            client = aiomqtt.Client(
                self._host,
                self._port,
                username=self._username,
                password=self._password,
                tls_context=self._tls,
                timeout=self.timeout,
            )
            try:
                await client.__aenter__()
            except BaseException:
                await _abandon(client)
                raise
            self._client = client
        return self._client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, OSError):  # already broken: why we are here
                await client.__aexit__(None, None, None)

    async def aclose(self) -> None:
        await self._disconnect()


async def _abandon(client: aiomqtt.Client) -> None:
    """Close the socket of a connection that never got its CONNACK (a hung broker, a proxy or load
    balancer with nothing behind it). aiomqtt leaves it open, with a task reading it, when the wait
    times out: each attempt kept one more of each, so a broker down like this for hours ran the
    detector out of file descriptors. A refused connect opened no socket and needs nothing.
    `__aexit__` sends DISCONNECT and closes the socket once it is written, then waits for an
    acknowledgement that a connection never accepted cannot bring: that wait is cut short. Also
    when the wait for the CONNACK was cancelled rather than timed out."""
    if client._client.socket() is None:  # the paho client aiomqtt wraps: no socket, nothing to close
        return
    if client._connected.cancelled():
        # A stop cancelled the wait for the CONNACK (the hooks' drain cut off): aiomqtt renews this
        # future after a timed-out wait only, and its disconnect callback, reading the cancelled
        # one, raised CancelledError in the event loop (a traceback on stderr).
        client._connected = asyncio.get_running_loop().create_future()
    with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
        async with asyncio.timeout(0.1):
            await client.__aexit__(None, None, None)
