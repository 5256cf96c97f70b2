"""Webhook delivery to a local HTTP receiver: signature check, retry with backoff, dead-letter for
an alarm refused, the hook down (alarms kept) for a receiver out of reach."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from keytrail.detect.alarms import Alarm
from keytrail.detect.engine import Detector
from keytrail.detect.hooks import webhook_name
from keytrail.detect.sinks import SEND_AHEAD_AFTER, AlarmSink, Dispatcher, HookDown
from keytrail.detect.sinks.webhook import SIGNATURE_HEADER, WebhookSink, verify_signature
from tests.support.services import free_port
from tests.support.waits import eventually
from tests.unit.detect.records import T0, denied, key_arn, user

pytestmark = pytest.mark.integration

SECRET = b"webhook-test-secret"


class Receiver(ThreadingHTTPServer):
    """Answers with the scripted statuses (then 200), recording every request."""

    def __init__(self, statuses: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.statuses = statuses
        self.chokes_on: set[str] = set()  # alarmIds answered 503 whatever the script says
        self.requests: list[tuple[bytes, str | None, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def answered(self, status: int) -> list[str]:
        """The alarmIds of the requests answered `status`, in the order they came."""
        return [json.loads(body)["alarmId"] for body, _, answer in self.requests if answer == status]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        if json.loads(body)["alarmId"] in self.server.chokes_on:
            status = 503
        self.server.requests.append((body, self.headers.get(SIGNATURE_HEADER), status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(list(getattr(request, "param", [])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_receiver(answer: Answer) -> AsyncIterator[str]:
    """A receiver speaking HTTP by hand (`answer` per connection), for what ThreadingHTTPServer
    will not do (hang up mid-request, trickle, stream a download): its hook URL."""
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    finally:
        server.close()


def make_alarms(count: int) -> list[Alarm]:
    """`count` alarms, each on a key of its own (so each is a new alarm, not a later state of one)."""
    return Detector().process([denied("Decrypt", T0 + timedelta(hours=2 * i), key_arn(i), user("eve"))
                               for i in range(count)])


def webhook(url: str, tmp_path: Path, *, attempts: int = 2, **options: float) -> WebhookSink:
    """The hook under test: SECRET, dead letters in tmp_path/dead.jsonl, 10 ms first backoff."""
    return WebhookSink(url, SECRET, tmp_path / "dead.jsonl", attempts=attempts, backoff=0.01, **options)


async def dispatched(sink: AlarmSink, alarms: list[Alarm], *, send_ahead_after: int = SEND_AHEAD_AFTER,
                     timeout: float = 20) -> Dispatcher:
    """Publish `alarms` through a dispatcher of `sink` alone (probing a hook down every 10 to 50 ms)
    and close it, draining them (up to `timeout`): the dispatcher, for its counters."""
    dispatcher = Dispatcher([sink], pause=(0.01, 0.05), send_ahead_after=send_ahead_after)
    for alarm in alarms:
        dispatcher.publish(alarm)
    await dispatcher.close(timeout=timeout)
    return dispatcher


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    """The dead-letter file's entries (none if it was never written)."""
    path = tmp_path / "dead.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("receiver", [[]], indirect=True)
async def test_post_is_signed_with_hmac_sha256(receiver: Receiver, tmp_path: Path) -> None:
    sink, [alarm] = webhook(receiver.url, tmp_path), make_alarms(1)
    await sink.deliver(alarm)
    await sink.aclose()
    [(body, signature, _)] = receiver.requests
    assert verify_signature(SECRET, body, signature)
    assert not verify_signature(b"other-secret", body, signature)
    assert signature is not None and signature.startswith("sha256=")
    assert Alarm.from_json(json.loads(body)) == alarm


@pytest.mark.parametrize("receiver", [[500, 503]], indirect=True)
async def test_failures_are_retried_until_delivered(receiver: Receiver, tmp_path: Path) -> None:
    sink = webhook(receiver.url, tmp_path, attempts=3)
    await sink.deliver(make_alarms(1)[0])
    await sink.aclose()
    assert [status for _, _, status in receiver.requests] == [500, 503, 200]
    assert dead_letters(tmp_path) == []


@pytest.mark.parametrize("receiver", [[500, 422, 422, 422, 500]], indirect=True)
async def test_an_alarm_the_receiver_refuses_goes_to_the_dead_letter_file_after_its_attempts(
    receiver: Receiver, tmp_path: Path
) -> None:
    sink, [alarm] = webhook(receiver.url, tmp_path, attempts=4), make_alarms(1)
    await sink.deliver(alarm)
    await sink.aclose()
    assert len(receiver.requests) == 4
    [entry] = dead_letters(tmp_path)
    assert entry["error"] == "HTTP 422" and entry["attempts"] == 4  # the last answer: it is up, and refuses
    assert Alarm.from_json(entry["alarm"]) == alarm


@pytest.mark.parametrize("receiver", [[503] * 4 + [502, 504, 429, 408]], indirect=True)
async def test_a_receiver_answering_unavailable_is_the_hook_down_and_its_alarm_is_kept_not_dead_lettered(
    receiver: Receiver, tmp_path: Path
) -> None:
    sink, [alarm] = webhook(receiver.url, tmp_path, attempts=4), make_alarms(1)
    with pytest.raises(HookDown, match="HTTP 503"):
        await sink.deliver(alarm)
    for status in (502, 504, 429, 408):  # the dispatcher's probes: one request each while it is down
        with pytest.raises(HookDown, match=f"HTTP {status}"):
            await sink.deliver(alarm)
    await sink.deliver(alarm)  # 200: back
    await sink.aclose()
    assert [status for _, _, status in receiver.requests] == [503] * 4 + [502, 504, 429, 408, 200]
    assert dead_letters(tmp_path) == []


@pytest.mark.parametrize("receiver", [[521, 521, 522, 523, 524]], indirect=True)
async def test_a_receiver_whose_cdn_cannot_reach_it_is_the_hook_down_and_its_alarm_is_kept(
    receiver: Receiver, tmp_path: Path
) -> None:
    """Behind Cloudflare (and CDNs answering as it does), a receiver restarting or out of reach is
    answered for with 521 (refused), 522 (connection timed out), 523 (unreachable) or 524 (no answer
    in time): the 502 and 504 of that proxy. Taken for refusals, every alarm of the outage was
    dead-lettered after its attempts and never sent once the receiver was back."""
    sink, [alarm] = webhook(receiver.url, tmp_path), make_alarms(1)
    with pytest.raises(HookDown, match="HTTP 521"):
        await sink.deliver(alarm)
    for status in (522, 523, 524):  # the dispatcher's probes: one request each while it is down
        with pytest.raises(HookDown, match=f"HTTP {status}"):
            await sink.deliver(alarm)
    await sink.deliver(alarm)  # 200: back
    await sink.aclose()
    assert [status for _, _, status in receiver.requests] == [521, 521, 522, 523, 524, 200]
    assert dead_letters(tmp_path) == []


@pytest.mark.parametrize("receiver", [[500, 500, 200]], indirect=True)
async def test_an_alarm_the_receiver_fails_on_is_dead_lettered_and_does_not_hold_the_next(
    receiver: Receiver, tmp_path: Path
) -> None:
    # A 500 is the receiver failing on this alarm (a bug of its own), not an outage: taken for one,
    # the alarm would be probed for ever and every later alarm of the hook would wait behind it.
    first, second = make_alarms(2)
    await dispatched(webhook(receiver.url, tmp_path), [first, second])
    assert receiver.answered(200) == [second.alarm_id]
    [entry] = dead_letters(tmp_path)
    assert entry["error"] == "HTTP 500" and Alarm.from_json(entry["alarm"]).alarm_id == first.alarm_id


@pytest.mark.parametrize("receiver", [[503] * 6], indirect=True)
async def test_alarms_wait_out_a_receiver_that_is_down_and_arrive_in_order(receiver: Receiver, tmp_path: Path) -> None:
    alarms = make_alarms(5)
    # Back before the alarms behind the head are tried (the tests below try them).
    dispatcher = await dispatched(webhook(receiver.url, tmp_path), alarms, send_ahead_after=10)
    assert receiver.answered(200) == [alarm.alarm_id for alarm in alarms]
    assert len(receiver.requests) == 6 + 5 and dispatcher.failed == 0  # the first alarm's 2 attempts, 4 probes
    assert dead_letters(tmp_path) == []


@pytest.mark.parametrize("receiver", [[]], indirect=True)
async def test_an_alarm_a_receiver_answers_503_to_alone_is_dead_lettered_and_the_others_go_out(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver that chokes on one payload with a 503 held that alarm, and every later one, for as
    long as it did: the hook was taken for down. Once the alarm behind it is taken, the head is
    tried once more and, failing again, the next one behind it is tried; taken too, the head is
    tried once more and, failing again, dead-lettered (findable by its alarmId) with a log line."""
    alarms = make_alarms(4)
    poisoned = alarms[1].alarm_id
    receiver.chokes_on.add(poisoned)
    with caplog.at_level(logging.WARNING):
        dispatcher = await dispatched(webhook(receiver.url, tmp_path), alarms, send_ahead_after=2)
    assert receiver.answered(200) == [alarms[0].alarm_id, alarms[2].alarm_id, alarms[3].alarm_id]  # each once
    # its two attempts, two probes, the try of the next one, its two attempts once more, the try of
    # the one after, its two attempts once more
    assert receiver.answered(503).count(poisoned) == 2 + 2 + 2 + 2
    [entry] = dead_letters(tmp_path)
    assert entry["alarmId"] == poisoned and Alarm.from_json(entry["alarm"]) == alarms[1]
    assert "HTTP 503" in entry["error"] and alarms[3].alarm_id in entry["error"]
    assert any(poisoned in r.getMessage() and "given up on" in r.getMessage() for r in caplog.records)
    assert dispatcher.failed == 1


# The head's two attempts; the one behind taken; the head's two once more; the next behind taken;
# then every request answered.
@pytest.mark.parametrize("receiver", [[503, 503, 200, 503, 503, 200]], indirect=True)
async def test_a_receiver_flapping_in_a_rolling_restart_has_no_good_alarm_dead_lettered(
    receiver: Receiver, tmp_path: Path
) -> None:
    """Behind a load balancer whose instances restart in turn, 503s come and go whatever the
    payload: the head failed, the alarm behind it got through, and the head's next try hit a
    restarting instance again. That alone dead-lettered a good alarm; now the head must fail once
    more after a second alarm behind it was taken, and here it gets through instead: every alarm
    delivered once, nothing dead-lettered."""
    alarms = make_alarms(4)
    dispatcher = await dispatched(webhook(receiver.url, tmp_path), alarms, send_ahead_after=0)
    assert receiver.answered(200) == [alarms[i].alarm_id for i in (1, 2, 0, 3)] and dispatcher.failed == 0
    assert dead_letters(tmp_path) == []


@pytest.mark.parametrize("receiver", [[429, 429, 200, 429]], indirect=True)
async def test_a_rate_limited_receiver_has_no_alarm_given_up_and_keeps_the_order(
    receiver: Receiver, tmp_path: Path
) -> None:
    """A rate limiter answers 429 whatever the payload, and lets one request through now and then
    (the third here), which would then be the alarm behind the head: the head's next try, at once,
    is limited again, and the head was dead-lettered as an alarm the hook chokes on. A 429 is the
    hook busy, not reached: the head waits for its turn through, as behind any outage."""
    alarms = make_alarms(3)
    dispatcher = await dispatched(webhook(receiver.url, tmp_path), alarms, send_ahead_after=0)
    assert receiver.answered(200) == [alarm.alarm_id for alarm in alarms] and dispatcher.failed == 0
    assert dead_letters(tmp_path) == []


async def test_an_alarm_a_receiver_hangs_up_on_alone_is_dead_lettered_and_the_others_go_out(tmp_path: Path) -> None:
    """The webhook form of a broker hanging up on one publish: the receiver closes the connection
    on that alarm's request, answering nothing (RemoteProtocolError), and answers the others."""
    alarms = make_alarms(3)
    poisoned, delivered = alarms[0].alarm_id, []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                alarm_id = json.loads(await reader.readexactly(length))["alarmId"]
                if alarm_id == poisoned:
                    break
                delivered.append(alarm_id)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    async with raw_receiver(answer) as url:
        await dispatched(webhook(url, tmp_path), alarms, send_ahead_after=1)
    assert delivered == [alarms[1].alarm_id, alarms[2].alarm_id]
    [entry] = dead_letters(tmp_path)
    assert entry["alarmId"] == poisoned and "RemoteProtocolError" in entry["error"]


@pytest.mark.parametrize("receiver", [[503] * (2 + 3 + 2 * 4)], indirect=True)
async def test_a_receiver_answering_503_to_every_alarm_has_none_dead_lettered_and_keeps_the_order(
    receiver: Receiver, tmp_path: Path
) -> None:
    """Really down: the alarms behind the head are tried too, each fails as the head does, and
    nothing is given up. The receiver is back at a probe of the head (its 2 attempts and the three
    behind it, then two rounds of a probe and the three behind), so the order is kept."""
    alarms = make_alarms(5)
    dispatcher = await dispatched(webhook(receiver.url, tmp_path), alarms, send_ahead_after=0)
    assert set(receiver.answered(503)) == {alarm.alarm_id for alarm in alarms[:4]}  # the head and the three behind it
    assert receiver.answered(200) == [alarm.alarm_id for alarm in alarms] and dispatcher.failed == 0
    assert dead_letters(tmp_path) == []


async def test_an_unreachable_receiver_is_the_hook_down_not_a_dead_letter(tmp_path: Path) -> None:
    sink = webhook(f"http://127.0.0.1:{free_port()}/hook", tmp_path)
    with pytest.raises(HookDown, match="ConnectError"):
        await sink.deliver(make_alarms(1)[0])
    await sink.aclose()
    assert dead_letters(tmp_path) == []


async def test_a_receiver_that_answers_a_byte_at_a_time_forever_is_the_hook_down(tmp_path: Path) -> None:
    """httpx's timeout bounds each read, not the answer: a receiver trickling its status line
    kept every later alarm of the hook waiting forever."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for byte in itertools.cycle(b"HTTP/1.1 200 OK"):
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)

    async with raw_receiver(trickle) as url:
        sink = webhook(url, tmp_path, timeout=0.5)
        async with asyncio.timeout(10):
            with pytest.raises(HookDown, match="no answer within 0.5 s"):
                await sink.deliver(make_alarms(1)[0])
        await sink.aclose()


@pytest.mark.parametrize("receiver", [[403, 403]], indirect=True)
async def test_credentials_in_the_url_stay_out_of_logs_and_the_dead_letter_file(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = receiver.url.replace("http://", "http://hook-user:url-password@") + "?token=query-token"
    sink = webhook(url, tmp_path)
    down = webhook(f"http://hook-user:url-password@127.0.0.1:{free_port()}/hook?token=query-token", tmp_path,
                   attempts=1)
    with caplog.at_level(logging.WARNING):  # keytrail's level (serve, detect)
        await sink.deliver(make_alarms(1)[0])
        with pytest.raises(HookDown) as raised:
            await down.deliver(make_alarms(1)[0])
    await sink.aclose()
    await down.aclose()
    dead_letter = (tmp_path / "dead.jsonl").read_text()
    assert "127.0.0.1" in caplog.text and "127.0.0.1" in dead_letter and "127.0.0.1" in str(raised.value)
    for secret in ("url-password", "query-token"):
        assert secret not in caplog.text and secret not in dead_letter and secret not in str(raised.value)


async def test_a_receiver_answering_with_a_huge_body_costs_the_hook_no_memory(tmp_path: Path) -> None:
    """Only the status matters: a URL that answers with a download (a misrouted hook, a proxy's
    error page of a file server) had every alarm read the whole answer into memory."""
    import tracemalloc

    size = 100_000_000

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        with contextlib.suppress(ConnectionError):
            for _ in range(size // 1_000_000):
                writer.write(bytes(1_000_000))
                await writer.drain()
        writer.close()

    async with raw_receiver(answer) as url:
        sink, [alarm] = webhook(url, tmp_path, attempts=1), make_alarms(1)
        tracemalloc.start()
        try:
            await sink.deliver(alarm)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            await sink.aclose()
    assert dead_letters(tmp_path) == []  # delivered: 200
    assert peak < 10_000_000, peak


async def test_an_alarm_a_receiver_never_answers_alone_is_dead_lettered_and_the_others_go_out(tmp_path: Path) -> None:
    """A receiver that accepts the request of one alarm and never answers it (stuck on that payload),
    and answers the others: left unanswered once connected, the hook was reached, so the alarms
    behind are tried and the head given up on. The webhook's own deadline ended the request before
    httpx's read timeout did, and was taken for a receiver out of reach: that one alarm then held
    every later one for as long as the receiver stayed stuck."""
    alarms = make_alarms(3)
    stuck, delivered = alarms[0].alarm_id, []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                alarm_id = json.loads(await reader.readexactly(length))["alarmId"]
                if alarm_id == stuck:
                    await reader.read()  # never answers: waits for the client to give up
                    break
                delivered.append(alarm_id)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    async with raw_receiver(answer) as url:
        await dispatched(webhook(url, tmp_path, timeout=0.2), alarms, send_ahead_after=1, timeout=8)
    assert delivered == [alarms[1].alarm_id, alarms[2].alarm_id]
    [entry] = dead_letters(tmp_path)
    assert entry["alarmId"] == stuck


@pytest.mark.parametrize("receiver", [[]], indirect=True)
async def test_two_webhooks_on_one_receiver_are_told_apart_when_down_and_back(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each line about a hook named it `WebhookSink`: of two webhooks, which one was down was
    anyone's guess. Two URLs on one host and port differ in their path only, where Slack's and
    Discord's carry their token: a webhook is named by its files' name (`webhook-<digest>`) too."""
    [alarm] = make_alarms(1)
    receiver.chokes_on.add(alarm.alarm_id)  # 503: both hooks down until it is cleared
    base = f"http://127.0.0.1:{receiver.server_address[1]}"
    urls = [f"{base}/services/T000/B000/token-one", f"{base}/services/T000/B000/token-two"]
    dispatcher = Dispatcher([webhook(url, tmp_path, attempts=1) for url in urls], pause=(0.01, 0.05),
                            send_ahead_after=10**9)
    with caplog.at_level(logging.WARNING, logger="keytrail.detect.sinks"):
        dispatcher.publish(alarm)
        await eventually(lambda: caplog.text.count(" is down (") == 2, what="both hooks down")
        receiver.chokes_on.clear()
        await dispatcher.close(timeout=10)
    for url in urls:
        name = f"{webhook_name(url)} {base}/…"
        assert f"alarm hook {name} is down (" in caplog.text and f"alarm hook {name} is back after" in caplog.text
    assert "WebhookSink" not in caplog.text and "token-" not in caplog.text


async def test_the_close_warning_tells_two_webhooks_down_apart_and_shows_none_of_their_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from keytrail.detect.sinks.outbox import Outbox

    [alarm], port = make_alarms(1), free_port()  # nothing listens there: connection refused, the hooks down
    urls = [f"http://hook-user:url-password@127.0.0.1:{port}/services/T000/B000/token-{n}?token=query-token"
            for n in ("one", "two")]
    outboxes = [Outbox(tmp_path / f"alarm-outbox-{webhook_name(url)}.jsonl") for url in urls]
    dispatcher = Dispatcher([webhook(url, tmp_path, attempts=1) for url in urls], outboxes=outboxes,
                            pause=(30.0, 30.0))
    with caplog.at_level(logging.WARNING, logger="keytrail.detect.sinks"):
        dispatcher.publish(alarm)
        await eventually(lambda: caplog.text.count(" is down (") == 2, what="both hooks down")
        await dispatcher.close(timeout=3)
    [name_one, name_two] = [f"{webhook_name(url)} http://127.0.0.1:{port}/…" for url in urls]
    assert (f"2 alarm(s) not delivered when the hooks closed after 0s: {name_one} (down; kept for the next start) 1, "
            f"{name_two} (down; kept for the next start) 1") in caplog.text
    for secret in ("hook-user", "url-password", "token-one", "token-two", "query-token"):
        assert secret not in caplog.text
