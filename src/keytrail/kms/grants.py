"""Grant rules: who a grant names, which operations it may allow, and its constraints.

Follows "Grants in AWS KMS", "Using grant constraints" and "Granting CreateGrant permission".
Pure functions over `Grant` values; the handlers in `operations/grants.py` persist grants.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from keytrail.kms.context import IdentityType, Principal
from keytrail.kms.keys import Key
from keytrail.kms.model import KeySpec, KeyUsage
from keytrail.kms.partitions import partition_of
from keytrail.kms.store import Grant

__all__ = [
    "CONTEXT_OPERATIONS",
    "GRANT_OPERATIONS",
    "GrantTerm",
    "account_spellings",
    "allowed_operations",
    "constraints_at_least_as_strict",
    "constraints_hold",
    "exact_terms",
    "filed_terms",
    "grant_allows",
    "grant_terms",
    "grant_token_matches",
    "grantee_matches",
    "grantee_names",
    "make_grant_token",
    "parse_grant_token",
    "principal_named",
    "request_terms",
    "retire_allowed",
]

GRANT_OPERATIONS = frozenset({
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
    "DeriveSharedSecret", "Encapsulate", "Decapsulate",
})
# Operations that take an EncryptionContext: the only ones a grant constraint applies to.
CONTEXT_OPERATIONS = frozenset({
    "Encrypt", "Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext", "ReEncryptFrom", "ReEncryptTo",
})
_ALWAYS = frozenset({"DescribeKey", "CreateGrant", "RetireGrant"})
_SYMMETRIC = CONTEXT_OPERATIONS | _ALWAYS
_BY_USAGE = {
    KeyUsage.ENCRYPT_DECRYPT:
        frozenset({"Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GetPublicKey"}) | _ALWAYS,
    KeyUsage.SIGN_VERIFY: frozenset({"Sign", "Verify", "GetPublicKey"}) | _ALWAYS,
    KeyUsage.GENERATE_VERIFY_MAC: frozenset({"GenerateMac", "VerifyMac"}) | _ALWAYS,
    KeyUsage.KEY_AGREEMENT: frozenset({"DeriveSharedSecret", "GetPublicKey"}) | _ALWAYS,
    KeyUsage.ENCAPSULATE_DECAPSULATE: frozenset({"Encapsulate", "Decapsulate", "GetPublicKey"}) | _ALWAYS,
}
_TOKEN_PREFIX = "ktg1"


def allowed_operations(key: Key) -> frozenset[str]:
    """The grant operations AWS accepts for this key's spec and usage."""
    if key.key_spec is KeySpec.SYMMETRIC_DEFAULT:
        return _SYMMETRIC
    return _BY_USAGE[key.key_usage]


def supports_constraints(key: Key) -> bool:
    """Encryption-context constraints exist only for symmetric encryption keys."""
    return key.key_spec is KeySpec.SYMMETRIC_DEFAULT


def principal_named(name: str, principal: Principal) -> bool:
    """True when an ARN in a grant names this caller (its user/role ARN or its session ARN)."""
    return hmac.compare_digest(name, principal.policy_arn) or hmac.compare_digest(name, principal.arn)


def grantee_matches(grantee: str, principal: Principal, identity_allows: bool) -> bool:
    """A grant to an account lets its root, and its principals whom IAM allows, use it. CreateGrant
    takes the account as its root's ARN or as its bare id (as a key policy may name it), and a
    grant it accepted must name someone."""
    if principal_named(grantee, principal):
        return True
    names_account = grantee in (principal.root_arn, principal.account)
    return names_account and (identity_allows or principal.type is IdentityType.ROOT)


def account_spellings(name: str, partition: str) -> str | list[str]:
    """What kms:GranteePrincipal and kms:RetiringPrincipal hold for a grant naming `name`: an account
    (`grantee_matches` takes it as its root's ARN or as its bare id) as both, any other principal as
    written. With one spelling, a Deny on `arn:aws:iam::444455556666:*` let a grant to
    `444455556666` through, usable by that account's every principal."""
    if _ACCOUNT_ID.fullmatch(name):
        return [name, f"arn:{partition}:iam::{name}:root"]
    if (root := _ROOT_ARN.fullmatch(name)) is not None:
        return [name, root.group(1)]
    return name


_ACCOUNT_ID = re.compile(r"[0-9]{12}", re.ASCII)
_ROOT_ARN = re.compile(r"arn:[a-z-]+:iam::([0-9]{12}):root", re.ASCII)


def grantee_names(principal: Principal) -> frozenset[str]:
    """The grantees a grant may name to be this caller's: itself, its role, or its account
    (`grantee_matches` allows no other). Every call on a key weighs the grants to these only
    (`GrantStore.grants_to`): a key may hold 50,000, and weighing them all took ≈ 290 ms of the
    event loop at that quota."""
    return frozenset((principal.arn, principal.policy_arn, principal.root_arn, principal.account))


def retire_allowed(grant: Grant, principal: Principal, identity_allows: bool) -> bool:
    """Who may retire a grant ("Retiring and revoking grants"): its retiring principal, its grantee
    when it includes RetireGrant, and, as a backup, the account the grant was created in (the key's
    and the issuing account). An account named as retiring principal or grantee, and the backup
    account, act through their root or the IAM principals they allow kms:RetireGrant."""
    if grant.retiring_principal and grantee_matches(grant.retiring_principal, principal, identity_allows):
        return True
    if "RetireGrant" in grant.operations and grantee_matches(grant.grantee_principal, principal, identity_allows):
        return True
    own = principal.account in (grant.account, grant.issuing_account)
    return own and (identity_allows or principal.type is IdentityType.ROOT)


def constraints_hold(constraints: Mapping[str, Any] | None, context: Mapping[str, str]) -> bool:
    """EncryptionContextEquals: exactly these pairs; EncryptionContextSubset: at least these. As in
    AWS, a constraint's keys match whatever their case, its values only exactly."""
    if not constraints:
        return True
    pairs = _pairs(context)
    equals = constraints.get("EncryptionContextEquals")
    if equals is not None and pairs != _pairs(equals):
        return False
    subset = constraints.get("EncryptionContextSubset")
    return subset is None or all(pair in pairs for pair in _pairs(subset))


def constraints_at_least_as_strict(parent: Mapping[str, Any] | None, child: Mapping[str, Any] | None) -> bool:
    """A grant made through a grant's CreateGrant must be equally or more constrained."""
    if not parent:
        return True
    child = child or {}
    child_pairs = _pairs(child.get("EncryptionContextEquals") or child.get("EncryptionContextSubset") or {})
    equals, child_equals = parent.get("EncryptionContextEquals"), child.get("EncryptionContextEquals")
    if equals is not None and (child_equals is None or _pairs(child_equals) != _pairs(equals)):
        return False
    subset = parent.get("EncryptionContextSubset")
    if subset is None:
        return True
    return bool(child) and all(pair in child_pairs for pair in _pairs(subset))


def _pairs(context: Mapping[str, str]) -> list[tuple[str, str]]:
    """A context's pairs as grant constraints compare them: keys in any case, sorted. Keys that
    differ only by case stay separate pairs, so such a context equals no constraint of fewer."""
    return sorted((key.lower(), value) for key, value in context.items())


def grant_allows(
    grant: Grant, operation: str, principal: Principal, request: Mapping[str, Any], identity_allows: bool,
) -> bool:
    """Does `grant` let `principal` perform `operation` with this request's values?

    `request` carries `context` (the encryption context), and for CreateGrant the requested
    `operations` and `constraints`.
    """
    if operation not in grant.operations or not grantee_matches(grant.grantee_principal, principal,
                                                                 identity_allows):
        return False
    if grant.constraints and grant.constraints.get("SourceArn") is not None:
        # A SourceArn constraint allows only requests an AWS service makes on behalf of that
        # resource (aws:SourceArn); this service's callers are never such a service. RetireGrant,
        # which the constraint does not cover, is decided apart from grant_allows.
        return False
    if operation in CONTEXT_OPERATIONS:
        return constraints_hold(grant.constraints, request.get("context") or {})
    if operation == "CreateGrant":
        requested: Iterable[str] = request.get("operations") or ()
        return set(requested) <= set(grant.operations) and constraints_at_least_as_strict(
            grant.constraints, request.get("constraints"))
    return True


# What a grant is filed under and a request looks up: (grantee, operation, anchor), where the anchor
# is what the grant's constraints require of an encryption context ("" for nothing). A grant that
# allows a request shares a term with it (`grant_allows`), so a store reads only the grants filed
# under the request's terms: a caller's 20,000 grants on a key, each for another context, cost each
# of its calls 14-90 ms when every one was weighed. Stores may keep terms (the PostgreSQL store in a
# column): changing how they are made must have the stored ones made again.
GrantTerm = tuple[str, str, str]
_ANY = ""


def grant_terms(grant: Grant) -> frozenset[GrantTerm]:
    """The terms `grant` is filed under: one for each of its operations, with its constraints'
    anchor for those that take an encryption context (the others ignore constraints)."""
    anchor = _anchor(grant.constraints)
    return frozenset((grant.grantee_principal, operation, anchor if operation in CONTEXT_OPERATIONS else _ANY)
                     for operation in grant.operations)


def exact_terms(grant: Grant) -> frozenset[GrantTerm]:
    """The terms of `grant_terms` under which `grant` allows every request that looks them up, when
    its grantee is the caller (`grant_allows` reads nothing else of it then): one such grant under a
    term decides as well as all of them, so a store reads one (20,000 grants to a caller to describe
    a key, as an application that leaks grants leaves them, cost each of its calls ≈ 200 ms on
    PostgreSQL when every one was read). A SourceArn constraint allows nothing; CreateGrant depends on
    what is asked for; a Subset on pairs besides the one filed; an Equals is the pairs its term names."""
    constraints = grant.constraints or {}
    if constraints.get("SourceArn") is not None:
        return frozenset()
    exact = {operation for operation in grant.operations if operation != "CreateGrant"}
    if constraints.get("EncryptionContextSubset"):
        exact -= CONTEXT_OPERATIONS
    return frozenset(term for term in grant_terms(grant) if term[1] in exact)


def filed_terms(grant: Grant) -> frozenset[tuple[GrantTerm, bool]]:
    """Each term of `grant_terms`, with whether it is one of `exact_terms`."""
    exact = exact_terms(grant)
    return frozenset((term, term in exact) for term in grant_terms(grant))


def request_terms(grantees: Collection[str], operation: str, context: Mapping[str, str]) -> frozenset[GrantTerm]:
    """The terms of the grants that may allow `operation` with `context` to one of `grantees`
    (`grantee_names`): none for an operation no grant allows."""
    if operation not in GRANT_OPERATIONS:
        return frozenset()
    anchors = {_ANY}
    if operation in CONTEXT_OPERATIONS:
        pairs = _pairs(context)
        anchors.add(_equal_to(pairs))
        anchors.update(_holding(pair) for pair in pairs)
    return frozenset((grantee, operation, anchor) for grantee in grantees for anchor in anchors)


def _anchor(constraints: Mapping[str, Any] | None) -> str:
    """What a context must be or hold for `constraints_hold`: its pairs exactly (Equals), or one pair
    of the Subset's. That pair is the one with the longest value: more likely an identifier of one
    resource (an EBS volume's) than a label many grants share (a service's name), so the fewest
    grants are filed under it. Anything else constrains no context (a SourceArn)."""
    if not constraints:
        return _ANY
    if (equals := constraints.get("EncryptionContextEquals")) is not None:
        return _equal_to(_pairs(equals))
    if subset := constraints.get("EncryptionContextSubset"):
        return _holding(max(_pairs(subset), key=lambda pair: (len(pair[1]), pair)))
    return _ANY


def _equal_to(pairs: list[tuple[str, str]]) -> str:
    return "=" + _digest(pairs)


def _holding(pair: tuple[str, str]) -> str:
    return "<" + _digest([pair])


def _digest(pairs: list[tuple[str, str]]) -> str:
    """A short digest of pairs (`repr` escapes what would make two lists read alike): a context's
    values may be kilobytes, which a term need not repeat."""
    return hashlib.blake2b(repr(pairs).encode(), digest_size=16).hexdigest()


def make_grant_token(grant: Grant, nonce: bytes) -> str:
    """An opaque token naming the grant: its first (`grant.token`, kept with the grant) when `grant`
    has none yet, else another one for it (a retry of CreateGrant by name: each call gets a
    different token), whose tag, keyed by the first, proves it was made here."""
    proof = nonce + _tag(grant.token, nonce) if grant.token else nonce
    body = f"{grant.account}:{grant.region}:{grant.key_id}:{grant.grant_id}:".encode() + proof
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")


def parse_grant_token(token: str) -> tuple[str, str, str, str] | None:
    """(account, region, key id, grant id) a token in this service's form names, else None: what
    it claims, which `grant_token_matches` checks against the grant."""
    parsed = _parts(token)
    return parsed[0] if parsed else None


def grant_token_matches(token: str, grant: Grant) -> bool:
    """Whether CreateGrant returned `token` for `grant`: its first token, or another with a tag the
    first keys. A token made up (or cut, or changed) in the right form names a grant, nothing more."""
    if grant.token and hmac.compare_digest(token.encode(), grant.token.encode()):
        return True
    parsed = _parts(token)
    if parsed is None or parsed[0][3] != grant.grant_id or not grant.token:
        return False
    proof = parsed[1]
    nonce, tag = proof[:_NONCE_BYTES], proof[_NONCE_BYTES:]
    return len(tag) == _TAG_BYTES and hmac.compare_digest(tag, _tag(grant.token, nonce))


_NONCE_BYTES = _TAG_BYTES = 16


def _tag(first_token: str, nonce: bytes) -> bytes:
    return hmac.digest(first_token.encode(), b"keytrail grant token\0" + nonce, "sha256")[:_TAG_BYTES]


def _parts(token: str) -> tuple[tuple[str, str, str, str], bytes] | None:
    """((account, region, key id, grant id), the bytes after them) of a token in this form."""
    if not token.startswith(_TOKEN_PREFIX):
        return None
    raw = token[len(_TOKEN_PREFIX):]
    try:
        body = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        return None
    parts = body.split(b":", 4)
    if len(parts) != 5:
        return None
    try:
        account, region, key_id, grant_id = (p.decode() for p in parts[:4])
    except UnicodeDecodeError:
        return None
    return (account, region, key_id, grant_id), parts[4]


def grant_view(key: Key, grant: Grant) -> dict[str, Any]:
    """A grant as ListGrants shows it."""
    view: dict[str, Any] = {
        "KeyId": key.arn, "GrantId": grant.grant_id, "CreationDate": grant.creation_date,
        "GranteePrincipal": grant.grantee_principal,
        "IssuingAccount": f"arn:{partition_of(key.region)}:iam::{grant.issuing_account}:root",
        "Operations": list(grant.operations),
    }
    if grant.name is not None:
        view["Name"] = grant.name
    if grant.retiring_principal is not None:
        view["RetiringPrincipal"] = grant.retiring_principal
    if grant.constraints:
        view["Constraints"] = grant.constraints
    return view
