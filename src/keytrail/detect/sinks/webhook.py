"""Webhook hook: JSON POST signed with HMAC-SHA256, retried with backoff, dead-lettered at the end.

Receivers check `X-Keytrail-Signature: sha256=<hex>` = HMAC-SHA256(secret, raw body) with a
constant-time comparison (`verify_signature`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import httpx

from keytrail.detect.alarms import Alarm, format_time
from keytrail.detect.hooks import shown_url
from keytrail.detect.sinks import retry_waits
from keytrail.owner_only import open_file

__all__ = ["SIGNATURE_HEADER", "WebhookSink", "sign", "verify_signature"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Keytrail-Signature"


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute and compare in constant time (as bytes: compare_digest
    raises TypeError on a str with non-ASCII characters, and the header is whatever arrived)."""
    return header is not None and hmac.compare_digest(sign(secret, body).encode(), header.encode())


class WebhookSink:
    """POSTs each alarm; after `attempts` failures writes it to the dead-letter file."""

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
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        self._client = httpx.AsyncClient(timeout=timeout)

    async def deliver(self, alarm: Alarm) -> None:
        body = json.dumps(alarm.to_json(), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
            "X-Keytrail-Alarm-Id": alarm.alarm_id,
        }
        error = ""
        for attempt, wait in enumerate(retry_waits(self.attempts, self.backoff), 1):
            try:
                # httpx's timeout bounds each read: a receiver trickling bytes would hold the hook
                # (and every alarm queued behind this one) forever. The answer's body is never read:
                # only the status counts, and a URL answering with a download took its size in memory.
                async with asyncio.timeout(self.timeout), self._client.stream(
                    "POST", self.url, content=body, headers=headers
                ) as response:
                    if response.is_success:
                        return
                    error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            except TimeoutError:
                error = f"no answer within {self.timeout} s"
            log.warning(
                "webhook %s: alarm %s attempt %d failed: %s", self.shown_url, alarm.alarm_id, attempt, error
            )
            if wait is not None:
                await asyncio.sleep(wait)
        await asyncio.to_thread(self._dead_letter, alarm, error)

    def _dead_letter(self, alarm: Alarm, error: str) -> None:
        entry = {
            "url": self.shown_url,
            "error": error,
            "attempts": self.attempts,
            "failedAt": format_time(datetime.now(UTC)),
            "alarm": alarm.to_json(),
        }
        with os.fdopen(open_file(self.dead_letter, os.O_WRONLY | os.O_APPEND), "a", encoding="utf-8") as file:
            file.write(json.dumps(entry, separators=(",", ":")) + "\n")

    async def aclose(self) -> None:
        await self._client.aclose()
