"""botocore's KMS service model as the wire contract: decode, validate, encode.

Each operation's input shape is compiled once into a small tree of checks, so a request is
decoded (base64 blobs, epoch timestamps) and validated (required members, types, lengths,
ranges, enums, patterns) in one pass, with AWS's ValidationException wording.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape

from keytrail.kms.errors import SerializationException, ValidationException
from keytrail.kms.operations.crypto import ignores_ciphertext

__all__ = ["decode_request", "encode_value", "operation_names", "service_model"]

Check = Callable[[Any, str, list[str]], Any]
_MAX_ERRORS_SHOWN = 10


_JSON_SCALARS = frozenset({str, int, float, bool})
# Members the service cannot do without that the current model no longer marks required: absent,
# they get the model's "Member must not be null" error instead of reaching the handler.
_SERVICE_REQUIRED: dict[str, tuple[str, ...]] = {
    "Decrypt": ("CiphertextBlob",),
    "ReEncrypt": ("CiphertextBlob",),
    "CreateGrant": ("GranteePrincipal",),
    "ListRetirableGrants": ("RetiringPrincipal",),
}
# A member's twin for AWS service principals, which the model lets stand in its place: the handler
# refuses it in its own words (no AWS service calls keytrail), not as the member missing.
_SERVICE_TWIN = {"GranteePrincipal": "GranteeServicePrincipal", "RetiringPrincipal": "RetiringServicePrincipal"}
# CiphertextBlob is "required in all cases except when DryRun is true and DryRunModifiers is set to
# IGNORE_CIPHERTEXT" (the model's Decrypt and ReEncrypt member docs): a test of permissions alone.
_CIPHERTEXT_OPTIONAL_IN_DRY_RUN = frozenset({"Decrypt", "ReEncrypt"})


@cache
def service_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("kms")


@cache
def operation_names() -> frozenset[str]:
    return frozenset(service_model().operation_names)


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


# Shapes whose values a message never repeats although the model does not mark them sensitive: a
# grant token is a credential (the audit record leaves GrantToken(s) out, kms/call_records.py), and a
# malformed one may be a real token with a character too many.
_SECRET_SHAPES = frozenset({"GrantTokenType"})


def _describe(value: Any, sensitive: bool) -> str:
    return "Value" if sensitive else f"Value '{value}'"


def _bounds(shape: Shape) -> tuple[float, float]:
    """The length bounds of `shape`: checked inline, `_length_checks` words a violation."""
    return shape.metadata.get("min", 0), shape.metadata.get("max", math.inf)


def _length_checks(shape: Shape, value: Any, path: str, errors: list[str], sensitive: bool) -> None:
    meta = shape.metadata
    size = len(value)
    if "min" in meta and size < meta["min"]:
        errors.append(f"{_describe(value, sensitive)} at '{path}' failed to satisfy constraint: "
                      f"Member must have length greater than or equal to {meta['min']}")
    if "max" in meta and size > meta["max"]:
        errors.append(f"{_describe(value, sensitive)} at '{path}' failed to satisfy constraint: "
                      f"Member must have length less than or equal to {meta['max']}")


def _string_check(shape: Shape) -> Check:
    enum, allowed = shape.enum, frozenset(shape.enum)
    low, high = _bounds(shape)
    # ASCII: the model's patterns are ECMA-262 (Java) expressions, whose \w and \d are ASCII classes.
    pattern = re.compile(shape.metadata["pattern"], re.ASCII) if "pattern" in shape.metadata else None
    sensitive = bool(shape.serialization.get("sensitive") or shape.metadata.get("sensitive")
                     or shape.name in _SECRET_SHAPES)

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, str):
            raise SerializationException(f"Expected a string at '{path}'")
        if not low <= len(value) <= high:
            _length_checks(shape, value, path, errors, sensitive)
        if enum and value not in allowed:
            errors.append(f"Value '{value}' at '{path}' failed to satisfy constraint: "
                          f"Member must satisfy enum value set: [{', '.join(enum)}]")
        elif pattern and not pattern.fullmatch(value):
            errors.append(f"{_describe(value, sensitive)} at '{path}' failed to satisfy constraint: "
                          f"Member must satisfy regular expression pattern: {pattern.pattern}")
        return value
    return check


def _blob_check(shape: Shape) -> Check:
    low, high = _bounds(shape)

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, str):
            raise SerializationException(f"Expected base64 text at '{path}'")
        try:  # base64.b64decode(value, validate=True), without its wrapper's cost
            data = binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError):
            raise SerializationException(f"Value at '{path}' is not valid base64") from None
        if not low <= len(data) <= high:
            _length_checks(shape, data, path, errors, sensitive=True)
        return data
    return check


#: What AWS's JSON reader can hold in each integral type (Java's int and long): a number past them is
#: no value of the member, not one to echo in a range error (a JSON integer past 64 bits is read as
#: a float here, and was echoed as another number: 10**30 as 1000000000000000019884624838656).
_INTEGRAL_BITS = {"integer": 32, "long": 64}


def _number_check(shape: Shape) -> Check:
    bits = _INTEGRAL_BITS.get(shape.type_name)
    meta = shape.metadata

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float) or (bits and value != int(value)):
            raise SerializationException(f"Expected a number at '{path}'")
        if bits:
            value = int(value)
            if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
                raise SerializationException(f"Number out of range of a {bits}-bit integer at '{path}'")
        if "min" in meta and value < meta["min"]:
            errors.append(f"Value '{value}' at '{path}' failed to satisfy constraint: "
                          f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            errors.append(f"Value '{value}' at '{path}' failed to satisfy constraint: "
                          f"Member must have value less than or equal to {meta['max']}")
        return value
    return check


def _boolean_check(value: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(value, bool):
        raise SerializationException(f"Expected a boolean at '{path}'")
    return value


def _timestamp_check(value: Any, path: str, errors: list[str]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SerializationException(f"Expected epoch seconds at '{path}'")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise SerializationException(f"Timestamp out of range at '{path}'") from None


def _list_check(shape: ListShape) -> Check:
    member = compile_shape(shape.member)

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, list):
            raise SerializationException(f"Expected a list at '{path}'")
        _length_checks(shape, value, path, errors, sensitive=True)
        return [member(item, f"{path}.{i}.member", errors) for i, item in enumerate(value, 1)]
    return check


def _map_check(shape: MapShape) -> Check:
    key_check, value_check = compile_shape(shape.key), compile_shape(shape.value)

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, dict):
            raise SerializationException(f"Expected an object at '{path}'")
        return {key_check(k, f"{path}.key", errors): value_check(v, f"{path}.{k}", errors) for k, v in value.items()}
    return check


def _structure_check(shape: StructureShape, also_required: tuple[str, ...] = ()) -> Check:
    members = {name: (compile_shape(member), _camel(name)) for name, member in shape.members.items()}
    required = [name for name in shape.members if name in shape.required_members or name in also_required]

    def check(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, dict):
            raise SerializationException(f"Expected an object at '{path or 'body'}'")
        out: dict[str, Any] = {}
        for name in required:
            if value.get(name) is None and value.get(_SERVICE_TWIN.get(name, name)) is None:
                where = f"{path}.{_camel(name)}" if path else _camel(name)
                errors.append(f"Value null at '{where}' failed to satisfy constraint: Member must not be null")
        for name, item in value.items():
            member = members.get(name)
            if member is None or item is None:
                continue
            member_check, camel = member
            out[name] = member_check(item, f"{path}.{camel}" if path else camel, errors)
        return out
    return check


def compile_shape(shape: Shape) -> Check:
    """A function that decodes and validates a value of `shape`, collecting messages."""
    kind = shape.type_name
    if kind == "structure":
        return _structure_check(shape)  # type: ignore[arg-type]
    if kind == "list":
        return _list_check(shape)  # type: ignore[arg-type]
    if kind == "map":
        return _map_check(shape)  # type: ignore[arg-type]
    if kind == "string":
        return _string_check(shape)
    if kind == "blob":
        return _blob_check(shape)
    if kind in ("integer", "long", "float", "double"):
        return _number_check(shape)
    if kind == "boolean":
        return _boolean_check
    if kind == "timestamp":
        return _timestamp_check
    return lambda value, path, errors: value


@cache
def _input_check(operation: str, ciphertext_optional: bool = False) -> Check:
    shape = service_model().operation_model(operation).input_shape
    if shape is None:
        return lambda value, path, errors: {}
    required = _SERVICE_REQUIRED.get(operation, ())
    if ciphertext_optional:
        required = tuple(name for name in required if name != "CiphertextBlob")
    return _structure_check(shape, required)  # type: ignore[arg-type]


def _ignores_ciphertext(operation: str, body: Any) -> bool:
    return operation in _CIPHERTEXT_OPTIONAL_IN_DRY_RUN and isinstance(body, dict) and ignores_ciphertext(body)


def decode_request(operation: str, body: Any) -> dict[str, Any]:
    """Request parameters with blobs and timestamps decoded; ValidationException listing every
    constraint the request breaks, as AWS words it."""
    errors: list[str] = []
    params: dict[str, Any] = _input_check(operation, _ignores_ciphertext(operation, body))(body, "", errors)
    if errors:
        count = len(errors)
        noun = "error" if count == 1 else "errors"
        shown = "; ".join(errors[:_MAX_ERRORS_SHOWN])
        raise ValidationException(f"{count} validation {noun} detected: {shown}")
    return params


def encode_value(value: Any) -> Any:
    """A response value as JSON 1.1 carries it: blobs base64, timestamps epoch seconds."""
    if type(value) in _JSON_SCALARS:  # most values: checked first
        return value
    if isinstance(value, dict):  # a response: its scalar members without a call each
        return {k: v if type(v) in _JSON_SCALARS else encode_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return binascii.b2a_base64(value, newline=False).decode()  # base64.b64encode, without its wrapper
    if isinstance(value, datetime):
        return round(value.timestamp(), 3)  # epoch seconds to the millisecond, as AWS answers
    return value
