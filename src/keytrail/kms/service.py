"""KmsService: the key service's single entry point and the helpers every operation shares.

`execute` runs one operation and reports it, allowed or denied, success or error, to the audit
sink before the caller gets an answer. Operations find keys, check state and usage, and ask the
one authorization point through the methods here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keytrail.clock import Clock
from keytrail.kms import errors, multiregion, owed_calls, scheduled_work, secret_cache
from keytrail.kms.asymmetric import RsaCipher
from keytrail.kms.authz import AccessRequest, Authorizer, denial_message
from keytrail.kms.call_records import call_record
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.cipher import KeyCipher, SymmetricCipher
from keytrail.kms.condition_keys import (
    ENCRYPTION_CONTEXT,
    LAST_USAGE_ACTIONS,
    RESOURCE_ALIASES,
    TRAILING_DAYS,
    request_conditions,
    trailing_days_without_use,
)
from keytrail.kms.context import CallContext
from keytrail.kms.due_work import DueWork
from keytrail.kms.grants import grant_token_matches, grantee_names, parse_grant_token
from keytrail.kms.identifiers import KeyRefError, alias_arn, key_arn, parse_key_ref
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.keystores import backing_key, key_store_event_data
from keytrail.kms.model import (
    SCHEDULED_FOR_DELETION,
    AuditSink,
    AuditUnavailable,
    CallRecord,
    CallsInProgress,
    KeySpec,
    KeyState,
    KeyUsage,
    LastUsageSource,
    Origin,
)
from keytrail.kms.store import Grant, Store
from keytrail.kms.uuids import UuidSource

__all__ = ["KmsService", "ServiceDeps"]

log = logging.getLogger(__name__)

_NOT_USABLE = {
    KeyState.PENDING_DELETION: "is pending deletion.",
    KeyState.PENDING_IMPORT: "is pending import.",
    KeyState.PENDING_REPLICA_DELETION: "is pending replica deletion.",
    KeyState.CREATING: "is creating.",
    KeyState.UNAVAILABLE: "is unavailable.",
    KeyState.UPDATING: "is updating.",
}
DRY_RUN_MESSAGE = "The request would have succeeded, but the DryRun option is set."
# What AWS answers an operation that takes a key id or key ARN only when it is given an alias name
# or alias ARN, with InvalidArnException, which every such operation lists (as quoted from AWS for
# CreateGrant in boto/boto#3202, and for GetKeyPolicy and ListResourceTags by their callers).
KEY_ALIASES_UNSUPPORTED = "Key Aliases are not supported for this operation."


OriginCreator = Callable[["KmsService", Call, Key], Awaitable[Key]]
# Removes what an OriginCreator made outside the key store (a key in an HSM) for a key that was
# then never saved; it logs what it could not remove and raises nothing.
OriginDiscarder = Callable[["KmsService", Key], Awaitable[None]]
# Removes what a key's origin holds outside the key store once the key itself is deleted (its waiting
# period over): AWS makes a best effort to delete a CloudHSM key store key's material from its
# cluster. Same shape and promise as OriginDiscarder: it logs what it could not remove, raises nothing.
OriginDeleter = OriginDiscarder
# Held by CreateKey from making a key's first material in its origin to saving the key: what the origin
# read to make it (a custom key store CONNECTED) stays so, on every node, until the key is saved.
OriginLock = Callable[["KmsService", Key], AbstractAsyncContextManager[None]]


def _uncounted(refusal: Exception) -> None:
    """No one counts the calls the audit sink refused (tests, benchmarks)."""


@dataclass(frozen=True, slots=True)
class ServiceDeps:
    """What the service is built from; `cli` wires the real ones, tests their own. `new_id`
    makes event ids, and the API's request ids too; `in_progress` counts the calls being served
    (the audit spool reads it); `audit_refused` hears of each caller's call failed because the
    audit sink refused its record (what it raised): no record, so no request counter sees it."""

    store: Store
    clock: Clock
    audit: AuditSink
    authorizer: Authorizer
    last_usage: LastUsageSource | None = None
    new_id: Callable[[], str] = field(default_factory=UuidSource)
    random_bytes: Callable[[int], bytes] = os.urandom
    in_progress: CallsInProgress = field(default_factory=CallsInProgress)
    audit_refused: Callable[[Exception], None] = _uncounted


class KmsService:
    """The AWS KMS operations over a store, a clock, an authorizer and an audit sink."""

    def __init__(self, deps: ServiceDeps, operations: Mapping[str, Operation] | None = None) -> None:
        from keytrail.kms.operations import OPERATIONS

        self.deps = deps
        self.store = deps.store
        self.clock = deps.clock
        self.operations: Mapping[str, Operation] = operations or OPERATIONS
        # Extension points: how keys of other origins are created, and how each kind of key
        # encrypts (RSA keys and HSM-backed keys register their own ciphers).
        self.origin_creators: dict[Origin, OriginCreator] = {}
        self.origin_discarders: dict[Origin, OriginDiscarder] = {}
        self.origin_deleters: dict[Origin, OriginDeleter] = {}
        self.origin_locks: dict[Origin, OriginLock] = {}
        self.ciphers: dict[str, KeyCipher] = {"symmetric": SymmetricCipher(), "asymmetric": RsaCipher()}
        # Work of each scheduler tick besides the keys' due work (an extension's upkeep: the HSM
        # sessions of stores another node disconnected); one that fails is logged, and runs again
        # at the next tick (kms/scheduled_work.py, which keeps `due_work` between ticks).
        self.tick_work: list[Callable[[], Awaitable[None]]] = []
        self.due_work = DueWork()
        # The event ids of the state-changing calls in flight here, whose owed records a tick leaves
        # to them, and of those done here whose record the spool refused (kms/owed_calls.py);
        # `owed_lock`: one pass over the owed records at a time.
        self.in_flight: set[str] = set()
        self.left_owed: set[str] = set()
        self.owed_lock = asyncio.Lock()
        from keytrail.kms.operations import EXTENSIONS

        for install in EXTENSIONS:
            install(self)

    # --- the entry point ---------------------------------------------------------------------

    async def execute(self, name: str, context: CallContext, params: dict[str, Any]) -> Response:
        """Run operation `name`; its audit record is durable before this returns or raises."""
        operation = self.operations.get(name)
        if operation is None:
            raise errors.UnknownOperationException(f"Operation {name} is not supported.")
        in_progress = self.deps.in_progress
        in_progress.count += 1
        reads = secret_cache.begin_reads()  # before the call reads a key: its material may be deleted meanwhile
        try:
            return await self._run(name, operation, Call(context, params))
        finally:
            secret_cache.end_reads(reads)
            in_progress.count -= 1

    async def _run(self, name: str, operation: Operation, call: Call) -> Response:
        if not operation.read_only or operation.writes:
            self._require_audit(call)
            return await owed_calls.run_owing(self, name, operation, call)
        try:
            response = await self.handle(operation, call)
        except errors.KmsError as error:
            await self._report(name, operation, call, error)
            raise
        except Exception:
            log.exception("internal error in %s (request %s)", name, call.context.request_id)
            internal = errors.KMSInternalException("An internal error occurred.")
            await self._report(name, operation, call, internal)
            raise internal from None
        await self._report(name, operation, call, None)
        return response

    def _require_audit(self, call: Call) -> None:
        """Refuse a state change before it is made when the sink already knows it cannot record
        it (an optional `ready()`): made first, it would stand unaudited while the caller is told
        it failed."""
        refusal = self._audit_refusal()
        if refusal is not None:
            self.deps.audit_refused(refusal)
            raise _unaudited(call.context.request_id)

    def audit_refuses(self) -> bool:
        """Whether the sink knows already that it cannot record (it logs the outage, once)."""
        return self._audit_refusal() is not None

    def _audit_refusal(self) -> AuditUnavailable | None:
        ready = getattr(self.deps.audit, "ready", None)
        try:
            if ready is not None:
                ready()
        except AuditUnavailable as refusal:
            return refusal
        return None

    async def handle(self, operation: Operation, call: Call) -> Response:
        """Run the handler; a call that changes keys holds the lock of its key until it returns
        (its read-modify-write would otherwise undo a concurrent call's change)."""
        if operation.read_only:
            return await operation.handler(self, call)
        async with contextlib.AsyncExitStack() as held:
            call.held = held
            return await operation.handler(self, call)

    async def _check_grant_tokens(self, tokens: Any, region: str) -> None:
        """InvalidGrantTokenException unless CreateGrant returned each of `tokens` for a grant that
        is still there ("the specified grant token is not valid": the API reference of every
        operation that takes GrantTokens) in this call's Region: grants are Regional, as their
        keys. Grants here take effect at once, so a token adds no permission; a made-up one in the
        right form was taken as if it were real."""
        for token in tokens if isinstance(tokens, list) else [tokens]:
            named = parse_grant_token(token) if isinstance(token, str) else None
            if named is None or named[1] != region:
                raise errors.InvalidGrantTokenException("The grant token is invalid.")
            account, _, key_id, grant_id = named  # the Region: this call's, checked above
            grant = await self.store.get_grant(account, region, key_id, grant_id)
            if grant is None or not grant_token_matches(token, grant):
                raise errors.InvalidGrantTokenException("The grant token is invalid.")

    async def record_rejected(self, name: str, context: CallContext, error: errors.KmsError) -> None:
        """Record a call refused before it reached its handler (a request that fails validation):
        its parameters are not logged, since they were never checked for secrets."""
        operation = self.operations.get(name)
        if operation is not None:
            await self._report(name, operation, Call(context, {}), error)

    async def _report(self, name: str, operation: Operation, call: Call, error: errors.KmsError | None) -> None:
        await self.audit(call_record(name, operation, call, error, self.deps.new_id(), self.clock.now()))

    async def audit(self, record: CallRecord) -> None:
        """Hand `record` to the audit sink; if it cannot be made durable the call fails."""
        try:
            await self.deps.audit.record(record)
        except errors.KmsError:
            raise
        except AuditUnavailable as refusal:  # the sink logs the outage, once (not a line per refused call)
            self._refused(record, refusal)
            raise _unrecorded(record) from None
        except Exception as failure:
            log.exception("audit sink failure (event %s)", record.event_id)
            self._refused(record, failure)
            raise _unrecorded(record) from None

    def _refused(self, record: CallRecord, refusal: Exception) -> None:
        """Count a caller's call answered without its record; a service event (a due RotateKey or
        DeleteKey) is no call, and stays owed by its key."""
        if record.context is not None:
            self.deps.audit_refused(refusal)

    def internal_call_record(self, name: str, key: Key, response_elements: dict[str, Any] | None) -> CallRecord:
        """The record of a call KMS makes itself (SynchronizeMultiRegionKey): CloudTrail logs it as an
        AwsApiCall with a requestID, under KMS's internal identity (ct-synchronize-multi-region-key).
        It is owed by the write it announces (`multiregion.announced`)."""
        return CallRecord(
            event_id=self.deps.new_id(), event_name=name, event_time=self.clock.now(), region=key.region,
            account=key.account, context=None, request_parameters=None, response_elements=response_elements,
            resources=(key.arn,), read_only=False, internal_request_id=self.deps.new_id(),
        )

    # --- finding keys ------------------------------------------------------------------------

    async def find_key(self, call: Call, raw: str, *, allow_alias: bool = True) -> Key:
        """The key a KeyId parameter names, with AWS's NotFoundException messages; an alias where
        only a key id or key ARN is taken (`allow_alias=False`) is InvalidArnException, whether
        or not the alias exists."""
        context = call.context
        try:
            ref = parse_key_ref(raw, account=context.account, region=context.region)
        except KeyRefError as exc:
            raise errors.NotFoundException(str(exc)) from None
        if ref.is_alias:
            if not allow_alias:
                raise errors.InvalidArnException(KEY_ALIASES_UNSUPPORTED)
            alias = await self.store.get_alias(ref.account, ref.region, ref.name)
            if alias is None:
                raise errors.NotFoundException(f"Alias {ref.arn} is not found.")
            key_id = alias.key_id
        else:
            key_id = ref.name
        if call.held is not None:
            # Only the first key a call finds is locked: two calls locking two keys in opposite
            # orders would wait for each other.
            await call.held.enter_async_context(self.key_lock(ref.account, ref.region, key_id))
            call.held = None
        key = await self.store.get_key(ref.account, ref.region, key_id)
        if key is not None and self.due(key):
            key = await self.apply_due(key)
        if key is None:
            raise errors.NotFoundException(f"Key '{key_arn(ref.region, ref.account, key_id)}' does not exist")
        call.resource(key.arn)
        return key

    async def find_key_by_id(self, account: str, region: str, key_id: str) -> Key | None:
        key = await self.store.get_key(account, region, key_id)
        return await self.apply_due(key) if key is not None and self.due(key) else key

    def key_lock(self, account: str, region: str, key_id: str) -> AbstractAsyncContextManager[None]:
        """The store's lock of a key. The copies of a multi-Region key share one: a change to one
        copy (a rotation, a new replica, an import) is written to the others too."""
        return self.store.key_lock(account, multiregion.lock_region(region, key_id), key_id)

    def alias_arn(self, call: Call, name: str) -> str:
        return alias_arn(call.context.region, call.context.account, name)

    # --- checks ------------------------------------------------------------------------------

    @staticmethod
    def require_usable(key: Key) -> None:
        """Raise what AWS raises when a key's state forbids cryptographic use."""
        if key.state is KeyState.DISABLED:
            raise errors.DisabledException(f"{key.arn} is disabled.")
        if key.state in _NOT_USABLE:
            raise errors.KMSInvalidStateException(f"{key.arn} {_NOT_USABLE[key.state]}")

    @staticmethod
    def invalid_state(key: Key) -> errors.KmsError:
        """KMSInvalidStateException in AWS's words for the key's state ("<ARN> is pending deletion.",
        "… is creating.", notes of "Key states of AWS KMS keys"), never the enum value."""
        words = _NOT_USABLE.get(key.state, f"is {key.state.value.lower()}.")
        return errors.KMSInvalidStateException(f"{key.arn} {words}")

    @staticmethod
    def require_not_pending_deletion(key: Key) -> None:
        """KMSInvalidStateException for a key scheduled for deletion: PendingDeletion, or a
        multi-Region primary waiting for its replicas' deletion (PendingReplicaDeletion, "scheduled
        for deletion" in KeyMetadata's words), which must not take new tags, aliases or grants
        either: each refused in the words of its state."""
        if key.state in SCHEDULED_FOR_DELETION:
            raise errors.KMSInvalidStateException(f"{key.arn} {_NOT_USABLE[key.state]}")

    @staticmethod
    def require_usage(key: Key, operation: str, *usages: KeyUsage) -> None:
        if key.key_usage not in usages:
            raise errors.InvalidKeyUsageException(
                f"{key.arn} key usage is {key.key_usage} which is not valid for {operation}."
            )

    async def authorize(
        self, call: Call, action: str, key: Key | None, conditions: Mapping[str, Any] | None = None,
    ) -> None:
        """The one authorization point: AccessDeniedException unless policies or grants allow.
        The call's grant tokens are checked here, once the handler has noted what CloudTrail logs
        (its key, its algorithm), so that a call refused for a token is logged as fully as one
        refused by a policy; ReEncrypt checks them twice, for its source and its destination."""
        if tokens := call.params.get("GrantTokens"):
            await self._check_grant_tokens(tokens, call.context.region)
        values = request_conditions(action, call.params)
        if conditions:
            values.update(conditions)
        grants: Sequence[Grant] = ()
        if key is not None:
            # Only grants naming the caller, for this operation and its encryption context (as the
            # authorizer reads it), can allow it anything; the others are not weighed (nor, in their
            # number, keep the decision from being cached).
            grants = await self.store.grants_allowing(
                key.account, key.region, key.key_id, grantee_names(call.context.principal),
                action.removeprefix("kms:"), values.get(ENCRYPTION_CONTEXT) or {})
            reads = self._policy_reads(key, call.context)
            if not reads.isdisjoint(_LOOKED_UP):  # most policies read neither: no coroutine to await
                await self._key_conditions(call, action, key, values, reads)
        if key is not None and action in _CRYPTO_ACTIONS:
            _note_custom_key_store(call, key)
        self.require_allowed(AccessRequest(call.context, action, key, values, grants))

    async def _key_conditions(self, call: Call, action: str, key: Key, values: dict[str, Any],
                              reads: frozenset[str]) -> None:
        """The condition keys that cost a lookup (`_LOOKED_UP`), added to `values` only when the
        policies' `reads` ask for them: the key's aliases, and its days without use (without usage
        tracking on this node it is absent)."""
        if RESOURCE_ALIASES in reads:
            # The key's only: every alias of the account and Region cost each such call a read of them all
            aliases = await self.store.list_aliases_page(key.account, key.region, None, sys.maxsize, key.key_id)
            values[RESOURCE_ALIASES] = [a.name for a in aliases]
        if action in LAST_USAGE_ACTIONS and TRAILING_DAYS in reads and self.deps.last_usage is not None:
            values[TRAILING_DAYS] = trailing_days_without_use(key, self.now(),
                                                              *await self.deps.last_usage.last_usage(key.arn))

    async def authorize_alias(self, call: Call, action: str, name: str) -> None:
        """The alias half of CreateAlias, UpdateAlias and DeleteAlias: only IAM policies decide,
        matched against the alias ARN ("Controlling access to aliases"); `authorize` decides the
        key half."""
        await self.authorize_identity(call, action, self.alias_arn(call, name))

    async def authorize_identity(self, call: Call, action: str, resource: str, *, exists: bool = True) -> None:
        """A permission only IAM policies give, matched against `resource`: an alias ARN, the
        ARN a new key will have (kms:TagResource for CreateKey's and ReplicateKey's Tags: not
        `exists`, so a denial names no resource), or the retiring principal of ListRetirableGrants."""
        values = request_conditions(action, call.params)
        self.require_allowed(AccessRequest(call.context, action, None, values, resource=resource,
                                           resource_named=exists))

    def require_allowed(self, request: AccessRequest) -> None:
        """AccessDeniedException, in AWS's words, unless the authorizer allows `request`."""
        decision = self.deps.authorizer.authorize(request)
        if not decision.allowed:
            raise errors.AccessDeniedException(denial_message(request, decision))

    def _policy_reads(self, key: Key, context: CallContext) -> frozenset[str]:
        """Condition keys the caller's and the key's policies read (empty if the authorizer
        cannot tell): the aliases of a key are looked up only when a policy asks for them."""
        reads = getattr(self.deps.authorizer, "reads", None)
        return reads(key, context.principal) if reads is not None else frozenset()

    @staticmethod
    def check_dry_run(call: Call) -> None:
        if call.params.get("DryRun"):
            raise errors.DryRunOperationException(DRY_RUN_MESSAGE)

    def cipher_for(self, key: Key) -> KeyCipher:
        """The cipher that encrypts and decrypts under `key`."""
        if key.custom_key_store_id and "hsm" in self.ciphers:
            return self.ciphers["hsm"]
        if key.key_spec is KeySpec.SYMMETRIC_DEFAULT:
            return self.ciphers["symmetric"]
        cipher = self.ciphers.get("asymmetric")
        if cipher is None:
            raise errors.UnsupportedOperationException(f"{key.key_spec} keys cannot encrypt here.")
        return cipher

    # --- material and schedules --------------------------------------------------------------

    def new_material(
        self, secret: bytes, rotation_type: str | None = None, created: datetime | None = None,
    ) -> KeyMaterial:
        return KeyMaterial(
            material_id=self.deps.random_bytes(32).hex(), secret=secret, created=created or self.clock.now(),
            rotation_type=rotation_type,
        )

    def due(self, key: Key) -> bool:
        """Whether the clock makes anything due for `key`: most calls find nothing due, and so skip
        `apply_due` and the two coroutines it takes."""
        return scheduled_work.is_due(key, self.clock.now())

    async def apply_due(self, key: Key) -> Key | None:
        """Carry out what the clock says is due for `key` (kms/scheduled_work.py): the key as it now
        is, or None once deleted."""
        return await scheduled_work.apply_due(self, key)

    async def run_due(self) -> None:
        """The scheduler's tick (kms/scheduled_work.py): every key's due work, the owed records,
        then `tick_work`."""
        with secret_cache.reading():
            await scheduled_work.run_due(self)

    def now(self) -> datetime:
        return self.clock.now()


_LOOKED_UP = frozenset({RESOURCE_ALIASES, TRAILING_DAYS})
_CRYPTO_ACTIONS = frozenset({
    "kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
})


def _note_custom_key_store(call: Call, key: Key) -> None:
    # CloudTrail names the custom key store and the HSM backing key of calls on such keys.
    if (backing := backing_key(key)) is not None:
        call.additional_event_data.update(key_store_event_data(key), backingKeyId=backing)


def _unaudited(request: str) -> errors.KmsError:
    return errors.KMSInternalException(
        f"The audit spool could not persist the event for request {request}: the call was not performed."
    )


def _unrecorded(record: CallRecord) -> errors.KmsError:
    """The error for `record` refused by the audit sink. A caller's record names its request (the id
    the caller got); a service event (a due RotateKey or DeleteKey, met inside a caller's call or a
    tick) names what it records: its event id was named as a request id no caller ever had."""
    if record.context is not None:
        return _unaudited(record.context.request_id)
    return errors.KMSInternalException(
        f"The audit spool could not persist the {record.event_name} event of {', '.join(record.resources)}: "
        "it is recorded once the spool can."
    )
