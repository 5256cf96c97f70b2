"""What every target is loaded with: principals, a realistic key policy, the request bodies.

The same request bodies go to keytrail, moto and the ceiling. Calls come from an application
role allowed by the key policy (with an encryption-context and source-IP condition); the denied
Decrypt comes from a user of another account the key policy does not name.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

__all__ = [
    "ACCOUNT", "APP", "CONTEXT", "DENIED", "KEY_POLICY", "OPERATIONS", "OUTSIDERS", "OWNER", "PLAINTEXT",
    "Principal", "operation_params", "write_principals",
]

ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
CONTEXT = {"Department": "IT"}
PLAINTEXT = b"4111 1111 1111 1111 exp 12/29 ok"  # 32 bytes, like a card number or a data key
# Labels of the measured operations; "Decrypt (denied)" is a Decrypt by a caller the policy refuses.
OPERATIONS = ("Encrypt", "Decrypt", "GenerateDataKey", "Decrypt (denied)")
_ALLOW_KMS = json.dumps({"Version": "2012-10-17",
                         "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]})

Principal = tuple[str, str, str, str | None]  # arn, access key, secret, session name
OWNER: Principal = (f"arn:aws:iam::{ACCOUNT}:user/alice", "AKIAALICE000000000001", "alice-secret", None)
APP: Principal = (f"arn:aws:iam::{ACCOUNT}:role/app", "ASIAAPP0000000000001", "app-secret", "app-session")
DENIED: Principal = (f"arn:aws:iam::{OTHER_ACCOUNT}:user/carol", "AKIACAROL00000000001", "carol-secret", None)
# More users of the other account, one per key of the alarm-latency benchmark: the detector folds a
# principal's denials past its first few keys into one alarm (detect/checks/unauthorized.py), so
# one alarm per denied call needs a principal of its own for each.
OUTSIDERS: tuple[Principal, ...] = tuple(
    (f"arn:aws:iam::{OTHER_ACCOUNT}:user/outsider-{n:02}", f"AKIAOUTSIDER{n:08}", f"outsider-{n:02}-secret", None)
    for n in range(1, 41)
)

# The developer guide's shape: IAM delegation to the account, key administrators, key users
# with conditions.
KEY_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Id": "keytrail-bench",
    "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Allow access for Key Administrators", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/admin"},
         "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                    "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:ScheduleKeyDeletion"],
         "Resource": "*"},
        {"Sid": "Allow use of the key", "Effect": "Allow", "Principal": {"AWS": APP[0]},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
         "Resource": "*",
         "Condition": {"StringEquals": {"kms:EncryptionContext:Department": "IT"},
                       "IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}},
    ],
}


def write_principals(path: Path) -> Path:
    """The principals file (CONTRACTS.md §2) for the owner, the app role and the outsiders."""
    lines = []
    for arn, key, secret, session in (OWNER, APP, DENIED, *OUTSIDERS):
        lines += ["[[principal]]", f'arn = "{arn}"', f'access_key_id = "{key}"', f'secret_access_key = "{secret}"',
                  f"policies = ['''{_ALLOW_KMS}''']"]
        if session:
            lines.append(f'session_name = "{session}"')
        lines.append("")
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


def operation_params(operation: str, key_id: str, blob: bytes) -> tuple[str, dict[str, Any]]:
    """(AWS operation name, JSON body) for one measured operation label."""
    if operation == "Encrypt":
        return "Encrypt", {"KeyId": key_id, "Plaintext": base64.b64encode(PLAINTEXT).decode(),
                           "EncryptionContext": CONTEXT}
    if operation == "GenerateDataKey":
        return "GenerateDataKey", {"KeyId": key_id, "KeySpec": "AES_256", "EncryptionContext": CONTEXT}
    if operation in ("Decrypt", "Decrypt (denied)"):
        return "Decrypt", {"CiphertextBlob": base64.b64encode(blob).decode(), "EncryptionContext": CONTEXT}
    raise ValueError(f"unknown operation {operation!r}")
