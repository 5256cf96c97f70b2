"""The servers under load: keytrail (`keytrail serve`, or N workers), moto_server, the ceiling.

Each target is started as its own process, loaded with the same key policy and data through
boto3, and signs fresh requests for every run (`Target.sign`).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from bench.fixtures import (
    APP,
    CONTEXT,
    DENIED,
    KEY_POLICY,
    OPERATIONS,
    OWNER,
    PLAINTEXT,
    Principal,
    operation_params,
    write_principals,
)
from bench.presign import Signer, write_requests
from bench.procs import SERVE_HTTP_PROTOCOL, Process, free_port

__all__ = ["Target", "exchange", "start_ceiling", "start_keytrail", "start_moto"]

ROOT = Path(__file__).resolve().parents[1]
_ALIAS = "alias/orders"


@dataclass
class Target:
    """A started server with its keys; `sign` writes a request file for one operation."""

    name: str
    kind: str  # keytrail | moto | ceiling
    process: Process
    port: int
    key_ids: list[str] = field(default_factory=lambda: [_ALIAS])
    blobs: list[bytes] = field(default_factory=lambda: [b"\0" * 64])
    dev_credentials: bool = False  # moto: any key is accepted, policies are not evaluated

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def operations(self) -> tuple[str, ...]:
        if self.kind == "ceiling":
            return ("Encrypt",)  # the ceiling answers every operation the same way
        return OPERATIONS if self.kind == "keytrail" else OPERATIONS[:3]

    def signer(self, who: Principal) -> Signer:
        return Signer(self.endpoint, who[1], who[2])

    def sign(self, operation: str, path: Path, limit: int = 1000) -> Path:
        """Fresh signatures (valid 5 minutes) for `operation`, over up to `limit` keys."""
        signer = self.signer(DENIED if operation == "Decrypt (denied)" else APP)
        encrypting = operation in ("Encrypt", "GenerateDataKey")
        items: Sequence[Any] = self.key_ids[:limit] if encrypting else self.blobs[:limit]
        raws = []
        for item in items:
            name, params = operation_params(operation, item if encrypting else "", b"" if encrypting else item)
            raws.append(signer.raw(name, params))
        return write_requests(path, raws)

    def expected_status(self, operation: str) -> int:
        return 400 if operation == "Decrypt (denied)" else 200

    def pids(self) -> list[int]:
        return self.process.pids()


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send one raw HTTP/1.1 request; (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536) or _closed()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                       if k.strip().lower() == "content-length"), 0)
        while len(body) < length:
            body += sock.recv(65536) or _closed()
        return int(lines[0].split()[1]), body


def _closed() -> bytes:
    raise ConnectionError("the server closed the connection")


def _python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def _client(endpoint: str, who: Principal) -> Any:
    return boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=who[1],
                        aws_secret_access_key=who[2], config=Config(retries={"max_attempts": 1}))


def load_keys(target: Target) -> None:
    """Create the benchmark key (realistic policy, alias) and one ciphertext, through boto3."""
    owner = _client(target.endpoint, OWNER)
    arn = owner.create_key(Description="keytrail bench", Policy=json.dumps(KEY_POLICY))["KeyMetadata"]["Arn"]
    owner.create_alias(AliasName=_ALIAS, TargetKeyId=arn)
    blob = _client(target.endpoint, APP).encrypt(KeyId=_ALIAS, Plaintext=PLAINTEXT, EncryptionContext=CONTEXT)
    target.key_ids, target.blobs = [_ALIAS], [blob["CiphertextBlob"]]


def load_extra_keys(target: Target, count: int) -> list[tuple[str, bytes]]:
    """`count` more keys with the benchmark policy, and one ciphertext of each: (key ARN, blob)."""
    owner, app = _client(target.endpoint, OWNER), _client(target.endpoint, APP)
    pairs = []
    for _ in range(count):
        arn = owner.create_key(Description="keytrail bench", Policy=json.dumps(KEY_POLICY))["KeyMetadata"]["Arn"]
        blob = app.encrypt(KeyId=arn, Plaintext=PLAINTEXT, EncryptionContext=CONTEXT)["CiphertextBlob"]
        pairs.append((arn, blob))
    return pairs


@functools.cache
def serve_accepts(option: str) -> bool:
    """Whether this build's `keytrail serve` knows the flag `option` (one that takes no value;
    hidden options included): click refuses an unknown option before it acts on --help."""
    done = subprocess.run([sys.executable, "-m", "keytrail", "serve", option, "--help"], capture_output=True,
                          env=_python_env(), cwd=ROOT, timeout=60, check=False)
    return done.returncode == 0


def _audit_off_switch() -> tuple[list[str], dict[str, str]]:
    """How to turn the audit trail off: `--no-audit` where serve has it, and always
    `KEYTRAIL_AUDIT=off` (the switch proposed for cli/node.py)."""
    return (["--no-audit"] if serve_accepts("--no-audit") else []), {"KEYTRAIL_AUDIT": "off"}


def keytrail_args(data_dir: Path, port: int, principals: Path, kafka: str | None, mqtt: str | None) -> list[str]:
    args = [sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data_dir), "--port", str(port),
            "--principals", str(principals)]
    return args + (["--kafka", kafka] if kafka else []) + (["--mqtt", mqtt] if mqtt else [])


def start_keytrail(work: Path, name: str, *, kafka: str | None = None, mqtt: str | None = None, audit: bool = True,
                   data_dir: Path | None = None, workers: int = 1, load: bool = True,
                   extra: Sequence[str] = ()) -> Target:
    """`keytrail serve` (or, for workers > 1, bench/workers.py under uvicorn's supervisor)."""
    port, principals = free_port(), write_principals(work / "principals.toml")
    data_dir = data_dir or work / f"{name}-data"
    flags, switch = ([], {}) if audit else _audit_off_switch()
    env = _python_env(switch)
    if workers == 1:
        args = keytrail_args(data_dir, port, principals, kafka, mqtt) + flags + list(extra)
    else:
        from bench.workers import worker_command
        args, worker_env = worker_command(data_dir, port, principals, kafka, workers)
        env.update(worker_env)
    process = Process(name, args, work / f"{name}.log", env=env, cwd=ROOT)
    target = Target(name, "keytrail", process, port)
    try:
        process.ready(port, "/_keytrail/health", timeout=180)
        if load:
            load_keys(target)
    except BaseException:
        process.stop()
        raise
    return target


def start_moto(work: Path) -> Target:
    port = free_port()
    binary = Path(sys.executable).with_name("moto_server")
    process = Process("moto", [str(binary), "-H", "127.0.0.1", "-p", str(port)], work / "moto.log",
                      env=_python_env())
    process.ready(port)
    target = Target("moto", "moto", process, port, dev_credentials=True)
    load_keys(target)
    return target


def start_ceiling(work: Path) -> Target:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "bench.bare_asgi:app", "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", SERVE_HTTP_PROTOCOL, "--no-access-log", "--log-level", "warning",
            "--no-proxy-headers"]  # the stack as serve runs it
    process = Process("ceiling", args, work / "ceiling.log", env=_python_env(), cwd=ROOT)
    process.ready(port)
    return Target("ceiling", "ceiling", process, port)
