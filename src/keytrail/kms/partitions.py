"""AWS partitions: which partition a Region belongs to, and the partition field of ARNs.

Every ARN names its partition (`arn:<partition>:…`): `aws-cn` in the China Regions, `aws-us-gov`
in GovCloud (US), and so on ("Amazon Resource Names (ARNs)", IAM User Guide). The table mirrors
the `regionRegex` of each partition in botocore's `data/partitions.json`; a test keeps the two
in step. A Region matching none is taken to be in `aws`, as botocore does.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["ARN_PARTITION", "DEFAULT_PARTITION", "arn_partition", "partition_of", "with_partition"]

DEFAULT_PARTITION = "aws"
# Partition id → the pattern of its Regions' names (disjoint patterns: order does not matter).
_PARTITIONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.ASCII))
    for name, pattern in (
        ("aws", r"(us|eu|ap|sa|ca|me|af|il|mx)-\w+-\d+"),
        ("aws-cn", r"cn-\w+-\d+"),
        ("aws-us-gov", r"us-gov-\w+-\d+"),
        ("aws-iso", r"us-iso-\w+-\d+"),
        ("aws-iso-b", r"us-isob-\w+-\d+"),
        ("aws-iso-e", r"eu-isoe-\w+-\d+"),
        ("aws-iso-f", r"us-isof-\w+-\d+"),
        ("aws-eusc", r"eusc-(de)-\w+-\d+"),
    )
)
# The partition field as ARN patterns accept it: any partition id, known or one AWS adds later.
ARN_PARTITION = r"aws(?:-[a-z]+(?:-[a-z]+)*)?"
_ARN_PREFIX = re.compile(rf"arn:({ARN_PARTITION}):", re.ASCII)


@lru_cache(maxsize=256)  # a handful of Regions, asked on every ARN built
def partition_of(region: str) -> str:
    """The partition id of `region` (`aws`, `aws-cn`, `aws-us-gov`, `aws-iso`, …)."""
    for name, pattern in _PARTITIONS:
        if pattern.fullmatch(region):
            return name
    return DEFAULT_PARTITION


@lru_cache(maxsize=4096)  # asked for the caller's ARN on every call and policy statement
def arn_partition(arn: str) -> str | None:
    """The partition field of an ARN, or None when `arn` does not start like one."""
    match = _ARN_PREFIX.match(arn)
    return match.group(1) if match else None


def with_partition(arn: str, partition: str) -> str:
    """`arn` with its partition field set to `partition` (unchanged when it is not an ARN)."""
    current = arn_partition(arn)
    if current is None or current == partition:
        return arn
    return f"arn:{partition}:{arn[len('arn:') + len(current) + 1:]}"
