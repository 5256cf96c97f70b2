"""Write docs/api-compatibility.md: every operation of botocore's KMS model and its status here.

Run: .venv/bin/python scripts/api_compatibility.py  (a test checks the file is current).
"""

from __future__ import annotations

import sys
from pathlib import Path

from keytrail.api.protocol import service_model
from keytrail.kms.operations import OPERATIONS

NOTES = {
    "GetKeyLastUsage": "answered from the last-used consumer state",
    "Encapsulate": "ML_KEM_768 and ML_KEM_1024; ML_KEM_512 refused (docs/asymmetric-keys.md)",
    "Decapsulate": "ML_KEM_768 and ML_KEM_1024; ML_KEM_512 refused (docs/asymmetric-keys.md)",
    "Decrypt": "DryRunModifiers IGNORE_CIPHERTEXT checks the named key only; Recipient refused",
    "GenerateDataKeyPair": "every KeyPairSpec except SM2 and ML_KEM_512",
    "GenerateDataKeyPairWithoutPlaintext": "every KeyPairSpec except SM2 and ML_KEM_512",
    "GetParametersForImport": "RSA_2048/3072/4096 wrapping keys; RSAES_PKCS1_V1_5 and SM2 refused",
    "ImportKeyMaterial": "symmetric, HMAC, RSA and ECC material; NEW_KEY_MATERIAL for on-demand rotation of "
                         "symmetric keys (docs/imported-key-material.md)",
    "RotateKeyOnDemand": "imported keys rotate to material imported with NEW_KEY_MATERIAL "
                         "(docs/imported-key-material.md)",
    "ReplicateKey": "within the primary's partition only (Regions and partitions below)",
    "CreateAlias": "at most 50 aliases per key (LimitExceededException), AWS's default quota",
    "UpdateAlias": "at most 50 aliases per key (LimitExceededException), AWS's default quota",
    "CreateGrant": "at most 50,000 grants per key (LimitExceededException), AWS's default quota; "
                   "GranteeServicePrincipal and RetiringServicePrincipal refused: no AWS service calls keytrail "
                   "(docs/authorization.md)",
    "ListGrants": "by GranteeServicePrincipal: no grant (none is for a service principal)",
    "ListRetirableGrants": "RetiringServicePrincipal refused (no grant is for a service principal)",
    "CreateCustomKeyStore": "AWS_CLOUDHSM type on a PKCS#11 token (docs/custom-key-stores.md); "
                            "EXTERNAL_KEY_STORE refused",
}

# Why: a boto3 user in the China or GovCloud Regions reads `arn:aws-cn:…` / `arn:aws-us-gov:…`
# from AWS; answering `arn:aws:…` there breaks the ARNs they paste into policies and KeyId.
PARTITIONS = """\
## Regions and partitions

The Region is the one in the SigV4 credential scope, and every ARN keytrail writes is in that
Region's partition, as AWS's are ("Amazon Resource Names (ARNs)", IAM User Guide): `aws-cn` for
`cn-north-1` and `cn-northwest-1`, `aws-us-gov` for `us-gov-west-1` and `us-gov-east-1`, and the
isolated partitions (`aws-iso`, `aws-iso-b`, `aws-iso-e`, `aws-iso-f`, `aws-eusc`) for theirs;
every other Region name, `local` too, is in `aws`. The Region-to-partition rules are botocore's
(`partitions.json`, `regionRegex`), copied into `keytrail.kms.partitions` (a test keeps them in step).

- Responses: key and alias ARNs (`KeyMetadata.Arn`, `MultiRegionConfiguration`, `AliasArn`, the
  `KeyId` of Encrypt, Decrypt, ReEncrypt, GenerateDataKey…, ListGrants' `IssuingAccount`), and the
  ARNs in error messages (`Key 'arn:aws-cn:kms:…' does not exist`, AccessDenied's `User: …`).
- KeyId: an ARN is accepted only in its own partition and Region. `arn:aws:kms:cn-north-1:…` in
  `cn-north-1` (or `arn:aws-cn:…` in `us-east-1`) names no key: `NotFoundException` `Invalid arn aws`
  (`Invalid arn aws-cn`), as an ARN of another Region gives `Invalid arn <region>`.
- Callers: the principals file holds identities, not partitions. A caller acts in the partition of
  the Region it signs for: `arn = "arn:aws:iam::111122223333:user/alice"` calling `cn-north-1` is
  `arn:aws-cn:iam::111122223333:user/alice` there (a role session `arn:aws-cn:sts::…:assumed-role/…`),
  in key policies, grants, denial messages and the audit record's `userIdentity`; an ARN written
  with another partition in the file is treated the same way. So one principals file serves every
  partition, as one set of test credentials does.
- Policies: the default key policy names `arn:<partition>:iam::<account>:root`. A bare account id
  as Principal means that account's root in the key's partition. An ARN of another partition matches
  nothing, as in AWS, where an identity or a key exists in one partition only: `arn:aws:iam::…` as
  Principal in a key policy of a `cn-north-1` key names no caller, `arn:aws:kms:…` as Resource no key.
- Multi-Region keys: ReplicateKey into a Region of another partition (us-east-1 → cn-north-1) is
  refused with `UnsupportedOperationException`: replicas live "in a different Region of the same
  AWS partition" (ReplicateKey, API Reference). AWS does not document the exact error for this
  case; keytrail's message names both Regions and the partition.
- Audit records (`resources[].ARN`, `userIdentity.arn`, `sessionIssuer.arn`, `responseElements`),
  the Kafka message key, metrics, the detector and reports carry these ARNs unchanged; the detector
  and reports read ARNs of every partition (an `arn:aws-cn:iam::<account>:root` is the key
  account's administrator like `arn:aws:iam::<account>:root`).
"""


def render() -> str:
    model = service_model()
    lines = [
        "# AWS KMS API compatibility",
        "",
        f"Every operation of botocore's KMS service model (API version {model.api_version}, "
        f"{len(model.operation_names)} operations) and whether keytrail serves it. Requests are validated",
        "against the same model (required members, types, lengths, ranges, enums, patterns), so",
        "parameter errors carry AWS's `ValidationException` wording. Generated by",
        "`scripts/api_compatibility.py`; a test fails when this file is out of date.",
        "",
        "| Operation | Status | Notes |",
        "|---|---|---|",
    ]
    for name in model.operation_names:
        status = "supported" if name in OPERATIONS else "not yet"
        lines.append(f"| {name} | {status} | {NOTES.get(name, '')} |")
    served = sum(name in OPERATIONS for name in model.operation_names)
    lines += ["", f"{served} of {len(model.operation_names)} operations supported.", "", PARTITIONS]
    return "\n".join(lines)


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "docs" / "api-compatibility.md"
    target.write_text(render())
    sys.stdout.write(f"wrote {target}\n")
