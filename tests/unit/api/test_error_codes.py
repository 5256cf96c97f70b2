"""Every error an operation answers is one AWS's model lists for that operation (botocore's
`error_shapes`) or one AWS answers for any operation ("Common Errors"), with AWS's HTTP status.

Each operation is driven through the ASGI app into the failures a caller can cause: unknown,
malformed and alias key ids, every key state and key usage, a made-up grant token, a denial, DryRun
and the members keytrail does not serve. A typed SDK (Go v2, Rust, JS v3) makes of any other code an
unmodeled error its callers do not catch."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.model import ListShape, Shape, StructureShape
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keytrail.api import sigv4
from keytrail.api.app import ApiSettings, KmsApp
from keytrail.api.credentials import CredentialStore
from keytrail.api.protocol import service_model
from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.model import CallRecord
from keytrail.kms.operations import OPERATIONS
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.support.asgi import post_kms

ACCOUNT = "111122223333"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
_AUTHORIZATION = (f"AWS4-HMAC-SHA256 Credential={ACCOUNT}/20260101/us-east-1/kms/aws4_request, "
                  "SignedHeaders=host;x-amz-date, Signature=00").encode()

# Answered for any operation: the "Common Errors" of the KMS API reference, those of the JSON
# protocol and SigV4, and KMSInternalException (which every operation lists).
_COMMON = frozenset({
    "AccessDeniedException", "ValidationException", "ThrottlingException", "SerializationException",
    "UnknownOperationException", "UnrecognizedClientException", "InvalidSignatureException",
    "IncompleteSignatureException", "MissingAuthenticationTokenException", "KMSInternalException",
})

# Codes answered by a keytrail operation whose model does not list them, each for a reason: a
# new one fails this test until it is either fixed or named here.
_KEYTRAIL_ONLY = {
    # A grant token is checked for every operation that takes one ("You can submit a grant token to
    # any AWS KMS grant operation"); DescribeKey's error list alone omits InvalidGrantTokenException.
    ("DescribeKey", "InvalidGrantTokenException"): "grant tokens",
    # serve --no-audit keeps no usage to answer from.
    ("GetKeyLastUsage", "UnsupportedOperationException"): "no usage tracking",
    # alias/aws/… names: AWS's answer for UpdateAlias and DeleteAlias is not documented.
    ("UpdateAlias", "InvalidAliasNameException"): "reserved alias names",
    ("DeleteAlias", "InvalidAliasNameException"): "reserved alias names",
    # What keytrail does not serve: attested enclaves, AWS service principals, external key stores.
    ("Decrypt", "UnsupportedOperationException"): "Recipient",
    ("GenerateDataKey", "UnsupportedOperationException"): "Recipient",
    ("DeriveSharedSecret", "UnsupportedOperationException"): "Recipient",
    ("CreateGrant", "UnsupportedOperationException"): "service principals",
    ("ListRetirableGrants", "UnsupportedOperationException"): "service principals",
    ("CreateCustomKeyStore", "UnsupportedOperationException"): "external key stores",
}

# The HTTP status of each code that is not 400 (the API reference's "HTTP Status Code").
_STATUS = {
    "KMSInternalException": 500, "DependencyTimeoutException": 500, "KeyUnavailableException": 500,
    "DryRunOperationException": 412, "MissingAuthenticationTokenException": 403,
}

# Key ids a caller can name besides the keys of `_KEYS`.
_NAMED = {
    "unknown": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/11111111-2222-3333-4444-555555555555",
    "malformed": "bogus-key", "missing-alias": "alias/missing", "alias": "alias/symmetric",
}
# CreateKey arguments of the keys each operation meets, by name.
_KEYS: dict[str, dict[str, Any]] = {
    "symmetric": {}, "disabled": {}, "pending-deletion": {}, "pending-import": {"Origin": "EXTERNAL"},
    "multi-region": {"MultiRegion": True},
    "rsa": {"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT"},
    "ecc-sign": {"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"},
    "ml-dsa": {"KeySpec": "ML_DSA_44", "KeyUsage": "SIGN_VERIFY"},
    "hmac": {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"},
    "agreement": {"KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"},
    "ml-kem": {"KeySpec": "ML_KEM_768", "KeyUsage": "ENCAPSULATE_DECAPSULATE"},
}
_RECIPIENT = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": "YQ=="}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Gate:
    """Allows every call unless told to deny; as audit sink, drops the records."""

    deny = False

    def authorize(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(Verdict.IMPLICIT_DENY if self.deny else Verdict.ALLOW)

    async def record(self, call: CallRecord) -> None:
        return None


@dataclass
class World:
    """An app over a fresh store, with a key in each state and usage, and what refers to them."""

    app: KmsApp
    gate: Gate
    keys: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, str] = field(default_factory=dict)
    grants: dict[str, str] = field(default_factory=dict)


async def _call(world: World, operation: str, body: Any, deny: bool = False) -> tuple[int, dict[str, Any]]:
    """The status and JSON body the app answers to one signed `POST /`."""
    messages = [{"type": "http.request", "body": orjson.dumps(body), "more_body": False}]
    world.gate.deny = deny
    try:
        sent = await post_kms(world.app, operation, messages, _AUTHORIZATION)
    finally:
        world.gate.deny = False
    return sent[0]["status"], orjson.loads(sent[1]["body"] or b"{}")


async def _ok(world: World, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await _call(world, operation, body)
    assert status == 200, answer
    return answer


async def _world(tmp_path: Path) -> World:
    gate = Gate()
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    service = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=gate, authorizer=gate))
    world = World(KmsApp(service, CredentialStore(None, dev_credentials=True), ApiSettings()), gate)
    for name, spec in _KEYS.items():
        world.keys[name] = (await _ok(world, "CreateKey", spec))["KeyMetadata"]["Arn"]
    for name in ("symmetric", "disabled", "pending-deletion"):
        encrypted = await _ok(world, "Encrypt", {"KeyId": world.keys[name], "Plaintext": _b64(b"secret")})
        world.blobs[name] = encrypted["CiphertextBlob"]
    for name, arn in world.keys.items():
        status, answer = await _call(world, "CreateGrant", {"KeyId": arn, "GranteePrincipal": ROOT,
                                                            "Operations": ["DescribeKey"]})
        if status == 200:
            world.grants[name] = answer["GrantId"]
    await _ok(world, "DisableKey", {"KeyId": world.keys["disabled"]})
    await _ok(world, "ScheduleKeyDeletion", {"KeyId": world.keys["pending-deletion"], "PendingWindowInDays": 7})
    await _ok(world, "CreateAlias", {"AliasName": "alias/symmetric", "TargetKeyId": world.keys["symmetric"]})
    return world


def _public_key() -> str:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return _b64(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


# Members an operation needs to get past validation to its key, beyond those the model requires.
_MEMBERS: dict[str, dict[str, Any]] = {
    "CreateGrant": {"GranteePrincipal": ROOT, "Operations": ["Encrypt"]},
    "GenerateDataKey": {"KeySpec": "AES_256"}, "GenerateDataKeyWithoutPlaintext": {"KeySpec": "AES_256"},
    "GenerateRandom": {"NumberOfBytes": 16}, "ListRetirableGrants": {"RetiringPrincipal": ROOT},
    "UpdatePrimaryRegion": {"PrimaryRegion": "us-west-2"}, "RetireGrant": {"GrantToken": "made-up"},
    "Sign": {"SigningAlgorithm": "ECDSA_SHA_256"}, "Verify": {"SigningAlgorithm": "ECDSA_SHA_256"},
    "GenerateMac": {"MacAlgorithm": "HMAC_SHA_256"}, "VerifyMac": {"MacAlgorithm": "HMAC_SHA_256"},
    "GetParametersForImport": {"WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"},
    "ReplicateKey": {"ReplicaRegion": "us-west-2"},
}
_KEY_MEMBERS = ("KeyId", "SourceKeyId", "DestinationKeyId", "TargetKeyId")
_STRINGS = {
    "AliasName": "alias/new-name", "GrantId": "a" * 64, "GranteePrincipal": ROOT, "RetiringPrincipal": ROOT,
    "PolicyName": "default", "ReplicaRegion": "us-west-2", "CustomKeyStoreId": "cks-1234567890abcdef0",
    "CustomKeyStoreName": "store", "Policy": json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"}]}),
}


def _value(name: str, shape: Shape) -> Any:
    """A value of `shape` the model accepts for member `name`."""
    kind = shape.type_name
    if kind == "string":
        return shape.enum[0] if shape.enum else _STRINGS.get(name, "x")
    if kind == "blob":
        return _b64(b"x" * 32)
    if kind in ("integer", "long"):
        return int(shape.metadata.get("min", 1))
    if kind == "list":
        return [_value(name, shape.member)]
    if kind == "structure":
        return _filled(shape)
    if kind == "map":
        return {"a": "b"}
    return True if kind == "boolean" else 2e9


def _filled(shape: StructureShape) -> dict[str, Any]:
    if "TagKey" in shape.members:
        return {"TagKey": "k", "TagValue": "v"} if "TagValue" in shape.members else {"TagKey": "k"}
    return {name: _value(name, shape.members[name]) for name in shape.required_members}


def _base(world: World, operation: str, name: str, key: str, public_key: str) -> dict[str, Any]:
    """A request of `operation` that names `key` wherever it takes a key, else valid."""
    members = service_model().operation_model(operation).input_shape.members
    body = {**_filled(service_model().operation_model(operation).input_shape), **_MEMBERS.get(operation, {})}
    body.update({member: key for member in _KEY_MEMBERS if member in members})
    if "CiphertextBlob" in members:
        body["CiphertextBlob"] = world.blobs.get(name, world.blobs["symmetric"])
    if operation == "DeriveSharedSecret":
        body["PublicKey"] = public_key
    if operation in ("RetireGrant", "RevokeGrant") and name in world.grants:
        body.pop("GrantToken", None)
        body["GrantId"] = world.grants[name]
    return body


def _refused_members(operation: str) -> Iterator[dict[str, Any]]:
    """The members of `operation` keytrail does not serve, and names a caller may not use."""
    members = service_model().operation_model(operation).input_shape.members
    if "Recipient" in members:
        yield {"Recipient": _RECIPIENT}
    for member in ("GranteeServicePrincipal", "RetiringServicePrincipal"):
        if member in members:
            yield {member: "kms.amazonaws.com"}
    if "AliasName" in members:
        yield {"AliasName": "alias/aws/reserved"}
        yield {"AliasName": "alias/"}
    if "Marker" in members:
        yield {"Marker": "made-up"}
    if "GrantId" in members:
        yield {"GrantId": "made-up"}
    if "ImportToken" in members:
        yield {"ImportToken": _b64(b"t" * 40)}
    if operation == "CreateCustomKeyStore":
        yield {"CustomKeyStoreType": "EXTERNAL_KEY_STORE"}


def _requests(world: World, operation: str) -> Iterator[tuple[dict[str, Any], bool]]:
    """(body, denied) of each failure a caller can cause."""
    members = service_model().operation_model(operation).input_shape.members
    public_key = _public_key()
    for name, key in {**world.keys, **_NAMED}.items():
        body = _base(world, operation, name, key, public_key)
        yield body, False
        yield body, True
        if "DryRun" in members:
            yield {**body, "DryRun": True}, False
            yield {**body, "DryRun": True}, True
        if "GrantTokens" in members:
            yield {**body, "GrantTokens": ["made-up"]}, False
    for refused in _refused_members(operation):
        body = _base(world, operation, "symmetric", world.keys["symmetric"], public_key)
        for member in refused:  # a service principal instead of the principal, not beside it
            body.pop(member.replace("ServicePrincipal", "Principal"), None)
        yield {**body, **refused}, False


def _allowed(operation: str) -> frozenset[str]:
    model = service_model().operation_model(operation)
    dry_run = {"DryRunOperationException"} if "DryRun" in model.input_shape.members else set()
    return frozenset({shape.name for shape in model.error_shapes} | _COMMON | dry_run)


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
async def test_every_error_an_operation_answers_is_one_aws_lists_for_it(tmp_path: Path, operation: str) -> None:
    world = await _world(tmp_path)
    outside: dict[str, dict[str, Any]] = {}
    answered: set[tuple[str, int]] = set()
    for body, denied in _requests(world, operation):
        status, answer = await _call(world, operation, body, denied)
        if status == 200:
            continue
        code = answer["__type"]
        answered.add((code, status))
        if code not in _allowed(operation) and (operation, code) not in _KEYTRAIL_ONLY:
            outside[code] = {"request": body, "denied": denied, "message": answer.get("message")}
    assert outside == {}
    assert {(code, status) for code, status in answered if status != _STATUS.get(code, 400)} == set()
    assert "KMSInternalException" not in {code for code, _ in answered}  # no caller's failure is internal


def _defined() -> list[type[errors.KmsError]]:
    """The errors of the exception tree and of SigV4 (the base class is never raised itself)."""
    found = [*vars(errors).values(), *vars(sigv4).values()]
    return [cls for cls in found if isinstance(cls, type) and issubclass(cls, errors.KmsError)
            and cls is not errors.KmsError]


def test_every_code_keytrail_defines_is_one_aws_answers() -> None:
    """The exception tree names no code that is neither in the model nor common to all operations."""
    model = service_model()
    modeled = {shape.name for op in model.operation_names for shape in model.operation_model(op).error_shapes}
    assert {cls.code for cls in _defined()} <= modeled | _COMMON


def test_every_code_keytrail_defines_has_aws_status() -> None:
    assert {cls.code: cls.status for cls in _defined()} == {cls.code: _STATUS.get(cls.code, 400) for cls in _defined()}


# A blob past this would make a body over the app's 256 KiB (the attestation document's 262,144
# bytes, as base64): refused for its size before any member is read.
_LARGEST_BLOB_SENT = 128 * 1024


def _broken_scalar(shape: Shape) -> Iterator[tuple[Any, str]]:
    """(value, the words of the constraint it breaks) for each bound, enum and pattern of a
    string, blob or number `shape`."""
    meta, kind = shape.metadata, shape.type_name
    if kind == "string" and shape.enum:
        yield "NOT_IN_THE_ENUM", f"Member must satisfy enum value set: [{', '.join(shape.enum)}]"
        return
    if kind in ("integer", "long"):
        if "min" in meta:
            yield meta["min"] - 1, f"Member must have value greater than or equal to {meta['min']}"
        if "max" in meta:
            yield meta["max"] + 1, f"Member must have value less than or equal to {meta['max']}"
        return
    as_sent = (lambda size: "a" * size) if kind == "string" else (lambda size: _b64(b"a" * size))
    if meta.get("min", 0) > 0:
        yield as_sent(meta["min"] - 1), f"Member must have length greater than or equal to {meta['min']}"
    if "max" in meta and (kind == "string" or meta["max"] < _LARGEST_BLOB_SENT):
        yield as_sent(meta["max"] + 1), f"Member must have length less than or equal to {meta['max']}"
    if "pattern" in meta:  # U+0100 is in no class of any pattern of the model
        broken = "\u0100" * max(meta.get("min", 1), 1)
        yield broken, f"Member must satisfy regular expression pattern: {meta['pattern']}"


def _broken(shape: Shape, path: str) -> Iterator[tuple[Any, str, str]]:
    """(value, its camelCase path, the words of the constraint it breaks) for each constraint of
    `shape` and of the members and items within it."""
    if isinstance(shape, StructureShape):
        for name, member in shape.members.items():
            for value, where, words in _broken(member, f"{path}.{name[:1].lower()}{name[1:]}"):
                yield {**_filled(shape), name: value}, where, words
    elif isinstance(shape, ListShape):
        meta = shape.metadata
        if meta.get("min", 0) > 0:
            yield [], path, f"Member must have length greater than or equal to {meta['min']}"
        if "max" in meta:
            yield [_value(path, shape.member)] * (meta["max"] + 1), path, \
                f"Member must have length less than or equal to {meta['max']}"
        for value, where, words in _broken(shape.member, f"{path}.1.member"):
            yield [value], where, words
    else:
        for value, words in _broken_scalar(shape):
            yield value, path, words


async def test_every_constraint_of_the_model_is_answered_in_aws_words(tmp_path: Path) -> None:
    """Each length, range, enum and pattern botocore's model puts on a member of any operation, at
    any depth (`tags.1.member.tagKey`), broken in a request that is otherwise valid, is
    ValidationException `N validation error(s) detected: Value … at '<path>' failed to satisfy
    constraint: <the constraint>`, before the caller's permission is asked (every call here is denied)."""
    world = await _world(tmp_path)
    public_key = _public_key()
    unanswered: dict[str, Any] = {}
    for operation in sorted(OPERATIONS):
        shape = service_model().operation_model(operation).input_shape
        for name, member in shape.members.items():
            for value, where, words in _broken(member, f"{name[:1].lower()}{name[1:]}"):
                body = {**_base(world, operation, "symmetric", world.keys["symmetric"], public_key), name: value}
                status, answer = await _call(world, operation, body, deny=True)
                wanted = f" at '{where}' failed to satisfy constraint: {words}"
                message = answer.get("message", "")
                if (status, answer.get("__type")) != (400, "ValidationException") or wanted not in message \
                        or " validation error" not in message:
                    unanswered[f"{operation} {where}: {words}"] = (status, answer)
    assert unanswered == {}


_UNKNOWN_KEY = _NAMED["unknown"]
# A lone UTF-16 surrogate in each kind of string a caller writes: as a value, a tag's key or value,
# inside a policy document, in an alias name, as an encryption context's key or value.
_LONE_SURROGATES: list[tuple[str, dict[str, Any]]] = [
    ("CreateKey", {"Description": "x\ud800y"}), ("CreateKey", {"Tags": [{"TagKey": "\udc00", "TagValue": "v"}]}),
    ("CreateKey", {"Tags": [{"TagKey": "k", "TagValue": "\ud800"}]}),
    ("CreateKey", {"Policy": '{"Version": "\ud800"}'}),
    ("CreateAlias", {"AliasName": "alias/\ud800", "TargetKeyId": _UNKNOWN_KEY}),
    ("Encrypt", {"KeyId": _UNKNOWN_KEY, "Plaintext": "eA==", "EncryptionContext": {"\ud800": "v"}}),
    ("Encrypt", {"KeyId": _UNKNOWN_KEY, "Plaintext": "eA==", "EncryptionContext": {"k": "\udc00"}}),
]


async def test_a_lone_surrogate_in_any_string_is_a_serialization_error(tmp_path: Path) -> None:
    """RFC 8259 lets `"\\ud800"` through its grammar, botocore sends one for a Python string that
    holds it, and AWS's answer is not documented: the request is SerializationException, whatever
    the member, as no such text can be stored, logged or answered as UTF-8 (docs/api-compatibility.md)."""
    world = await _world(tmp_path)
    for operation, body in _LONE_SURROGATES:
        messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
        sent = await post_kms(world.app, operation, messages, _AUTHORIZATION)
        assert (sent[0]["status"], orjson.loads(sent[1]["body"])) == (
            400, {"__type": "SerializationException", "message": "The request body is not valid JSON."}), body
