"""The eventIDs a partition counted recently, as 64-bit hashes.

Memory is bounded by `capacity` whatever the event rate: two generations are kept and the
older one is dropped when the newer one fills, so at least the last `capacity // 2` IDs are
always remembered. CloudTrail eventIDs are UUIDs: their hash is read from the hex digits
(vectorized and stable across versions); any other ID is hashed with BLAKE2b. Two distinct IDs
share a hash with probability about 2**-58 per pair.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable

import polars as pl

__all__ = ["SeenIds", "event_hashes", "pack", "unpack"]

_UUID = r"^[0-9a-fA-F]{32}$"


def event_hashes(event_ids: pl.Series) -> list[int]:
    """A stable signed 64-bit hash per eventID."""
    hexes = event_ids.fill_null("").str.replace_all("-", "", literal=True)
    frame = pl.DataFrame({"hex": hexes}).select(
        pl.when(pl.col("hex").str.contains(_UUID))
        .then(
            pl.col("hex")
            .str.slice(0, 15)
            .str.to_integer(base=16, strict=False)
            .xor(pl.col("hex").str.slice(17, 15).str.to_integer(base=16, strict=False))
        )
        .alias("h")
    )
    hashes: list[int | None] = frame.get_column("h").to_list()
    if None in hashes:
        ids = event_ids.to_list()
        return [h if h is not None else _blake(i) for h, i in zip(hashes, ids, strict=True)]
    return hashes  # type: ignore[return-value]


def _blake(event_id: str | None) -> int:
    digest = hashlib.blake2b((event_id or "").encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def pack(hashes: Iterable[int]) -> bytes:
    return array("q", hashes).tobytes()


def unpack(blob: bytes) -> array[int]:
    values = array("q")
    values.frombytes(blob)
    return values


class SeenIds:
    """Recently counted eventID hashes: `contains` before counting, `add` once counted."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.half = max(1, capacity // 2)
        self.generation = 0
        self.current: set[int] = set()
        self.previous: set[int] = set()

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def __contains__(self, value: int) -> bool:
        return value in self.current or value in self.previous

    def add(self, hashes: Iterable[int]) -> bool:
        """Remember `hashes`; True when this started a new generation (the oldest was dropped)."""
        self.current.update(hashes)
        if len(self.current) < self.half:
            return False
        self.previous, self.current = self.current, set()
        self.generation += 1
        return True
