"""The ASGI app over a real KMS service: what it does with requests that do not arrive whole."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from keytrail.api.app import ApiSettings, KmsApp
from keytrail.api.credentials import CredentialStore
from keytrail.api.sigv4 import SigningKeys
from keytrail.clock import ManualClock
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.support.asgi import AllowAndRecord, post_kms

_AUTHORIZATION = (b"AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kms/aws4_request, "
                  b"SignedHeaders=host;x-amz-date, Signature=00")


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
    return await post_kms(app, target, messages, _AUTHORIZATION)


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


def _alice(secret: str) -> str:
    return (f'[[principal]]\narn = "arn:aws:iam::111122223333:user/alice"\n'
            f'access_key_id = "AKIAALICE000000000001"\nsecret_access_key = "{secret}"\n')


async def _signed_call(app: KmsApp, secret: str) -> tuple[int, dict[str, Any]]:
    """ListKeys signed by botocore with alice's access key and `secret`, now; the status and body."""
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys"})
    SigV4Auth(Credentials("AKIAALICE000000000001", secret), "kms", "us-east-1").add_auth(request)
    headers = [(name.lower().encode(), value.encode()) for name, value in request.prepare().headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": [*headers, (b"host", b"localhost:4599")], "client": ("127.0.0.1", 5000)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def _signing_keys_of(secret: str) -> list[SigningKeys]:
    return [held for held in gc.get_objects() if isinstance(held, SigningKeys) and held._secret == secret]


async def test_a_secret_changed_or_removed_in_the_principals_file_never_verifies_again(
    parts: tuple[KmsApp, SqliteStore, AllowAndRecord], tmp_path: Path,
) -> None:
    # The signing keys derived from a secret live with its credential, which a reload (SIGHUP)
    # replaces: no cache outlives it to check a request against the old secret.
    app, _, _ = parts
    principals = tmp_path / "principals.toml"
    principals.write_text(_alice("old-secret"))
    principals.chmod(0o600)
    app.credentials = CredentialStore(principals)
    assert (await _signed_call(app, "old-secret"))[0] == 200
    assert len(_signing_keys_of("old-secret")) == 1

    principals.write_text(_alice("new-secret"))
    app.credentials.reload()
    status, body = await _signed_call(app, "old-secret")
    assert (status, body["__type"]) == (400, "InvalidSignatureException")
    assert (await _signed_call(app, "new-secret"))[0] == 200
    gc.collect()
    assert _signing_keys_of("old-secret") == []  # gone with its credential, not cached anywhere

    principals.write_text(_alice("new-secret").replace("AKIAALICE000000000001", "AKIAOTHER000000000001"))
    app.credentials.reload()
    status, body = await _signed_call(app, "new-secret")
    assert (status, body) == (400, {"__type": "UnrecognizedClientException",
                                    "message": "The security token included in the request is invalid."})


async def test_an_unknown_operation_is_named_as_its_client_wrote_it(
    parts: tuple[KmsApp, SqliteStore, AllowAndRecord],
) -> None:
    """Read as Latin-1 alone, a target sent in UTF-8 came back in the error as mojibake (`Ã©`)."""
    app, _, _ = parts
    sent = await _call(app, "ListKeysé", [{"type": "http.request", "body": b"{}"}])
    assert sent[0]["status"] == 400
    assert orjson.loads(sent[1]["body"]) == {"__type": "UnknownOperationException",
                                             "message": "The operation 'TrentService.ListKeysé' is not supported."}
