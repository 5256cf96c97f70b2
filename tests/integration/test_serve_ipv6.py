"""keytrail serve on IPv6 (--host ::1), called by boto3 at http://[::1]:PORT, behind a proxy that
reports its callers in X-Forwarded-For."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.support.errors import aws_error
from tests.support.server import ACCOUNT, KeytrailServer

pytestmark = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")

# The caller's addresses a key policy denies Encrypt from: an IPv4 range and an IPv6 one.
_DENIED_FROM = ["203.0.113.0/24", "2001:db8::/32"]


def _policy() -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"IpAddress": {"aws:SourceIp": _DENIED_FROM}}},
    ]})


def _proxied(server: KeytrailServer, forwarded_for: str) -> Any:
    """A client whose requests come as through a proxy reporting `forwarded_for` as the caller."""
    client = server.client("alice")
    client.meta.events.register(
        "before-sign.kms.*", lambda request, **_: request.headers.__setitem__("X-Forwarded-For", forwarded_for))
    return client


def _audited_sources(server: KeytrailServer) -> list[tuple[str, str | None]]:
    """(sourceIPAddress, errorCode) of each Encrypt in the server's audit trail, oldest first."""
    command = [sys.executable, "-m", "keytrail", "audit", "events", "--data-dir", str(server.data_dir)]
    lines = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    records = [json.loads(line) for line in lines]
    return [(r["sourceIPAddress"], r.get("errorCode")) for r in records if r["eventName"] == "Encrypt"]


@pytest.fixture
def proxied_server(tmp_path: Path) -> Any:
    """A node on ::1 that trusts the proxy on ::1 to report its callers' addresses."""
    with mock.patch.dict(os.environ, {"FORWARDED_ALLOW_IPS": "::1"}):
        server = KeytrailServer(tmp_path / "data", host="::1").start()
    yield server
    if server.proc is not None:
        assert server.stop() == 0


def test_an_ipv4_caller_a_dual_stack_proxy_reports_mapped_is_the_ipv4_address(proxied_server: KeytrailServer) -> None:
    # A proxy on a dual-stack socket reports an IPv4 caller as ::ffff:203.0.113.9: the Deny on
    # 203.0.113.0/24 missed it (the Encrypt succeeded) and the trail named it ::ffff:203.0.113.9.
    key = proxied_server.client("alice").create_key(Policy=_policy())["KeyMetadata"]["KeyId"]
    mapped = _proxied(proxied_server, "::ffff:203.0.113.9")
    code, _, status = aws_error(mapped.encrypt, KeyId=key, Plaintext=b"payroll")
    assert (code, status) == ("AccessDeniedException", 400)
    assert _proxied(proxied_server, "198.51.100.7").encrypt(KeyId=key, Plaintext=b"payroll")["KeyId"]
    assert proxied_server.stop() == 0
    assert _audited_sources(proxied_server) == [("203.0.113.9", "AccessDenied"), ("198.51.100.7", None)]


def test_an_ipv6_caller_is_recorded_in_one_spelling(proxied_server: KeytrailServer) -> None:
    # 2001:DB8:0:0::9 and 2001:db8::9 are one caller: the trail wrote each as the proxy did, so
    # the detector's and a reader's grouping by sourceIPAddress told them apart.
    key = proxied_server.client("alice").create_key()["KeyMetadata"]["KeyId"]
    for spelling in ("2001:DB8:0:0::9", "2001:db8::9", "2001:0db8:0000:0000:0000:0000:0000:0009"):
        _proxied(proxied_server, spelling).encrypt(KeyId=key, Plaintext=b"x")
    assert proxied_server.stop() == 0
    assert _audited_sources(proxied_server) == [("2001:db8::9", None)] * 3


def test_a_direct_ipv6_caller_is_recorded_and_judged_by_its_address(tmp_path: Path) -> None:
    server = KeytrailServer(tmp_path / "data", host="::1").start()
    try:
        kms = server.client("alice")
        assert server.endpoint == f"http://[::1]:{server.port}"
        ipv6_only = json.loads(_policy().replace("203.0.113.0/24", "::1/128"))
        key = kms.create_key(Policy=json.dumps(ipv6_only))["KeyMetadata"]["KeyId"]
        code, _, _ = aws_error(kms.encrypt, KeyId=key, Plaintext=b"x")
        assert code == "AccessDeniedException"
    finally:
        assert server.stop() == 0
    assert _audited_sources(server) == [("::1", "AccessDenied")]
