"""Which hooks to deliver alarms to, from the settings file's `[hooks]` table and from flags.

[hooks]
mqtt = "mqtt://127.0.0.1:1883"
kafka = "127.0.0.1:9092"

[[hooks.webhook]]
url = "https://alerts.example.com/keytrail"
secret_env = "KEYTRAIL_WEBHOOK_SECRET"   # or: secret = "…"
attempts = 5
backoff = 0.5
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from keytrail.detect.sinks import AlarmSink
from keytrail.detect.sinks.jsonl import JsonlSink

__all__ = ["HooksConfig", "WebhookConfig", "build_sinks"]


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    secret: bytes
    attempts: int = 5
    backoff: float = 0.5

    def __repr__(self) -> str:  # the secret never reaches logs
        return f"WebhookConfig(url={self.url!r}, attempts={self.attempts})"


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """Hooks besides alarms.jsonl (which is always on)."""

    mqtt: str | None = None
    kafka: str | None = None
    webhooks: tuple[WebhookConfig, ...] = ()

    @classmethod
    def from_settings(cls, doc: Mapping[str, Any]) -> HooksConfig:
        """Read the `[hooks]` table of a parsed settings file."""
        table = doc.get("hooks", {})
        return cls(
            table.get("mqtt"),
            table.get("kafka"),
            tuple(_webhook(entry) for entry in table.get("webhook", [])),
        )

    def with_flags(self, mqtt: str | None = None, kafka: str | None = None) -> HooksConfig:
        """Flags win over the settings file."""
        return replace(self, mqtt=mqtt or self.mqtt, kafka=kafka or self.kafka)


def _webhook(entry: Mapping[str, Any]) -> WebhookConfig:
    if "url" not in entry:
        raise ValueError("[[hooks.webhook]] needs a url")
    secret = entry.get("secret")
    if secret is None and "secret_env" in entry:
        secret = os.environ.get(entry["secret_env"])
    if not secret:
        raise ValueError(f"webhook {entry['url']}: set secret or secret_env (an HMAC key is required)")
    return WebhookConfig(
        str(entry["url"]),
        str(secret).encode(),
        int(entry.get("attempts", 5)),
        float(entry.get("backoff", 0.5)),
    )


def build_sinks(data_dir: Path, hooks: HooksConfig) -> list[AlarmSink]:
    """alarms.jsonl in the data dir, plus every configured hook."""
    sinks: list[AlarmSink] = [JsonlSink(data_dir / "alarms.jsonl")]
    if hooks.mqtt:
        from keytrail.detect.sinks.mqtt import MqttSink

        sinks.append(MqttSink(hooks.mqtt))
    if hooks.kafka:
        from keytrail.detect.sinks.kafka import KafkaSink

        sinks.append(KafkaSink(hooks.kafka))
    for index, webhook in enumerate(hooks.webhooks):
        from keytrail.detect.sinks.webhook import WebhookSink

        sinks.append(
            WebhookSink(
                webhook.url,
                webhook.secret,
                data_dir / f"webhook-dead-letter-{index}.jsonl",
                attempts=webhook.attempts,
                backoff=webhook.backoff,
            )
        )
    return sinks
