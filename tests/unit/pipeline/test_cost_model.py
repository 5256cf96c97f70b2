"""The cost model's documented rules: worked example of docs/metrics.md, price table, classes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from keytrail.pipeline.cost import LIFECYCLE_SCHEMA, cost_report, price_classes
from keytrail.pipeline.prices import PriceTable, load_price_table
from keytrail.pipeline.usage import USAGE_SCHEMA

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
    assert rows["111122223333"]["keyMonths"] == Decimal("0.6589041096")
    assert rows["111122223333"]["keyCost"] == Decimal("0.9890410959")
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
    ('billed_rotations = "x"', "billed_rotations must be a whole number of 0 or more, not 'x'"),
    ("billed_rotations = 1.5", "billed_rotations must be a whole number of 0 or more"),
    ("hours_per_month = 0", "hours_per_month must be a whole number of 1 or more"),
])
def test_price_table_refuses_values_that_are_not_prices_or_counts(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_price_table(path)


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
    assert whole.get_column("keyMonths").sum() == (Decimal(31 * 24) / 730).quantize(Decimal("1e-10"))


def test_a_row_s_request_cost_is_rounded_once_over_its_price_classes() -> None:
    # Two classes of 0.00000000005 USD each make 0.0000000001 USD; rounding each class first
    # (half to even) made 0 of both.
    prices = PriceTable(symmetric=Decimal("0.0000005"), ecc_generate_data_key_pair=Decimal("0.0000005"))
    usage = _usage(("Decrypt", "444455556666", 1, None), ("GenerateDataKeyPair", "444455556666", 1, "ECC_NIST_P256"))
    report = cost_report(usage, _lifecycle(), prices, OCT1, NOV1)
    assert report.get_column("requestCost").to_list() == [Decimal("0.0000000001")]
