"""AWS managed keys made on first use: DescribeKey on a predefined alias with no key yet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keytrail.kms.calls import Call
from keytrail.kms.identifiers import KeyRef, KeyRefError, parse_key_ref
from keytrail.kms.managed_keys import PREDEFINED, managed_key, managed_key_id
from keytrail.kms.material import generate_secret
from keytrail.kms.model import KeySpec
from keytrail.kms.store import Alias

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["ensure_managed_key"]


def _predefined_ref(call: Call, raw: str) -> KeyRef | None:
    """The predefined alias `raw` names in the caller's own account, else None (another account's
    AWS managed keys are not the caller's to make)."""
    context = call.context
    try:
        ref = parse_key_ref(raw, account=context.account, region=context.region)
    except KeyRefError:
        return None
    if not ref.is_alias or ref.name not in PREDEFINED or ref.account != context.account:
        return None
    return ref


async def ensure_managed_key(svc: KmsService, call: Call, raw: str) -> None:
    """Make the AWS managed key of the predefined alias `raw` names, and associate the alias, if it
    has no key yet ("If you call DescribeKey on a predefined AWS alias, that is, an AWS alias with
    no key ID, AWS KMS creates an AWS managed key", DescribeKey API reference). Under the key's lock
    on every node, and written key first: a call stopped between the two writes leaves a key that
    the next call finds (its id is fixed, `managed_key_id`) and gives the alias."""
    ref = _predefined_ref(call, raw)
    if ref is None or await svc.store.get_alias(ref.account, ref.region, ref.name) is not None:
        return
    service, now = PREDEFINED[ref.name], svc.now()
    key_id = managed_key_id(ref.account, ref.region, ref.name)
    async with svc.key_lock(ref.account, ref.region, key_id):
        if await svc.store.get_key(ref.account, ref.region, key_id) is None:
            material = svc.new_material(await generate_secret(KeySpec.SYMMETRIC_DEFAULT), created=now)
            key = managed_key(service, ref.account, ref.region, material)
            # Only for a caller who may describe it: else any caller, refused everything, could fill
            # the store with 16 keys in each Region name it signs for (any well-formed name is one).
            await svc.authorize(call, "kms:DescribeKey", key)
            call.resource(key.arn)  # before the write: the record it owes names the key
            await svc.store.put_key(key)
        # The alias's name is unique in the store: a call that associated it first keeps it.
        await svc.store.add_alias(Alias(ref.account, ref.region, ref.name, key_id, now, now))
