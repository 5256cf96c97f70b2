"""Limit/Marker paging as the KMS list operations do it; markers are opaque to callers."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from keytrail.kms.errors import InvalidMarkerException

__all__ = ["page"]

T = TypeVar("T")


def page(
    items: Sequence[T], params: dict[str, Any], item_id: Callable[[T], str], default_limit: int = 100,
) -> tuple[Sequence[T], dict[str, Any]]:
    """One page of `items` and the `Truncated`/`NextMarker` members to answer with."""
    limit = int(params.get("Limit") or default_limit)
    start = 0
    if marker := params.get("Marker"):
        start = _start_after(items, marker, item_id)
    chunk = items[start : start + limit]
    if start + limit < len(items):
        next_marker = base64.urlsafe_b64encode(item_id(chunk[-1]).encode()).decode()
        return chunk, {"Truncated": True, "NextMarker": next_marker}
    return chunk, {"Truncated": False}


def _start_after(items: Sequence[T], marker: str, item_id: Callable[[T], str]) -> int:
    try:
        last = base64.urlsafe_b64decode(marker.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidMarkerException("The marker is not valid.") from None
    for index, item in enumerate(items):
        if item_id(item) == last:
            return index + 1
    raise InvalidMarkerException("The marker is not valid.")
