"""Limit/Marker paging as the KMS list operations do it; markers are opaque to callers.

A listing held whole in memory pages with `page`; one whose store reads a page by itself (ListKeys:
every key of a Region is too many to read for each page) reads the call's marker with
`marked_position`, asks its store for one more item than `page_limit` after it, and answers with
`paged`. Both hand out and take back the same markers."""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
import math
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar, cast

from keytrail.kms.errors import InvalidMarkerException

__all__ = ["DatedPosition", "Position", "Shape", "dated_position", "marked_position", "page", "page_limit", "paged"]

T = TypeVar("T")
# Where an item stands in its listing: unique per item, ordered as the listing is.
Position = tuple[str | float, ...]
# The types of a listing's positions, element by element: (float, str) for a date and an id.
Shape = tuple[type[str] | type[float], ...]
# A position of a listing in creation order (ListKeys, ListGrants): a POSIX timestamp, then an id.
DatedPosition = tuple[float, str]
# Hex digits of a listing's digest a marker opens with.
_TAG_LENGTH = 16
# MarkerType's longest: a longer NextMarker is one the next call may not send.
_MARKER_LENGTH = 1024


def page(
    items: Sequence[T], params: dict[str, Any], position: Callable[[T], Position], listing: str,
    default_limit: int = 100,
) -> tuple[Sequence[T], dict[str, Any]]:
    """One page of `items`, listed in `position` order, and the `Truncated`/`NextMarker` members
    to answer with. A marker holds the position of the page's last item, so the next page starts
    after it even once that item is gone (a loop that deletes what it lists, as AWS allows).

    `listing` names what is listed (the operation and its scope: account and Region, key,
    retiring principal). A marker is good for that listing only: positions of different listings
    share a shape (ListKeys' and ListGrants' are both a date and an id), and a marker handed to
    another listing used to be taken as a position in it, answering a silently short or empty
    last page (`Truncated: false`) where the caller's mix-up is InvalidMarkerException."""
    ordered = sorted(items, key=position)
    limit = page_limit(params, default_limit)
    # The listing's positions all have its first's shape (a listing of nothing: any is past its end)
    shape = tuple(type(value) for value in position(ordered[0])) if ordered else None
    start = 0
    if (after := marked_position(params, listing, shape)) is not None:
        start = bisect.bisect_right(ordered, after, key=position)
    return paged(ordered[start : start + limit + 1], limit, position, listing)


def page_limit(params: dict[str, Any], default_limit: int) -> int:
    """How many items the call's page holds: its Limit, else the listing's default."""
    return int(params.get("Limit") or default_limit)


def marked_position(params: dict[str, Any], listing: str, shape: Shape | None) -> Position | None:
    """The position the call's Marker holds (None without a Marker): its page starts after it.
    InvalidMarkerException for a marker `listing` did not hand out, among them one in its format
    whose position is not of `shape` (None: any of numbers and strings). The listing's tag is no
    secret (anyone can work it out), and a made-up NaN, infinity, empty position or true compared
    as a position of the listing: it answered an empty last page with Truncated false."""
    if not (marker := params.get("Marker")):
        return None
    try:
        decoded = _decoded(base64.urlsafe_b64decode(marker.encode()))
    except (binascii.Error, ValueError, struct.error):
        decoded = None  # not base64, not UTF-8, cut short
    if not isinstance(decoded, list) or not decoded or decoded[0] != _tag(listing):
        _invalid()  # not a marker of this listing
    return _position(decoded[1:], shape)


def dated_position(params: dict[str, Any], listing: str) -> DatedPosition | None:
    """The position the call's Marker holds in a listing in creation order (None without a Marker).
    InvalidMarkerException also when its timestamp is no date anything was created at (years 1 to
    9999): a store reading its page after that position could not say where it is."""
    position = marked_position(params, listing, (float, str))
    if position is None:
        return None
    timestamp, name = cast(DatedPosition, position)  # of the shape marked_position checked
    try:
        datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, ValueError, OSError):
        _invalid()
    return timestamp, name


def paged(
    fetched: Sequence[T], limit: int, position: Callable[[T], Position], listing: str,
) -> tuple[Sequence[T], dict[str, Any]]:
    """The page of the first `limit` of `fetched` and its `Truncated`/`NextMarker` members.
    `fetched`: the listing's items after the call's marker, in order, `limit` + 1 of them while
    there are: the one past the page says the listing goes on."""
    chunk = fetched[:limit]
    if len(fetched) > limit:
        return chunk, {"Truncated": True, "NextMarker": _marker(_tag(listing), position(chunk[-1]))}
    return chunk, {"Truncated": False}


def _tag(listing: str) -> str:
    """A short digest of the listing, for its markers: a retiring principal's ARN (up to 256
    characters) would take room from MarkerType's 1,024 that the position needs (tag keys)."""
    return hashlib.sha256(listing.encode()).hexdigest()[:_TAG_LENGTH]


def _marker(tag: str, last: Position) -> str:
    """The marker of a page ending at `last`: JSON as UTF-8 (not ASCII escapes: 128 CJK letters
    as `\\uXXXX` made a marker of 1,032), which every node of a store, older ones too, reads.
    A position JSON escapes beyond MarkerType's 1,024 characters (a tag key of 128 control
    characters, `\\u0001` each, made one of 1,056 the next call was refused for) is written as
    bytes, which stay within it: at worst 128 4-byte letters, 708 characters."""
    text = json.dumps([tag, *last], separators=(",", ":"), ensure_ascii=False)
    marker = base64.urlsafe_b64encode(text.encode()).decode()
    return marker if len(marker) <= _MARKER_LENGTH else _bytes_marker(tag, last)


def _bytes_marker(tag: str, last: Position) -> str:
    """The listing's tag, then each element of the position as a type letter and its bytes (a
    float's 8, a string's UTF-8 after a 2-byte length)."""
    encoded = bytearray(tag.encode())
    for value in last:
        if isinstance(value, float):
            encoded += b"f" + struct.pack(">d", value)
        else:
            text = value.encode()
            encoded += b"s" + struct.pack(">H", len(text)) + text
    return base64.urlsafe_b64encode(encoded).decode()


def _decoded(raw: bytes) -> Any:
    """What a marker holds: its listing's tag and its position's elements, from JSON (`[tag, ...]`)
    or bytes (the tag's hex digits first). ValueError or struct.error for neither."""
    if raw.startswith(b"["):
        return json.loads(raw, parse_constant=_not_a_number)
    decoded: list[Any] = [raw[:_TAG_LENGTH].decode("ascii")]
    at = _TAG_LENGTH
    while at < len(raw):
        kind, at = raw[at : at + 1], at + 1
        if kind == b"f":
            decoded.append(struct.unpack_from(">d", raw, at)[0])
            at += 8
        elif kind == b"s":
            (length,) = struct.unpack_from(">H", raw, at)
            text, at = raw[at + 2 : at + 2 + length], at + 2 + length
            if len(text) != length:
                raise ValueError("marker cut short")
            decoded.append(text.decode())
        else:
            raise ValueError("no element of a position")
    return decoded


def _not_a_number(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not a position")  # NaN, Infinity, -Infinity: JSON has none of them


def _position(elements: list[Any], shape: Shape | None) -> Position:
    """`elements` as a position of `shape`, each a string or a finite number where the shape has
    one (None: each either). A number of a position is a float, which JSON writes with a point or
    an exponent: an int (true and false are ints too) is none a listing hands out."""
    if not elements or (shape is not None and len(elements) != len(shape)):
        _invalid()
    kinds = shape or tuple(str if isinstance(value, str) else float for value in elements)
    if not all(type(value) is kind for value, kind in zip(elements, kinds, strict=True)):
        _invalid()
    if not all(math.isfinite(value) for value in elements if type(value) is float):  # 1e999 reads as infinity
        _invalid()
    return tuple(elements)


def _invalid() -> NoReturn:
    raise InvalidMarkerException("The marker is not valid.")
