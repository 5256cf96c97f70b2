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
    "ReEncrypt": "DryRunModifiers IGNORE_CIPHERTEXT checks SourceKeyId and DestinationKeyId only",
    "GenerateDataKeyPair": "every KeyPairSpec except SM2 and ML_KEM_512; not under a custom key store key, as in AWS; "
                           "Recipient refused",
    "GenerateDataKey": "Recipient refused",
    "GenerateRandom": "Recipient refused",
    "DeriveSharedSecret": "Recipient refused",
    "GenerateDataKeyPairWithoutPlaintext": "every KeyPairSpec except SM2 and ML_KEM_512; not under a custom key store "
                                           "key, as in AWS",
    "GetParametersForImport": "RSA_2048/3072/4096 wrapping keys; RSAES_PKCS1_V1_5 and SM2 refused",
    "ImportKeyMaterial": "symmetric, HMAC, RSA and ECC material; NEW_KEY_MATERIAL for on-demand rotation of "
                         "symmetric keys (docs/imported-key-material.md)",
    "RotateKeyOnDemand": "imported keys rotate to material imported with NEW_KEY_MATERIAL "
                         "(docs/imported-key-material.md)",
    "CreateKey": "at most 100,000 keys per account and Region, every key state (LimitExceededException), "
                 "AWS's default quota, give or take the CreateKeys in flight at once (AWS's count lags too)",
    "ReplicateKey": "within the primary's partition only (Regions and partitions below); the replica counts "
                    "toward its Region's 100,000 keys",
    "CreateAlias": "at most 50 aliases per key (LimitExceededException), AWS's default quota",
    "UpdateAlias": "at most 50 aliases per key (LimitExceededException), AWS's default quota",
    "DescribeKey": "a predefined alias (`alias/aws/s3`, …) with no key yet makes its AWS managed key "
                   "(Checked against AWS below)",
    "ListAliases": "lists the predefined `alias/aws/…` aliases too, without TargetKeyId until their AWS managed "
                   "key is made",
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
  Principal in a key policy of a `cn-north-1` key names no caller (and an IAM policy's `arn:aws:kms:…`
  Resource no key of `cn-north-1`).
- Multi-Region keys: ReplicateKey into a Region of another partition (us-east-1 → cn-north-1) is
  refused with `UnsupportedOperationException`: replicas live "in a different Region of the same
  AWS partition" (ReplicateKey, API Reference). AWS does not document the exact error for this
  case; keytrail's message names both Regions and the partition.
- Audit records (`resources[].ARN`, `userIdentity.arn`, `sessionIssuer.arn`, `responseElements`),
  the Kafka message key, metrics, the detector and reports carry these ARNs unchanged; the detector
  and reports read ARNs of every partition (an `arn:aws-cn:iam::<account>:root` is the key
  account's administrator like `arn:aws:iam::<account>:root`).
"""


# Why: each of these once differed from AWS, or might have, with no source either way; what was
# found, where, and what keytrail does now, so a later change starts from the sources.
CHECKED_INTRO = """\
## Checked against AWS

Behaviours looked up in AWS's sources: botocore's KMS model (`kms/2014-11-01/service-2.json`: its
constraints and the API reference text it carries), the AWS KMS developer guide (including its
source, `awsdocs/aws-kms-developer-guide`), and the emulators' code and tests (moto, LocalStack,
whose `.snapshot.json` files are recorded against AWS). "Unchanged" means no source was found for
AWS's answer; keytrail's behaviour is then its own choice and is named as such. The asymmetric,
HMAC and post-quantum operations are checked in docs/asymmetric-keys.md ("Checked against AWS").

| Request | What AWS does, and the source | keytrail |
|---|---|---|"""
# (request, what AWS does and where that is written, what keytrail does)
CHECKED = [
    (
        "`GetKeyPolicy` of a key on the default policy",
        "The GetKeyPolicy reference's example response (also botocore's `examples-1.json`) gives its text: "
        "`{\\n  \"Version\" : \"2012-10-17\",\\n  \"Id\" : \"key-default-1\",\\n  "
        "\"Statement\" : [ {\\n …} ]\\n}`, laid out "
        "by AWS's JSON writer.",
        "That text byte for byte (it used to be Python's `json.dumps(indent=2)` layout). Keys created before "
        "keep the text they were stored with.",
    ),
    (
        "`PutKeyPolicy` then `GetKeyPolicy`: the text returned",
        "AWS returns the document re-laid out, not as sent: LocalStack's AWS-validated "
        "`test_get_put_list_key_policies` compares `json.dumps(json.loads(...))` (\"AWS policy string has "
        "newlines littered in the response\"); aws/aws-cli#9456 shows a put policy returned in the ` : ` / `[ "
        "{` layout. Whether member order is kept is not settled (that issue reports it varying).",
        "Unchanged: the text is stored and returned as sent, and CloudTrail's `requestParameters.policy` and "
        "the detector read that same text.",
    ),
    (
        "`CreateKey` / `PutKeyPolicy` with a policy over 32 KB",
        "The API reference: \"If the key policy exceeds the length constraint, KMS returns a "
        "`LimitExceededException`\"; the quota is 32 KB (32,768 bytes). The message is not documented.",
        "`LimitExceededException` `The key policy exceeds the 32 KB (32,768 bytes) size limit.` (it used to "
        "be `MalformedPolicyDocumentException`); 32,768 bytes are taken.",
    ),
    (
        "A key policy statement without `Action`/`NotAction`, without `Resource`, or with a `Resource` other "
        "than `\"*\"`",
        "The API reference (CreateKey, PutKeyPolicy) said such a statement \"has no effect\" and the requests "
        "succeed; AWS's notice of 2025 (quoted in ministryofjustice/analytical-platform#7691): \"Beginning August "
        "18, 2025, the KMS CreateKey, ReplicateKey and PutKeyPolicy API requests without a valid Action or "
        "NotAction, and Resource element in the key policy will be rejected with MalformedPolicyDocumentException "
        "… the only accepted Resource element value in a KMS key policy is \"*\"\".",
        "Refused with `MalformedPolicyDocumentException` by CreateKey, PutKeyPolicy and ReplicateKey; a policy "
        "stored before (by an earlier release) still loads, the statement applies to no request, and the "
        "detector reads it as allowing nothing.",
    ),
    (
        "A key policy naming a principal that does not exist, duplicate `Sid`s, a member given twice in one "
        "object",
        "The API reference: the principals \"must exist and be visible to KMS\" (`Policy contains a statement "
        "with one or more invalid principals.`); AWS's knowledge-center page on that error also says to "
        "remove \"duplicate JSON policy elements and SID values\", without saying AWS refuses them.",
        "Unchanged: keytrail cannot tell a principal outside its principals file from one that does not "
        "exist, so a well-formed ARN is taken; duplicate `Sid`s are taken; of a member given twice the last "
        "is read, by the evaluator and the detector alike. A value that names no principal at all (`bob`, a "
        "user group's ARN) is refused with AWS's message, then the statement and the value (`… invalid "
        "principals. Statement 2 names 'bob'.`; it used to read `Policy statement 2 contains a statement …`).",
    ),
    (
        "`DescribeKey` and `ListAliases` with the predefined aliases of AWS managed keys (`alias/aws/s3`, …)",
        "The DescribeKey reference: \"If you call DescribeKey on a predefined AWS alias, that is, an AWS alias "
        "with no key ID, AWS KMS creates an AWS managed key\", and associates the alias (Terraform's "
        "`data \"aws_kms_key\"` does this to learn the ARN for SSE-KMS). The ListAliases reference: the response "
        "\"might include several aliases that do not have a TargetKeyId field\", predefined aliases not yet "
        "associated with a key. An AWS managed key (developer guide, \"AWS managed keys\"): KeyManager `AWS`, "
        "rotated every year, a key policy no one can change that allows `Encrypt`, `Decrypt`, `ReEncrypt*`, "
        "`GenerateDataKey*` and `DescribeKey` to the account's principals through the service only "
        "(`kms:CallerAccount`, `kms:ViaService`), and `Describe*`, `Get*`, `List*` to the account; no storage "
        "charge.",
        "`DescribeKey` on a predefined alias (acm, backup, cloud9, codecommit, connect, dynamodb, ebs, ecr, "
        "elasticfilesystem, es, fsx, glue, kafka, kinesis, kinesisvideo, lambda, lex, lightsail, rds, redshift, "
        "s3, secretsmanager, sns, sqs, ssm, xray) with no key yet makes its AWS managed "
        "key and associates the alias (it used to be `NotFoundException`); once, however many nodes are asked at "
        "once (its key id is fixed by account, Region and alias, and it is made under that key's lock). Other "
        "operations naming such an alias answer `NotFoundException` until then. Description: `Default key that "
        "protects my S3 objects when no other key is defined` (the service's words vary on AWS, older keys say "
        "`master key`). With AWS's key policy, a direct `Encrypt` or `GenerateDataKey` and every change "
        "(`EnableKey`, `DisableKey`, `ScheduleKeyDeletion`, `PutKeyPolicy`, `TagResource`, `UntagResource`, "
        "`CreateAlias` onto it, `Enable`/`DisableKeyRotation`, `RotateKeyOnDemand`, `UpdateKeyDescription`, "
        "`CreateGrant`) is `AccessDeniedException`, for an IAM user allowed `kms:*` and the account root alike: "
        "no AWS service calls keytrail, so nothing uses the key. `UpdateAlias` and `DeleteAlias` of "
        "`alias/aws/…` stay `InvalidAliasNameException`, and `CreateAlias` refuses the prefix, as AWS does. "
        "`ListAliases` without `KeyId` lists the predefined aliases, in name order among the caller's, with "
        "`AliasName` and `AliasArn` only until their key is made. CloudTrail: the `DescribeKey` call alone (no "
        "`CreateKey` service event is written). Costs: no storage charge, requests priced as any key's; the "
        "unused-key rule and the report skip it (its `alias/aws/…` names it AWS managed). Any other "
        "`alias/aws/<name>` is `NotFoundException` as any unknown alias.",
    ),
    (
        "`CreateKey` with `XksKeyId`, or `CustomKeyStoreId`, and an `Origin` that is no custom key store (or none)",
        "The CreateKey reference: `XksKeyId` \"is not valid for KMS keys with any other Origin value\" than "
        "`EXTERNAL_KEY_STORE`; `CustomKeyStoreId` goes with `Origin` `AWS_CLOUDHSM` or `EXTERNAL_KEY_STORE`. "
        "The error code is not documented.",
        "`ValidationException`, e.g. `CustomKeyStoreId is valid only when Origin is AWS_CLOUDHSM or "
        "EXTERNAL_KEY_STORE, not AWS_KMS.`, and no key is made (they used to be dropped, and a caller who left "
        "`Origin` out got a key in keytrail's own store).",
    ),
    (
        "`CreateCustomKeyStore` or `UpdateCustomKeyStore` with members of the other type of store: an `Xks*` "
        "member (`XksProxyUriEndpoint`, `XksProxyAuthenticationCredential`, …) for an `AWS_CLOUDHSM` store, or "
        "`CloudHsmClusterId`, `TrustAnchorCertificate` or `KeyStorePassword` with `CustomKeyStoreType` "
        "`EXTERNAL_KEY_STORE`",
        "botocore's model: each `Xks*` member is \"required for custom key stores with a CustomKeyStoreType of "
        "EXTERNAL_KEY_STORE\" (CreateCustomKeyStore) and \"valid only for\" them (UpdateCustomKeyStore), each "
        "CloudHSM member likewise for `AWS_CLOUDHSM`. The error code is not documented.",
        "`ValidationException` naming the members, never their values, e.g. `XksProxyUriEndpoint is valid only "
        "when CustomKeyStoreType is EXTERNAL_KEY_STORE, not AWS_CLOUDHSM.`, and nothing is made or changed (they "
        "used to be dropped without a word). An `EXTERNAL_KEY_STORE` request with its own members only is "
        "`UnsupportedOperationException`, as before.",
    ),
    (
        "`GrantTokens` with more than 10 tokens, an empty token, or one over 8,192 characters",
        "`ValidationException` with the model's constraint message (`GrantTokenList` 0..10, `GrantTokenType` "
        "1..8192), e.g. `1 validation error detected: Value at 'grantTokens' failed to satisfy constraint: "
        "Member must have length less than or equal to 10`",
        "The same, at the wire. The value of a token list is not echoed.",
    ),
    (
        "A request whose values would take too long to compare with the conditions of the policies that apply "
        "(16,000 encryption context pairs against a key policy of 2,800 `StringLike` patterns on "
        "`kms:EncryptionContextKeys`: 46 million comparisons)",
        "Not documented: the API reference gives no limit on the pairs of an encryption context, and the "
        "request fits the 256 KB body.",
        "`AccessDeniedException` `User: … is not authorized to perform: … on resource: …: comparing this "
        "request's values with the conditions of the policies that apply would take N comparisons, over "
        "keytrail's limit of 100,000 a request`, before any comparison, whoever the caller (it used to hold "
        "the node's one serving thread for 30 s, every other caller waiting). The weight counts values and "
        "the characters scanned (docs/authorization.md, \"Decision cache and its cost\").",
    ),
    (
        "`GrantTokens` holding a string that is not a grant token",
        "`InvalidGrantTokenException`, \"The request was rejected because the specified grant token is not "
        "valid\", in the errors of every operation that takes `GrantTokens` (API reference). The message AWS "
        "sends is not documented.",
        "`InvalidGrantTokenException` `The grant token is invalid.` for any token `CreateGrant` did not return "
        "(it used to be ignored), each checked against the grant it names: its first token, kept with the "
        "grant, or another made for a retry by `Name`, whose tag the first keys; one in keytrail's form but "
        "made up, cut or changed is refused too (it used to be taken). The token of a retired grant names no "
        "grant and is refused the same way: AWS documents no answer for it. So is a token of another "
        "Region's grant, in `GrantTokens` and in `RetireGrant`: grants are Regional, as their keys "
        "(`RetireGrant` in one Region used to retire another Region's grant by its token). Tokens are "
        "checked where the call is authorized, once its key is found: such a refusal is logged with the "
        "call's key, encryption context and algorithm like any refused call (it used to lose them), and a "
        "call naming a key that does not exist is `NotFoundException` whatever its tokens.",
    ),
    (
        "`RetireGrant` with a `GrantToken` and a `KeyId` of another key, or a `GrantId` of another grant",
        "The API reference says to name the grant by its token, or by `GrantId` and `KeyId`; nothing on both. "
        "LocalStack refuses a mismatching `KeyId` with a `ValidationError`, not recorded against AWS.",
        "Unchanged: the token names the grant and `KeyId` is not read; a `GrantId` other than the token's "
        "grant is `InvalidGrantIdException` `The grant ID does not match the grant token.`",
    ),
    (
        "`CreateGrant` with `Operations: []`",
        "The model requires `Operations` but gives the list no minimum length; the API reference only refuses "
        "operations the key does not support and a list of `CreateGrant` alone (`ValidationException` `Grants "
        "must not contain only the CreateGrant operation.`, quoted from AWS in ansible/ansible#31960). AWS KMS "
        "makes no grant without operations.",
        "Refused before access is decided: `ValidationException` `1 validation error detected: Value '[]' at "
        "'operations' failed to satisfy constraint: Member must have length greater than or equal to 1` (a grant "
        "was created that allowed nothing, and an IAM policy with `ForAllValues` on `kms:GrantOperations` let "
        "it through).",
    ),
    (
        "`CreateGrant` naming an operation more than once (`Operations: [\"Decrypt\", \"Encrypt\", \"Decrypt\"]`)",
        "The model's `GrantOperationList` is bounded by the request's size only (256 KB: some 20,000 operations); "
        "the API reference says nothing of an operation named twice. A grant allows a set of operations.",
        "Each operation kept once, in the order first named (`ListGrants` shows `[\"Decrypt\", \"Encrypt\"]`), "
        "and a retry by `Name` naming the same operations, in any order or repeated, returns the grant. The list "
        "used to be kept as sent: a grant of 220 KB, a `ListGrants` page of 22 MB, 50,000 such grants (AWS's "
        "quota a key) 11 GB of the node's memory. The audit record logs `operations` as sent, as CloudTrail logs "
        "a request.",
    ),
    (
        "An alias name or alias ARN as the `KeyId` of an operation that takes a key id or key ARN only "
        "(`GetKeyPolicy`, `PutKeyPolicy`, `ListKeyPolicies`, `TagResource`, `UntagResource`, `ListResourceTags`, "
        "`CreateGrant`, `ListGrants`, `RevokeGrant`, `RetireGrant`, `ListAliases`, `EnableKey`, `DisableKey`, "
        "and the rotation, deletion, import and multi-Region operations)",
        "`InvalidArnException` `Key Aliases are not supported for this operation.`, as AWS answers CreateGrant "
        "(boto/boto#3202; Lambda relays it as \"KMS Exception: InvalidArnException KMS Message: Key Aliases are "
        "not supported for this operation.\") and GetKeyPolicy and ListResourceTags (as their callers quote "
        "it); every one of these operations lists `InvalidArnException` in the model. `CreateAlias` and "
        "`UpdateAlias`, whose `TargetKeyId` takes a key id or key ARN too, list none.",
        "That `InvalidArnException`, whether or not the alias exists (it used to be `NotFoundException` "
        "`Invalid keyId '<alias>'` for all but `CreateGrant`). `TargetKeyId` of `CreateAlias` and "
        "`UpdateAlias`: `NotFoundException` `Invalid keyId '<alias>'` (unchanged).",
    ),
    (
        "`AliasName` `alias/` alone",
        "The API reference: the name \"must begin with `alias/` followed by a name, such as "
        "`alias/ExampleAlias`\"; the model's pattern `^[a-zA-Z0-9:/_-]+$` lets it through. AWS's "
        "CloudFormation schema for `AWS::KMS::Alias` (`^(alias/)[a-zA-Z0-9:/_-]+$`) and the AWS CDK (`Alias "
        "must include a value after \"alias/\"`) refuse it. AWS's error for it is not documented.",
        "`CreateAlias`: `InvalidAliasNameException` `Alias must include a name after the prefix \"alias/\".` "
        "(the error the model lists for an alias name that is not valid; it used to create the alias). "
        "`UpdateAlias`, `DeleteAlias` and `KeyId` `alias/` find no alias: `NotFoundException` `Alias <alias "
        "ARN> is not found.`",
    ),
    (
        "`AliasName` with a colon (`alias/Service:Test`)",
        "The API reference: an alias name \"can contain only alphanumeric characters, forward slashes (/), "
        "underscores (_), and dashes (-)\"; the model's pattern `^[a-zA-Z0-9:/_-]+$` takes `:` too (alias ARNs "
        "share the shape). AWS answers `CreateAlias` with `ValidationException` `alias/Service:Test contains "
        "invalid characters for an alias` (quoted in hashicorp/terraform-provider-aws#12891).",
        "`CreateAlias`: that `ValidationException` (it used to create the alias). `UpdateAlias`, `DeleteAlias` "
        "and `KeyId` find no such alias: `NotFoundException`.",
    ),
    (
        "`AliasName` beginning `alias/aws/` in `CreateAlias`, `UpdateAlias` and `DeleteAlias`",
        "The model's `AliasName` of `CreateAlias`: \"The alias name cannot begin with alias/aws/. The alias/aws/ "
        "prefix is reserved for Amazon Web Services managed keys\"; `InvalidAliasNameException` (\"the "
        "specified alias name is not valid\") is among CreateAlias's errors. The model lists it for neither "
        "`UpdateAlias` nor `DeleteAlias`, and AWS's answer there is not documented (moto answers all three "
        "with `NotAuthorizedException`, a code no KMS model has; not recorded against AWS).",
        "`InvalidAliasNameException` `Alias names that begin with alias/aws/ are reserved.` in all three "
        "(unchanged: for `UpdateAlias` and `DeleteAlias` an error their model does not list, kept for want of "
        "AWS's answer). `alias/aws` without the slash, and `alias/AWS/…`, are names like any other.",
    ),
    (
        "`DryRun` true: the HTTP status of `DryRunOperationException`",
        "The model gives the exception no status (botocore reads the code from `__type` at any status, and "
        "neither its legacy nor its standard retry mode retries a 412). The API reference lists "
        "`DryRunOperationException` with HTTP status 412; LocalStack's snapshots recorded against AWS are "
        "said to show 400 for it, as for every client error they capture.",
        "Unchanged: 412, the API reference's; `The request would have succeeded, but the DryRun option is "
        "set.`",
    ),
    (
        "A request body that is not plainly the operation's JSON object: an empty or blank body, a member "
        "given as `null`, a member the model does not name (`{\"KeyId\": …, \"Extra\": 1}`), a member named "
        "twice, an integer member written `32.0` or `1e2`, a number past its member's 32 or 64 bits, "
        "`NaN` or `Infinity`, a UTF-8 byte order mark, bytes that are not UTF-8, nesting past 1,024 levels, "
        "text after the object",
        "Smithy's `awsJson1_1` protocol tests, the wire contract AWS's SDKs are generated from: "
        "\"Service implementations must support no payload or an empty object payload for operations that "
        "define no input\" (`json_1_1_service_supports_empty_payload_for_no_input_shape`; \"AWS service "
        "implementations support requests with no payload or requests that send `{}`\"), and a `null` "
        "member is dropped (`AwsJson11ServersDontDeserializeNullStructureValues`). What KMS does with the "
        "others is not documented (botocore refuses an unknown member before sending it).",
        "Unchanged: an empty or blank body reads as `{}` and a `null` member as absent; a member the model "
        "does not name is ignored (neither read nor logged in the audit record); of a member named twice the "
        "last is read; `32.0` and `1e2` are the integers 32 and 100. The rest is `SerializationException` "
        "(`The request body is not valid JSON.`, or `Expected a number at 'numberOfBytes'`, "
        "`Number out of range of a 32-bit integer at 'limit'`), never a 500.",
    ),
    (
        "Size of an `EncryptionContext`: how many pairs, how long a key or value, an empty key or value; "
        "the same in `GrantConstraints`",
        "The model gives `EncryptionContextType` no bounds, and the API reference and the developer guide's "
        "\"Encryption context\" page give no size (the 8,192 characters quoted for it are Alibaba Cloud "
        "KMS's). For grant constraints the `CreateGrant` reference: \"Each constraint value can include up "
        "to 8 encryption context pairs. The encryption context value in each constraint cannot exceed 384 "
        "characters.\"",
        "Unchanged: any number of pairs, any length, empty keys and values, as far as the 256 KiB request "
        "body (`SerializationException` beyond); a context too costly for the policies that apply is the "
        "`AccessDeniedException` of the row on requests too costly to compare with the policies. "
        "Constraints: at most 8 pairs, keys and values of at most 384 characters, else `ValidationException`. "
        "Lengths here and in the model's checks are counted in Unicode code points (how AWS counts "
        "characters beyond the BMP is not documented).",
    ),
    (
        "A JSON string holding an escaped lone UTF-16 surrogate (`\"\\ud800\"`, as botocore's `json.dumps` "
        "writes a Python string with one) in any member: `Description`, `AliasName`, tags, encryption "
        "context, `Policy`",
        "Not documented. RFC 8259 (section 8.2) lets the escape through the grammar but calls what a receiver "
        "does with it unpredictable. The model's patterns (`AliasNameType`, `PolicyType`, `MarkerType`, …) "
        "admit no surrogate; `Description`, tag keys and values and encryption context have no pattern, so "
        "nothing in the model says what AWS keeps of one.",
        "Unchanged: `SerializationException` `The request body is not valid JSON.` for the whole request, "
        "whatever the member (the text could be neither stored, logged nor answered as UTF-8); never a 500.",
    ),
    (
        "`ImportKeyMaterial` into an `Enabled`, `Disabled` or `PendingImport` key",
        "Key state table (\"Key states of AWS KMS keys\"): `PendingImport` succeeds; `Enabled` and `Disabled` "
        "succeed if the key has imported material, else `UnsupportedOperationException` (note 9); "
        "`PendingDeletion` is `KMSInvalidStateException` (note 8). The API reference: the key state \"changes "
        "from PendingImport to Enabled\" (its newer text also says the state \"must be PendingImport or "
        "Enabled\", at odds with the table for `Disabled`). The state of a `Disabled` key after an import is "
        "not documented.",
        "Unchanged: all three succeed; `PendingImport` becomes `Enabled` once every material of the key is "
        "imported again, `Enabled` stays `Enabled`, and `Disabled` stays `Disabled`.",
    ),
    (
        "`Limit` of `ListKeys`, `ListAliases`, `ListGrants`, `ListRetirableGrants`, `ListKeyPolicies`, "
        "`ListResourceTags`, `ListKeyRotations`",
        "The model's `LimitType` is 1..1000 for all seven; outside it, `ValidationException` `1 validation "
        "error detected: Value '0' at 'limit' failed to satisfy constraint: Member must have value greater "
        "than or equal to 1` (the template of LocalStack's AWS-recorded snapshots). The API reference's prose "
        "is narrower for some: 1..1000, default 100, for `ListKeys`, `ListKeyPolicies` and `ListKeyRotations`; "
        "1..100, default 50, for `ListAliases`, `ListGrants` and `ListRetirableGrants`; 1..50, default 50, for "
        "`ListResourceTags`. No error or cap is documented for a value over the narrower range, and code "
        "written against AWS calls `list_aliases(Limit=1000)`.",
        "Unchanged: 1..1000 everywhere, a page holds at most `Limit` items, and the defaults are the API "
        "reference's.",
    ),
    (
        "A `Marker` from another listing: another operation's, another key's (`ListGrants`, "
        "`ListResourceTags`, `ListKeyRotations`, `ListAliases` with `KeyId`), another Region's",
        "The model: `NextMarker` is \"the value to use for the `Marker` parameter in a subsequent request\", "
        "and `InvalidMarkerException` \"the marker that specifies where pagination should next begin is not "
        "valid\"; `ListResourceTags`: \"Do not assume or infer any information from this value\". AWS's "
        "answer to a marker of another listing is not documented.",
        "keytrail's choice on that ground: `InvalidMarkerException` `The marker is not valid.` A marker names "
        "its listing; it used to be taken as a position in any listing of the same shape (a `ListKeys` "
        "marker in `ListGrants`, key A's in key B's), answering a short or empty last page with `Truncated` "
        "false. So is a marker made up in keytrail's format whose position no page of the listing ends at "
        "(`ListAliases`: anything but one name), even for a listing with nothing in it (`ListAliases` took one "
        "as past the end of an empty listing while it held every alias in memory). `ListKeyPolicies` (one "
        "policy; the model lists no `InvalidMarkerException` for it) reads no marker.",
    ),
    (
        "`DisconnectCustomKeyStore` on a `DISCONNECTING` store; `ConnectCustomKeyStore` on a `CONNECTING` one",
        "`CustomKeyStoreInvalidStateException` when \"You requested the DisconnectCustomKeyStore operation on a "
        "custom key store with a ConnectionState of DISCONNECTING or DISCONNECTED. This operation is valid for "
        "all other ConnectionState values\", and for `ConnectCustomKeyStore` on `DISCONNECTING` or `FAILED`, "
        "valid in every other state (the exception's text in the model).",
        "The same. `DisconnectCustomKeyStore` on `DISCONNECTING` used to be accepted, as the way out of a "
        "store a crash left so; the scheduler now settles such a store (next rows).",
    ),
    (
        "A custom key store whose connection attempt never ends (the node connecting it died)",
        "Not documented as such. `ConnectCustomKeyStore` \"starts the connection process\", which \"can take an "
        "extended amount of time to complete\" (\"up to 20 minutes\" in the model's older text, as in "
        "aws-sdk-kms 0.22 on docs.rs); `FAILED` \"indicates that an attempt to connect was unsuccessful. The "
        "ConnectionErrorCode field in the response indicates the cause\"; `INTERNAL_ERROR`: \"KMS could not "
        "complete the request due to an internal error. Retry the request. For ConnectCustomKeyStore "
        "requests, disconnect the custom key store before trying to connect again\" (`CustomKeyStoresListEntry`).",
        "keytrail's choice on that ground: at its next scheduler tick (or start), a node finding the store "
        "`CONNECTING` while no live node holds the lock its Connect holds moves it to `FAILED` with "
        "`INTERNAL_ERROR`, and the store is disconnected and connected again as for any failure "
        "(docs/custom-key-stores.md).",
    ),
    (
        "A custom key store whose disconnect never ends (the node disconnecting it died)",
        "Not documented: AWS shows `DISCONNECTING` only while its own disconnect runs.",
        "keytrail's choice: the disconnect the user asked for is finished at the next tick of a node (or "
        "start): the store's keys become `Unavailable` and the store `DISCONNECTED`.",
    ),
    (
        "Two custom key stores `CONNECTED` on one cluster",
        "Cannot happen: a cluster backs one store (`CloudHsmClusterInUseException`). The closest AWS state: "
        "`USER_LOGGED_IN`, \"The kmsuser CU account is logged into the associated CloudHSM cluster. This "
        "prevents KMS from rotating the kmsuser account password and logging into the cluster. Before you can "
        "connect your custom key store to its CloudHSM cluster, you must log the kmsuser CU out of the "
        "cluster\" (`CustomKeyStoresListEntry`).",
        "Stores of an old data dir on one token: at each tick, the store created first stays `CONNECTED`, "
        "each other one becomes `FAILED` with `USER_LOGGED_IN`, its keys `Unavailable`, with one error line "
        "naming both stores and the token.",
    ),
    (
        "A request dated by a `Date` header, without `X-Amz-Date`",
        "\"Handling dates in Signature Version 4\" (AWS General Reference): \"AWS first checks the x-amz-date "
        "header or parameter for a time stamp. If AWS can't find a value for x-amz-date, it looks for the date "
        "header\", and the credential scope's day must match the request's, else the request is rejected. The "
        "time signed is in ISO 8601 basic format: AWS's SigV4 test suite (`aws4_testsuite`, `get-vanilla`) "
        "sends `Date:Mon, 09 Sep 2011 23:36:00 GMT`, signs `date;host` and puts `20110909T233600Z` in the "
        "string to sign; botocore's `SigV4Auth` does the same for a request that carries `Date` "
        "(`_set_necessary_date_headers`). AWS's error for a `Date` that is no date is not documented.",
        "The same: `X-Amz-Date`, else `Date`, held to the 5-minute window and the scope's day; `Date` is an "
        "HTTP-date (any zone, turned into UTC) or the basic format. Neither header: "
        "`IncompleteSignatureException` `Authorization header requires existence of either a 'X-Amz-Date' or "
        "a 'Date' header.`; an unreadable `Date`: `IncompleteSignatureException` `Date must be an HTTP-date or "
        "in ISO-8601 'basic format'. Got '…'.` (keytrail's words). A request dated by `Date` used to be refused.",
    ),
    (
        "A signed header value with bytes over 0x7F",
        "SigV4 signs the canonical request's bytes. The Rust SDK signs a UTF-8 header value's bytes and sends "
        "them, checked against S3 PutObject with non-ASCII metadata (smithy-lang/smithy-rs#710, fixing "
        "awslabs/aws-sdk-rust#226); the Go and Java SDKs send the UTF-8 bytes they sign too. botocore signs "
        "the UTF-8 bytes of a value's characters but sends them as Latin-1 (http.client): checked on the bytes "
        "sent, that signature fails; S3 documents user metadata as US-ASCII over REST (aws/aws-sdk-js#820).",
        "Both verify: the bytes as sent (blanks collapsed as AWS's Trimall does, ASCII blanks only), and "
        "botocore's reading. An all-ASCII request computes one signature, as before. Only botocore's reading "
        "used to verify.",
    ),
    (
        "`X-Amz-Security-Token` the service did not issue (an `AWS_SESSION_TOKEN` left in the environment "
        "with long-term keys)",
        "Refused: `UnrecognizedClientException` (`InvalidClientTokenId` in STS and IAM) `The security token "
        "included in the request is invalid.` (AWS re:Post Knowledge Center, \"iam-credentials-token\": "
        "credentials \"expired or deleted\" or \"an incorrect key pair\"; a leftover session token is a common "
        "cause: bobbyhadz.com, \"The Security Token included in the Request is Invalid\").",
        "Unchanged: keytrail issues no session tokens and has no session credentials (a role entry in the "
        "principals file is a long-term key pair acting as an assumed-role session), so there is no token to "
        "check one against: the header is signed like every `x-amz-*` header and its value ignored "
        "(docs/principals.md). An unknown access key gets `UnrecognizedClientException` with AWS's message.",
    ),
    (
        "A KMS call from a web page (the AWS SDK for JavaScript in a browser, `@aws-crypto/client-browser`): the "
        "browser's preflight `OPTIONS /`, then the call with its `Origin`",
        "AWS KMS allows cross-origin calls: aws-sdk-js's `apis/metadata.json` marks `kms` `\"cors\": true`, and "
        "its preflight was recorded answering `200` with `Access-Control-Allow-Origin: *`, the headers asked for, "
        "`Access-Control-Allow-Methods: POST`, `Access-Control-Expose-Headers: x-amzn-RequestId,x-amzn-ErrorType,"
        "x-amzn-ErrorMessage,Date` and `Access-Control-Max-Age: 172800` (AllanZhengYP/cors-test, `output.md`).",
        "That preflight answer (not audited: no KMS call is made), and a call that has an `Origin` is answered "
        "with `Access-Control-Allow-Origin: *` and those exposed headers; the preflight used to be `404` "
        "`UnknownOperationException`, so the browser sent no call (`TypeError: Failed to fetch`). keytrail's "
        "choice: a `--dev-credentials` node, which takes any access key unsigned, lets in only pages of this "
        "machine (`http(s)://localhost`, `127.0.0.1` or `[::1]`, any port; the origin is named back, with "
        "`Vary: Origin`) and answers another page's preflight `403` `AccessDeniedException`, so that no web page "
        "the developer opens can use it. `/metrics` and `/_keytrail/*` let in no other origin.",
    ),
]


def checked_section() -> str:
    rows = [f"| {request} | {aws} | {ours} |" for request, aws, ours in CHECKED]
    return "\n".join([CHECKED_INTRO, *rows]) + "\n"

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
    lines += ["", f"{served} of {len(model.operation_names)} operations supported.", "", PARTITIONS,
              checked_section()]
    return "\n".join(lines)


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "docs" / "api-compatibility.md"
    target.write_text(render())
    sys.stdout.write(f"wrote {target}\n")
