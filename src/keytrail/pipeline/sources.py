"""Source adapters for CloudTrail record dicts: in memory, or read from CloudTrail log files."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

from keytrail.pipeline.runner import Batch

__all__ = ["RecordsSource", "cloudtrail_records"]

class RecordsSource:
    """Batches of CloudTrail record dicts (offline files, tests); offsets are record positions."""

    def __init__(self, records: Iterable[Mapping[str, Any]], *, partition: str = "records",
                 max_records: int = 10_000, progress: Callable[[int], None] | None = None) -> None:
        self.records = records
        self.partition = partition
        self.max_records = max_records
        self.progress = progress

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        start = start_at(self.partition)
        iterator = iter(self.records)
        offset = 0
        for _ in islice(iterator, start):  # already covered by the state
            offset += 1
        while chunk := list(islice(iterator, self.max_records)):
            yield Batch(self.partition, range(offset, offset + len(chunk)), records=chunk)
            offset += len(chunk)
            if self.progress is not None:
                self.progress(len(chunk))

    async def commit(self, batch: Batch) -> None:
        return None


def cloudtrail_records(paths: Iterable[Path], on_error: Callable[[Path, str], None]) -> Iterator[dict[str, Any]]:
    """KMS records of CloudTrail log files (`{"Records": [...]}`, .json / .json.gz, files or folders),
    in sorted path order; an unreadable file is reported through `on_error` and skipped."""
    for path in _files(paths):
        try:
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as handle:
                records = json.load(handle)["Records"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            on_error(path, str(error))
            continue
        yield from (r for r in records if isinstance(r, dict) and r.get("eventSource") == "kms.amazonaws.com")


def _files(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.name.endswith((".json", ".json.gz")))
        else:
            found.append(path)
    return found
