"""Opening a node's key store: the SQLite one in the data dir, or PostgreSQL (`serve --store`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import asyncpg

from keytrail.cli.console import url_secrets
from keytrail.cli.listening import host_port
from keytrail.config import STORE_ENV, ServeSettings
from keytrail.kms.errors import KmsError
from keytrail.kms.postgres_connections import session_settings
from keytrail.kms.postgres_documents import open_documents
from keytrail.kms.postgres_ledger import LedgerWatch
from keytrail.kms.postgres_store import DEFAULT_TIMEOUT, PostgresStore
from keytrail.kms.resealing import POSTGRES_TABLES
from keytrail.kms.sealing import ROOT_KEY_ENV, ROOT_KEY_FILE_ENV, RootKey, RootKeyUnusable, SealError
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Store
from keytrail.kms.store_ledger import LedgerMismatch
from keytrail.transport.addresses import unbracketed_ipv6

__all__ = ["StoreUnavailable", "open_store", "open_store_read_only", "store_place", "store_url_problem",
           "without_password"]


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
        return await _open_store(settings, fresh, made)
    except BaseException:
        if settings.store is None and fresh:  # a first start's SQLite store: nothing is sealed in it yet
            _forget(made)
            _remove_new_database(settings.data_dir / "keys.db")
        raise


async def _open_store(settings: ServeSettings, fresh: bool, made: Path | None) -> Store:
    """`open_store`, past the database's reach: the root key loaded (made when `fresh`), the store read."""
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
        raise _wrong_root_key(exc, "start") from None


def _wrong_root_key(exc: SealError, verb: str) -> StoreUnavailable:
    """The root key given opens nothing of the store: `verb` (start, run) again with the store's own."""
    return StoreUnavailable(f"the root key does not open the key material in the key store ({exc}): {verb} with "
                            "the root key the store was sealed with (root.key, $KEYTRAIL_ROOT_KEY_FILE or "
                            "$KEYTRAIL_ROOT_KEY)")


def _forget(made: Path | None) -> None:
    """Remove a root key made for a store that refused it: a retry would load it again, and the
    message could not tell that the store's own is missing."""
    if made is not None:
        made.unlink(missing_ok=True)


def _remove_new_database(database: Path) -> None:
    """Remove the SQLite files a first start made and could not open (a full disk made `keys.db`
    and failed to write it): left, they kept the data dir from being removed as a failed start's,
    and the root key made beside them was taken by the next start for the store's own."""
    for path in (database, *(database.with_name(database.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        with contextlib.suppress(OSError):  # what cannot be removed stays, and the data dir with it
            path.unlink(missing_ok=True)


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
        where = store_place(settings.store) if settings.store else str(settings.data_dir / "keys.db")
        raise StoreUnavailable(f"cannot read the key store at {where}: the first read of its keys failed "
                               f"({exc.message}): start again once the database answers") from None
    except BaseException:
        await store.close()
        raise
    return store


async def open_store_read_only(url: str, root: RootKey) -> PostgresStore:
    """The shared key store at `url` for a reader beside running nodes (`keytrail analyze`): every
    session read-only, so PostgreSQL itself refuses a write; nothing made, upgraded or filled in, as
    a node does on opening; the root key and the rows checked against the ledger as a node checks
    them (StoreUnavailable, saying why, when it cannot be read)."""
    if problem := store_url_problem(url):
        raise StoreUnavailable(problem)
    with _unavailable_unless_opened(url):
        pool = await asyncpg.create_pool(
            _named(url, "keytrail analyze"), min_size=1, max_size=2, timeout=DEFAULT_TIMEOUT,
            command_timeout=DEFAULT_TIMEOUT,
            server_settings={**session_settings(DEFAULT_TIMEOUT), "default_transaction_read_only": "on"})
    try:
        with _unavailable_unless_opened(url):
            await _check_as_opened(pool, root, url)
            await LedgerWatch(pool, lambda: root).check(DEFAULT_TIMEOUT)
    except SealError as exc:
        pool.terminate()
        raise _wrong_root_key(exc, "run") from None
    except BaseException:
        pool.terminate()  # at once: the database may be the one not answering
        raise
    return PostgresStore(pool, root)


# The tables a reader needs: a database without the keys' has never been a key store.
_READ_TABLES = [*(f"kms_{table.name}" for table in POSTGRES_TABLES), "kms_root_key", "kms_ledger"]
_MISSING = "SELECT array_agg(t ORDER BY t) FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NULL"


async def _check_as_opened(pool: Any, root: RootKey, url: str) -> None:
    """What a node checks as it opens the store, changing nothing: its tables, and that `root` is
    the root key its documents are sealed under (SealError)."""
    async with pool.acquire(timeout=DEFAULT_TIMEOUT) as connection, connection.transaction(readonly=True):
        missing = await connection.fetchval(_MISSING, _READ_TABLES) or []
        if "kms_keys" in missing:
            raise StoreUnavailable(f"the database at {store_place(url)} holds no keytrail key store (no kms_keys "
                                   "table): name the database the nodes' --store names")
        if missing or not await _opens_unchanged(connection, root):
            raise StoreUnavailable(
                f"the key store at {store_place(url)} is not as a node of this keytrail version leaves it (a store of "
                "an earlier version, which a node of this one upgrades as it starts, or its ledger row deleted): "
                "analyze never writes it")


async def _opens_unchanged(connection: Any, root: RootKey) -> bool:
    """Whether the store opens under `root` as a node opens it, with nothing to write (SealError:
    another root key). The transaction is read-only: what a node would write on opening it (an
    upgrade, a ledger row made anew) PostgreSQL refuses."""
    try:
        await open_documents(connection, root)
    except asyncpg.ReadOnlySQLTransactionError:
        return False
    return True


def store_url_problem(url: str) -> str | None:
    """Why `url` names no store keytrail opens, naming where it came from (--store, or $KEYTRAIL_STORE:
    an operator who gave no --store looked for one) and the URL without its user or any password
    (a `password=` in its query was printed whole)."""
    source = f"${STORE_ENV}" if url == os.environ.get(STORE_ENV) else "--store"
    if not url.startswith(("postgresql://", "postgres://")):
        return f"{source} must be a postgresql:// URL, got {store_place(url)!r}"
    if url.partition("://")[2].split("/", 1)[0].count("@") > 1:
        # asyncpg takes the host from after the first "@": "cannot open the key store at
        # 127.0.0.1:5432/db: Name or service not known" named a host that resolves.
        return f"{source}: the user name or password holds a '@': percent-encode it as %40"
    if any(unbracketed_ipv6(server) for server in _hosts(url)):
        # asyncpg read the port from after the first ":": "invalid literal for int() with base 10: ':1:5432'"
        return f"{source}: an IPv6 address goes in brackets, as postgresql://USER@[::1]:5432/DB"
    return None


def _hosts(url: str) -> list[str]:
    """The HOST[:PORT] entries of a postgresql:// URL's authority (libpq takes several, comma-separated)."""
    authority = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    return authority.rpartition("@")[2].split(",")


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
    # pg_stat_activity's application_name; an IPv6 --host in brackets, as a URL writes it: `::1:4599`
    # could not be told from the address `::1:4599`.
    node = f"keytrail serve {host_port(settings.host, settings.port)}"
    with _unavailable_unless_opened(settings.store):
        return await PostgresStore.connect(_named(settings.store, node), root)


def _named(url: str, name: str) -> str:
    """`url` with PostgreSQL's `application_name` set to `name`, unless the URL sets one: its sessions
    showed none in pg_stat_activity, and a DBA could tell neither keytrail's from others' nor which
    node held them (asyncpg takes the URL's query parameters as the session's settings). Appended
    to the text: urlunsplit writes `postgresql:///db` (a Unix socket's) as `postgresql:/db`."""
    query = urlsplit(url).query
    if "application_name" in parse_qs(query):
        return url
    separator = "&" if query else ("" if url.endswith("?") else "?")
    return f"{url}{separator}{urlencode({'application_name': name})}"


@contextlib.contextmanager
def _unavailable_unless_opened(url: str) -> Iterator[None]:
    """PostgreSQL's refusals as StoreUnavailable, naming the database without its user and password."""
    where = store_place(url)
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


def store_place(url: str) -> str:
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
