"""Whether an Avro body keeps every length it holds inside itself, told before polars reads it.

polars' Avro reader slices a string's (or a skipped array's) bytes by the length it reads, without
checking that the block holds that many: a length past the block's end is a Rust panic, caught as
`PanicException`, but only after Rust's panic text (and, with RUST_BACKTRACE set, a backtrace) went
to stderr, into an operator's terminal or journal. A damaged value (a poisoned Kafka message: a
length byte changed, another producer's bytes behind a copied header, a value cut short whose reads
run on into the next value's eventTime) holds such a length as often as not. The walk here follows
a writer schema through a value's bytes, reading only the lengths, unions and counts, and says
whether the body ends exactly where the value does with every length inside it: values that pass
cannot make the reader slice past its block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["BodyCheck", "body_check"]

#: A compiled walk of one schema: (value, position, end) → the position after it; raises Damaged.
_Step = Callable[[bytes, int, int], int]
#: (value, position of the body) → whether the body is whole and every length in it fits.
BodyCheck = Callable[[bytes, int], bool]


class Damaged(Exception):
    """A body that cannot be a value of the schema: a length, count or union branch that does not fit."""


def body_check(schema: Mapping[str, Any]) -> BodyCheck:
    """The check of bodies of `schema` (a parsed writer schema, a record)."""
    step = _compile(schema, {})

    def check(value: bytes, start: int) -> bool:
        try:
            return step(value, start, len(value)) == len(value)
        except Damaged:
            return False

    return check


def _long(value: bytes, position: int, end: int) -> tuple[int, int]:
    """The zigzag long at `position` and the position after it (at most 10 bytes, as Avro's)."""
    result = shift = 0
    while position < end and shift < 70:
        byte = value[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7
    raise Damaged


def _skip_long(value: bytes, position: int, end: int) -> int:
    return _long(value, position, end)[1]


def _skip_sized(value: bytes, position: int, end: int) -> int:
    """A string's or bytes' length, then that many bytes, all inside the value."""
    size, position = _long(value, position, end)
    if size < 0 or position + size > end:
        raise Damaged
    return position + size


def _fixed(size: int) -> _Step:
    def step(value: bytes, position: int, end: int) -> int:
        if position + size > end:
            raise Damaged
        return position + size

    return step


# The kinds of a record's fields walked inline (`_fields`): most of an event's fields are strings,
# optional strings or longs, and a call per field cost twice the reader's own time per value.
_STRING, _OPTIONAL_STRING, _LONG, _OTHER = range(4)


def _fields(kinds: list[tuple[int, _Step]]) -> _Step:
    """A record whose strings, optional strings and longs are walked in the loop itself (a
    string's length is nearly always one byte: read inline, the rest by `_long`)."""
    def step(value: bytes, position: int, end: int) -> int:
        for kind, other in kinds:
            if kind == _OTHER:
                position = other(value, position, end)
                continue
            if kind == _OPTIONAL_STRING:
                if position >= end:
                    raise Damaged
                branch = value[position]
                position += 1
                if branch == 0:
                    continue
                if branch != 2:  # zigzag 1, the string branch
                    raise Damaged
            elif kind == _LONG:
                position = _skip_long(value, position, end)
                continue
            if position < end and value[position] < 0x80:  # a length under 64: one byte
                size = value[position]
                position += 1
                if size & 1:
                    raise Damaged  # negative
                position += size >> 1
                if position > end:
                    raise Damaged
            else:
                position = _skip_sized(value, position, end)
        return position

    return step


def _union(branches: list[_Step]) -> _Step:
    def step(value: bytes, position: int, end: int) -> int:
        branch, position = _long(value, position, end)
        if not 0 <= branch < len(branches):
            raise Damaged
        return branches[branch](value, position, end)

    return step


def _blocks(item: _Step) -> _Step:
    """An array's or map's blocks: a count (negative: followed by the block's size in bytes), that
    many items, until a count of 0."""
    def step(value: bytes, position: int, end: int) -> int:
        while True:
            count, position = _long(value, position, end)
            if count == 0:
                return position
            if count < 0:
                count = -count
                size, position = _long(value, position, end)
                if size < 0 or position + size > end:
                    raise Damaged
            if count > end - position:  # an item of the events' arrays takes a byte at least
                raise Damaged
            for _ in range(count):
                position = item(value, position, end)

    return step


def _map_entry(values: _Step) -> _Step:
    def step(value: bytes, position: int, end: int) -> int:
        return values(value, _skip_sized(value, position, end), end)

    return step


def _nothing(value: bytes, position: int, end: int) -> int:
    return position


def _one_byte(value: bytes, position: int, end: int) -> int:
    if position >= end:
        raise Damaged
    return position + 1


_PRIMITIVES: dict[str, _Step] = {
    "null": _nothing, "boolean": _one_byte, "int": _skip_long, "long": _skip_long,
    "float": _fixed(4), "double": _fixed(8), "string": _skip_sized, "bytes": _skip_sized,
}


def _kind(schema: Any, named: dict[str, _Step]) -> tuple[int, _Step]:
    """A field's kind for `_fields`, and its walk."""
    step = _compile(schema, named)
    if step is _skip_sized:
        return _STRING, step
    if step is _skip_long:
        return _LONG, step
    if schema == ["null", "string"]:
        return _OPTIONAL_STRING, step
    return _OTHER, step


def _compile(schema: Any, named: dict[str, _Step]) -> _Step:
    """The walk of `schema`; `named` holds the named types compiled so far, which a schema may
    name again further on."""
    if isinstance(schema, list):
        return _union([_compile(branch, named) for branch in schema])
    if isinstance(schema, str):
        return _PRIMITIVES.get(schema) or named[schema]
    kind = schema["type"]
    if kind == "record":
        kinds: list[tuple[int, _Step]] = []
        step = _named(schema, _fields(kinds), named)  # fields may name the record itself
        kinds.extend(_kind(field["type"], named) for field in schema["fields"])
        return step
    if kind == "array":
        return _blocks(_compile(schema["items"], named))
    if kind == "map":
        return _blocks(_map_entry(_compile(schema["values"], named)))
    if kind == "fixed":
        return _named(schema, _fixed(schema["size"]), named)
    if kind == "enum":
        return _named(schema, _union([_nothing] * len(schema["symbols"])), named)  # an index, as a union's
    return _compile(kind, named)  # a primitive with attributes: {"type": "long", "logicalType": …}


def _named(schema: Mapping[str, Any], step: _Step, named: dict[str, _Step]) -> _Step:
    """Keep the walk of a named type under its name and its full name."""
    named[schema["name"]] = step
    if schema.get("namespace"):
        named[f"{schema['namespace']}.{schema['name']}"] = step
    return step
