"""No secret leaves a whole node: `keytrail serve` with --kafka (tansu), MQTT and a webhook (its
[hooks], an MQTT password and a webhook HMAC key), --store on PostgreSQL, the root key and the
database password in the environment, a SoftHSM2 custom key store, and its consumer and detector
as child processes. Every operation carrying secret bytes runs, succeeding and failing; then each
secret (unique random markers, every key material and import private key the store holds, every
password and access key secret) is searched for, raw, base64, base64url and hex, in everything
the node let out: its log, every file it wrote (data dir and $TMPDIR), the Kafka audit and alarm
topics (raw and decoded), the MQTT and webhook alarms, /metrics, every PostgreSQL table, the
command lines and environments of its children, the answers to failed calls and the CLI's
outputs and reports. Files of the data dir are owner-only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import aiomqtt
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from keytrail.audit.schema import EventCodec
from keytrail.cli.key_store import open_store_read_only
from keytrail.detect.avro import decode_alarm
from keytrail.detect.sinks.webhook import SIGNATURE_HEADER, verify_signature
from keytrail.kms.importing import token_id_of
from keytrail.kms.sealing import RootKey
from tests.integration.e2e.support import audit_events, cli, eventually, private_mosquitto, raw_files
from tests.integration.test_secrets_not_logged import (
    Secrets,
    _asymmetric,
    _forms,
    _imported,
    _mac,
    _symmetric,
    signed_post_raw,
)
from tests.support.certificates import self_signed_pem
from tests.support.postgres import database_url, fetch, scratch_database
from tests.support.processes import child_commands
from tests.support.server import PRINCIPALS, KeytrailServer
from tests.support.services import kafka_broker, topic_values
from tests.support.softhsm import SoftHsm, softhsm_module, softhsm_token

pytestmark = pytest.mark.integration

WEBHOOK_SECRET_ENV = "KEYTRAIL_TEST_WEBHOOK_SECRET"
HSM_CLUSTER = "cluster-leakcheckabc"


class Outputs:
    """Everything the node let out, as (where, bytes)."""

    def __init__(self) -> None:
        self.found: list[tuple[str, bytes]] = []

    def add(self, where: str, data: bytes | str) -> None:
        self.found.append((where, data.encode() if isinstance(data, str) else data))


class WebhookReceiver:
    """An HTTP receiver on a free port keeping each request's headers and body."""

    def __init__(self) -> None:
        received: list[tuple[str, bytes]] = []  # (headers, body)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append((str(self.headers), self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.http = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/hook"

    @contextlib.contextmanager
    def running(self) -> Iterator[WebhookReceiver]:
        thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.http.shutdown()
            self.http.server_close()


@contextlib.contextmanager
def mqtt_messages(url: str) -> Iterator[list[bytes]]:
    """Every message on the broker at `url` (topic and payload) while the block runs."""
    messages: list[bytes] = []
    ready, stop = threading.Event(), threading.Event()

    async def collect() -> None:
        async with aiomqtt.Client("127.0.0.1", int(url.rsplit(":", 1)[1])) as client:
            await client.subscribe("#", qos=1)
            ready.set()
            reading = asyncio.create_task(_append_messages(client, messages))
            while not stop.is_set():
                await asyncio.sleep(0.05)
            reading.cancel()

    thread = threading.Thread(target=asyncio.run, args=(collect(),))
    thread.start()
    assert ready.wait(15), "no MQTT subscription"
    try:
        yield messages
    finally:
        stop.set()
        thread.join(15)


async def _append_messages(client: aiomqtt.Client, messages: list[bytes]) -> None:
    async for message in client.messages:
        messages.append(str(message.topic).encode() + b" " + bytes(message.payload))  # type: ignore[arg-type]


def _answers(call: Any, outputs: Outputs, where: str) -> None:
    """Make a call meant to fail, keeping its whole answer."""
    with pytest.raises(ClientError) as refused:
        call()
    outputs.add(f"answer to {where}", json.dumps(refused.value.response, default=str))


def _failing_calls(server: KeytrailServer, secrets: Secrets, outputs: Outputs) -> None:
    """Bad ciphertexts, wrong keys, denied calls, bad import tokens, an unknown secret access key,
    a session token, a Recipient and malformed bodies."""
    kms = server.client()
    key, other = (kms.create_key()["KeyMetadata"]["Arn"] for _ in range(2))
    blob = kms.encrypt(
        KeyId=key, Plaintext=secrets.new("Encrypt plaintext denied to bob"), EncryptionContext={"purpose": "leak-check"}
    )["CiphertextBlob"]
    _answers(lambda: kms.decrypt(CiphertextBlob=blob), outputs, "Decrypt without its context")
    _answers(
        lambda: kms.decrypt(CiphertextBlob=blob, KeyId=other, EncryptionContext={"purpose": "leak-check"}),
        outputs,
        "Decrypt under the wrong key",
    )
    _answers(lambda: kms.decrypt(CiphertextBlob=secrets.new("random ciphertext", 80)), outputs, "Decrypt of noise")
    for _ in range(3):  # the unauthorized-decrypt alarm, to every hook
        _answers(lambda: server.client("bob").decrypt(CiphertextBlob=blob), outputs, "a denied Decrypt")
    _answers(
        lambda: server.client("bob").encrypt(KeyId=key, Plaintext=secrets.new("denied plaintext")),
        outputs,
        "a denied Encrypt",
    )
    _answers(
        lambda: kms.generate_random(
            NumberOfBytes=32,
            Recipient={
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                "AttestationDocument": secrets.new("attestation"),
            },
        ),
        outputs,
        "GenerateRandom for a Recipient",
    )
    external = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["Arn"]
    kms.get_parameters_for_import(KeyId=external, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    _answers(
        lambda: kms.import_key_material(
            KeyId=external,
            ImportToken=secrets.new("forged import token", 60),
            EncryptedKeyMaterial=secrets.new("material under a forged token", 256),
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
        ),
        outputs,
        "ImportKeyMaterial with a forged token",
    )
    _answers(
        lambda: _client(server, PRINCIPALS["alice"][1], secrets.new("wrong secret key", 20).hex()).encrypt(
            KeyId=key, Plaintext=b"x"
        ),
        outputs,
        "a call signed with a wrong secret access key",
    )
    token = secrets.new("session token", 40).hex()
    _client(server, PRINCIPALS["app"][1], PRINCIPALS["app"][2], token).encrypt(KeyId=key, Plaintext=b"x")
    mark = secrets.new("malformed body").hex()
    for body in (f'{{"KeyId": "{key}", "Plaintext": "{mark}', f'{{"KeyId": "{key}", "Plaintext": ["{mark}"]}}'):
        status, answer = signed_post_raw(server, "Encrypt", body.encode())
        outputs.add("answer to a malformed Encrypt body", answer)
        assert status == 400, answer
    _policy_open_to_anyone(kms, key)


def _client(server: KeytrailServer, access_key: str, secret: str, token: str | None = None) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"total_max_attempts": 1}),
    )


def _policy_open_to_anyone(kms: Any, key: str) -> None:
    """The permissive-key alarm, at once."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"},
        ],
    }
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))


def _custom_key_store(server: KeytrailServer, hsm: SoftHsm, secrets: Secrets, outputs: Outputs) -> None:
    """A key in the HSM used, then the store given a wrong password and connected with it."""
    kms = server.client()
    store = kms.create_custom_key_store(
        CustomKeyStoreName="leak-check",
        CloudHsmClusterId=HSM_CLUSTER,
        KeyStorePassword=hsm.user_pin,
        TrustAnchorCertificate=self_signed_pem("leak-check"),
    )["CustomKeyStoreId"]
    kms.connect_custom_key_store(CustomKeyStoreId=store)
    assert _connection(kms, store)["ConnectionState"] == "CONNECTED"
    key = kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store)["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=key, Plaintext=secrets.new("plaintext under an HSM key"))["CiphertextBlob"]
    kms.decrypt(CiphertextBlob=blob)
    kms.disconnect_custom_key_store(CustomKeyStoreId=store)
    eventually(lambda: _connection(kms, store)["ConnectionState"] == "DISCONNECTED", what="the store disconnected")
    wrong = secrets.new("wrong key store password", 12).hex()
    secrets.add("wrong key store password text", wrong.encode())
    kms.update_custom_key_store(CustomKeyStoreId=store, KeyStorePassword=wrong)
    kms.connect_custom_key_store(CustomKeyStoreId=store)
    failed = _connection(kms, store)
    outputs.add("DescribeCustomKeyStores", json.dumps(failed, default=str))
    assert failed.get("ConnectionErrorCode") == "INVALID_CREDENTIALS", failed


def _connection(kms: Any, store: str) -> dict[str, Any]:
    """The store's description once it is no longer CONNECTING."""

    def settled() -> dict[str, Any] | None:
        found: dict[str, Any] = kms.describe_custom_key_stores(CustomKeyStoreId=store)["CustomKeyStores"][0]
        return None if found["ConnectionState"] == "CONNECTING" else found

    return eventually(settled, what="the custom key store's connection settled")


def _children_exposure(server: KeytrailServer, outputs: Outputs) -> None:
    """What every user's processes read of the node: each process's command line, and each child's
    environment (serve is not dumpable; its children are)."""
    assert server.proc is not None
    outputs.add("serve's command line", Path(f"/proc/{server.proc.pid}/cmdline").read_bytes())
    children = eventually(
        lambda: len(kids := child_commands(server.proc.pid)) >= 4 and kids,  # type: ignore[union-attr]
        what="the consumer, the detector, the shipper and the fsync helper",
    )
    # a core dump would hold what each process holds (serve: the root key and every key's material)
    assert {pid: _core_limit(pid) for pid in [server.proc.pid, *children]} == dict.fromkeys(
        [server.proc.pid, *children], "0"
    )
    for pid, args in children.items():
        outputs.add(f"command line of child {b' '.join(args)!r}", b" ".join(args))
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            outputs.add(f"environment of child {b' '.join(args)!r}", Path(f"/proc/{pid}/environ").read_bytes())


def _core_limit(pid: int) -> str:
    """The hard limit on the size of process `pid`'s core dumps."""
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines() if line.startswith("Max core"))
    return line.split()[4]


async def _store_secrets(url: str, root: bytes, import_tokens: list[bytes]) -> list[tuple[str, bytes]]:
    """Every key material, and each import token's wrapping private key, the store holds."""
    store = await open_store_read_only(url, RootKey(root))
    try:
        found = [
            (f"material of {key.arn}", material.secret)
            for key in await store.all_keys()
            for material in key.materials
            if material.secret
        ]
        for token in import_tokens:
            if (parameters := await store.get_import_parameters(token_id_of(token))) is not None:
                found.append(("import wrapping private key", parameters.private_key))
        return found
    finally:
        await store.close()


async def _tables(url: str) -> list[tuple[str, bytes]]:
    """Each table of the store's database as text, bytea columns in hex."""
    names = [row[0] for row in await fetch(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert names, "the key store made no table"
    return [
        (
            f"PostgreSQL table {name}",
            "\n".join(row[0] for row in await fetch(url, f'SELECT t::text FROM "{name}" t')).encode(),
        )
        for name in names
    ]


def _kafka(bootstrap: str, outputs: Outputs) -> None:
    audit = asyncio.run(topic_values(bootstrap, "keytrail.audit.v1"))
    assert audit, "no audit record reached Kafka"
    codec = EventCodec()
    for value in audit:
        outputs.add("Kafka keytrail.audit.v1", value)
        outputs.add("Kafka keytrail.audit.v1, decoded", json.dumps(codec.decode(value), default=str))
    for value in asyncio.run(topic_values(bootstrap, "keytrail.alarms.v1")):
        outputs.add("Kafka keytrail.alarms.v1", value)
        outputs.add("Kafka keytrail.alarms.v1, decoded", json.dumps(decode_alarm(value).to_json()))


def _cli_outputs(data: Path, tmp_path: Path, outputs: Outputs) -> None:
    for command in (
        ("audit", "events", "--format", "json"),
        ("usage", "--format", "json"),
        ("cost", "--format", "json"),
        ("last-used", "--format", "json"),
        ("audit", "verify"),
    ):
        result = cli(*command, "--data-dir", str(data), check=False)
        outputs.add(f"keytrail {' '.join(command)}", result.stdout + result.stderr)
    for suffix in ("html", "json", "csv"):
        report = tmp_path / f"report.{suffix}"
        cli("report", "--data-dir", str(data), "--out", str(report))
        outputs.add(f"keytrail report --out {report.name}", report.read_bytes())


def _files(root: Path, outputs: Outputs) -> None:
    for path, raw in raw_files(root):
        outputs.add(str(path), raw)


def _not_owner_only(data: Path) -> list[str]:
    """Paths under the data dir that another user could read (or a folder enter)."""
    return [
        f"{oct(stat.S_IMODE(path.stat().st_mode))} {path}"
        for path in [data, *data.rglob("*")]
        if stat.S_IMODE(path.stat().st_mode) & 0o077
    ]


def _signature(headers: str) -> str | None:
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in headers.splitlines()
            if line.lower().startswith(SIGNATURE_HEADER.lower() + ":")
        ),
        None,
    )


def _leaks(secrets: list[tuple[str, bytes]], outputs: Outputs) -> list[str]:
    return [
        f"{where} ({form[:16]!r}…) in {place}"
        for where, secret in secrets
        for form in _forms(secret)
        for place, data in outputs.found
        if form in data
    ]


@pytest.fixture
def hsm(tmp_path: Path) -> SoftHsm | None:
    module = softhsm_module()
    if module is None:
        return None
    return softhsm_token(tmp_path / "hsm", "leak-check", "pin-" + os.urandom(8).hex(), module)


def test_no_secret_reaches_any_output_of_a_whole_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hsm: SoftHsm | None
) -> None:
    secrets, outputs = Secrets(), Outputs()
    root_key = secrets.new("root key")
    webhook_secret, mqtt_password, database_password = (
        secrets.new(what, 12).hex() for what in ("webhook HMAC key", "MQTT password", "database password")
    )
    for text in (webhook_secret, mqtt_password, database_password):
        secrets.add("a password, as text", text.encode())
    for _, _, secret, _, _ in PRINCIPALS.values():
        secrets.add("a principal's secret access key", secret.encode())
    temp = tmp_path / "serve-tmp"
    temp.mkdir()
    monkeypatch.setenv("KEYTRAIL_ROOT_KEY", base64.b64encode(root_key).decode())
    monkeypatch.setenv("PGPASSWORD", database_password)
    monkeypatch.setenv(WEBHOOK_SECRET_ENV, webhook_secret)
    monkeypatch.setenv("TMPDIR", str(temp))
    if hsm is not None:
        secrets.add("HSM user PIN", hsm.user_pin.encode())
        for name, value in {**hsm.env, "KEYTRAIL_PKCS11_TOKENS": f"{HSM_CLUSTER}={hsm.label}"}.items():
            monkeypatch.setenv(name, value)
    data = tmp_path / "data"
    with (
        kafka_broker() as bootstrap,
        private_mosquitto() as mqtt,
        scratch_database() as database,
        WebhookReceiver().running() as webhook,
        mqtt_messages(mqtt) as mqtt_seen,
    ):
        config = tmp_path / "settings.toml"
        config.write_text(
            f'[hooks]\nmqtt = "mqtt://keytrail:{mqtt_password}@{mqtt.split("//")[1]}"\n'
            f'[[hooks.webhook]]\nurl = "{webhook.url}"\nsecret_env = "{WEBHOOK_SECRET_ENV}"\n'
        )
        config.chmod(0o600)
        store = database_url(database)
        server = KeytrailServer(
            data, "--kafka", bootstrap, "--store", store, "--config", str(config), dev_clock=False
        ).start()
        try:
            kms = server.client()
            for session in (_symmetric, _asymmetric, _mac, _imported):
                session(kms, secrets)
            _failing_calls(server, secrets, outputs)
            if hsm is not None:
                _custom_key_store(server, hsm, secrets, outputs)
            pending = kms.get_parameters_for_import(
                KeyId=kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["Arn"],
                WrappingAlgorithm="RSAES_OAEP_SHA_256",
                WrappingKeySpec="RSA_2048",
            )
            _children_exposure(server, outputs)
            eventually(
                lambda: len(webhook.received) >= 2 and len(mqtt_seen) >= 2,
                timeout=60,
                what="both alarms on the webhook and on MQTT",
            )
            for path in ("/metrics", "/_keytrail/health"):
                outputs.add(f"GET {path}", server.get(path)[1])
        finally:
            assert server.stop() == 0
        held = asyncio.run(_store_secrets(store, root_key, [pending["ImportToken"]]))
        assert [what for what, _ in held].count("import wrapping private key") == 1
        outputs.found += asyncio.run(_tables(store))
        _kafka(bootstrap, outputs)
    outputs.found += [("MQTT", message) for message in mqtt_seen]
    outputs.found += [("webhook", headers.encode() + body) for headers, body in webhook.received]
    # signed with the key serve was given, which its detector child does not find in its environment
    assert all(
        verify_signature(webhook_secret.encode(), body, _signature(headers)) for headers, body in webhook.received
    )
    assert {"ImportKeyMaterial", "CreateCustomKeyStore" if hsm else "Encrypt"} <= {
        event["eventName"] for event in audit_events(data)
    }
    _cli_outputs(data, tmp_path, outputs)
    _files(data, outputs)
    _files(temp, outputs)
    outputs.add("server log", server.log.read_bytes())
    leaks = _leaks(secrets.found + held, outputs)
    assert not leaks, "\n".join(leaks)
    assert _not_owner_only(data) == []
