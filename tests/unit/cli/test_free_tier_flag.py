"""`--free-tier/--no-free-tier` of `keytrail cost` and `keytrail report` against a `--prices` file
that sets `free_tier_requests`: the flag typed wins, and neither given keeps the file's.

docs/metrics.md's price table says `free_tier_requests = 0  # 20000 to apply AWS's free tier (or
--free-tier)`; a team that keeps 20000 there and asks once `--no-free-tier` (the list price, as a
budget's upper bound) got the free tier all the same, the flag passed over without a word.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.unit.reports.records import key_arn, record

#: Five symmetric requests on one key (its CreateKey too): $0.000015 at the list price, nothing under a free tier.
START = datetime(2026, 10, 5, tzinfo=UTC)
LIST_PRICE = 0.000015


def keytrail(*args: str) -> str:
    """What a real `keytrail` process prints on stdout (its exit status 0)."""
    result = subprocess.run([sys.executable, "-m", "keytrail", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CloudTrail log file of a key made and used four times, and a price table giving the free tier."""
    folder = tmp_path_factory.mktemp("free-tier")
    key = key_arn("free-tier")
    records = [record("CreateKey", START, key),
               *(record("Decrypt", START + timedelta(minutes=n), key) for n in range(1, 5))]
    (folder / "trail.json").write_text(json.dumps({"Records": records}))
    (folder / "prices.toml").write_text("free_tier_requests = 20000\n")
    keytrail("consume", "--data-dir", str(folder / "data"), "--cloudtrail", str(folder / "trail.json"))
    return folder


def _request_cost(output: str) -> float:
    """The key's requestCost in `cost`'s JSON lines, or in a report's cost table."""
    [row] = [line for line in map(json.loads, output.splitlines()) if line.get("keyArn")]
    return float(row["requestCost"])


@pytest.mark.parametrize(("flags", "expected"), [((), 0.0), (("--free-tier",), 0.0),
                                                 (("--no-free-tier",), LIST_PRICE)])
def test_cost_takes_the_flag_typed_over_the_price_file(trail: Path, flags: tuple[str, ...],
                                                       expected: float) -> None:
    output = keytrail("cost", "--data-dir", str(trail / "data"), "--prices", str(trail / "prices.toml"),
                      "--format", "json", *flags)
    assert _request_cost(output) == expected


@pytest.mark.parametrize(("flags", "expected"), [((), 0.0), (("--no-free-tier",), LIST_PRICE)])
def test_report_takes_the_flag_typed_over_the_price_file(trail: Path, flags: tuple[str, ...],
                                                         expected: float) -> None:
    output = keytrail("report", "--cloudtrail", str(trail / "trail.json"), "--prices", str(trail / "prices.toml"),
                      "--out", "-", "--format", "json", "--table", "cost", *flags)
    assert _request_cost(output) == expected


def test_without_a_price_file_the_free_tier_is_the_flag_s(trail: Path) -> None:
    data = str(trail / "data")
    assert _request_cost(keytrail("cost", "--data-dir", data, "--format", "json")) == LIST_PRICE
    assert _request_cost(keytrail("cost", "--data-dir", data, "--format", "json", "--no-free-tier")) == LIST_PRICE
    assert _request_cost(keytrail("cost", "--data-dir", data, "--format", "json", "--free-tier")) == 0.0
