"""What a long-running detector keeps: keys named only by failed calls are bounded, and the
alarms of real keys are what they were."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from datetime import datetime, timedelta
from typing import Any

from tests.unit.detect.records import (
    ACCOUNT,
    REGION,
    T0,
    create_key,
    denied,
    event,
    key_arn,
    role,
    steady_traffic,
    user,
)

from keytrail.detect import Detector, RuleSet
from keytrail.detect.checks.spike import UsageSpike
from keytrail.detect.checks.unauthorized import MAX_FOLDED_KEYS, UnauthorizedDecrypt
from keytrail.detect.events import KmsEvent, read_kms_event
from keytrail.detect.ledger import KEY_PRINCIPALS, UNCONFIRMED_KEYS, KeyLedger

MALLORY = user("mallory")


def _random_key() -> str:
    return f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{uuid.uuid4()}"


def test_a_flood_of_denied_calls_on_random_key_arns_leaves_the_detector_bounded() -> None:
    detector = Detector()
    flood = [denied("Decrypt", T0 + timedelta(milliseconds=n), _random_key(), MALLORY)
             for n in range(UNCONFIRMED_KEYS + 2_000)]
    detector.process(flood)
    # The first keys have their alarms, the rest fold into the principal's, which counts every one.
    alarms = [a for a in detector.alarms() if a.rule == "unauthorized-decrypt"]
    assert [a.key_arn for a in alarms] == [r["resources"][0]["ARN"] for r in flood[:3]] + [None]
    assert alarms[-1].details["keyCount"] == str(len(flood) - 3)
    assert len(detector.ledger) == UNCONFIRMED_KEYS
    [spike] = [check for check in detector._checks if isinstance(check, UsageSpike)]
    assert spike.pairs() == UNCONFIRMED_KEYS
    [unauthorized] = [check for check in detector._checks if isinstance(check, UnauthorizedDecrypt)]
    assert len(unauthorized._denials[MALLORY["arn"]].folded) == MAX_FOLDED_KEYS
    # Two hours on in the stream (ticks judge as of it, not a clock ahead of it), the window has
    # closed: the principal's denials go.
    detector.process([denied("Decrypt", T0 + timedelta(hours=2), key_arn(1), user("eve"))])
    detector.tick(T0 + timedelta(hours=2))
    assert list(unauthorized._denials) == [user("eve")["arn"]]


def test_a_key_denied_before_it_is_seen_to_exist_is_idle_since_it_was_first_named() -> None:
    detector = Detector()
    key = key_arn(7)
    detector.process([denied("Decrypt", T0, key, MALLORY), event("DescribeKey", T0 + timedelta(days=10), key)])
    [alarm] = detector.tick(T0 + timedelta(days=91))
    assert (alarm.rule, alarm.key_arn, alarm.details["idleSince"]) == ("unused-key", key, "2026-01-05T12:00:00Z")


def test_the_ledger_lets_go_of_the_least_recently_named_unconfirmed_keys_first() -> None:
    ledger = KeyLedger(unconfirmed_limit=2)
    first, second, third = key_arn(1), key_arn(2), key_arn(3)
    for n, key in enumerate((first, second, first, third)):
        ledger.update(_read(denied("Decrypt", T0 + timedelta(minutes=n), key, MALLORY)))
    ledger.update(_read(event("DescribeKey", T0 + timedelta(days=1), first)))
    ledger.update(_read(event("DescribeKey", T0 + timedelta(days=1), second)))
    record_first, record_second = ledger.get(first), ledger.get(second)
    assert record_first is not None and record_first.first_seen == T0  # named again: kept
    assert record_second is not None and record_second.first_seen == T0 + timedelta(days=1)  # let go of
    assert ledger.get(third) is None and len(ledger) == 3


def test_a_spike_of_a_pair_first_seen_denied_keeps_its_history_once_the_key_exists() -> None:
    app, key = role("app"), key_arn(8)
    detector = Detector()
    records = [denied("Decrypt", T0 - timedelta(minutes=30), key, app), event("Decrypt", T0, key, app)]
    records += [event("Decrypt", T0 + timedelta(minutes=m), key, app) for m in range(1, 120)]
    records += [event("Decrypt", T0 + timedelta(minutes=120, milliseconds=200 * i), key, app) for i in range(150)]
    detector.process(records)
    [spike] = [a for a in detector.alarms() if a.rule == "usage-spike"]
    assert spike.details["baselineDurationMinutes"] == "150"  # counted from the denied call's minute


def _read(record: dict[str, Any]) -> KmsEvent:
    event = read_kms_event(record)
    assert event is not None
    return event


def _deleted(at: datetime, key: str) -> dict[str, Any]:
    """KMS's DeleteKey when the waiting period ends: a service event, no caller."""
    return dict(event("DeleteKey", at, key, {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}),
                eventType="AwsServiceEvent")


def test_keys_created_used_and_deleted_leave_nothing_of_them_in_the_detector() -> None:
    """The ledger's records and usage-spike's key x principal rates of deleted keys were kept for
    good: a node creating and deleting keys grew by some 18 KB per deleted key (15 callers each)."""
    detector, callers = Detector(), [role(f"app{n}") for n in range(15)]
    keys = [key_arn(n) for n in range(300)]
    detector.process([create_key(T0, key) for key in keys])
    detector.process([event("Encrypt", T0 + timedelta(minutes=1), key, who) for key in keys for who in callers])
    detector.process([event("ScheduleKeyDeletion", T0 + timedelta(days=1), key) for key in keys])
    [spike] = [check for check in detector._checks if isinstance(check, UsageSpike)]
    assert (len(detector.ledger), spike.pairs()) == (300, 300 * 16)
    detector.process([_deleted(T0 + timedelta(days=8), key) for key in keys])
    assert (len(detector.ledger), spike.pairs()) == (0, 0)


def test_a_late_event_of_a_deleted_key_does_not_bring_it_back_as_an_unused_key() -> None:
    detector, key = Detector(), key_arn(9)
    detector.process([create_key(T0, key), event("ScheduleKeyDeletion", T0 + timedelta(days=1), key),
                      _deleted(T0 + timedelta(days=8), key), event("Encrypt", T0 + timedelta(hours=1), key)])
    assert detector.ledger.get(key) is None
    assert [a for a in detector.tick(T0 + timedelta(days=120)) if a.rule == "unused-key"] == []


def test_a_key_x_principal_pair_seen_in_one_minute_costs_the_detector_a_few_hundred_bytes() -> None:
    """Each pair's usage-spike rate held an empty deque of its past minutes from its first call
    (760 bytes): many callers of many keys grew the detector by some 1 KB a pair."""
    detector, callers = Detector(), [role(f"app{n}") for n in range(50)]
    keys = [key_arn(n) for n in range(200)]
    detector.process([create_key(T0, key) for key in keys])
    calls = [event("Encrypt", T0 + timedelta(seconds=1), key, who) for key in keys for who in callers]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        detector.process(calls)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / len(calls) < 500  # its eventID remembered for duplicates, its rate, its ledger entry


def _rotated(at: datetime, key: str) -> dict[str, Any]:
    """KMS's RotateKey service event (ct-rotatekey)."""
    return dict(event("RotateKey", at, key, {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}, params={}),
                eventType="AwsServiceEvent", requestParameters=None)


def _multi_region(n: int, region: str = REGION) -> str:
    return key_arn(n).replace("key/", "key/mrk-").replace(f":{REGION}:", f":{region}:")


def test_multi_region_keys_rotated_and_deleted_leave_nothing_of_their_rotations() -> None:
    """The ledger kept every rotation time of every multi-Region key family for good, its keys
    deleted or not: a node rotating and deleting such keys for months grew with each."""
    ledger = KeyLedger()
    families = [(_multi_region(n), _multi_region(n, "eu-west-1")) for n in range(200)]
    for primary, replica in families:
        for record in (create_key(T0, primary), create_key(T0, replica),
                       *(_rotated(T0 + timedelta(days=90 * r), primary) for r in range(1, 6))):
            ledger.update(_read(record))
    assert ledger.families() == 200
    for primary, replica in families:
        for record in (_deleted(T0 + timedelta(days=600), primary), _deleted(T0 + timedelta(days=600), replica),
                       _rotated(T0 + timedelta(days=540), replica)):  # a late event of a deleted key
            ledger.update(_read(record))
    assert (len(ledger), ledger.families()) == (0, 0)


def test_a_replica_deleted_leaves_its_primary_priced_with_the_family_s_rotations() -> None:
    primary, replica = _multi_region(3), _multi_region(3, "eu-west-1")
    ledger = KeyLedger()
    for record in (create_key(T0, primary), create_key(T0, replica), _rotated(T0 + timedelta(days=90), primary),
                   _rotated(T0 + timedelta(days=90), replica), _deleted(T0 + timedelta(days=100), replica)):
        ledger.update(_read(record))
    record_primary = ledger.get(primary)
    assert record_primary is not None and ledger.rotations(record_primary) == 1  # one rotation, two Regions
    ledger.update(_read(_deleted(T0 + timedelta(days=200), primary)))
    assert ledger.families() == 0


def test_a_key_called_by_more_principals_than_the_bound_remembers_the_first_and_takes_none_after_for_new() -> None:
    """Each distinct caller of a key was kept for good: a key every federated user calls (each its
    own principal) grew the detector with each of them."""
    detector, key = Detector(), key_arn(5)
    app, scanner = role("app"), user("scanner")
    settled = [create_key(T0, key), event("Encrypt", T0 + timedelta(minutes=1), key, app),
               event("DescribeKey", T0 + timedelta(minutes=2), key, scanner)]  # remembered: a caller, no user
    crowd = [event("Encrypt", T0 + timedelta(days=8, milliseconds=n), key, user(f"fed{n}"))
             for n in range(KEY_PRINCIPALS + 100)]
    detector.process(settled + crowd)
    record = detector.ledger.get(key)
    assert record is not None and record.crowded and len(record.principals) == KEY_PRINCIPALS
    remembered = [r["userIdentity"]["arn"] for r in crowd if r["userIdentity"]["arn"] in record.principals]
    assert remembered == [r["userIdentity"]["arn"] for r in crowd[:KEY_PRINCIPALS - 3]]  # the first to call
    newcomers = [a.principal_arn for a in detector.alarms() if a.rule == "new-principal-on-key"]
    # And the first caller past the bound, new as the key was not crowded yet; none after it.
    assert newcomers == [*remembered, crowd[KEY_PRINCIPALS - 3]["userIdentity"]["arn"]]

    later = T0 + timedelta(days=9)
    past_the_bound, fresh = crowd[-1]["userIdentity"], user("mallory")
    detector.process([event("Encrypt", later, key, past_the_bound),
                      denied("Decrypt", later + timedelta(seconds=1), key, past_the_bound),
                      denied("Decrypt", later + timedelta(seconds=2), key, fresh),
                      event("Encrypt", later + timedelta(seconds=3), key, scanner)])
    alarms = detector.alarms()
    denials = [a for a in alarms if a.rule == "unauthorized-decrypt"]
    assert [a.principal_arn for a in denials] == [past_the_bound["arn"], fresh["arn"]]
    assert all("newPrincipalOnKey" not in a.details for a in denials)  # neither can be told new on it
    # A remembered caller is still known exactly: the scanner's first use is new on the key.
    assert [a.principal_arn for a in alarms if a.rule == "new-principal-on-key"][-1] == scanner["arn"]
    assert len(record.principals) == KEY_PRINCIPALS and record.principals[scanner["arn"]]


def test_the_ledger_remembers_a_key_s_first_callers_up_to_its_bound() -> None:
    ledger, key = KeyLedger(principals_limit=2), key_arn(6)
    first, second, third = user("first"), user("second"), user("third")
    ledger.update(_read(event("DescribeKey", T0, key, first)))
    ledger.update(_read(event("Encrypt", T0, key, second)))
    assert ledger.has_used(key, third["arn"]) is False  # not crowded yet: a newcomer is new
    ledger.update(_read(event("Encrypt", T0, key, third)))
    record = ledger.get(key)
    assert record is not None and record.principals == {first["arn"]: False, second["arn"]: True}
    assert record.crowded and ledger.has_used(key, third["arn"]) and ledger.has_used_cryptographically(key, "x")
    assert not ledger.has_used_cryptographically(key, first["arn"])  # remembered: known exactly
    ledger.update(_read(event("Decrypt", T0, key, first)))
    assert ledger.has_used_cryptographically(key, first["arn"])


def _spike_of(detector: Detector) -> UsageSpike:
    [spike] = [check for check in detector._checks if isinstance(check, UsageSpike)]
    return spike


def _spiking_app(key: str, start: datetime) -> list[dict[str, Any]]:
    """Two hours of 5 calls a minute by role app, then 400 calls at 10 a second."""
    app = role("app")
    burst = start + timedelta(minutes=120)
    return (steady_traffic(key, app, start, minutes=120, per_minute=5)
            + [event("Decrypt", burst + timedelta(milliseconds=100 * i), key, app) for i in range(400)])


def _spike_details(detector: Detector) -> list[tuple[str | None, str, dict[str, str]]]:
    return [(a.principal_arn, a.severity, a.details) for a in detector.alarms() if a.rule == "usage-spike"]


def test_a_key_called_by_more_principals_than_the_bound_keeps_the_call_rates_of_its_first_callers() -> None:
    """usage-spike kept a call rate for every distinct caller of a key: a key every federated user
    calls grew the detector with each of them."""
    key = key_arn(11)
    crowd = [event("Encrypt", T0 + timedelta(milliseconds=n), key, user(f"fed{n}")) for n in range(KEY_PRINCIPALS)]
    crowded, quiet = Detector(), Detector()
    crowded.process([create_key(T0 - timedelta(minutes=1), key), *crowd, *_spiking_app(key, T0)])
    quiet.process([create_key(T0 - timedelta(minutes=1), key), *_spiking_app(key, T0)])
    # The crowd, not the app; and the creator's pair, its CreateKey made before the key existed (bounded apart).
    assert _spike_of(crowded).pairs() == KEY_PRINCIPALS + 1
    assert _spike_details(quiet) and _spike_details(crowded) == []  # the app, past the bound, is not judged

    within = Detector()  # the app among the first callers: its spike fires as without the crowd
    within.process([create_key(T0 - timedelta(minutes=1), key), *_spiking_app(key, T0), *crowd])
    assert _spike_of(within).pairs() == KEY_PRINCIPALS + 1
    assert _spike_details(within) == _spike_details(quiet)


def test_pairs_idle_for_longer_than_the_baseline_are_let_go_at_a_tick_and_spike_as_before() -> None:
    """An idle pair's rate was kept for good, though its next call would start its history again."""
    key, later = key_arn(12), T0 + timedelta(days=8)
    once = [event("Encrypt", T0 + timedelta(seconds=n), key, user(f"fed{n}")) for n in range(500)]
    batch = steady_traffic(key, role("batch"), T0 + timedelta(days=2), minutes=120, per_minute=5)
    batch_spike = [event("Decrypt", later + timedelta(hours=3, milliseconds=100 * i), key, role("batch"))
                   for i in range(400)]
    before = [create_key(T0 - timedelta(minutes=1), key), *once, *_spiking_app(key, T0), *batch]
    after = _spiking_app(key, later)[:1]
    rest = _spiking_app(key, later)[1:] + batch_spike
    ticked, kept = Detector(), Detector()
    ticked.process(before + after)
    kept.process(before + after)
    assert _spike_of(ticked).pairs() == 503  # the creator, 500 callers, the app, the batch
    ticked.tick(later)
    assert _spike_of(ticked).pairs() == 3  # the app (called again), the batch (6 days idle), the creator's
    ticked.process(rest)
    kept.process(rest)
    alarms = _spike_details(ticked)
    app, batch = f"arn:aws:iam::{ACCOUNT}:role/app", f"arn:aws:iam::{ACCOUNT}:role/batch"
    # The app's history started again 8 days on; the batch's runs from its calls 6 days before.
    assert [(who, details["baselineDurationMinutes"]) for who, _, details in alarms] == [
        (app, "120"), (app, "120"), (batch, "8820")]
    assert alarms == _spike_details(kept)


def test_idle_pairs_are_let_go_as_of_the_last_event_when_the_tick_is_later() -> None:
    """A stream running behind the clock still brings the calls of the pairs a tick's time left idle."""
    key = key_arn(13)
    detector = Detector()
    detector.process([create_key(T0, key), event("Encrypt", T0, key, role("app"))])
    detector.tick(T0 + timedelta(days=30))
    assert _spike_of(detector).pairs() == 2


def test_a_full_key_takes_a_new_caller_once_an_idle_pair_is_let_go() -> None:
    ledger, key = KeyLedger(), key_arn(14)
    spike = UsageSpike(RuleSet()["usage-spike"], ledger, principals_limit=2)
    first, second, third = user("first"), user("second"), user("third")

    def feed(*records: dict[str, Any]) -> None:
        for record in records:
            read = _read(record)
            spike.observe(read)
            ledger.update(read)

    ledger.update(_read(create_key(T0, key)))  # a key seen to exist
    feed(event("Encrypt", T0, key, first), event("Encrypt", T0, key, second), event("Encrypt", T0, key, third))
    assert spike.pairs() == 2  # the third is not kept: the key has its two
    later = T0 + timedelta(days=7, minutes=30)
    feed(event("Encrypt", later, key, second), event("Encrypt", later, key, third))
    assert spike.pairs() == 2
    spike.tick(later)  # the first, idle for more than 7 days, is let go: the third takes its place
    assert spike.pairs() == 1
    feed(event("Encrypt", later + timedelta(seconds=1), key, third))
    assert spike.pairs() == 2
