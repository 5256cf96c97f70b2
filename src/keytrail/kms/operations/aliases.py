"""Aliases: CreateAlias, UpdateAlias, DeleteAlias, ListAliases."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from keytrail.kms import errors
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.identifiers import KeyRefError, RefKind, key_arn, parse_key_ref
from keytrail.kms.keys import Key
from keytrail.kms.managed_keys import PREDEFINED
from keytrail.kms.store import Alias

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]

# "Aliases per KMS key" (AWS KMS resource quotas): without it one caller could give a key aliases
# without end, each kept in memory and listed by every ListAliases and kms:ResourceAliases check.
ALIASES_PER_KEY = 50
# How often UpdateAlias and DeleteAlias read the alias again when another call changed it between
# their read and their write: once is the rule, a second time rare (calls on one alias at once).
_ALIAS_READS = 3
PREFIX_REQUIRED = ('Alias must start with the prefix "alias/". Please see '
                   "https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html")


def _check_name(name: str) -> None:
    if not name.startswith("alias/"):
        raise errors.ValidationException(PREFIX_REQUIRED)
    if name.startswith("alias/aws/"):
        raise errors.InvalidAliasNameException("Alias names that begin with alias/aws/ are reserved.")


def _check_new_name(name: str) -> None:
    """CreateAlias: AliasName "must begin with alias/ followed by a name" (API reference), so
    `alias/` alone, which the model's pattern lets through, is not a name; InvalidAliasNameException
    is CreateAlias's error for an alias name that is not valid. UpdateAlias and DeleteAlias, whose
    errors do not include it, find no such alias (NotFoundException)."""
    _check_name(name)
    if name == "alias/":
        raise errors.InvalidAliasNameException('Alias must include a name after the prefix "alias/".')
    if ":" in name:
        # The model's pattern takes a colon (alias ARNs share the shape); an alias name "can contain
        # only alphanumeric characters, forward slashes (/), underscores (_), and dashes (-)" (API
        # reference), and AWS refuses one with a colon in these words (hashicorp/terraform-provider-aws#12891).
        raise errors.ValidationException(f"{name} contains invalid characters for an alias")


async def _alias_target(svc: KmsService, call: Call, action: str) -> Key:
    target = call.params["TargetKeyId"]
    try:
        key = await svc.find_key(call, target, allow_alias=False)
    except errors.InvalidArnException:
        # CreateAlias and UpdateAlias, unlike the other operations that take a key id or key ARN
        # only, list no InvalidArnException: an alias as TargetKeyId names no key.
        raise errors.NotFoundException(f"Invalid keyId '{target}'") from None
    await svc.authorize(call, action, key)
    svc.require_not_pending_deletion(key)
    return key


async def _require_alias_room(svc: KmsService, key: Key) -> None:
    """LimitExceededException when `key` has as many aliases as a key may have (its lock is held)."""
    # The key's aliases only: every alias of the account and Region cost each CreateAlias a read of them all
    usage = len(await svc.store.list_aliases_page(key.account, key.region, None, sys.maxsize, key.key_id))
    if usage >= ALIASES_PER_KEY:
        # AWS's words, as a CreateAlias refused on AWS logged them (scylladb/scylla-cluster-tests#7611).
        raise errors.LimitExceededException(
            f"Aliases per key quota for this account in this region is {ALIASES_PER_KEY}, current usage is {usage}.")


async def create_alias(svc: KmsService, call: Call) -> Response:
    name = call.params["AliasName"]
    _check_new_name(name)
    key = await _alias_target(svc, call, "kms:CreateAlias")
    call.resource(svc.alias_arn(call, name))  # after the key, as CloudTrail lists them (ct-createalias)
    await svc.authorize_alias(call, "kms:CreateAlias", name)
    await _require_alias_room(svc, key)
    context, now = call.context, svc.now()
    call.log_key_id(key.arn)  # before the write: the record it owes (kms/owed_calls.py) names the key
    # One step, not a lookup then a write: two calls creating one name at once would both succeed.
    if not await svc.store.add_alias(Alias(context.account, context.region, name, key.key_id, now, now)):
        raise errors.AlreadyExistsException(f"An alias with the name {svc.alias_arn(call, name)} already exists")
    return {}


async def _existing_alias(svc: KmsService, call: Call) -> Alias:
    name = call.params["AliasName"]
    _check_name(name)
    alias = await svc.store.get_alias(call.context.account, call.context.region, name)
    if alias is None:
        raise errors.NotFoundException(f"Alias {svc.alias_arn(call, name)} is not found.")
    return alias


async def _current_target(svc: KmsService, call: Call, alias: Alias, action: str) -> Key | None:
    """The key `alias` points to now, named in the call's resources and authorized for `action`
    (the alias leaves it); None if that key is gone."""
    key = await svc.find_key_by_id(alias.account, alias.region, alias.key_id)
    if key is not None:
        call.resource(key.arn)
        await svc.authorize(call, action, key)
    return key


def _kind(key: Key) -> tuple[str, str]:
    """What UpdateAlias keeps: "The current and new KMS key must be the same type (both symmetric
    or both asymmetric or both HMAC), and they must have the same key usage" (API reference), so an
    RSA signing key may follow an ECC one, or HMAC_512 HMAC_256; the key spec itself may change."""
    spec = str(key.key_spec)
    family = "symmetric" if spec == "SYMMETRIC_DEFAULT" else "HMAC" if spec.startswith("HMAC_") else "asymmetric"
    return family, str(key.key_usage)


async def update_alias(svc: KmsService, call: Call) -> Response:
    for _ in range(_ALIAS_READS):
        if await _update_as_read(svc, call):
            return {}
    raise _alias_kept_changing(svc, call)


async def _update_as_read(svc: KmsService, call: Call) -> bool:
    """UpdateAlias on the alias as it reads now; False, changing nothing, when another call changed
    the alias after it was read (its checks were made on a target it no longer has)."""
    call.resources.clear()  # of an earlier read: the alias may have left that key since
    alias = await _existing_alias(svc, call)
    # The alias first, as CloudTrail lists it (ct-updatealias: the alias, then the new target). The key
    # it leaves follows, before the new target: its authorization is checked too, and its history
    # should show the alias going.
    call.resource(svc.alias_arn(call, alias.name))
    current = await _current_target(svc, call, alias, "kms:UpdateAlias")
    key = await _alias_target(svc, call, "kms:UpdateAlias")
    await svc.authorize_alias(call, "kms:UpdateAlias", alias.name)
    if current is not None and _kind(current) != _kind(key):
        raise errors.ValidationException(
            "The new target key must be the same type (symmetric, asymmetric or HMAC) as the current one "
            "and have the same key usage."
        )
    if key.key_id != alias.key_id:
        await _require_alias_room(svc, key)
    updated = Alias(alias.account, alias.region, alias.name, key.key_id, alias.creation_date, svc.now())
    call.log_key_id(key.arn)  # the new target; before the write, for the record it owes
    # Only over the alias as read: the wait for the new target's lock lets other calls (other nodes
    # too) delete the alias and make it again for a key of another type, or move it to a key this
    # caller may not take it from, and a write over whatever was there undid their change unchecked.
    if await svc.store.update_alias(updated, was=alias):
        return True
    if await svc.store.get_alias(alias.account, alias.region, alias.name) is None:  # deleted: not brought back
        raise errors.NotFoundException(f"Alias {svc.alias_arn(call, alias.name)} is not found.")
    return False


async def delete_alias(svc: KmsService, call: Call) -> Response:
    for _ in range(_ALIAS_READS):
        if await _delete_as_read(svc, call):
            return {}
    raise _alias_kept_changing(svc, call)


async def _delete_as_read(svc: KmsService, call: Call) -> bool:
    """DeleteAlias of the alias as it reads now; False, deleting nothing, when another call changed
    it after it was read (the caller's permission was checked on a key it no longer names)."""
    call.resources.clear()
    alias = await _existing_alias(svc, call)
    call.resource(svc.alias_arn(call, alias.name))  # the alias first, as CloudTrail lists it (ct-deletealias)
    key = await _current_target(svc, call, alias, "kms:DeleteAlias")
    await svc.authorize_alias(call, "kms:DeleteAlias", alias.name)
    if key is not None:
        call.log_key_id(key.arn)  # before the write, for the record it owes
    return await svc.store.delete_alias(alias, if_unchanged=True)


def _alias_kept_changing(svc: KmsService, call: Call) -> errors.KmsError:
    """What a call gets when the alias changed under it at each of its reads: retryable, as
    KMSInternalException is for AWS SDKs (kms/locks.py, `second_lock_refused`)."""
    return errors.KMSInternalException(
        f"Alias {svc.alias_arn(call, call.params['AliasName'])} was changed by other requests while this one ran. "
        "You can retry the request.")


async def _key_listed(svc: KmsService, call: Call, key_id: str) -> str:
    """The ARN of the key whose aliases ListAliases lists. Only the caller's aliases are listed
    ("Cross-account use: No"), so a key ARN of another account lists none and is not looked up:
    a NotFoundException for it, or an empty page, would tell whether that key exists."""
    context = call.context
    try:
        ref = parse_key_ref(key_id, account=context.account, region=context.region)
    except KeyRefError:
        ref = None  # find_key answers it, in AWS's words
    if ref is not None and ref.kind is RefKind.KEY_ARN and ref.account != context.account:
        return ref.arn
    return (await svc.find_key(call, key_id, allow_alias=False)).arn


async def list_aliases(svc: KmsService, call: Call) -> Response:
    """ListAliases, one page read from the store: an account may hold 50,000 aliases in a Region."""
    from keytrail.kms.paging import marked_position, page_limit, paged

    context = call.context
    # An IAM-only permission on "*", even with a KeyId: the key policy plays no part. Checked
    # before the KeyId is looked up, so a caller without it cannot learn which keys exist.
    await svc.authorize(call, "kms:ListAliases", None)
    listed, key_id = "*", None
    if named := call.params.get("KeyId"):
        listed = await _key_listed(svc, call, named)
        key_id = listed.removeprefix(key_arn(context.region, context.account, ""))
    listing = f"ListAliases {context.account} {context.region} {listed}"
    limit = page_limit(call.params, 50)  # ListAliases' default
    after = marked_position(call.params, listing, (str,))
    stored: list[Alias] = []
    start = str(after[0]) if after else None
    if key_id != listed:  # not another account's key, whose aliases are not listed
        stored = await svc.store.list_aliases_page(context.account, context.region, start, limit + 1, key_id)
    aliases = _with_predefined(stored, start, limit + 1) if key_id is None else [*stored]
    chunk, paging = paged(aliases, limit, lambda a: (_listed_name(a),), listing)
    return {"Aliases": [_entry(svc, call, a) for a in chunk], **paging}


# A stored alias, or the name of a predefined alias whose AWS managed key is not made yet.
Listed = Alias | str


def _listed_name(item: Listed) -> str:
    return item if isinstance(item, str) else item.name


def _with_predefined(stored: list[Alias], after: str | None, count: int) -> list[Listed]:
    """The first `count` of the stored page and the predefined aliases after `after` that the store
    does not hold: ListAliases lists those too, with no TargetKeyId ("predefined aliases that AWS
    has created but has not yet associated with a KMS key", ListAliases reference). A predefined
    alias the store holds is in `stored` if it sorts before the page's last alias, or if the page
    is the listing's last; if not, it sorts past the `count` returned."""
    held = {alias.name for alias in stored}
    waiting = (name for name in PREDEFINED if (after is None or name > after) and name not in held)
    listed: list[Listed] = [*stored, *waiting]
    return sorted(listed, key=_listed_name)[:count]


def _entry(svc: KmsService, call: Call, item: Listed) -> dict[str, Any]:
    if isinstance(item, str):
        return {"AliasName": item, "AliasArn": svc.alias_arn(call, item)}
    return {
        "AliasName": item.name, "AliasArn": svc.alias_arn(call, item.name), "TargetKeyId": item.key_id,
        "CreationDate": item.creation_date, "LastUpdatedDate": item.last_updated_date,
    }


OPERATIONS: dict[str, Operation] = {
    "CreateAlias": Operation(create_alias),
    "UpdateAlias": Operation(update_alias),
    "DeleteAlias": Operation(delete_alias),
    "ListAliases": Operation(list_aliases, read_only=True),
}
