"""The server as a client sees it: signatures, malformed requests, restarts, real SDKs."""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from keytrail.audit.cloudtrail_files import iter_events
from tests.support.errors import aws_error
from tests.support.server import PRINCIPALS, KeytrailServer, write_principals
from tests.support.services import free_port, wait_for_port


def _raw(server: KeytrailServer, body: bytes, target: str = "TrentService.ListKeys", *,
         secret: str = "alice-secret", key: str = "AKIAALICE000000000001", sign: bool = True,
         when: datetime.datetime | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=body, headers={
        "X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})
    if sign:
        signer = SigV4Auth(Credentials(key, secret), "kms", "us-east-1")
        if when is None:
            signer.add_auth(request)
        else:
            with mock.patch("botocore.auth.get_current_datetime", return_value=when):
                signer.add_auth(request)
    prepared = request.prepare()
    raw = urllib.request.Request(prepared.url, data=body, headers=dict(prepared.headers), method="POST")
    try:
        with urllib.request.urlopen(raw, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


def _signed_head(server: KeytrailServer, body: bytes, key: str = "AKIAALICE000000000001") -> bytes:
    """The HTTP head of a ListKeys request signed for `body`, to send with only a part of the body."""
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=body, headers={
        "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(key, "alice-secret"), "kms", "us-east-1").add_auth(request)
    headers = {"Host": f"127.0.0.1:{server.port}", **request.prepare().headers, "Content-Length": str(len(body))}
    return ("POST / HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            + "\r\n").encode()


def test_health_answers_200(server: KeytrailServer) -> None:
    status, body = server.get("/_keytrail/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    metrics = server.get("/metrics")[1].decode()
    assert 'keytrail_healthy{part="audit"} 1' in metrics and 'keytrail_healthy{part="keyStore"} 1' in metrics
    assert "\nkeytrail_audit_unshipped_bytes 0\n" in metrics  # without Kafka: nothing waits to be shipped


@pytest.mark.parametrize("path", ["/_keytrail/health", "/metrics"])
def test_head_answers_as_get_without_a_body(server: KeytrailServer, path: str) -> None:
    """An uptime monitor or load balancer probing with HEAD got 404 'HEAD /_keytrail/health is no
    keytrail endpoint' from a healthy node; HEAD answers as GET does (RFC 9110), with no body."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("HEAD", path)
        head = connection.getresponse()
        assert (head.status, head.read()) == (200, b"")
        connection.request("GET", path)
        get = connection.getresponse()
        assert (get.status, get.getheader("content-type")) == (200, head.getheader("content-type"))
        get.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/_keytrail/health", "/metrics"])
def test_another_method_on_a_read_only_endpoint_is_not_allowed(server: KeytrailServer, path: str) -> None:
    """The path exists: 405 naming the methods it takes, as consume's and detect's /metrics answer
    (it was 404, 'is no keytrail endpoint')."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("DELETE", path)
        answer = connection.getresponse()
        assert (answer.status, answer.getheader("allow")) == (405, "GET, HEAD")
        assert json.loads(answer.read()) == {"message": f"DELETE {path} is not allowed: it answers GET and HEAD"}
    finally:
        connection.close()


def test_health_is_unhealthy_once_the_key_store_file_is_deleted_under_the_node(
        fresh_server: KeytrailServer) -> None:
    """Its writes would go on into the deleted file, where no restart reads them."""
    fresh_server.client("alice").create_key()
    (fresh_server.data_dir / "keys.db").unlink()
    for _ in range(100):  # the key store's last answer is kept for a second
        status, body = fresh_server.get("/_keytrail/health")
        if status == 503:
            break
        time.sleep(0.1)
    health = json.loads(body)
    assert (status, health["status"]) == (503, "unhealthy"), body
    assert health["keyStore"].endswith("keys.db was deleted or replaced while the node runs: restore it and restart")
    metrics = fresh_server.get("/metrics")[1].decode()
    assert 'keytrail_healthy{part="keyStore"} 0' in metrics and 'keytrail_healthy{part="audit"} 1' in metrics


def test_every_response_carries_a_request_id(kms) -> None:
    ok = kms.list_keys()
    assert ok["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"] == ok["ResponseMetadata"]["RequestId"]
    with pytest.raises(ClientError) as info:
        kms.describe_key(KeyId="nope")
    assert len(info.value.response["ResponseMetadata"]["RequestId"]) == 36


def test_wrong_secret_is_invalid_signature(server: KeytrailServer) -> None:
    status, _, body = _raw(server, b"{}", secret="wrong")
    assert status == 400 and body["__type"] == "InvalidSignatureException"


def test_unknown_access_key_is_unrecognized_client(server: KeytrailServer) -> None:
    status, _, body = _raw(server, b"{}", key="AKIANOBODY0000000000")
    assert status == 400 and body["__type"] == "UnrecognizedClientException"


def test_requests_refused_before_authentication_are_counted_and_logged_not_recorded(
    fresh_server: KeytrailServer,
) -> None:
    """They left no trace at all: no audit record (there is no caller to name), and neither a log
    line nor a metric, so a caller guessing secrets went unseen."""
    for _ in range(3):
        assert _raw(fresh_server, b"{}", secret="guessed")[2]["__type"] == "InvalidSignatureException"
    assert _raw(fresh_server, b"{}", key="AKIANOBODY0000000000")[2]["__type"] == "UnrecognizedClientException"
    fresh_server.client().list_keys()  # one call by a caller, recorded
    status, metrics = fresh_server.get("/metrics")
    assert status == 200
    assert 'keytrail_kms_unauthenticated_total{code="InvalidSignatureException"} 3' in metrics.decode()
    assert 'keytrail_kms_unauthenticated_total{code="UnrecognizedClientException"} 1' in metrics.decode()
    assert fresh_server.stop() == 0
    lines = [line for line in fresh_server.log.read_text().splitlines() if "before authentication" in line]
    assert len(lines) == 2, lines  # the first of each code from this address; the next ones in a minute's count
    assert "(InvalidSignatureException, access key AKIAALICE000000000001): The request signature" in lines[0]
    assert "guessed" not in fresh_server.log.read_text()
    assert [e["eventName"] for _, e in iter_events(fresh_server.data_dir)] == ["ListKeys"]


def test_a_secret_sent_as_the_access_key_is_refused_without_reaching_the_log(fresh_server: KeytrailServer) -> None:
    """A client given its key pair the wrong way round signs with the secret as its access key id:
    an AWS-format secret holds a "/", the scope breaks, and the refusal's log line quoted it."""
    swapped = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    status, _, body = _raw(fresh_server, b"{}", key=swapped, secret="AKIAALICE000000000001")
    assert (status, body["__type"]) == (400, "IncompleteSignatureException")
    assert fresh_server.stop() == 0
    log = fresh_server.log.read_text()
    assert ("(IncompleteSignatureException, access key none readable): "
            "Credential must have exactly 5 slash-delimited elements") in log
    assert "bPxRfiCYEXAMPLEKEY" not in log and "wJalr" not in log


def test_missing_authorization_is_missing_token(server: KeytrailServer) -> None:
    status, headers, body = _raw(server, b"{}", sign=False)
    assert body["__type"] == "MissingAuthenticationTokenException" and status == 403
    assert "x-amzn-RequestId" in headers or "x-amzn-requestid" in headers


def test_a_request_signed_in_its_query_string_is_refused_as_unsigned(server: KeytrailServer) -> None:
    # docs/principals.md: only the Authorization header carries a signature (no presigned URLs,
    # whose credentials end up in logs and stay replayable for days).
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=b"{}", headers={
        "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1"})
    SigV4QueryAuth(Credentials("AKIAALICE000000000001", "alice-secret"), "kms", "us-east-1").add_auth(request)
    prepared = request.prepare()
    assert "X-Amz-Signature=" in prepared.url and "Authorization" not in prepared.headers
    raw = urllib.request.Request(prepared.url, data=b"{}", headers=dict(prepared.headers), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(raw, timeout=10)
    assert refused.value.code == 403
    assert json.loads(refused.value.read())["__type"] == "MissingAuthenticationTokenException"


def test_expired_signature_is_refused(server: KeytrailServer) -> None:
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)
    status, _, body = _raw(server, b"{}", when=old)
    assert status == 400 and body["__type"] == "InvalidSignatureException"
    assert body["message"].startswith("Signature expired")



def test_a_non_ascii_signature_is_invalid_signature_not_500(server: KeytrailServer) -> None:
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=b"{}", headers={
        "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials("AKIAALICE000000000001", "alice-secret"), "kms", "us-east-1").add_auth(request)
    headers = dict(request.prepare().headers)
    headers["Authorization"] = headers["Authorization"].rsplit("Signature=", 1)[0] + "Signature=" + "\u00e9" * 64
    raw = urllib.request.Request(server.endpoint + "/", data=b"{}", headers=headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(raw, timeout=10)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["__type"] == "InvalidSignatureException"

@pytest.mark.parametrize(("body", "target", "code"), [
    (b"{not json", "TrentService.ListKeys", "SerializationException"),
    (b'{"KeyId": 5}', "TrentService.DescribeKey", "SerializationException"),
    (b'{"KeyId": "k", "Plaintext": "***not base64***"}', "TrentService.Encrypt", "SerializationException"),
    (b"[1, 2]", "TrentService.ListKeys", "SerializationException"),
    (b"{}", "TrentService.NoSuchThing", "UnknownOperationException"),
    (b"{}", "Other.ListKeys", "UnknownOperationException"),
    (b"{}", "TrentService.DescribeKey", "ValidationException"),
])
def test_malformed_requests_get_aws_errors_not_500(server: KeytrailServer, body: bytes, target: str,
                                                   code: str) -> None:
    status, _, answer = _raw(server, body, target)
    assert (status, answer["__type"]) == (400, code)


@pytest.mark.parametrize("size", [400_000, 8_000_000, 40_000_000])
def test_oversized_body_is_refused_cleanly(server: KeytrailServer, size: int) -> None:
    # urllib sends `Connection: close` and its whole body before it reads: answered before the body
    # was read and closed at once, it saw the connection reset instead of the 413 from 3 MB on.
    status, headers, body = _raw(server, b'{"x": "' + b"a" * size + b'"}')
    assert status == 413 and headers["connection"] == "close"
    assert body == {"__type": "SerializationException",
                    "message": "The request body exceeds the limit of 262144 bytes."}


def test_boto3_gets_the_413_for_an_oversized_call_and_its_next_call_is_served(server: KeytrailServer) -> None:
    kms = server.client()
    for _ in range(2):  # the connection the 413 closed is not reused for the next call
        code, message, status = aws_error(kms.encrypt, KeyId="alias/none", Plaintext=b"a" * 8_000_000)
        assert (code, status) == ("SerializationException", 413)
        assert message == "The request body exceeds the limit of 262144 bytes."
        assert "Keys" in kms.list_keys()


def test_a_body_declared_too_large_is_refused_before_it_is_sent(server: KeytrailServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: TrentService.ListKeys\r\n"
                     b"Content-Length: 100000000\r\n\r\n{")  # 100 MB promised, one byte sent
        answer = sock.recv(65536)  # at once: the server does not wait for the rest
    assert answer.startswith(b"HTTP/1.1 413 ") and b"SerializationException" in answer


@pytest.mark.parametrize("authorization", [None, "AWS4-HMAC-SHA256 Credential=AKIANOBODY/20261206/us-east-1/kms/"
                                           "aws4_request, SignedHeaders=host, Signature=00"])
def test_a_request_no_caller_signed_is_refused_before_its_body_arrives(server: KeytrailServer,
                                                                         authorization: str | None) -> None:
    # Read whole first, the body of such a request held up to 256 KiB of the node's memory until its
    # deadline: thousands of connections, each leaving its body unfinished, took gigabytes.
    head = b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Length: 200000\r\n"
    if authorization:
        head += f"Authorization: {authorization}\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n" + b" " * 1000)
        answer = sock.recv(65536)  # at once, without the rest of the body
    status, code = (b"403", b"MissingAuthenticationTokenException") if authorization is None else (
        b"400", b"UnrecognizedClientException")
    assert answer.startswith(b"HTTP/1.1 " + status) and code in answer and b"connection: close" in answer.lower()


def test_unfinished_large_bodies_hold_a_bounded_share_of_memory_and_small_calls_go_on(server: KeytrailServer) -> None:
    # A client that knows an access key id passes the checks the headers allow: past 16 MiB held
    # by bodies beyond their first 64 KiB, the next such body is refused as throttled (SDKs retry),
    # while every call an SDK makes, smaller than that, is served.
    body = b'{"Limit": 1000}'.ljust(250_000)
    sent = body[:200_000]  # 136 KiB past the first 64 KiB of each, held while the rest is awaited
    before = _counted(server.get("/metrics")[1].decode(), "keytrail_http_refused_requests_total")
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=10))
                 for _ in range(130)]  # 17.1 MiB of such bytes in all
        for sock in socks:
            sock.sendall(_signed_head(server, body) + sent)
        assert "Keys" in server.client().list_keys()
        time.sleep(1)
        answers = []
        for sock in socks:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                answers.append(sock.recv(65536))
        assert 5 <= len(answers) <= 10  # the others wait for the rest of their bodies
        assert all(a.startswith(b"HTTP/1.1 400 ") and b"ThrottlingException" in a and b"connection: close" in a
                   for a in answers)
        # Refused before their signatures were checked: no audit record, and they showed nowhere else.
        after = _counted(server.get("/metrics")[1].decode(), "keytrail_http_refused_requests_total")
        assert after["large_bodies_throttled"] - before.get("large_bodies_throttled", 0) == len(answers)
    assert "Keys" in server.client().list_keys()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:  # the bytes were given back
        sock.sendall(_signed_head(server, body) + body)
        assert sock.recv(12) == b"HTTP/1.1 200"


def test_role_principal_calls_as_assumed_role(server: KeytrailServer) -> None:
    app = server.client("app")
    assert app.create_key()["KeyMetadata"]["AWSAccountId"] == PRINCIPALS["app"][0].split(":")[4]


def test_restart_keeps_keys_aliases_and_decrypts(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client()
    key_id = kms.create_key(Description="durable")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/durable", TargetKeyId=key_id)
    kms.enable_key_rotation(KeyId=key_id)
    blob = kms.encrypt(KeyId="alias/durable", Plaintext=b"survives", EncryptionContext={"a": "b"})["CiphertextBlob"]
    assert fresh_server.stop(signal.SIGTERM) == 0
    fresh_server.start()
    kms = fresh_server.client()
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "b"})["Plaintext"] == b"survives"
    assert kms.describe_key(KeyId="alias/durable")["KeyMetadata"]["Description"] == "durable"
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True


def test_key_material_is_sealed_on_disk(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    fresh_server.stop()
    root_key = (fresh_server.data_dir / "root.key")
    assert oct(root_key.stat().st_mode & 0o777) == "0o600"
    sys.path.insert(0, str(Path(__file__).parents[2] / "src"))
    import asyncio

    from keytrail.kms.sealing import RootKey
    from keytrail.kms.sqlite_store import SqliteStore
    store = SqliteStore(fresh_server.data_dir / "keys.db", RootKey.load(fresh_server.data_dir))
    key = asyncio.run(store.get_key("111122223333", "us-east-1", key_id))
    assert key is not None and key.current_material is not None
    secret = key.current_material.secret
    raw = (fresh_server.data_dir / "keys.db").read_bytes()
    import base64
    assert secret not in raw and base64.b64encode(secret) not in raw and secret.hex().encode() not in raw


def test_aws_cli_encrypt_decrypt_round_trip(server: KeytrailServer, kms, tmp_path: Path) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    _, access_key, secret, _, _ = PRINCIPALS["alice"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null"}
    aws = [sys.executable, "-m", "awscli", "kms", "--endpoint-url", server.endpoint]
    (tmp_path / "plain").write_bytes(b"from the aws cli")
    out = subprocess.run([*aws, "encrypt", "--key-id", key_id, "--plaintext", f"fileb://{tmp_path / 'plain'}",
                          "--output", "text", "--query", "CiphertextBlob"],
                         env=env, capture_output=True, text=True, check=True)
    import base64
    (tmp_path / "blob").write_bytes(base64.b64decode(out.stdout.strip()))
    back = subprocess.run([*aws, "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob'}",
                           "--output", "text", "--query", "Plaintext"],
                          env=env, capture_output=True, text=True, check=True)
    assert base64.b64decode(back.stdout.strip()) == b"from the aws cli"


def test_aws_encryption_sdk_round_trip(server: KeytrailServer, kms) -> None:
    import aws_encryption_sdk
    import botocore.session
    from aws_encryption_sdk.identifiers import CommitmentPolicy

    arn = kms.create_key()["KeyMetadata"]["Arn"]
    _, access_key, secret, _, _ = PRINCIPALS["alice"]
    session = botocore.session.Session()
    session.set_credentials(access_key, secret)
    session.set_config_variable("region", "us-east-1")
    os.environ["AWS_ENDPOINT_URL_KMS"] = server.endpoint
    try:
        provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(key_ids=[arn], botocore_session=session)
        client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
        ciphertext, _ = client.encrypt(source=b"envelope" * 100, key_provider=provider,
                                       encryption_context={"purpose": "test"})
        plaintext, header = client.decrypt(source=ciphertext, key_provider=provider)
    finally:
        del os.environ["AWS_ENDPOINT_URL_KMS"]
    assert plaintext == b"envelope" * 100 and header.encryption_context["purpose"] == "test"


def test_aws_encryption_sdk_mrk_replica_discovery_filter_and_a_disabled_key(server: KeytrailServer, kms) -> None:
    """The Encryption SDK's documented behaviours against keytrail: a message under a multi-Region
    primary decrypts with its replica (MRK-aware strict and discovery providers), a discovery filter
    of another account refuses it, and of two keys the message names, a disabled one is passed over."""
    import aws_encryption_sdk
    import botocore.session
    from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError
    from aws_encryption_sdk.identifiers import CommitmentPolicy
    from aws_encryption_sdk.key_providers.kms import (
        DiscoveryFilter,
        MRKAwareDiscoveryAwsKmsMasterKeyProvider,
        MRKAwareStrictAwsKmsMasterKeyProvider,
    )

    primary = kms.create_key(MultiRegion=True)["KeyMetadata"]["Arn"]
    replica = kms.replicate_key(KeyId=primary, ReplicaRegion="eu-west-1")["ReplicaKeyMetadata"]["Arn"]
    single = kms.create_key()["KeyMetadata"]["Arn"]
    _, access_key, secret, _, _ = PRINCIPALS["alice"]
    session = botocore.session.Session()
    session.set_credentials(access_key, secret)
    session.set_config_variable("region", "us-east-1")
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)

    def discovery(account: str) -> MRKAwareDiscoveryAwsKmsMasterKeyProvider:
        return MRKAwareDiscoveryAwsKmsMasterKeyProvider(
            botocore_session=session, discovery_region="eu-west-1",
            discovery_filter=DiscoveryFilter(account_ids=[account], partition="aws"))

    with mock.patch.dict(os.environ, {"AWS_ENDPOINT_URL_KMS": server.endpoint}):
        both = MRKAwareStrictAwsKmsMasterKeyProvider(key_ids=[primary, single], botocore_session=session)
        message, _ = client.encrypt(source=b"mrk", key_provider=both, encryption_context={"purpose": "mrk"})
        by_replica = MRKAwareStrictAwsKmsMasterKeyProvider(key_ids=[replica], botocore_session=session)
        assert client.decrypt(source=message, key_provider=by_replica)[0] == b"mrk"
        assert client.decrypt(source=message, key_provider=discovery("111122223333"))[0] == b"mrk"
        with pytest.raises(AWSEncryptionSDKClientError):
            client.decrypt(source=message, key_provider=discovery("444455556666"))
        kms.disable_key(KeyId=primary)
        assert client.decrypt(source=message, key_provider=both)[0] == b"mrk"  # by the single-Region key


def test_dev_credentials_accept_localstack_style_keys(tmp_path: Path) -> None:
    # localhost: a name, bound on 127.0.0.1 and ::1, loopback both
    server = KeytrailServer(tmp_path / "data", "--dev-credentials", "--host", "localhost").start()
    try:
        client = boto3.client("kms", endpoint_url=server.endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        assert client.create_key()["KeyMetadata"]["AWSAccountId"] == "000000000000"
        numbered = boto3.client("kms", endpoint_url=server.endpoint, region_name="us-east-1",
                                aws_access_key_id="123456789012", aws_secret_access_key="whatever")
        assert numbered.create_key()["KeyMetadata"]["AWSAccountId"] == "123456789012"
    finally:
        server.stop()


def test_first_start_on_port_0_prints_the_endpoint_it_serves_on(tmp_path: Path) -> None:
    """The admin user's `export` line names the port picked for --port 0 (it said `:0`)."""
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "data"),
                             "--port", "0", "--dev-clock"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("Created ")
        env = dict(pair.split("=", 1) for pair in proc.stdout.readline().removeprefix("export ").split())
        endpoint = env["AWS_ENDPOINT_URL_KMS"]
        assert not endpoint.endswith(":0"), endpoint
        wait_for_port(int(endpoint.rsplit(":", 1)[1]), timeout=30)  # printed before the node listens
        kms = boto3.client("kms", endpoint_url=endpoint, region_name=env["AWS_DEFAULT_REGION"],
                           aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        assert kms.create_key()["KeyMetadata"]["Enabled"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_dev_clock_endpoint_validates_its_body(server: KeytrailServer) -> None:
    assert server.post("/_keytrail/clock/advance", {"seconds": -1})[0] == 400
    assert server.post("/_keytrail/clock/advance", {"nope": 1})[0] == 400
    status, body = server.post("/_keytrail/clock/advance", {"seconds": 1e12})  # past year 9999: was a 500
    assert status == 400 and "100 years" in body["message"]


def test_a_restarted_dev_clock_resumes_where_it_was(tmp_path: Path) -> None:
    # A deletion scheduled in dev time falls due in dev time: after a restart the clock does not
    # go back to the wall clock (which would make it wait the 30 days skipped all over again).
    server = KeytrailServer(tmp_path / "data").start()
    try:
        kms = server.client()
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        before = server.advance(30 * 86_400)
        kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
        server.stop()
        server.start()
        assert server.advance(0) >= before
        server.advance(7 * 86_400 + 60)
        assert aws_error(server.client().describe_key, KeyId=key_id)[0] == "NotFoundException"
    finally:
        if server.proc is not None:
            server.stop()


def test_tls_self_signed_prints_how_to_trust_it_and_clients_verify_it(tmp_path: Path) -> None:
    # The principals file exists (as on any start but a data dir's first), so serve prints no
    # other export line: the one it prints for the new certificate is what a client needs.
    server = KeytrailServer(tmp_path / "data", "--tls-self-signed")
    server.endpoint  # noqa: B018
    args = [sys.executable, "-m", "keytrail", "serve", "--data-dir", str(server.data_dir), "--port",
            str(server.port), "--principals", str(server.principals), "--tls-self-signed"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        from tests.support.services import wait_for_port
        wait_for_port(server.port)
        cert = server.data_dir / "tls" / "tls-cert.pem"
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"Created the dev certificate {cert} (localhost, 127.0.0.1). To use it:\n"
        exports = dict(item.split("=", 1) for item in proc.stdout.readline().split()[1:])
        assert exports == {"AWS_CA_BUNDLE": str(cert), "AWS_ENDPOINT_URL_KMS": f"https://localhost:{server.port}"}
        _create_key_as_printed(exports)
    finally:
        proc.terminate()
        proc.wait(20)


def _create_key_as_printed(exports: dict[str, str]) -> None:
    """CreateKey as alice through the endpoint and CA bundle a start printed to export."""
    _, access_key, secret, _, _ = PRINCIPALS["alice"]
    client = boto3.client("kms", endpoint_url=exports["AWS_ENDPOINT_URL_KMS"], region_name="us-east-1",
                          aws_access_key_id=access_key, aws_secret_access_key=secret, verify=exports["AWS_CA_BUNDLE"])
    try:
        assert "KeyMetadata" in client.create_key()
    finally:
        client.close()


def test_the_commands_a_first_start_prints_run_in_a_shell_with_a_data_dir_path_holding_spaces(tmp_path: Path) -> None:
    data_dir = tmp_path / "my keytrail" / "données"
    args = [sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data_dir), "--port", str(free_port()),
            "--tls-self-signed"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
    finally:
        proc.terminate()
        proc.wait(20)
    cert_export, verify = lines[1], lines[4].split("check the trail with: ", 1)[1]
    shell = subprocess.run(["bash", "-c", f'{cert_export}\nprintf "%s" "$AWS_CA_BUNDLE"'],
                           capture_output=True, text=True, check=True)
    assert shell.stdout == str(data_dir / "tls" / "tls-cert.pem")
    assert shlex.split(verify)[:5] == ["keytrail", "audit", "verify", "--data-dir", str(data_dir)]


def test_the_endpoint_printed_for_every_ipv6_interface_is_one_clients_reach(tmp_path: Path) -> None:
    # --host :: listens on IPv6 only; it printed https://localhost:PORT, which a machine whose
    # /etc/hosts maps localhost to 127.0.0.1 alone (many containers) connects to over IPv4: refused.
    server = KeytrailServer(tmp_path / "data")
    args = [sys.executable, "-m", "keytrail", "serve", "--data-dir", str(server.data_dir), "--host", "::",
            "--port", str(server.port), "--principals", str(server.principals), "--tls-self-signed"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().endswith(" (localhost, 127.0.0.1, ::1). To use it:\n")
        exports = dict(item.split("=", 1) for item in proc.stdout.readline().split()[1:])
        assert exports["AWS_ENDPOINT_URL_KMS"] == f"https://[::1]:{server.port}"
        wait_for_port(server.port, host="::1")
        _create_key_as_printed(exports)
    finally:
        proc.terminate()
        proc.wait(20)


def _https_call(port: int, maximum: ssl.TLSVersion) -> tuple[str, str, str]:
    """ListKeys over TLS up to `maximum`: the request id and the version and cipher negotiated."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode, context.maximum_version = False, ssl.CERT_NONE, maximum
    request = AWSRequest(method="POST", url=f"https://localhost:{port}/", data=b"{}", headers={
        "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(*PRINCIPALS["alice"][1:3]), "kms", "us-east-1").add_auth(request)
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        connection.request("POST", "/", body=b"{}", headers=dict(request.headers.items()))
        response = connection.getresponse()
        response.read()
        assert response.status == 200 and isinstance(connection.sock, ssl.SSLSocket)
        version, cipher = connection.sock.version(), connection.sock.cipher()
        assert version is not None and cipher is not None
        return str(response.getheader("x-amzn-requestid")), version, cipher[0]
    finally:
        connection.close()


def _wait_until_served_over_tls(port: int) -> None:
    """Until the health check answers over TLS: the port listens from the start, while the node is
    built, and a handshake waiting for it all that time (a busy machine) timed out."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/_keytrail/health", context=context, timeout=5):
                return
        except OSError:  # refused, timed out, or the handshake not yet answered
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_tls_details_name_the_version_and_cipher_suite_negotiated(tmp_path: Path) -> None:
    server = KeytrailServer(tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(server.data_dir),
                             "--port", str(server.port), "--principals", str(server.principals),
                             "--tls-self-signed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_served_over_tls(server.port)
        calls = [_https_call(server.port, maximum) for maximum in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)]
    finally:
        proc.terminate()
        proc.wait(20)
    events = {e["requestID"]: e for _, e in iter_events(server.data_dir) if e.get("requestID")}
    assert [events[request_id]["tlsDetails"] for request_id, _, _ in calls] == [
        {"tlsVersion": version, "cipherSuite": cipher, "clientProvidedHostHeader": f"localhost:{server.port}"}
        for _, version, cipher in calls]
    assert [version for _, version, _ in calls] == ["TLSv1.2", "TLSv1.3"]


def test_sigterm_exits_zero(fresh_server: KeytrailServer) -> None:
    fresh_server.client().create_key()
    assert fresh_server.stop(signal.SIGTERM) == 0


def test_sigterm_refuses_a_request_still_arriving_at_once(fresh_server: KeytrailServer) -> None:
    assert fresh_server.proc is not None
    with socket.create_connection(("127.0.0.1", fresh_server.port), timeout=10) as slow:
        slow.sendall(_signed_head(fresh_server, b'{"Limit": 1000}' + b" " * 85) + b"{")  # 99 bytes to come
        time.sleep(0.2)
        started = time.monotonic()
        fresh_server.proc.send_signal(signal.SIGTERM)
        answer = slow.recv(4096)
        assert fresh_server.proc.wait(30) == 0
    assert time.monotonic() - started < 10  # not uvicorn's 20 s wait for the rest of the body
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ") and json.loads(body)["__type"] == "KMSInternalException"
    log = fresh_server.log.read_text()
    assert "Traceback" not in log, log


def test_sighup_rereads_the_principals_file(fresh_server: KeytrailServer) -> None:
    carol, alice = fresh_server.client("carol"), fresh_server.client("alice")
    carol.list_keys()
    without_carol = {name: entry for name, entry in PRINCIPALS.items() if name != "carol"}
    write_principals(fresh_server.principals, without_carol)

    def carol_is_unknown() -> None:
        try:
            carol.list_keys()
        except ClientError as error:
            assert error.response["Error"]["Code"] == "UnrecognizedClientException"
        else:
            raise AssertionError("carol's access key is still accepted")

    fresh_server.after_sighup(carol_is_unknown)
    alice.list_keys()  # the principals still in the file keep working

    fresh_server.principals.write_text("[[principal]\n")  # broken: the credentials in force stay

    def reload_refused() -> None:
        assert "principals file not reloaded" in fresh_server.log.read_text()

    fresh_server.after_sighup(reload_refused)
    alice.list_keys()
    carol_is_unknown()

    def carol_is_known() -> None:
        try:
            carol.list_keys()
        except ClientError as error:  # not reloaded yet: SIGHUP is handled by the server's loop
            raise AssertionError(error.response["Error"]["Code"]) from error

    write_principals(fresh_server.principals)
    fresh_server.after_sighup(carol_is_known)


def test_sighup_with_a_fifo_in_place_of_the_principals_file_keeps_the_node_answering(
        fresh_server: KeytrailServer) -> None:
    """The reload read the file as it came, on the event loop: a FIFO put in its place (whoever can
    write there can make one) stopped the loop waiting for a writer, and every call with it."""
    alice = fresh_server.client("alice")
    alice.list_keys()
    fresh_server.principals.unlink()
    os.mkfifo(fresh_server.principals)
    try:
        fresh_server.after_sighup(lambda: _assert_in_log(fresh_server, "principals file not reloaded: "
                                  f"{fresh_server.principals}: cannot read the principals file: not a regular file"))
        alice.list_keys()  # the credentials in force stay
    finally:  # a loop waiting on the FIFO is let go, so that the server stops
        with contextlib.suppress(OSError):
            os.close(os.open(fresh_server.principals, os.O_WRONLY | os.O_NONBLOCK))


def _assert_in_log(server: KeytrailServer, text: str) -> None:
    assert text in server.log.read_text()


def test_sighup_with_a_secret_changed_stops_the_old_secret_at_once(fresh_server: KeytrailServer) -> None:
    old = fresh_server.client("alice")
    old.list_keys()  # its signing key derived and kept
    _, key, _, policies, _ = PRINCIPALS["alice"]
    changed = {**PRINCIPALS, "alice": (PRINCIPALS["alice"][0], key, "alice-new-secret", policies, None)}
    write_principals(fresh_server.principals, changed)

    def old_secret_refused() -> None:
        code, _, status = aws_error(old.list_keys)
        assert (code, status) == ("InvalidSignatureException", 400)

    fresh_server.after_sighup(old_secret_refused)
    new = boto3.client("kms", endpoint_url=fresh_server.endpoint, region_name="us-east-1",
                       aws_access_key_id=key, aws_secret_access_key="alice-new-secret")
    assert "Keys" in new.list_keys()
    old_secret_refused()


def _send_as(server: KeytrailServer, request: AWSRequest, encoding: str) -> tuple[int, dict[str, Any]]:
    """Send a request botocore signed with http.client, each header value's characters written in
    `encoding` (botocore's http.client writes Latin-1; the Go and Java SDKs write UTF-8)."""
    prepared = request.prepare()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.putrequest("POST", "/")  # its Host header is the one botocore signed: 127.0.0.1:<port>
        for name, value in prepared.headers.items():
            connection.putheader(name, value.encode(encoding))
        connection.endheaders(prepared.body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _list_keys_request(server: KeytrailServer, **headers: str) -> AWSRequest:
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=b"{}", headers={
        "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1", **headers})
    SigV4Auth(Credentials("AKIAALICE000000000001", "alice-secret"), "kms", "us-east-1").add_auth(request)
    return request


def _raw_signed(server: KeytrailServer, target: str, body: dict[str, Any], **headers: str) -> bytes:
    """A KMS call signed as an SDK signs it, with `headers` (signed too), as the bytes sent."""
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=json.dumps(body).encode(), headers={
        "X-Amz-Target": f"TrentService.{target}", "Content-Type": "application/x-amz-json-1.1", **headers})
    SigV4Auth(Credentials("AKIAALICE000000000001", "alice-secret"), "kms", "us-east-1").add_auth(request)
    prepared = request.prepare()
    head = "".join(f"{name}: {value}\r\n" for name, value in prepared.headers.items())
    return f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{head}\r\n".encode() + prepared.body


def test_a_call_asking_to_switch_to_h2c_is_served_over_http_1_1_and_audited(fresh_server: KeytrailServer) -> None:
    """Java's HttpClient (its default version, HTTP_2) sends each first request of an http://
    connection with `Connection: Upgrade, HTTP2-Settings` and `Upgrade: h2c`: refused 400 (before
    that, run without its body), a Java service failed every call. Now the Upgrade is ignored and
    the call answered over HTTP/1.1, its body read, signature checked and audited; the call
    pipelined behind it too."""
    h2c = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
           "HTTP2-Settings": "AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA"}
    create = _raw_signed(fresh_server, "CreateKey", {"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}, **h2c)
    listing = _raw_signed(fresh_server, "ListKeys", {}, Connection="close")
    with socket.create_connection(("127.0.0.1", fresh_server.port), timeout=10) as sock:
        sock.sendall(create + listing)
        stream = b""
        while chunk := sock.recv(65536):
            stream += chunk
    first, second = stream.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and second.startswith(b"200 "), stream
    assert b"upgrade" not in stream.lower()
    key = json.loads(first.partition(b"\r\n\r\n")[2])["KeyMetadata"]
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert key["KeyId"] in second.decode()
    assert fresh_server.stop() == 0
    audited = [event["eventName"] for _, event in iter_events(fresh_server.data_dir)
               if event.get("eventName") in ("CreateKey", "ListKeys")]
    assert audited == ["CreateKey", "ListKeys"]


def test_a_request_dated_by_its_date_header_alone_is_served(server: KeytrailServer) -> None:
    request = _list_keys_request(server, Date="")  # botocore then dates it there, not in X-Amz-Date
    assert "X-Amz-Date" not in request.headers and request.headers["Date"]
    status, body = _send_as(server, request, "latin-1")
    assert status == 200 and "Keys" in body


@pytest.mark.parametrize(("value", "encodings"), [("café à la carte", ["latin-1", "utf-8"]),
                                                  ("鍵 — ключ", ["utf-8"])])
def test_a_non_ascii_header_value_is_served_sent_as_latin_1_or_utf_8(
        server: KeytrailServer, value: str, encodings: list[str]) -> None:
    request = _list_keys_request(server, **{"X-Amz-Meta-Note": value})
    for encoding in encodings:
        status, body = _send_as(server, request, encoding)
        assert status == 200 and "Keys" in body, (encoding, body)


def test_a_non_ascii_user_agent_is_recorded_as_its_client_wrote_it(fresh_server: KeytrailServer) -> None:
    """UTF-8 bytes (the Go and Java SDKs, curl) are recorded as the text they encode, not as
    mojibake; bytes that are not UTF-8 (botocore's Latin-1) as the Latin-1 characters they are."""
    sent = [("app/鍵 café", "utf-8"), ("app/café", "latin-1")]
    for user_agent, encoding in sent:
        status, body = _send_as(fresh_server, _list_keys_request(fresh_server, **{"User-Agent": user_agent}),
                                encoding)
        assert status == 200 and "Keys" in body, body
    assert fresh_server.stop() == 0
    recorded = [event["userAgent"] for _, event in iter_events(fresh_server.data_dir)
                if event.get("eventName") == "ListKeys"]
    assert recorded == [user_agent for user_agent, _ in sent]


def test_key_ops_reject_unknown_policy_name(kms) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    assert aws_error(kms.get_key_policy, KeyId=key_id, PolicyName="other")[0] == "NotFoundException"


def _read_answer(sock: socket.socket, *, head_only: bool = False) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0 if head_only else int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                         if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def test_answers_on_one_connection_arrive_whole_one_after_another(server: KeytrailServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(b"GET /_keytrail/health HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = _read_answer(sock)
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["status"] == "ok"
        sock.sendall(b"HEAD /_keytrail/health HTTP/1.1\r\nHost: x\r\n\r\n")  # a head with no body after it
        head, _ = _read_answer(sock, head_only=True)
        assert head.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /_keytrail/health HTTP/1.1\r\nHost: x\r\n\r\n")  # framed right after it
        head, body = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["status"] == "ok"


def test_expect_100_continue_is_answered_before_the_client_sends_its_body(server: KeytrailServer) -> None:
    body = json.dumps({"seconds": 0}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /_keytrail/clock/advance HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        interim, _ = _read_answer(sock, head_only=True)
        assert interim == b"HTTP/1.1 100 Continue"
        sock.sendall(body)
        head, answer = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200") and "now" in json.loads(answer)


def test_a_call_sent_whole_then_half_closed_is_answered(server: KeytrailServer) -> None:
    # `nc -N`, socat: the client closes its sending side once the request is out, and reads the
    # answer; the node carried such a call out (and audited it) but closed without answering.
    body = b'{"KeySpec": "SYMMETRIC_DEFAULT"}'
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=body, headers={
        "X-Amz-Target": "TrentService.CreateKey", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials("AKIAALICE000000000001", "alice-secret"), "kms", "us-east-1").add_auth(request)
    headers = {"Host": f"127.0.0.1:{server.port}", **request.prepare().headers, "Content-Length": str(len(body))}
    head = "POST / HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
        head, _, answer = b"".join(iter(lambda: sock.recv(65536), b"")).partition(b"\r\n\r\n")  # to its close
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer)["KeyMetadata"]["KeySpec"] == "SYMMETRIC_DEFAULT"


def test_a_client_cannot_name_its_own_source_address(tmp_path: Path) -> None:
    """X-Forwarded-For from a direct client is ignored: the audit trail and aws:SourceIp get the
    connection's address. Only proxies named in FORWARDED_ALLOW_IPS may report another."""
    def audited_source(server: KeytrailServer) -> str:
        client = server.client("alice")
        client.meta.events.register("before-sign.kms.*",
                                    lambda request, **_: request.headers.__setitem__("X-Forwarded-For", "203.0.113.9"))
        client.list_keys()
        server.stop()
        command = [sys.executable, "-m", "keytrail", "audit", "events", "--data-dir", str(server.data_dir)]
        events = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
        return str(json.loads(events.splitlines()[-1])["sourceIPAddress"])

    assert audited_source(KeytrailServer(tmp_path / "direct").start()) == "127.0.0.1"
    with mock.patch.dict(os.environ, {"FORWARDED_ALLOW_IPS": "127.0.0.1"}):
        behind_a_proxy = KeytrailServer(tmp_path / "proxied").start()
    assert audited_source(behind_a_proxy) == "203.0.113.9"


def test_slow_clients_holding_every_connection_the_node_takes_make_way_for_calls(tmp_path: Path) -> None:
    # Each connection is a file descriptor, so the node holds at most its open files limit less
    # 256 (300: 44 connections). Slow clients (slowloris: a request head begun and never ended) held
    # all 44 for their 60 s and every SDK call was refused, its connection closed at once; the one
    # waiting longest for its request now makes way for each newcomer.
    server = KeytrailServer(tmp_path / "data", open_files=300).start()
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(44)]
    try:
        for connection in held:
            connection.sendall(b"GET / HTTP/1.1\r\n")
        kms = server.client()  # its call takes a place, and its connection keeps it (keep-alive)
        assert kms.describe_key(KeyId=kms.create_key()["KeyMetadata"]["KeyId"])["KeyMetadata"]["Enabled"]
        made_way = _refused_connections(server.get("/metrics")[1].decode())["connection_limit"]
        assert made_way in (2, 3), made_way  # for boto3's connection (two, if it opened another) and the scrape's
        for connection in held[:made_way]:  # the slow ones that waited longest, each answered and closed
            head, _, body = b"".join(iter(lambda c=connection: c.recv(65536), b"")).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 ") and json.loads(body)["__type"] == "ThrottlingException"
    finally:
        for connection in held:
            connection.close()
        assert server.stop() == 0
    assert "closing the connections that wait longest for a request to make room: 44 are open" in server.log.read_text()


def _refused_connections(metrics: str) -> dict[str, int]:
    """keytrail_http_refused_connections_total by reason, from a /metrics page."""
    return _counted(metrics, "keytrail_http_refused_connections_total")


def test_tls_connections_refused_are_counted_in_metrics(tmp_path: Path) -> None:
    # A failed handshake closed its connection without a word in the log or /metrics.
    server = KeytrailServer(tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(server.data_dir),
                             "--port", str(server.port), "--principals", str(server.principals),
                             "--tls-self-signed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE

    def scrape() -> dict[str, int]:
        with urllib.request.urlopen(f"https://127.0.0.1:{server.port}/metrics", context=context, timeout=10) as page:
            return _refused_connections(page.read().decode())

    try:
        _wait_until_served_over_tls(server.port)
        before = scrape()  # the waits for the node's start may have left failed handshakes
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
            plain.sendall(b"GET /_keytrail/health HTTP/1.1\r\nhost: localhost\r\n\r\n")
            assert plain.recv(12) == b"HTTP/1.1 400"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as broken:
            broken.sendall(b"\x16\x03\x01\x00\x04junk")  # a record no TLS server can read as a ClientHello
            with contextlib.suppress(ConnectionResetError):
                while broken.recv(100):  # a TLS alert, maybe: read until the server closes
                    pass
        deadline = time.monotonic() + 10
        while (after := scrape())["tls_handshake_failed"] == before["tls_handshake_failed"]:
            assert time.monotonic() < deadline, after
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(20)
    assert set(after) == {"connection_limit", "tls_handshake_failed", "tls_handshake_timeout", "plain_http_on_tls"}
    assert {reason: after[reason] - before[reason] for reason in after} == {
        "connection_limit": 0, "tls_handshake_failed": 1, "tls_handshake_timeout": 0, "plain_http_on_tls": 1}


def test_requests_the_http_stack_refuses_itself_are_counted_in_metrics(fresh_server: KeytrailServer) -> None:
    # A 400, 431 or 413 answered before the KMS app saw the request left no audit record and no
    # count: a client sending broken or oversized requests was invisible to the operator.
    sent = {
        b"400": b"\x00\x01\xff\r\n\r\n",  # not HTTP
        b"431": b"POST / HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * 70_000 + b"\r\n\r\n",
        b"413": b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: TrentService.ListKeys\r\n"
                b"Content-Length: 100000000\r\n\r\n{",
    }
    for status, request in sent.items():
        with socket.create_connection(("127.0.0.1", fresh_server.port), timeout=10) as sock:
            sock.sendall(request)
            assert sock.recv(12) == b"HTTP/1.1 " + status
    fresh_server.client().list_keys()  # served: not counted
    refused = _counted(fresh_server.get("/metrics")[1].decode(), "keytrail_http_refused_requests_total")
    assert refused == {"request_timeout": 0, "headers_too_large": 1, "malformed_http": 1, "body_too_large": 1,
                       "protocol_upgrade": 0, "large_bodies_throttled": 0}


def test_a_trailer_streamed_after_a_chunked_body_is_refused_431_not_held(fresh_server: KeytrailServer) -> None:
    # httptools joins a trailer field from every read it spans and nothing counted it: one field
    # of 64 MB (the most read of a refused body) took ~95 MB of the node and 3 s of its loop, 8 such
    # unauthenticated connections 490 MB and a 24 s wait for /_keytrail/health; a signed call's ran
    # on until its 60 s deadline. Past 64 KiB, as a head, the answer is 431 and the connection closes.
    body = b"{}"
    request = AWSRequest(method="POST", url=fresh_server.endpoint + "/", data=body, headers={
        "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials("AKIAALICE000000000001", "alice-secret"), "kms", "us-east-1").add_auth(request)
    headers = {"Host": f"127.0.0.1:{fresh_server.port}", **request.prepare().headers, "Transfer-Encoding": "chunked"}
    headers.pop("Content-Length", None)
    head = "POST / HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    answer = b""
    with socket.create_connection(("127.0.0.1", fresh_server.port), timeout=10) as sock:
        with contextlib.suppress(ConnectionError):  # refused while it sends: the answer is read below
            sock.sendall(head.encode() + b"2\r\n{}\r\n0\r\nX-Trailer: ")
            for _ in range(64):
                sock.sendall(b"a" * 16384)
            sock.sendall(b"\r\n\r\n")  # 1 MiB of trailer, whole: served 200 before
        with contextlib.suppress(ConnectionError):
            while data := sock.recv(65536):
                answer += data
    assert answer.startswith(b"HTTP/1.1 431 ") and b"RequestHeaderFieldsTooLarge" in answer, answer[:200]
    refused = _counted(fresh_server.get("/metrics")[1].decode(), "keytrail_http_refused_requests_total")
    assert refused["headers_too_large"] == 1
    assert fresh_server.stop() == 0
    assert list(iter_events(fresh_server.data_dir)) == []  # refused before its signature was checked
    assert "Traceback" not in fresh_server.log.read_text()


@pytest.mark.parametrize(("framing", "status"), [
    ({"Transfer-Encoding": "gzip, chunked"}, b"501"),  # a coding keytrail does not read
    ({"Transfer-Encoding": "chunked", "Expect": "200-ok"}, b"417"),  # an expectation it cannot meet
], ids=["gzip-chunked", "expect"])
def test_a_signed_call_keytrail_cannot_read_as_framed_is_refused_and_never_carried_out(
        fresh_server: KeytrailServer, framing: dict[str, str], status: bytes) -> None:
    """RFC 9112 §6.1, RFC 9110 §10.1.1: the coding, or the expectation, was ignored, so a signed
    CreateKey sent with its body still coded, or waiting on an expectation, was carried out and
    audited. Now it is refused before the app runs: no key, no audit record, counted."""
    request = AWSRequest(method="POST", url=fresh_server.endpoint + "/", data=b"{}", headers={
        "X-Amz-Target": "TrentService.CreateKey", "Content-Type": "application/x-amz-json-1.1", **framing})
    SigV4Auth(Credentials("AKIAALICE000000000001", "alice-secret"), "kms", "us-east-1").add_auth(request)
    headers = {"Host": f"127.0.0.1:{fresh_server.port}", **request.prepare().headers}
    headers.pop("Content-Length", None)
    head = "POST / HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    answer = b""
    with socket.create_connection(("127.0.0.1", fresh_server.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"2\r\n{}\r\n0\r\n\r\n")
        while data := sock.recv(65536):  # the connection closes after the answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 " + status + b" ") and b"connection: close" in answer, answer
    assert fresh_server.client().list_keys()["Keys"] == []
    refused = _counted(fresh_server.get("/metrics")[1].decode(), "keytrail_http_refused_requests_total")
    assert refused["malformed_http"] == 1
    assert fresh_server.stop() == 0
    assert [event["eventName"] for _, event in iter_events(fresh_server.data_dir)] == ["ListKeys"]
    assert "Traceback" not in fresh_server.log.read_text()


def _counted(metrics: str, family: str) -> dict[str, int]:
    """A counter family with one label, `reason`, from a /metrics page."""
    prefix = family + '{reason="'
    return {line[len(prefix):].split('"')[0]: int(float(line.rsplit(" ", 1)[1]))
            for line in metrics.splitlines() if line.startswith(prefix)}


def test_an_endpoint_url_with_a_path_gets_an_aws_error_naming_where_calls_go(server: KeytrailServer) -> None:
    """AWS_ENDPOINT_URL_KMS=http://host:port/kms sends calls to POST /kms: the answer was a bare
    404 "Not Found" with no request id (the CLI printed "An error occurred (404)")."""
    import boto3
    from botocore.config import Config

    from tests.support.server import PRINCIPALS

    _, key, secret, _, _ = PRINCIPALS["alice"]
    kms = boto3.client("kms", endpoint_url=server.endpoint + "/kms", region_name="us-east-1",
                       aws_access_key_id=key, aws_secret_access_key=secret,
                       config=Config(retries={"total_max_attempts": 1}))
    with pytest.raises(ClientError) as info:
        kms.list_keys()
    error = info.value.response
    assert (error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"]) == ("UnknownOperationException", 404)
    assert error["Error"]["Message"] == ("POST /kms is no keytrail endpoint: KMS calls are POST / (an endpoint URL "
                                         "without a path)")
    assert error["ResponseMetadata"]["RequestId"]
