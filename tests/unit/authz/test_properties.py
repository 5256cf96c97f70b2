"""Properties of the evaluator: Deny never widens, Allow never narrows, order never matters."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keytrail.kms.authz import Verdict

from .support import ACCOUNT, OTHER, authorizer, doc, key, request, role, root, user

PRINCIPALS = [
    f"arn:aws:iam::{ACCOUNT}:user/alice",
    f"arn:aws:iam::{ACCOUNT}:user/bob",
    f"arn:aws:iam::{ACCOUNT}:role/app",
    f"arn:aws:iam::{ACCOUNT}:root",
    OTHER,
    "*",
]
ACTIONS = ["kms:*", "kms:Encrypt", "kms:Decrypt", "kms:Generate*", "kms:Describe*", "kms:?ncrypt"]
CONDITIONS: list[dict[str, Any]] = [
    {},
    {"StringEquals": {"kms:EncryptionContext:dept": "it"}},
    {"StringNotEquals": {"kms:EncryptionContext:dept": "it"}},
    {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": ["d*"]}},
    {"Bool": {"aws:SecureTransport": "true"}},
    {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
    {"StringEqualsIfExists": {"kms:EncryptionContext:app": "x"}},
    {"Null": {"kms:EncryptionContextKeys": "true"}},
]

key_statements = st.builds(
    lambda effect, principal, actions, condition: {
        "Effect": effect,
        "Principal": {"AWS": principal},
        "Action": actions,
        "Resource": "*",
        **({"Condition": condition} if condition else {}),
    },
    st.sampled_from(["Allow", "Deny"]),
    st.sampled_from(PRINCIPALS),
    st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=2),
    st.sampled_from(CONDITIONS),
)
identity_statements = st.builds(
    lambda effect, actions, condition: {
        "Effect": effect,
        "Action": actions,
        "Resource": "*",
        **({"Condition": condition} if condition else {}),
    },
    st.sampled_from(["Allow", "Deny"]),
    st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=2),
    st.sampled_from(CONDITIONS),
)
callers = st.sampled_from(["alice", "bob", "app", "root", "carol"])
contexts = st.sampled_from([{}, {"dept": "it"}, {"dept": "hr", "app": "x"}, {"app": "y"}])
requests = st.tuples(
    callers,
    st.sampled_from(["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"]),
    contexts,
    st.booleans(),
    st.sampled_from(["10.1.1.1", "127.0.0.1"]),
)


def rank(verdict: Verdict) -> int:
    return {Verdict.EXPLICIT_DENY: 0, Verdict.IMPLICIT_DENY: 1, Verdict.ALLOW: 2}[verdict]


def decide(
    key_statements: list[dict[str, Any]], identity: list[dict[str, Any]], req: tuple[Any, ...]
) -> Verdict:
    who, action, context, secure, ip = req
    identity_policies = (doc(*identity),) if identity else ()
    principal = {
        "alice": lambda: user("alice", ACCOUNT, *identity_policies),
        "bob": lambda: user("bob", ACCOUNT, *identity_policies),
        "app": lambda: role("app", ACCOUNT, *identity_policies),
        "root": lambda: root(ACCOUNT),
        "carol": lambda: user("carol", OTHER, *identity_policies),
    }[who]()
    the_key = key(json.dumps(doc(*key_statements)))
    params = {"EncryptionContext": context} if context else {}
    req_ = request(principal, action, the_key, params, secure_transport=secure, source_ip=ip)
    return authorizer().authorize(req_).verdict


@settings(max_examples=300, deadline=None)
@given(
    st.lists(key_statements, min_size=1, max_size=4),
    st.lists(identity_statements, max_size=3),
    key_statements,
    requests,
)
def test_adding_a_deny_to_the_key_policy_never_widens(
    statements: Any, identity: Any, extra: Any, req: Any
) -> None:
    deny = {**extra, "Effect": "Deny"}
    assert rank(decide([*statements, deny], identity, req)) <= rank(decide(statements, identity, req))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(key_statements, min_size=1, max_size=4),
    st.lists(identity_statements, max_size=3),
    identity_statements,
    requests,
)
def test_adding_a_deny_to_an_identity_policy_never_widens(
    statements: Any, identity: Any, extra: Any, req: Any
) -> None:
    deny = {**extra, "Effect": "Deny"}
    assert rank(decide(statements, [*identity, deny], req)) <= rank(decide(statements, identity, req))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(key_statements, min_size=1, max_size=4),
    st.lists(identity_statements, max_size=3),
    key_statements,
    identity_statements,
    requests,
)
def test_adding_an_allow_never_narrows(
    statements: Any, identity: Any, key_extra: Any, id_extra: Any, req: Any
) -> None:
    before = decide(statements, identity, req) is Verdict.ALLOW
    key_allow = {**key_extra, "Effect": "Allow"}
    id_allow = {**id_extra, "Effect": "Allow"}
    assert not before or decide([*statements, key_allow], identity, req) is Verdict.ALLOW
    assert not before or decide(statements, [*identity, id_allow], req) is Verdict.ALLOW


@settings(max_examples=300, deadline=None)
@given(
    st.lists(key_statements, min_size=1, max_size=5),
    st.lists(identity_statements, max_size=4),
    st.randoms(use_true_random=False),
    requests,
)
def test_statement_order_never_matters(statements: Any, identity: Any, rnd: Any, req: Any) -> None:
    shuffled_key, shuffled_identity = list(statements), list(identity)
    rnd.shuffle(shuffled_key)
    rnd.shuffle(shuffled_identity)
    assert decide(statements, identity, req) == decide(shuffled_key, shuffled_identity, req)
