"""`keytrail root-key rotate`: seal every secret of the key store again under a new root key."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol

import typer

from keytrail.cli.command_line import hide_url_passwords
from keytrail.cli.console import STORE_URL, address_option, fail, no_core_dumps, os_problem, path_option
from keytrail.config import STORE_ENV
from keytrail.kms.sealing import ROOT_KEY_ENV, ROOT_KEY_FILE_ENV, RootKey, SealError, write_root_key_file
from keytrail.owner_only import sharing_problem
from keytrail.transport.segment_log import event_log_dir

__all__ = ["register", "root_key_app"]

COMMAND = "keytrail root-key rotate"
# How long the rotation waits, after its commit, for other processes' reads of keys.db to end: the
# values sealed under the old root key stay in the file until they do (kms/sqlite_store.py, erase_freed).
ERASE_WAIT_SECONDS = 10.0

root_key_app = typer.Typer(help="The root key that seals all key material (docs/operations.md, \"Root key\").",
                           no_args_is_help=True)


class _Refused(Exception):
    """The rotation cannot start; the message says why."""


@dataclass(frozen=True)
class _Rotated:
    """What the rotation did: the documents resealed (None: the store already was under the new
    key), and whether the store's files are rid of the values sealed under the old key."""

    resealed: int | None
    erased: bool = True  # a PostgreSQL store's tables rewritten (VACUUM FULL) in its transaction
    # A PostgreSQL store's tables not rewritten after the commit: (why, the tables to VACUUM FULL).
    unvacuumed: tuple[str, str] | None = None


class _Resealable(Protocol):
    """What the rotation needs of a key store (SqliteStore, PostgresStore)."""

    async def reseal(self, new: RootKey) -> int: ...

    async def close(self) -> None: ...


@root_key_app.command()
def rotate(
    new_key: Annotated[Path, path_option(
        "--new-key", help="File holding the new root key: 32 random bytes (head -c 32 /dev/urandom > FILE).")],
    data_dir: Annotated[Path, path_option(
        "--data-dir", help="The node's data dir: its root key and, without --store, its key store.")] = Path(
        "keytrail-data"),
    store: Annotated[str | None, address_option(
        envvar=STORE_ENV, show_envvar=True, give=STORE_URL,
        help="The shared key store, postgresql://USER@HOST:PORT/DB: stop every node first.")] = None,
) -> None:
    """Seal every key's material, import token and custom key store password again under a new
    root key, and authenticate every document of the key store under it, in one transaction.
    Stop serve first (with --store, every node); the old root key reads as serve reads it
    ($KEYTRAIL_ROOT_KEY, $KEYTRAIL_ROOT_KEY_FILE or <data-dir>/root.key)."""
    # The key stores and asyncpg load here, not with `keytrail root-key rotate --help` (commands.py).
    import asyncpg

    from keytrail.kms import authentic_docs, postgres_connections
    from keytrail.kms.authentic_docs import DocumentRefused
    from keytrail.kms.errors import KmsError
    from keytrail.kms.postgres_store import StoreBusy

    no_core_dumps()  # this process holds both root keys and every key's material
    hide_url_passwords([store])  # from `ps` while it reseals
    # A row that does not verify is this command's one line of complaint (below), not also a log
    # line of the store that opened it.
    logging.getLogger(authentic_docs.__name__).setLevel(logging.CRITICAL)
    # The key store's line for a database refusing the reseal is this command's line too (below).
    logging.getLogger(postgres_connections.__name__).setLevel(logging.CRITICAL)
    try:
        _require_another_file(new_key, data_dir)
        _require_no_link(data_dir)
        secret = _new_secret(new_key)
        rotated = asyncio.run(_reseal(data_dir, store, RootKey(secret)))
    except (_Refused, StoreBusy) as exc:
        raise fail(str(exc), COMMAND) from None
    except SealError as exc:
        raise fail(f"the current root key does not open the key store ({exc}): nothing was changed", COMMAND) from None
    except DocumentRefused as exc:  # resealed, it would pass for authentic under the new key
        # Not "delete it": the ledger (kms/store_ledger.py) holds the row's latest version.
        raise fail(f"{exc}: restore that row as keytrail last wrote it, or the whole key store, from a backup; "
                   "nothing was changed", COMMAND) from None
    except KmsError as exc:  # the key store lost, timed out or refusing writes: maybe at the commit
        why = " ".join(str(exc.__cause__ or exc.message or exc.code).split())  # the database's words, if any
        raise fail(f"the key store could not be resealed ({why}): run the same command again "
                   "once the database answers and has room: it reseals the store, or finishes a rotation whose commit "
                   "went through; keep both root keys until it succeeds", COMMAND, code=1) from None
    except (OSError, asyncpg.PostgresError, ValueError) as exc:  # RootKeyUnusable is an OSError
        # One line: PostgreSQL's errors carry their HINT on a line of their own.
        reason = os_problem(exc) if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        raise fail(f"{reason}: nothing was changed", COMMAND) from None
    except sqlite3.Error as exc:  # a full disk: the transaction rolled back, or its flush failed after it
        raise fail(f"cannot write the key store ({exc}): make room and run the same command again to finish the "
                   "rotation", COMMAND) from None
    if rotated.resealed is None:
        typer.echo("the key store was already sealed under the new root key (a rotation stopped before it "
                   "finished): nothing to reseal")
    else:
        typer.echo(f"resealed and re-authenticated {rotated.resealed} document(s) of the key store under the new "
                   "root key")
    try:
        typer.echo(_next_step(data_dir, new_key, secret))
    except OSError as exc:  # after the commit: the store opens under the new root key only
        raise fail(f"the key store is sealed under the new root key, but {data_dir / 'root.key'} still holds the old "
                   f"one: cannot replace it ({os_problem(exc)}): make room and run the same command again",
                   COMMAND) from None
    if rotated.unvacuumed is not None:  # the rotation itself is done, root.key replaced
        reason, tables = rotated.unvacuumed
        raise fail(f"the key store is sealed under the new root key, but its tables' files still hold the values "
                   f"sealed under the old one, as dead rows: VACUUM FULL failed after the commit ({reason}): make room "
                   f"for a copy of the tables and run VACUUM FULL {tables} as their owner", COMMAND)
    if not rotated.erased:  # the rotation itself is done: run again, it finds nothing to reseal and erases them
        raise fail("the key store is sealed under the new root key, but keys.db still holds the values sealed under "
                   "the old one: another process (a sqlite3 shell or .backup, keytrail analyze) kept a read of it "
                   f"open for {ERASE_WAIT_SECONDS:g} s: close it, then run the same command again to erase them",
                   COMMAND)


def _require_another_file(new_key: Path, data_dir: Path) -> None:
    """Refuse the root key file the rotation replaces as the new key: nothing was rotated, and the
    advice printed after it ("{new_key} is a copy of it: … or delete it") named the only root key."""
    current = data_dir / "root.key"
    if os.environ.get(ROOT_KEY_ENV) or os.environ.get(ROOT_KEY_FILE_ENV) or not current.exists():
        return
    with contextlib.suppress(OSError):  # a --new-key not there is said as _new_secret says it
        if new_key.samefile(current):
            raise _Refused(f"--new-key: {new_key} is the current root key ({current}): make a new one with "
                           "head -c 32 /dev/urandom > FILE")


def _require_no_link(data_dir: Path) -> None:
    """Refuse, before anything is resealed, a <data-dir>/root.key that is a symbolic link (serve reads
    through it): replaced after the commit, the link became a file holding the new key in the data
    dir, and the secret it named, the copy the operator keeps, still held the old one. Not written
    through: the target's folder (a mounted secret) may refuse the write once the store opens under
    the new key only."""
    current = data_dir / "root.key"
    if os.environ.get(ROOT_KEY_ENV) or os.environ.get(ROOT_KEY_FILE_ENV) or not current.is_symlink():
        return
    target = os.path.realpath(current)  # absolute, for $KEYTRAIL_ROOT_KEY_FILE; a loop of links is no error here
    raise _Refused(f"{current} is a symbolic link to {target}: rotating would replace the link with a file holding "
                   f"the new root key and leave the old one in {target}: rotate with ${ROOT_KEY_FILE_ENV}={target}, "
                   "or replace the link with the file it points to: nothing was changed")


def _new_secret(path: Path) -> bytes:
    if not path.is_file():
        raise _Refused(f"--new-key: {'not a regular file' if path.exists() else 'no such file'}: {path}")
    # Refused, not warned of as serve warns of its current root key (refusing that would stop a node
    # that ran yesterday): nothing depends on the new key yet, and the warning came as a second line
    # before the command's own, of a rotation refused for another reason. One another user owns or
    # may write is a root key they may know (or swap before it is read).
    if problem := sharing_problem(path.stat(), chmod="600 (or 400)"):
        raise _Refused(f"--new-key: {path} {problem}: {problem.fix} first")
    RootKey.from_file(path, "make it with head -c 32 /dev/urandom > FILE")  # the size (shared: refused above)
    return path.read_bytes()


async def _reseal(data_dir: Path, url: str | None, new: RootKey) -> _Rotated:
    """Reseal the shared store at `url`, or else the data dir's keys.db, under `new`."""
    from keytrail.cli.key_store import store_url_problem
    from keytrail.kms.postgres_store import PostgresStore, ResealedNotErased

    old = RootKey.load(data_dir, create=False)
    if url is not None:
        if old.same_as(new):  # "resealed" under the same key: and the advice after it spoke of an old key gone
            raise _Refused("--new-key holds the current root key: make a new one with head -c 32 /dev/urandom > FILE")
        if problem := store_url_problem(url):
            raise _Refused(problem)
        try:
            return _Rotated(await _reseal_store(lambda root: PostgresStore.connect(url, root), old, new))
        except ResealedNotErased as exc:  # done: root.key is replaced all the same
            return _Rotated(exc.resealed, erased=False, unvacuumed=(exc.reason, exc.tables))
    return await _reseal_local(data_dir, old, new)


async def _reseal_local(data_dir: Path, old: RootKey, new: RootKey) -> _Rotated:
    """Reseal keys.db, then empty its WAL into it, waiting a while for other processes' reads. With
    `new` the current key already, a rotation whose old values a read kept in keys.db is finished
    (its WAL still holds changes); else there is nothing to do."""
    from keytrail.kms.sqlite_store import SqliteStore, erase_freed

    path = data_dir / "keys.db"
    unerased = old.same_as(new) and _wal_holds_changes(path)
    if old.same_as(new) and not unerased:
        raise _Refused("--new-key holds the current root key: nothing to reseal, nor to erase in keys.db (its WAL "
                       "is empty); to rotate, make a new one with head -c 32 /dev/urandom > FILE")
    if not path.exists():
        raise _Refused(f"{data_dir} holds no key store (keys.db)")
    async def open_local(root: RootKey) -> SqliteStore:
        return SqliteStore(path, root)  # unseals every key: a wrong root key stops here

    with _serve_stopped(data_dir):
        if unerased:
            await (await open_local(new)).close()  # SealError if it is not the store's
            resealed = None
        else:
            resealed = await _reseal_store(open_local, old, new)
        return _Rotated(resealed, erase_freed(path, ERASE_WAIT_SECONDS))


def _wal_holds_changes(path: Path) -> bool:
    wal = path.with_name(path.name + "-wal")
    return wal.is_file() and wal.stat().st_size > 0


async def _reseal_store(open_store: Callable[[RootKey], Awaitable[_Resealable]], old: RootKey,
                        new: RootKey) -> int | None:
    """Reseal the store under `new`; None if `new` already opens it and `old` does not: a rotation
    killed after its commit, before root.key was replaced, is finished by running it again."""
    try:
        store = await open_store(old)
    except SealError:
        if not await _opens(open_store, new):
            raise
        return None
    try:
        return await store.reseal(new)
    finally:
        await store.close()


async def _opens(open_store: Callable[[RootKey], Awaitable[_Resealable]], root: RootKey) -> bool:
    try:
        store = await open_store(root)
    except SealError:
        return False
    await store.close()
    return True


@contextlib.contextmanager
def _serve_stopped(data_dir: Path) -> Iterator[None]:
    """Hold the event log's writer lock, which a running serve holds and a starting one takes:
    a node serving meanwhile would go on sealing under the old key what the new one cannot open."""
    lock = event_log_dir(data_dir) / "LOCK"
    if not lock.exists():
        yield
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # the lock does not say which of the programs that take it holds it
            raise _Refused(f"the event log {lock.parent} is in use by another process: keytrail serve, keytrail audit "
                           f"import or another keytrail root-key rotate on --data-dir {data_dir}: stop it, or let it "
                           "finish, first") from None
        yield
    finally:
        os.close(fd)


def _next_step(data_dir: Path, new_key: Path, secret: bytes) -> str:
    """Where the new root key must be for serve; <data-dir>/root.key is replaced in place."""
    if os.environ.get(ROOT_KEY_ENV) or os.environ.get(ROOT_KEY_FILE_ENV):
        # Absolute: pasted into a unit file, or run from another folder, a relative path named nothing.
        return (f"start serve with the new root key: ${ROOT_KEY_FILE_ENV}={new_key.absolute()} (or ${ROOT_KEY_ENV} "
                "set to its base64); the old root key opens nothing any more")
    write_root_key_file(data_dir / "root.key", secret, replace=True)
    return (f"{data_dir / 'root.key'} now holds the new root key; {new_key} is a copy of it: keep it apart "
            "from the data dir as its backup, or delete it")


def register(app: typer.Typer) -> None:
    """Add `keytrail root-key …` to the `keytrail` app."""
    app.add_typer(root_key_app, name="root-key")
