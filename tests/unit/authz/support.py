"""Builders for authorization unit tests: principals, calls, keys and requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from keytrail.clock import ManualClock
from keytrail.kms.authz import AccessRequest
from keytrail.kms.condition_keys import request_conditions
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.evaluator import PolicyAuthorizer
from keytrail.kms.keys import Key
from keytrail.kms.store import Grant

ACCOUNT = "111122223333"
OTHER = "444455556666"
REGION = "us-east-1"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow_all_identity() -> dict[str, Any]:
    return doc({"Effect": "Allow", "Action": "kms:*", "Resource": "*"})


def user(name: str = "alice", account: str = ACCOUNT, *policies: dict[str, Any]) -> Principal:
    return Principal(
        arn=f"arn:aws:iam::{account}:user/{name}",
        account=account,
        type=IdentityType.IAM_USER,
        access_key_id=f"AKIA{name.upper():0<16}",
        principal_id=f"AIDA{name.upper()}",
        user_name=name,
        policies=tuple(policies),
    )


def role(name: str = "app", account: str = ACCOUNT, *policies: dict[str, Any]) -> Principal:
    return Principal(
        arn=f"arn:aws:sts::{account}:assumed-role/{name}/session",
        account=account,
        type=IdentityType.ASSUMED_ROLE,
        access_key_id="ASIA" + name.upper(),
        principal_id="AROA:session",
        role_arn=f"arn:aws:iam::{account}:role/{name}",
        session_name="session",
        policies=tuple(policies),
    )


def root(account: str = ACCOUNT) -> Principal:
    return Principal.account_root(account, "AKIAROOT")


def call(principal: Principal, **kwargs: Any) -> CallContext:
    return CallContext(principal=principal, region=REGION, request_id="req-1", **kwargs)


def key(policy: dict[str, Any] | str, account: str = ACCOUNT, **kwargs: Any) -> Key:
    text = policy if isinstance(policy, str) else json.dumps(policy)
    return Key(account=account, region=REGION, key_id=KEY_ID, creation_date=NOW, policy=text, **kwargs)


def grant(
    grantee: str,
    *operations: str,
    constraints: dict[str, Any] | None = None,
    grant_id: str = "a" * 64,
    retiring: str | None = None,
) -> Grant:
    return Grant(
        account=ACCOUNT,
        region=REGION,
        key_id=KEY_ID,
        grant_id=grant_id,
        grantee_principal=grantee,
        operations=operations,
        issuing_account=ACCOUNT,
        creation_date=NOW,
        token="tok",
        retiring_principal=retiring,
        constraints=constraints,
    )


def authorizer(now: datetime = NOW) -> PolicyAuthorizer:
    return PolicyAuthorizer(ManualClock(now))


def request(
    principal: Principal,
    action: str,
    the_key: Key | None,
    params: dict[str, Any] | None = None,
    grants: tuple[Grant, ...] = (),
    **call_kwargs: Any,
) -> AccessRequest:
    conditions = request_conditions(action, params or {})
    return AccessRequest(call(principal, **call_kwargs), action, the_key, conditions, grants)
