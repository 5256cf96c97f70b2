"""Limit/Marker paging as the KMS list operations do it; markers are opaque to callers."""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from keytrail.kms.errors import InvalidMarkerException

__all__ = ["Position", "page"]

T = TypeVar("T")
# Where an item stands in its listing: unique per item, ordered as the listing is.
Position = tuple[str | float, ...]


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
    limit = int(params.get("Limit") or default_limit)
    tag = _tag(listing)
    start = 0
    if marker := params.get("Marker"):
        start = _start_after(ordered, marker, position, tag)
    chunk = ordered[start : start + limit]
    if start + limit < len(ordered):
        return chunk, {"Truncated": True, "NextMarker": _marker(tag, position(chunk[-1]))}
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


def _start_after(ordered: Sequence[T], marker: str, position: Callable[[T], Position], tag: str) -> int:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(marker.encode()))
        if not isinstance(decoded, list) or not decoded or decoded[0] != tag:
            raise TypeError  # not a marker of this listing
        return bisect.bisect_right(ordered, tuple(decoded[1:]), key=position)
    except (binascii.Error, ValueError, TypeError):  # not base64, not JSON, not a position of this listing
        raise InvalidMarkerException("The marker is not valid.") from None
