"""Tamper evidence after CloudTrail's log file integrity validation.

Every record's SHA-256 is kept in `hashes.bin` (32 bytes per offset) and chained:
`chain[i] = SHA-256(chain[i-1] || hash[i])`, starting from 32 zero bytes. Retention drops the hashes
of records it deleted: the store then begins at the end of a digest, whose signed chain head `verify`
chains the kept hashes on from, and says so in a header (HashStoreStart). Digests, written
when a trail opens (empty), hourly (over no new record too, as CloudTrail's digest files), when a
segment closes and on a clean stop (`final`), name the offsets they cover, the interval within
which the next one follows, the chain value at their end and the hash of the previous digest,
and are signed with the node's Ed25519 key, as is the retention floor. `verify` recomputes everything
from the event log and names what is missing, altered, reordered or inserted, and any break in
the digest chain; docs/audit-events.md says what it cannot see without copies kept off the node.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keytrail.clock import running_seconds
from keytrail.owner_only import make_dirs, named, open_file, open_regular, sharing_problem, sync_folder
from keytrail.transport.segment_log import Cut, SegmentLog

__all__ = [
    "GENESIS", "HASH_SIZE", "IMPORT_ORIGIN", "ChainWriter", "HashStoreStart", "IntegrityFileUnusable",
    "IntegrityPaths", "beside", "digest_file_name", "digest_hash", "exported_fingerprint", "fingerprint",
    "hash_store_start", "imported_offsets", "load_digests", "read_retention_floor", "read_small", "signed_end",
    "signing_key", "verify", "write_retention_floor",
]

log = logging.getLogger(__name__)

GENESIS = bytes(32)
HASH_SIZE = 32
# keytrail writes its digests, floor and public key in under 1 KB each.
SMALL_FILE_BYTES = 1 << 20
# The hashes the chain writer keeps before writing them to the sidecar (about a hundred records'):
# a system call fewer per group commit.
_UNSTORED_BYTES = 4096
# A hash store retention trimmed begins with one slot of HASH_SIZE bytes: this mark, then the offset
# of its first hash (8 bytes, big-endian). One without it (never trimmed, or written by a keytrail
# that did not trim) holds the hashes from offset 0, as it always did.
_BASE_MARK = b"keytrail hash store v2\0\0"
# The hashes copied at a time when retention rewrites the store (about 32,000); a stop cancels the
# copy between two.
_COPY_BYTES = 1 << 20
# The origin the digests of `keytrail audit import` name (signed, so whoever imports cannot pass
# the records off as calls the node answered).
IMPORT_ORIGIN = "audit import"


@dataclass(frozen=True, slots=True)
class IntegrityPaths:
    """Where the integrity files live under `<data-dir>/audit/integrity/`."""

    root: Path

    @property
    def hashes(self) -> Path:
        return self.root / "hashes.bin"

    @property
    def digests(self) -> Path:
        return self.root / "digests"

    @property
    def private_key(self) -> Path:
        return self.root / "signing-key.pem"

    @property
    def public_key(self) -> Path:
        return self.root / "signing-key.pub.pem"

    @property
    def retention_floor(self) -> Path:
        return self.root / "retention-floor"


@dataclass(frozen=True, slots=True)
class HashStoreStart:
    """Where the hash store's hashes begin: `base`, the offset of the record whose hash comes first
    (retention dropped those before it), `header` bytes into the file."""

    base: int = 0
    header: int = 0

    def position(self, offset: int) -> int:
        """Where in the file the hash of the record at `offset` (`base` or after) is."""
        return self.header + (offset - self.base) * HASH_SIZE

    def end(self, size: int) -> int:
        """One past the offset of the last whole hash a store of `size` bytes holds."""
        return self.base + max(0, size - self.header) // HASH_SIZE


def hash_store_start(fd: int) -> HashStoreStart:
    """Where the hashes of the hash store open as `fd` begin."""
    head = os.pread(fd, HASH_SIZE, 0)
    if len(head) < HASH_SIZE or not head.startswith(_BASE_MARK):
        return HashStoreStart()
    return HashStoreStart(int.from_bytes(head[len(_BASE_MARK):], "big"), HASH_SIZE)


class IntegrityFileUnusable(OSError):
    """A file the digest chain continues from (the signing key, the newest digest) cannot be read:
    `serve` refuses to start rather than begin a chain that `verify` could not link to the old one
    (an OSError: the CLI reports it in one line)."""


def signing_key(paths: IntegrityPaths) -> Ed25519PrivateKey:
    """The node's signing key, created (mode 0600, public key exported as PEM) on first use."""
    if paths.private_key.exists():
        try:
            key = serialization.load_pem_private_key(read_small(paths.private_key), password=None)
        except ValueError as exc:
            raise IntegrityFileUnusable(f"the audit signing key {paths.private_key} cannot be read "
                                        f"({_first_line(exc)}): restore it from a backup") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IntegrityFileUnusable(f"{paths.private_key} is not an Ed25519 private key: restore it from a backup")
        _warn_if_shared(paths.private_key)
        return key
    make_dirs(paths.root)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_atomic(paths.private_key, pem)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_atomic(paths.public_key, public)
    # Whoever can write the data dir can also make a key of their own and sign a rewritten trail
    # with it; only a copy of the public key kept elsewhere tells the two apart (`serve` prints it).
    log.info("created the audit signing key %s; its public key %s has the SHA-256 fingerprint %s: keep a copy "
                "off this node and check the trail with `keytrail audit verify --public-key COPY`",
                paths.private_key, paths.public_key, fingerprint(key.public_key()))
    return key


def _warn_if_shared(path: Path) -> None:
    """Say so when users other than keytrail's may read the signing key or change it (a backup
    restored with the wrong umask or owner, a `cp`), as for the root key: whoever reads it signs
    digests that pass verify."""
    problem = sharing_problem(path.stat())
    if problem is not None:
        log.warning("the audit signing key %s %s: %s", path, problem, problem.fix)


def exported_fingerprint(paths: IntegrityPaths) -> str | None:
    """The fingerprint of the exported public key (None when it cannot be read)."""
    try:
        public = serialization.load_pem_public_key(read_small(paths.public_key))
    except (OSError, ValueError):
        return None
    return fingerprint(public) if isinstance(public, Ed25519PublicKey) else None


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """The SHA-256 of the raw public key, hex: what each digest names as `publicKeyFingerprint`."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def write_retention_floor(paths: IntegrityPaths, offset: int, key: Ed25519PrivateKey) -> None:
    """Note for `verify` that retention may delete the records before `offset`: atomically and
    synced, since a floor a crash left empty or missing makes retention's deletions read as tampering;
    signed, since a floor anyone could write would excuse any oldest segments they delete."""
    body = {"retentionFloor": offset}
    _write_atomic(paths.retention_floor, canonical({**body, "signature": key.sign(canonical(body)).hex()}))


def read_retention_floor(paths: IntegrityPaths, public_key: Ed25519PublicKey) -> tuple[int, str | None]:
    """The signed retention floor (0 when there is none), and why a floor file excuses nothing."""
    try:
        floor = json.loads(read_small(paths.retention_floor))
    except FileNotFoundError:
        return 0, None
    except (OSError, ValueError, RecursionError):
        floor = None
    offset = floor.get("retentionFloor") if isinstance(floor, dict) else None
    if isinstance(offset, int) and verify_signature(public_key, floor):
        return offset, None
    return 0, (f"retention floor {paths.retention_floor} is not signed by the trail's key (edited, or written by a "
               "keytrail before floors were signed): it excuses no deleted record")


def read_small(path: Path) -> bytes:
    """A digest, the retention floor or a public key, refused (ValueError) past SMALL_FILE_BYTES:
    whoever can write the data dir can grow one to gigabytes (sparse, a few bytes on disk), which
    read whole would take all the memory `verify` or `serve` has."""
    with open(open_regular(path), "rb") as file:
        data = file.read(SMALL_FILE_BYTES + 1)
    if len(data) > SMALL_FILE_BYTES:
        raise ValueError(f"{path} is larger than {SMALL_FILE_BYTES} bytes, which no keytrail integrity file is")
    return data


def chain_step(chain: bytes, record_hash: bytes) -> bytes:
    """The chain value after one more record."""
    return hashlib.sha256(chain + record_hash).digest()


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes a digest signature covers (sorted keys, no whitespace)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def digest_file_name(sequence: int) -> str:
    """Digests sort by name in sequence order."""
    return f"{sequence:010d}.json"


def load_digests(paths: IntegrityPaths) -> list[tuple[Path, dict[str, Any]]]:
    """Every digest file, in sequence order, parsed (unparseable ones, and JSON that is no object,
    as empty dicts: whoever can write the data dir may put anything there)."""
    out: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(paths.digests.glob("*.json")):
        try:
            digest = json.loads(read_small(path))
        except (ValueError, RecursionError):
            digest = None
        out.append((path, digest if isinstance(digest, dict) else {}))
    return out


def beside(log_dir: Path) -> IntegrityPaths:
    """The integrity files of the event log in `log_dir`: its sibling `integrity/`."""
    return IntegrityPaths(log_dir.parent / "integrity")


def imported_offsets(paths: IntegrityPaths) -> list[range]:
    """The offsets of the records `keytrail audit import` added (the digests naming IMPORT_ORIGIN
    cover them), unverified: what the detector tells history from calls this node answered by."""
    spans = []
    for _, digest in load_digests(paths):
        start, end = digest.get("startOffset"), digest.get("endOffset")
        if digest.get("origin") == IMPORT_ORIGIN and type(start) is int and type(end) is int and start < end:
            spans.append(range(start, end))
    return spans


def signed_end(paths: IntegrityPaths) -> int | None:
    """The end offset the newest digest says it signs, unverified (`verify` checks signatures):
    a log that ends before it lost signed records. None without a readable newest digest."""
    newest = max(paths.digests.glob("*.json"), default=None)
    return _end_offset(newest) if newest is not None else None


def _end_offset(digest: Path) -> int | None:
    """The end offset `digest` says it signs, unverified; None when it cannot be read."""
    try:
        end = json.loads(read_small(digest)).get("endOffset")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
    return end if isinstance(end, int) and not isinstance(end, bool) else None


def verify_signature(public_key: Ed25519PublicKey, digest: dict[str, Any]) -> bool:
    """True when the digest's signature matches its content."""
    body = {name: value for name, value in digest.items() if name != "signature"}
    try:
        public_key.verify(bytes.fromhex(str(digest.get("signature", ""))), canonical(body))
    except (InvalidSignature, ValueError):
        return False
    return True


class ChainWriter:
    """The writer side: hashes appended records, keeps the chain, writes signed digests.

    `add` runs on the spool's event loop (a few µs per record); `write_digest`, which fsyncs and
    signs, runs in the spool's writer thread. The spool never lets both run at once. A trim of the
    hash store copies the kept hashes in a thread of its own meanwhile (`_HashCopy`).
    """

    def __init__(self, paths: IntegrityPaths, log: SegmentLog, *, digest_interval_s: float = 3600.0) -> None:
        self.paths = paths
        self.interval = digest_interval_s
        self._last: dict[str, Any] | None = None
        # Who added the records the next digests sign: None for calls this node answered,
        # IMPORT_ORIGIN for CloudTrail records imported.
        self.origin: str | None = None
        self._sequence = 0
        self._covered = 0  # end offset of the last digest
        self._chain = GENESIS
        # Checked before a signing key is made: a trail refused here gets none (nothing would
        # announce it, and a retry would take it for the trail's own).
        try:
            self._load_last_digest()
        finally:  # the bytes were cut either way: said also when the newest digest cannot be read
            self._report_torn_tail(log.cut)
        self._check_log_reaches_digest(log)
        self._check_trail_was_signed(log, paths.private_key.exists())
        self._check_nothing_after_clean_stop(log)
        self._key = signing_key(paths)
        make_dirs(paths.digests)
        # Kept open for the node's life: a FIFO or a folder put in its place later is never written to.
        self._hashes = open(open_regular(paths.hashes, writable=True), "r+b")  # noqa: SIM115
        self._start = hash_store_start(self._hashes.fileno())
        self._unstored = bytearray()  # hashes chained but not yet written to the sidecar
        self._stored = 0  # the sidecar's bytes that hold hashes: where the unstored go
        self._trim: _HashCopy | None = None  # the hash store trim in flight, one at a time
        self._recover(log)
        self._last_time: datetime | None = None
        # Named in each digest with the seconds this process has run (`running_seconds`): `verify`
        # tells two digests of one session far apart by their times yet not by how long the node
        # ran between them (its wall clock stepped ahead) from a node down or hung between them.
        self._session = secrets.token_hex(8)
        self._began = running_seconds()

    @property
    def end(self) -> int:
        """One past the last hashed offset."""
        return self._end

    def add(self, first_offset: int, payloads: list[bytes]) -> None:
        """Hash and chain records just appended at `first_offset` (not synced: the sidecar is
        rebuilt from the log after a crash)."""
        if first_offset != self._end:
            raise RuntimeError(f"integrity chain at {self._end}, records appended at {first_offset}")
        hashes = [hashlib.sha256(payload).digest() for payload in payloads]
        chain = self._chain
        for record_hash in hashes:
            chain = chain_step(chain, record_hash)
        # Kept until a few KB are (about a hundred records) and at each digest, not written with
        # each group commit: a system call fewer per group. Never fsynced: rebuilt from the log
        # after a crash. A live `verify` checks the records whose hashes are written (it stops
        # where they stop).
        self._chain = chain
        self._end += len(hashes)
        self._unstored += b"".join(hashes)
        if len(self._unstored) >= _UNSTORED_BYTES:
            # The records are in the log already: a sidecar the disk has no room for (it is full)
            # must not fail their calls, nor every later one. Kept, the hashes go with the next
            # write that works; a digest, which needs them on disk, fails until then (logged).
            with contextlib.suppress(OSError):
                self._store()

    def digest_due(self, now: datetime) -> bool:
        """True when an hour (the interval) has passed since the last digest, records waiting or
        not: like CloudTrail's hourly digest files, an idle node's empty digests show that nothing
        happened, where none would look like the digests of the last hours deleted."""
        return self.seconds_until_due(now) <= 0

    def seconds_until_due(self, now: datetime) -> float:
        """How long until the next digest is due: 0 when it is, and when the clock was set back
        since the last one (the cadence starts again from the new time rather than wait for the
        clock to catch up, signing nothing meanwhile)."""
        if self._last_time is None:
            self._last_time = now
        elapsed = (now - self._last_time).total_seconds()
        return 0.0 if elapsed < 0 else max(0.0, self.interval - elapsed)

    def begin(self, now: datetime, origin: str | None = None) -> None:
        """Open a session whose records come from `origin` (None: calls this node answers).

        After a session that did not stop cleanly, first sign what it left unsigned with that
        session's origin, which its last digest names: records an interrupted `audit import` added
        are signed as imported, not as calls the node that opens next answered. Then sign an empty
        digest naming the new session's origin (the genesis digest of a new trail): every trail
        that holds a record has digest 0, so `verify` tells a trail whose digests were all deleted
        from one never signed yet; the records of a running node never follow a final digest
        (records that do were added while no node ran); and the records after the opening digest
        of a session that is interrupted are known to be its own."""
        if self._last is not None and not self._last.get("final"):
            self.origin = self._last.get("origin")
            self.write_digest(now)
        self.origin = origin
        self.write_digest(now, empty=True)

    def write_final_digest(self, now: datetime) -> dict[str, Any] | None:
        """Sign the digest of a clean stop (`final`), even over no new record: everything the node
        wrote is signed, so records found after it on the next open were not written by it."""
        return self.write_digest(now, empty=True, final=True)

    def write_digest(self, now: datetime, *, empty: bool = False, final: bool = False) -> dict[str, Any] | None:
        """Sign a digest over the records since the previous one; None when there are none
        (unless `empty`)."""
        self._last_time = now
        if self._end == self._covered and not empty:
            return None
        with named(self.paths.hashes):
            self._store()
            os.fsync(self._hashes.fileno())
        body = {
            "digestVersion": 1, "sequence": self._sequence, "startOffset": self._covered,
            "endOffset": self._end, "digestEndTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "chainHead": self._chain.hex(), "signatureAlgorithm": "Ed25519", "intervalSeconds": self.interval,
            "previousDigestHash": digest_hash(self._last), "publicKeyFingerprint": self._fingerprint(),
            "session": self._session, "runningSeconds": round(running_seconds() - self._began, 3),
            **({"origin": self.origin} if self.origin else {}), **({"final": True} if final else {}),
        }
        digest = {**body, "signature": self._key.sign(canonical(body)).hex()}
        _write_atomic(self.paths.digests / digest_file_name(self._sequence), canonical(digest))
        self._accept(digest)
        return digest

    def write_retention_floor(self, offset: int) -> None:
        """Sign and store the retention floor (writer thread, before retention deletes)."""
        write_retention_floor(self.paths, offset, self._key)

    def drop_hashes_before(self, floor: int) -> None:
        """Retention (writer thread), once the records before `floor` are deleted and that is on disk:
        begin a rewrite of the hash store without the hashes before the end of the newest digest at
        or before `floor`, whose signed chain head `verify` chains the kept ones on from. Only once
        there are as many to drop as to keep: each rewrite copies the kept ones, so a hash is copied
        about once rather than at every segment retention deletes (at most about twice the kept
        records' hashes stay). One at a time: while one is in flight, a floor moved waits for the
        retention after it (`finish_dropping_hashes`)."""
        self.finish_dropping_hashes()
        if self._trim is not None or floor - self._start.base < self._end - floor:
            return
        base = self._signed_end_before(floor)
        if base is None or base <= self._start.base or base - self._start.base < self._end - base:
            return
        self._store()  # the hashes chained so far are in the old store, for the copy to read
        # A descriptor of its own: the copy reads the old store whatever becomes of this one.
        self._trim = _HashCopy.begin(self.paths.hashes.with_suffix(".bin.tmp"), os.dup(self._hashes.fileno()),
                                     HashStoreStart(base, HASH_SIZE), (self._start.position(base), self._stored))

    def finish_dropping_hashes(self) -> None:
        """Retention (writer thread): the last step of a trim whose copy is done, its thread gone; the
        calls wait only for it. The copy read the hashes the store held when it began: copy those
        stored since (a retention's worth), sync, and rename the new store over the old one; a crash
        before the rename leaves the old store whole (and a `.tmp` beside it that the next trim
        replaces), one after it the new store whole. The writer goes on in the new one. A copy that
        failed (logged, its `.tmp` removed) leaves the old store, trimmed at a later retention."""
        trim = self._trim
        if trim is None or trim.copying():
            return
        self._trim = None
        if trim.file is not None:
            self._switch_to(trim.file, trim)

    def close(self) -> None:
        """Release the sidecar file (hashes it has no room for are made again from the log at the next open).
        A trim in flight is cancelled (its `.tmp` removed): the old store holds every hash, and the next
        retention of the next open trims it again, rather than a stop wait for a copy of gigabytes."""
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        with contextlib.suppress(OSError):
            self._store()
        self._hashes.close()

    def _store(self) -> None:
        """Write the hashes not yet in the sidecar, at their place in it (OSError, keeping those the
        disk did not take, when it cannot)."""
        while self._unstored:
            written = os.pwrite(self._hashes.fileno(), self._unstored, self._stored)
            del self._unstored[:written]
            self._stored += written

    def _signed_end_before(self, offset: int) -> int | None:
        """The end of the newest digest that ends at or before `offset`, found by sequence (a few
        small reads: the digests' ends never go down); None when there is none, or one read on the
        way is unreadable (`verify` names it; nothing is dropped meanwhile)."""
        low, high, found = 0, self._sequence - 1, None
        while low <= high:
            middle = (low + high) // 2
            end = _end_offset(self.paths.digests / digest_file_name(middle))
            if end is None:
                return None
            if end <= offset:
                found, low = end, middle + 1
            else:
                high = middle - 1
        return found

    def _switch_to(self, rewritten: io.BufferedRandom, trim: _HashCopy) -> None:
        """Copy into `rewritten`, the new store `trim` copied and synced, the hashes stored since it
        began, sync it and rename it over the old one (see `finish_dropping_hashes`)."""
        try:
            with named(self.paths.hashes):
                self._store()
            with named(trim.temporary):
                _copy(self._hashes.fileno(), trim.copied, self._stored, rewritten.fileno())
                os.fsync(rewritten.fileno())
            os.replace(trim.temporary, self.paths.hashes)
        except BaseException as exc:
            rewritten.close()
            if isinstance(exc, OSError):  # the disk full, say: give back what the copy took
                trim.temporary.unlink(missing_ok=True)
            raise
        old, self._hashes = self._hashes, rewritten
        self._start, self._stored = trim.start, trim.start.position(self._end)
        old.close()
        sync_folder(self.paths.root)

    def _fingerprint(self) -> str:
        return fingerprint(self._key.public_key())

    def _accept(self, digest: dict[str, Any]) -> None:
        # All or nothing: a digest whose fields do not read is never taken for the newest.
        sequence, covered = int(digest["sequence"]) + 1, int(digest["endOffset"])
        self._last, self._sequence, self._covered = digest, sequence, covered

    def _load_last_digest(self) -> None:
        paths = _listed_digests(self.paths.digests)
        if paths:  # only the newest one matters to the writer (`verify` reads them all)
            try:
                last = json.loads(read_small(paths[-1]))
                self._accept(last)
                self._chain = bytes.fromhex(str(last["chainHead"]))
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise IntegrityFileUnusable(
                    f"the newest audit digest {paths[-1]} cannot be read ({type(exc).__name__}: {exc}): "
                    "`keytrail audit verify` reports it; restore it from a backup, or move it aside to "
                    "sign on from the digest before it") from None
            _require_own_name(paths[-1], self._sequence - 1)

    def _report_torn_tail(self, cut: Cut | None) -> None:
        """Say what opening the log cut when it looked like a torn write (damage with records after
        it is logged where it is cut): a crash's, unless the newest digest is a clean stop's final
        one and the bytes follow what it signs. No write of the node came after that digest, so no
        crash tore them: they were written in while no node ran."""
        if cut is None or not cut.torn_write:
            return
        where = f"event log {cut.segment.name}: the {cut.size} bytes after record offset {cut.offset}"
        if self._last is not None and self._last.get("final") and cut.offset >= self._covered:
            log.warning("%s follow the final digest %s, signed when keytrail last stopped cleanly: written in while no "
                        "node ran, not a write torn by a crash; cut, and kept in %s", where,
                        digest_file_name(self._sequence - 1), cut.kept.name)
        else:
            log.warning("%s were a write torn by a crash; cut, and kept in %s", where, cut.kept.name)

    def _check_log_reaches_digest(self, log: SegmentLog) -> None:
        """A digest is written only after the records it covers are durable, so a log that ends
        before the last digest lost signed records. New records would take the lost ones' offsets
        and no chain could link them: refuse to start rather than fail every call."""
        end = log.end_offset()
        if end < self._covered:
            raise IntegrityFileUnusable(
                f"the audit log ends at offset {end} but the last signed digest covers records up to "
                f"{self._covered}: signed records are gone (`keytrail audit verify` names them); restore "
                f"{log.directory} from a backup, or move {log.directory.parent} aside to start a new trail")

    def _check_trail_was_signed(self, log: SegmentLog, key_was_there: bool) -> None:
        """A trail's signing key and genesis digest exist before its first record, so records
        without them lost their signatures: signing them now would vouch for whatever the log
        holds (it may have been edited meanwhile). Refuse, as for a log cut below its digest."""
        if self._last is not None or log.end_offset() == 0:
            return
        lost = "signing key and digests are" if not key_was_there else "signed digests are"
        # Keytrail before the genesis digest signed a trail's first digest only at its first hour or
        # clean stop: its trail crashed before then never had one, which no backup can bring back.
        older = ("; a trail an older keytrail crashed before signing its first digest never had one: move it aside "
                 "(docs/operations.md, Upgrading)") if key_was_there else ""
        raise IntegrityFileUnusable(
            f"the audit log holds records up to offset {log.end_offset()} but its {lost} gone from "
            f"{self.paths.root} (`keytrail audit verify` reports it); restore {self.paths.root} from a backup, or "
            f"move {log.directory.parent} aside to start a new trail{older}")

    def _check_nothing_after_clean_stop(self, log: SegmentLog) -> None:
        """A clean stop signs every record the node wrote (its final digest): records after it were
        added while no node ran. Signing them would vouch for them: refuse to open."""
        if self._last is None or not self._last.get("final") or log.end_offset() <= self._covered:
            return
        raise IntegrityFileUnusable(
            f"the audit log holds records at offsets {self._covered}..{log.end_offset() - 1} after the final digest "
            f"keytrail signed when it last stopped cleanly: they were added while no node ran (`keytrail audit "
            f"verify` names them); restore {log.directory} from a backup, or move {log.directory.parent} aside to "
            "start a new trail")

    def _recover(self, log: SegmentLog) -> None:
        """Bring the sidecar in line with the log: cut hashes of a torn tail, hash records
        that were appended but not hashed before a crash."""
        self._require_store_starts_signed()
        stored = self._start.end(os.fstat(self._hashes.fileno()).st_size)
        end = max(log.end_offset(), self._covered)
        self._end = min(stored, end)
        self._hashes.truncate(self._start.position(self._end))
        self._hashes.seek(0, os.SEEK_END)
        self._restore_signed(log)
        self._hashes.seek(self._start.position(self._covered))
        covered_hashes = self._hashes.read()
        for index in range(0, len(covered_hashes), HASH_SIZE):
            self._chain = chain_step(self._chain, covered_hashes[index:index + HASH_SIZE])
        self._stored = self._start.position(self._end)  # `add` writes on from here, past its file position's reach
        while self._end < end:
            batch = log.read(self._end, 4096)
            if not batch:
                break
            self.add(self._end, [payload for _, payload in batch])

    def _require_store_starts_signed(self) -> None:
        """Retention drops hashes only up to the end of a digest: a store that begins after the
        newest one was edited, and the writer could neither chain its records nor store their hashes."""
        if self._start.base > self._covered:
            raise IntegrityFileUnusable(
                f"the audit hash store {self.paths.hashes} begins at offset {self._start.base}, after the newest "
                f"digest's end {self._covered}: it was edited (`keytrail audit verify` names what it cannot check); "
                "restore it from a backup")

    def _restore_signed(self, log: SegmentLog) -> None:
        """Store again the hashes the sidecar lost (cut short, or deleted) before the last digest's
        end, from the log. They are not chained: the digest's chain head covers them already, and
        chaining them again would sign a wrong chain over every later record."""
        while self._end < self._covered:
            batch = log.read(self._end, min(4096, self._covered - self._end))
            if batch and batch[0][0] == self._end:
                hashes = [hashlib.sha256(payload).digest() for _, payload in batch]
            else:  # gone from the log too: a placeholder keeps each later hash at its offset
                gap = (batch[0][0] if batch else _next_segment(log, self._end, self._covered)) - self._end
                hashes = [bytes(HASH_SIZE)] * min(gap, self._covered - self._end)
            self._hashes.write(b"".join(hashes))
            self._end += len(hashes)


def _require_own_name(path: Path, sequence: int) -> None:
    """IntegrityFileUnusable unless the newest digest by name is the one its signed `sequence`
    names: a digest renamed to sort last (`0000000004.json` as `0000000009.json`, or any `*.json`)
    was taken for the newest, and the next digest, numbered after it, was written over the real
    one of that number."""
    if path.name != digest_file_name(sequence):
        raise IntegrityFileUnusable(
            f"the newest audit digest by name, {path}, signs sequence {sequence}: it was renamed (`keytrail audit "
            f"verify` names it), and signing on from it would write over the digests after it; name it "
            f"{digest_file_name(sequence)} again, or restore the digests from a backup")


def _listed_digests(folder: Path) -> list[Path]:
    """The digest files in `folder` in sequence order, none while it does not exist. One it cannot
    list (no permission, a file in its place) is IntegrityFileUnusable: read as holding none, the
    writer said the trail's signed digests were gone, and to move the trail aside."""
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(entry.path) for entry in entries
                          if entry.name.endswith(".json") and not entry.name.startswith("."))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise IntegrityFileUnusable(f"cannot list the audit digests in {folder} ({exc.strerror or exc}): make it a "
                                    "folder this user can read and write") from None


def _next_segment(log: SegmentLog, offset: int, covered: int) -> int:
    """Where the log's records go on after `offset`, which it lacks (a segment deleted or damaged
    before it): readers stop at such a gap, but the records after it are still there to hash."""
    return min((base for base in log.segment_bases() if offset < base < covered), default=covered)


class _Cancelled(Exception):
    """A trim's copy stopped by the trail's close."""


class _HashCopy:
    """The bulk of a hash store trim, copied in a thread of its own (a week's hashes at 100 calls/s
    are 1.9 GB, seconds of copying and syncing every call waited for on the writer thread): the old
    store's bytes `first`..`copied`, read through a descriptor of the thread's own, into `temporary`
    behind the header of the new store's `start`, synced. The writer appends past `copied` meanwhile.
    Once the thread is gone, `file` is the new store when the copy succeeded; else it is removed."""

    def __init__(self, temporary: Path, start: HashStoreStart, copied: int) -> None:
        self.temporary, self.start, self.copied = temporary, start, copied
        self.file: io.BufferedRandom | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def begin(cls, temporary: Path, source: int, start: HashStoreStart, span: tuple[int, int]) -> _HashCopy:
        """Start copying the bytes `span` of `source` (a descriptor the copy owns and closes)."""
        copy = cls(temporary, start, span[1])
        copy._thread = threading.Thread(target=copy._run, args=(source, span[0]), name="audit-hash-trim",
                                        daemon=True)
        try:
            copy._thread.start()
        except RuntimeError as exc:  # no thread can start: an OSError, which retention logs and the calls go on
            os.close(source)
            raise OSError(errno.EAGAIN, f"no thread could start to trim the audit hash store ({exc})") from None
        return copy

    def copying(self) -> bool:
        """Whether the copy's thread still runs (else `file` says how it ended)."""
        return self._thread is not None and self._thread.is_alive()

    def cancel(self) -> None:
        """Stop the copy (within a chunk) and wait for its thread; the new store is removed."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join()
        if self.file is not None:  # copied, never renamed
            self.file.close()
            self.file = None
            with contextlib.suppress(OSError):
                self.temporary.unlink(missing_ok=True)

    def _run(self, source: int, first: int) -> None:
        try:
            self.file = self._copied(source, first)
        except (OSError, _Cancelled) as exc:
            with contextlib.suppress(OSError):  # the disk full, say: give back what the copy took
                self.temporary.unlink(missing_ok=True)
            if isinstance(exc, OSError):  # logged here: no caller waits for the copy
                log.error("audit log retention failed: %s; the hash store is kept whole, and trimmed at a later "
                          "retention", exc)
        finally:
            os.close(source)

    def _copied(self, source: int, first: int) -> io.BufferedRandom:
        with named(self.temporary):
            self.temporary.unlink(missing_ok=True)  # one a crash left
            fd = open_file(self.temporary, os.O_RDWR | os.O_TRUNC)
            rewritten = open(fd, "r+b")  # noqa: SIM115 (handed on: kept open as the store, as the old one)
            try:
                _write_all(rewritten.fileno(), _BASE_MARK + self.start.base.to_bytes(8, "big"))
                _copy(source, first, self.copied, rewritten.fileno(), self._cancel)
                os.fsync(rewritten.fileno())
            except BaseException:
                rewritten.close()
                raise
        return rewritten


def _copy(source: int, first: int, stop: int, target: int, cancel: threading.Event | None = None) -> None:
    """Copy the bytes `first`..`stop` of `source` to `target`, a chunk at a time (a store of years
    is gigabytes); _Cancelled once `cancel` is set."""
    while first < stop:
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        chunk = os.pread(source, min(_COPY_BYTES, stop - first), first)
        if not chunk:  # cut short under the writer: the new store would lack hashes it has written
            raise OSError(errno.EIO, f"the hash store ends at byte {first}, before the {stop} bytes written to it")
        _write_all(target, chunk)
        first += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def digest_hash(digest: dict[str, Any] | None) -> str | None:
    """The hash by which the next digest names `digest` (`previousDigestHash`; None: no previous)."""
    return None if digest is None else hashlib.sha256(canonical(digest)).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.unlink(missing_ok=True)  # one a crash left (or an older version made 0644) keeps its mode
    fd = open_file(temporary, os.O_WRONLY | os.O_TRUNC)
    try:
        with named(temporary):
            os.write(fd, data)
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    sync_folder(path.parent)


def verify(data_dir: Path, public_key: Path | None = None) -> list[str]:
    """Every integrity problem of the audit trail in `data_dir`: missing, altered, reordered or
    inserted records, and breaks in the signed digest chain (empty when intact). `public_key`: a
    copy of the node's public key kept elsewhere, to check the digests against."""
    from keytrail.audit.verification import verify as run

    return run(data_dir, public_key)


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
