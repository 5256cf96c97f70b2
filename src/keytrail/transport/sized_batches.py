"""Records read from files, handed on in batches bounded by their count and by the text they were
read from (`ReadReport.text`): a count alone held 2,000 records of 200 KB, 400 MB of text and a
few times that in objects, where it meant to hold a few MB. Records of AWS's usual size (about
1 KB) fill a batch by their count first, so batches of them are as they were."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["sized_batches"]

T = TypeVar("T")


def sized_batches(items: Iterable[T], text_read: Callable[[], int], *, max_items: int,
                  max_text: int) -> Iterator[list[T]]:
    """`items` in order, in lists of at most `max_items`, each ended too once the text behind it
    reaches `max_text` (`text_read()`: the text read so far, grown as each item is given, as
    ReadReport.text is); a list holds at least one item."""
    if max_items < 1:
        raise ValueError(f"max_items {max_items} must be at least 1")
    source = iter(items)
    while batch := _batch(source, text_read, max_items, max_text):
        yield batch


def _batch(source: Iterator[T], text_read: Callable[[], int], max_items: int, max_text: int) -> list[T]:
    batch: list[T] = []
    end = text_read() + max_text
    for item in source:
        batch.append(item)
        if len(batch) >= max_items or text_read() >= end:
            break
    return batch
