"""Who is calling, from where, in which Region: the request context every operation receives."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from keytrail.kms.call_values import call_value
from keytrail.kms.partitions import DEFAULT_PARTITION, arn_partition, with_partition

__all__ = ["ACCOUNT_ID", "ORGANIZATION_ID", "CallContext", "IdentityType", "Principal"]

# AWS Organizations' organization id: "o-" and 10 to 32 lowercase letters or digits (fullmatch it).
ORGANIZATION_ID = re.compile(r"o-[a-z0-9]{10,32}", re.ASCII)
# An AWS account id: 12 digits (fullmatch it).
ACCOUNT_ID = re.compile(r"[0-9]{12}", re.ASCII)


class IdentityType(StrEnum):
    """CloudTrail `userIdentity.type` values keytrail produces."""

    ROOT = "Root"
    IAM_USER = "IAMUser"
    ASSUMED_ROLE = "AssumedRole"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    `arn` is the ARN the caller acts as (for a role: the assumed-role session ARN); `policy_arn`
    is the ARN that key policies and identity policies name (for a role: the role ARN).
    `policies` are the caller's IAM identity policies, as parsed JSON documents; `tags` the IAM
    tags of the user or role (aws:PrincipalTag/<key>), as (key, value) pairs.
    """

    arn: str
    account: str
    type: IdentityType
    access_key_id: str
    principal_id: str
    user_name: str | None = None
    role_arn: str | None = None
    session_name: str | None = None
    policies: tuple[dict[str, Any], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def policy_arn(self) -> str:
        return self.role_arn or self.arn

    @property
    def partition(self) -> str:
        return arn_partition(self.arn) or DEFAULT_PARTITION

    @property
    def root_arn(self) -> str:
        """The caller's account root, in the caller's partition (what a policy naming the account holds)."""
        return f"arn:{self.partition}:iam::{self.account}:root"

    def in_partition(self, partition: str) -> Principal:
        """This principal as it calls in a Region of `partition`: its ARNs in that partition."""
        if self.partition == partition:
            return self
        role_arn = with_partition(self.role_arn, partition) if self.role_arn else None
        return replace(self, arn=with_partition(self.arn, partition), role_arn=role_arn)

    @classmethod
    def account_root(cls, account: str, access_key_id: str) -> Principal:
        """The root identity of `account` (used by `--dev-credentials`)."""
        return cls(
            arn=f"arn:aws:iam::{account}:root",
            account=account,
            type=IdentityType.ROOT,
            access_key_id=access_key_id,
            principal_id=account,
        )


@call_value
class CallContext:
    """Everything about one API call that is not a request parameter."""

    principal: Principal
    region: str
    request_id: str
    source_ip: str = "127.0.0.1"
    user_agent: str = ""
    secure_transport: bool = False
    tls_details: dict[str, str] | None = field(default=None)
    # Each account's AWS Organizations id, as the principals file lists them (aws:PrincipalOrgID,
    # aws:ResourceOrgID); an account not listed is in no organization.
    organizations: Mapping[str, str] = field(default_factory=dict)

    @property
    def account(self) -> str:
        return self.principal.account
