"""The ASGI app over a real KMS service: a reload of the principals file between a request's headers
and its body (tests/integration/test_reload_in_flight.py has the real server's cases)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from keytrail.api.app import ApiSettings, KmsApp
from keytrail.api.credentials import CredentialStore, PrincipalsFileError
from keytrail.clock import ManualClock
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.support.asgi import AllowAndRecord

_ALICE_KEY = "AKIAALICE000000000001"


def _principal(access_key_id: str, secret: str) -> str:
    return (f'[[principal]]\narn = "arn:aws:iam::111122223333:user/u{access_key_id[-4:]}"\n'
            f'access_key_id = "{access_key_id}"\nsecret_access_key = "{secret}"\n')


@pytest.fixture
def app(tmp_path: Path) -> KmsApp:
    """Under --dev-credentials, with a principals file that does not name alice's access key (yet)."""
    sink = AllowAndRecord()
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    service = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=sink, authorizer=sink))
    principals = tmp_path / "principals.toml"
    principals.write_text(_principal("AKIABOB00000000000001", "bob-secret"))
    principals.chmod(0o600)
    return KmsApp(service, CredentialStore(principals, dev_credentials=True), ApiSettings())


async def _list_keys_reloading(app: KmsApp, signed_with: str, reloaded: str) -> tuple[int, dict[str, Any]]:
    """Alice's ListKeys, signed with `signed_with` now; the principals file is rewritten as `reloaded`
    and reloaded after its headers are checked, before its body arrives. The status and body answered."""
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys"})
    SigV4Auth(Credentials(_ALICE_KEY, signed_with), "kms", "us-east-1").add_auth(request)
    headers = [(name.lower().encode(), value.encode()) for name, value in request.prepare().headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/", "raw_path": b"/", "query_string": b"",
             "headers": [*headers, (b"host", b"localhost:4599")], "client": ("127.0.0.1", 5000)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:  # asked for the body: the headers were checked
        assert app.credentials.path is not None
        app.credentials.path.write_text(reloaded)
        with contextlib.suppress(PrincipalsFileError):  # logged by serve's SIGHUP handler (cli/node.py)
            app.credentials.reload()
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


async def test_a_dev_key_given_a_secret_while_the_body_arrives_is_checked_against_it(app: KmsApp) -> None:
    """Accepted unsigned as it arrived (--dev-credentials), the key has a secret by the time its
    body is in: its headers and signature are checked as a fresh request's are."""
    status, body = await _list_keys_reloading(app, "not-alice-secret", _principal(_ALICE_KEY, "alice-secret"))
    assert (status, body["__type"]) == (400, "InvalidSignatureException")
    status, body = await _list_keys_reloading(app, "alice-secret", _principal(_ALICE_KEY, "alice-secret"))
    assert (status, "Keys" in body) == (200, True), body


async def test_a_reload_that_fails_while_the_body_arrives_leaves_the_request_as_checked(app: KmsApp) -> None:
    """A broken file keeps the credentials in force: the request is served as they authenticate it."""
    status, body = await _list_keys_reloading(app, "any", "[[principal]\n")
    assert (status, "Keys" in body) == (200, True), body
