"""Tag rules as AWS KMS applies them (TagException messages)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from keytrail.kms.errors import TagException

__all__ = ["MAX_TAGS", "validate_tags"]

MAX_TAGS = 50


def validate_tags(tags: Sequence[Mapping[str, str]], existing: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags as an ordered dict (existing ones updated), or TagException with AWS's message."""
    keys = [tag["TagKey"] for tag in tags]
    if len(set(keys)) != len(keys):
        raise TagException("Duplicate tag keys")
    # In any case: AWS reserves "aws:", "AWS:" and every mix of the two (tagging best practices).
    if any(key[:4].lower() == "aws:" for key in keys):
        raise TagException("Tags beginning with aws: are reserved")
    merged = dict(existing or {})
    merged.update({tag["TagKey"]: tag["TagValue"] for tag in tags})
    if len(merged) > MAX_TAGS:
        raise TagException("Too many tags")
    return merged
