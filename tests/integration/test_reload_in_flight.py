"""A reload of the principals file (SIGHUP) applies to a request whose headers arrived before it and
whose body after it, as to any request after it (docs/principals.md): the access key is checked
when the headers arrive, so that nobody's body is held, and again once the body is in if the file
was reloaded meanwhile."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from keytrail.audit.cloudtrail_files import iter_events
from tests.support.errors import aws_error
from tests.support.server import PRINCIPALS, KeytrailServer, PrincipalEntry, write_principals

_BODY = b"{}"
_DENY_LIST_KEYS = ('{"Version": "2012-10-17", "Statement": '
                   '[{"Effect": "Deny", "Action": "kms:ListKeys", "Resource": "*"}]}')


def _alice_with(*, key: str | None = None, secret: str | None = None,
                more_policies: tuple[str, ...] = ()) -> dict[str, PrincipalEntry]:
    """The test principals with alice's entry changed: another access key id, secret or more policies."""
    arn, old_key, old_secret, policies, session = PRINCIPALS["alice"]
    alice = (arn, key or old_key, secret or old_secret, [*policies, *more_policies], session)
    return {**PRINCIPALS, "alice": alice}


def _hold_list_keys(server: KeytrailServer) -> socket.socket:
    """A connection carrying alice's ListKeys, signed with her secret of now, its headers sent and
    checked, its body not sent yet."""
    _, key, secret, _, _ = PRINCIPALS["alice"]
    request = AWSRequest(method="POST", url=server.endpoint + "/", data=_BODY, headers={
        "X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(key, secret), "kms", "us-east-1").add_auth(request)
    headers = {"Host": f"127.0.0.1:{server.port}", **request.prepare().headers, "Content-Length": str(len(_BODY))}
    head = "POST / HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(head.encode())
    time.sleep(0.5)  # the server checks the headers as they arrive, and waits for the body
    return sock


def _finish(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Send the held request's body; the status and JSON body answered."""
    with sock:
        sock.sendall(_BODY)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += sock.recv(65536)
    return int(head.split(b" ")[1]), json.loads(body)


def _reload(server: KeytrailServer, principals: dict[str, PrincipalEntry], who: str, refused_as: str) -> None:
    """Write `principals` and SIGHUP the server; return once a fresh call by `who` (signed with the
    secret of before) is refused as `refused_as`, the reload then done."""
    write_principals(server.principals, principals)
    client = server.client(who)

    def fresh_call_refused() -> None:
        assert aws_error(client.list_keys)[0] == refused_as

    server.after_sighup(fresh_call_refused)


def _list_keys_events(server: KeytrailServer) -> list[dict[str, Any]]:
    server.stop()
    return [event for _, event in iter_events(server.data_dir) if event.get("eventName") == "ListKeys"]


@pytest.mark.parametrize(("principals", "code", "status"), [
    pytest.param(_alice_with(key="AKIAALICEGONE0000001"), "UnrecognizedClientException", 400, id="key-removed"),
    pytest.param(_alice_with(secret="alice-secret-new"), "InvalidSignatureException", 400, id="secret-changed"),
    pytest.param(_alice_with(more_policies=(_DENY_LIST_KEYS,)), "AccessDeniedException", 400, id="deny-added"),
])
def test_a_request_whose_body_arrives_after_a_reload_is_refused_as_a_fresh_one(
        fresh_server: KeytrailServer, principals: dict[str, PrincipalEntry], code: str, status: int) -> None:
    held = _hold_list_keys(fresh_server)
    _reload(fresh_server, principals, "alice", code)
    answer_status, answer = _finish(held)
    assert (answer_status, answer.get("__type")) == (status, code), answer


def test_a_request_of_a_key_removed_while_its_body_arrives_is_not_audited(fresh_server: KeytrailServer) -> None:
    """Refused as an unknown access key is (no caller to record), not a ListKeys by alice."""
    held = _hold_list_keys(fresh_server)
    _reload(fresh_server, _alice_with(key="AKIAALICEGONE0000001"), "alice", "UnrecognizedClientException")
    answer = _finish(held)[1]
    assert answer.get("__type") == "UnrecognizedClientException", answer
    assert _list_keys_events(fresh_server) == []


def test_a_request_denied_by_a_policy_added_while_its_body_arrives_is_audited_as_denied(
        fresh_server: KeytrailServer) -> None:
    held = _hold_list_keys(fresh_server)
    _reload(fresh_server, _alice_with(more_policies=(_DENY_LIST_KEYS,)), "alice", "AccessDeniedException")
    answer = _finish(held)[1]
    assert answer.get("__type") == "AccessDeniedException", answer
    events = _list_keys_events(fresh_server)
    assert [event.get("errorCode") for event in events if event["userIdentity"].get("userName") == "alice"] == [
        "AccessDenied", "AccessDenied"]  # the fresh call's, then the held one's (CloudTrail's code for it)


def test_a_request_whose_key_a_reload_leaves_as_it_was_is_served(fresh_server: KeytrailServer) -> None:
    held = _hold_list_keys(fresh_server)
    without_carol = {name: entry for name, entry in PRINCIPALS.items() if name != "carol"}
    _reload(fresh_server, without_carol, "carol", "UnrecognizedClientException")
    status, answer = _finish(held)
    assert status == 200 and "Keys" in answer, answer
