"""No secret reaches a log, an event or a file: a real `keytrail serve` session that calls every
operation handling secret bytes, then a grep of the server's output and of every file in the
data dir for each secret sent or received, and for every key material version, raw, base64 and hex.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from keytrail.kms.sealing import ROOT_KEY_ENV, RootKey
from keytrail.kms.sqlite_store import SqliteStore
from tests.integration.e2e.support import audit_events, eventually, private_mosquitto, raw_files
from tests.support.postgres import database_url, scratch_database
from tests.support.processes import child_commands
from tests.support.server import PRINCIPALS, KeytrailServer

pytestmark = pytest.mark.integration


class Secrets:
    """Every secret the session handled, with the operation it came from (for the message)."""

    def __init__(self) -> None:
        self.found: list[tuple[str, bytes]] = []

    def add(self, where: str, *values: bytes) -> None:
        self.found += [(where, value) for value in values]

    def new(self, where: str, size: int = 32) -> bytes:
        value = os.urandom(size)
        self.add(where, value)
        return value


def _symmetric(kms: Any, secrets: Secrets) -> None:
    key = kms.create_key()["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=key, Plaintext=secrets.new("Encrypt plaintext"))["CiphertextBlob"]
    kms.decrypt(CiphertextBlob=blob)
    kms.re_encrypt(CiphertextBlob=blob, DestinationKeyId=key)
    data_key = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
    secrets.add("GenerateDataKey", data_key["Plaintext"], data_key["CiphertextBlob"])
    kms.generate_data_key_without_plaintext(KeyId=key, NumberOfBytes=24)
    secrets.add("GenerateRandom", kms.generate_random(NumberOfBytes=48)["Plaintext"])
    with pytest.raises(ClientError):  # a tampered ciphertext: the error must not echo it
        kms.decrypt(CiphertextBlob=blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(ClientError):  # refused by validation: too long
        kms.encrypt(KeyId=key, Plaintext=secrets.new("Encrypt plaintext too long", 4097))
    with pytest.raises(ClientError):
        kms.encrypt(KeyId=key, Plaintext=secrets.new("DryRun plaintext"), DryRun=True)


def _asymmetric(kms: Any, secrets: Secrets) -> None:
    rsa_key = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=rsa_key, Plaintext=secrets.new("RSA plaintext"),
                       EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    kms.decrypt(KeyId=rsa_key, CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    signer = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    message = secrets.new("Sign message")
    signature = kms.sign(KeyId=signer, Message=message, SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    kms.verify(KeyId=signer, Message=message, Signature=signature, SigningAlgorithm="ECDSA_SHA_256")
    pair = kms.generate_data_key_pair(KeyId=kms.create_key()["KeyMetadata"]["Arn"], KeyPairSpec="ECC_NIST_P256")
    secrets.add("GenerateDataKeyPair", pair["PrivateKeyPlaintext"], pair["PrivateKeyCiphertextBlob"])
    agreeing = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["Arn"]
    peer = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    derived = kms.derive_shared_secret(KeyId=agreeing, KeyAgreementAlgorithm="ECDH", PublicKey=peer)
    secrets.add("DeriveSharedSecret", derived["SharedSecret"])
    kem = kms.create_key(KeySpec="ML_KEM_768", KeyUsage="ENCAPSULATE_DECAPSULATE")["KeyMetadata"]["Arn"]
    sealed = kms.encapsulate(KeyId=kem, EncapsulationAlgorithm="ML_KEM")
    secrets.add("Encapsulate", sealed["SharedSecret"])
    opened = kms.decapsulate(KeyId=kem, EncapsulationAlgorithm="ML_KEM",
                             SharedSecretCiphertextBlob=sealed["SharedSecretCiphertextBlob"])
    assert opened["SharedSecret"] == sealed["SharedSecret"]


def _mac(kms: Any, secrets: Secrets) -> None:
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    message = secrets.new("GenerateMac message")
    mac = kms.generate_mac(KeyId=key, Message=message, MacAlgorithm="HMAC_SHA_256")["Mac"]
    secrets.add("GenerateMac", mac)
    kms.verify_mac(KeyId=key, Message=message, MacAlgorithm="HMAC_SHA_256", Mac=mac)


def _imported(kms: Any, secrets: Secrets) -> None:
    key = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["Arn"]
    parameters = kms.get_parameters_for_import(KeyId=key, WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256",
                                               WrappingKeySpec="RSA_2048")
    wrapping = serialization.load_der_public_key(parameters["PublicKey"])
    aes_key, material = secrets.new("import AES wrapping key"), secrets.new("imported key material")
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    wrapped = wrapping.encrypt(aes_key, oaep) + aes_key_wrap_with_padding(aes_key, material)  # type: ignore[union-attr]
    kms.import_key_material(KeyId=key, ImportToken=parameters["ImportToken"], EncryptedKeyMaterial=wrapped,
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    kms.encrypt(KeyId=key, Plaintext=secrets.new("plaintext under imported material"))


def _custom_key_store(kms: Any, secrets: Secrets) -> None:
    password = secrets.new("KeyStorePassword", 16).hex()
    secrets.add("KeyStorePassword text", password.encode())
    with pytest.raises(ClientError):  # no such cluster (token) here: refused, but the call is audited
        kms.create_custom_key_store(CustomKeyStoreName="leak-check", CloudHsmClusterId="cluster-1234567abcd",
                                    TrustAnchorCertificate="-----BEGIN CERTIFICATE-----",
                                    KeyStorePassword=password)


def _key_materials(data_dir: Path) -> list[tuple[str, bytes]]:
    store = SqliteStore(data_dir / "keys.db", RootKey.load(data_dir, create=False))
    try:
        keys = asyncio.run(store.all_keys())
    finally:
        asyncio.run(store.close())
    return [(f"material of {key.arn}", material.secret) for key in keys for material in key.materials]


def _forms(secret: bytes) -> list[bytes]:
    return [secret, base64.b64encode(secret), base64.urlsafe_b64encode(secret), secret.hex().encode(),
            secret.hex().upper().encode()]


def test_no_secret_of_any_operation_reaches_logs_events_or_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    secrets = Secrets()
    try:
        kms = server.client()
        for session in (_symmetric, _asymmetric, _mac, _imported, _custom_key_store):
            session(kms, secrets)
    finally:
        assert server.stop() == 0
    materials = _key_materials(data)
    assert len(materials) == 8  # every key made above holds its material
    events = audit_events(data)
    assert {"GenerateDataKeyPair", "DeriveSharedSecret", "Decapsulate", "ImportKeyMaterial",
            "CreateCustomKeyStore"} <= {event["eventName"] for event in events}
    files = [(path, raw) for path, raw in raw_files(data) if path.name != "root.key"]
    files.append((server.log, server.log.read_bytes()))
    for where, secret in secrets.found + materials:
        for form in _forms(secret):
            for path, raw in files:
                assert form not in raw, f"{where} ({form[:12]!r}…) in {path}"


def test_a_crashing_server_leaves_no_core_dump_holding_the_root_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As after `ulimit -c unlimited` with the kernel's default core_pattern ("core", in the cwd).
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard != resource.RLIM_INFINITY or not Path("/proc/sys/kernel/core_pattern").read_text().startswith("core"):
        pytest.skip("core dumps are not written to the working directory here")
    paths = [str(Path(entry).resolve()) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))  # the server runs in tmp_path, to dump there
    monkeypatch.chdir(tmp_path)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    try:
        server = KeytrailServer(tmp_path / "data").start()
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    kms = server.client()
    kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["Arn"], Plaintext=b"in memory")
    assert server.stop(signal.SIGABRT) == -signal.SIGABRT
    root_key = (tmp_path / "data" / "root.key").read_bytes()
    dumps = {path.name: root_key in path.read_bytes() for path in tmp_path.glob("core*")}
    assert dumps == {}, f"core dumps (name: holds the root key): {dumps}"


def test_a_root_key_given_in_the_environment_never_reaches_the_children(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The children (consumer, detector, fsync helper) never need it, and unlike `serve` they stay
    # dumpable: their environment is readable in /proc by every process of the user, and in `ps e`.
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("PGPASSWORD", "unused-here")  # serve's alone, to reach a PostgreSQL key store
    server = KeytrailServer(tmp_path / "data", dev_clock=False).start()
    try:
        assert server.proc is not None
        children = eventually(lambda: len(kids := child_commands(server.proc.pid)) >= 3 and kids,  # type: ignore[union-attr]
                              what="the consumer, the detector and the fsync helper")
        environments = {b" ".join(args): Path(f"/proc/{pid}/environ").read_bytes() for pid, args in children.items()}
        leaks = [(command, name) for command, environment in environments.items()
                 for name in (ROOT_KEY_ENV, "PGPASSWORD") if f"{name}=".encode() in environment]
    finally:
        assert server.stop() == 0
    assert leaks == []
    assert not (tmp_path / "data" / "root.key").exists()


def test_analyze_of_a_data_dir_leaves_no_core_dump_holding_the_root_key(tmp_path: Path) -> None:
    # `analyze --data-dir` opens the key store as serve does: the root key and every key's material.
    if not Path("/proc/sys/kernel/core_pattern").read_text().startswith("core"):
        pytest.skip("core dumps are not written to the working directory here")
    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    server.client().create_key()
    assert server.stop() == 0
    # analyze, then a crash, in one process allowed to dump core in tmp_path
    crash = ("import os, resource, sys\n"
             "soft, hard = resource.getrlimit(resource.RLIMIT_CORE)\n"
             "resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))\n"
             f"sys.argv = ['keytrail', 'analyze', '--data-dir', {str(data)!r}]\n"
             "from keytrail.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "os.abort()\n")
    paths = [str(Path(entry).resolve()) for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    result = subprocess.run([sys.executable, "-c", crash], cwd=tmp_path, capture_output=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)}, check=False)
    assert result.returncode == -signal.SIGABRT, result.stderr
    root_key = (data / "root.key").read_bytes()
    dumps = {path.name: root_key in path.read_bytes() for path in tmp_path.glob("core*")}
    assert dumps == {}, f"core dumps (name: holds the root key): {dumps}"


_MARK = "SECRETMARK"
_B64_MARK = base64.b64encode(_MARK.encode() * 3).decode()
# (operation, body): secret-carrying members of the wrong type, size or form, which a client
# without boto3's own checks can send; none may come back in an error, the log or an event.
_MALFORMED: list[tuple[str, dict[str, Any]]] = [
    ("Encrypt", {"Plaintext": _MARK + "!not base64"}),
    ("Encrypt", {"Plaintext": [_MARK]}),
    ("Encrypt", {"Plaintext": {_MARK: _MARK}}),
    ("Encrypt", {"Plaintext": base64.b64encode(_MARK.encode() * 500).decode()}),
    ("Decrypt", {"CiphertextBlob": _B64_MARK}),
    ("GenerateMac", {"Message": _B64_MARK, "MacAlgorithm": "HMAC_SHA_256"}),
    ("VerifyMac", {"Message": _B64_MARK, "Mac": _B64_MARK, "MacAlgorithm": "HMAC_SHA_256"}),
    ("Sign", {"Message": base64.b64encode(_MARK.encode() * 1000).decode(), "SigningAlgorithm": "ECDSA_SHA_256"}),
    ("ImportKeyMaterial", {"ImportToken": _B64_MARK, "EncryptedKeyMaterial": _B64_MARK}),
    ("CreateCustomKeyStore", {"CustomKeyStoreName": "m", "CloudHsmClusterId": "cluster-abcdefghijk",
                              "TrustAnchorCertificate": "pem", "KeyStorePassword": _MARK + "\n" * 40}),
    ("CreateCustomKeyStore", {"CustomKeyStoreName": "x", "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
                              "XksProxyUriEndpoint": "https://xks.example.com", "XksProxyUriPath": "/kms/xks/v1",
                              "XksProxyConnectivity": "PUBLIC_ENDPOINT",
                              "XksProxyAuthenticationCredential": {"AccessKeyId": _MARK + "!",
                                                                   "RawSecretAccessKey": _MARK + "!"}}),
]


def test_malformed_secret_values_are_refused_without_being_echoed(tmp_path: Path) -> None:
    server = KeytrailServer(tmp_path / "data").start()
    try:
        key = server.client().create_key()["KeyMetadata"]["Arn"]
        answers = [_signed_post(server, operation, {"KeyId": key, **body}) for operation, body in _MALFORMED]
    finally:
        assert server.stop() == 0
    assert [status for status, _ in answers] == [400] * len(_MALFORMED), answers
    events = json.dumps(audit_events(tmp_path / "data"))
    for where, text in [*((f"answer {n}", body) for n, (_, body) in enumerate(answers)),
                        ("server log", server.log.read_text()), ("audit events", events)]:
        assert _MARK not in text and _B64_MARK[:16] not in text, f"{where}: {text[:300]}"


def _signed_post(server: KeytrailServer, operation: str, body: dict[str, Any]) -> tuple[int, str]:
    return signed_post_raw(server, operation, json.dumps(body).encode())


def signed_post_raw(server: KeytrailServer, operation: str, raw: bytes) -> tuple[int, str]:
    """alice's call of `operation` with the body `raw` as sent, signed: its status and answer."""
    request = AWSRequest("POST", server.endpoint + "/", data=raw, headers={
        "X-Amz-Target": f"TrentService.{operation}", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(PRINCIPALS["alice"][1], PRINCIPALS["alice"][2]), "kms", "us-east-1").add_auth(request)
    sent = urllib.request.Request(server.endpoint + "/", data=raw, headers=dict(request.headers.items()), method="POST")
    try:
        with urllib.request.urlopen(sent, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_passwords_in_serve_s_command_line_are_hidden_from_ps_while_it_runs(tmp_path: Path) -> None:
    # A command line is readable by every user of the machine (/proc/<pid>/cmdline), serve's too.
    with scratch_database() as database, private_mosquitto() as mqtt:
        password, broker_password = "db-" + os.urandom(8).hex(), "mq-" + os.urandom(8).hex()
        store = database_url(database).replace("postgres@", f"postgres:{password}@")  # trust: any password
        broker = mqtt.replace("mqtt://", f"mqtt://alarms:{broker_password}@")
        server = KeytrailServer(tmp_path / "data", "--store", store, "--mqtt", broker).start()
        try:
            assert server.proc is not None
            shown = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
            server.client().create_key()  # the store serves on with the URL as given
        finally:
            assert server.stop() == 0
    assert password.encode() not in shown and broker_password.encode() not in shown
    assert store.replace(password, "*" * len(password)).encode() in shown.split(b"\0")
    assert "command line" in server.log.read_text()  # still warned: readable until serve hid it, and in history


@pytest.mark.parametrize("command", [["root-key", "rotate", "--new-key", "NEW_KEY"], ["analyze"]])
def test_a_store_password_on_the_command_line_of_a_store_reader_is_hidden_from_ps(
        tmp_path: Path, command: list[str]) -> None:
    # The command line as `ps` shows it once the command ended (a store out of reach: port 1),
    # read in the same process: root-key rotate and analyze read the store for as long as it takes.
    password = "pw-" + os.urandom(8).hex()
    new_key = tmp_path / "new.key"
    new_key.write_bytes(os.urandom(32))
    args = [arg.replace("NEW_KEY", str(new_key)) for arg in command]
    run = ("import sys\nfrom pathlib import Path\nfrom keytrail.cli import main\n"
           "sys.argv = ['keytrail', *sys.argv[1:]]\n"
           "try:\n    main()\nexcept SystemExit:\n    pass\n"
           "sys.stdout.buffer.write(Path('/proc/self/cmdline').read_bytes())\n")
    store = f"postgresql://keytrail:{password}@127.0.0.1:1/keys"
    result = subprocess.run([sys.executable, "-c", run, *args, "--data-dir", str(tmp_path / "data"), "--store", store],
                            capture_output=True, timeout=120, check=False)
    assert password.encode() not in result.stdout, result.stderr
    assert store.replace(password, "*" * len(password)).encode() in result.stdout.split(b"\0"), result.stdout
