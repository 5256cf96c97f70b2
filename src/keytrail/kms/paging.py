"""Limit/Marker paging as the KMS list operations do it; markers are opaque to callers."""

from __future__ import annotations

import base64
import binascii
import bisect
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from keytrail.kms.errors import InvalidMarkerException

__all__ = ["Position", "page"]

T = TypeVar("T")
# Where an item stands in its listing: unique per item, ordered as the listing is.
Position = tuple[str | float, ...]


def page(
    items: Sequence[T], params: dict[str, Any], position: Callable[[T], Position], default_limit: int = 100,
) -> tuple[Sequence[T], dict[str, Any]]:
    """One page of `items`, listed in `position` order, and the `Truncated`/`NextMarker` members
    to answer with. A marker holds the position of the page's last item, so the next page starts
    after it even once that item is gone (a loop that deletes what it lists, as AWS allows)."""
    ordered = sorted(items, key=position)
    limit = int(params.get("Limit") or default_limit)
    start = 0
    if marker := params.get("Marker"):
        start = _start_after(ordered, marker, position)
    chunk = ordered[start : start + limit]
    if start + limit < len(ordered):
        return chunk, {"Truncated": True, "NextMarker": _marker(position(chunk[-1]))}
    return chunk, {"Truncated": False}


def _marker(last: Position) -> str:
    """The marker of a page ending at `last`, as UTF-8 rather than ASCII escapes: a tag key of
    128 letters of any script then stays within MarkerType's 1,024 characters (as `\\uXXXX`
    escapes, 128 CJK letters made a marker of 1,032 that the next page's call was refused for)."""
    text = json.dumps(last, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode()


def _start_after(ordered: Sequence[T], marker: str, position: Callable[[T], Position]) -> int:
    try:
        last = json.loads(base64.urlsafe_b64decode(marker.encode()))
        if not isinstance(last, list):
            raise TypeError
        return bisect.bisect_right(ordered, tuple(last), key=position)
    except (binascii.Error, ValueError, TypeError):  # not base64, not JSON, not a position of this listing
        raise InvalidMarkerException("The marker is not valid.") from None
