"""Webhook hook: JSON POST signed with HMAC-SHA256, retried with backoff; an alarm the receiver
refuses (an answer other than 2xx or those of `UNAVAILABLE`, a 500 among them) is dead-lettered
after its attempts, while a receiver out of reach (no connection, no answer in time, 408, 429,
502, 503, 504, a CDN's 521-524) is the hook down: the dispatcher keeps its alarms until it answers again, unless
it takes the alarms behind one it keeps answering 503 to (the dispatcher then gives that one up).

Receivers check `X-Keytrail-Signature: sha256=<hex>` = HMAC-SHA256(secret, raw body) with a
constant-time comparison (`verify_signature`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path

import httpx

from keytrail.detect.alarms import Alarm
from keytrail.detect.hooks import shown_url, webhook_name
from keytrail.detect.sinks import Attempts, Failure, HookDown
from keytrail.detect.sinks.dead_letter import DeadLetters

__all__ = ["SIGNATURE_HEADER", "WebhookSink", "sign", "verify_signature"]


SIGNATURE_HEADER = "X-Keytrail-Signature"
# Answers that say the receiver cannot take anything now, not that it refuses this alarm: a proxy
# without its receiver (502, 504, and the same said by Cloudflare and CDNs answering as it does: 521
# refused, 522 connection timed out, 523 unreachable, 524 no answer in time), one unavailable or
# overloaded (503, 429), a request timeout. Any other answer, a 500 among them, is about this
# alarm: an alarm the receiver fails on (its bug, say) is dead-lettered after its attempts rather
# than taken for an outage, where it would hold every alarm behind it until the receiver is fixed.
UNAVAILABLE = frozenset({408, 429, 502, 503, 504, 521, 522, 523, 524})
# Of those, the answers about the receiver's state alone, never about one payload: a rate limit
# (429) or a request it tired of waiting for (408). They do not count as the hook reached, so the
# alarms behind are not tried on them: a rate limiter that let one of those through then answered
# the head's next try 429, and the head, a good alarm, was given up on as one the hook chokes on. A
# CDN that could not connect to the receiver (521, 522, 523) never sent it the alarm either.
NOT_ABOUT_THE_ALARM = frozenset({408, 429, 521, 522, 523})
# Failures once connected: the receiver hung up on the request, or did not answer it in time, which
# may be about this alarm alone (the dispatcher then tries the alarms behind it); a connection
# refused or not made in time is the receiver down for every alarm.
AFTER_CONNECTING = (httpx.ReadError, httpx.WriteError, httpx.ReadTimeout, httpx.WriteTimeout,
                    httpx.RemoteProtocolError)


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute and compare in constant time (as bytes: compare_digest
    raises TypeError on a str with non-ASCII characters, and the header is whatever arrived)."""
    return header is not None and hmac.compare_digest(sign(secret, body).encode(), header.encode())


class _Connected:
    """Whether a request got as far as being sent on a connection (httpx's `trace` extension)."""

    def __init__(self) -> None:
        self.sending = False

    async def trace(self, event: str, info: dict[str, object]) -> None:
        self.sending = self.sending or event.endswith("send_request_headers.started")


class WebhookSink:
    """POSTs each alarm; an alarm refused `attempts` times goes to the dead-letter file, and a
    receiver out of reach raises `HookDown` (the alarm waits, see the module docstring)."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        dead_letter: Path,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        timeout: float = 10.0,
    ) -> None:
        self.url, self.secret, self.dead_letter = url, secret, dead_letter
        self.shown_url = shown_url(url)
        # How log lines call it: two webhooks on one host differ in their path only, which the shown
        # URL leaves out (a token may be there); the digest of its files' names tells them apart.
        self.name = f"{webhook_name(url)} {self.shown_url}"
        self.dead_letters = DeadLetters(dead_letter, self.shown_url, with_url=True)
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        self._client = httpx.AsyncClient(timeout=timeout)
        self._attempts = Attempts(self.name, attempts, backoff)

    async def deliver(self, alarm: Alarm) -> None:
        body = json.dumps(alarm.to_json(), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
            "X-Keytrail-Alarm-Id": alarm.alarm_id,
        }
        failure = await self._attempts.run(lambda: self._post(body, headers), alarm.alarm_id)
        if failure is not None and failure.down:
            raise HookDown(f"webhook {self.shown_url}: {failure.reason}; alarm {alarm.alarm_id} not delivered",
                           reached=failure.reached)
        if failure is not None:
            await asyncio.to_thread(self.dead_letters.add, alarm, failure.reason, self.attempts)

    async def _post(self, body: bytes, headers: dict[str, str]) -> Failure | None:
        connected = _Connected()
        try:
            # httpx's timeout bounds each read: a receiver trickling bytes would hold the hook
            # (and every alarm queued behind this one) forever. The answer's body is never read:
            # only the status counts, and a URL answering with a download took its size in memory.
            async with asyncio.timeout(self.timeout), self._client.stream(
                "POST", self.url, content=body, headers=headers, extensions={"trace": connected.trace}
            ) as response:
                status = response.status_code
        except httpx.HTTPError as exc:
            return Failure(f"{type(exc).__name__}: {exc}", down=True, reached=isinstance(exc, AFTER_CONNECTING))
        except TimeoutError:
            # This deadline, started before httpx's read timeout, is what ends a request left
            # unanswered: once the request was being sent, the receiver was reached (it may be
            # stuck on this payload alone), as when httpx's ReadTimeout ends it.
            return Failure(f"no answer within {self.timeout} s", down=True, reached=connected.sending)
        if 200 <= status < 300:
            return None
        return Failure(f"HTTP {status}", down=status in UNAVAILABLE, reached=status not in NOT_ABOUT_THE_ALARM)

    async def aclose(self) -> None:
        await self._client.aclose()
