"""Random sequences of KMS calls through KmsService for the ledger's property tests: the writes
the service makes as a caller uses it (keys, multi-Region replicas and primary updates, aliases,
grants retired and revoked, scheduled deletion reaching its date with the key's aliases and
grants, automatic and on-demand rotation, imported material and its expiry), whatever state each
call meets. Calls AWS refuses (a key pending deletion, a name taken) are part of the sequence;
an internal error is not."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import OwnAccountAuthorizer
from keytrail.kms.context import CallContext, Principal
from keytrail.kms.model import CallRecord
from keytrail.kms.service import KmsService, ServiceDeps
from tests.integration.keystores.wrapping import wrap

__all__ = ["EVERY_KIND_OF_WRITE", "Calls", "Step", "calls", "service_over"]

ACCOUNT = "111122223333"
REGIONS = ("us-east-1", "eu-west-1")
Step = tuple[Any, ...]


class _Records:
    async def record(self, call: CallRecord) -> None:
        return None


def service_over(store: Any, clock: ManualClock) -> KmsService:
    return KmsService(ServiceDeps(store=store, clock=clock, audit=_Records(), authorizer=OwnAccountAuthorizer()))


_key = st.integers(0, 7)  # an index into the keys made so far
_region = st.sampled_from(REGIONS[:1] * 3 + REGIONS[1:])  # the keys are made in the first
_alias = st.sampled_from(["alias/a", "alias/b"])


def calls() -> st.SearchStrategy[list[Step]]:
    one = st.one_of(
        st.tuples(st.just("CreateKey"), _region, st.sampled_from(["plain", "multi", "external"])),
        st.tuples(st.sampled_from(["CreateAlias", "UpdateAlias"]), _region, _alias, _key),
        st.tuples(st.just("DeleteAlias"), _region, _alias),
        st.tuples(st.just("CreateGrant"), _region, _key),
        st.tuples(st.sampled_from(["RetireGrant", "RevokeGrant"]), _region, _key, st.integers(0, 3)),
        st.tuples(st.sampled_from(["ScheduleKeyDeletion", "CancelKeyDeletion", "EnableKeyRotation",
                                   "RotateKeyOnDemand", "DisableKey", "EnableKey", "TagResource",
                                   "UpdateKeyDescription", "DeleteImportedKeyMaterial"]), _region, _key),
        st.tuples(st.sampled_from(["ReplicateKey", "UpdatePrimaryRegion"]), _region, _key),
        st.tuples(st.just("ImportKeyMaterial"), _region, _key, st.booleans()),
        st.tuples(st.just("advance"), st.sampled_from([1, 8, 40, 400])),  # days; then the due work
    )
    # Each sequence starts with a key of each kind, so that the calls after find keys to change.
    made = [("CreateKey", REGIONS[0], kind) for kind in ("plain", "multi", "external")]
    return st.lists(one, max_size=30).map(lambda steps: made + steps)


_EAST, _WEST = REGIONS
# One sequence that surely makes each kind of write: a key's aliases and grants deleted with it at
# the end of its waiting period, a replica made and made primary, imported material expired.
EVERY_KIND_OF_WRITE: list[Step] = [
    ("CreateKey", _EAST, "plain"), ("CreateKey", _EAST, "multi"), ("CreateKey", _EAST, "external"),
    ("CreateAlias", _EAST, "alias/a", 0), ("CreateGrant", _EAST, 0), ("CreateGrant", _EAST, 0),
    ("RetireGrant", _EAST, 0, 1), ("ReplicateKey", _EAST, 1), ("CreateAlias", _WEST, "alias/b", 1),
    ("CreateGrant", _WEST, 1), ("ImportKeyMaterial", _EAST, 2, True), ("EnableKeyRotation", _EAST, 1),
    ("UpdatePrimaryRegion", _EAST, 1), ("RevokeGrant", _WEST, 1, 2), ("ScheduleKeyDeletion", _EAST, 0),
    ("ScheduleKeyDeletion", _EAST, 1), ("advance", 8), ("DeleteImportedKeyMaterial", _EAST, 2), ("advance", 400),
]


def _other(region: str) -> str:
    return REGIONS[region == REGIONS[0]]


class Calls:
    """Runs steps against a service; remembers the keys and grants made, by index."""

    def __init__(self, service: KmsService, clock: ManualClock) -> None:
        self.service, self.clock = service, clock
        self.keys: list[str] = []
        self.grants: list[tuple[str, str]] = []  # (key id, grant id)

    async def call(self, region: str, operation: str, **params: Any) -> dict[str, Any]:
        context = CallContext(Principal.account_root(ACCOUNT, "AKIAROOT000000000001"), region, os.urandom(8).hex())
        return await self.service.execute(operation, context, params)

    def _key_id(self, index: int) -> str | None:
        return self.keys[index % len(self.keys)] if self.keys else None

    async def run(self, step: Step) -> None:
        """The step; an AWS refusal is an answer like any other, KMSInternalException a failure."""
        try:
            await self.run_or_raise(step)
        except errors.KMSInternalException:
            raise
        except errors.KmsError:
            pass

    async def run_or_raise(self, step: Step) -> None:
        """The step; any refusal raised."""
        name = step[0]
        if name == "advance":
            self.clock.advance(step[1] * 86400)
            for key in await self.service.store.all_keys():  # the scheduler's tick, failures raised
                await self.service.apply_due(key)
            return
        if name == "CreateKey":
            await self._create_key(step[1], step[2])
            return
        if name == "DeleteAlias":
            await self.call(step[1], name, AliasName=step[2])
            return
        key_id = self._key_id(step[3] if name in ("CreateAlias", "UpdateAlias") else step[2])
        if key_id is None:
            return
        region = step[1]
        if name in ("CreateAlias", "UpdateAlias"):
            await self.call(region, name, AliasName=step[2], TargetKeyId=key_id)
        elif name == "CreateGrant":
            grant = await self.call(region, name, KeyId=key_id, GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:role/r",
                                    Operations=["Decrypt"], RetiringPrincipal=f"arn:aws:iam::{ACCOUNT}:root")
            self.grants.append((key_id, grant["GrantId"]))
        elif name in ("RetireGrant", "RevokeGrant"):
            if self.grants:
                granted, grant_id = self.grants[step[3] % len(self.grants)]
                await self.call(region, name, KeyId=granted, GrantId=grant_id)
        elif name == "ImportKeyMaterial":
            await self._import(region, key_id, expires=step[3])
        else:
            await self.call(region, name, **self._params(name, region, key_id))

    def _params(self, name: str, region: str, key_id: str) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "ScheduleKeyDeletion": {"PendingWindowInDays": 7},
            "EnableKeyRotation": {"RotationPeriodInDays": 90},
            "TagResource": {"Tags": [{"TagKey": "t", "TagValue": os.urandom(2).hex()}]},
            "UpdateKeyDescription": {"Description": os.urandom(2).hex()},
            "ReplicateKey": {"ReplicaRegion": _other(region)},
            "UpdatePrimaryRegion": {"PrimaryRegion": _other(region)},
        }.get(name, {})
        return {"KeyId": key_id, **extra}

    async def _create_key(self, region: str, kind: str) -> None:
        params: dict[str, Any] = {"multi": {"MultiRegion": True}, "external": {"Origin": "EXTERNAL"}}.get(kind, {})
        made = await self.call(region, "CreateKey", **params)
        self.keys.append(made["KeyMetadata"]["KeyId"])

    async def _import(self, region: str, key_id: str, *, expires: bool) -> None:
        parameters = await self.call(region, "GetParametersForImport", KeyId=key_id,
                                     WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
        expiry: dict[str, Any] = ({"ExpirationModel": "KEY_MATERIAL_EXPIRES",
                                   "ValidTo": self.clock.now() + timedelta(days=3)} if expires else
                                  {"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})
        await self.call(region, "ImportKeyMaterial", KeyId=key_id, ImportToken=parameters["ImportToken"],
                        EncryptedKeyMaterial=wrap(parameters["PublicKey"], "RSAES_OAEP_SHA_256", os.urandom(32)),
                        **expiry)
