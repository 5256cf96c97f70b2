"""Grants are filed under terms and a call reads only those filed under its own (kms/grants.py):
every grant that allows a request shares a term with it, whatever its constraints, so narrowing
the read refuses nothing a grant allows. Through KmsService with the real PolicyAuthorizer, a
caller's one matching grant among 5,000 of its grants on the key is all that is weighed, and it
allows; a revoked or retired one no longer does. Of the grants that allow alike every request
looking up a term (`exact_terms`), one is read: the store's answer decides as all of them would."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import AccessDecision, AccessRequest
from keytrail.kms.context import CallContext
from keytrail.kms.evaluator import PolicyAuthorizer
from keytrail.kms.grants import (
    CONTEXT_OPERATIONS,
    exact_terms,
    grant_allows,
    grant_terms,
    grantee_matches,
    grantee_names,
    request_terms,
)
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Grant
from tests.unit.authz.support import ACCOUNT, NOW, REGION, allow_all_identity, user

ALICE, BOB = user("alice", ACCOUNT, allow_all_identity()), user("bob", ACCOUNT, allow_all_identity())
_KEYS = st.sampled_from(["Dept", "dept", "app", "aws:ebs:id", "Team"])
_VALUES = st.sampled_from(["IT", "it", "HR", "vol-0123456789abcdef0", "x", ""])
_CONTEXTS = st.dictionaries(_KEYS, _VALUES, max_size=4)
_CONSTRAINTS = st.one_of(
    st.none(), st.just({}),
    st.builds(lambda c: {"EncryptionContextSubset": c}, _CONTEXTS),
    st.builds(lambda c: {"EncryptionContextEquals": c}, _CONTEXTS),
    st.builds(lambda a, b: {"EncryptionContextEquals": a, "EncryptionContextSubset": b}, _CONTEXTS, _CONTEXTS),
)
# Besides these, what else a grant may hold: a SourceArn (it allows nothing), a CreateGrant
_ANY_CONSTRAINTS = st.one_of(
    _CONSTRAINTS, st.builds(lambda c: {**(c or {}), "SourceArn": "arn:aws:s3:::b"}, _CONSTRAINTS))
_ANY_OPERATIONS = st.lists(st.sampled_from(sorted(CONTEXT_OPERATIONS | {"DescribeKey", "Sign", "CreateGrant"})),
                           min_size=1, max_size=4, unique=True)
_OPERATIONS = st.lists(st.sampled_from(sorted(CONTEXT_OPERATIONS | {"DescribeKey", "Sign", "RetireGrant"})),
                       min_size=1, max_size=4, unique=True)
_GRANTEES = st.sampled_from([BOB.arn, BOB.root_arn, ACCOUNT, ALICE.arn])


def _grant(grantee: str, operations: tuple[str, ...], constraints: dict[str, Any] | None, n: int = 0) -> Grant:
    return Grant(account=ACCOUNT, region=REGION, key_id="k", grant_id=f"{n:064x}", grantee_principal=grantee,
                 operations=operations, issuing_account=ACCOUNT, creation_date=NOW + timedelta(microseconds=n),
                 token=f"t{n}", constraints=constraints)


@settings(max_examples=500, deadline=None)
@given(_GRANTEES, _OPERATIONS, _CONSTRAINTS, st.sampled_from(sorted(CONTEXT_OPERATIONS | {"DescribeKey"})),
       _CONTEXTS, st.booleans())
def test_a_grant_that_allows_a_request_shares_a_term_with_it(
        grantee: str, operations: list[str], constraints: dict[str, Any] | None, operation: str,
        context: dict[str, str], identity_allows: bool) -> None:
    grant = _grant(grantee, tuple(operations), constraints)
    if grant_allows(grant, operation, BOB, {"context": context}, identity_allows):
        assert grant_terms(grant) & request_terms(grantee_names(BOB), operation, context)


@settings(max_examples=500, deadline=None)
@given(_GRANTEES, _ANY_OPERATIONS, _ANY_CONSTRAINTS, st.sampled_from(sorted(CONTEXT_OPERATIONS | {"DescribeKey",
       "CreateGrant"})), _CONTEXTS, st.booleans())
def test_a_grant_filed_exactly_under_a_term_allows_every_request_that_looks_it_up(
        grantee: str, operations: list[str], constraints: dict[str, Any] | None, operation: str,
        context: dict[str, str], identity_allows: bool) -> None:
    grant = _grant(grantee, tuple(operations), constraints)
    shared = exact_terms(grant) & request_terms(grantee_names(BOB), operation, context)
    if shared and grantee_matches(grantee, BOB, identity_allows):
        assert grant_allows(grant, operation, BOB, {"context": context}, identity_allows)


_MANY_GRANTS = st.lists(st.tuples(_GRANTEES, _ANY_OPERATIONS, _ANY_CONSTRAINTS), max_size=12)


@settings(max_examples=300, deadline=None)
@given(_MANY_GRANTS, st.sampled_from(sorted(CONTEXT_OPERATIONS | {"DescribeKey", "Sign"})), _CONTEXTS,
       st.booleans())
def test_the_grants_a_store_reads_for_a_request_allow_it_as_all_of_the_keys_would(
        held: list[tuple[str, list[str], dict[str, Any] | None]], operation: str, context: dict[str, str],
        identity_allows: bool) -> None:
    grants = [_grant(grantee, tuple(operations), constraints, n)
              for n, (grantee, operations, constraints) in enumerate(held)]

    async def read() -> list[Grant]:
        with tempfile.TemporaryDirectory() as directory:
            store = SqliteStore(Path(directory) / "keys.db", RootKey(bytes(32)))
            for grant in grants:
                await store.put_grant(grant)
            try:
                return await store.grants_allowing(ACCOUNT, REGION, "k", grantee_names(BOB), operation, context)
            finally:
                await store.close()

    def allow(among: list[Grant]) -> bool:
        return any(grant_allows(grant, operation, BOB, {"context": context}, identity_allows) for grant in among)

    assert allow(asyncio.run(read())) == allow(grants)


def test_a_subset_grant_is_filed_under_its_pair_with_the_longest_value() -> None:
    # Grants of a service for each of its volumes: one label they all share, one identifier each
    grant = _grant(BOB.arn, ("Decrypt",), {"EncryptionContextSubset": {"service": "ebs", "aws:ebs:id": "vol-1a2b3c"}})
    other = _grant(BOB.arn, ("Decrypt",), {"EncryptionContextSubset": {"service": "ebs", "aws:ebs:id": "vol-9z8y7x"}})
    asked = request_terms(grantee_names(BOB), "Decrypt", {"service": "ebs", "AWS:EBS:ID": "vol-1a2b3c"})
    assert grant_terms(grant) <= asked and not grant_terms(other) & asked


def test_an_operation_no_grant_allows_looks_up_nothing() -> None:
    assert request_terms(grantee_names(BOB), "PutKeyPolicy", {}) == frozenset()


class _Weighed(PolicyAuthorizer):
    """The real authorizer, noting how many grants each request brought to weigh."""

    def __init__(self) -> None:
        super().__init__(ManualClock(NOW))
        self.weighed: list[int] = []

    def authorize(self, request: AccessRequest) -> AccessDecision:
        self.weighed.append(len(request.grants))
        return super().authorize(request)


class _Dropped:
    async def record(self, call: Any) -> None:
        return None


def _ctx(principal: Any) -> CallContext:
    return CallContext(principal=principal, region=REGION, request_id="req")


@pytest.fixture
async def many(tmp_path: Path) -> tuple[KmsService, SqliteStore, _Weighed, str, list[Grant]]:
    """alice's key, whose policy gives bob nothing, and bob's 5,000 grants on it, each to encrypt
    and decrypt under the context of one volume."""
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    authorizer = _Weighed()
    service = KmsService(ServiceDeps(store=store, clock=ManualClock(NOW), audit=_Dropped(), authorizer=authorizer))
    key_policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ALICE.arn}, "Action": "kms:*", "Resource": "*"}]}
    created = await service.execute("CreateKey", _ctx(ALICE), {"Policy": json.dumps(key_policy)})
    key_id = created["KeyMetadata"]["KeyId"]
    grants = [Grant(account=ACCOUNT, region=REGION, key_id=key_id, grant_id=f"{n:064x}", grantee_principal=BOB.arn,
                    operations=("Encrypt", "Decrypt"), issuing_account=ACCOUNT,
                    creation_date=NOW + timedelta(microseconds=n), token=f"t{n}",
                    constraints={"EncryptionContextSubset": {"app": "disks", "volume": f"vol-{n:08d}"}})
              for n in range(5_000)]
    for grant in grants:
        await store.put_grant(grant)
    return service, store, authorizer, key_id, grants


async def test_one_matching_grant_among_5000_of_the_callers_is_all_that_is_weighed(many: Any) -> None:
    service, _, authorizer, key_id, _ = many
    volume = {"app": "disks", "volume": "vol-00001234"}
    encrypted = await service.execute("Encrypt", _ctx(BOB), {"KeyId": key_id, "Plaintext": b"x",
                                                            "EncryptionContext": volume})
    assert authorizer.weighed[-1] == 1  # all 5,000 were weighed before
    decrypted = await service.execute("Decrypt", _ctx(BOB), {"CiphertextBlob": encrypted["CiphertextBlob"],
                                                            "EncryptionContext": volume})
    assert decrypted["Plaintext"] == b"x"
    with pytest.raises(errors.AccessDeniedException):  # no grant of its 5,000 is for this volume
        await service.execute("Encrypt", _ctx(BOB), {"KeyId": key_id, "Plaintext": b"x",
                                                    "EncryptionContext": {"app": "disks", "volume": "vol-99999999"}})
    assert authorizer.weighed[-1] == 0
    with pytest.raises(errors.AccessDeniedException):  # nor a DescribeKey
        await service.execute("DescribeKey", _ctx(BOB), {"KeyId": key_id})


async def test_a_revoked_or_retired_grant_among_them_allows_no_more(many: Any) -> None:
    service, _, _, key_id, grants = many
    for grant, ends in ((grants[7], "RevokeGrant"), (grants[8], "RetireGrant")):
        context = grant.constraints["EncryptionContextSubset"]
        await service.execute("Encrypt", _ctx(BOB), {"KeyId": key_id, "Plaintext": b"x", "EncryptionContext": context})
        await service.execute(ends, _ctx(ALICE), {"KeyId": key_id, "GrantId": grant.grant_id})
        with pytest.raises(errors.AccessDeniedException):
            await service.execute("Encrypt", _ctx(BOB), {"KeyId": key_id, "Plaintext": b"x",
                                                        "EncryptionContext": context})


async def test_one_of_5000_grants_that_allow_a_describe_alike_is_all_that_is_weighed(many: Any) -> None:
    service, store, authorizer, key_id, _ = many
    alike = [Grant(account=ACCOUNT, region=REGION, key_id=key_id, grant_id=f"{n:064x}", grantee_principal=BOB.arn,
                   operations=("DescribeKey", "Decrypt"), issuing_account=ACCOUNT,
                   creation_date=NOW + timedelta(microseconds=n), token=f"t{n}",
                   constraints={"EncryptionContextEquals": {"app": "logs"}} if n % 2 else None)
             for n in range(5_000, 10_000)]
    # A SourceArn grant allows nothing: read with the others under its term, not as the one read
    never = Grant(account=ACCOUNT, region=REGION, key_id=key_id, grant_id="f" * 64, grantee_principal=BOB.arn,
                  operations=("DescribeKey",), issuing_account=ACCOUNT, creation_date=NOW, token="tf",
                  constraints={"SourceArn": "arn:aws:s3:::bucket"})
    for grant in (never, *alike):
        await store.put_grant(grant)
    await service.execute("DescribeKey", _ctx(BOB), {"KeyId": key_id})
    assert authorizer.weighed[-1] == 2  # one of the 5,000, and the SourceArn grant: all 5,001 before
    encrypted = await service.execute("Encrypt", _ctx(ALICE), {"KeyId": key_id, "Plaintext": b"x",
                                                              "EncryptionContext": {"App": "logs"}})
    await service.execute("Decrypt", _ctx(BOB), {"CiphertextBlob": encrypted["CiphertextBlob"],
                                                "EncryptionContext": {"App": "logs"}})
    assert authorizer.weighed[-1] == 2  # an unconstrained one, an Equals one
    for grant in alike:  # each one revoked: the next one read allows, until none is left
        await service.execute("DescribeKey", _ctx(BOB), {"KeyId": key_id})
        await service.execute("RevokeGrant", _ctx(ALICE), {"KeyId": key_id, "GrantId": grant.grant_id})
    with pytest.raises(errors.AccessDeniedException):
        await service.execute("DescribeKey", _ctx(BOB), {"KeyId": key_id})
