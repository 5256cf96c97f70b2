"""The fields `keytrail audit verify` reads from a digest, checked before it reads them.

A valid signature says only that whoever holds the signing key wrote the digest. The key sits in
the data dir (docs/audit-events.md), so an insider can sign any JSON object: verify must name a
digest whose fields are not what keytrail writes, not die on it with a traceback.
"""

from __future__ import annotations

import math
import string
from datetime import datetime
from typing import Any

__all__ = ["shape_problem"]

DIGEST_TIME = "%Y-%m-%dT%H:%M:%SZ"


def shape_problem(digest: dict[str, Any]) -> str | None:
    """Why `digest` is not a digest keytrail writes (None when its fields are)."""
    for name in ("sequence", "startOffset", "endOffset"):
        if not _is_offset(digest.get(name)):
            return f"{name} {digest.get(name)!r} is no whole number from 0"
    if digest["startOffset"] > digest["endOffset"]:
        return f"startOffset {digest['startOffset']} is past endOffset {digest['endOffset']}"
    if not _is_sha256(digest.get("chainHead")):
        return f"chainHead {digest.get('chainHead')!r} is no SHA-256 in hex"
    if not _is_digest_time(digest.get("digestEndTime")):
        return f"digestEndTime {digest.get('digestEndTime')!r} is no UTC time as YYYY-MM-DDTHH:MM:SSZ"
    return _optional_problem(digest)


def _optional_problem(digest: dict[str, Any]) -> str | None:
    """The fields only some digests carry (older versions wrote no `intervalSeconds`, nor
    `session` and `runningSeconds`)."""
    interval = digest.get("intervalSeconds")
    if interval is not None and not _is_interval(interval):
        return f"intervalSeconds {interval!r} is no number of seconds above 0"
    if not isinstance(digest.get("final", False), bool):
        return f"final {digest.get('final')!r} is neither true nor false"
    if not isinstance(digest.get("origin", ""), str):
        return f"origin {digest.get('origin')!r} is no text"
    if not isinstance(digest.get("session", ""), str):
        return f"session {digest.get('session')!r} is no text"
    running = digest.get("runningSeconds", 0)
    if not (isinstance(running, int | float) and not isinstance(running, bool) and math.isfinite(running)
            and running >= 0):
        return f"runningSeconds {running!r} is no number of seconds from 0"
    return None


def _is_offset(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in string.hexdigits for c in value)


def _is_digest_time(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.strptime(value, DIGEST_TIME)
    except ValueError:
        return False
    return True


def _is_interval(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
