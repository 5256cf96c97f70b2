"""How a log's record hashes differ from the hashes stored as they were written: each record
missing, altered, inserted or moved, named by offset (audit/verification.py reads the two lists)."""

from __future__ import annotations

import difflib

__all__ = ["Finding", "diff_hashes"]

# A finding: a message with an `{event}` placeholder and the index (from the log's first record) of the
# stored record whose eventID fills it (None when the record is gone).
Finding = tuple[str, int | None]


def diff_hashes(expected: list[bytes], actual: list[bytes], base: int) -> list[Finding]:
    """Name each difference between the hashes that should be there and those that are."""
    head = 0
    while head < min(len(expected), len(actual)) and expected[head] == actual[head]:
        head += 1
    if head == len(expected) == len(actual):
        return []
    matcher = difflib.SequenceMatcher(None, expected[head:], actual[head:], autojunk=False)
    removed: list[int] = []
    added: list[int] = []
    replaced: list[tuple[list[int], list[int]]] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        gone = [head + i for i in range(i1, i2)]
        new = [head + j for j in range(j1, j2)]
        removed += gone
        added += new
        if tag == "replace":
            replaced.append((gone, new))
    return _classify(_moves(expected, actual, removed, added), removed, added, replaced, base)


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
              replaced: list[tuple[list[int], list[int]]], base: int) -> list[Finding]:
    """Findings in offset order within each kind, so that two runs over one log say the same."""
    moved_from = set(moves.values())
    findings: list[Finding] = [
        (f"record {{event}} at offset {base + j} is out of order (was at offset {base + i}: reordered)", j)
        for j, i in sorted(moves.items())]
    altered_old: set[int] = set()
    altered_new: set[int] = set()
    for gone, new in replaced:
        pairs = zip([i for i in gone if i not in moved_from], [j for j in new if j not in moves], strict=False)
        for i, j in pairs:
            altered_old.add(i)
            altered_new.add(j)
            findings.append((f"record {{event}} at offset {base + j} was altered", j))
    findings += [(f"record at offset {base + i} is missing", None) for i in removed
                 if i not in moved_from and i not in altered_old]
    findings += [(f"record {{event}} at offset {base + j} was inserted (not in the hash chain)", j)
                 for j in added if j not in moves and j not in altered_new]
    return findings
