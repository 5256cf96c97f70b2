"""Key policies: the default policy AWS writes, and the checks of CreateKey and PutKeyPolicy.

The grammar, validation and compiled form live in `policy_document`; the evaluation in `evaluator`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from keytrail.kms.context import CallContext, Principal
from keytrail.kms.errors import LimitExceededException
from keytrail.kms.evaluator import check_lockout
from keytrail.kms.keys import Key
from keytrail.kms.partitions import DEFAULT_PARTITION
from keytrail.kms.policy_document import (
    MAX_POLICY_BYTES,
    check_characters,
    check_condition_values,
    check_key_policy_elements,
    check_principals,
    check_set_operators,
    compile_policy,
    parse_policy,
    validate_policy,
)

__all__ = [
    "MAX_POLICY_BYTES",
    "compile_policy",
    "default_policy",
    "parse_policy",
    "validate_key_policy",
    "validate_policy",
]


# The default key policy exactly as AWS returns it (GetKeyPolicy's example in the API reference),
# laid out by its JSON writer (` : `, `[ {`), so a caller comparing the text matches byte for byte.
_DEFAULT_POLICY = """{
  "Version" : "2012-10-17",
  "Id" : "key-default-1",
  "Statement" : [ {
    "Sid" : "Enable IAM User Permissions",
    "Effect" : "Allow",
    "Principal" : {
      "AWS" : %s
    },
    "Action" : "kms:*",
    "Resource" : "*"
  } ]
}"""


def default_policy(account: str, partition: str = DEFAULT_PARTITION) -> str:
    """The default key policy, as AWS writes it for CreateKey without a Policy (its account root
    in the partition of the key's Region)."""
    return _DEFAULT_POLICY % json.dumps(f"arn:{partition}:iam::{account}:root")


def validate_key_policy(
    text: str, principal: Principal, *, bypass: bool, key_arn: str = "*", call: CallContext | None = None,
    now: datetime | None = None, key: Key | None = None,
) -> dict[str, Any]:
    """Parse a key policy for CreateKey/PutKeyPolicy (MalformedPolicyDocumentException naming what
    is wrong), then run the policy lockout safety check for the key `key_arn` (`key`, when it
    exists already), in the request's context and at the service's time, unless `bypass`."""
    if len(text.encode()) > MAX_POLICY_BYTES:
        # API reference (CreateKey, PutKeyPolicy): "If the key policy exceeds the length
        # constraint, KMS returns a LimitExceededException" (the quota: 32,768 bytes).
        raise LimitExceededException("The key policy exceeds the 32 KB (32,768 bytes) size limit.")
    doc = parse_policy(text, "key")
    check_characters(text, doc)
    check_key_policy_elements(doc)
    check_principals(doc)
    check_set_operators(doc)
    check_condition_values(doc)
    check_lockout(doc, principal, bypass=bypass, call=call, now=now, resource=key_arn, key=key)
    return doc
