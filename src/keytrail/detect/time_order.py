"""Events put in eventTime order in bounded memory: sorted runs spilled to files, then merged.

`detect --cloudtrail` judges a CloudTrail history in time order, and a year of an account's logs
holds millions of KMS records: sorted in memory all at once, a million took 1.4 GB. Here at most
`run_events` are sorted in memory at a time, or fewer read from RUN_TEXT of text, each sorted run
is written to a temporary file, and the runs are merged (`heapq.merge`, at most `fan_in` files
open at once): memory follows those numbers, not the input's length. An input that fits in one run
is sorted in memory, no file made.
"""

from __future__ import annotations

import copyreg
import heapq
import itertools
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from keytrail.detect.events import KmsEvent
from keytrail.transport.sized_batches import sized_batches

__all__ = ["MERGE_FAN_IN", "RUN_EVENTS", "RUN_TEXT", "time_ordered"]

#: Events sorted in memory at once: about 70 MB of events read from CloudTrail records.
RUN_EVENTS = 50_000
#: Or fewer, once read from this much text (ReadReport.text): an event keeps its record's request
#: parameters and response elements, so 50,000 of records of 200 KB held 10 GB of text. 50,000
#: of AWS's usual ~1 KB are about 55 MB of it.
RUN_TEXT = 64 << 20
#: Run files merged at once; more are first merged, this many at a time, into fewer, longer runs.
MERGE_FAN_IN = 64
#: Events pickled in one piece of a run file: one call, and one memo (a second's datetime, a key's
#: ARN), for many. A merge holds one piece of each run it reads.
_PICKLED_TOGETHER = 256
#: Or fewer, so that a piece stays near this many bytes (as the piece before it measured them): 256
#: events of 200 KB records were 50 MB a piece, times `fan_in` runs merged. 256 of AWS's usual
#: records pickle to well under it.
_PIECE_BYTES = 1 << 20


@contextmanager
def time_ordered(events: Iterable[KmsEvent], *, run_events: int = RUN_EVENTS, fan_in: int = MERGE_FAN_IN,
                 text_read: Callable[[], int] = lambda: 0) -> Iterator[Iterator[KmsEvent]]:
    """`events` in eventTime order, stably: events of one time keep the order they came in. A run
    ends at `run_events`, or once `text_read()` (the text the events were read from so far, as
    ReadReport.text) has grown by RUN_TEXT. Every event is read on entry; the run files, in a
    folder of their own under TMPDIR that only this user can open, are removed on exit."""
    if run_events < 1 or fan_in < 2:
        raise ValueError(f"run_events {run_events} must be at least 1, fan_in {fan_in} at least 2")
    source = iter(events)

    def runs(events: Iterator[KmsEvent]) -> Iterator[list[KmsEvent]]:
        return map(_sorted, sized_batches(events, text_read, max_items=run_events, max_text=RUN_TEXT))

    first = next(runs(source), [])
    if (after := next(source, None)) is None:  # the whole input: looked at, not a second run read
        yield iter(first)
        return
    with tempfile.TemporaryDirectory(prefix="keytrail-detect-") as folder:
        files = _RunFiles(Path(folder))
        rest = runs(itertools.chain([after], source))
        yield files.merged(files.spill(itertools.chain([first], rest)), fan_in)


def _sorted(run: list[KmsEvent]) -> list[KmsEvent]:
    run.sort(key=_event_time)  # stable
    return run


def _event_time(event: KmsEvent) -> datetime:
    return event.event_time


class _RunFiles:
    """Sorted runs of events, a file each in one folder, read back merged."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._names = itertools.count()

    def spill(self, runs: Iterator[list[KmsEvent]]) -> list[Path]:
        """The sorted `runs`, each written to a file, in input order."""
        paths: list[Path] = []
        for run in runs:
            paths.append(self.write(run))
            run.clear()  # the caller's list too: let go of the events before the next run is read
        return paths

    def merged(self, paths: list[Path], fan_in: int) -> Iterator[KmsEvent]:
        """The events of the runs in `paths` (in input order) merged, stably."""
        while len(paths) > fan_in:  # each pass makes the runs fan_in times fewer
            paths = [self._merged_into_one(paths[start:start + fan_in]) for start in range(0, len(paths), fan_in)]
        return _merge(paths)

    def _merged_into_one(self, paths: list[Path]) -> Path:
        merged = self.write(_merge(paths))
        for path in paths:  # the disk holds the events once, plus the run being written
            path.unlink()
        return merged

    def write(self, events: Iterable[KmsEvent]) -> Path:
        """A new run file holding `events`; OSError naming the folder when it cannot be written."""
        path = self._folder / f"run-{next(self._names)}"
        try:
            with path.open("wb") as file:
                source, count = iter(events), 1  # the first event alone: how large they are
                while piece := list(itertools.islice(source, count)):
                    start = file.tell()
                    _pickler(file).dump(piece)
                    count = _next_piece(count, file.tell() - start)
        except OSError as exc:  # a full disk: say where, and how to write elsewhere
            raise OSError(f"cannot write the events being sorted by time to {self._folder}: "
                          f"{exc.strerror or exc} (set TMPDIR to write them elsewhere)") from None
        return path


def _next_piece(count: int, size: int) -> int:
    """How many events the next piece of a run file takes, after `count` of them took `size` bytes."""
    return max(1, min(_PICKLED_TOGETHER, count * _PIECE_BYTES // max(size, 1)))


def _merge(paths: list[Path]) -> Iterator[KmsEvent]:
    # heapq.merge is sorted(chain(*runs)) made lazy: of equal times, an earlier run's event first.
    return heapq.merge(*map(_read_run, paths), key=_event_time)


def _read_run(path: Path) -> Iterator[KmsEvent]:
    # Unpickling is safe here: the file is this process's own, in a folder only its user can open.
    with path.open("rb") as file:
        while True:
            try:
                piece = pickle.load(file)
            except EOFError:
                return
            yield from piece


def _pickler(file: IO[bytes]) -> pickle.Pickler:
    pickler = pickle.Pickler(file, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    return pickler


def _read_only(items: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(items)


def _reduce_read_only(mapping: Mapping[str, Any]) -> tuple[Callable[..., Any], tuple[dict[str, Any]]]:
    return _read_only, (dict(mapping),)


# A record's absent parts are read-only empty mappings (events._EMPTY), which pickle cannot take
# as they are: they are written as dicts and read back read-only, as they were.
_DISPATCH: dict[type, Callable[[Any], Any]] = {**copyreg.dispatch_table, MappingProxyType: _reduce_read_only}
