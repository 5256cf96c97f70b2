"""`keytrail audit verify`: check the event log against the hash chain and the signed digests.

Order of checks, like CloudTrail's log file integrity validation: each digest's signature, the
digest chain (sequence, previous-digest hash, contiguous offsets), the stored record hashes
against each digest's chain value, then every record in the log against the stored hashes, and
last the digests' cadence (audit/cadence.py: a digest each interval while the node runs).
The hashes retention dropped (those before the hash store's base, which its signed floor must
reach) are chained into the chain head of the digest that ends where the store begins.
"""

from __future__ import annotations

import filecmp
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keytrail.audit.cadence import duration, late_records, silent_spans
from keytrail.audit.digest_shape import shape_problem
from keytrail.audit.hash_diff import diff_hashes
from keytrail.audit.integrity import (
    GENESIS,
    HASH_SIZE,
    IMPORT_ORIGIN,
    IntegrityPaths,
    chain_step,
    digest_file_name,
    digest_hash,
    fingerprint,
    hash_store_start,
    load_digests,
    read_retention_floor,
    read_small,
    verify_signature,
)
from keytrail.audit.log_hashes import event_ids, read_records
from keytrail.audit.shipper import ShippedOffset
from keytrail.clock import dev_clock_ahead
from keytrail.owner_only import open_regular
from keytrail.transport.kept_tails import records_cut
from keytrail.transport.segment_log import SegmentLog, writer_active

__all__ = ["OffNode", "Verdict", "check", "public_key_problem", "verify"]

@dataclass(frozen=True, slots=True)
class Verdict:
    """What `verify` found: `problems` (each a missing, altered, reordered or inserted record, or a
    broken digest; the trail is intact when there are none) and `notes`, what the operator should
    know of an intact trail (what the signatures reach, and the key that made them)."""

    problems: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Stored:
    """The stored record hashes: those of the records from offset `base` on (retention dropped
    those before it)."""

    base: int
    hashes: list[bytes]

    @property
    def end(self) -> int:
        """One past the offset of the last stored hash (0: no record was ever hashed)."""
        return self.base + len(self.hashes)

    def between(self, first: int, end: int) -> list[bytes]:
        """The hashes of the records `first`..`end - 1` (none when `first` is before `base`)."""
        return self.hashes[first - self.base:end - self.base] if first >= self.base else []

    def until(self, end: int) -> _Stored:
        """The hashes of the records before `end`."""
        return _Stored(self.base, self.hashes[:max(0, end - self.base)])


@dataclass(frozen=True, slots=True)
class OffNode:
    """What the operator keeps off the node, to check the trail against: a copy of its public key
    (`signing-key.pub.pem`), a copy of its digests as they were written (`integrity/digests/`)."""

    public_key: Path | None = None
    digests: Path | None = None


def verify(data_dir: Path, public_key: Path | None = None) -> list[str]:
    """Every integrity problem of the audit trail in `data_dir` (empty: the log is intact)."""
    return check(data_dir, OffNode(public_key)).problems


def check(data_dir: Path, kept: OffNode | None = None) -> Verdict:
    """Verify the audit trail in `data_dir` against what was `kept` off the node: the public key
    and the digests in the data dir are only as safe as the data dir."""
    from keytrail.audit.trail import audit_paths

    kept = kept or OffNode()
    log_dir, paths = audit_paths(data_dir)
    if not log_dir.exists():
        return Verdict([f"no audit event log in {data_dir}"])
    key, problems = _verifying_key(paths, kept.public_key)
    if key is None:
        return Verdict(problems)
    if kept.digests is not None:
        problems += _check_kept_digests(paths, kept.digests)
    digests = _in_signed_order(paths, key)
    valid = [digest for _, digest, signed in digests if signed and shape_problem(digest) is None]
    log = SegmentLog(log_dir)
    expected, overlong = _stored_hashes(paths, max([log.end_offset()] + [d["endOffset"] for d in valid]))
    problems += overlong + _check_digests(digests, key, expected)
    found, notes = _check_log(paths, key, log, expected, valid[-1] if valid else {})
    found += late_records(log, valid[-1]) if valid else []
    return Verdict(problems + found, _reach(key, log, valid) + notes + silent_spans(valid, dev_clock_ahead(data_dir)))


def _why_no_digest(folder: Path) -> str:
    """Why a folder shows no digest: each reason asks for another repair (restore the files, the
    folder, or its permissions), where all were told "the digests were deleted"."""
    if folder.exists() and not folder.is_dir():
        return "it is not a folder (the digests were replaced)"
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except FileNotFoundError:
        return "the folder is gone (the digests were deleted)"
    except OSError as exc:
        return f"it cannot be listed ({exc.strerror})"
    return "the digests were deleted"


def _check_log(paths: IntegrityPaths, key: Ed25519PublicKey, log: SegmentLog, expected: _Stored,
               newest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The log's records against the stored hashes and what the digests say: (problems, notes)."""
    problems: list[str] = []
    if not any(paths.digests.glob("*.json")) and (expected.end or log.end_offset() > 0):
        # A trail signs its genesis digest before its first record (ChainWriter.begin).
        problems.append(f"no signed digest in {paths.digests}: {_why_no_digest(paths.digests)}, and no "
                        f"signature covers the records up to offset {max(expected.end, log.end_offset())}")
    unsigned = read_retention_floor(paths, key)[1]
    problems += [unsigned] if unsigned else []
    live = writer_active(log.directory)
    expected, notes = _unsigned_tail(log, expected, newest, live=live)
    # The hash store is buffered: a crashed writer (killed, out of memory, power lost) took the
    # hashes of its newest records with it, and hashes them from the log when it next opens it.
    # Never those a digest signs: the hash store is synced before each digest.
    crashed = not live and bool(newest) and not newest.get("final") and expected.end >= newest["endOffset"]
    # Digests sign records, yet no hash is stored: the hash store was emptied or deleted.
    hashes_gone = not expected.hashes and int(newest.get("endOffset", 0)) > expected.base

    def floor() -> int:  # read once the records are: see `_check_records`
        return read_retention_floor(paths, key)[0]

    found, unhashed = _check_records(log, expected, floor, unhashed_tail=live or crashed, hashes_gone=hashes_gone,
                                     final=newest if newest.get("final") else None)
    problems += _dropped_past_floor(paths, expected.base, floor())
    problems += found
    if crashed and unhashed < log.end_offset():
        notes.append(f"records at offsets {unhashed}..{log.end_offset() - 1} have no stored hash, and no digest signs "
                     "them: written just before the writer crashed (it hashes and signs them when the log next opens), "
                     "or added since; verify cannot tell which")
    damaged, torn = _damage(log, newest)
    cut = [found.text() for found in records_cut(log.directory)]
    return problems + damaged + _check_shipped(log) + cut, notes + torn


def _damage(log: SegmentLog, newest: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Bytes of the log that are no whole record, as (problems, notes): a damaged frame, or bytes
    written in, are problems; a crash's torn last write is a note. Not after a clean stop: no write
    of the node followed its final digest, so bytes after what that digest signs were written in."""
    damage = log.find_damage()
    if damage is None:
        return [], []
    if not damage.torn_write or damage.offset is None:
        return [damage.text], []
    if newest.get("final") and damage.offset >= int(newest["endOffset"]):
        return [f"{damage.facts}, after the final digest {int(newest['sequence']):010d}.json, signed when keytrail "
                "last stopped cleanly: written in while no node ran, not a write torn by a crash"], []
    # Records it cut short that were signed or hashed are named missing already.
    return [], [f"{damage.text}: not a stored event, as a record is answered only once it is whole on disk"]


def _unsigned_tail(log: SegmentLog, expected: _Stored, newest: dict[str, Any], *,
                   live: bool) -> tuple[_Stored, list[str]]:
    """The stored hashes to hold the log to, and a note on those past its end that no digest signs.

    The hash store is written before the records' fsync and never synced itself, so after a power
    loss it may keep the hashes of records that never reached the disk, whose calls were never
    answered. Unsigned, they are no proof that records were removed (whoever removes them can
    remove their hashes too): noted, not named missing. Hashes a digest signs always are, and so
    are any after a clean stop's final digest (it synced every hash the node had written)."""
    end, signed_end = log.end_offset(), int(newest.get("endOffset", 0))
    if live or newest.get("final") or not signed_end <= end < expected.end:
        return expected, []
    return expected.until(end), [f"the hashes of records at offsets {end}..{expected.end - 1} are stored but the "
                                 "records are not in the log and no digest signs them: records a crash kept from "
                                 "being written (never answered), or removed since; verify cannot tell which"]


def _reach(key: Ed25519PublicKey, log: SegmentLog, digests: list[dict[str, Any]]) -> list[str]:
    """What the valid `digests` reach: a trail cut back with its newest digests is intact in
    itself, so the operator compares this with what they know (or checks with --digests)."""
    notes = [f"digests signed by the key with SHA-256 fingerprint {fingerprint(key)}"]
    notes += [f"records at offsets {digest['startOffset']}..{int(digest['endOffset']) - 1} were added by keytrail "
              f"audit import (digest {int(digest['sequence']):010d}.json): AWS CloudTrail records, not calls this "
              "node answered" for digest in digests
              if digest.get("origin") == IMPORT_ORIGIN and int(digest["endOffset"]) > int(digest["startOffset"])]
    if digests:
        newest = digests[-1]
        notes.append(f"the newest digest, {int(newest['sequence']):010d}.json of {newest['digestEndTime']}, signs "
                     f"{_signed_records(int(newest['endOffset']))}"
                     + ("; it is the final digest of a clean stop" if newest.get("final") else ""))
        live = writer_active(log.directory)
        if not newest.get("final") and not live:
            notes.append("the newest digest is not the final one keytrail serve or audit import signs when it stops: "
                         "the writer crashed (what it wrote is signed when the log next opens), or newer digests "
                         "were removed with their records (check with --digests)")
        if log.end_offset() > int(newest["endOffset"]):
            notes.append(f"records at offsets {newest['endOffset']}..{log.end_offset() - 1} are not signed yet "
                         f"({_when_signed(newest, live=live)})")
    return notes


def _when_signed(newest: dict[str, Any], *, live: bool) -> str:
    """When the records after the `newest` digest are signed: by the writer at work, within the
    interval the digest names (`serve --digest-interval`: a node signing daily is not "within the
    hour"), or, with no writer at work (it crashed), by the next to open the log."""
    if not live:
        return "no writer is at work: keytrail serve or keytrail audit import signs them when it next opens the log"
    interval = newest.get("intervalSeconds")
    within = "" if isinstance(interval, bool) or not isinstance(interval, int | float) else \
        f" within {duration(interval)},"  # an older digest promises no interval
    return f"a digest signs them{within} when a segment closes and when keytrail serve stops"


def _signed_records(end_offset: int) -> str:
    """The digest's `endOffset` is the first offset it does not sign: "up to offset N" read as
    signing record N, and a new trail's empty genesis digest as signing record 0."""
    return "no record yet" if end_offset == 0 else f"the records before offset {end_offset}"


def _verifying_key(paths: IntegrityPaths, given: Path | None) -> tuple[Ed25519PublicKey | None, list[str]]:
    """The key to check the digests with: the copy given, else the node's exported one. A node
    key that is not the copy means the trail was signed again by another key."""
    node_key, problem = _load_public_key(paths.public_key, "public key")
    if given is None:
        return node_key, [problem] if problem else []
    key, given_problem = _load_public_key(given, "--public-key")
    if key is None:
        return None, [given_problem or ""]
    if node_key is None:
        return key, [f"{problem} (the integrity files were removed or damaged); the digests are checked against "
                     "the --public-key copy"]
    if fingerprint(node_key) != fingerprint(key):
        return key, [f"the node's public key {paths.public_key} has the fingerprint {fingerprint(node_key)}, not "
                     f"{fingerprint(key)} as the --public-key copy: the signing key was replaced (digests not signed "
                     "by the copy's key are named below)"]
    return key, []


def _check_kept_digests(paths: IntegrityPaths, kept: Path) -> list[str]:
    """Each digest copied off the node must still be on it, unchanged: the digests alone cannot show
    that newer ones were deleted with the records they signed (a trail cut back to an older state)."""
    copies = sorted(kept.glob("*.json")) or sorted((kept / "digests").glob("*.json"))
    if not copies:
        return [f"--digests {kept} holds no digest (<sequence>.json, as in {paths.digests})"]
    problems = []
    for copy in copies:
        on_node = paths.digests / copy.name
        try:
            same = filecmp.cmp(on_node, copy, shallow=False)  # in chunks: either may have been grown huge
        except FileNotFoundError:
            problems.append(f"digest {copy.name}, kept off the node, is gone from {paths.digests}: the trail was cut "
                            "back (the records it signed are named missing when their hashes remain)")
            continue
        except OSError as exc:
            problems.append(f"digest {copy.name} cannot be compared with its copy ({exc.strerror or exc})")
            continue
        if not same:
            problems.append(f"digest {copy.name} differs from its copy kept off the node (digest replaced)")
    return problems


def _check_shipped(log: SegmentLog) -> list[str]:
    """Kafka acknowledged only durable records: a shipped offset past the log's end means records it
    holds were taken out of the log."""
    shipped = ShippedOffset(log.directory.parent / "shipped-offset").value
    if shipped <= log.end_offset():
        return []
    return [f"records at offsets {log.end_offset()}..{shipped - 1} are missing: Kafka acknowledged them "
            f"({log.directory.parent / 'shipped-offset'}) but the log ends before them"]


def public_key_problem(path: Path) -> str | None:
    """Why `path` cannot be the `--public-key` copy (None when it can): the caller's mistake, said
    before the trail is read rather than as a problem of the trail."""
    return _load_public_key(path, "--public-key")[1]


def _load_public_key(path: Path, what: str) -> tuple[Ed25519PublicKey | None, str | None]:
    pem = b""
    try:
        pem = read_small(path)
        public = serialization.load_pem_public_key(pem)
    except FileNotFoundError:
        return None, f"{what} {path} is missing: cannot verify digests"
    except OSError as exc:
        return None, f"{what} {path} cannot be read ({exc.strerror or exc}): cannot verify digests"
    except ValueError:  # cryptography's words name its FAQ, not the file the operator gave
        why = "a private key, not the public signing-key.pub.pem" if b"PRIVATE KEY-----" in pem else \
            "not a PEM public key"
        return None, f"{what} {path} cannot be read ({why}): cannot verify digests"
    if not isinstance(public, Ed25519PublicKey):
        return None, f"{what} {path} is not an Ed25519 public key"
    return public, None


# Hashes a crash may leave past the log's end and the newest digest (records hashed, not yet
# written: the writer buffers about a hundred, a group commit a few thousand), with room to spare.
SPARE_HASHES = 1 << 16


def _stored_hashes(paths: IntegrityPaths, reach: int) -> tuple[_Stored, list[str]]:
    """The stored record hashes up to `reach` (where the log or a signed digest ends) and the few
    a crash may leave past it, and a problem when the hash store holds more: those were written in,
    and are not read (a sparse file, a few bytes on disk, would take all the memory verify has)."""
    try:
        with open(open_regular(paths.hashes), "rb") as stored:
            start = hash_store_start(stored.fileno())
            reach = max(reach, start.base)
            limit = start.position(reach + SPARE_HASHES)
            size = os.fstat(stored.fileno()).st_size
            stored.seek(start.header)
            # No more than the file holds: `reach` may come from a digest whoever holds the signing
            # key signed (an endOffset of 2**63 was an OverflowError, 10**12 a MemoryError).
            data = stored.read(max(0, min(limit, size) - start.header))
    except FileNotFoundError:
        return _Stored(0, []), []
    hashes = [data[i:i + HASH_SIZE] for i in range(0, len(data) - HASH_SIZE + 1, HASH_SIZE)]
    if size <= limit:
        return _Stored(start.base, hashes), []
    # Named once here rather than each as a missing record: no record nor digest stands for them.
    count, since = start.end(size) - start.base, f" from offset {start.base}" if start.base else ""
    return _Stored(start.base, hashes[:reach - start.base]), [
        f"{paths.hashes} holds {count} record hashes{since}, though the log and the signed digests end at offset "
        f"{reach}: hashes written in (a crash leaves at most a few thousand past the end); those past the end are "
        "not read"]


#: A digest file, parsed (`{}` when it does not parse), and whether its signature verifies.
_Loaded = tuple[Path, dict[str, Any], bool]


def _in_signed_order(paths: IntegrityPaths, public: Ed25519PublicKey) -> list[_Loaded]:
    """The digest files in the order of the sequence each signs, those that verify not (a file's
    name is not signed) in the order of their names, any other name last. A digest renamed to
    another's name, or to any `*.json`, is then checked where it belongs, its name said once
    (`_check_link`); in name order it broke the chain where it went and where it was, a line for
    each digest between them, and a newest one renamed down was taken for older."""
    def place(loaded: _Loaded) -> tuple[float, str]:
        path, digest, signed = loaded
        if signed and shape_problem(digest) is None:
            return int(digest["sequence"]), path.name
        named = path.name.removesuffix(".json")
        return (int(named) if named.isascii() and named.isdigit() else float("inf")), path.name

    return sorted(((path, digest, bool(digest) and verify_signature(public, digest))
                   for path, digest in load_digests(paths)), key=place)


def _check_digests(digests: list[_Loaded], public: Ed25519PublicKey, hashes: _Stored) -> list[str]:
    problems: list[str] = []
    previous: dict[str, Any] | None = None
    chain, chained_to = GENESIS, 0
    for index, (path, digest, signed) in enumerate(digests):
        name = path.name
        if not signed:
            problems.append(f"digest {name}: signature invalid (digest altered or not ours)")
            previous = digest or previous
            continue
        if why := shape_problem(digest):  # signed by whoever holds the key, which the data dir keeps
            problems.append(f"digest {name}: signed, but not as keytrail writes a digest: {why}")
            previous = digest
            continue
        problems += _check_link(name, index, digest, previous)
        if digest.get("publicKeyFingerprint") != fingerprint(public):
            problems.append(f"digest {name}: names the public key {digest.get('publicKeyFingerprint')}, not the one "
                            "it is verified with")
        start, end = int(digest["startOffset"]), int(digest["endOffset"])
        if start != chained_to or end > hashes.end or start < hashes.base < end:
            problems.append(f"digest {name}: covers offsets {start}..{end - 1} but {_hashes_held(chained_to, hashes)}")
            chain, chained_to, previous = bytes.fromhex(digest["chainHead"]), end, digest
            continue
        if start < end <= hashes.base:  # retention dropped their hashes: the kept ones chain on from its head
            chain, chained_to, previous = bytes.fromhex(digest["chainHead"]), end, digest
            continue
        for record_hash in hashes.between(start, end):
            chain = chain_step(chain, record_hash)
        if chain.hex() != digest["chainHead"]:
            problems.append(f"digest {name}: record hashes for offsets {start}..{end - 1} do not match "
                            "the signed chain (records altered, removed or reordered)")
            chain = bytes.fromhex(digest["chainHead"])
        chained_to, previous = end, digest
    return problems


_NO_HASHES = "no record hash is stored (hashes.bin is empty or gone)"


def _hashes_held(first: int, stored: _Stored) -> str:
    """What the hash store holds from `first` on (not "0..-1" for none: hashes.bin emptied or deleted)."""
    if not stored.hashes:
        return f"no record hash is stored from offset {stored.base} on" if stored.base else _NO_HASHES
    if stored.end <= first:
        return f"the stored record hashes end at offset {stored.end - 1}"
    return f"the stored record hashes run {max(first, stored.base)}..{stored.end - 1}"


def _check_link(name: str, index: int, digest: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    problems = []
    if int(digest.get("sequence", -1)) != index:
        problems.append(f"digest {name}: sequence {digest.get('sequence')} where {index} was expected "
                        "(a digest is missing or was inserted)")
    if name != digest_file_name(int(digest.get("sequence", -1))):  # the name is not signed: renamed
        problems.append(f"digest {name}: signs sequence {digest.get('sequence')}, which is not its file name's "
                        "(the file was renamed)")
    if digest.get("previousDigestHash") != digest_hash(previous):
        problems.append(f"digest {name}: does not name the previous digest (digest chain broken)")
    return problems


def _check_records(log: SegmentLog, stored: _Stored, floor: Callable[[], int], *, unhashed_tail: bool,
                   hashes_gone: bool, final: dict[str, Any] | None) -> tuple[list[str], int]:
    """The records against their stored hashes, and the offset from which records are not checked.
    `floor`: the retention floor as the file now says. `unhashed_tail`: the newest records may not
    be hashed yet (a running node, or one that crashed). `hashes_gone`: the hash store holds none of
    the records the digests sign (said once, not each record as inserted). `final`: the newest
    digest when a clean stop signed it (every record after it was added while no node ran)."""
    read = read_records(log)
    problems, actual = read.problems, read.hashes
    # The floor only excuses the records before it being gone; every record still in the log is
    # checked, or a floor signed with a stolen key would hide altered ones. Read after the records:
    # retention on a running node writes the floor before it deletes, so this floor excuses every
    # deletion the read saw. Read before, a deletion meanwhile was named tampering.
    start, excused = log.start_offset(), floor()
    if start > excused and stored.end:
        problems.append(f"records at offsets {excused}..{start - 1} are missing "
                        "(segment files deleted outside retention)")
    if hashes_gone and actual:
        return [*problems, _unchecked(start, len(actual))], start + len(actual)
    # Records before the store's base have no hash to check: taken as they are, and named.
    below = min(max(0, stored.base - start), len(actual))
    problems += [_below_base(start, below, stored.base)] if below else []
    expected = actual[:below] + stored.between(start + below, stored.end)
    if unhashed_tail:  # a writer appends records just before it hashes them: not insertions
        actual = actual[:_hashed_end(expected, actual)]
    findings = diff_hashes(expected, actual, start, read.offset)
    if final is not None:
        problems += _after_final_digest(final, expected, actual, start, read.offset)
    ids = event_ids(log, read, {index for _, index in findings if index is not None})
    return problems + [text.replace("{event}", ids.get(index, "") if index is not None else "")
                       for text, index in findings], start + len(actual)


def _below_base(start: int, count: int, base: int) -> str:
    """Records in the log before the first stored hash: retention drops the hashes only of records
    it deleted, and only once the deletion is on disk (segments restored, or the hashes dropped
    outside retention, which `_dropped_past_floor` names)."""
    where = f"record at offset {start}" if count == 1 else f"records at offsets {start}..{start + count - 1}"
    return f"{where} cannot be checked: the hash store begins at offset {base} (retention dropped the hashes " \
           "before it)"


def _dropped_past_floor(paths: IntegrityPaths, base: int, floor: int) -> list[str]:
    """Retention drops hashes below the floor it signs: a hash store that begins past the signed
    floor lost hashes otherwise (read after the store: a floor moved meanwhile only reaches further)."""
    if base <= floor:
        return []
    return [f"{paths.hashes} begins at offset {base}, past the retention floor {floor}: the hashes of the records "
            f"{floor}..{base - 1} were dropped outside retention"]


def _unchecked(start: int, count: int) -> str:
    """The records of a log whose hash store is emptied or deleted, in one line: each was named
    "inserted (not in the hash chain)", a line per record (tens of thousands on a busy node) for
    what is one loss, said already of each digest the store no longer backs."""
    where = f"record at offset {start}" if count == 1 else f"{count:,} records at offsets {start}..{start + count - 1}"
    return f"{where} cannot be checked against the hash chain: {_NO_HASHES}"


def _after_final_digest(final: dict[str, Any], expected: list[bytes], actual: list[bytes], start: int,
                        where: Callable[[int], int]) -> list[str]:
    """Records past a clean stop's final digest, when every record it signed stands where it was
    signed: a record inserted among them pushes the last along, and is named where it is (`where`:
    the offset of the record read at an index)."""
    signed_end = int(final["endOffset"])
    end, signed = start + len(actual), max(0, signed_end - start)
    if end <= signed_end or actual[:signed] != expected[:signed]:
        return []
    return [f"records at offsets {where(signed)}..{where(len(actual) - 1)} were inserted after the final digest "
            f"{int(final['sequence']):010d}.json, signed when keytrail last stopped cleanly (no node wrote them)"]


def _hashed_end(expected: list[bytes], actual: list[bytes]) -> int:
    """How many of a running node's records its stored hashes reach: up to the newest hashed record
    where it now is. Cut at as many records as hashes, a log with a record removed (or inserted)
    before it had the first record not yet hashed (or the newest hashed) named inserted (or missing).
    Its last place, not its first: a copy put before it must not hide the records between them. But
    where the log begins with exactly the hashed records, they end there: a copy of the newest one
    after them is a record recorded again (a call's owed record after a kill -9), and took every
    record between the two for inserted."""
    if actual[:len(expected)] == expected:
        return len(expected)
    if expected:
        newest = expected[-1]
        for index in range(len(actual) - 1, -1, -1):
            if actual[index] == newest:
                return index + 1
    return len(expected)  # the newest hashed record altered or gone: the diff names it
