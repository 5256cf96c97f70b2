"""Kafka over TLS, mutual TLS and SASL ($KEYTRAIL_KAFKA_*, docs/operations.md "Kafka security"),
against the real broker: tansu behind a TLS listener (tests/support/kafka_tls.py), and tansu
requiring SASL SCRAM (whose memory storage keeps no user: every login is refused). Every Kafka
client keytrail made connected in clear text with no authentication."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from keytrail.transport.kafka_security import kafka_client_options
from tests.support.kafka_tls import Authority, tls_kafka_broker
from tests.support.processes import child_commands
from tests.support.server import KeytrailServer
from tests.support.services import free_port, kafka_broker, topic_values
from tests.support.waits import eventually_blocking

SASL_PASSWORD = "kafka-pw-7c1e"  # must never reach a log line or an error
_SASL = {"KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KEYTRAIL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
         "KEYTRAIL_KAFKA_SASL_USERNAME": "keytrail", "KEYTRAIL_KAFKA_SASL_PASSWORD": SASL_PASSWORD}


@pytest.fixture
def sasl_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """keytrail's Kafka clients set to log in with SCRAM (`_SASL`), in this test's environment."""
    for name, value in _SASL.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.make(tmp_path_factory.mktemp("kafka-tls"))


def _tls_env(monkeypatch: pytest.MonkeyPatch, authority: Authority, *, client_certificate: bool) -> None:
    monkeypatch.setenv("KEYTRAIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KEYTRAIL_KAFKA_CA_FILE", str(authority.ca))
    if client_certificate:
        monkeypatch.setenv("KEYTRAIL_KAFKA_CERT_FILE", str(authority.client_cert))
        monkeypatch.setenv("KEYTRAIL_KAFKA_KEY_FILE", str(authority.client_key))


def _alarms(data_dir: Path) -> list[dict[str, object]]:
    path = data_dir / "alarms.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def detect_proc() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_serve_ships_over_tls_and_detect_and_consume_read_it_back_and_detect_publishes_over_tls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authority: Authority, mutual: bool,
        detect_proc: list[subprocess.Popen[bytes]]) -> None:
    _tls_env(monkeypatch, authority, client_certificate=mutual)
    with tls_kafka_broker(authority, client_certificates=mutual) as broker:
        server = KeytrailServer(tmp_path / "data", "--kafka", broker.bootstrap, "--no-detector").start()
        try:
            alice = server.client("alice")
            key = alice.create_key()["KeyMetadata"]["Arn"]
            blob = alice.encrypt(KeyId=key, Plaintext=b"secret")["CiphertextBlob"]
            with pytest.raises(ClientError, match="AccessDenied"):  # bob has no grant: unauthorized-decrypt
                server.client("bob").decrypt(CiphertextBlob=blob)
        finally:
            assert server.stop() == 0  # the spool shipped first
        detect_proc.append(subprocess.Popen(
            [sys.executable, "-m", "keytrail", "detect", "--kafka", broker.bootstrap, "--data-dir",
             str(tmp_path / "detect"), "--tick-every", "0.5"]))
        eventually_blocking(lambda: any(a["rule"] == "unauthorized-decrypt" for a in _alarms(tmp_path / "detect")),
                            what="detect's unauthorized-decrypt alarm, read over TLS", timeout=60)
        published = asyncio.run(topic_values(broker.bootstrap, "keytrail.alarms.v1", **kafka_client_options()))
        assert published, "detect published no alarm to keytrail.alarms.v1 over TLS"
        consumed = subprocess.run([sys.executable, "-m", "keytrail", "consume", "--kafka", broker.bootstrap,
                                   "--data-dir", str(tmp_path / "metrics"), "--exit-when-idle", "3"],
                                  capture_output=True, text=True, timeout=120)
        # The broker gone without a word, as a host down leaves it: detect's TLS connections closed
        # waiting for its close_notify, asyncio's 30 s, at each of its two clients (past Docker's 10 s
        # stop grace); the wait's bound is the hang guard, the stop takes a few seconds.
        broker.go_silent()
        [detect] = detect_proc
        detect.terminate()
        assert detect.wait(20) == 0
    assert consumed.returncode == 0, consumed.stderr
    assert "consumed 3 records: 3 counted" in consumed.stderr, consumed.stderr  # CreateKey, Encrypt, Decrypt
    assert "Traceback" not in server.log.read_text()


def _detect_once(bootstrap: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", "detect", "--kafka", bootstrap, "--data-dir",
                           str(data_dir)], capture_output=True, text=True, timeout=120)


def test_a_broker_certificate_from_another_ca_is_one_line_and_exit_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authority: Authority) -> None:
    other = Authority.make(tmp_path / "other")
    monkeypatch.setenv("KEYTRAIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KEYTRAIL_KAFKA_CA_FILE", str(other.ca))
    with tls_kafka_broker(authority) as broker:
        done = _detect_once(broker.bootstrap, tmp_path / "d")
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"keytrail detect: --kafka {broker.bootstrap}: the broker's TLS certificate did not "
                           "verify (certificate signature failure)"), line  # both CAs have one name
    assert line.endswith("is $KEYTRAIL_KAFKA_CA_FILE the CA that signed it?"), line


def test_a_listener_that_wants_a_client_certificate_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authority: Authority) -> None:
    _tls_env(monkeypatch, authority, client_certificate=False)
    with tls_kafka_broker(authority, client_certificates=True) as broker:
        done = _detect_once(broker.bootstrap, tmp_path / "d")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert "$KEYTRAIL_KAFKA_CERT_FILE" in done.stderr, done.stderr


def test_plain_text_to_a_tls_listener_is_one_line_naming_the_setting(tmp_path: Path, authority: Authority) -> None:
    with tls_kafka_broker(authority) as broker:
        done = _detect_once(broker.bootstrap, tmp_path / "d")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"keytrail detect: --kafka {broker.bootstrap}: the broker hung up as keytrail connected over PLAINTEXT: "
        "a listener that wants TLS or SASL does; set $KEYTRAIL_KAFKA_SECURITY_PROTOCOL"]


@pytest.mark.parametrize("command", ["detect", "consume"])
def test_tls_to_a_plain_listener_is_one_line_at_start_not_a_wait_for_the_request_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authority: Authority, command: str) -> None:
    # The plain listener reads the TLS hello as the start of a huge request and waits: detect and
    # consume waited aiokafka's 40 s request timeout before saying so. Now they check at start (5 s a
    # broker); the subprocess timeout guards the hang.
    _tls_env(monkeypatch, authority, client_certificate=False)
    with kafka_broker() as bootstrap:
        done = subprocess.run([sys.executable, "-m", "keytrail", command, "--kafka", bootstrap, "--data-dir",
                               str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"keytrail {command}: --kafka {bootstrap}: the broker did not answer keytrail's TLS hello in time: is it a "
        "TLS listener (if not, set $KEYTRAIL_KAFKA_SECURITY_PROTOCOL to PLAINTEXT or SASL_PLAINTEXT), and is it "
        "running?"]


def test_serve_on_a_listener_silent_to_tls_starts_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authority: Authority) -> None:
    # Silent to TLS is what a plain listener is, and what a TLS broker too slow to answer would be: a
    # node that refused to start then would serve nothing while Kafka struggles, where its audit log
    # keeps the records until Kafka is back. So serve starts, and its log says what it found.
    _tls_env(monkeypatch, authority, client_certificate=False)
    with kafka_broker() as bootstrap:
        server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap, "--no-detector").start()
        try:
            assert server.client().list_keys()["Keys"] == []
        finally:
            server.stop()
    assert (f"--kafka {bootstrap}: the broker did not answer keytrail's TLS hello in time: is it a TLS listener"
            in server.log.read_text())


def test_credentials_the_broker_refuses_are_one_line_without_the_password(
        tmp_path: Path, sasl_environment: None) -> None:
    # aiokafka failed with KeyError 'v' on tansu's SCRAM refusal: a traceback.
    with kafka_broker(authentication=True) as bootstrap:
        done = _detect_once(bootstrap, tmp_path / "d")
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"keytrail detect: --kafka {bootstrap}: the broker refused keytrail's SASL credentials (SCRAM-SHA-512 as "
        "'keytrail'): check $KEYTRAIL_KAFKA_SASL_USERNAME and the password"]


def test_serve_refuses_to_start_on_a_broker_refusing_its_credentials_in_one_line_without_the_password(
        tmp_path: Path, sasl_environment: None) -> None:
    with kafka_broker(authentication=True) as bootstrap:
        done = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "d"),
                               "--port", str(free_port()), "--kafka", bootstrap], capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"keytrail serve: --kafka {bootstrap}: the broker refused keytrail's SASL credentials (SCRAM-SHA-512 as "
        "'keytrail'): check $KEYTRAIL_KAFKA_SASL_USERNAME and the password"]


def test_a_broker_refusing_serve_after_its_start_pauses_shipping_and_says_why_without_the_password(
        tmp_path: Path, sasl_environment: None) -> None:
    # Out of reach at start (serve starts, as on a broker down), then up, refusing the credentials.
    port = free_port()
    server = KeytrailServer(tmp_path / "data", "--kafka", f"127.0.0.1:{port}", "--no-detector").start()
    try:
        server.client("alice").create_key()  # answered: the spool holds it until Kafka takes it
        with kafka_broker(port, authentication=True):
            eventually_blocking(lambda: "refused keytrail's SASL credentials" in server.log.read_text(),
                                what="the shipper's line saying the broker refused it", timeout=60)
    finally:
        server.stop()
    log = server.log.read_text()
    assert (f"audit shipping to 127.0.0.1:{port} paused for" in log
            and ": the broker refused keytrail's SASL credentials (SCRAM-SHA-512 as 'keytrail')" in log), log
    assert SASL_PASSWORD not in log and "Traceback" not in log


def _children_environments(pid: int) -> dict[str, list[bytes]] | None:
    """serve's children by role (their module, or the sidecar's role) and their environment, once all four run."""
    found = {}
    for child, args in child_commands(pid).items():
        role = args[3] if len(args) > 3 and args[2] == b"keytrail.cli.sidecar" else args[2]
        try:
            found[role.decode()] = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            return None  # exited meanwhile (a restart): look again
    return found if len(found) == 4 else None


def test_only_the_children_that_build_kafka_clients_are_given_the_sasl_password(
        tmp_path: Path, sasl_environment: None) -> None:
    # Every child inherited it, the fsync helper and the consumer (which reads the node's event log)
    # too: a child is dumpable, its environment readable in /proc by the user's every process.
    server = KeytrailServer(tmp_path / "data", "--kafka", f"127.0.0.1:{free_port()}",  # out of reach: starts
                            dev_clock=False).start()  # with --dev-clock the consumer and detector run in serve
    try:
        assert server.proc is not None
        pid = server.proc.pid
        found: dict[str, list[bytes]] = {}
        eventually_blocking(lambda: found.update(_children_environments(pid) or {}) or found,
                            what="serve's four children", timeout=60)
    finally:
        assert server.stop() == 0
    given = {role: f"KEYTRAIL_KAFKA_SASL_PASSWORD={SASL_PASSWORD}".encode() in environment
             for role, environment in found.items()}
    assert given == {"keytrail.audit.syncer": False, "consumer": False, "keytrail.audit.shipping": True,
                     "detector": True}


@pytest.mark.parametrize(("env", "said"), [
    ({"KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "TLS"},
     "$KEYTRAIL_KAFKA_SECURITY_PROTOCOL: 'TLS' is none of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({"KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "SSL", "KEYTRAIL_KAFKA_CA_FILE": "/nonexistent/ca.pem"},
     "$KEYTRAIL_KAFKA_CA_FILE /nonexistent/ca.pem: no such file"),
    ({**_SASL, "KEYTRAIL_KAFKA_SASL_PASSWORD": ""},
     "neither $KEYTRAIL_KAFKA_SASL_PASSWORD_FILE nor $KEYTRAIL_KAFKA_SASL_PASSWORD is set: SCRAM-SHA-512 needs a "
     "password"),
])
def test_serve_refuses_kafka_security_settings_that_cannot_work_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], said: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    done = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "d"), "--port",
                           str(free_port()), "--kafka", "127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"keytrail serve: {said}"]
    assert not (tmp_path / "d").exists()  # refused before anything is written
