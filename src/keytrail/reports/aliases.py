"""Each key's aliases in the report's period, learned from the audit records (`alias_evidence`).

A key's `aliases` are every alias that named it at some time in the period, sorted and joined by
spaces: an alias moved by UpdateAlias in the period shows on the key it left and on the one it
went to, as both are what a reader asking about that alias must see (the one it left is often the
unused key still billed). An alias held since before the records begin counts from their start.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from keytrail.audit.schema import names_aws_managed_key
from keytrail.reports.alias_evidence import empty_evidence, first_and_last_uses

__all__ = ["AliasTally", "Holding", "aws_managed", "holdings", "key_aliases", "with_aliases"]

_COMPACT_PARTS = 64  # batches of evidence kept apart before their uses are cut to first and last again
_TAKES_ALIAS = frozenset({"CreateAlias", "UpdateAlias", "use"})
_Holder = tuple[str, datetime | None]  # (key ARN, since)


class AliasTally:
    """The alias evidence of every batch, its uses kept to the first and last per alias and key."""

    def __init__(self) -> None:
        self._parts: list[pl.DataFrame] = []

    def add(self, evidence: pl.DataFrame) -> None:
        if evidence.height:
            self._parts.append(evidence)
        if len(self._parts) >= _COMPACT_PARTS:
            self._parts = [self.evidence()]

    def evidence(self) -> pl.DataFrame:
        """All the evidence so far."""
        if not self._parts:
            return empty_evidence()
        return first_and_last_uses(pl.concat(self._parts))


@dataclass(frozen=True)
class Holding:
    """`alias` named `key_arn` from `start` (None: before the records begin) to `end` (None: still)."""

    key_arn: str
    alias: str
    start: datetime | None
    end: datetime | None

    def overlaps(self, since: datetime | None, until: datetime | None) -> bool:
        return (self.start is None or until is None or self.start < until) and \
            (self.end is None or since is None or self.end > since)


def holdings(evidence: pl.DataFrame) -> list[Holding]:
    """Which key each alias named when, replaying the evidence in time order (same-second records
    in the order read). An alias is known by its name in its key's account and Region."""
    held: dict[str, _Holder] = {}  # alias ARN -> (key ARN, since)
    seen: set[str] = set()
    done: list[Holding] = []
    for kind, name, key, former, time in evidence.sort("eventTime", "logOffset").select(
            "kind", "aliasName", "keyArn", "formerKeyArn", "eventTime").iter_rows():
        if kind == "DeleteKey":  # AWS deletes a key's aliases with it
            done += [Holding(key, _name(arn), since, time) for arn, (holder, since) in _held_by(held, key)]
            continue
        if (arn := _alias_arn(key or former, name)) is None:
            continue
        done += _move(held, arn, arn in seen, (kind, key, former, time))
        seen.add(arn)
    return done + [Holding(key, _name(arn), since, None) for arn, (key, since) in held.items()]


def _move(held: dict[str, _Holder], arn: str, known: bool,
          event: tuple[str, str | None, str | None, datetime]) -> list[Holding]:
    """Apply one alias change or use (kind, key, former key, time) to `held`; the holding it ends,
    if any. `known`: an earlier record named the alias (else it was held since before the records)."""
    kind, key, former, time = event
    current = held.pop(arn, None)
    if kind == "use" and current is not None and current[0] == key:
        held[arn] = current
        return []
    if current is None and former is not None and not known:  # the change's record names its holder
        current = (former, None)
    if kind in _TAKES_ALIAS and key is not None:
        held[arn] = (key, None if kind == "use" and not known else time)
    return [Holding(current[0], _name(arn), current[1], time)] if current is not None else []


def _held_by(held: dict[str, _Holder], key: str) -> Iterator[tuple[str, _Holder]]:
    for arn in [arn for arn, (holder, _) in held.items() if holder == key]:
        yield arn, held.pop(arn)


def _alias_arn(key_arn: str | None, name: str | None) -> str | None:
    """The alias's ARN: it lives in its key's account and Region (`…:key/<id>` → `…:alias/<name>`)."""
    if key_arn is None or name is None or ":key/" not in key_arn:
        return None
    return key_arn.split(":key/", 1)[0] + ":" + name


def _name(alias_arn: str) -> str:
    return alias_arn.split(":", 5)[5]


def key_aliases(found: Iterable[Holding], since: datetime | None, until: datetime | None) -> dict[str, str]:
    """key ARN → the aliases that named it in [since, until), sorted, joined by spaces."""
    names: dict[str, set[str]] = {}
    for holding in found:
        if holding.overlaps(since, until):
            names.setdefault(holding.key_arn, set()).add(holding.alias)
    return {key: " ".join(sorted(aliases)) for key, aliases in sorted(names.items())}


def aws_managed(found: Iterable[Holding]) -> list[str]:
    """The keys an AWS managed key's alias (`alias/aws/…`) named at any time: AWS managed keys,
    free to keep and never to delete, though no CreateKey in the records says so."""
    return sorted({holding.key_arn for holding in found if names_aws_managed_key(holding.alias)})


def with_aliases(frame: pl.DataFrame, aliases: Mapping[str, str]) -> pl.DataFrame:
    """`frame` with an `aliases` column after its own, from its `keyArn` (a category where that is one)."""
    dtype = pl.Categorical() if frame.schema["keyArn"] == pl.Categorical else pl.String()
    keys = pl.Series(list(aliases), dtype=pl.String)
    names = pl.Series(list(aliases.values()), dtype=pl.String)
    return frame.with_columns(aliases=pl.col("keyArn").replace_strict(keys, names, default=None, return_dtype=dtype))

