"""Opening a node's key store: the SQLite one in the data dir, or PostgreSQL (`serve --store`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import asyncpg

from keytrail.cli.console import url_secrets
from keytrail.config import STORE_ENV, ServeSettings
from keytrail.kms.errors import KmsError
from keytrail.kms.postgres_store import DEFAULT_TIMEOUT, PostgresStore
from keytrail.kms.sealing import ROOT_KEY_ENV, ROOT_KEY_FILE_ENV, RootKey, RootKeyUnusable, SealError
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Store
from keytrail.kms.store_ledger import LedgerMismatch

__all__ = ["StoreUnavailable", "open_store", "store_url_problem", "without_password"]


class StoreUnavailable(Exception):
    """The configured key store cannot be opened; the message says why."""


class _LedgerRefused(StoreUnavailable):
    """The PostgreSQL store's rows are not its ledger's (LedgerMismatch, as it opened)."""


async def open_store(settings: ServeSettings) -> Store:
    """The node's key store, opened and read (StoreUnavailable, saying why, when it cannot be)."""
    if settings.store is not None:
        # Before a root key is made for it: a database that cannot be reached leaves nothing behind.
        await _check_reachable(settings.store)
    # A store already holding sealed keys never gets a new root key made beside it: that key
    # could not open them, and the file left behind would hide that the real one is missing.
    fresh = settings.store is not None or not (settings.data_dir / "keys.db").exists()
    made = _root_key_made_by(settings)
    try:
        root = RootKey.load(settings.data_dir, create=fresh)
        # Read once: the children (consumer, detector, fsync helper) inherit the environment, and
        # unlike serve they stay dumpable, so /proc/<pid>/environ and `ps e` would show it.
        os.environ.pop(ROOT_KEY_ENV, None)
        return await _read_store(settings, root)
    except RootKeyUnusable as exc:
        raise StoreUnavailable(str(exc)) from None
    except _LedgerRefused:
        # With a key made now, only an empty store's ledger can refuse it (a store with rows says
        # SealError): a ledger of another root key, maybe, and nothing was sealed under this one.
        _forget(made)
        raise
    except SealError as exc:  # both stores check the root key on opening
        _forget(made)
        raise StoreUnavailable(f"the root key does not open the key material in the key store ({exc}): start with "
                               "the root key the store was sealed with (root.key, $KEYTRAIL_ROOT_KEY_FILE or "
                               "$KEYTRAIL_ROOT_KEY)") from None


def _forget(made: Path | None) -> None:
    """Remove a root key made for a store that refused it: a retry would load it again, and the
    message could not tell that the store's own is missing."""
    if made is not None:
        made.unlink(missing_ok=True)


def _root_key_made_by(settings: ServeSettings) -> Path | None:
    """<data-dir>/root.key when opening the store is about to create it (no key named elsewhere)."""
    path = settings.data_dir / "root.key"
    named = os.environ.get(ROOT_KEY_ENV) or os.environ.get(ROOT_KEY_FILE_ENV)
    return None if named or path.exists() else path


async def _read_store(settings: ServeSettings, root: RootKey) -> Store:
    """The store, with every key read (and unsealed) now, as the first scheduler run would in the
    middle of startup (the SQLite store reads them as it opens); closed again if that fails. A
    database that fails that read (lost, timed out, a statement cancelled) is StoreUnavailable:
    its KmsError went through as a traceback, though the store is only unavailable (the root key
    made for it stays, and the next start, with the database back, opens it)."""
    store = await _connect_store(settings, root)
    try:
        await store.all_keys()
    except KmsError as exc:  # the store's refusals: what it answers a KMS call the database failed
        await store.close()
        where = _place(settings.store) if settings.store else str(settings.data_dir / "keys.db")
        raise StoreUnavailable(f"cannot read the key store at {where}: the first read of its keys failed "
                               f"({exc.message}): start again once the database answers") from None
    except BaseException:
        await store.close()
        raise
    return store


def store_url_problem(url: str) -> str | None:
    """Why `url` names no store keytrail opens, naming where it came from (--store, or $KEYTRAIL_STORE:
    an operator who gave no --store looked for one) and the URL without its user or any password
    (a `password=` in its query was printed whole)."""
    source = f"${STORE_ENV}" if url == os.environ.get(STORE_ENV) else "--store"
    if not url.startswith(("postgresql://", "postgres://")):
        return f"{source} must be a postgresql:// URL, got {_place(url)!r}"
    if url.partition("://")[2].split("/", 1)[0].count("@") > 1:
        # asyncpg takes the host from after the first "@": "cannot open the key store at
        # 127.0.0.1:5432/db: Name or service not known" named a host that resolves.
        return f"{source}: the user name or password holds a '@': percent-encode it as %40"
    return None


async def _check_reachable(url: str) -> None:
    """Connect to the store's database once and let go (StoreUnavailable when it cannot)."""
    if problem := store_url_problem(url):
        raise StoreUnavailable(problem)
    with _unavailable_unless_opened(url):
        connection = await asyncpg.connect(url, timeout=DEFAULT_TIMEOUT)
        await connection.close()


async def _connect_store(settings: ServeSettings, root: RootKey) -> Store:
    if settings.store is None:
        return SqliteStore(settings.data_dir / "keys.db", root)
    with _unavailable_unless_opened(settings.store):
        return await PostgresStore.connect(settings.store, root)


@contextlib.contextmanager
def _unavailable_unless_opened(url: str) -> Iterator[None]:
    """PostgreSQL's refusals as StoreUnavailable, naming the database without its user and password."""
    where = _place(url)
    try:
        yield
    except LedgerMismatch as exc:  # an OSError too: open_store tells it apart
        raise _LedgerRefused(f"cannot open the key store at {where}: {exc}") from None
    except (OSError, asyncpg.PostgresError, ValueError) as exc:  # ValueError: a URL asyncpg cannot parse
        raise StoreUnavailable(f"cannot open the key store at {where}: {_problem(exc, url)}") from None


def _problem(exc: Exception, url: str) -> str:
    """Why the store did not open, in words, on one line: a database that takes the connection
    and never answers raises a TimeoutError whose text is empty, and PostgreSQL's refusals carry
    their DETAIL and HINT on lines of their own (a role without CONNECT: "User does not have
    CONNECT privilege."), which split the one-line error."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"the database did not answer within {DEFAULT_TIMEOUT:g} s"
    return without_password(" ".join((str(exc) or type(exc).__name__).split()), url)


def _place(url: str) -> str:
    """Where the store `url` names, as said in a complaint: never the user before its "@", nor a
    password (its own, or one in its query)."""
    return without_password(url.split("@")[-1], url)


def without_password(text: str, url: str | None) -> str:
    """`text` with each password of the --store `url` (url_secrets: its own, and those of its
    query), as written and percent-decoded, replaced by ***; the longest first, so that none is
    left in part where it holds another."""
    secrets = {form for secret in url_secrets(url or "") for form in (secret, unquote(secret)) if form}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
