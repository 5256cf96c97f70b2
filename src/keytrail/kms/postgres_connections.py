"""PostgresStore's connections (kms/postgres_store.py): its pool, the connection pinned to a task
that holds key locks, and the keys' locks, this process's and PostgreSQL's advisory ones (every
node's). The store's documents, ledger and queries are the store's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import asyncpg

from keytrail.kms import errors
from keytrail.kms.locks import KeyLocks, second_lock_refused

__all__ = ["PostgresConnections", "session_settings"]

log = logging.getLogger(__name__)

# The database out of reach: the socket's errors (a connection refused, reset or closed under a
# statement, a name that does not resolve), the server shutting down or not taking connections
# yet (SQLSTATE class 08, 57P01 to 57P03), or not letting the node's new connections in: the store's
# database dropped or renamed (3D000), the role's password changed, the role dropped or pg_hba.conf
# no longer naming it (class 28). Those raised out of every call that needed a new connection, a
# traceback each, answered "An internal error occurred."; like an outage, they end when the
# database lets the node in again.
_OUT_OF_REACH = (OSError, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
                 asyncpg.CannotConnectNowError, asyncpg.InvalidCatalogNameError,
                 asyncpg.InvalidAuthorizationSpecificationError)

# The database giving up a statement itself: a statement_timeout or lock_timeout that the DBA set on
# the role or the database (SQLSTATE 57014, 55P03), or pg_cancel_backend. They raised out of the
# call as bugs: a traceback in the log each, and "An internal error occurred." to the client.
_CANCELED = (asyncpg.QueryCanceledError, asyncpg.LockNotAvailableError)
# The database refusing to store anything while it still answers: its sessions read-only (the hot
# standby a failover left the store's address on, default_transaction_read_only set for maintenance
# or by a managed PostgreSQL whose storage is nearly full: SQLSTATE 25006), or unable to write its
# files (its disk full, 53100: "could not extend file"; an I/O error, 58030). They raised out of
# each write as bugs: a traceback a call, "An internal error occurred." to the client.
_WRITES_REFUSED = (asyncpg.ReadOnlySQLTransactionError, asyncpg.DiskFullError, asyncpg.PostgresIOError)
# The database short of a resource a statement needs (SQLSTATE class 53 but for the disk full and the
# connections refused above): "out of shared memory" (53200) once its lock table is full (another
# session's locks taking the max_locks_per_transaction times max_connections slots that the nodes'
# advisory key locks take too), or a configured limit reached (53400). They raised out of each call
# as bugs: a traceback a call, "An internal error occurred." to the client.
_SHORT_OF_RESOURCES = asyncpg.InsufficientResourcesError
# Seconds between two log lines of one kind of the database's refusals (a new connection, a
# statement for the role's privileges, a statement it gave up).
REFUSED_LOG_SECONDS = 60.0


# How many timeouts a session of the store may sit in a transaction without a statement before
# PostgreSQL ends it. Between a write's statements a node only computes (milliseconds): a session
# idle that long belongs to a node gone silent (a partition, a machine lost), and it holds the
# ledger's row lock, which every write of every node takes.
IDLE_IN_TRANSACTION_TIMEOUTS = 6
# Unanswered TCP keepalive probes after which PostgreSQL takes a node's session for dead.
KEEPALIVE_PROBES = 3


def session_settings(timeout: float) -> dict[str, str]:
    """PostgreSQL's settings for each session of the store (the pool's `server_settings`: sent as the
    session starts, they outlast the pool's RESET ALL). A node that vanished kept its session, its
    key's advisory lock and its transaction's row locks until the server's TCP keepalive gave up, two
    hours and more by Linux's defaults, and every other node's writes waited on them meanwhile: now
    an idle transaction ends after IDLE_IN_TRANSACTION_TIMEOUTS timeouts, and a silent peer is
    found out within about two timeouts of going quiet (ignored over a Unix socket, which has no
    peer to lose). No JIT compilation: a grant lookup of a call with a large encryption context, or
    on tables not yet analyzed, is estimated costly enough to be compiled, ≈ 100 ms, for a query
    that runs in well under one (every statement of the store is such a lookup)."""
    seconds = max(1, round(timeout))
    return {
        "jit": "off",
        "idle_in_transaction_session_timeout": str(round(IDLE_IN_TRANSACTION_TIMEOUTS * timeout * 1000)),  # ms
        "tcp_keepalives_idle": str(seconds),
        "tcp_keepalives_interval": str(max(1, seconds // KEEPALIVE_PROBES)),
        "tcp_keepalives_count": str(KEEPALIVE_PROBES),
    }


class PostgresConnections:
    """Connections from `pool`, each wait for one and each statement given up after `timeout`
    seconds; `refuse_if_broken` raises once the store no longer matches its ledger."""

    def __init__(self, pool: Any, timeout: float, refuse_if_broken: Callable[[], None], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.timeout = timeout
        self._refuse_if_broken = refuse_if_broken
        # A call waiting for a key's lock behind calls that each wait for a database that stopped
        # answering gives up after the timeout too, not after the sum of theirs.
        self._locks = KeyLocks(first_lock_wait=(timeout, self._timed_out))
        # The connection holding a task's key locks (advisory locks belong to a session); that
        # task's reads and writes go over it, so a lock holder never waits for the pool.
        self._pinned: ContextVar[Any] = ContextVar(f"pinned-{id(self)}", default=None)
        self._answered_at = float("-inf")  # monotonic time a query's connection was last handed back without error
        self._unreachable_since: float | None = None  # monotonic time an outage began (logged once), while it lasts
        self._outages = 0  # outages begun so far: a call that began before the current one cannot end it
        self._clock = clock  # monotonic seconds, for how often the refusals are logged
        self._logged_at: dict[str, float] = {}  # when each kind of refusal was last logged (`_log_due`)

    def answered_within(self, seconds: float) -> bool:
        """Whether a connection came back from a query without error within the last `seconds`."""
        return time.monotonic() - self._answered_at < seconds

    @asynccontextmanager
    async def connection(self, *, pin: bool = False, wait: float | None = None) -> AsyncIterator[Any]:
        """The task's pinned connection, else one from the pool (pinned for the task if `pin`) within
        `wait` seconds (the timeout by default); KMSInternalException once the store no longer
        matches its ledger."""
        self._refuse_if_broken()
        outages = self._outages
        pinned = self._pinned.get()
        try:
            if pinned is not None:
                with _dropped_on_timeout(pinned), _lost_as_reset(pinned):
                    yield pinned
            else:
                connection = await self.pool.acquire(timeout=self.timeout if wait is None else wait)
                token = self._pinned.set(connection) if pin else None
                try:
                    with _dropped_on_timeout(connection), _lost_as_reset(connection):
                        yield connection
                finally:
                    if token is not None:
                        self._pinned.reset(token)
                    await _release(self.pool, connection)
        except TimeoutError:
            raise self._timed_out() from None
        except _CANCELED as exc:
            raise self._canceled(exc) from None
        except asyncpg.TooManyConnectionsError as exc:
            raise self._refused(exc) from None
        except asyncpg.InsufficientPrivilegeError as exc:
            raise self._denied(exc) from None
        except _WRITES_REFUSED as exc:  # the cause kept: the database's words, for the health check's and a CLI's line
            raise self._write_refused(exc) from exc
        except _SHORT_OF_RESOURCES as exc:
            raise self._short_of(exc) from exc
        except _OUT_OF_REACH as exc:
            if type(exc).__module__.startswith("keytrail"):  # keytrail's own OSErrors (LedgerMismatch): no outage
                raise
            raise self._unreachable(exc) from exc
        self._answered(outages)

    def _unreachable(self, exc: BaseException) -> errors.KmsError:
        """AWS's retryable internal error for a call the database could not serve; the outage
        logged once, where a traceback per call flooded the log (and the disk the spool is on)."""
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            self._outages += 1
            log.error("the key store is out of reach (%s): calls fail with KMSInternalException until it answers again",
                      " ".join((str(exc) or type(exc).__name__).split()))
        return errors.KMSInternalException(
            "The request was rejected because an internal exception occurred. The request can be retried.")

    def _answered(self, outages: int) -> None:
        """A call's connection handed back without error, the call having begun when `outages` had
        begun. One in flight as the current outage began is no sign that the database answers
        again: its statement was answered just before the sessions were ended (a server's fast stop),
        and it came back after a neighbour found them gone ("answers again, after 0 s", then out of
        reach once more). Only a call begun since then shows the database back, for the log and
        the health check alike."""
        if self._unreachable_since is not None and outages != self._outages:
            return
        self._answered_at = now = time.monotonic()
        if self._unreachable_since is not None:
            log.warning("the key store answers again, after %.0f s out of reach", now - self._unreachable_since)
            self._unreachable_since = None

    def _timed_out(self) -> errors.KmsError:
        """AWS's retryable answer when a service KMS depends on is slow."""
        return errors.DependencyTimeoutException(
            f"The key store did not answer within {self.timeout:g} seconds. You can retry the request.")

    def _canceled(self, exc: asyncpg.PostgresError) -> errors.KmsError:
        """AWS's retryable answer when the database gave up a statement of the call itself; a log
        line saying why, which a DBA can act on (the role's statement_timeout, say), at most once a
        minute: under a statement_timeout too short for the load every call was given up, and each
        wrote its line, as the neighbouring refusals did before they were thinned."""
        reason = " ".join(str(exc).split())
        if self._log_due("canceled"):
            log.warning("the key store gave up a statement (%s): the call fails with DependencyTimeoutException",
                        reason)
        return errors.DependencyTimeoutException(
            f"The key store did not answer in time ({reason}). You can retry the request.")

    def _refused(self, exc: asyncpg.PostgresError) -> errors.KmsError:
        """AWS's retryable internal error when the database refuses the pool a new connection (the
        role's CONNECTION LIMIT, or max_connections, reached), while the pooled ones still serve:
        no outage, but a limit a DBA can raise. Logged at most once a minute: it raised out of
        each call that needed one, with a traceback each, answered "An internal error occurred."."""
        if self._log_due("refused"):
            log.error("the key store refused a new connection (%s): calls that needed one fail with "
                      "KMSInternalException; the node opens up to %d", " ".join(str(exc).split()),
                      self.pool.get_max_size())
        return errors.KMSInternalException(
            "The request was rejected because an internal exception occurred. The request can be retried.")

    def _denied(self, exc: asyncpg.PostgresError) -> errors.KmsError:
        """AWS's internal error when the database refuses a statement for the role's privileges (one
        revoked while the node runs: the node checks them as it starts). Logged at most once a
        minute, in one line naming the privilege: it raised out of each call with a traceback."""
        if self._log_due("denied"):
            log.error("the key store refused a statement (%s): calls that need it fail with KMSInternalException "
                      "until the role is granted SELECT, INSERT, UPDATE and DELETE on the key store's tables again",
                      " ".join(str(exc).split()))
        return errors.KMSInternalException(
            "The request was rejected because an internal exception occurred. The request can be retried.")

    def _write_refused(self, exc: asyncpg.PostgresError) -> errors.KmsError:
        """AWS's retryable internal error when the database refuses to store a call's change while
        it answers reads (read-only, its disk full): the calls that only read go on. Logged at most
        once a minute, in the database's words, which say which of them it is."""
        if self._log_due("writes"):
            log.error("the key store refused a write (%s): calls that change keys, aliases or grants fail with "
                      "KMSInternalException until the database takes writes again", " ".join(str(exc).split()))
        return errors.KMSInternalException(
            "The request was rejected because an internal exception occurred. The request can be retried.")

    def _short_of(self, exc: asyncpg.PostgresError) -> errors.KmsError:
        """AWS's retryable internal error when the database lacks a resource for the call's
        statement; logged at most once a minute, with PostgreSQL's hint, which names the setting
        to raise ("You might need to increase max_locks_per_transaction.")."""
        if self._log_due("resources"):  # asyncpg's text of it ends with the hint
            log.error("the key store is short of a resource (%s): calls fail with KMSInternalException until it "
                      "has it again", " ".join(str(exc).split()))
        return errors.KMSInternalException(
            "The request was rejected because an internal exception occurred. The request can be retried.")

    def _log_due(self, kind: str) -> bool:
        """Whether a refusal of `kind` is to be logged now: the first, then at most one each
        REFUSED_LOG_SECONDS, as every call meets the same refusal while it lasts."""
        now = self._clock()
        if now - self._logged_at.get(kind, float("-inf")) < REFUSED_LOG_SECONDS:
            return False
        self._logged_at[kind] = now
        return True

    @asynccontextmanager
    async def key_lock(self, name: str) -> AsyncIterator[None]:
        """This process's lock of the key `name`, then PostgreSQL's advisory lock of it (every
        node's); a connection returned to the pool drops its advisory locks, should the unlock fail.
        Taking all three waits the timeout at most, in all: calls queued on one key behind a
        database that stopped answering do not wait out each other's timeouts."""
        if self._locks.held(name):
            yield
            return
        deadline = time.monotonic() + self.timeout
        async with self._locks.hold(name), self.connection(pin=True, wait=_left(deadline)) as connection:
            try:
                await connection.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", name,
                                         timeout=_left(deadline))
            except asyncpg.DeadlockDetectedError:  # nodes' calls each holding the key the other waits for
                raise second_lock_refused() from None
            try:
                yield
            finally:
                await _unlock(connection, name)

    @asynccontextmanager
    async def key_lock_if_free(self, name: str) -> AsyncIterator[bool]:
        """`key_lock` if this process's lock and PostgreSQL's advisory lock are both free now
        (`pg_try_advisory_lock`); a node that died holding one held it in a session that died with it."""
        if self._locks.held(name):
            yield True
            return
        async with self._locks.hold_if_free(name) as free:
            if not free:
                yield False
                return
            async with self.connection(pin=True) as connection:
                if not await connection.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", name):
                    yield False
                    return
                try:
                    yield True
                finally:
                    await _unlock(connection, name)

    async def close(self) -> None:
        """Close the pool; a database that does not answer cannot hold it up."""
        try:
            await asyncio.wait_for(self.pool.close(), self.timeout)
        except TimeoutError:
            self.pool.terminate()


def _left(deadline: float) -> float:
    """Seconds until `deadline` (monotonic); at or below 0 once it passed, which asyncpg's waits
    for a connection or a statement take as timed out at once."""
    return deadline - time.monotonic()


@contextlib.contextmanager
def _dropped_on_timeout(connection: Any) -> Iterator[None]:
    """Drop `connection` at once when a statement on it timed out (the database stopped answering).
    Handed back as it is, the pool would first wait for asyncpg's cancel of the statement and then
    for a reset, and a key lock's holder for its unlock, a timeout each, before the caller heard;
    the session's advisory locks go with it."""
    try:
        yield
    except TimeoutError:
        if _open(connection):  # not yet dropped by a use nested in this one
            connection.terminate()
        raise


@contextlib.contextmanager
def _lost_as_reset(connection: Any) -> Iterator[None]:
    """The database's side of `connection` lost under a statement, as the outage it is. asyncpg
    raises the lost connection's error only from the statement it broke: what runs after it on the
    closed connection (the transaction's ROLLBACK or COMMIT) raises InterfaceError or
    InternalClientError in its place, which read as bugs (a traceback a call, "An internal error
    occurred.") where every other call heard the retryable outage answer. The outage is told by the
    error that lost the connection, where the statement raised it: the one in hand speaks of
    asyncpg's insides ("cannot call Transaction.__aexit__()", "cannot switch to state 12"), which
    the log's outage line quoted to the operator."""
    try:
        yield
    except (asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        if _open(connection):  # the connection is fine: a misuse of it, not the database gone
            raise
        lost = exc.__context__
        why = f" ({' '.join(str(lost).split())})" if isinstance(lost, _OUT_OF_REACH) and str(lost) else ""
        raise ConnectionResetError(f"the connection to the key store was lost during a statement{why}") from exc


async def _release(pool: Any, connection: Any) -> None:
    """Hand `connection` back to `pool`. The work on it is over by then (committed or rolled back),
    so a reset that fails (the database gone since) must not fail the call: asyncpg drops the
    connection and frees its place. Raised, it turned a CreateKey that stood into an error, which
    its client retried into a second key, and its audit record into a failure."""
    try:
        await pool.release(connection)
    except Exception as exc:
        log.debug("a key store connection could not be reset for reuse and was dropped: %s", exc)


def _open(connection: Any) -> bool:
    """Whether `connection` is open: once dropped, the pool takes it back and its proxy refuses
    every call, `is_closed` too."""
    try:
        return not connection.is_closed()
    except asyncpg.InterfaceError:
        return False


async def _unlock(connection: Any, name: str) -> None:
    """Release the advisory lock of `name`. If that fails (the database is gone), or the connection
    was dropped after a statement timed out, the lock goes with the session or with the pool's
    reset of the connection; a call that timed out does not wait a further timeout here."""
    if not _open(connection):
        return
    with contextlib.suppress(Exception):
        await connection.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", name)
