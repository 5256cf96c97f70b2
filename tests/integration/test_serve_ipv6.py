"""keytrail serve on IPv6 (--host ::1), called by boto3 at http://[::1]:PORT, behind a proxy that
reports its callers in X-Forwarded-For."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import pytest

from tests.support.errors import aws_error
from tests.support.postgres import ADMIN_DSN, fetch, scratch_database
from tests.support.server import ACCOUNT, KeytrailServer
from tests.support.services import TcpRelay, free_port, kafka_broker, topic_values, wait_for_port

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


def test_serve_and_a_metrics_endpoint_listen_on_an_ipv6_address_in_brackets(tmp_path: Path) -> None:
    # `--host [::1]`, as the URL serve prints writes it: "cannot listen on [[::1]]:PORT (Name or
    # service not known)", and so did `consume --metrics-host [::1]`.
    server = KeytrailServer(tmp_path / "data")
    args = [sys.executable, "-m", "keytrail", "serve", "--data-dir", str(server.data_dir), "--host", "[::1]",
            "--port", str(server.port), "--no-detector"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        exports = dict(item.split("=", 1) for item in _line_starting(proc.stdout, "export ").split()[1:])
        assert exports["AWS_ENDPOINT_URL_KMS"] == f"http://[::1]:{server.port}"
        assert _line_starting(proc.stdout, "keytrail serve: listening on ").startswith(
            f"keytrail serve: listening on http://[::1]:{server.port}, ")
        kms = boto3.client("kms", endpoint_url=exports["AWS_ENDPOINT_URL_KMS"], region_name=exports["AWS_REGION"],
                           aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"])
        assert kms.create_key()["KeyMetadata"]["Enabled"]
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    port = free_port()
    consume = subprocess.Popen([sys.executable, "-m", "keytrail", "consume", "--data-dir", str(server.data_dir),
                                "--follow", "--metrics-host", "[::1]", "--metrics-port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, host="::1")
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=10) as response:
            assert response.status == 200
    finally:
        consume.terminate()
        _, errors = consume.communicate(timeout=30)
    assert "cannot listen" not in errors, errors


def _line_starting(stream: Any, prefix: str) -> str:
    """The first line of `stream` beginning with `prefix` (the lines before it read and dropped)."""
    for line in stream:
        if line.startswith(prefix):
            return str(line)
    raise AssertionError(f"no line starting {prefix!r}")


def test_a_key_store_reached_over_ipv6_names_the_node_by_a_bracketed_address(tmp_path: Path) -> None:
    # --store postgresql://…@[::1]:PORT/… works; the sessions' application_name said
    # "keytrail serve ::1:PORT", an address and port no one could tell apart.
    relay = TcpRelay(5432, host="::1").restore()
    with scratch_database() as database:
        url = f"postgresql://postgres@[::1]:{relay.port}/{database}"
        server = KeytrailServer(tmp_path / "data", "--store", url, dev_clock=False, host="::1").start()
        try:
            assert server.client("alice").create_key()["KeyMetadata"]["Enabled"]
            names = asyncio.run(fetch(ADMIN_DSN, "SELECT application_name FROM pg_stat_activity WHERE datname = $1",
                                      database))
            assert {row[0] for row in names} == {f"keytrail serve [::1]:{server.port}"}
        finally:
            assert server.stop() == 0
            relay.cut()


@pytest.mark.parametrize("host", ["0:0:0:0:0:0:0:0", "0:0:0:0:0:0:0:1", "[0::1]"])
def test_an_ipv6_host_written_long_is_served_as_written_short(tmp_path: Path, host: str) -> None:
    # --host 0:0:0:0:0:0:0:0 is ::, yet serve printed AWS_ENDPOINT_URL_KMS=https://[0:0:0:0:0:0:0:0]:PORT
    # (which only Linux connects to) and made its dev certificate for that address, where :: prints
    # https://[::1]:PORT with a certificate for ::1.
    server = KeytrailServer(tmp_path / "data")
    args = [sys.executable, "-m", "keytrail", "serve", "--data-dir", str(server.data_dir), "--host", host,
            "--port", str(server.port), "--no-detector", "--tls-self-signed"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        certificate = _line_starting(proc.stdout, "Created the dev certificate ")
        assert certificate.endswith(" (localhost, 127.0.0.1, ::1). To use it:\n"), certificate
        exports = dict(item.split("=", 1) for item in _line_starting(proc.stdout, "export ").split()[1:])
        assert exports["AWS_ENDPOINT_URL_KMS"] == f"https://[::1]:{server.port}"
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_the_audit_stream_ships_to_a_kafka_bootstrap_on_ipv6(tmp_path: Path) -> None:
    # tansu names itself `[::1]` (brackets and all) in its metadata when it advertises an IPv6
    # listener, which no Kafka client resolves: the broker is reached at [::1] for the bootstrap
    # and advertises 127.0.0.1, as a dual-stack cluster may.
    with kafka_broker() as bootstrap:
        relay = TcpRelay(int(bootstrap.rpartition(":")[2]), host="::1").restore()
        server = KeytrailServer(tmp_path / "data", "--kafka", f"[::1]:{relay.port}", host="::1").start()
        try:
            key = server.client("alice").create_key()["KeyMetadata"]["KeyId"]
        finally:
            assert server.stop() == 0
            relay.cut()
        values = asyncio.run(topic_values(bootstrap, "keytrail.audit.v1"))
    assert any(key.encode() in value for value in values)
    assert "audit shipping" not in server.log.read_text()  # never paused
