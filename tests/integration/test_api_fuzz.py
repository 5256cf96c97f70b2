"""Bad input on every operation of the KMS model: each answer is a client error with an AWS error
type and a message, never a 500, a dropped connection or a hang.

For every operation botocore knows, two requests that would pass validation are built from the
model, one with the required members only and one with every member (a real key for the key
members, a real ciphertext for CiphertextBlob); then each member in turn is replaced by values of
the wrong type, out of range or absurd, and whole bodies that are not the operation's JSON object
are sent; all of it signed, over one keep-alive connection to a real `keytrail serve`.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.model import OperationModel, Shape

from tests.support.server import PRINCIPALS, KeytrailServer

pytestmark = pytest.mark.integration

_ALICE = Credentials(PRINCIPALS["alice"][1], PRINCIPALS["alice"][2])
_NOISE = random.Random(7)  # the same bytes every run
_BAD_VALUES: tuple[Any, ...] = (
    None, True, -1, 2**63, 1.5, "", "\u0000", "x" * 5000, "🔑" * 300, [], {}, {"a": {"b": [1, None]}},
    "not base64!",
    # a lone UTF-16 surrogate, escaped as json.dumps writes it: as a string, and as a map's key
    "x\ud800y", {"\udc00": "v"},
    # blobs of random bytes: ciphertexts, signatures, public keys, wrapped key material that parse as nothing
    *(base64.b64encode(_NOISE.randbytes(size)).decode() for size in (33, 600)),
)
# The key each operation gets (else the symmetric one), so the checks behind key usage are reached.
_KEY_FOR = {"Sign": "sign", "Verify": "sign", "GetPublicKey": "sign", "GenerateMac": "hmac", "VerifyMac": "hmac",
            "DeriveSharedSecret": "agree", "Encapsulate": "kem", "Decapsulate": "kem"}
_BAD_BODIES = (b"", b"null", b"[]", b'"text"', b"{", b"{\"a\":" * 200 + b"1" + b"}" * 200, b"\xff\xfe",
               # what JSON readers disagree on: a byte order mark, NaN and Infinity, a number past 64 bits,
               # a member named twice, text after the object, nesting past orjson's 1,024 levels
               b"\xef\xbb\xbf{}", b'{"X": NaN}', b'{"X": -Infinity}', b'{"X": 1' + b"0" * 400 + b"}",
               b'{"X": 1, "X": 2}', b"{} {}", b'{"X": ' + b"[" * 1100 + b"]" * 1100 + b"}")


def _model() -> Any:
    return botocore.session.get_session().get_service_model("kms")


def _plausible(shape: Shape, name: str, keys: dict[str, str]) -> Any:
    """A value of `shape` that passes the model's checks (a real key for key members)."""
    if name in ("KeyId", "DestinationKeyId", "SourceKeyId", "TargetKeyId"):
        return keys["key"]
    if name == "CiphertextBlob":
        return keys["ciphertext"]
    kind = shape.type_name
    if kind == "string":
        return shape.enum[0] if shape.enum else "x" * max(1, shape.metadata.get("min", 1))
    if kind == "blob":
        return base64.b64encode(b"x" * max(1, shape.metadata.get("min", 1))).decode()
    if kind in ("integer", "long"):
        return max(1, shape.metadata.get("min", 1))
    if kind == "boolean":
        return False
    if kind == "timestamp":
        return 4102444800
    if kind == "list":
        return [_plausible(shape.member, name, keys)]
    if kind == "map":
        return {"k": _plausible(shape.value, name, keys)}
    if kind == "structure":
        return {member: _plausible(member_shape, member, keys) for member, member_shape in shape.members.items()
                if member in shape.required_members}
    return "x"


def _base_body(operation: OperationModel, keys: dict[str, str], *, every_member: bool) -> dict[str, Any]:
    shape = operation.input_shape
    if shape is None:
        return {}
    return {name: _plausible(member, name, keys) for name, member in shape.members.items()
            if every_member or name in shape.required_members}


def _mutations(operation: OperationModel, keys: dict[str, str]) -> Iterator[bytes]:
    """Bodies with one member made bad at a time (every top-level member of the required-only
    request, every member at any depth of the full one), then bodies that are not JSON objects."""
    members = list(operation.input_shape.members) if operation.input_shape else []
    required_only = _base_body(operation, keys, every_member=False)
    full = _base_body(operation, keys, every_member=True)
    paths = [(member,) for member in members] + [path for path in _paths(full) if len(path) > 1]
    for base, path in [(required_only, (member,)) for member in members] + [(full, path) for path in paths]:
        for value in _BAD_VALUES:
            yield json.dumps(_replaced(base, path, value)).encode()
    yield from _BAD_BODIES


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every member and list item inside `value`."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, item in items:
        yield (*path, name)
        yield from _paths(item, (*path, name))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A copy of `value` with the member or item at `path` replaced by `new`."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, list):
        return [_replaced(item, rest, new) if index == head else item for index, item in enumerate(value)]
    return {**value, head: _replaced(value.get(head), rest, new)}


class _Connection:
    """One keep-alive HTTP connection that signs each request as alice."""

    def __init__(self, server: KeytrailServer) -> None:
        self._endpoint = server.endpoint
        host, port = server.endpoint.removeprefix("http://").split(":")
        self._http = http.client.HTTPConnection(host, int(port), timeout=30)

    def signed_headers(self, target: str, body: bytes) -> dict[str, str]:
        request = AWSRequest("POST", self._endpoint + "/", data=body, headers={
            "X-Amz-Target": f"TrentService.{target}", "Content-Type": "application/x-amz-json-1.1"})
        SigV4Auth(_ALICE, "kms", "us-east-1").add_auth(request)
        return dict(request.headers.items())

    def post(self, target: str, body: bytes) -> tuple[int, dict[str, Any]]:
        return self.send(self.signed_headers(target, body), body)

    def send(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        self._http.request("POST", "/", body=body, headers=headers)
        response = self._http.getresponse()
        return response.status, json.loads(response.read() or b"{}")

    def close(self) -> None:
        self._http.close()


@pytest.fixture(scope="module")
def keys(server: KeytrailServer) -> dict[str, str]:
    kms = server.client("alice")

    def key(**spec: str) -> str:
        return str(kms.create_key(Description="fuzz", **spec)["KeyMetadata"]["Arn"])

    keys = {"symmetric": key(), "sign": key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY"),
            "hmac": key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC"),
            "agree": key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT"),
            "kem": key(KeySpec="ML_KEM_768", KeyUsage="ENCAPSULATE_DECAPSULATE")}
    blob = kms.encrypt(KeyId=keys["symmetric"], Plaintext=b"fuzz")["CiphertextBlob"]
    alice = PRINCIPALS["alice"][0]  # a grant, so that the grant listings have something to filter
    kms.create_grant(KeyId=keys["symmetric"], GranteePrincipal=alice, RetiringPrincipal=alice, Operations=["Decrypt"])
    return {**keys, "ciphertext": base64.b64encode(blob).decode()}


@pytest.mark.parametrize("name", _model().operation_names)
def test_bad_input_is_a_client_error_with_an_aws_type(server: KeytrailServer, keys: dict[str, str],
                                                       name: str) -> None:
    operation = _model().operation_model(name)
    keys = {**keys, "key": keys[_KEY_FOR.get(name, "symmetric")]}
    connection = _Connection(server)
    failures = []
    try:
        for body in _mutations(operation, keys):
            status, answer = connection.post(name, body)
            well_formed = status < 400 or (400 <= status < 500 and answer.get("__type") and "message" in answer)
            if not well_formed:
                failures.append((status, answer, body[:200]))
    finally:
        connection.close()
    assert failures == []


_AUTH = "AWS4-HMAC-SHA256"
_BAD_HEADERS: dict[str, tuple[str, ...]] = {
    "Authorization": (
        "", _AUTH, "Basic YWxpY2U6c2VjcmV0", f"{_AUTH} Credential=,SignedHeaders=,Signature=",
        f"{_AUTH} Credential=AKIAALICE000000000001/20260101/us-east-1/kms/aws4_request, "
        "SignedHeaders=host;x-amz-date;x-missing, Signature=00",
        f"{_AUTH} Credential=AKIAALICE000000000001/x/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=zz",
        f"{_AUTH} Credential=AKIAALICE000000000001//////, SignedHeaders=;;, Signature=,,",
        f"{_AUTH} Credential=AKIAALICE000000000001/20260101/us-east-1/kms/aws4_request, SignedHeaders=, "
        "Signature=ab, Signature=cd",
        f"{_AUTH} Credential=AKIAALICE000000000001/20260101/../kms/aws4_request, SignedHeaders=host, Signature=ab",
        f"{_AUTH} " + "Credential=x," * 2000,
    ),
    "X-Amz-Date": ("", "20261301T000000Z", "2026-01-01T00:00:00Z", "99999999T999999Z", "0" * 5000),
    "X-Amz-Target": ("", "TrentService", "TrentService.", ".Encrypt", "Other.Encrypt", "TrentService.Nope",
                     "TrentService.encrypt", "TrentService.Encrypt.Extra"),
    "Content-Type": ("", "text/plain", "application/json; charset=ebcdic", "application/x-amz-json-9.9"),
}


def _header_mutations(headers: dict[str, str]) -> Iterator[dict[str, str]]:
    """The signed headers with one of them replaced by a bad value, or left out."""
    for name, values in _BAD_HEADERS.items():
        for value in values:
            yield {**headers, name: value}
        yield {k: v for k, v in headers.items() if k != name}


def test_bad_headers_are_client_errors_with_an_aws_type(server: KeytrailServer) -> None:
    body = b"{}"
    connection = _Connection(server)
    failures = []
    try:
        for headers in _header_mutations(connection.signed_headers("ListKeys", body)):
            status, answer = connection.send(headers, body)
            if not (400 <= status < 500 and answer.get("__type") and "message" in answer):
                failures.append((status, answer, headers))
    finally:
        connection.close()
    assert failures == []
