"""Which records of the event log `keytrail audit import` added: history from another source (a real
AWS account's CloudTrail files), which the detector judges as of its end, not as of the clock.

The digests that sign an import name it (`imported_offsets`). The embedded readers look offsets up
here; the Kafka shipper marks those records with the `IMPORTED_HEADER` header, so that `detect
--kafka`, which sees no digests, tells them apart as well.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Iterator, Sequence

__all__ = ["ImportedSpans", "origin_runs"]


class ImportedSpans:
    """The event log's offsets that hold imported history, for lookups by offset."""

    def __init__(self, spans: Sequence[range]) -> None:
        ordered = sorted(spans, key=lambda span: span.start)
        self._starts = [span.start for span in ordered]
        self._spans = ordered

    def holds(self, offset: int) -> bool:
        index = bisect_right(self._starts, offset) - 1
        return index >= 0 and offset in self._spans[index]

    def runs(self, values: list[bytes], spans: Sequence[range]) -> Iterator[tuple[list[bytes], bool]]:
        """`values`, read at the offsets of `spans`, in runs of one origin: imported or not."""
        if not self._spans:  # no import: the batch whole, nothing looked up
            return origin_runs(values, ())
        offsets = itertools.chain.from_iterable(spans)
        return origin_runs(values, [self.holds(offset) for offset, _ in zip(offsets, values, strict=True)])


def origin_runs(values: list[bytes], imported: Sequence[bool]) -> Iterator[tuple[list[bytes], bool]]:
    """`values` in runs of one origin, each with whether it is imported history; `imported` holds
    a flag per value, or nothing when none is imported."""
    if not imported:
        yield from ([(values, False)] if values else [])
        return
    located = zip(imported, values, strict=True)
    for from_import, run in itertools.groupby(located, key=lambda pair: pair[0]):
        yield [value for _, value in run], from_import
