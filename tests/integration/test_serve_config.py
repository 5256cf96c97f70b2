"""`serve --config`: the detector (in process under the dev clock, else serve's child) takes its
rules and webhooks from a settings file."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keytrail.cli.tls import self_signed_certificate
from tests.support.errors import aws_error
from tests.support.server import KeytrailServer
from tests.support.services import free_port


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, Any], str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((json.loads(body), self.headers.get("X-Keytrail-Signature", ""), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.mark.parametrize("dev_clock", [True, False], ids=["detector-in-process", "detector-child"])
def test_serve_delivers_alarms_to_a_configured_webhook(tmp_path: Path, dev_clock: bool) -> None:
    _Receiver.received = []
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    config = tmp_path / "keytrail.toml"
    config.write_text(
        "[rules.unauthorized-decrypt]\nseverity = \"HIGH\"\n\n"
        f'[[hooks.webhook]]\nurl = "http://127.0.0.1:{receiver.server_port}/alarms"\nsecret = "s3"\n'
    )
    server = KeytrailServer(tmp_path / "data", "--config", str(config), dev_clock=dev_clock).start()
    try:
        blob = server.client("alice").encrypt(
            KeyId=server.client("alice").create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"]
        assert aws_error(server.client("bob").decrypt, CiphertextBlob=blob)[0] == "AccessDeniedException"
        deadline = time.monotonic() + 30
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.stop()
        receiver.shutdown()
    alarm, signature, body = _Receiver.received[0]
    assert alarm["rule"] == "unauthorized-decrypt" and alarm["principalArn"].endswith(":user/bob")
    # HIGH from the settings file, one level up for a principal never seen on the key (default: MEDIUM → HIGH)
    assert alarm["severity"] == "CRITICAL"
    assert signature == "sha256=" + hmac.new(b"s3", body, hashlib.sha256).hexdigest()


def test_serve_refuses_a_broken_config_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[rules.no-such-rule]\nx = 1\n")
    out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "d"),
                          "--port", "0", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "--config" in out.stderr


def test_serve_refuses_a_missing_tls_file_in_one_line_before_creating_anything(tmp_path: Path) -> None:
    data = tmp_path / "d"
    key = tmp_path / "key.pem"
    key.write_text("not used")
    out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0",
                          "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"keytrail serve: --tls-cert: no such file: {tmp_path / 'missing.pem'}\n"
    assert not (data / "principals.toml").exists()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--kafka", "kafka:abc", "--kafka: not HOST:PORT"),
    ("--port", "99999", "Invalid value for '--port'"),
])
def test_serve_refuses_a_bad_address_before_starting(tmp_path: Path, flag: str, value: str, message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "d"), flag, value],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "d").exists()


def test_a_second_serve_on_the_same_data_dir_is_refused_in_one_line(tmp_path: Path) -> None:
    server = KeytrailServer(tmp_path / "data").start()
    try:
        out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(server.data_dir),
                              "--port", "0", "--principals", str(server.principals)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and out.stdout == "", out.stderr
        assert out.stderr == f"keytrail serve: another keytrail serve is running on --data-dir {server.data_dir}\n"
        assert server.client("alice").list_keys()["Keys"] is not None  # the first one still serves
    finally:
        assert server.stop() == 0


def _denied_decrypts_counted(server: KeytrailServer) -> bool:
    _, body = server.get("/metrics")
    return any(line.startswith('keytrail_kms_requests_total{operation="Decrypt",outcome="AccessDenied')
               for line in body.decode().splitlines())


def test_serve_without_detector_records_the_call_but_raises_no_alarm(tmp_path: Path) -> None:
    """`--no-detector` (scale-out: a standalone `keytrail detect` judges the topic): the denied call
    is still audited and counted (also per principal), but this node raises no alarm of its own."""
    server = KeytrailServer(tmp_path / "data", "--no-detector").start()
    try:
        alice = server.client("alice")
        blob = alice.encrypt(KeyId=alice.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"]
        assert aws_error(server.client("bob").decrypt, CiphertextBlob=blob)[0] == "AccessDeniedException"
        deadline = time.monotonic() + 30
        while not _denied_decrypts_counted(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _denied_decrypts_counted(server), "the consumers never saw the denied call"
        _, metrics = server.get("/metrics")
        bob = 'keytrail_kms_denied_by_principal_total{operation="Decrypt",principal="arn:aws:iam::'
        assert any(line.startswith(bob) and ':user/bob"} 1' in line for line in metrics.decode().splitlines())
        time.sleep(1.0)  # an in-process detector reads the log as often as the consumers (0.2 s)
    finally:
        assert server.stop() == 0
    events = subprocess.run([sys.executable, "-m", "keytrail", "audit", "events", "--data-dir",
                             str(tmp_path / "data"), "--format", "json"], capture_output=True, text=True, timeout=60)
    denied = [json.loads(line) for line in events.stdout.splitlines() if '"Decrypt"' in line]
    assert [event["errorCode"] for event in denied] == ["AccessDenied"]
    assert not (tmp_path / "data" / "alarms.jsonl").exists()


@pytest.mark.parametrize(("blocked", "message"), [
    ("root.key", "cannot read the root key file {path}: Is a directory"),
    ("keys.db", "cannot open the key store {path}"),
])
def test_a_data_dir_serve_cannot_open_is_refused_in_one_line(tmp_path: Path, blocked: str, message: str) -> None:
    # A directory where a file belongs stands for any data dir part serve cannot open (a read-only
    # mount, a file of another owner): the tests run as root, which no file mode stops.
    data = tmp_path / "d"
    (data / blocked).mkdir(parents=True)
    if blocked == "keys.db":  # with its root key: without one, serve names the missing key first
        (data / "root.key").write_bytes(os.urandom(32))
        (data / "root.key").chmod(0o600)  # as serve makes it: a wider mode gets a warning line of its own
    out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith(f"keytrail serve: {message.format(path=data / blocked)}"), out.stderr


def test_serve_refuses_tls_files_it_cannot_use_in_one_line_before_creating_anything(tmp_path: Path) -> None:
    cert, _ = self_signed_certificate(tmp_path / "one", "localhost")
    _, other_key = self_signed_certificate(tmp_path / "two", "localhost")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    data = tmp_path / "d"
    for tls_cert, tls_key, message in [
        (cert, other_key, f"--tls-key {other_key} is not the private key of --tls-cert {cert}"),
        (junk, other_key,
         f"--tls-cert {junk} and --tls-key {other_key} are not a PEM certificate and its unencrypted key"),
    ]:
        out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0",
                              "--tls-cert", str(tls_cert), "--tls-key", str(tls_key)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert out.stderr.startswith(f"keytrail serve: {message}"), out.stderr
    assert not (data / "principals.toml").exists() and not (data / "root.key").exists()


def test_serve_refuses_a_dev_certificate_it_cannot_write_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "tls").write_text("a file where the certificate's folder belongs")
    out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0",
                          "--tls-self-signed"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr == ("keytrail serve: --tls-self-signed: cannot write the dev certificate: "
                          f"File exists: {data / 'tls'}\n")


def test_serve_refuses_a_root_key_that_does_not_open_the_store_in_one_line(tmp_path: Path) -> None:
    server = KeytrailServer(tmp_path / "data").start()
    server.client("alice").create_key()
    assert server.stop() == 0
    (server.data_dir / "root.key").write_bytes(os.urandom(32))  # another node's, or a lost one made anew
    out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(server.data_dir),
                          "--port", "0", "--principals", str(server.principals)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("keytrail serve: the root key does not open the key material in the key store"), \
        out.stderr


def test_serve_refuses_a_dev_certificate_beside_a_real_one_in_one_line(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "real", "localhost")
    data = tmp_path / "d"
    out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0",
                          "--tls-self-signed", "--tls-cert", str(cert), "--tls-key", str(key)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr == "keytrail serve: --tls-self-signed and --tls-cert/--tls-key exclude each other\n"
    assert not (data / "tls").exists()


def test_serve_refuses_a_root_key_file_named_that_is_not_there(tmp_path: Path) -> None:
    named = tmp_path / "secrets" / "root_key"  # a secret not mounted, a typo: never a new key there
    out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "d"), "--port", "0"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "KEYTRAIL_ROOT_KEY_FILE": str(named)})
    assert out.returncode == 2, out.stderr
    assert out.stderr == f"keytrail serve: no root key: {named} ($KEYTRAIL_ROOT_KEY_FILE) does not exist\n"
    assert not named.parent.exists()


# `keytrail serve` with another server starting on its port while the node is built: after serve
# checked the port, before it serves. It binds as servers do (SO_REUSEADDR) and says whether it got it.
_ANOTHER_SERVER_WHILE_THE_NODE_IS_BUILT = """
import socket, sys
import keytrail.cli.node as node
build = node.build_node
async def build_node(settings, *args, **kwargs):
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        other.bind((settings.host, settings.port))
        other.listen()
        node.other = other
        print("the other server took the port", file=sys.stderr)
    except OSError:
        print("the other server could not take the port", file=sys.stderr)
    return await build(settings, *args, **kwargs)
node.build_node = build_node
from keytrail.cli import main
main()
"""


def test_another_server_cannot_take_the_port_while_serve_starts(tmp_path: Path) -> None:
    # serve listens from its port check on: else the port taken meanwhile failed the start late,
    # in uvicorn's words, leaving behind the principals file whose credentials it had printed.
    data, port = tmp_path / "d", free_port()
    proc = subprocess.Popen([sys.executable, "-c", _ANOTHER_SERVER_WHILE_THE_NODE_IS_BUILT, "serve",
                             "--data-dir", str(data), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = _health_once_started(proc, port)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert health == 200 and proc.returncode == 0, err
    assert "the other server could not take the port" in err
    assert f"AWS_ENDPOINT_URL_KMS=http://localhost:{port}" in out and (data / "principals.toml").exists()


def _health_once_started(proc: subprocess.Popen[str], port: int) -> int | None:
    """The health check's status once serve answers it; None if serve exited first."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_keytrail/health", timeout=5) as response:
                return int(response.status)
        except OSError:
            time.sleep(0.1)
    return None


# `keytrail serve` whose node fails to start (its audit spool cannot be written, say); with
# SLOW_START, the node starts 2 seconds late instead, saying on stderr that it is starting.
_NODE_START = """
import asyncio, os, sys
import keytrail.cli.node as node
start = node._start
async def _start(*args):
    if os.environ.get("SLOW_START"):
        print("starting", file=sys.stderr, flush=True)
        await asyncio.sleep(2)
        return await start(*args)
    raise OSError(28, "No space left on device", "/data/audit/spool/00000000.seg")
node._start = _start
from keytrail.cli import main
main()
"""


# `keytrail serve` whose node takes 2 seconds longer to build, saying on stderr that it is building.
_SLOW_BUILD = """
import asyncio, sys
import keytrail.cli.node as node
build = node.build_node
async def build_node(*args, **kwargs):
    print("building", file=sys.stderr, flush=True)
    await asyncio.sleep(2)
    return await build(*args, **kwargs)
node.build_node = build_node
from keytrail.cli import main
main()
"""


def _terminated_once_it_says(line: str, script: str, data: Path, **env: str) -> tuple[int, str, str]:
    """Run serve through `script` on `data`, SIGTERM it once it writes `line` on stderr, and give
    back its exit status, stdout and the rest of its stderr."""
    proc = subprocess.Popen([sys.executable, "-c", script, "serve", "--data-dir", str(data), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        assert proc.stderr is not None and proc.stderr.readline() == line + "\n"
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, out, err


def test_sigterm_while_the_node_is_built_stops_it_once_started_and_announces_what_it_made(tmp_path: Path) -> None:
    # SIGTERM's default action killed serve half-built: the new admin user's principals file was
    # left, unannounced, for the next start to take as its own, and the exit status was -15.
    data = tmp_path / "d"
    code, out, err = _terminated_once_it_says("building", _SLOW_BUILD, data)
    assert (code, err) == (0, ""), err
    assert out.startswith(f"Created {data / 'principals.toml'} with an admin user")


def test_a_node_that_fails_to_start_is_one_line_and_leaves_the_data_dir_as_it_was(tmp_path: Path) -> None:
    # It failed in uvicorn's lifespan: uvicorn's traceback and exit 3, the new admin user's
    # credentials printed, and their principals file (with a root key) left for a retry to take.
    data = tmp_path / "d"
    data.mkdir()
    (data / "notes.txt").write_text("the operator's")
    out = subprocess.run([sys.executable, "-c", _NODE_START, "serve", "--data-dir", str(data), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr == ("keytrail serve: the node did not start: "
                          "No space left on device: /data/audit/spool/00000000.seg\n")
    assert sorted(path.name for path in data.iterdir()) == ["notes.txt"]


# `keytrail serve` on a data dir whose audit trail another program (`keytrail audit import`) makes
# and holds while serve builds its node.
_TRAIL_TAKEN = """
import sys
from pathlib import Path
import keytrail.cli.node as node
from keytrail.transport.segment_log import SegmentLog, event_log_dir
build = node.build_node
async def build_node(settings, *args, **kwargs):
    global held
    held = SegmentLog(event_log_dir(settings.data_dir), writable=True)
    (event_log_dir(settings.data_dir).parent / "imported").write_text("the other program's")
    return await build(settings, *args, **kwargs)
node.build_node = build_node
from keytrail.cli import main
main()
"""


def test_a_start_refused_for_an_audit_trail_another_program_holds_leaves_that_trail(tmp_path: Path) -> None:
    # What the start made goes (principals file, root key, key store), not the trail it was refused for.
    data = tmp_path / "d"
    out = subprocess.run([sys.executable, "-c", _TRAIL_TAKEN, "serve", "--data-dir", str(data), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert "another keytrail serve, keytrail root-key rotate or keytrail audit import on --data-dir" in out.stderr
    assert sorted(path.name for path in data.iterdir()) == ["audit"]
    assert (data / "audit" / "imported").read_text() == "the other program's"


# `keytrail serve` on a file system where its data dir cannot be locked, whose node fails to start.
_UNLOCKED_START_FAILS = """
import os
import signal
from keytrail.cli.data_dir_hold import DataDirHold
DataDirHold.take = classmethod(lambda cls, data: cls(data, os.open(data, os.O_RDONLY), exclusive=False))
import keytrail.cli.node as node
async def _start(*args):
    raise OSError(28, "No space left on device", "/data/audit/spool/00000000.seg")
node._start = _start
from keytrail.cli import main
main()
"""


def test_a_failed_start_that_cannot_tell_what_it_made_announces_the_signing_key_it_keeps(tmp_path: Path) -> None:
    # Without the data dir's lock it removes only its principals file: the audit signing key it
    # made stayed unannounced, and the next start, finding it there, announced nothing either.
    data = tmp_path / "d"
    out = subprocess.run([sys.executable, "-c", _UNLOCKED_START_FAILS, "serve", "--data-dir", str(data),
                          "--port", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr == ("keytrail serve: the node did not start: "
                          "No space left on device: /data/audit/spool/00000000.seg\n")
    public = data / "audit" / "integrity" / "signing-key.pub.pem"
    assert out.stdout.startswith(f"Created the audit signing key; its public key {public} has the SHA-256 fingerprint ")
    assert not (data / "principals.toml").exists()


def _tree(data: Path) -> dict[str, bytes | None]:
    """Every path in `data` with a file's bytes (None for a folder)."""
    return {str(path.relative_to(data)): None if path.is_dir() else path.read_bytes() for path in data.rglob("*")}


def test_a_failed_start_on_a_data_dir_that_served_leaves_every_folder_as_it_found_it(tmp_path: Path) -> None:
    # The start's trail signed an opening digest (and a final one as it stopped) into the existing
    # audit trail: only new names at the top of the data dir were removed, so those stayed.
    data = tmp_path / "d"
    server = KeytrailServer(data).start()
    server.client("alice").create_key()
    assert server.stop() == 0
    (data / "alarms.jsonl").touch()  # there before too, whatever the detector writes
    before = _tree(data)
    out = subprocess.run([sys.executable, "-c", _NODE_START, "serve", "--data-dir", str(data), "--port", "0",
                          "--principals", str(server.principals), "--dev-clock"],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    after = _tree(data)
    # What was there stays; only the sidecar of the audit trail's record hashes is rewritten as it was.
    assert sorted(after) == sorted(before)
    assert {path for path in before if before[path] != after[path]} <= {"audit/integrity/hashes.bin"}


# `keytrail serve --dev-clock`, eight days on, whose start fails once its first pass of scheduled
# key maintenance has carried out (and recorded) what was due.
_FAILS_AFTER_DUE_WORK = """
import keytrail.cli.node as node
from keytrail.kms.service import KmsService
class Ahead(node.ManualClock):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.advance(8 * 86400)
node.ManualClock = Ahead
run_due = KmsService.run_due
async def fails_after(self):
    await run_due(self)
    raise OSError(28, "No space left on device", "/data/metrics/state/0.sqlite")
KmsService.run_due = fails_after
from keytrail.cli import main
main()
"""


def test_a_failed_start_that_recorded_due_work_leaves_a_trail_the_next_start_opens(tmp_path: Path) -> None:
    # Its digests were removed, the DeleteKey record in the segment that was there stayed: after the
    # last stop's final digest, and the next start refused the trail as written while no node ran.
    data = tmp_path / "d"
    server = KeytrailServer(data).start()
    kms = server.client("alice")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    assert server.stop() == 0
    out = subprocess.run([sys.executable, "-c", _FAILS_AFTER_DUE_WORK, "serve", "--data-dir", str(data), "--port",
                          "0", "--principals", str(server.principals), "--dev-clock"],
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    server.start()  # before: "keytrail serve exited: … after the final digest keytrail signed when it last stopped"
    assert server.stop() == 0
    verify = subprocess.run([sys.executable, "-m", "keytrail", "audit", "verify", "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    events = subprocess.run([sys.executable, "-m", "keytrail", "audit", "events", "--data-dir", str(data)],
                            capture_output=True, text=True, timeout=60).stdout
    assert [json.loads(line)["eventName"] for line in events.splitlines()][-1] == "DeleteKey"


def test_a_detector_that_cannot_start_fails_serve_in_one_line_and_leaves_nothing_behind(tmp_path: Path) -> None:
    data = tmp_path / "d"
    (data / "alarms.jsonl").mkdir(parents=True)  # where the in-process detector reads its alarms
    out = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0",
                          "--dev-clock"], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr == ("keytrail serve: the node did not start: the metrics consumer and detector: "
                          f"Is a directory: {data / 'alarms.jsonl'}\n")
    assert sorted(path.name for path in data.iterdir()) == ["alarms.jsonl"]


def test_sigterm_while_the_node_starts_stops_it_once_started(tmp_path: Path) -> None:
    data = tmp_path / "d"
    code, out, err = _terminated_once_it_says("starting", _NODE_START, data, SLOW_START="1")
    assert (code, err) == (0, ""), err
    assert out.startswith(f"Created {data / 'principals.toml'} with an admin user")
    assert (data / "principals.toml").exists()


def test_a_first_start_whose_stdout_is_gone_removes_what_it_made_and_says_so(tmp_path: Path) -> None:
    """`keytrail serve | head -0` (or stdout on a full disk): the admin user's credentials and the
    audit key's fingerprint were printed nowhere, and the data dir kept what the start made, so the
    next start took it for its own and printed neither either."""
    data = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before anything is printed
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err == ("keytrail serve: could not print what this start made to stdout (Broken pipe), so it was removed: "
                   "start again with stdout where you can read it\n")
    assert not data.exists()  # nor the data dir it made for them
    again = subprocess.Popen([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert again.stdout is not None
        assert again.stdout.readline().startswith(f"Created {data / 'principals.toml'} with an admin user")
    finally:
        again.terminate()
        again.communicate(timeout=60)


def _close_stdout() -> None:
    os.close(1)  # `keytrail serve >&-`


def test_serve_with_stdout_closed_serves_or_refuses_in_one_line(tmp_path: Path) -> None:
    """Started with stdout closed, serve died of a traceback (uvicorn's logging setup read
    sys.stdout, which Python made None). A first start now refuses as for a stdout whose reader
    is gone; a restart, with nothing to announce, serves."""
    data = tmp_path / "d"
    first = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0"],
                           stderr=subprocess.PIPE, text=True, preexec_fn=_close_stdout, timeout=60)
    assert first.returncode == 2, first.stderr
    assert first.stderr == ("keytrail serve: could not print what this start made to stdout (Bad file descriptor), "
                            "so it was removed: start again with stdout where you can read it\n")
    assert _served_once(data)[0] == 0  # announced where it can be read
    returncode, _, err = _stopped_once_healthy(data, free_port(), preexec_fn=_close_stdout)
    assert (returncode, err) == (0, "")


# `keytrail serve` killed (kill -9) just as it is about to print the new admin user's credentials.
_KILLED_BEFORE_IT_PRINTS = """
import os, signal
import keytrail.cli.start_made as start_made
start_made._print_new_admin = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
from keytrail.cli import main
main()
"""


def _served_once(data: Path, *args: str) -> tuple[int, str, str]:
    """Start serve on `data`, stop it (SIGTERM) once it answers its health check: its exit status,
    what it announced on stdout before the line every start ends it with (checked), and stderr."""
    port = free_port()
    returncode, out, err = _stopped_once_healthy(data, port, *args, stdout=subprocess.PIPE)
    listening = f"keytrail serve: listening on http://127.0.0.1:{port}, data dir {data.absolute()}\n"
    assert out.endswith(listening), out
    return returncode, out.removesuffix(listening), err


def _stopped_once_healthy(data: Path, port: int, *args: str, **popen: Any) -> tuple[int, str, str]:
    """Run serve on `data` and `port` until it answers its health check, then SIGTERM: its exit
    status, stdout (empty unless `popen` pipes it) and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", str(port),
                             *args], stderr=subprocess.PIPE, text=True, **popen)
    try:
        assert _health_once_started(proc, port) == 200
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, out or "", err


def test_every_start_says_where_it_listens_and_which_data_dir_it_serves(tmp_path: Path) -> None:
    # A restart printed nothing at all: no sign that the node was up, on which address, over which data dir.
    data = tmp_path / "d"
    assert _served_once(data)[0] == 0  # the first start: what it made, then the line (checked)
    assert _served_once(data) == (0, "", "")  # a restart: the line alone


def test_a_first_start_killed_before_it_prints_what_it_made_has_the_next_start_print_it(tmp_path: Path) -> None:
    # The next start took the principals file and signing key for existing ones: the admin user's
    # credentials and the key's fingerprint were printed by no start, ever.
    data = tmp_path / "d"
    killed = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_IT_PRINTS, "serve", "--data-dir", str(data),
                             "--port", "0"], capture_output=True, text=True, timeout=60)
    assert (killed.returncode, killed.stdout) == (-signal.SIGKILL, ""), killed.stderr
    admin = tomllib.loads((data / "principals.toml").read_text())["principal"][0]
    public = data / "audit" / "integrity" / "signing-key.pub.pem"

    code, out, err = _served_once(data)
    assert (code, err) == (0, ""), err
    created, export, signing_key = out.splitlines()
    assert created == f"Created {data / 'principals.toml'} with an admin user. To use it:"
    assert export.startswith(f"export AWS_ACCESS_KEY_ID={admin['access_key_id']} "
                             f"AWS_SECRET_ACCESS_KEY={admin['secret_access_key']} AWS_ENDPOINT_URL_KMS=http://")
    assert signing_key.startswith(f"Created the audit signing key; its public key {public} has the SHA-256 "
                                  "fingerprint ")

    assert _served_once(data) == (0, "", "")  # printed once: the third start has nothing to announce
    assert not (data / "unannounced").exists()


def test_a_start_naming_its_principals_file_prints_not_the_one_a_killed_start_made(tmp_path: Path) -> None:
    # The named file is never announced, nor the data dir's while unused: the start that uses it does.
    data, named = tmp_path / "d", tmp_path / "named.toml"
    killed = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_IT_PRINTS, "serve", "--data-dir", str(data),
                             "--port", "0"], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    named.write_text((data / "principals.toml").read_text())
    named.chmod(0o600)
    code, out, err = _served_once(data, "--principals", str(named))
    assert (code, err) == (0, ""), err
    assert out.startswith("Created the audit signing key;") and "AWS_SECRET_ACCESS_KEY" not in out
    code, out, err = _served_once(data)
    assert (code, err) == (0, ""), err
    assert out.startswith(f"Created {data / 'principals.toml'} with an admin user") and "signing key" not in out


def _certificate(folder: Path, not_before: datetime.datetime, not_after: datetime.datetime) -> tuple[Path, Path]:
    """A certificate for localhost valid from `not_before` to `not_after`, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir()
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


@pytest.mark.parametrize(("days", "said"), [((-30, -1), "expired on "), ((2, 30), "is not valid before ")])
def test_serve_warns_of_a_certificate_no_client_accepts_at_start(tmp_path: Path, days: tuple[int, int],
                                                                  said: str) -> None:
    # It served it without a word: every SDK call then failed with CERTIFICATE_VERIFY_FAILED.
    now = datetime.datetime.now(datetime.UTC)
    cert, key = _certificate(tmp_path / "tls", *(now + datetime.timedelta(days=day) for day in days))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "d"), "--port",
                             str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        while not (line := proc.stdout.readline()).startswith("keytrail serve: listening on "):
            assert line, "serve exited"
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    warnings = [line for line in err.splitlines() if "--tls-cert" in line]
    assert len(warnings) == 1 and f"--tls-cert {cert} {said}" in warnings[0], err
    assert proc.returncode == 0


# `keytrail serve` killed (kill -9) just as it is about to print the dev certificate's line.
_KILLED_BEFORE_THE_CERTIFICATE_LINE = """
import os, signal
import keytrail.cli.start_made as start_made
start_made.print_dev_certificate = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
from keytrail.cli import main
main()
"""


def test_a_first_tls_start_killed_before_it_prints_has_the_next_start_print_the_dev_certificate(
        tmp_path: Path) -> None:
    # The next start took the certificate for an existing one: it printed the admin user's line with
    # its https:// endpoint, and no AWS_CA_BUNDLE line, so every call failed CERTIFICATE_VERIFY_FAILED.
    data, port = tmp_path / "d", free_port()
    killed = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_THE_CERTIFICATE_LINE, "serve", "--data-dir",
                             str(data), "--port", "0", "--tls-self-signed"], capture_output=True, text=True, timeout=60)
    assert (killed.returncode, killed.stdout) == (-signal.SIGKILL, ""), killed.stderr
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", str(port),
                             "--tls-self-signed"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        while not (line := proc.stdout.readline()).startswith("keytrail serve: listening on "):
            assert line, "serve exited"
            lines.append(line)
        cert = data / "tls" / "tls-cert.pem"
        assert lines[0] == f"Created the dev certificate {cert} (localhost, 127.0.0.1). To use it:\n"
        exported = dict(pair.split("=", 1) for line in lines if line.startswith("export ") for pair in line.split()[1:])
        kms = boto3.client("kms", endpoint_url=exported["AWS_ENDPOINT_URL_KMS"], verify=exported["AWS_CA_BUNDLE"],
                           region_name=exported["AWS_REGION"], aws_access_key_id=exported["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=exported["AWS_SECRET_ACCESS_KEY"])
        assert kms.list_keys()["Keys"] == []
        proc.terminate()
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert not (data / "unannounced").exists()
