"""Hooks from the settings file and flags."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from keytrail.detect.hooks import HooksConfig, build_sinks, mqtt_url_problem, outbox_paths, shown_url, webhook_name
from keytrail.detect.sinks import Attempts, Failure, retry_waits
from keytrail.detect.sinks.jsonl import JsonlSink
from keytrail.detect.sinks.kafka import KafkaSink
from keytrail.detect.sinks.mqtt import MqttSink
from keytrail.detect.sinks.webhook import WebhookSink, sign, verify_signature

SETTINGS = """
[hooks]
mqtt = "mqtt://broker.internal:1884"

[[hooks.webhook]]
url = "https://alerts.example.com/a"
secret_env = "DETECT_TEST_SECRET"
attempts = 3

[[hooks.webhook]]
url = "https://alerts.example.com/b"
secret = "inline"
"""


def test_settings_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETECT_TEST_SECRET", "from-env")
    hooks = HooksConfig.from_settings(tomllib.loads(SETTINGS)).with_flags(kafka="127.0.0.1:9092")
    assert hooks.mqtt == "mqtt://broker.internal:1884" and hooks.kafka == "127.0.0.1:9092"
    assert [(w.url, w.secret, w.attempts) for w in hooks.webhooks] == [
        ("https://alerts.example.com/a", b"from-env", 3),
        ("https://alerts.example.com/b", b"inline", 5),
    ]
    assert "from-env" not in repr(hooks)
    assert hooks.with_flags(mqtt="mqtt://127.0.0.1:1883").mqtt == "mqtt://127.0.0.1:1883"


@pytest.mark.parametrize(("hooks", "message"), [
    (5, r"\[hooks\] must be a table"),
    ({"mqtt": 5}, "mqtt must be a string"),
    ({"kafka": []}, "kafka must be a string"),
    ({"sms": "x"}, "unknown setting"),
    ({"webhook": 5}, "double brackets"),
    ({"webhook": [{"url": 5, "secret": "s"}]}, "needs an http:// or https:// url"),
    ({"webhook": [{"url": "ftp://x", "secret": "s"}]}, "needs an http:// or https:// url"),
    ({"webhook": [{"url": "https://", "secret": "s"}]}, r"url: no host"),
    ({"webhook": [{"url": "https://alerts:99999/k", "secret": "s"}]}, "url: the port '99999' is not a number from 1"),
    ({"webhook": [{"url": "https://alerts:abc/k", "secret": "s"}]}, "url: the port 'abc' is not a number from 1"),
    ({"webhook": [{"url": "https://alerts example/k", "secret": "s"}]}, "'alerts example' is not a host name"),
    # httpx refuses these at every delivery (InvalidURL, no HTTPError): each alarm was lost for the hook.
    ({"webhook": [{"url": "https://alerts/k\t", "secret": "s"}]}, r"url: not a URL an HTTP client can send to \(Inv"),
    ({"webhook": [{"url": "https://alerts/k\n", "secret": "s"}]}, "url: not a URL an HTTP client can send to"),
    ({"webhook": [{"url": "https://alerts/" + "k" * 70_000, "secret": "s"}]}, r"send to \(URL too long\)"),
    ({"webhook": [{"url": "https://x", "secret_env": 5}]}, "are strings"),
    ({"webhook": [{"url": "https://x", "secret": "s", "attempts": 0}]}, "attempts must be a whole number from 1"),
    # Unbounded, a refused alarm was never dead-lettered: every later alarm of the hook waited behind it.
    ({"webhook": [{"url": "https://x", "secret": "s", "attempts": 10**20}]}, "attempts must be a whole number from "
                                                                           "1 to 100, not 100000000000000000000"),
    ({"webhook": [{"url": "https://x", "secret": "s", "backoff": "y"}]}, "backoff must be a number"),
    # TOML's inf: the first wait between attempts slept forever, holding every alarm behind.
    ({"webhook": [{"url": "https://x", "secret": "s", "backoff": float("inf")}]}, "backoff must be a number"),
    ({"webhook": [{"url": "https://x", "secret": "s", "backoff": 3601}]}, "seconds from 0 to 3600"),
    ({"webhook": [{"url": "https://x", "secret": "s", "retries": 3}]}, "unknown setting"),
    # One URL twice would share one outbox: one hook emptying it would wipe what the other owes.
    ({"webhook": [{"url": "https://x/a?t=1", "secret": "s"}, {"url": "https://x/a?t=1", "secret": "t"}]},
     r"^webhook https://x/…: listed twice \(\[\[hooks.webhook\]\] urls must differ\)$"),
])
def test_bad_hook_settings_are_refused_naming_the_setting(hooks: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HooksConfig.from_settings({"hooks": hooks})


@pytest.mark.parametrize(("url", "shown"), [
    # Receivers take tokens in the path (Slack's /services/T…/B…/<token>): a misspelt scheme, or a
    # forgotten one, repeated the whole URL but for its user info and query.
    ("htps://hooks.slack.com/services/T0/B0/tok-SECRET", "'htps://hooks.slack.com/…'"),
    ("hooks.slack.com/services/T0/B0/tok-SECRET", "'hooks.slack.com/…'"),
    ("ftp://user:pw-SECRET@alerts.example.com/x?token=tok-SECRET#tok-SECRET", "'ftp://alerts.example.com/…'"),
    ("ftp://user:pw#SECRET@alerts.example.com", "'ftp://alerts.example.com'"),
    ("ftp://alerts.example.com", "'ftp://alerts.example.com'"),
])
def test_a_url_that_is_no_http_url_is_refused_naming_its_scheme_and_host_only(url: str, shown: str) -> None:
    with pytest.raises(ValueError) as refusal:
        HooksConfig.from_settings({"hooks": {"webhook": [{"url": url, "secret": "s"}]}})
    assert str(refusal.value) == f"[[hooks.webhook]] needs an http:// or https:// url, not {shown}"


def test_webhooks_that_differ_only_in_their_query_are_two_hooks() -> None:
    webhooks = [{"url": "https://x/a?t=1", "secret": "s"}, {"url": "https://x/a?t=2", "secret": "s"}]
    assert len(HooksConfig.from_settings({"hooks": {"webhook": webhooks}}).webhooks) == 2


def test_webhook_without_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        HooksConfig.from_settings({"hooks": {"webhook": [{"url": "https://x"}]}})


def test_webhook_whose_secret_env_is_unset_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is right and the environment is not: 'set secret or secret_env' would send the
    operator to the file."""
    monkeypatch.delenv("DETECT_TEST_SECRET", raising=False)
    with pytest.raises(ValueError, match=r"secret_env names \$DETECT_TEST_SECRET, which is not set or empty"):
        HooksConfig.from_settings({"hooks": {"webhook": [{"url": "https://x", "secret_env": "DETECT_TEST_SECRET"}]}})


def test_a_command_that_sends_no_alarm_reads_a_webhook_whose_secret_env_is_unset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """analyze and offline detect send no alarm: one settings file, shared with the live detector,
    was refused by them wherever its webhook's variable was not set."""
    monkeypatch.delenv("DETECT_TEST_SECRET", raising=False)
    table = {"hooks": {"webhook": [{"url": "https://x", "secret_env": "DETECT_TEST_SECRET"}]}}
    [webhook] = HooksConfig.from_settings(table, delivering=False).webhooks
    assert webhook.url == "https://x"
    with pytest.raises(ValueError, match="secret"):  # a webhook with no secret at all is still refused
        HooksConfig.from_settings({"hooks": {"webhook": [{"url": "https://x"}]}}, delivering=False)


async def test_build_sinks_always_includes_alarms_jsonl(tmp_path: Path) -> None:
    hooks = HooksConfig.from_settings(tomllib.loads(SETTINGS.replace("secret_env", "secret")))
    sinks = build_sinks(tmp_path, hooks.with_flags(kafka="127.0.0.1:9092"))
    assert [type(s) for s in sinks] == [JsonlSink, MqttSink, KafkaSink, WebhookSink, WebhookSink]
    assert sinks[0].path == tmp_path / "alarms.jsonl"  # type: ignore[attr-defined]
    # Each hook's outbox at the same position: a mismatch would send one hook's owed alarms to another.
    names = [p.name if p else None for p in outbox_paths(tmp_path, hooks.with_flags(kafka="127.0.0.1:9092"))]
    assert names[:3] == [None, "alarm-outbox-mqtt.jsonl", "alarm-outbox-kafka.jsonl"]
    assert names[3:] == [_webhook_outbox(sink) for sink in sinks[3:]]
    # Dead letters by the hook's name too, not by its place among the webhooks.
    letters = [sink.dead_letters.path.name for sink in sinks[1:]]  # type: ignore[attr-defined]
    assert letters == [name.replace("alarm-outbox-", "alarm-dead-letter-") for name in names[1:] if name]
    for sink in sinks:
        await sink.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", ["http://127.0.0.1:1883", "127.0.0.1:1883", "mqtt://127.0.0.1:1883/alarms"])
def test_bad_mqtt_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="MQTT URL"):
        MqttSink(url)


@pytest.mark.parametrize("url", ["mqtt://broker", "mqtts://user:pass@broker.internal:8883", "mqtt://[::1]:1883",
                                 "mqtt://10.0.0.7:1883", "mqtt://mosquitto_1:1883"])
def test_mqtt_urls_with_a_host_and_at_most_a_port_are_accepted(url: str) -> None:
    assert mqtt_url_problem(url) is None


@pytest.mark.parametrize("url", [
    "https://hook-user:url-password@alerts.example.com:8443/keytrail?token=query-token",
    # Slack's, Discord's and Teams' incoming webhooks carry their token in the path: it was logged.
    "https://alerts.example.com:8443/services/T000/B000/path-token",
])
def test_webhook_credentials_in_the_url_stay_out_of_errors_logs_and_repr(url: str) -> None:
    with pytest.raises(ValueError, match="webhook https://alerts.example.com:8443/…: attempts") as refused:
        HooksConfig.from_settings({"hooks": {"webhook": [{"url": url, "attempts": 0, "secret": "s"}]}})
    [config] = HooksConfig.from_settings({"hooks": {"webhook": [{"url": url, "secret": "s"}]}}).webhooks
    for secret in ("url-password", "query-token", "keytrail", "path-token"):
        assert secret not in str(refused.value) and secret not in repr(config) and secret not in shown_url(url)


def test_a_webhook_password_with_an_unencoded_hash_is_refused_not_sent_to_the_user_name_as_host() -> None:
    url = "https://hook-user:8443#url-password@alerts.example.com/keytrail"
    with pytest.raises(ValueError, match="percent-encode a '#'") as refused:
        HooksConfig.from_settings({"hooks": {"webhook": [{"url": url, "secret": "s"}]}})
    assert "url-password" not in str(refused.value) and "\n" not in str(refused.value)


def test_the_hooks_retry_schedule_waits_between_attempts_and_gives_up_at_the_last() -> None:
    assert list(retry_waits(5, 0.5)) == [0.5, 1.0, 2.0, 4.0, None]
    assert list(retry_waits(1, 0.5)) == [None]


def test_the_retry_schedule_of_many_attempts_stops_doubling_at_30_s() -> None:
    """Doubled without a bound, `attempts = 20` held a refused alarm, and the hook with it, for
    three days (0.5 s × 2¹⁹ before the last attempt alone)."""
    waits = list(retry_waits(20, 0.5))
    assert waits[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0] and set(waits[6:-1]) == {30.0} and waits[-1] is None
    assert list(retry_waits(3, 60.0)) == [60.0, 60.0, None]  # a backoff longer than 30 s is kept, not doubled


async def test_a_delivery_of_over_a_thousand_attempts_ends_refused_not_in_an_overflow() -> None:
    """From 1,025 attempts the doubled wait no longer fit a float: the OverflowError at the
    first alarm lost it for the hook (neither delivered nor dead-lettered), and every one after."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def refused() -> Failure:
        return Failure("HTTP 400", down=False, reached=True)

    attempts = Attempts("webhook https://x", 2_000, 0.5, sleep)
    failure = await attempts.run(refused, "alarm-1")
    assert failure is not None and failure.reason == "HTTP 400"
    assert len(slept) == 1_999 and max(slept) == 30.0


def test_a_webhook_signature_header_that_is_not_ascii_is_refused_not_a_crash() -> None:
    body = b'{"alarmId": "a"}'
    assert verify_signature(b"s3", body, sign(b"s3", body))
    # A receiver passes the header as it arrived: compare_digest raises TypeError on such a str.
    assert not verify_signature(b"s3", body, "sha256=\u00e9" + sign(b"s3", body)[8:])


def _webhook_outbox(sink: object) -> str:
    import hashlib

    return f"alarm-outbox-webhook-{hashlib.sha256(sink.url.encode()).hexdigest()[:16]}.jsonl"  # type: ignore[attr-defined]


def test_a_webhook_keeps_its_outbox_when_the_hooks_are_reordered_or_one_is_removed(tmp_path: Path) -> None:
    """Outboxes named by position sent what the first webhook was owed to the one that took its
    place (a removed hook, a reordered file) after a restart, and the first never got it."""
    first, second = ({"url": f"https://{host}.example/alarms", "secret": "s"} for host in ("a", "b"))

    def outboxes(*webhooks: dict[str, str]) -> dict[str, Path | None]:
        hooks = HooksConfig.from_settings({"hooks": {"webhook": list(webhooks)}})
        return {hook.url: path for hook, path in zip(hooks.webhooks, outbox_paths(tmp_path, hooks)[1:], strict=True)}

    before = outboxes(first, second)
    assert len(set(before.values())) == 2
    assert outboxes(second, first) == before
    assert outboxes(second) == {second["url"]: before[second["url"]]}


def test_each_webhook_has_its_own_outbox_in_the_data_dir_whatever_its_url(tmp_path: Path) -> None:
    """Outboxes are named by a digest of the whole URL: URLs that differ only in their query or
    path, that hold what no file name may (/, .., \\, NUL escaped, blanks) or that run to 60,000
    characters each get their own, a plain file of the data dir that can be made, found again by
    the next start."""
    import re

    urls = ["https://h.example/alarms?token=1", "https://h.example/alarms?token=2", "https://h.example/alarms/",
            "https://h.example/alarms", "https://h.example/../../etc/passwd", "https://h.example/a%2F..%2Fb?x=/..\\",
            "https://h.example/a b/é?q=%00", "https://h.example/" + "a" * 60_000]
    settings = {"hooks": {"webhook": [{"url": url, "secret": "s"} for url in urls]}}
    paths = outbox_paths(tmp_path, HooksConfig.from_settings(settings))[1:]
    assert len(set(paths)) == len(urls)
    for path in paths:
        assert path is not None and path.parent == tmp_path
        assert re.fullmatch(r"alarm-outbox-webhook-[0-9a-f]{16}\.jsonl", path.name)
        path.touch()
    assert outbox_paths(tmp_path, HooksConfig.from_settings(settings))[1:] == paths  # the next start's


def test_a_webhook_url_scheme_is_taken_in_any_case() -> None:
    # RFC 3986 3.1: schemes are case-insensitive; "HTTP://" was refused as no http:// URL.
    settings = {"hooks": {"webhook": [{"url": "HTTP://127.0.0.1:8088/x", "secret": "s"}]}}
    [webhook] = HooksConfig.from_settings(settings).webhooks
    assert webhook.url == "HTTP://127.0.0.1:8088/x"


async def test_each_hook_is_named_in_log_lines_by_its_address_without_credentials(tmp_path: Path) -> None:
    """The dispatcher's lines (down, back, overflow, the close's count) named every webhook
    `WebhookSink`; a hook's name is its kind or file name and its address, never a secret in it."""
    webhook_url = "https://hook-user:url-password@alerts.example.com:8443/services/T000/B000/path-token?t=query-token"
    sinks = [MqttSink("mqtts://broker-user:broker-password@broker.internal:8883"),
             KafkaSink("kafka-user:kafka-password@kafka-1:9092,kafka-2:9092"),
             WebhookSink(webhook_url, b"hmac-secret", tmp_path / "dead.jsonl"), JsonlSink(tmp_path / "alarms.jsonl")]
    assert [sink.name for sink in sinks] == [  # type: ignore[attr-defined]
        "MQTT mqtts://broker.internal:8883", "Kafka ***@kafka-1:9092,kafka-2:9092",
        f"{webhook_name(webhook_url)} https://alerts.example.com:8443/…", str(tmp_path / "alarms.jsonl")]
    for sink in sinks:
        await sink.aclose()  # type: ignore[attr-defined]
