"""The eventIDs a partition counted recently, as 64-bit hashes in compact int64 columns.

Memory is bounded by `capacity` whatever the event rate: two generations are kept and the
older one is dropped when the newer one fills, so at least the last `capacity // 2` IDs are
always remembered. Hashes live in polars Int64 series, 8 bytes each (8 MB for a million, where
a Python set of ints takes about 90 MB); a batch is checked with one vectorized pass over them.
CloudTrail eventIDs are UUIDs: their hash is read from the hex digits (vectorized and stable
across versions); any other ID is hashed with BLAKE2b. Two distinct IDs share a hash with
probability about 2**-58 per pair.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable

import polars as pl

__all__ = ["SeenIds", "event_hashes", "no_hashes", "pack", "unpack"]

_UUID = r"^[0-9a-fA-F]{32}$"
_MAX_CHUNKS = 64  # appended batches are merged into one buffer beyond this many


def no_hashes() -> pl.Series:
    """An empty hash series."""
    return pl.Series("eventHash", [], pl.Int64)


def event_hashes(event_ids: pl.Series) -> pl.Series:
    """A stable signed 64-bit hash per eventID, in order (Int64)."""
    hexes = pl.col("hex")
    halves = [hexes.str.slice(start, 15).str.to_integer(base=16, strict=False) for start in (0, 17)]
    frame = pl.DataFrame({"hex": event_ids.fill_null("").str.replace_all("-", "", literal=True)})
    hashes = frame.select(pl.when(hexes.str.contains(_UUID)).then(halves[0].xor(halves[1]))).to_series()
    if hashes.null_count():
        others = hashes.is_null()
        hashes = hashes.scatter(others.arg_true(), [_blake(i) for i in event_ids.filter(others).to_list()])
    return hashes.alias("eventHash")


def _blake(event_id: str | None) -> int:
    digest = hashlib.blake2b((event_id or "").encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def pack(hashes: pl.Series) -> bytes:
    """Hashes as the state file keeps them: int64, native byte order."""
    return array("q", hashes.to_list()).tobytes()


def unpack(blob: bytes) -> pl.Series:
    return pl.Series("eventHash", memoryview(blob).cast("q"), pl.Int64)


class SeenIds:
    """Recently counted eventID hashes: `remembered` before counting, `add` once counted."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.half = max(1, capacity // 2)
        self.generation = 0
        self.current = no_hashes()
        self.previous = no_hashes()

    def __len__(self) -> int:
        return self.current.len() + self.previous.len()

    def restore(self, generation: int, rows: Iterable[tuple[int, bytes]]) -> None:
        """Take the hashes a state file kept: (generation, packed hashes) of `generation` and the one before."""
        parts: dict[int, list[pl.Series]] = {generation: [no_hashes()], generation - 1: [no_hashes()]}
        for label, blob in rows:
            parts[label].append(unpack(blob))
        self.generation = generation
        self.current = pl.concat(parts[generation])
        self.previous = pl.concat(parts[generation - 1])

    def remembered(self, hashes: pl.Series) -> pl.Series:
        """Which of `hashes` are remembered, as a Boolean series in their order."""
        # Scan the remembered hashes against the batch's (a small hash set), never the reverse:
        # building a hash set of a million entries per batch would cost several times more.
        batch = hashes.implode()
        hits = pl.concat([known.filter(known.is_in(batch)) for known in (self.current, self.previous)])
        return hashes.is_in(hits.implode())

    def add(self, hashes: pl.Series) -> bool:
        """Remember `hashes`; True when this started a new generation (the oldest was dropped)."""
        self.current = pl.concat([self.current, hashes], rechunk=self.current.n_chunks() >= _MAX_CHUNKS)
        if self.current.len() < self.half:
            return False
        self.previous, self.current = self.current.rechunk(), no_hashes()
        self.generation += 1
        return True
