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
        decoded = json.loads(base64.urlsafe_b64decode(marker.encode()), parse_constant=_not_a_number)
    except (binascii.Error, ValueError):
        decoded = None  # not base64, not UTF-8, not JSON
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
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def _marker(tag: str, last: Position) -> str:
    """The marker of a page ending at `last`, as UTF-8 rather than ASCII escapes: a tag key of
    128 letters of any script then stays within MarkerType's 1,024 characters (as `\\uXXXX`
    escapes, 128 CJK letters made a marker of 1,032 that the next page's call was refused for)."""
    text = json.dumps([tag, *last], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode()


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
