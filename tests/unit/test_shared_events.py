"""A cross-account call's CloudTrail copies: the caller's in the event log, the key owner's made
by export and read back as the call it copies."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from keytrail.audit.records import to_cloudtrail
from keytrail.kms import errors
from keytrail.kms.call_records import call_record
from keytrail.kms.calls import Call, Operation
from keytrail.shared_events import as_caller_copy, crosses_accounts, owner_copies, shared_event_id
from keytrail.transport.cloudtrail_logs import read_log_file
from tests.support.audit_records import ACCOUNT, KEY_ARN, encrypt_call

OWNER = "444455556666"
OTHER_KEY = KEY_ARN.replace(ACCOUNT, OWNER)


def _caller_copy() -> dict[str, Any]:
    """The CloudTrail record of an Encrypt under another account's key, as the node logs it."""
    event_id = str(uuid.uuid4())
    return to_cloudtrail(encrypt_call(1, resources=(OTHER_KEY,), event_id=event_id,
                                      shared_event_id=shared_event_id(event_id)))


def test_a_call_on_another_accounts_key_crosses_accounts_unless_denied() -> None:
    assert crosses_accounts(ACCOUNT, (OTHER_KEY,), None)
    assert crosses_accounts(ACCOUNT, (KEY_ARN, OTHER_KEY), "InvalidCiphertextException")
    # AWS logs a denied cross-account call in the caller's account only (audit-anchors.md §1)
    assert not crosses_accounts(ACCOUNT, (OTHER_KEY,), "AccessDeniedException")
    assert not crosses_accounts(ACCOUNT, (KEY_ARN,), None)
    assert not crosses_accounts(ACCOUNT, (), None)


def test_the_caller_copy_carries_a_shared_event_id_where_aws_puts_it() -> None:
    event = _caller_copy()
    names = list(event)
    assert names.index("sharedEventID") == names.index("recipientAccountId") + 1  # as ct examples order it
    assert event["recipientAccountId"] == ACCOUNT and event["sharedEventID"] != event["eventID"]


def test_call_record_mints_the_shared_event_id_of_cross_account_calls_only() -> None:
    async def handler(*_: object) -> dict[str, Any]:
        return {}

    operation = Operation(handler, read_only=True)
    context = encrypt_call(1).context
    assert context is not None
    call = Call(context=context, params={"KeyId": OTHER_KEY}, resources=[OTHER_KEY])
    event_id = str(uuid.uuid4())
    allowed = call_record("Encrypt", operation, call, None, event_id, encrypt_call(1).event_time)
    denied = call_record("Encrypt", operation, call, errors.AccessDeniedException("no"), event_id,
                         encrypt_call(1).event_time)
    assert (allowed.shared_event_id, denied.shared_event_id) == (shared_event_id(event_id), None)


def test_the_key_owner_gets_a_copy_with_its_own_event_id_and_the_same_shared_one() -> None:
    caller = _caller_copy()
    [owner] = owner_copies(caller)
    assert owner["recipientAccountId"] == OWNER and owner["sharedEventID"] == caller["sharedEventID"]
    assert owner["eventID"] != caller["eventID"]
    assert uuid.UUID(owner["eventID"]).version == 4  # a GUID as AWS's eventIDs are
    assert {k: v for k, v in owner.items() if k not in ("eventID", "recipientAccountId", "userIdentity")} == \
           {k: v for k, v in caller.items() if k not in ("eventID", "recipientAccountId", "userIdentity")}
    assert as_caller_copy(owner) == {**caller, "userIdentity": owner["userIdentity"]}  # read back: the call
    assert as_caller_copy(caller) is caller


def test_the_key_owner_sees_the_caller_as_an_account_alone() -> None:
    # CloudTrail's key-owner copy of another account's call names the caller by account and
    # principal id (userIdentity type AWSAccount): no ARN, user name or access key of the other
    # account (audit-anchors.md §1.2), as keytrail's readers take AWS's owner copies.
    [owner] = owner_copies(_caller_copy())
    assert owner["userIdentity"] == {"type": "AWSAccount", "principalId": "AIDAALICE", "accountId": ACCOUNT}
    [again] = owner_copies(as_caller_copy(owner))  # an owner copy read alone, imported, exported again
    assert again == owner


def test_copies_aws_wrote_and_records_of_one_account_are_left_as_they_are() -> None:
    caller = _caller_copy()
    aws = {**caller, "sharedEventID": str(uuid.uuid4())}  # AWS's: random, not derived from the eventID
    assert owner_copies(aws) == [] and as_caller_copy({**aws, "recipientAccountId": OWNER})["eventID"] == aws["eventID"]
    same_account = {k: v for k, v in caller.items() if k != "sharedEventID"}
    assert owner_copies(same_account) == [] and as_caller_copy(same_account) is same_account
    assert as_caller_copy({**caller, "eventID": "not-a-guid", "recipientAccountId": OWNER})["eventID"] == "not-a-guid"
    odd = {**caller, "eventID": "not-a-guid", "sharedEventID": shared_event_id("not-a-guid")}
    assert owner_copies(odd) == []  # an export goes on rather than fail on it


def test_a_log_file_reader_reads_an_owner_copy_as_the_call(tmp_path: Path) -> None:
    caller = _caller_copy()
    path = tmp_path / "owner.json"
    path.write_text(json.dumps({"Records": [*owner_copies(caller), "not a record"]}))
    [owner] = owner_copies(caller)
    assert read_log_file(path) == [{**caller, "userIdentity": owner["userIdentity"]}, "not a record"]
