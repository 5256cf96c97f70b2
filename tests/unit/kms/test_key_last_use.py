"""The keys' uses a node notes for the other nodes of its key store (kms/key_last_use.py): which
records show a use, the latest kept per key until written, kept on a failed write, and the later
of the node's own and the store's answered."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from keytrail.kms import errors
from keytrail.kms.key_last_use import KeyUse, SharedLastUsage, UseOutbox, key_row, uses_in
from keytrail.kms.model import KeyLastUsage
from tests.support.audit_records import ACCOUNT, APP, KEY_ARN, T0, encrypt_call

OTHER_ARN = KEY_ARN.replace("1234abcd", "5678abcd")


class _Store:
    """A LastUseStore in memory, failing its writes while `failing`."""

    def __init__(self) -> None:
        self.uses: dict[str, KeyUse] = {}
        self.failing = False

    async def put_last_uses(self, uses: list[KeyUse]) -> None:
        if self.failing:
            raise errors.KMSInternalException("The request was rejected because an internal exception occurred.")
        self.uses.update((use.key_arn, use) for use in uses)

    async def get_last_use(self, account: str, region: str, key_id: str) -> KeyUse | None:
        if self.failing:
            raise errors.DependencyTimeoutException("The key store did not answer within 10 seconds.")
        return next((use for use in self.uses.values() if use.row == (account, region, key_id)), None)


class _Local:
    def __init__(self, tracking_start: datetime | None, last: KeyLastUsage | None) -> None:
        self.answer = (tracking_start, last)

    async def last_usage(self, key_arn: str) -> tuple[datetime | None, KeyLastUsage | None]:
        return self.answer


def test_a_successful_cryptographic_call_uses_its_keys_at_its_event_time_in_whole_seconds() -> None:
    record = encrypt_call(1, principal=APP, event_time=T0 + timedelta(seconds=1, microseconds=700))
    assert uses_in(record) == [KeyUse(KEY_ARN, "Encrypt", T0 + timedelta(seconds=1), record.event_id, "req-000001",
                                      f"arn:aws:iam::{ACCOUNT}:role/app")]
    reencrypt = encrypt_call(2, event_name="ReEncrypt", resources=(KEY_ARN, OTHER_ARN))
    assert [use.key_arn for use in uses_in(reencrypt)] == [KEY_ARN, OTHER_ARN]


@pytest.mark.parametrize("changes", [{"error_code": "AccessDeniedException"}, {"event_name": "DescribeKey"},
                                     {"context": None}])
def test_a_failed_call_a_call_of_no_cryptography_and_a_service_event_use_no_key(changes: dict[str, object]) -> None:
    assert uses_in(encrypt_call(1, **changes)) == []


def test_the_row_of_a_key_arn_in_any_partition() -> None:
    assert key_row("arn:aws-cn:kms:cn-north-1:111122223333:key/mrk-1") == ("111122223333", "cn-north-1", "mrk-1")


async def test_the_outbox_writes_each_keys_latest_use_and_keeps_what_a_failed_write_could_not() -> None:
    outbox, store = UseOutbox(), _Store()
    for index in (3, 1, 2):  # recorded out of time order: the latest time wins
        outbox.note(encrypt_call(index))
    store.failing = True
    with pytest.raises(errors.KMSInternalException):
        await outbox.flush(store)
    outbox.note(encrypt_call(0, resources=(OTHER_ARN,)))
    outbox.note(encrypt_call(2))  # noted since the failed write, earlier than the one given back
    store.failing = False
    await outbox.flush(store)
    assert {arn: use.event_id for arn, use in store.uses.items()} == {
        KEY_ARN: encrypt_call(3).event_id, OTHER_ARN: encrypt_call(0).event_id}
    assert outbox.take() == []


async def test_the_later_of_the_nodes_own_use_and_the_stores_is_answered() -> None:
    store = _Store()
    [shared] = uses_in(encrypt_call(10))
    store.uses[KEY_ARN] = shared
    own = KeyLastUsage("Decrypt", T0 + timedelta(seconds=20), "own", None)
    assert await SharedLastUsage(_Local(T0, own), store).last_usage(KEY_ARN) == (T0, own)
    assert await SharedLastUsage(_Local(T0, None), store).last_usage(KEY_ARN) == (T0, shared.usage)
    # This node began tracking after the use another node tracked: tracking began no later than it.
    late_start = T0 + timedelta(days=1)
    assert await SharedLastUsage(_Local(late_start, None), store).last_usage(KEY_ARN) == (shared.timestamp,
                                                                                         shared.usage)
    assert await SharedLastUsage(_Local(None, None), store).last_usage(OTHER_ARN) == (None, None)


async def test_a_store_that_cannot_tell_is_an_error_never_unused() -> None:
    store = _Store()
    store.failing = True
    with pytest.raises(errors.DependencyTimeoutException):
        await SharedLastUsage(_Local(T0, None), store).last_usage(KEY_ARN)

