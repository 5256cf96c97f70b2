"""Key material at rest: sealed under the node's root key before it touches any store."""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import os
import tempfile
from collections.abc import Collection
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keytrail.owner_only import make_dirs, read_regular, sharing_problem, sync_folder

__all__ = ["AUTHENTICATED_SEAL", "RootKey", "RootKeyUnusable", "SealError", "root_key_file", "write_root_key_file"]

log = logging.getLogger(__name__)

ROOT_KEY_ENV = "KEYTRAIL_ROOT_KEY"
ROOT_KEY_FILE_ENV = "KEYTRAIL_ROOT_KEY_FILE"
# HKDF's info for the key that authenticates the store's documents: a key of its own, so a MAC
# never is an AES-GCM computation under the sealing key, nor the other way round.
_DOCUMENT_MAC_INFO = b"keytrail key store document MAC v1"
# HKDF's info for the key of the key store's ledger terms (kms/store_ledger.py): its own key, so no
# ledger term is ever a document MAC, nor the other way round.
_LEDGER_INFO = b"keytrail key store ledger v1"
# The end of every binding sealed into an authenticated document (kms/authentic_docs.py): such a
# value does not open under the binding of the version before, whose documents had no MAC.
AUTHENTICATED_SEAL = "#authenticated"


class SealError(Exception):
    """Sealed material could not be opened: wrong root key or a damaged store."""


class RootKeyUnusable(OSError):
    """The configured root key is missing or not 32 bytes (an OSError: the CLI reports it in one line)."""


class RootKey:
    """An AES-256-GCM key that seals every key material version; the AAD binds each sealed
    value to its key ARN and material id, so sealed values cannot be swapped between keys."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("the root key must be 32 bytes")
        self._aead = AESGCM(secret)
        self._mac_key = HKDF(SHA256(), 32, salt=None, info=_DOCUMENT_MAC_INFO).derive(secret)
        self._ledger_key = HKDF(SHA256(), 32, salt=None, info=_LEDGER_INFO).derive(secret)
        # binding -> its sealed text, for `seal_text` to write an unchanged value again rather than
        # seal it anew (see there). Sealed, not the material: a deleted key's material must not stay
        # in memory through this table.
        self._sealed: dict[str, str] = {}

    def __repr__(self) -> str:
        return "RootKey(<sealed>)"

    def same_as(self, other: RootKey) -> bool:
        """Whether `other` holds the same 32 bytes (compared through a key derived from them)."""
        return hmac.compare_digest(self._mac_key, other._mac_key)

    def seal(self, material: bytes, binding: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, material, binding.encode())

    def unseal(self, sealed: bytes, binding: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], binding.encode())
        except (InvalidTag, ValueError):
            raise SealError(f"cannot unseal key material for {binding}") from None

    def seal_text(self, material: bytes, binding: str, *, reuse: bool = False) -> str:
        """`seal` as base64 text, the form the stores' JSON documents keep. With `reuse`, a value
        this key sealed or opened (`unseal_text(..., remember=True)`) under the same binding is given
        back as it was: every store write of a key carries all its material versions, and sealing
        each anew would spend a random 96-bit nonce per version per tag or policy change, towards
        the 2^32 seals NIST SP 800-38D allows one AES-GCM key with random nonces. So seals grow with
        material versions, not with writes. (Only for values written again and again: the table
        keeps an entry per binding until the store deletes its key, `forget`.) The value kept is
        opened to check that it still holds `material`: a write pays that, not each value a store
        opens."""
        known = self._sealed.get(binding) if reuse else None
        if known is not None and hmac.compare_digest(self.unseal(base64.b64decode(known), binding), material):
            return known
        sealed = base64.b64encode(self.seal(material, binding)).decode()
        if reuse:
            self._sealed[binding] = sealed
        return sealed

    def forget(self, *bindings: str) -> None:
        """Drop what `seal_text(..., reuse=True)` keeps of `bindings` (a deleted key's material
        versions): the table is otherwise kept for the life of the process, and a node that
        creates and deletes keys for months would hold every deleted one's sealed material,
        which the root key beside it still opens."""
        for binding in bindings:
            self._sealed.pop(binding, None)

    def retain(self, bindings: Collection[str]) -> None:
        """Keep of the table only `bindings` (every key a shared store holds): a key another node
        deleted is forgotten only in that node's process (`forget`), and stayed in this one's."""
        for binding in set(self._sealed) - set(bindings):
            self._sealed.pop(binding, None)

    def unseal_text(self, sealed: str, binding: str, *, remember: bool = False) -> bytes:
        """`unseal` of `seal_text`; text that is not base64 is a damaged value too (SealError).
        `remember`: for `seal_text(..., reuse=True)` to write it again as it is."""
        try:
            raw = base64.b64decode(sealed, validate=True)
        except (ValueError, TypeError):  # binascii.Error is a ValueError
            raise SealError(f"cannot unseal key material for {binding}") from None
        material = self.unseal(raw, binding)
        if remember:
            self._sealed[binding] = sealed
        return material

    def mac(self, document: bytes) -> bytes:
        """HMAC-SHA256 of `document` under a key derived from the root key (HKDF): what makes a
        store document authentic (kms/authentic_docs.py)."""
        return hmac.digest(self._mac_key, document, "sha256")

    def ledger_term(self, entry: bytes) -> bytes:
        """HMAC-SHA256 of `entry` under a key derived from the root key for the key store's ledger
        alone (kms/store_ledger.py)."""
        return hmac.digest(self._ledger_key, entry, "sha256")

    @classmethod
    def load(cls, data_dir: Path, *, create: bool = True) -> RootKey:
        """The root key from `$KEYTRAIL_ROOT_KEY` (base64), `$KEYTRAIL_ROOT_KEY_FILE` (never created),
        or `<data-dir>/root.key` (created with mode 0600 on first start; never by a reader, `create=False`:
        a new key there would not open the store's material, and would hide that it is not there)."""
        if value := os.environ.get(ROOT_KEY_ENV):
            if named := os.environ.get(ROOT_KEY_FILE_ENV):  # a key left in the environment beside the secret file
                log.warning("$%s and $%s are both set: the root key in $%s is used, %s is not read",
                            ROOT_KEY_ENV, ROOT_KEY_FILE_ENV, ROOT_KEY_ENV, named)
            try:
                return cls(base64.b64decode(value, validate=True))
            except ValueError:  # binascii.Error is one
                raise RootKeyUnusable(f"${ROOT_KEY_ENV} must be 32 bytes in base64") from None
        named = os.environ.get(ROOT_KEY_FILE_ENV)
        path = _key_file(data_dir)
        if not path.exists() and named:  # a secret not mounted, a typo: a new key there would seal keys to lose
            raise RootKeyUnusable(f"no root key: {path} (${ROOT_KEY_FILE_ENV}) does not exist")
        if not path.exists() and not create:
            raise RootKeyUnusable(f"no root key: {path} does not exist (nor ${ROOT_KEY_FILE_ENV} or ${ROOT_KEY_ENV}): "
                                  f"restore it, or name where it is kept in ${ROOT_KEY_FILE_ENV}")
        if not path.exists():
            try:
                write_root_key_file(path, os.urandom(32))
            except OSError as error:  # a full disk said bare "No space left on device", naming no file
                raise RootKeyUnusable(f"cannot create the root key file {path}: {error.strerror or error}") from None
        # The data dir's own file, a regular one only: whoever can write the data dir can put a FIFO
        # there, on which serve waited forever (deaf to SIGTERM). One named in $KEYTRAIL_ROOT_KEY_FILE
        # is read as the operator gave it (a pipe of `<(vault read …)` too).
        return cls.from_file(path, "restore it from a backup", regular=not named)

    @classmethod
    def from_file(cls, path: Path, remedy: str, *, regular: bool = False) -> RootKey:
        """The root key a file holds (RootKeyUnusable, saying `remedy`, unless it is 32 bytes);
        `regular`: opened without waiting, and refused unless it is a regular file."""
        try:
            secret = read_regular(path) if regular else path.read_bytes()
        except OSError as error:  # a folder, an unreadable file: said as the root key file's, not bare "Is a directory"
            raise RootKeyUnusable(f"cannot read the root key file {path}: {error.strerror or error}") from None
        _warn_if_shared(path)
        if len(secret) != 32:
            raise RootKeyUnusable(f"the root key file {path} holds {len(secret)} bytes, not 32: {remedy}")
        return cls(secret)


def write_root_key_file(path: Path, secret: bytes, *, replace: bool = False) -> None:
    """Put `secret` at `path` whole or not at all (a crash mid-write left an empty root.key that
    every later start refused), owner-only, and durably named before anything is sealed under it:
    a power cut must not keep keys.db's sealed material and lose the key's directory entry.
    Without `replace`, a file already there (another process made one first) is the key."""
    make_dirs(path.parent)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temp, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):  # replaced: it is `path` now
            os.unlink(temp)
    sync_folder(path.parent)


def root_key_file(data_dir: Path) -> Path | None:
    """The file `RootKey.load` reads the root key from; None when `$KEYTRAIL_ROOT_KEY` holds it."""
    return None if os.environ.get(ROOT_KEY_ENV) else _key_file(data_dir)


def _key_file(data_dir: Path) -> Path:
    return Path(os.environ.get(ROOT_KEY_FILE_ENV) or data_dir / "root.key")


def _warn_if_shared(path: Path) -> None:
    """Say so when users other than keytrail's may read the root key, or change it (a backup
    restored with the wrong umask or owner, a `cp`): read-only commands (`analyze`) go on, as root
    may look into another user's data dir. `serve` refuses at start a root key file others can
    change (cli/serve_checks.py); one they may only read is a warning there too, as refusing it
    would stop a node that ran yesterday."""
    problem = sharing_problem(path.stat(), chmod="600 (or 400)")
    if problem is not None:
        log.warning("the root key file %s %s: %s", path, problem, problem.fix)
