"""How a log's record hashes differ from the hashes stored as they were written: each record
missing, altered, inserted or moved, named by offset (audit/verification.py reads the two lists)."""

from __future__ import annotations

import bisect
import difflib
from collections.abc import Callable, Iterator

__all__ = ["Finding", "diff_hashes"]

# A finding: a message with an `{event}` placeholder and the index (from the log's first record) of the
# stored record whose eventID fills it (None when the record is gone).
Finding = tuple[str, int | None]


def diff_hashes(expected: list[bytes], actual: list[bytes], base: int,
                placed: Callable[[int], int] | None = None) -> list[Finding]:
    """Name each difference between the hashes that should be there (from offset `base`) and those
    that are, in the order read: `placed(index)` is the offset where the log holds the record read
    at `index` (`base + index` unless its segments were renamed, copied or deleted)."""
    head = 0
    while head < min(len(expected), len(actual)) and expected[head] == actual[head]:
        head += 1
    if head == len(expected) == len(actual):
        return []
    # And the common tail: what is left to diff is then the stretch tampered with, not the log after it.
    tail = 0
    while tail < min(len(expected), len(actual)) - head and expected[-1 - tail] == actual[-1 - tail]:
        tail += 1
    removed: list[int] = []
    added: list[int] = []
    replaced: list[tuple[list[int], list[int]]] = []
    for tag, i1, i2, j1, j2 in _differences(expected[head:len(expected) - tail], actual[head:len(actual) - tail]):
        gone = [head + i for i in range(i1, i2)]
        new = [head + j for j in range(j1, j2)]
        removed += gone
        added += new
        if tag == "replace":
            replaced.append((gone, new))
    where = placed or (lambda index: base + index)
    return _classify(_moves(expected, actual, removed, added), removed, added, replaced, base, where)


def _differences(expected: list[bytes], actual: list[bytes]) -> Iterator[tuple[str, int, int, int, int]]:
    """difflib's opcodes other than "equal", in about n log n: the records whose hash is once in
    `expected`, in the same order in both, anchor the diff (a patience diff), and difflib only
    compares the stretches between anchors. On the whole log, difflib took time quadratic in the
    records altered: 43,000 altered of 100,000 kept verify busy for 12 minutes."""
    i0 = j0 = 0
    for i, j in [*_anchors(expected, actual), (len(expected), len(actual))]:
        matcher = difflib.SequenceMatcher(None, expected[i0:i], actual[j0:j], autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag != "equal":
                yield tag, i0 + i1, i0 + i2, j0 + j1, j0 + j2
        i0, j0 = i + 1, j + 1


def _anchors(expected: list[bytes], actual: list[bytes]) -> list[tuple[int, int]]:
    """(expected index, actual index) of the longest run of hashes found once in `expected` (at
    their first place in `actual`: a log with every record copied is no slower) and in the same
    order in both; of runs as long, the one difflib keeps (earliest in `expected`), so a record
    moved is named as before."""
    in_actual: dict[bytes, int] = {}
    for index, digest in enumerate(actual):
        in_actual.setdefault(digest, index)
    pairs = [(i, in_actual[h]) for h, i in _once(expected).items() if h in in_actual]
    # Longest decreasing run of actual indexes, read from the end: bisect keeps, per length, the
    # run ending (here: starting) with the largest index, and its links back give the run itself.
    ends: list[int] = []  # minus the actual index a run of each length starts at, increasing
    tops: list[int] = []  # the pair each such run starts at
    links = [-1] * len(pairs)
    for k in range(len(pairs) - 1, -1, -1):
        length = bisect.bisect_left(ends, -pairs[k][1])
        links[k] = tops[length - 1] if length else -1
        if length == len(ends):
            ends.append(-pairs[k][1])
            tops.append(k)
        else:
            ends[length], tops[length] = -pairs[k][1], k
    run: list[tuple[int, int]] = []
    k = tops[-1] if tops else -1
    while k >= 0:
        run.append(pairs[k])
        k = links[k]
    return run


def _once(hashes: list[bytes]) -> dict[bytes, int]:
    """{hash: index} of the hashes found once in `hashes`, in index order."""
    first: dict[bytes, int] = {}
    repeated: set[bytes] = set()
    for index, digest in enumerate(hashes):
        if first.setdefault(digest, index) != index:
            repeated.add(digest)
    return {digest: index for digest, index in first.items() if digest not in repeated}


def _moves(expected: list[bytes], actual: list[bytes], removed: list[int], added: list[int]) -> dict[int, int]:
    """Each added position whose record was removed from another: {actual index: expected index}.
    Matched by position, not by hash alone: the hash store may hold one hash at many offsets (the
    zero placeholders of records gone from the log before the hash store was rebuilt)."""
    sources: dict[bytes, list[int]] = {}
    for i in reversed(removed):
        sources.setdefault(expected[i], []).append(i)
    moves: dict[int, int] = {}
    for j in added:
        if candidates := sources.get(actual[j]):
            moves[j] = candidates.pop()
    return moves


def _classify(moves: dict[int, int], removed: list[int], added: list[int],
              replaced: list[tuple[list[int], list[int]]], base: int, where: Callable[[int], int]) -> list[Finding]:
    """Findings in offset order within each kind, so that two runs over one log say the same: one
    for each run of records read one after another (a segment copied, swapped or rewritten was a
    line per record, tens of thousands of them, as a segment deleted was)."""
    moved_from = set(moves.values())
    findings = [_moved(first, last, moves, base, where) for first, last in _spans(sorted(moves), where, moves)]
    altered_old: set[int] = set()
    altered_new: list[int] = []
    for gone, new in replaced:
        pairs = zip([i for i in gone if i not in moved_from], [j for j in new if j not in moves], strict=False)
        for i, j in pairs:
            altered_old.add(i)
            altered_new.append(j)
    findings += [(_named(first, last, where, "was altered", "were altered"), first)
                 for first, last in _spans(altered_new, where)]
    findings += [(_missing(first, last), None) for first, last in
                 _runs([base + i for i in removed if i not in moved_from and i not in altered_old])]
    inserted = [j for j in added if j not in moves and j not in set(altered_new)]
    findings += [(_named(first, last, where, "was inserted (not in the hash chain)",
                         "were inserted (not in the hash chain)"), first) for first, last in _spans(inserted, where)]
    return findings


def _moved(first: int, last: int, moves: dict[int, int], base: int, where: Callable[[int], int]) -> Finding:
    one = f"is out of order (was at offset {base + moves[first]}: reordered)"
    run = f"are out of order (were at offsets {base + moves[first]}..{base + moves[last]}: reordered)"
    return _named(first, last, where, one, run), first


def _named(first: int, last: int, where: Callable[[int], int], one: str, run: str) -> str:
    """The record read at `first` (its eventID in `{event}`), or the run read `first`..`last`, and
    what was done to it."""
    if first == last:
        return f"record {{event}} at offset {where(first)} {one}"
    return f"records at offsets {where(first)}..{where(last)} {run}: the first is {{event}}"


def _spans(indexes: list[int], where: Callable[[int], int],
           moves: dict[int, int] | None = None) -> list[tuple[int, int]]:
    """(first, last) of each run of `indexes` (increasing) read one after another from consecutive
    offsets, and, with `moves`, moved from consecutive offsets too."""
    spans: list[tuple[int, int]] = []
    for index in indexes:
        if spans and index == spans[-1][1] + 1 and where(index) == where(index - 1) + 1 and \
                (moves is None or moves[index] == moves[index - 1] + 1):
            spans[-1] = (spans[-1][0], index)
        else:
            spans.append((index, index))
    return spans


def _runs(offsets: list[int]) -> list[tuple[int, int]]:
    """(first, last) of each run of consecutive `offsets` (in increasing order)."""
    runs: list[tuple[int, int]] = []
    for offset in offsets:
        if runs and runs[-1][1] == offset - 1:
            runs[-1] = (runs[-1][0], offset)
        else:
            runs.append((offset, offset))
    return runs


def _missing(first: int, last: int) -> str:
    """One line for records gone (they have no eventID to name): a segment deleted or cut was a
    line per record, tens of thousands of them."""
    if first == last:
        return f"record at offset {first} is missing"
    return f"records at offsets {first}..{last} are missing"
