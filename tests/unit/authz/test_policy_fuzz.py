"""Policy documents with anything in any slot: parsing either accepts the document or refuses it
with MalformedPolicyDocumentException, and whatever parses can be evaluated for any caller without
an error of any other kind (a key policy is user input: nothing in it may become a 500)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keytrail.kms.authz import Verdict
from keytrail.kms.errors import KmsError, MalformedPolicyDocumentException
from keytrail.kms.policy import parse_policy

from .support import ACCOUNT, authorizer, key, request, role, root, user

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**40) | st.floats(allow_nan=False)
    | st.sampled_from(["", "*", "kms:*", "kms:Encrypt", "Allow", "Deny", ACCOUNT, f"arn:aws:iam::{ACCOUNT}:root",
                       "arn:aws:iam::*:role/x*", "10.0.0.0/8", "not-a-cidr", "true", "2026-01-01T00:00:00Z",
                       "kms:EncryptionContext:dept", "${aws:username}"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
condition_blocks = st.dictionaries(
    st.sampled_from(["StringEquals", "StringLike", "ForAnyValue:StringEquals", "ForAllValues:StringLike",
                     "StringEqualsIfExists", "Bool", "Null", "IpAddress", "NotIpAddress", "NumericLessThan",
                     "DateGreaterThan", "ArnLike", "BinaryEquals", "Unknown", "ForAnyValue:Bool"]),
    st.dictionaries(st.sampled_from(["kms:EncryptionContext:dept", "kms:EncryptionContextKeys", "aws:SourceIp",
                                     "aws:SecureTransport", "kms:CallerAccount", "aws:CurrentTime",
                                     "kms:ViaService", "aws:PrincipalArn", "kms:GrantIsForAWSResource"]),
                    junk, max_size=2),
    max_size=2,
) | junk
statements = st.fixed_dictionaries({}, optional={
    "Sid": junk, "Effect": st.sampled_from(["Allow", "Deny"]) | junk,
    "Principal": st.sampled_from(["*", {"AWS": "*"}, {"AWS": ACCOUNT}]) | st.dictionaries(
        st.sampled_from(["AWS", "Service", "Federated"]), junk, max_size=2) | junk,
    "NotPrincipal": junk,
    "Action": st.sampled_from(["kms:*", ["kms:Encrypt", "kms:Decrypt"]]) | junk, "NotAction": junk,
    "Resource": st.just("*") | junk, "NotResource": junk,
    "Condition": condition_blocks,
})
documents = st.fixed_dictionaries({}, optional={
    "Version": st.sampled_from(["2012-10-17", "2008-10-17"]) | junk, "Id": junk,
    "Statement": st.lists(statements, max_size=3) | statements | junk,
}) | junk
callers = st.sampled_from([user(), role(), root(), user("carol", "444455556666")])
actions = st.sampled_from(["kms:Encrypt", "kms:Decrypt", "kms:CreateGrant", "kms:PutKeyPolicy"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, callers, actions)
def test_any_document_is_refused_cleanly_or_evaluates(document: Any, caller: Any, action: str) -> None:
    text = json.dumps(document)
    try:
        parse_policy(text, "key")
    except MalformedPolicyDocumentException:
        return
    params = {"EncryptionContext": {"dept": "it"}, "GranteePrincipal": f"arn:aws:iam::{ACCOUNT}:user/bob",
              "Operations": ["Decrypt"]}
    try:
        verdict = authorizer().authorize(request(caller, action, key(text), params, source_ip="10.1.2.3"))
    except KmsError:  # e.g. a condition AWS refuses at evaluation time: still a client error
        return
    assert isinstance(verdict.verdict, Verdict)
