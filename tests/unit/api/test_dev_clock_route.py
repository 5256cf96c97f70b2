"""The dev-clock endpoint exists only with --dev-clock and only for clients on this machine."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from keytrail.api.app import ApiSettings, KmsApp
from keytrail.api.credentials import CredentialStore
from keytrail.clock import ManualClock
from keytrail.kms import errors

START = datetime(2026, 1, 1, tzinfo=UTC)


async def _advance(app: KmsApp, client: tuple[str, int] | None) -> tuple[int, dict[str, Any]]:
    """POST /_keytrail/clock/advance {"seconds": 60} from `client`; (status, JSON answer)."""
    sent: list[dict[str, Any]] = []
    body = [{"type": "http.request", "body": b'{"seconds": 60}', "more_body": False}]

    async def receive() -> dict[str, Any]:
        return body.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/_keytrail/clock/advance", "headers": [], "client": client}
    await app(scope, receive, send)
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], orjson.loads(answer)


def _app(clock: ManualClock | None) -> KmsApp:
    return KmsApp(None, CredentialStore(None), ApiSettings(dev_clock=clock))  # type: ignore[arg-type]


@pytest.mark.parametrize("client", [("127.0.0.1", 5000), ("127.8.9.10", 5000), ("::1", 5000),
                                    ("::ffff:127.0.0.1", 5000)])
async def test_a_loopback_client_moves_the_dev_clock(client: tuple[str, int]) -> None:
    clock = ManualClock(START)
    status, answer = await _advance(_app(clock), client)
    assert (status, answer) == (200, {"now": "2026-01-01T00:01:00Z"})
    assert clock.now() == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize("client", [("10.0.0.5", 5000), ("::1:2:3", 5000), ("::ffff:10.0.0.5", 5000),
                                    ("localhost.evil.example", 5000), None])
async def test_any_other_client_gets_404_and_the_clock_stays(client: tuple[str, int] | None) -> None:
    clock = ManualClock(START)
    assert (await _advance(_app(clock), client))[0] == 404
    assert clock.now() == START


async def test_without_the_dev_clock_the_endpoint_is_404() -> None:
    assert (await _advance(_app(None), ("127.0.0.1", 5000)))[0] == 404


async def test_an_advance_whose_due_work_the_key_store_refuses_answers_the_new_time_and_why() -> None:
    """The clock moved, the work it made due did not run (a PostgreSQL store out of reach): the
    answer says both, in AWS's error shape, where it was a bare 500 and a traceback in the log
    (and a client retrying it moved the clock a second time)."""
    async def store_out_of_reach() -> None:
        raise errors.KMSInternalException(
            "The request was rejected because an internal exception occurred. The request can be retried.")

    clock = ManualClock(START)
    app = KmsApp(None, CredentialStore(None),  # type: ignore[arg-type]
                 ApiSettings(dev_clock=clock, on_clock_advanced=store_out_of_reach))
    status, answer = await _advance(app, ("127.0.0.1", 5000))
    assert status == 500
    assert answer["__type"] == "KMSInternalException"
    assert answer["now"] == "2026-01-01T00:01:00Z"
    assert answer["message"].startswith("The clock moved to 2026-01-01T00:01:00Z, but the work it made due did not run")
    assert "advance by 0 seconds" in answer["message"]
    assert clock.now() == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
