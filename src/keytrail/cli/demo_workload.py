"""The scripted story `keytrail demo` tells through boto3: principals, keys, a quarter of traffic.

An admin creates five keys; an application role does envelope encryption (GenerateDataKey, local
AES-GCM with the data key, Decrypt); a partner in another account uses a key whose policy trusts
everyone and is denied an order's data key; a key still in use is scheduled for deletion; one key
is never used. The dev clock then moves 91 days so the unused key crosses the 90-day rule, and
the admin looks the key up.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["ACCOUNT", "DemoError", "DemoPrincipal", "DemoServer", "Workload", "demo_principals",
           "write_principals"]

ACCOUNT = "111122223333"
PARTNER_ACCOUNT = "444455556666"
REGION = "us-east-1"
DAY = 86_400.0
# Alarms the story raises before the clock moves (unused-key needs 90 idle days).
FIRST_DAY_RULES = ("unauthorized-decrypt", "permissive-key", "key-deletion-in-use")


class DemoError(Exception):
    """The demo cannot go on; the message is the one line the user sees."""


class DemoServer(Protocol):
    """What the story needs from the running server besides its KMS API."""

    endpoint: str

    def advance(self, seconds: float) -> None: ...

    def wait_for_alarms(self, what: str, ready: Callable[[list[dict[str, Any]]], bool]) -> None: ...


@dataclass(frozen=True)
class DemoPrincipal:
    """One principals-file entry: who calls, with which key pair and identity policy."""

    name: str
    arn: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    actions: tuple[str, ...]
    session_name: str | None = None

    @property
    def caller_arn(self) -> str:
        """The ARN CloudTrail names as the caller (a role calls as its assumed-role session)."""
        if self.session_name is None:
            return self.arn
        account, role = self.arn.split(":")[4], self.arn.rsplit("/", 1)[-1]
        return f"arn:aws:sts::{account}:assumed-role/{role}/{self.session_name}"


def _access_key(prefix: str) -> str:
    return prefix + secrets.token_hex(8).upper()


def demo_principals() -> dict[str, DemoPrincipal]:
    """An admin, the application's role and an outside partner, each with a fresh key pair."""
    crypto = ("kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey")
    entries = [
        DemoPrincipal("admin", f"arn:aws:iam::{ACCOUNT}:user/admin", _access_key("AKIA"),
                      secrets.token_urlsafe(30), ("kms:*",)),
        DemoPrincipal("app", f"arn:aws:iam::{ACCOUNT}:role/orders-service", _access_key("ASIA"),
                      secrets.token_urlsafe(30), crypto, session_name="orders-api"),
        DemoPrincipal("partner", f"arn:aws:iam::{PARTNER_ACCOUNT}:user/partner-etl", _access_key("AKIA"),
                      secrets.token_urlsafe(30), crypto),
    ]
    return {entry.name: entry for entry in entries}


def write_principals(path: Path, principals: dict[str, DemoPrincipal]) -> Path:
    """The principals file (TOML, docs/principals.md), mode 0600: it holds secrets."""
    lines = ["# keytrail demo principals: see docs/principals.md"]
    for entry in principals.values():
        policy = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": list(entry.actions), "Resource": "*"}]}
        lines += ["", "[[principal]]", f'arn = "{entry.arn}"', f'access_key_id = "{entry.access_key_id}"',
                  f'secret_access_key = "{entry.secret_access_key}"']
        if entry.session_name:
            lines.append(f'session_name = "{entry.session_name}"')
        lines.append(f"policies = ['''{json.dumps(policy)}''']")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    except OSError as error:
        # A full disk left it empty, and the data dir then "not empty" to the next run of the demo.
        path.unlink(missing_ok=True)
        raise DemoError(f"cannot write the principals file {path}: {error.strerror or error}") from None
    return path


def _public_policy() -> str:
    """A key policy a hurried admin might write: anyone may use the key (no condition)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Partner access", "Effect": "Allow", "Principal": "*",
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*"},
    ]})


@dataclass(frozen=True)
class Envelope:
    """A record encrypted locally under a data key; only the encrypted data key goes to KMS."""

    encrypted_key: bytes
    nonce: bytes
    ciphertext: bytes
    context: dict[str, str]


class Workload:
    """Drives the story against a running server; counts every KMS call it makes."""

    def __init__(self, server: DemoServer, principals: dict[str, DemoPrincipal]) -> None:
        self.server = server
        self.principals = principals
        self.clients = {name: self._client(entry) for name, entry in principals.items()}
        self.calls = 0
        self.keys: dict[str, str] = {}  # alias -> key ARN
        self.days = 0  # simulated days the dev clock has moved

    def _client(self, entry: DemoPrincipal) -> Any:
        # boto3 loads with the story, not with `keytrail demo --help` (commands.py).
        import boto3
        from botocore.config import Config

        return boto3.client(
            "kms", endpoint_url=self.server.endpoint, region_name=REGION, aws_access_key_id=entry.access_key_id,
            aws_secret_access_key=entry.secret_access_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=60),
        )

    def call(self, who: str, operation: str, **params: Any) -> dict[str, Any]:
        """One KMS call as `who`; a refusal the story does not expect stops the demo."""
        from botocore.exceptions import BotoCoreError, ClientError

        self.calls += 1
        try:
            return dict(getattr(self.clients[who], operation)(**params))
        except ClientError as error:
            raise DemoError(f"{who} {operation} failed: {error}") from None
        except BotoCoreError as error:  # the server went away mid-story
            raise DemoError(f"{who} {operation}: {error}") from None

    def refused(self, who: str, operation: str, **params: Any) -> str:
        """One KMS call the story expects to be refused; returns the AWS error code."""
        from botocore.exceptions import BotoCoreError, ClientError

        self.calls += 1
        try:
            getattr(self.clients[who], operation)(**params)
        except ClientError as error:
            return str(error.response["Error"]["Code"])
        except BotoCoreError as error:
            raise DemoError(f"{who} {operation}: {error}") from None
        raise DemoError(f"{who} {operation} was expected to be refused but succeeded")

    def run(self) -> None:
        """The whole story: day one, a quarter later, then past the 90-day unused-key threshold."""
        self.create_keys()
        self.first_day()
        self.server.wait_for_alarms("the first day's alarms", _rules_seen(FIRST_DAY_RULES))
        self._advance(89)
        self.quarter_later()
        self._advance(2)
        self.server.wait_for_alarms("the unused-key alarm", _rules_seen(("unused-key",)))
        # The on-call admin looks up the key the alarm names (no cryptographic use: it stays
        # unused). Without a call after the alarm, the log ended two days before it, and so did the
        # report's period, which left the alarm out though the demo prints it.
        self.call("admin", "describe_key", KeyId="alias/archive-2019")

    def _advance(self, days: int) -> None:
        self.server.advance(days * DAY)
        self.days += days

    def create_keys(self) -> None:
        """The admin's keys: one per use, plus a forgotten one and a shared one."""
        for alias, description in (("orders", "order records (envelope encryption)"),
                                   ("payments", "card tokens"), ("legacy-reports", "old reporting job"),
                                   ("archive-2019", "archive nobody reads any more"),
                                   ("partner-share", "files exchanged with a partner")):
            metadata = self.call("admin", "create_key", Description=description,
                                 Tags=[{"TagKey": "team", "TagValue": "demo"}])["KeyMetadata"]
            self.call("admin", "create_alias", AliasName=f"alias/{alias}", TargetKeyId=metadata["KeyId"])
            self.keys[alias] = metadata["Arn"]
        self.call("admin", "put_key_policy", KeyId=self.keys["partner-share"], PolicyName="default",
                  Policy=_public_policy())

    def first_day(self) -> None:
        """Normal traffic, the partner's probe, and a deletion of a key still in use."""
        orders = [self.seal("orders", f"order {n}".encode(), {"table": "orders"}) for n in range(12)]
        for envelope in orders[:8]:
            self.open(envelope)
        self.direct("payments", 6)
        legacy = [self.direct_blob("legacy-reports", f"report {n}".encode()) for n in range(3)]
        self.partner_share(3)
        for envelope in orders[:3]:  # the partner tries to read orders it was never given
            self.refused("partner", "decrypt", CiphertextBlob=envelope.encrypted_key,
                         EncryptionContext=envelope.context, KeyId=self.keys["orders"])
        self.call("admin", "schedule_key_deletion", KeyId=self.keys["legacy-reports"], PendingWindowInDays=7)
        self.refused("app", "decrypt", CiphertextBlob=legacy[0])  # the reporting job still runs

    def quarter_later(self) -> None:
        """89 days on: the app still works; the partner probes again (its denial marks the detector's
        progress: once that alarm is out, every earlier use has been seen)."""
        for envelope in [self.seal("orders", b"order Q2", {"table": "orders"}) for _ in range(4)]:
            self.open(envelope)
        self.direct("payments", 3)
        self.partner_share(2)
        envelope = self.seal("orders", b"order Q2 late", {"table": "orders"})
        self.refused("partner", "decrypt", CiphertextBlob=envelope.encrypted_key,
                     EncryptionContext=envelope.context, KeyId=self.keys["orders"])
        orders = self.keys["orders"]
        self.server.wait_for_alarms("the detector to catch up", lambda alarms: sum(
            a["rule"] == "unauthorized-decrypt" and a["keyArn"] == orders for a in alarms) >= 2)

    def seal(self, alias: str, record: bytes, context: dict[str, str]) -> Envelope:
        """Envelope encryption: a fresh data key from KMS, AES-256-GCM locally, plaintext key dropped."""
        answer = self.call("app", "generate_data_key", KeyId=f"alias/{alias}", KeySpec="AES_256",
                           EncryptionContext=context)
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(answer["Plaintext"]).encrypt(nonce, record, json.dumps(context).encode())
        return Envelope(answer["CiphertextBlob"], nonce, sealed, context)

    def open(self, envelope: Envelope) -> bytes:
        """Decrypt the data key with KMS, then the record locally."""
        data_key = self.call("app", "decrypt", CiphertextBlob=envelope.encrypted_key,
                             EncryptionContext=envelope.context)["Plaintext"]
        aad = json.dumps(envelope.context).encode()
        return AESGCM(data_key).decrypt(envelope.nonce, envelope.ciphertext, aad)

    def direct_blob(self, alias: str, secret: bytes) -> bytes:
        blob: bytes = self.call("app", "encrypt", KeyId=f"alias/{alias}", Plaintext=secret)["CiphertextBlob"]
        return blob

    def direct(self, alias: str, count: int) -> None:
        """Small secrets encrypted and read back directly with Encrypt/Decrypt."""
        for n in range(count):
            blob = self.direct_blob(alias, f"tok_{n:04d}".encode())
            if self.call("app", "decrypt", CiphertextBlob=blob)["Plaintext"] != f"tok_{n:04d}".encode():
                raise DemoError(f"decrypt under alias/{alias} returned the wrong plaintext")

    def partner_share(self, count: int) -> None:
        """The partner (another account) encrypts with the shared key: the public policy lets it."""
        for n in range(count):
            blob = self.call("partner", "encrypt", KeyId=self.keys["partner-share"], Plaintext=b"file %d" % n)
            self.call("app", "decrypt", CiphertextBlob=blob["CiphertextBlob"])


def _rules_seen(rules: tuple[str, ...]) -> Callable[[list[dict[str, Any]]], bool]:
    def ready(alarms: list[dict[str, Any]]) -> bool:
        return set(rules) <= {alarm["rule"] for alarm in alarms}

    return ready
