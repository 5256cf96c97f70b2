"""The exported Parquet tables: the daily cost tables add up to what `keytrail cost` answers."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from keytrail.cli.node import record_dev_clock
from keytrail.pipeline import query
from keytrail.pipeline.consumer import ConsumerSettings, MetricsConsumer
from keytrail.pipeline.parquet import export_tables
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore
from keytrail.pipeline.sources import RecordsSource
from tests.unit.detect.records import create_key, event, key_arn, user

MONDAY = datetime(2026, 3, 2, 12, tzinfo=UTC)


async def _consume(data_dir: Path, records: list[dict[str, Any]], prices: PriceTable | None = None) -> None:
    settings = ConsumerSettings(data_dir, prices=prices or PriceTable())
    await MetricsConsumer(settings, RecordsSource(records)).run()


def _daily_tables(data_dir: Path) -> dict[date, Decimal]:
    """Each exported day's total cost, as a FinOps query over metrics/cost/day=*/ reads them."""
    tables = sorted((data_dir / "metrics" / "cost").glob("day=*/cost.parquet"))
    return {date.fromisoformat(p.parent.name[4:]): sum(pl.read_parquet(p)["totalCost"], Decimal()) for p in tables}


def _answered(data_dir: Path, day: date) -> Decimal:
    since = datetime.combine(day, datetime.min.time(), UTC)
    cost = MetricsStore(data_dir).cost(PriceTable(), since, since + timedelta(days=1))
    return sum(cost["totalCost"], Decimal())


async def test_a_day_without_events_has_its_cost_table_for_the_keys_it_kept(tmp_path: Path) -> None:
    # A key created on Monday and next used on Sunday costs storage on every day between.
    await _consume(tmp_path, [create_key(MONDAY, key_arn(1)), event("Encrypt", MONDAY + timedelta(days=6), key_arn(1),
                                                                    user("alice"))])
    tables = _daily_tables(tmp_path)
    assert sorted(tables) == [MONDAY.date() + timedelta(days=n) for n in range(7)]  # not Monday and Sunday only
    assert tables == {day: _answered(tmp_path, day) for day in tables}


async def test_a_key_created_late_in_the_stream_is_in_the_cost_tables_of_the_days_already_exported(
    tmp_path: Path,
) -> None:
    uses = [event("Encrypt", MONDAY + timedelta(days=n), key_arn(1), user("alice")) for n in range(5)]
    records = [create_key(MONDAY, key_arn(1)), *uses]
    await _consume(tmp_path, records)
    # An older CloudTrail file read after the newer ones: a key made on Tuesday, read after Friday's events.
    await _consume(tmp_path, [*records, create_key(MONDAY + timedelta(days=1), key_arn(2))])
    tables = _daily_tables(tmp_path)
    assert tables == {day: _answered(tmp_path, day) for day in tables}
    friday = (MONDAY + timedelta(days=4)).date()
    friday_table = pl.read_parquet(tmp_path / "metrics" / "cost" / f"day={friday}" / "cost.parquet")
    assert sorted(friday_table["keyArn"]) == [key_arn(1), key_arn(2)]


async def test_an_event_stamped_years_ahead_adds_no_table_for_each_day_until_then_nor_its_own_cost_table(
    tmp_path: Path,
) -> None:
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    skewed = datetime(2099, 1, 1, tzinfo=UTC)  # a node's clock gone wrong, a bad imported record
    await _consume(tmp_path, [create_key(created, key_arn(1)), event("Encrypt", skewed, key_arn(1), user("alice"))])
    today = datetime.now(UTC).date()
    quiet = [created.date() + timedelta(days=n) for n in range((today - created.date()).days + 1)]
    # Not the 26,000 days until 2099, nor 2099's own: its key storage has not happened (its day's
    # table would bill it whole); its usage table is there, the request happened per its date.
    assert sorted(_daily_tables(tmp_path)) == quiet
    assert (tmp_path / "metrics" / "usage" / f"day={skewed.date()}" / "usage.parquet").is_file()


async def test_a_key_created_before_kms_existed_adds_no_table_for_each_day_since(tmp_path: Path) -> None:
    # One imported CreateKey dated 0001-01-01 (or the Unix epoch) before a year of real history had
    # `consume` write a cost table for each of the 739,000 days since: an hour, deaf to SIGTERM.
    made, used = datetime(1, 1, 1, tzinfo=UTC), datetime(2014, 11, 14, 12, tzinfo=UTC)
    ancient = {**create_key(made, key_arn(1)), "eventTime": "0001-01-01T00:00:00Z"}  # strftime: "1-01-01"
    await _consume(tmp_path, [ancient, event("Encrypt", used, key_arn(1), user("alice"))])
    assert sorted(_daily_tables(tmp_path)) == [made.date(), *(date(2014, 11, 12 + n) for n in range(3))]


async def test_an_event_on_the_calendar_s_last_day_is_exported_and_priced(tmp_path: Path) -> None:
    # A record dated 9999-12-31 (a bad imported record) stopped the consumer's export and every
    # later `keytrail cost` with "OverflowError: date value out of range": its day's end, and the
    # second after the last event, lie past the calendar.
    last = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    await _consume(tmp_path, [create_key(MONDAY, key_arn(1)), event("Encrypt", last, key_arn(1), user("alice"))])
    assert (tmp_path / "metrics" / "usage" / f"day={last.date()}" / "usage.parquet").is_file()
    cost = MetricsStore(tmp_path).cost(PriceTable(), None, None)
    assert cost["requests"].sum() == 2


async def test_a_dev_clock_ahead_has_the_cost_tables_of_the_days_it_moved_through(tmp_path: Path) -> None:
    # serve --dev-clock moved 91 days (the demo): its days are the data dir's, quiet ones included.
    made = datetime.now(UTC).replace(microsecond=0)
    record_dev_clock(tmp_path, made + timedelta(days=91))
    await _consume(tmp_path, [create_key(made, key_arn(1)),
                              event("Encrypt", made + timedelta(days=91), key_arn(1), user("alice"))])
    tables = _daily_tables(tmp_path)
    assert sorted(tables) == [made.date() + timedelta(days=n) for n in range(92)]
    assert tables == {day: _answered(tmp_path, day) for day in tables}


def _cost_files(data_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Each cost table's file (inode, bytes): a rewrite renames a new file over it."""
    return {p.parent.name: (p.stat().st_ino, p.read_bytes())
            for p in sorted((data_dir / "metrics" / "cost").glob("day=*/cost.parquet"))}


def _fully_rewritten(data_dir: Path, copy: Path, prices: PriceTable | None = None) -> dict[str, bytes]:
    """The cost tables an export of every day writes afresh, over a copy of `data_dir`'s state."""
    shutil.copytree(data_dir, copy)
    shutil.rmtree(copy / "metrics" / "cost")
    days = [date.fromisoformat(p.name[4:]) for p in (data_dir / "metrics" / "cost").glob("day=*")]
    export_tables(copy, days, prices)
    return {day: data for day, (_, data) in _cost_files(copy).items()}


async def test_an_event_read_late_rewrites_only_the_cost_tables_whose_figures_it_changed(tmp_path: Path) -> None:
    """An older log imported after newer ones had every day's table rewritten from its day on (the
    export cannot tell beforehand which of them it changes): a year of days per export."""
    data_dir = tmp_path / "data"
    uses = [event("Encrypt", MONDAY + timedelta(days=n), key_arn(1), user("alice")) for n in range(20)]
    records = [create_key(MONDAY, key_arn(1)), *uses]
    await _consume(data_dir, records)
    before = _cost_files(data_dir)
    assert len(before) == 20

    # A Decrypt of day 3 read late: day 3's requests change, no day's storage.
    records.append(event("Decrypt", MONDAY + timedelta(days=3, hours=2), key_arn(1), user("bob")))
    await _consume(data_dir, records)
    after = _cost_files(data_dir)
    day3 = f"day={(MONDAY + timedelta(days=3)).date()}"
    assert [day for day in after if after[day][0] != before[day][0]] == [day3]
    assert {day: data for day, (_, data) in after.items()} == _fully_rewritten(data_dir, tmp_path / "full1")

    # A key created on day 5 read late: its storage changes every day from day 5 on.
    records.append(create_key(MONDAY + timedelta(days=5), key_arn(2)))
    await _consume(data_dir, records)
    later = _cost_files(data_dir)
    changed = [day for day in later if later[day][0] != after[day][0]]
    assert changed == [f"day={(MONDAY + timedelta(days=n)).date()}" for n in range(5, 20)]
    assert {day: data for day, (_, data) in later.items()} == _fully_rewritten(data_dir, tmp_path / "full2")
    tables = _daily_tables(data_dir)
    assert tables == {day: _answered(data_dir, day) for day in tables}


class _Killed(Exception):
    """Stands for the consumer killed in the middle of an export."""


async def test_an_export_cut_short_is_finished_by_the_next_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A late CreateKey changes the storage of every day from its own on; the export that prices
    them is cut short after three tables. The next run, with nothing new to read, still writes what a
    full export writes (before, the changed day's usage table was written first, read as up to date,
    and the rest of the cost tables stayed without the new key)."""
    from keytrail.pipeline import parquet

    data_dir = tmp_path / "data"
    records = [create_key(MONDAY, key_arn(1)),
               *(event("Encrypt", MONDAY + timedelta(days=n), key_arn(1), user("alice")) for n in range(20))]
    await _consume(data_dir, records)
    records.append(create_key(MONDAY + timedelta(days=5), key_arn(2)))
    real_write, writes = parquet._write_if_changed, []

    def killed_after_three(frame: pl.DataFrame, path: Path) -> bool:
        if len(writes) == 3:
            raise _Killed
        writes.append(path)
        return real_write(frame, path)

    monkeypatch.setattr(parquet, "_write_if_changed", killed_after_three)
    with pytest.raises(_Killed):
        await _consume(data_dir, records)
    monkeypatch.setattr(parquet, "_write_if_changed", real_write)
    await _consume(data_dir, records)  # every record counted already: only the export's own work
    assert {day: data for day, (_, data) in _cost_files(data_dir).items()} == _fully_rewritten(
        data_dir, tmp_path / "full")
    tables = _daily_tables(data_dir)
    assert tables == {day: _answered(data_dir, day) for day in tables}



async def test_an_export_still_running_after_a_stop_is_cut_short_and_the_next_start_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A dev clock moved ahead years has the export write a cost table for each quiet day (a
    century: 36,500 tables, over a minute): a stop waited for all of them. Past the stop's wait
    (0 s here) the export stops before its next table, and the next start writes what a full
    export writes."""
    from keytrail.pipeline import consumer as consumer_module

    data_dir = tmp_path / "data"
    made = datetime.now(UTC).replace(microsecond=0)
    record_dev_clock(data_dir, made + timedelta(days=400))
    records = [create_key(made, key_arn(1)), event("Encrypt", made + timedelta(days=400), key_arn(1), user("alice"))]
    monkeypatch.setattr(consumer_module, "STOP_EXPORT_SECONDS", 0.0)
    stopped = MetricsConsumer(ConsumerSettings(data_dir), RecordsSource(records))
    stopped.stop()  # before its export at the end of the run
    await stopped.run()
    assert not (data_dir / "metrics" / "cost").exists() and not (data_dir / "metrics" / "usage").exists()
    assert "the metrics export was cut short by the stop (0 of 401 cost tables written)" in caplog.text
    await _consume(data_dir, records)  # the next start: every record counted already
    tables = _daily_tables(data_dir)
    assert sorted(tables) == [made.date() + timedelta(days=n) for n in range(401)]
    assert tables == {day: _answered(data_dir, day) for day in tables}

async def test_an_export_killed_before_its_last_used_table_is_finished_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last-used table was written after the usage tables, which mark an export done: a kill
    between the two left it without the last uses of that run, and the next start, finding every
    usage table up to date, did not write it again (until some later call changed a day)."""
    from keytrail.pipeline import parquet

    data_dir = tmp_path / "data"
    records = [create_key(MONDAY, key_arn(1)), event("Encrypt", MONDAY, key_arn(1), user("alice"))]
    await _consume(data_dir, records)
    records.append(event("Decrypt", MONDAY + timedelta(days=1), key_arn(1), user("bob")))
    real_write = parquet._write

    def killed_at_last_used(frame: pl.DataFrame, path: Path) -> Path:
        if path.name == "last_used.parquet":
            raise _Killed
        return real_write(frame, path)

    monkeypatch.setattr(parquet, "_write", killed_at_last_used)
    with pytest.raises(_Killed):
        await _consume(data_dir, records)
    monkeypatch.setattr(parquet, "_write", real_write)
    await _consume(data_dir, records)  # every record counted already: only the export's own work
    table = pl.read_parquet(data_dir / "metrics" / "last_used" / "last_used.parquet")
    assert table.equals(MetricsStore(data_dir).last_used_by_key())
    assert table.filter(pl.col("keyArn") == key_arn(1))["lastUsedOperation"].to_list() == ["Decrypt"]


def _days_priced(monkeypatch: pytest.MonkeyPatch) -> list[date]:
    """The days an export prices from now on (each one a cost computation over its day)."""
    priced: list[date] = []
    daily_costs = MetricsStore.daily_costs

    def spy(store: MetricsStore, prices: PriceTable, days: Any, *args: Any, **kw: Any) -> Any:
        for day, cost in daily_costs(store, prices, days, *args, **kw):
            priced.append(day)
            yield day, cost

    monkeypatch.setattr(MetricsStore, "daily_costs", spy)
    return priced


def _day(n: int) -> date:
    return (MONDAY + timedelta(days=n)).date()


async def test_an_event_read_late_prices_only_the_days_whose_figures_it_can_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every day from the late event's on was priced again (years of days for an import of old
    logs), though a Decrypt changes its own day's requests only and a CreateKey no day before its own."""
    data_dir = tmp_path / "data"
    uses = [event("Encrypt", MONDAY + timedelta(days=n), key_arn(1), user("alice")) for n in range(30)]
    records = [create_key(MONDAY, key_arn(1)), *uses]
    await _consume(data_dir, records)
    priced = _days_priced(monkeypatch)

    records.append(event("Decrypt", MONDAY + timedelta(days=3, hours=2), key_arn(1), user("bob")))
    await _consume(data_dir, records)
    assert priced == [_day(3)]
    assert {day: data for day, (_, data) in _cost_files(data_dir).items()} == _fully_rewritten(
        data_dir, tmp_path / "full1")

    priced.clear()
    records.append(create_key(MONDAY + timedelta(days=20, hours=5), key_arn(2)))
    await _consume(data_dir, records)
    assert priced == [_day(n) for n in range(20, 30)]
    assert {day: data for day, (_, data) in _cost_files(data_dir).items()} == _fully_rewritten(
        data_dir, tmp_path / "full2")
    tables = _daily_tables(data_dir)
    assert tables == {day: _answered(data_dir, day) for day in tables}


async def test_lifecycle_events_read_late_leave_the_tables_a_full_rewrite_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion scheduled, then cancelled (its waiting period billed at the cancellation), a
    rotation and an AWS managed key, each read late: priced from its own day on, never before."""
    data_dir = tmp_path / "data"
    records = [create_key(MONDAY, key_arn(1)),
               *(event("Encrypt", MONDAY + timedelta(days=n), key_arn(1), user("alice")) for n in range(15))]
    await _consume(data_dir, records)
    priced = _days_priced(monkeypatch)
    late = [(4, event("ScheduleKeyDeletion", MONDAY + timedelta(days=4, hours=3), key_arn(1))),
            (9, event("CancelKeyDeletion", MONDAY + timedelta(days=9, hours=1), key_arn(1))),
            (6, event("RotateKey", MONDAY + timedelta(days=6, hours=11, minutes=30), key_arn(1))),
            (7, create_key(MONDAY + timedelta(days=7), key_arn(3), manager="AWS"))]
    for n, (day, record) in enumerate(late):
        priced.clear()
        records.append(record)
        await _consume(data_dir, records)
        assert min(priced) == _day(day)
        assert {day: data for day, (_, data) in _cost_files(data_dir).items()} == _fully_rewritten(
            data_dir, tmp_path / f"full{n}")
    tables = _daily_tables(data_dir)
    assert tables == {day: _answered(data_dir, day) for day in tables}


async def test_a_key_spec_read_late_reprices_the_key_s_requests_of_the_days_before_it(tmp_path: Path) -> None:
    """A key's spec prices its requests on every day (an ECC key's calls cost more than a symmetric
    key's), so a CreateKey read late changes the request cost of the key's days before its own."""
    data_dir = tmp_path / "data"
    records = [create_key(MONDAY, key_arn(1)),
               *(event("Sign", MONDAY + timedelta(days=n), key_arn(2), user("alice")) for n in range(1, 4)),
               *(event("Encrypt", MONDAY + timedelta(days=n), key_arn(1), user("alice")) for n in range(8))]
    await _consume(data_dir, records)
    before = _cost_files(data_dir)
    rsa = create_key(MONDAY + timedelta(days=5), key_arn(2))
    rsa["requestParameters"] = {**rsa["requestParameters"], "keySpec": "ECC_NIST_P256", "keyUsage": "SIGN_VERIFY"}
    await _consume(data_dir, [*records, rsa])
    after = _cost_files(data_dir)
    assert [day for day in after if after[day][1] != before[day][1]] == [f"day={_day(n)}" for n in (1, 2, 3, 5, 6, 7)]
    assert {day: data for day, (_, data) in after.items()} == _fully_rewritten(data_dir, tmp_path / "full")
    tables = _daily_tables(data_dir)
    assert tables == {day: _answered(data_dir, day) for day in tables}


async def test_with_a_free_tier_a_request_read_late_reprices_the_rest_of_its_month(tmp_path: Path) -> None:
    """The free tier is granted in time order within the calendar month: a request read late takes
    the free tier of a later day's request (the CreateKey of the day before and day 0's Encrypt had two of the three,
    day 1's Encrypt the last), whose day then costs more."""
    data_dir = tmp_path / "data"
    prices = PriceTable(free_tier_requests=3)
    records = [create_key(MONDAY - timedelta(days=1), key_arn(1)),  # no lifecycle event on the late one's day
               *(event("Encrypt", MONDAY + timedelta(days=n), key_arn(1), user("alice")) for n in range(40))]
    await _consume(data_dir, records, prices)
    before = _cost_files(data_dir)
    await _consume(data_dir, [*records, event("Decrypt", MONDAY + timedelta(hours=1), key_arn(1), user("bob"))], prices)
    after = _cost_files(data_dir)
    assert [day for day in after if after[day][1] != before[day][1]] == [f"day={_day(n)}" for n in (0, 1)]
    assert {day: data for day, (_, data) in after.items()} == _fully_rewritten(data_dir, tmp_path / "full", prices)


async def test_the_daily_cost_tables_add_up_to_the_cost_of_their_span_exactly(tmp_path: Path) -> None:
    """Each day's storage was rounded to 10 places on its own: a day of a 31-day month is
    0.0322580645 of a key-month, so March's days added up to 0.9999999995, not 1."""
    created = MONDAY + timedelta(minutes=20)  # 2026-03-02 12:20
    records = [create_key(created, key_arn(1)), event("RotateKey", MONDAY + timedelta(days=18, hours=-2), key_arn(1)),
               *(event("Decrypt", MONDAY + timedelta(days=n, hours=3), key_arn(1), user("bob")) for n in range(40))]
    await _consume(tmp_path, records)
    tables = [pl.read_parquet(p) for p in sorted((tmp_path / "metrics" / "cost").glob("day=*/cost.parquet"))]
    assert len(tables) == 40
    first = datetime.combine(MONDAY.date(), datetime.min.time(), UTC)
    whole = MetricsStore(tmp_path).cost(PriceTable(), first, first + timedelta(days=40))
    assert whole.height == 1 and whole["keyMonths"][0] != round(whole["keyMonths"][0], 8)  # no round figure
    for column in ("keyMonths", "keyCost", "requestCost", "totalCost"):
        assert sum((t[column].sum() for t in tables), Decimal()) == whole[column][0], column
    assert [t.schema for t in tables] == [whole.schema] * 40  # the published shape: Decimal(38, 10)


@pytest.mark.parametrize("span_rows", [query.SPAN_ROWS, 1])
@pytest.mark.parametrize("free_tier", [0, 5])
async def test_the_days_priced_together_are_each_the_cost_of_their_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free_tier: int, span_rows: int
) -> None:
    """An export prices a run of days from one read of their usage (a month at a time with a free
    tier); each day's table is, frame for frame, the cost of that day alone: across a month's end,
    on days apart, and with a key scheduled for deletion, cancelled, rotated and a second account.
    So too where the run's usage is read in several spans (`span_rows` 1: a UTC day each), each
    span's days priced before the next is read."""
    monkeypatch.setattr(query, "SPAN_ROWS", span_rows)
    prices = PriceTable(free_tier_requests=free_tier)
    end_of_march = datetime(2026, 3, 29, 9, tzinfo=UTC)
    records = [
        create_key(end_of_march - timedelta(days=2), key_arn(1)),
        create_key(end_of_march + timedelta(hours=5), key_arn(2, "222233334444")),
        event("ScheduleKeyDeletion", end_of_march + timedelta(days=1), key_arn(1), user("alice")),
        event("CancelKeyDeletion", end_of_march + timedelta(days=3, hours=2), key_arn(1), user("alice")),
        event("RotateKey", end_of_march + timedelta(days=4), key_arn(1)),
        *(event("Encrypt", end_of_march + timedelta(days=n // 3, hours=n % 3), key_arn(1 + n % 2), user("bob"))
          for n in range(24)),
        *(event("Decrypt", end_of_march + timedelta(days=n), key_arn(2, "222233334444"), user("carol", "222233334444"))
          for n in (0, 1, 5)),
    ]
    await _consume(tmp_path, records, prices)
    store = MetricsStore(tmp_path)
    # Each month's run starts after days with requests (the free tier counts them), and has a gap.
    days = [end_of_march.date() + timedelta(days=n) for n in (1, 2, 5, 7)]
    priced = list(store.daily_costs(prices, reversed(days)))
    assert [day for day, _ in priced] == days
    for day, cost in priced:
        since = datetime.combine(day, datetime.min.time(), UTC)
        alone = store.cost(prices, since, since + timedelta(days=1))
        assert cost.equals(alone), (day, cost, alone)
    assert sum(cost["requests"].sum() for _, cost in priced) > 0


async def test_temp_files_of_an_export_killed_as_it_wrote_a_table_are_removed_once_old(tmp_path: Path) -> None:
    """Each table is written to a temp file named for its writer's pid, then renamed: a kill -9
    mid-write left a partial Parquet file beside the table for good, one per kill (no later export,
    another pid, writes over it)."""
    records = [create_key(MONDAY, key_arn(1)), event("Encrypt", MONDAY, key_arn(1), user("alice"))]
    await _consume(tmp_path, records)
    metrics = tmp_path / "metrics"
    tables = [next(metrics.glob(f"{name}/day=*/{name}.parquet")) for name in ("usage", "cost")]
    tables.append(metrics / "last_used" / "last_used.parquet")
    killed = [table.with_name(f".{table.name}.4242.tmp") for table in tables]
    writing = tables[0].with_name(f".{tables[0].name}.4343.tmp")  # another consumer's, being written now
    for path in (*killed, writing):
        path.write_bytes(b"PAR1" + b"\0" * 100)
    for path in killed:
        os.utime(path, (0, 0))
    await _consume(tmp_path, records)  # the next start
    assert [path for path in killed if path.exists()] == [] and writing.exists()
    assert all(table.exists() for table in tables)
