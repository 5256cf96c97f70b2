"""The ASGI app over a real KMS service: what it does with requests that do not arrive whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from keytrail.api.app import ApiSettings, KmsApp
from keytrail.api.credentials import CredentialStore
from keytrail.clock import ManualClock
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore

_AUTHORIZATION = (b"AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kms/aws4_request, "
                  b"SignedHeaders=host;x-amz-date, Signature=00")


class AllowAndRecord:
    """Allows every call; as audit sink, keeps every record."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def authorize(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(Verdict.ALLOW)

    async def record(self, call: CallRecord) -> None:
        self.records.append(call)


@pytest.fixture
def parts(tmp_path: Path) -> tuple[KmsApp, SqliteStore, AllowAndRecord]:
    sink = AllowAndRecord()
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    service = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=sink, authorizer=sink))
    # --dev-credentials: no signature check, so only the body's completeness stands in the way
    app = KmsApp(service, CredentialStore(None, dev_credentials=True), ApiSettings())
    return app, store, sink


async def _call(app: KmsApp, target: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Serve one POST / whose body arrives as `messages`; what the app sent back."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"x-amz-target", f"TrentService.{target}".encode()), (b"authorization", _AUTHORIZATION),
               (b"x-amz-date", b"20260101T000000Z")]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "client": ("127.0.0.1", 5000)}
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("arrived", [b"", b'{"Description": "half"}'])
async def test_a_request_whose_client_left_before_its_body_ended_is_not_carried_out(
    parts: tuple[KmsApp, SqliteStore, AllowAndRecord], arrived: bytes,
) -> None:
    app, store, sink = parts
    messages = [{"type": "http.request", "body": arrived, "more_body": True}, {"type": "http.disconnect"}]
    sent = await _call(app, "CreateKey", messages)
    assert await store.list_keys("000000000000", "us-east-1") == []
    assert (sink.records, sent) == ([], [])


async def test_a_whole_request_is_carried_out(parts: tuple[KmsApp, SqliteStore, AllowAndRecord]) -> None:
    app, store, sink = parts
    sent = await _call(app, "CreateKey", [{"type": "http.request", "body": b"{}", "more_body": False}])
    assert sent[0]["status"] == 200
    assert len(await store.list_keys("000000000000", "us-east-1")) == 1
    assert [record.event_name for record in sink.records] == ["CreateKey"]


async def test_two_authorization_headers_are_refused_before_anything_runs(
    parts: tuple[KmsApp, SqliteStore, AllowAndRecord],
) -> None:
    # HTTP joins a repeated field with a comma; the joined value named the first header's access key
    # while taking the second's signature. Refused as AWS refuses it, even under --dev-credentials.
    app, store, sink = parts
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    other = _AUTHORIZATION.replace(b"Credential=test/", b"Credential=111122223333/")
    headers = [(b"x-amz-target", b"TrentService.CreateKey"), (b"authorization", other),
               (b"authorization", _AUTHORIZATION), (b"x-amz-date", b"20260101T000000Z")]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "client": ("127.0.0.1", 5000)}
    await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert orjson.loads(sent[1]["body"])["__type"] == "IncompleteSignatureException"
    assert await store.list_keys("111122223333", "us-east-1") == []
    assert await store.list_keys("000000000000", "us-east-1") == []
    assert sink.records == []  # it never reached the service (docs/audit-events.md)
