"""Requests from a web page: KMS calls with the browser's CORS preflight and the answer's CORS headers,
as AWS KMS gives them (api/cors.py), sent as the AWS SDK for JavaScript in a browser sends them; and
no page moving the dev clock."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support.server import KeytrailServer

# What Chrome sends before the browser SDK's ListKeys (its signed headers, as @aws-sdk/client-kms signs them).
_PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "amz-sdk-invocation-id,amz-sdk-request,authorization,content-type,"
                                      "x-amz-content-sha256,x-amz-date,x-amz-target,x-amz-user-agent",
}
_EXPOSED = "x-amzn-RequestId,x-amzn-ErrorType,x-amzn-ErrorMessage,Date"


def _send(server: KeytrailServer, method: str, headers: dict[str, str], body: bytes = b"", path: str = "/",
          ) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _list_keys(server: KeytrailServer, origin: str, key: str = "AKIAALICE000000000001",
               secret: str = "alice-secret") -> tuple[int, dict[str, str], bytes]:
    """A ListKeys signed as the browser SDK signs it, the browser adding its Origin (unsigned)."""
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=b"{}", headers={
        "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-User-Agent": "aws-sdk-js/3.1177.0 ua/2.1 lang/js md/browser#Chrome_131.0.0.0 api/kms#3.1177.0"})
    SigV4Auth(Credentials(key, secret), "kms", "us-east-1").add_auth(request)
    return _send(server, "POST", {**request.prepare().headers, "Origin": origin}, b"{}")


def test_preflight_of_a_kms_call_is_answered_as_aws_kms_answers_it(server: KeytrailServer) -> None:
    status, headers, body = _send(server, "OPTIONS", {**_PREFLIGHT, "Origin": "https://app.example.com"})
    assert status == 200 and body == b""
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-methods"] == "POST"
    assert headers["access-control-allow-headers"] == _PREFLIGHT["Access-Control-Request-Headers"]
    assert headers["access-control-expose-headers"] == _EXPOSED
    assert headers["access-control-max-age"] == "172800"


def test_a_call_from_a_page_lets_the_page_read_its_answer(server: KeytrailServer) -> None:
    status, headers, body = _list_keys(server, "https://app.example.com")
    assert status == 200 and "Keys" in json.loads(body)
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-expose-headers"] == _EXPOSED
    # an error too: the SDK reads its __type and x-amzn-ErrorType
    status, headers, body = _list_keys(server, "https://app.example.com", secret="wrong")
    assert status == 400 and json.loads(body)["__type"] == "InvalidSignatureException"
    assert headers["access-control-allow-origin"] == "*"


def test_a_call_without_an_origin_gets_no_cors_headers(server: KeytrailServer) -> None:
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=b"{}", headers={
        "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials("AKIAALICE000000000001", "alice-secret"), "kms", "us-east-1").add_auth(request)
    status, headers, _ = _send(server, "POST", dict(request.prepare().headers), b"{}")
    assert status == 200 and not any(name.startswith("access-control-") for name in headers)


@pytest.fixture(scope="module")
def dev_credentials_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeytrailServer]:
    data_dir: Path = tmp_path_factory.mktemp("cors-dev") / "data"
    running = KeytrailServer(data_dir, "--dev-credentials").start()
    yield running
    running.stop()


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:8080", "http://[::1]:5173"])
def test_dev_credentials_node_takes_calls_from_pages_of_this_machine(
        dev_credentials_server: KeytrailServer, origin: str) -> None:
    status, headers, _ = _send(dev_credentials_server, "OPTIONS", {**_PREFLIGHT, "Origin": origin})
    assert status == 200 and headers["access-control-allow-origin"] == origin
    status, headers, _ = _list_keys(dev_credentials_server, origin, key="test", secret="test")
    assert status == 200 and headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", ["https://app.example.com", "null", "http://localhost.example.com"])
def test_dev_credentials_node_refuses_calls_from_other_pages(
        dev_credentials_server: KeytrailServer, origin: str) -> None:
    """Any key is taken unsigned there: with `*`, every web page the developer opens could use the node."""
    status, headers, body = _send(dev_credentials_server, "OPTIONS", {**_PREFLIGHT, "Origin": origin})
    assert status == 403 and json.loads(body)["__type"] == "AccessDeniedException"
    assert "access-control-allow-origin" not in headers
    _, headers, _ = _list_keys(dev_credentials_server, origin, key="test", secret="test")
    assert "access-control-allow-origin" not in headers


def test_a_web_page_cannot_move_the_dev_clock(fresh_server: KeytrailServer) -> None:
    """A page may POST anywhere without a preflight (a text/plain body, `mode: "no-cors"`): any site
    the developer opened could move the dev clock and so complete pending key deletions."""
    before = fresh_server.advance(0)
    body = json.dumps({"seconds": 40 * 86400}).encode()
    page = {"Origin": "https://attacker.example", "Content-Type": "text/plain;charset=UTF-8"}
    status, _, answer = _send(fresh_server, "POST", page, body, path="/_keytrail/clock/advance")
    assert status == 403 and json.loads(answer)["__type"] == "AccessDeniedException"
    assert fresh_server.advance(0)[:10] == before[:10]  # still the same day
