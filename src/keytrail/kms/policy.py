"""Key policy documents: the default policy AWS writes, and parsing with AWS's errors."""

from __future__ import annotations

import json
from typing import Any

from keytrail.kms.errors import MalformedPolicyDocumentException

__all__ = ["MAX_POLICY_BYTES", "default_policy", "parse_policy"]

MAX_POLICY_BYTES = 32 * 1024


def default_policy(account: str) -> str:
    """The default key policy, as AWS writes it for CreateKey without a Policy."""
    return json.dumps({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
            "Action": "kms:*",
            "Resource": "*",
        }],
    }, indent=2)


def parse_policy(text: str) -> dict[str, Any]:
    """Parse a policy document or raise MalformedPolicyDocumentException saying what is wrong."""
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise MalformedPolicyDocumentException("The policy document exceeds the 32 KB size limit.")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise MalformedPolicyDocumentException(f"The policy is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or "Statement" not in doc:
        raise MalformedPolicyDocumentException("The policy document must be a JSON object with a Statement.")
    return doc


def validate_key_policy(text: str, principal: object, *, bypass: bool) -> dict[str, Any]:
    """Parse a key policy for CreateKey/PutKeyPolicy.

    The lockout safety check (refuse a policy that would stop `principal` from updating it
    later unless `bypass`) belongs here.
    """
    return parse_policy(text)
