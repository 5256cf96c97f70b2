"""What comparing a request's values with a policy's conditions costs, known before comparing.

A condition compares every value the request holds for its key with every value it holds itself.
A request of 16,000 encryption context pairs (`kms:EncryptionContextKeys`) against a key policy of
2,800 `StringLike` patterns (32 KB) made 45 million comparisons: 30 s of the one thread that serves
every caller, and a caller with no permission at all could send it to any key whose policy has
such a condition. A string comparison also scans the request value, and a pattern with `?`
wildcards scans it once per character of the pattern (one 250,000-character value against one
2,000-character pattern: 0.26 s). So the evaluator weighs both before it compares anything and
refuses a request over `MAX_COMPARISONS` (about 0.07 s of a core on a 2-core Intel VM, measured at
0.7 µs a comparison and 0.5 ns a character scanned).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from keytrail.kms.conditions import Condition, Resolve

__all__ = ["MAX_COMPARISONS", "ComparedValues", "compared_values", "comparisons"]

MAX_COMPARISONS = 100_000
# Characters scanned (request value's times pattern's) that cost as much as a comparison itself.
CHARS_PER_COMPARISON = 1024


@dataclass(frozen=True, slots=True)
class ComparedValues:
    """What a policy's conditions on one condition key compare each request value with."""

    key: str  # lowercase condition key
    values: int  # how many values those conditions hold
    chars: int  # the characters of those values


def compared_values(conditions: Iterable[Condition]) -> tuple[ComparedValues, ...]:
    """The conditions' values, tallied by the key they compare against."""
    values: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    for condition in conditions:
        values[condition.key] += len(condition.values)
        chars[condition.key] += sum(len(str(value)) for value in condition.values)
    return tuple(ComparedValues(key, count, chars[key]) for key, count in values.items())


def comparisons(compared: Iterable[ComparedValues], resolve: Resolve) -> int:
    """The comparisons evaluating these conditions against the request could make, counting
    characters scanned as comparisons too (CHARS_PER_COMPARISON)."""
    total = 0
    for entry in compared:
        requested = _requested(resolve(entry.key))
        scanned = sum(len(str(value)) for value in requested) * entry.chars
        total += len(requested) * entry.values + scanned // CHARS_PER_COMPARISON
    return total


def _requested(value: Any) -> Sequence[Any]:
    if value is None:
        return ()
    return value if isinstance(value, list | tuple) else (value,)
