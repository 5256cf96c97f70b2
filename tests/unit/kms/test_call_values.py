"""`call_value` classes behave as the frozen dataclasses they replaced, but for the run-time refusal
of an assignment (mypy refuses it instead)."""

from __future__ import annotations

import dataclasses

from keytrail.kms.call_values import call_value
from keytrail.kms.context import CallContext, IdentityType, Principal


@call_value
class _Pair:
    name: str
    values: tuple[int, ...] = dataclasses.field(default=())


def test_a_call_value_compares_and_hashes_by_its_fields() -> None:
    assert _Pair("a", (1,)) == _Pair("a", (1,))
    assert hash(_Pair("a", (1,))) == hash(_Pair("a", (1,)))
    assert {_Pair("a"), _Pair("a")} == {_Pair("a")}
    assert _Pair("a") != _Pair("b")


def test_a_call_value_is_slotted_and_copied_with_replace() -> None:
    pair = _Pair("a")
    assert not hasattr(pair, "__dict__")
    assert dataclasses.replace(pair, name="b") == _Pair("b")


def test_a_call_context_is_still_a_dataclass_with_its_defaults() -> None:
    principal = Principal(arn="arn:aws:iam::111122223333:user/alice", account="111122223333",
                          type=IdentityType.IAM_USER, access_key_id="AKIAALICE000000000001", principal_id="AIDAALICE")
    context = CallContext(principal, "us-east-1", "request-1")
    assert dataclasses.is_dataclass(context)
    assert (context.source_ip, context.organizations) == ("127.0.0.1", {})
