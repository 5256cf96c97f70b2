"""What the tests of a PostgreSQL store failing under a running node share: the retryable answer,
a failed call's (code, message, request id), its record in the trail, and waiting for the node to
serve again."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.e2e.support import audit_events, reply_id

RETRYABLE = "The request was rejected because an internal exception occurred. The request can be retried."

Failure = tuple[str, str, str]  # the error code, its message, the request id


def failure(call: Callable[[], Any]) -> Failure:
    """The (code, message, request id) of a call that must fail."""
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["Error"]["Code"], info.value.response["Error"]["Message"], reply_id(info.value)


def recorded(data_dir: Path, failures: list[Failure]) -> None:
    """Each failed call once in the node's audit trail, with its answer's error code."""
    codes = [(event["requestID"], event.get("errorCode")) for event in audit_events(data_dir) if "requestID" in event]
    assert sorted(code for code in codes if code[0] in {request for _, _, request in failures}) == sorted(
        (request, code) for code, _, request in failures)


def failed_retryably(data_dir: Path, failures: list[Failure], log: str, marker: str) -> str:
    """The one log line holding `marker` (once, not a line a call) of an outage whose `failures`
    each got the retryable error and are each in the trail once, with no traceback in `log`."""
    assert {failure[:2] for failure in failures} == {("KMSInternalException", RETRYABLE)}, failures
    recorded(data_dir, failures)
    assert "Traceback" not in log, log[-3000:]
    [line] = [line for line in log.splitlines() if marker in line]
    return line


def eventually(call: Callable[[], Any]) -> Any:
    """`call`'s answer once it succeeds: the first calls after the database is back may still meet
    a session it ended (a retryable KMSInternalException)."""
    for _ in range(50):
        try:
            return call()
        except ClientError as error:
            if error.response["Error"]["Code"] != "KMSInternalException":
                raise
            time.sleep(0.1)
    return call()
