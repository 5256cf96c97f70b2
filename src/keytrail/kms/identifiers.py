"""Key ids, aliases and ARNs, and the rules AWS applies when a caller names a key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

from keytrail.kms.partitions import ARN_PARTITION, partition_of

__all__ = [
    "KeyRef",
    "RefKind",
    "alias_arn",
    "is_key_id",
    "key_arn",
    "parse_key_ref",
]

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MRK = re.compile(r"^mrk-[0-9a-f]{32}$")
_ARN = re.compile(rf"^arn:({ARN_PARTITION}):kms:([a-z0-9-]+):(\d{{12}}):(key|alias)/(.+)$")


def is_key_id(value: str) -> bool:
    """True for a well-formed key id: a lowercase UUID or `mrk-` + 32 lowercase hex."""
    return bool(_UUID.fullmatch(value) or _MRK.fullmatch(value))


def key_arn(region: str, account: str, key_id: str) -> str:
    """The key's ARN, in the partition of its Region (`arn:aws-cn:kms:cn-north-1:…`)."""
    return f"arn:{partition_of(region)}:kms:{region}:{account}:key/{key_id}"


def alias_arn(region: str, account: str, alias_name: str) -> str:
    """The alias's ARN, in the partition of its Region."""
    return f"arn:{partition_of(region)}:kms:{region}:{account}:{alias_name}"


class RefKind(Enum):
    KEY_ID = "key-id"
    KEY_ARN = "key-arn"
    ALIAS_NAME = "alias-name"
    ALIAS_ARN = "alias-arn"


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A caller's way of naming a key, resolved to account, region and id or alias name."""

    kind: RefKind
    account: str
    region: str
    name: str  # key id, or alias name (`alias/...`)

    @property
    def is_alias(self) -> bool:
        return self.kind in (RefKind.ALIAS_NAME, RefKind.ALIAS_ARN)

    @property
    def arn(self) -> str:
        if self.is_alias:
            return alias_arn(self.region, self.account, self.name)
        return key_arn(self.region, self.account, self.name)


class KeyRefError(ValueError):
    """The text names no key: carries AWS's NotFoundException message."""


def parse_key_ref(raw: str, *, account: str, region: str) -> KeyRef:
    """Parse a KeyId parameter as the caller in `account`/`region` sent it.

    Raises KeyRefError with AWS's message for a malformed id (`Invalid keyId '…'`) or an ARN of
    another Region (`Invalid arn <region>`). An ARN of another partition than the Region's names
    no key here either (`Invalid arn <partition>`): keys never leave their partition.
    """
    return _parse_key_ref(raw, account, region)


@lru_cache(maxsize=4096)  # callers name the same keys call after call; the regexes cost ~1.5 µs
def _parse_key_ref(raw: str, account: str, region: str) -> KeyRef:
    if raw.startswith("alias/"):
        return KeyRef(RefKind.ALIAS_NAME, account, region, raw)
    match = _ARN.fullmatch(raw)  # fullmatch: `$` alone also matches before a trailing newline
    if match:
        partition, arn_region, arn_account, kind, rest = match.groups()
        if partition != partition_of(region):
            raise KeyRefError(f"Invalid arn {partition}")
        if arn_region != region:
            raise KeyRefError(f"Invalid arn {arn_region}")
        if kind == "alias":
            return KeyRef(RefKind.ALIAS_ARN, arn_account, region, f"alias/{rest}")
        if not is_key_id(rest):
            raise KeyRefError(f"Invalid keyId '{raw}'")
        return KeyRef(RefKind.KEY_ARN, arn_account, region, rest)
    if raw.startswith("arn:"):
        raise KeyRefError(f"Invalid arn {raw}")
    if not is_key_id(raw):
        raise KeyRefError(f"Invalid keyId '{raw}'")
    return KeyRef(RefKind.KEY_ID, account, region, raw)
