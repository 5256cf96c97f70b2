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

import contextlib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from keytrail.detect.sinks import AlarmSink
from keytrail.detect.sinks.jsonl import JsonlSink
from keytrail.transport.addresses import redacted, url_problem

__all__ = [
    "HooksConfig",
    "WebhookConfig",
    "build_sinks",
    "dead_letter_path",
    "hook_names",
    "mqtt_url_problem",
    "outbox_paths",
    "shown_url",
    "webhook_name",
    "webhook_url_problem",
]


def mqtt_url_problem(url: str) -> str | None:
    """None for a usable broker URL, mqtt[s]://[USER[:PASS]@]HOST[:PORT] (an IPv6 host in brackets),
    else the one-line complaint: checked before anything starts, since a typo would otherwise
    surface only as a failed delivery, in a child process's log, when the first alarm fires.
    A bare HOST[:PORT] (mosquitto_pub's `-h HOST`) is refused with the URL to type instead: `foo`
    may be a host or a placeholder, and the scheme says whether TLS is meant."""
    # A password in the URL stays off the terminal and out of logs, and so does a query, where a
    # URL made for another client keeps its token (AWS IoT's presigned wss://…/mqtt?X-Amz-Security-Token=…).
    shown = redacted(url, query=False)
    if "://" not in url and (guess := _mqtt_url_for(url)):
        return f"not an MQTT URL: {shown!r} (did you mean {redacted(guess, query=False)}?)"
    problem = url_problem(url, ("mqtt", "mqtts"))
    if problem is None and urlsplit(url)[2:] != ("", "", ""):  # mosquitto_pub -L puts the topic there
        problem = "it has a path, query or fragment (alarms go to the topics keytrail/alarms/<rule>)"
    return f"not an MQTT URL: {shown!r}: {problem} (use mqtt://HOST:PORT)" if problem else None


def _mqtt_url_for(address: str) -> str | None:
    """The URL of a bare HOST[:PORT], if it is one."""
    guess = f"mqtt://{address}" if ":" in address else f"mqtt://{address}:1883"
    return guess if url_problem(guess, ("mqtt",)) is None and urlsplit(guess).path == "" else None


def webhook_url_problem(url: str) -> str | None:
    """None for an http:// or https:// URL with a host and a usable port that the webhook's HTTP
    client can send to, else what is wrong with it. A URL httpx refuses (a control character such
    as a tab or newline, over 65,536 characters) raised httpx.InvalidURL, no HTTPError, at every
    delivery: each alarm was lost for that hook, neither delivered, kept nor dead-lettered."""
    if problem := url_problem(url, ("http", "https")):
        return problem
    import httpx  # here: the settings are read by commands that never send to a webhook

    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:  # its words name a character and its position, never the URL's parts
        return f"not a URL an HTTP client can send to ({exc})"
    return None


def shown_url(url: str) -> str:
    """What logs and the dead-letter file may say of a hook: its scheme, host and port, and `/…`
    for a path. Receivers' credentials and tokens go in the user info, the query, and the path
    too (Slack's `/services/T…/B…/<token>`, Discord's `/api/webhooks/<id>/<token>`, Teams')."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    with contextlib.suppress(ValueError):  # a port out of range: httpx refuses the URL anyway
        netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, netloc, "/…" if parts.path.strip("/") else "", "", ""))


def _scheme_and_host(url: str) -> str:
    """What a refusal of a url that is no http(s) URL may show of it: shown_url's scheme and host,
    `/…` for what follows them, the user info left out, for any scheme or none (`htps://`, a
    forgotten `https://`), which urlsplit would not read a host from."""
    scheme, separator, rest = url.partition("://") if "://" in url else ("", "", url)
    rest = rest.rpartition("@")[2]  # the last "@", as `redacted`: a password may hold an unencoded "/", "?" or "#"
    authority = rest
    for mark in "/?#":
        authority = authority.partition(mark)[0]
    return f"{scheme}{separator}{authority}{'/…' if authority != rest else ''}"


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    secret: bytes
    attempts: int = 5
    backoff: float = 0.5
    secret_env: str | None = None  # the variable `secret` was read from, if the file named one

    def __repr__(self) -> str:  # the secret never reaches logs, nor credentials in the URL
        return f"WebhookConfig(url={shown_url(self.url)!r}, attempts={self.attempts})"


@dataclass(frozen=True, slots=True)
class HooksConfig:
    """Hooks besides alarms.jsonl (which is always on)."""

    mqtt: str | None = None
    kafka: str | None = None
    webhooks: tuple[WebhookConfig, ...] = ()

    @classmethod
    def from_settings(cls, doc: Mapping[str, Any], *, delivering: bool = True,
                      environment: Mapping[str, str] | None = None) -> HooksConfig:
        """Read the `[hooks]` table of a parsed settings file (ValueError naming what is wrong).
        `delivering`: the hooks will send alarms, so a webhook's `secret_env` must name a variable
        set here; a command that sends none (`analyze`, offline `detect`) checks the table alone,
        so that one settings file serves every command wherever it runs. `environment`: where
        `secret_env` variables are read (default: this process's environment)."""
        table = doc.get("hooks", {})
        if not isinstance(table, Mapping):
            raise ValueError("[hooks] must be a table")
        unknown = set(table) - {"mqtt", "kafka", "webhook"}
        if unknown:
            raise ValueError(f"[hooks]: unknown setting(s) {', '.join(sorted(unknown))}")
        mqtt, kafka, webhooks = table.get("mqtt"), table.get("kafka"), table.get("webhook", [])
        for name, value, form in (("mqtt", mqtt, "mqtt://HOST:PORT"), ("kafka", kafka, "HOST:PORT")):
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"[hooks] {name} must be a string such as {form}, not {value!r}")
        if isinstance(mqtt, str) and (problem := mqtt_url_problem(mqtt)):
            raise ValueError(f"[hooks] mqtt: {problem}")
        if not isinstance(webhooks, list) or not all(isinstance(entry, Mapping) for entry in webhooks):
            raise ValueError("webhooks are [[hooks.webhook]] tables (note the double brackets)")
        variables = os.environ if environment is None else environment
        parsed = tuple(_webhook(entry, delivering, variables) for entry in webhooks)
        _refuse_repeated_urls(parsed)
        return cls(mqtt, kafka, parsed)

    def with_flags(self, mqtt: str | None = None, kafka: str | None = None) -> HooksConfig:
        """Flags win over the settings file."""
        return replace(self, mqtt=mqtt or self.mqtt, kafka=kafka or self.kafka)


def _refuse_repeated_urls(webhooks: tuple[WebhookConfig, ...]) -> None:
    """A hook's outbox and dead-letter file are named by its URL: two [[hooks.webhook]] entries
    with one URL would share them, and one emptying its outbox would wipe what the other owes."""
    seen: set[str] = set()
    for webhook in webhooks:
        if webhook.url in seen:
            raise ValueError(f"webhook {shown_url(webhook.url)}: listed twice ([[hooks.webhook]] urls must differ)")
        seen.add(webhook.url)


MAX_BACKOFF = 3600.0  # a webhook's first wait between attempts, in seconds
# A webhook's tries of one alarm: at most about 47 minutes with the default backoff. Unbounded, a
# refused alarm was never dead-lettered, and every later alarm of the hook waited behind it.
MAX_ATTEMPTS = 100


def _webhook(entry: Mapping[str, Any], delivering: bool, environment: Mapping[str, str]) -> WebhookConfig:
    url = entry.get("url")
    if not (isinstance(url, str) and url.lower().startswith(("http://", "https://"))):  # HTTP:// too (RFC 3986)
        shown = _scheme_and_host(url) if isinstance(url, str) else url
        raise ValueError(f"[[hooks.webhook]] needs an http:// or https:// url, not {shown!r}")
    if problem := webhook_url_problem(url):  # not the URL itself: its query may hold a token
        raise ValueError(f"[[hooks.webhook]] url: {problem}")
    shown = shown_url(url)
    unknown = set(entry) - {"url", "secret", "secret_env", "attempts", "backoff"}
    if unknown:
        raise ValueError(f"webhook {shown}: unknown setting(s) {', '.join(sorted(unknown))}")
    secret, secret_env = entry.get("secret"), entry.get("secret_env")
    if not isinstance(secret, str | None) or not isinstance(secret_env, str | None):
        raise ValueError(f"webhook {shown}: secret and secret_env are strings")
    if secret is None and secret_env is not None:
        secret = environment.get(secret_env) if delivering else ""
        if not secret and delivering:  # the file is right; the environment `serve` was started in is not
            raise ValueError(f"webhook {shown}: secret_env names ${secret_env}, which is not set or empty")
    elif not secret:
        raise ValueError(f"webhook {shown}: set secret or secret_env (an HMAC key is required)")
    attempts, backoff = entry.get("attempts", 5), entry.get("backoff", 0.5)
    if not (isinstance(attempts, int) and not isinstance(attempts, bool) and 1 <= attempts <= MAX_ATTEMPTS):
        raise ValueError(f"webhook {shown}: attempts must be a whole number from 1 to {MAX_ATTEMPTS}, not {attempts!r}")
    # Finite and bounded: the first wait is `backoff` itself (TOML's `inf` slept forever, holding
    # the hook and every alarm behind the one it retried).
    if not (isinstance(backoff, int | float) and not isinstance(backoff, bool) and 0 <= backoff <= MAX_BACKOFF):
        raise ValueError(f"webhook {shown}: backoff must be a number of seconds from 0 to {MAX_BACKOFF:g}, "
                         f"not {backoff!r}")
    from_variable = secret_env if entry.get("secret") is None else None
    return WebhookConfig(url, (secret or "").encode(), attempts, float(backoff), from_variable)  # "": not delivering


def hook_names(hooks: HooksConfig) -> list[str]:
    """The name of each hook `build_sinks` makes after alarms.jsonl, in its order: `mqtt`, `kafka`,
    `webhook-<digest>`; its outbox and dead-letter files are named by it."""
    return [*(["mqtt"] if hooks.mqtt else []), *(["kafka"] if hooks.kafka else []),
            *(webhook_name(webhook.url) for webhook in hooks.webhooks)]


def webhook_name(url: str) -> str:
    """A webhook's name in its outbox's and dead-letter file's names."""
    return f"webhook-{_url_digest(url)}"


def outbox_paths(data_dir: Path, hooks: HooksConfig) -> list[Path | None]:
    """The outbox file of each sink `build_sinks` makes, in its order (None for alarms.jsonl, the
    record itself): `<data-dir>/alarm-outbox-<hook>.jsonl`, hook `mqtt`, `kafka` or `webhook-<digest>`."""
    return [None, *(data_dir / f"alarm-outbox-{name}.jsonl" for name in hook_names(hooks))]


def dead_letter_path(data_dir: Path, name: str) -> Path:
    """`<data-dir>/alarm-dead-letter-<hook>.jsonl`: by the hook's name, as its outbox, not by its
    place among the hooks (sinks/dead_letter.py)."""
    return data_dir / f"alarm-dead-letter-{name}.jsonl"


def _url_digest(url: str) -> str:
    """A webhook's outbox is known by its URL, not by its place among [[hooks.webhook]]: after a
    hook is removed or the hooks reordered, what one receiver was owed must not go to another
    (the URL itself may hold a token in its query, so it is not in the file name)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def build_sinks(data_dir: Path, hooks: HooksConfig) -> list[AlarmSink]:
    """alarms.jsonl in the data dir, plus every configured hook."""
    sinks: list[AlarmSink] = [JsonlSink(data_dir / "alarms.jsonl")]
    if hooks.mqtt:
        from keytrail.detect.sinks.mqtt import MqttSink

        sinks.append(MqttSink(hooks.mqtt, dead_letter=dead_letter_path(data_dir, "mqtt")))
    if hooks.kafka:
        from keytrail.detect.sinks.kafka import KafkaSink

        sinks.append(KafkaSink(hooks.kafka, dead_letter=dead_letter_path(data_dir, "kafka")))
    for webhook in hooks.webhooks:
        from keytrail.detect.sinks.webhook import WebhookSink

        sinks.append(
            WebhookSink(
                webhook.url,
                webhook.secret,
                dead_letter_path(data_dir, webhook_name(webhook.url)),
                attempts=webhook.attempts,
                backoff=webhook.backoff,
            )
        )
    return sinks
