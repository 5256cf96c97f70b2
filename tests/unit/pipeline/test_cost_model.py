"""The cost model's documented rules: worked example of docs/metrics.md, price table, classes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from keytrail.pipeline.cost import LIFECYCLE_SCHEMA, cost_report, lifecycle_events, price_classes
from keytrail.pipeline.frame import frame_from_records
from keytrail.pipeline.prices import PriceTable, load_price_table
from keytrail.pipeline.usage import USAGE_SCHEMA, usage_minutes
from tests.unit.reports.records import key_arn, record

KEY = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OCT1, NOV1 = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)


def _lifecycle(*events: tuple[datetime, str, str | None]) -> pl.DataFrame:
    rows = [
        {
            "keyArn": KEY,
            "eventTime": t,
            "eventName": n,
            "keySpec": spec,
            "keyManager": "CUSTOMER" if spec else None,
            "eventID": f"e{i}",
        }
        for i, (t, n, spec) in enumerate(events)
    ]
    return pl.DataFrame(rows, schema=LIFECYCLE_SCHEMA)


def _usage(*rows: tuple[str, str, int, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "minute": datetime(2026, 10, 5, 12, tzinfo=UTC),
                "keyArn": KEY,
                "principalArn": "p",
                "accountId": account,
                "eventName": op,
                "keyPairSpec": pair,
                "count": n,
                "errorCount": 0,
            }
            for op, account, n, pair in rows
        ],
        schema=USAGE_SCHEMA,
    )


def test_worked_example_of_the_documentation() -> None:
    lifecycle = _lifecycle(
        (datetime(2026, 10, 1, 10, 20, tzinfo=UTC), "CreateKey", "SYMMETRIC_DEFAULT"),
        (datetime(2026, 10, 11, 10, 20, tzinfo=UTC), "RotateKey", None),
        (datetime(2026, 10, 21, 10, 20, tzinfo=UTC), "ScheduleKeyDeletion", None),
    )
    usage = _usage(("Decrypt", "444455556666", 30_000, None))
    rows = {
        r["accountId"]: r
        for r in cost_report(usage, lifecycle, PriceTable(), OCT1, NOV1).iter_rows(named=True)
    }
    # 481 billed hours of October's 744: 240 at $1, 241 at $2 (the rotation's hour at the higher rate)
    assert rows["111122223333"]["keyMonths"] == Decimal("0.6465053763")  # 481 / 744
    assert rows["111122223333"]["keyCost"] == Decimal("0.9704301075")  # (240 + 2 * 241) / 744
    assert rows["111122223333"]["requests"] == 0
    assert rows["444455556666"]["requestCost"] == Decimal("0.09")
    free = cost_report(usage, lifecycle, PriceTable(free_tier_requests=20_000), OCT1, NOV1)
    assert free.filter(pl.col("accountId") == "444455556666")["requestCost"].item() == Decimal("0.03")


def test_aws_managed_keys_cost_nothing_to_store() -> None:
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT")).with_columns(keyManager=pl.lit("AWS"))
    report = cost_report(
        _usage(("Encrypt", "111122223333", 10_000, None)), lifecycle, PriceTable(), OCT1, NOV1
    )
    assert report["keyCost"].item() == 0 and report["requestCost"].item() == Decimal("0.03")


def test_the_creation_of_an_aws_managed_key_is_not_billed_as_a_request() -> None:
    # AWS KMS pricing: "You are not charged for ... creation and storage of AWS managed or AWS
    # owned KMS keys" (the service creates them on the account's first use); their use is billed.
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT")).with_columns(keyManager=pl.lit("AWS"))
    usage = _usage(("CreateKey", "111122223333", 1, None), ("Encrypt", "111122223333", 10_000, None))
    row = cost_report(usage, lifecycle, PriceTable(), OCT1, NOV1).row(0, named=True)
    assert (row["requests"], row["requestCost"]) == (10_000, Decimal("0.03"))


@pytest.mark.parametrize(
    ("spec", "operation", "pair", "expected"),
    [
        ("SYMMETRIC_DEFAULT", "Encrypt", None, "symmetric"),
        ("HMAC_256", "GenerateMac", None, "symmetric"),
        ("RSA_2048", "Decrypt", None, "rsa_2048"),
        ("RSA_4096", "Sign", None, "asymmetric"),
        ("ECC_NIST_P256", "Verify", None, "asymmetric"),
        ("ML_DSA_65", "Sign", None, "asymmetric"),
        ("SYMMETRIC_DEFAULT", "GenerateDataKeyPair", "RSA_3072", "rsa_generate_data_key_pair"),
        (
            "SYMMETRIC_DEFAULT",
            "GenerateDataKeyPairWithoutPlaintext",
            "ECC_NIST_P384",
            "ecc_generate_data_key_pair",
        ),
    ],
)
def test_price_classes(spec: str, operation: str, pair: str | None, expected: str) -> None:
    specs = pl.DataFrame({"keyArn": [KEY], "keySpec": [spec]})
    assert price_classes(_usage((operation, "1", 1, pair)), specs)["priceClass"].item() == expected


def test_price_table_from_toml_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('symmetric = 0.04\nfree_tier_requests = 20000\nkey_month = "1.10"\n')
    table = load_price_table(path)
    assert (table.symmetric, table.free_tier_requests, table.key_month) == (
        Decimal("0.04"),
        20000,
        Decimal("1.10"),
    )
    assert table.asymmetric == Decimal("0.15")


def test_a_price_table_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # TOML allows a UTF-8 BOM (toml-lang/toml#437): "Invalid statement (at line 1, column 1)".
    path = tmp_path / "prices.toml"
    path.write_bytes(b"\xef\xbb\xbfsymmetric = 0.04\n")
    assert load_price_table(path).symmetric == Decimal("0.04")


def test_price_table_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text("symetric = 0.04\n")
    with pytest.raises(ValueError, match="symetric"):
        load_price_table(path)


@pytest.mark.parametrize(("line", "message"), [
    ('symmetric = "abc"', "symmetric must be a price in USD from 0 to 1000000, not 'abc'"),
    ("symmetric = -1", "symmetric must be a price in USD"),
    ('key_month = "NaN"', "key_month must be a price in USD"),
    ('key_month = "1e999999"', "key_month must be a price in USD"),
    ("key_month = true", "key_month must be a price in USD"),
    ('billed_rotations = "x"', "billed_rotations must be a whole number from 0 to 1000000000000, not 'x'"),
    ("billed_rotations = 1.5", "billed_rotations must be a whole number from 0 to"),
    ("hours_per_month = -730", "hours_per_month must be a whole number from 0 to"),
    # Past a 64-bit integer: the cost tables' free tier ended in a polars traceback.
    ("free_tier_requests = 9223372036854775808", "free_tier_requests must be a whole number from 0 to 1000000000000"),
    ("hours_per_month = 100000000000000000000", "hours_per_month must be a whole number from 0 to"),
])
def test_price_table_refuses_values_that_are_not_prices_or_counts(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_price_table(path)


@pytest.mark.parametrize(("content", "reason"), [
    (b"key_month = \n", "not valid TOML (Invalid value (at line 1, column 13))"),
    (b"\xff\xfe", "not valid TOML (not UTF-8 text)"),  # it said "'utf-8' codec can't decode byte 0xff …"
    (b"key_month = " + b"[" * 2000 + b"]" * 2000, "not valid TOML (values nested too deeply)"),  # a RecursionError
])
def test_a_price_table_that_is_no_toml_is_named_with_its_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_price_table(path)
    assert str(info.value) == f"{path}: {reason}"


def test_price_table_counts_may_be_quoted(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('billed_rotations = "3"\n')
    assert load_price_table(path).billed_rotations == 3


@pytest.mark.parametrize("service_event", ["SynchronizeMultiRegionKey", "DeleteExpiredKeyMaterial"])
def test_kms_service_events_are_not_billed_as_requests(service_event: str) -> None:
    # keytrail's KMS records these as AwsServiceEvent (kms/multiregion.py, kms/importing.py):
    # no account made a request, so no account pays for one.
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT"))
    usage = _usage((service_event, "111122223333", 10_000, None), ("Decrypt", "111122223333", 10_000, None))
    report = cost_report(usage, lifecycle, PriceTable(), OCT1, NOV1)
    row = report.filter(pl.col("accountId") == "111122223333").row(0, named=True)
    assert row["requests"] == 10_000
    assert row["requestCost"] == Decimal("0.03")


def test_adjacent_windows_split_inside_an_hour_bill_that_hour_once() -> None:
    # Like minutes for requests, a clock hour belongs to the window its start lies in: reports
    # of consecutive windows add up to the report of their union.
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT"))
    middle = datetime(2026, 10, 15, 10, 20, tzinfo=UTC)
    empty = _usage()
    parts = [cost_report(empty, lifecycle, PriceTable(), low, high) for low, high in ((OCT1, middle), (middle, NOV1))]
    whole = cost_report(empty, lifecycle, PriceTable(), OCT1, NOV1)
    assert sum(p.get_column("keyCost").sum() for p in parts) == whole.get_column("keyCost").sum()
    assert whole.get_column("keyMonths").sum() == 1  # a whole month is one key-month


EVENT_AT = datetime(2026, 10, 6, 20, 35, tzinfo=UTC)
_LIFECYCLES_WITH_AN_EVENT_AT_20_35 = {
    "created": [(EVENT_AT, "CreateKey", "SYMMETRIC_DEFAULT")],
    "rotated": [(OCT1, "CreateKey", "SYMMETRIC_DEFAULT"), (EVENT_AT, "RotateKey", None)],
    "deletion cancelled": [(OCT1, "CreateKey", "SYMMETRIC_DEFAULT"),
                           (datetime(2026, 10, 3, 12, tzinfo=UTC), "ScheduleKeyDeletion", None),
                           (EVENT_AT, "CancelKeyDeletion", None)],
    "deletion scheduled": [(OCT1, "CreateKey", "SYMMETRIC_DEFAULT"), (EVENT_AT, "ScheduleKeyDeletion", None)],
}


@pytest.mark.parametrize("story", list(_LIFECYCLES_WITH_AN_EVENT_AT_20_35))
@pytest.mark.parametrize("middle", [timedelta(minutes=-35), timedelta(minutes=-5), timedelta(0),
                                    timedelta(seconds=30), timedelta(minutes=25)])
def test_windows_split_inside_the_hour_of_a_lifecycle_event_add_up_to_the_whole(story: str,
                                                                               middle: timedelta) -> None:
    # A key created at 20:35 and a split at 20:30 (or at 20:35): the first window ended before its
    # CreateKey, the second bills from 21:00, so neither billed the hour 20:00 (nor the rotated rate
    # of that hour, nor a waiting period whose cancellation it holds).
    _assert_halves_add_up(_lifecycle(*_LIFECYCLES_WITH_AN_EVENT_AT_20_35[story]), EVENT_AT + middle)


def _assert_halves_add_up(lifecycle: pl.DataFrame, split: datetime) -> None:
    """October's storage (key-months, cost) split at `split` adds up to the whole month's."""
    before, after = _storage_of(lifecycle, OCT1, split), _storage_of(lifecycle, split, NOV1)
    whole = _storage_of(lifecycle, OCT1, NOV1)
    assert (before[0] + after[0], before[1] + after[1]) == whole


def test_a_window_ending_inside_the_hour_a_key_is_created_in_bills_that_hour() -> None:
    # docs/metrics.md: a window bills the hours that start in it, when the key was billable at any
    # moment of them; the window from 20:30 on bills from 21:00.
    lifecycle = _lifecycle((EVENT_AT, "CreateKey", "SYMMETRIC_DEFAULT"))
    assert _storage_of(lifecycle, OCT1, EVENT_AT - timedelta(minutes=5)) == (Decimal("0.0013440860"),) * 2  # 1 / 744
    assert _storage_of(lifecycle, EVENT_AT - timedelta(minutes=5), EVENT_AT + timedelta(minutes=25)) == (0, 0)


def test_a_window_that_ends_before_it_starts_stores_nothing() -> None:
    # `keytrail cost --since` past the last event ended its window before its start, and billed
    # the key's storage of the hours between as a negative amount.
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT"))
    assert cost_report(_usage(), lifecycle, PriceTable(), NOV1, OCT1 + timedelta(days=5)).is_empty()


def test_a_row_s_request_cost_is_rounded_once_over_its_price_classes() -> None:
    # Two classes of 0.00000000005 USD each make 0.0000000001 USD; rounding each class first
    # (half to even) made 0 of both.
    prices = PriceTable(symmetric=Decimal("0.0000005"), ecc_generate_data_key_pair=Decimal("0.0000005"))
    usage = _usage(("Decrypt", "444455556666", 1, None), ("GenerateDataKeyPair", "444455556666", 1, "ECC_NIST_P256"))
    report = cost_report(usage, _lifecycle(), prices, OCT1, NOV1)
    assert report.get_column("requestCost").to_list() == [Decimal("0.0000000001")]


def _storage_of(lifecycle: pl.DataFrame, since: datetime | None, until: datetime,
                prices: PriceTable | None = None) -> tuple[Decimal, Decimal]:
    report = cost_report(_usage(), lifecycle, prices or PriceTable(), since, until)
    return report["keyMonths"].sum(), report["keyCost"].sum()


@pytest.mark.parametrize(("month", "hours"), [(datetime(2026, 2, 1, tzinfo=UTC), 672),
                                              (datetime(2028, 2, 1, tzinfo=UTC), 696),
                                              (datetime(2026, 4, 1, tzinfo=UTC), 720),
                                              (datetime(2026, 10, 1, tzinfo=UTC), 744)])
def test_a_key_kept_a_whole_calendar_month_costs_one_key_month_whatever_its_length(
        month: datetime, hours: int) -> None:
    # $1.00 per key-month, prorated hourly: February's 672 hours are one key-month as October's 744 are.
    created = month - timedelta(days=3)
    end = month + timedelta(hours=hours)
    assert _storage_of(_lifecycle((created, "CreateKey", "SYMMETRIC_DEFAULT")), month, end) == (1, 1)


def test_a_key_created_mid_month_bills_the_hours_left_in_that_month() -> None:
    # Created 2026-11-15 12:30 UTC: 15 days and 12 hours of November's 720 remain (12:00 billed whole).
    created = datetime(2026, 11, 15, 12, 30, tzinfo=UTC)
    months, cost = _storage_of(_lifecycle((created, "CreateKey", "SYMMETRIC_DEFAULT")),
                               datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    assert months == cost == Decimal("0.5166666667")  # 372 / 720


def test_an_hourly_span_over_a_month_end_is_split_by_each_month_s_hours() -> None:
    # Oct 31 22:00 to Nov 1 02:00:01 (the deletion's second): 2 of October's 744 hours, 3 of November's 720.
    lifecycle = _lifecycle((datetime(2026, 10, 31, 22, tzinfo=UTC), "CreateKey", "SYMMETRIC_DEFAULT"),
                           (datetime(2026, 11, 1, 2, tzinfo=UTC), "ScheduleKeyDeletion", None))
    months, _ = _storage_of(lifecycle, None, datetime(2026, 12, 1, tzinfo=UTC))
    assert months == Decimal("0.0068548387")  # 2/744 + 3/720 = 0.00268817 + 0.00416667


def test_a_fixed_hours_per_month_divides_every_hour_by_it() -> None:
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT"))
    months, _ = _storage_of(lifecycle, OCT1, NOV1, PriceTable(hours_per_month=730))
    assert months == Decimal("1.0191780822")  # 744 / 730


def test_a_cancelled_deletion_bills_the_waiting_period_as_if_never_scheduled() -> None:
    # Created Oct 1 00:00, scheduled Oct 11 00:00, cancelled Oct 21 00:00: all of October is billed.
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT"),
                           (datetime(2026, 10, 11, tzinfo=UTC), "ScheduleKeyDeletion", None),
                           (datetime(2026, 10, 21, tzinfo=UTC), "CancelKeyDeletion", None))
    assert _storage_of(lifecycle, OCT1, NOV1) == (1, 1)
    # As of Oct 16 the deletion is still pending: only Oct 1 to Oct 11 01:00 (241 of 744 hours) is
    # billed, the scheduling's hour included (the key was billable in its first second).
    assert _storage_of(lifecycle, OCT1, datetime(2026, 10, 16, tzinfo=UTC))[0] == Decimal("0.3239247312")


def test_a_waiting_period_cancelled_in_a_later_window_is_charged_in_that_window() -> None:
    # Scheduled Oct 21 00:00, cancelled Nov 11 00:00: October's report (as of Nov 1, before the
    # cancellation) bills Oct 1 to Oct 21 01:00; November's bills Oct 21 01:00-31 (263/744) and all of November.
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT"),
                           (datetime(2026, 10, 21, tzinfo=UTC), "ScheduleKeyDeletion", None),
                           (datetime(2026, 11, 11, tzinfo=UTC), "CancelKeyDeletion", None))
    october = _storage_of(lifecycle, OCT1, NOV1)[0]
    november = _storage_of(lifecycle, NOV1, datetime(2026, 12, 1, tzinfo=UTC))[0]
    assert october == Decimal("0.6465053763")  # 481 / 744
    assert november == Decimal("1.3534946237")  # 263 / 744 + 1
    assert october + november == 2  # as if the deletion had never been scheduled


def test_a_deletion_that_ran_its_course_is_never_billed_for_its_waiting_period() -> None:
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT"),
                           (datetime(2026, 10, 11, tzinfo=UTC), "ScheduleKeyDeletion", None),
                           (datetime(2026, 10, 18, tzinfo=UTC), "DeleteKey", None))
    assert _storage_of(lifecycle, OCT1, NOV1)[0] == Decimal("0.3239247312")  # 241 / 744: to Oct 11 01:00


def test_worked_example_with_the_deletion_cancelled() -> None:
    lifecycle = _lifecycle(
        (datetime(2026, 10, 1, 10, 20, tzinfo=UTC), "CreateKey", "SYMMETRIC_DEFAULT"),
        (datetime(2026, 10, 11, 10, 20, tzinfo=UTC), "RotateKey", None),
        (datetime(2026, 10, 21, 10, 20, tzinfo=UTC), "ScheduleKeyDeletion", None),
        (datetime(2026, 10, 25, 10, 20, tzinfo=UTC), "CancelKeyDeletion", None),
    )
    # 240 h at $1, then 241 + 95 (restored) + 158 = 494 h at $2, of October's 744
    assert _storage_of(lifecycle, OCT1, NOV1) == (Decimal("0.9865591398"), Decimal("1.6505376344"))


def _call(name: str, key: str, params: dict[str, str], *, error: str | None = None,
          create_spec: str | None = None) -> dict[str, object]:
    event = record(name, datetime(2026, 10, 5, 12, tzinfo=UTC), key, error=error)
    event["requestParameters"] = {"keyId": key, **params}
    if create_spec:
        event["responseElements"] = {"keyMetadata": {"Arn": key, "KeySpec": create_spec, "KeyManager": "CUSTOMER"}}
    return event


def test_requests_on_keys_created_before_the_logs_price_by_the_algorithm_their_calls_name() -> None:
    # CloudTrail files rarely reach back to a key's CreateKey; a successful Sign/Encrypt names an
    # asymmetric algorithm, so the key is asymmetric: $0.15 per 10,000, not $0.03, and no free tier.
    ecc, rsa, sym, unknown, rsa2048 = (key_arn(n) for n in ("ecc", "rsa", "sym", "unknown", "rsa2048"))
    events = [_call("Sign", ecc, {"signingAlgorithm": "ECDSA_SHA_256"}) for _ in range(100)]
    events += [_call("Sign", ecc, {"signingAlgorithm": "ECDSA_SHA_256"}, error="AccessDeniedException")]
    events += [_call("Encrypt", rsa, {"encryptionAlgorithm": "RSAES_OAEP_SHA_256"}) for _ in range(100)]
    events += [_call("Decrypt", sym, {"encryptionAlgorithm": "SYMMETRIC_DEFAULT"}) for _ in range(100)]
    events += [_call("Sign", unknown, {"signingAlgorithm": "RSASSA_PSS_SHA_256"}, error="AccessDeniedException")]
    events += [_call("CreateKey", rsa2048, {}, create_spec="RSA_2048")]
    events += [_call("Encrypt", rsa2048, {"encryptionAlgorithm": "RSAES_OAEP_SHA_1"}) for _ in range(99)]
    frame = frame_from_records(events)
    until = datetime(2026, 10, 6, tzinfo=UTC)
    for free_tier in (0, 20_000):
        report = cost_report(usage_minutes(frame), lifecycle_events(frame), PriceTable(free_tier_requests=free_tier),
                             OCT1, until)
        cost = dict(report.select("keyArn", "requestCost").iter_rows())
        assert cost[ecc] == Decimal("0.001515")  # 101 x 0.15 / 10,000: the denied call is on the same key
        assert cost[rsa] == Decimal("0.0015")  # RSA of unknown size: the dearer asymmetric class
        assert cost[rsa2048] == Decimal("0.0003")  # CreateKey's RSA_2048 wins: 100 x 0.03 / 10,000
        assert cost[sym] == (Decimal(0) if free_tier else Decimal("0.0003"))
        assert cost[unknown] == (Decimal(0) if free_tier else Decimal("0.000003"))  # a failed call proves nothing


def test_a_window_reaching_the_last_representable_month_is_billed_not_refused() -> None:
    # `keytrail cost --until 9999-12-31T23:59:59` failed with "year 10000 is out of range".
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT"))
    december = datetime(9999, 12, 1, tzinfo=UTC)
    months, _ = _storage_of(lifecycle, december, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert months == 1  # all 744 hours of December 9999, the last one begun before --until


PRIMARY = "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"
REPLICA = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"
LATE_REPLICA = "arn:aws:kms:ap-south-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab"


def test_a_multi_region_primary_s_rotation_is_billed_on_each_replica_too() -> None:
    # Replicas share the primary's key material, rotations included, and each is priced as a
    # key: created Oct 1 (primary), Oct 11 (replica), rotated Oct 21, a replica made Oct 25.
    rows = [(PRIMARY, OCT1, "CreateKey"), (REPLICA, datetime(2026, 10, 11, tzinfo=UTC), "ReplicateKey"),
            (PRIMARY, datetime(2026, 10, 21, tzinfo=UTC), "RotateKey"),
            (LATE_REPLICA, datetime(2026, 10, 25, tzinfo=UTC), "ReplicateKey")]
    lifecycle = pl.DataFrame([{"keyArn": k, "eventTime": t, "eventName": n, "keySpec": "SYMMETRIC_DEFAULT",
                               "keyManager": "CUSTOMER", "eventID": f"e{i}"} for i, (k, t, n) in enumerate(rows)],
                             schema=LIFECYCLE_SCHEMA)
    cost = dict(cost_report(_usage(), lifecycle, PriceTable(), OCT1, NOV1).select("keyArn", "keyCost").iter_rows())
    assert cost[PRIMARY] == Decimal("1.3548387097")  # (480 h x $1 + 264 h x $2) / 744
    assert cost[REPLICA] == Decimal("1.0322580645")  # (240 h x $1 + 264 h x $2) / 744
    assert cost[LATE_REPLICA] == Decimal("0.4516129032")  # born rotated: 168 h x $2 / 744


def test_a_key_created_before_the_logs_and_its_deletion_cancelled_is_billed_from_the_scheduling() -> None:
    # The ScheduleKeyDeletion proves the key existed; cancelled, it is billed as if never scheduled:
    # from Oct 11 00:00 (the earliest it is known to exist) to the month's end, 504 of 744 hours.
    lifecycle = _lifecycle((datetime(2026, 10, 11, tzinfo=UTC), "ScheduleKeyDeletion", None),
                           (datetime(2026, 10, 21, tzinfo=UTC), "CancelKeyDeletion", None))
    assert _storage_of(lifecycle, OCT1, NOV1)[0] == Decimal("0.6774193548")


def test_the_scheduling_hour_of_a_key_created_before_the_logs_is_billed_when_cancelled() -> None:
    # Scheduled Oct 11 00:30, cancelled Oct 21 00:00: Oct 11 00:00 to the month's end, 504 of 744 hours.
    lifecycle = _lifecycle((datetime(2026, 10, 11, 0, 30, tzinfo=UTC), "ScheduleKeyDeletion", None),
                           (datetime(2026, 10, 21, tzinfo=UTC), "CancelKeyDeletion", None))
    assert _storage_of(lifecycle, OCT1, NOV1)[0] == Decimal("0.6774193548")


def test_a_span_of_several_months_bills_each_whole_month_as_one_key_month() -> None:
    # Oct 15 12:00 to Mar 10 2027 01:00: 396 of October's 744 hours, Nov-Feb whole, 217 of March's 744.
    lifecycle = _lifecycle((datetime(2026, 10, 15, 12, tzinfo=UTC), "CreateKey", "SYMMETRIC_DEFAULT"),
                           (datetime(2027, 3, 10, tzinfo=UTC), "ScheduleKeyDeletion", None))
    assert _storage_of(lifecycle, None, datetime(2028, 1, 1, tzinfo=UTC))[0] == Decimal("4.8239247312")


def test_a_keys_lifecycle_split_over_two_nodes_logs_is_stored_twice_in_the_sum_of_their_costs() -> None:
    """Why the dashboard takes the system's cost from the consumer of every node's events, not the
    sum of each node's own (dashboards/build.py): CreateKey logged by one node, the deletion
    scheduled and cancelled on the other, which bills the key from the ScheduleKeyDeletion (the
    earliest it knows of it) while the first bills it throughout."""
    created = (datetime(2026, 10, 1, 10, 20, tzinfo=UTC), "CreateKey", "SYMMETRIC_DEFAULT")
    scheduled = (datetime(2026, 10, 10, 10, 20, tzinfo=UTC), "ScheduleKeyDeletion", None)
    cancelled = (datetime(2026, 10, 12, 10, 20, tzinfo=UTC), "CancelKeyDeletion", None)
    no_use = _usage().clear()

    def key_months(*events: tuple[datetime, str, str | None]) -> Decimal:
        return Decimal(cost_report(no_use, _lifecycle(*events), PriceTable(), OCT1, NOV1)["keyMonths"].sum())

    whole = key_months(created, scheduled, cancelled)
    assert whole == Decimal("0.9865591398")  # Oct 1 10:00 to the month's end: 734 of 744 hours
    assert key_months(created) + key_months(scheduled, cancelled) > whole + Decimal("0.5")


def test_a_key_named_without_an_owner_account_is_left_out_of_storage_not_a_crash() -> None:
    # An imported CloudTrail record may name its key `key/<id>` in resources, or a ReplicateKey a
    # replica ARN that is no ARN: `cost`, `report` and `consume` stopped on an IndexError at every
    # run over an event log holding one. Such keys have no owner to bill; their requests still count.
    bare = record("CreateKey", datetime(2026, 10, 5, 12, tzinfo=UTC), KEY)
    bare["resources"] = [{"ARN": "key/1234abcd-12ab-34cd-56ef-1234567890ab", "accountId": "111122223333"}]
    replicate = record("ReplicateKey", datetime(2026, 10, 5, 13, tzinfo=UTC), KEY)
    replicate["responseElements"] = {"replicaKeyMetadata": {"arn": "mrk-1234abcd12ab34cd56ef1234567890ab"}}
    frame = frame_from_records([bare, replicate, record("CreateKey", datetime(2026, 10, 5, 12, tzinfo=UTC), KEY)])
    report = cost_report(usage_minutes(frame), lifecycle_events(frame), PriceTable(), OCT1, NOV1)
    rows = {r["keyArn"]: r for r in report.iter_rows(named=True)}
    assert rows[KEY]["keyMonths"] == Decimal("0.8548387097")  # Oct 5 12:00 to Nov 1: 636 of 744 hours
    assert rows["key/1234abcd-12ab-34cd-56ef-1234567890ab"]["keyMonths"] == 0
    assert rows["key/1234abcd-12ab-34cd-56ef-1234567890ab"]["requests"] == 1


TOP = datetime(2026, 10, 6, 20, tzinfo=UTC)  # an event in the first second of a clock hour


@pytest.mark.parametrize("leaving", ["ScheduleKeyDeletion", "DeleteKey"])
def test_a_key_leaving_its_billable_state_at_the_top_of_an_hour_is_billed_that_hour(leaving: str) -> None:
    # CloudTrail times have whole seconds: an event at 20:00:00 happened within [20:00:00, 20:00:01),
    # so the key was billable at a moment of the hour 20:00: Oct 1 00:00 to Oct 6 21:00, 141 hours.
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT"), (TOP, leaving, None))
    assert _storage_of(lifecycle, OCT1, NOV1)[0] == Decimal("0.1895161290")  # 141 / 744


def test_a_key_created_and_scheduled_for_deletion_in_the_first_second_of_an_hour_bills_that_hour() -> None:
    lifecycle = _lifecycle((TOP, "CreateKey", "SYMMETRIC_DEFAULT"), (TOP, "ScheduleKeyDeletion", None))
    assert _storage_of(lifecycle, OCT1, NOV1) == (Decimal("0.0013440860"),) * 2  # 1 / 744


def test_a_deletion_scheduled_and_cancelled_at_the_tops_of_hours_bills_each_hour_once() -> None:
    # The scheduling's hour is billed by the run it ends: the waiting period restored from the next one.
    lifecycle = _lifecycle((OCT1, "CreateKey", "SYMMETRIC_DEFAULT"), (TOP, "ScheduleKeyDeletion", None),
                           (TOP + timedelta(hours=2), "CancelKeyDeletion", None))
    assert _storage_of(lifecycle, OCT1, NOV1) == (1, 1)


_LIFECYCLES_WITH_AN_EVENT_AT_20_00 = {
    "deletion scheduled": [(OCT1, "CreateKey", "SYMMETRIC_DEFAULT"), (TOP, "ScheduleKeyDeletion", None)],
    "deleted": [(OCT1, "CreateKey", "SYMMETRIC_DEFAULT"), (TOP, "DeleteKey", None)],
    "created and scheduled in one second": [(TOP, "CreateKey", "SYMMETRIC_DEFAULT"),
                                            (TOP, "ScheduleKeyDeletion", None)],
    "deletion scheduled, then cancelled": [(OCT1, "CreateKey", "SYMMETRIC_DEFAULT"),
                                           (TOP, "ScheduleKeyDeletion", None),
                                           (TOP + timedelta(hours=2), "CancelKeyDeletion", None)],
    "deletion cancelled": [(OCT1, "CreateKey", "SYMMETRIC_DEFAULT"),
                           (datetime(2026, 10, 3, 12, tzinfo=UTC), "ScheduleKeyDeletion", None),
                           (TOP, "CancelKeyDeletion", None)],
    "scheduled before the logs, then cancelled": [(TOP, "ScheduleKeyDeletion", None),
                                                  (TOP + timedelta(hours=3), "CancelKeyDeletion", None)],
    "rotated": [(OCT1, "CreateKey", "SYMMETRIC_DEFAULT"), (TOP, "RotateKey", None)],
}


@pytest.mark.parametrize("story", list(_LIFECYCLES_WITH_AN_EVENT_AT_20_00))
@pytest.mark.parametrize("middle", [timedelta(hours=-1), timedelta(seconds=-1), timedelta(0), timedelta(seconds=1),
                                    timedelta(minutes=30), timedelta(hours=1), timedelta(hours=2, seconds=1)])
def test_windows_split_around_an_event_at_the_top_of_an_hour_add_up_to_the_whole(story: str,
                                                                                 middle: timedelta) -> None:
    _assert_halves_add_up(_lifecycle(*_LIFECYCLES_WITH_AN_EVENT_AT_20_00[story]), TOP + middle)


def test_the_create_key_kms_logs_for_a_replicate_key_is_counted_in_usage_but_not_billed() -> None:
    # ReplicateKey logs, besides the caller's record, a CreateKey in the replica's Region invoked by
    # kms.amazonaws.com (docs/multi-region-keys.md): KMS's doing; the caller pays for the ReplicateKey.
    at = datetime(2026, 10, 5, 12, tzinfo=UTC)
    created = record("CreateKey", at, PRIMARY)
    replicate = record("ReplicateKey", at, PRIMARY)
    replicate["responseElements"] = {"replicaKeyMetadata": {"arn": REPLICA, "KeySpec": "SYMMETRIC_DEFAULT",
                                                            "KeyManager": "CUSTOMER"}}
    by_kms = record("CreateKey", at, REPLICA)
    by_kms["userIdentity"]["invokedBy"] = "kms.amazonaws.com"
    frame = frame_from_records([created, replicate, by_kms])
    usage = usage_minutes(frame)
    assert usage.filter(pl.col("keyArn") == REPLICA)["count"].to_list() == [1]  # usage still counts it
    rows = {r["keyArn"]: r for r in cost_report(usage, lifecycle_events(frame), PriceTable(), OCT1, NOV1).iter_rows(
        named=True)}
    assert (rows[PRIMARY]["requests"], rows[PRIMARY]["requestCost"]) == (2, Decimal("0.000006"))
    assert (rows[REPLICA]["requests"], rows[REPLICA]["requestCost"]) == (0, 0)
    assert rows[REPLICA]["keyMonths"] == Decimal("0.8548387097")  # stored from its creation: 636 of 744 hours
