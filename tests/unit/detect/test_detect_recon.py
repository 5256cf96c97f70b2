"""`key-reconnaissance`: one principal reading the metadata of many keys within the window."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tests.unit.detect.records import ACCOUNT, T0, denied, event, key_arn, role, user

from keytrail.detect import Detector, RuleSet
from keytrail.detect.checks.recon import KeyReconnaissance

MALLORY = user("mallory")
NAMES = ("DescribeKey", "GetKeyPolicy", "ListGrants")


def _reads(who: dict[str, Any], keys: range, start: datetime = T0, refused: int = 0) -> list[dict[str, Any]]:
    """One metadata call per key, a second apart, names in turn; the first `refused` denied."""
    records = []
    for n, k in enumerate(keys):
        name, at = NAMES[n % len(NAMES)], start + timedelta(seconds=n)
        records.append(denied(name, at, key_arn(k), who) if n < refused else event(name, at, key_arn(k), who))
    return records


def _recon(records: list[dict[str, Any]], rules: RuleSet | None = None) -> list[Any]:
    detector = Detector(rules)
    detector.process(records)
    return [alarm for alarm in detector.alarms() if alarm.rule == "key-reconnaissance"]


def test_a_principal_reading_twenty_keys_within_the_hour_raises_one_low_alarm() -> None:
    records = _reads(MALLORY, range(25))
    [alarm] = _recon(records)
    assert (alarm.severity, alarm.key_arn, alarm.principal_arn) == ("LOW", None, MALLORY["arn"])
    assert alarm.count == 25 and alarm.event_ids == tuple(record["eventID"] for record in records[:20])
    assert (alarm.first_seen, alarm.last_seen) == (T0, T0 + timedelta(seconds=24))
    assert alarm.details["keyCount"] == "25" and alarm.details["eventNames"] == "DescribeKey,GetKeyPolicy,ListGrants"
    assert alarm.details["deniedKeyCount"] == "0" and alarm.details["sourceIPAddresses"] == "192.0.2.0"


def test_nineteen_keys_or_the_same_key_read_again_raise_nothing() -> None:
    assert _recon(_reads(MALLORY, range(19))) == []
    assert _recon(_reads(MALLORY, range(19)) + [event("DescribeKey", T0 + timedelta(minutes=1), key_arn(3), MALLORY)
                                               for _ in range(30)]) == []


def test_keys_read_more_than_the_window_apart_are_not_counted_together() -> None:
    slow = [event("DescribeKey", T0 + timedelta(minutes=4 * n), key_arn(n), MALLORY) for n in range(30)]
    assert _recon(slow) == []  # 15 keys an hour at most


def test_five_denied_keys_make_it_medium() -> None:
    [alarm] = _recon(_reads(MALLORY, range(20), refused=5))
    assert (alarm.severity, alarm.details["deniedKeyCount"]) == ("MEDIUM", "5")
    [alarm] = _recon(_reads(MALLORY, range(20), refused=4))
    assert alarm.severity == "LOW"


def test_callers_with_no_arn_reading_many_keys_each_raise_their_own_alarm() -> None:
    """Stolen SAML or web identity credentials enumerating keys raised nothing: a caller with no
    ARN was passed over. It is told apart by account and access key, as `unauthorized-decrypt` does."""
    def saml(name: str) -> dict[str, Any]:
        return {"type": "SAMLUser", "principalId": f"idp:{name}", "userName": name, "accountId": ACCOUNT,
                "accessKeyId": f"ASIA{name.upper()}0000000001"}

    alarms = _recon(_reads(saml("ann"), range(20)) + _reads(saml("bo"), range(20), start=T0 + timedelta(minutes=1)))
    assert sorted((a.principal_arn, a.details["accessKeyIds"], a.count) for a in alarms) == [
        (None, "ASIAANN0000000001", 20), (None, "ASIABO0000000001", 20)]
    assert alarms[0].summary.startswith(
        f"a caller with no ARN (account {ACCOUNT}, access key ASIAANN0000000001) read the metadata of 20 keys")


def test_each_principal_is_counted_on_its_own() -> None:
    assert _recon(_reads(MALLORY, range(10)) + _reads(user("eve"), range(10, 20))) == []


def test_allow_listed_principals_and_aws_services_are_passed_over() -> None:
    scanner = role("inventory")
    rules = RuleSet().override({"key-reconnaissance": {"parameters": {
        "allow_principals": [f"arn:aws:iam::{ACCOUNT}:role/inventory"]}}})
    assert _recon(_reads(scanner, range(30)), rules) == []
    assert _recon(_reads(role("ConfigRecorder", invoked_by="config.amazonaws.com"), range(30))) == []
    assert len(_recon(_reads(scanner, range(30)))) == 1


def test_a_principal_s_survey_is_let_go_of_once_its_window_has_closed() -> None:
    detector = Detector()
    detector.process(_reads(MALLORY, range(5)) + _reads(user("eve"), range(30)))
    [recon] = [check for check in detector._checks if isinstance(check, KeyReconnaissance)]
    assert recon.surveyed() == 35
    detector.tick(T0 + timedelta(minutes=30))
    assert recon.surveyed() == 35
    detector.tick(T0 + timedelta(hours=2))
    assert recon.surveyed() == 35  # as of the last call read: the stream may be behind the clock
    detector.process([event("DescribeKey", T0 + timedelta(hours=2), key_arn(1), user("trent"))])
    detector.tick(T0 + timedelta(hours=2))
    assert recon.surveyed() == 1


def test_a_principal_enumerating_random_keys_is_remembered_on_a_bounded_number_of_them(monkeypatch: Any) -> None:
    monkeypatch.setattr("keytrail.detect.checks.recon.MAX_SURVEYED_KEYS", 25)
    detector = Detector()
    detector.process(_reads(MALLORY, range(40), refused=40))
    [recon] = [check for check in detector._checks if isinstance(check, KeyReconnaissance)]
    [alarm] = [a for a in detector.alarms() if a.rule == "key-reconnaissance"]
    assert recon.surveyed() == 25 and (alarm.details["keyCount"], alarm.details["deniedKeyCount"]) == ("25", "25")


def test_the_alarm_covers_the_enumeration_from_its_first_call_not_from_the_key_that_raised_it() -> None:
    # It counted, started and listed events from the 20th key on: the enumeration's first 19 keys
    # and their first calls (when, from where) were missing from the alarm.
    first = _reads(MALLORY, range(10))
    first[0]["sourceIPAddress"] = "198.51.100.7"  # the enumeration began elsewhere
    again = [event("GetKeyPolicy", T0 + timedelta(seconds=20 + n), key_arn(n), MALLORY) for n in range(3)]
    rest = _reads(MALLORY, range(10, 22), start=T0 + timedelta(minutes=1))
    [alarm] = _recon(first + again + rest)
    assert alarm.count == 10 + 3 + 12  # every call of the window, the keys read again included
    assert (alarm.first_seen, alarm.last_seen) == (T0, T0 + timedelta(minutes=1, seconds=11))
    # The first call on each of the first 19 keys, then the one reaching 20 keys, then one more.
    firsts = [record["eventID"] for record in first + rest[:9]]
    assert alarm.event_ids == (*firsts, rest[9]["eventID"])
    assert alarm.details["keyCount"] == "22"
    assert alarm.details["sourceIPAddresses"] == "198.51.100.7,192.0.2.0"


def test_calls_held_on_keys_that_left_the_window_are_not_on_the_alarm() -> None:
    early = _reads(MALLORY, range(100, 105))  # five keys read, then nothing for two hours
    later = _reads(MALLORY, range(20), start=T0 + timedelta(hours=2))
    [alarm] = _recon(early + later)
    assert (alarm.count, alarm.first_seen) == (20, T0 + timedelta(hours=2))
    assert alarm.event_ids == tuple(record["eventID"] for record in later)


def test_calls_held_again_after_the_survey_fell_below_min_keys_join_the_open_alarm() -> None:
    first = _reads(MALLORY, range(20))  # raised at once: 20 keys within 20 s
    # An hour and a half later, the first keys have left the window and the alarm is still open
    # (within its window of the last call): 20 more keys, read slowly, raise it again.
    later = [event("DescribeKey", T0 + timedelta(minutes=50 + 2 * n), key_arn(100 + n), MALLORY) for n in range(20)]
    [alarm] = _recon(first + later)
    assert alarm.count == 40 and alarm.first_seen == T0
    assert alarm.event_ids == tuple(record["eventID"] for record in first)  # the first 20


def test_a_tick_as_of_a_clock_ahead_of_the_stream_does_not_drop_keys_its_later_calls_are_judged_with() -> None:
    # A live detector ticks as of the clock; behind the clock by more than the window, it let go of
    # every key of the survey at each tick, and an enumeration read then was never raised (a
    # restart, replaying without those ticks, raised it).
    detector = Detector()
    detector.process(_reads(MALLORY, range(19)))
    detector.tick(T0 + timedelta(hours=2))
    detector.process(_reads(MALLORY, range(19, 20), start=T0 + timedelta(minutes=1)))
    [alarm] = [a for a in detector.alarms() if a.rule == "key-reconnaissance"]
    assert (alarm.count, alarm.first_seen) == (20, T0)


def test_a_key_read_all_day_puts_on_the_alarm_only_its_calls_of_the_window() -> None:
    # An application reading one key every ten minutes, then 19 more keys: the alarm counted the
    # day's calls on that key and began a day before its one-hour window.
    steady = [event("DescribeKey", T0 + timedelta(minutes=10 * n), key_arn(0), MALLORY) for n in range(145)]
    survey = _reads(MALLORY, range(1, 20), start=T0 + timedelta(days=1, seconds=1))
    [alarm] = _recon(steady + survey)
    assert alarm.last_seen - alarm.first_seen <= timedelta(hours=1)
    assert alarm.count <= 6 + 19  # the calls on key 0 within the hour, at most, and the survey


def test_a_late_call_on_a_key_does_not_keep_the_key_in_the_window_past_its_last_call() -> None:
    # A late call (a slower partition) moved its key behind keys read after it, where the window
    # did not reach it: the key was still counted an hour after it left the window.
    first = event("DescribeKey", T0, key_arn(0), MALLORY)
    others = _reads(MALLORY, range(1, 19), start=T0 + timedelta(minutes=30))
    late = event("DescribeKey", T0 - timedelta(minutes=1), key_arn(0), MALLORY)
    next_key = event("DescribeKey", T0 + timedelta(minutes=65), key_arn(19), MALLORY)
    assert _recon([first, *others, late, next_key]) == []  # 19 keys within the hour before it
