"""The runner: exact across batches, restarts, crashes between persist and commit, redelivery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keytrail.pipeline import query, state
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.runner import Batch, Runner
from keytrail.pipeline.sources import RecordsSource
from keytrail.pipeline.synthetic import SyntheticSettings, generate_events
from tests.unit.pipeline import reference

SETTINGS = SyntheticSettings(
    keys=40, principals=20, seconds_per_event=30.0, lifecycle_share=0.01, duplicate_share=0.02,
    same_second_share=0.3,  # uses tied on eventTime: the later one in the log must win
)
UNTIL = datetime(2026, 10, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return list(generate_events(4000, SETTINGS, seed=5))


class Crash(Exception):
    pass


class CommittedSource:
    """Like a Kafka consumer: restarts from its own committed offset (ignoring the state's) and
    can crash in `commit`, after the runner persisted the batch."""

    def __init__(
        self, events: list[dict[str, Any]], committed: list[int], crash_at: int | None = None, size: int = 300
    ) -> None:
        self.events, self.committed, self.crash_at, self.size = events, committed, crash_at, size

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        for start in range(self.committed[0], len(self.events), self.size):
            chunk = self.events[start : start + self.size]
            yield Batch("p0", range(start, start + len(chunk)), records=chunk, source_end=len(self.events))

    async def commit(self, batch: Batch) -> None:
        if self.crash_at is not None and batch.offsets[0] >= self.crash_at:
            raise Crash
        self.committed[0] = batch.end

    async def rewind(self, partition: str, offset: int) -> None:
        raise AssertionError("single owner: never rewound")


def _assert_exact(data_dir: Path, events: list[dict[str, Any]]) -> None:
    store = MetricsStore(data_dir)
    usage = store.usage(["minute", "keyArn", "principalArn", "accountId", "eventName"])
    assert {r[:5]: (r[5], r[6]) for r in usage.iter_rows()} == reference.usage(events)
    last = {
        (r["keyArn"], r["principalArn"]): (r["lastUsedTime"], r["eventId"], r["lastUsedOperation"])
        for r in store.last_used().iter_rows(named=True)
    }
    assert last == reference.last_used(events)
    report = store.cost(PriceTable(free_tier_requests=200), until=UNTIL)
    got = {
        (r["keyArn"], r["accountId"]): {k: r[k] for k in ("keyMonths", "keyCost", "requests", "requestCost")}
        for r in report.iter_rows(named=True)
    }
    assert got == reference.cost(events, PriceTable(free_tier_requests=200), UNTIL)


async def test_batched_run_with_many_checkpoints_and_compactions_is_exact(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    stats = await Runner(
        state_dir(tmp_path), RecordsSource(events, max_records=333), checkpoint_records=300
    ).run()
    files = list((state_dir(tmp_path) / "usage").glob("day=*/*.parquet"))
    assert 0 < len(files) <= 2 * 8  # compacted: at most COMPACT_AFTER per day (the run spans two days)
    assert stats.records == len(events)
    assert stats.duplicates == len(events) - len({e["eventID"] for e in events}) > 0
    _assert_exact(tmp_path, events)


def test_orphan_usage_files_of_a_crashed_checkpoint_are_ignored_then_removed(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    import asyncio
    import os
    import shutil

    asyncio.run(Runner(state_dir(tmp_path), RecordsSource(events[:1000])).run())
    orphan = state_dir(tmp_path) / "usage" / "day=2026-10-01" / "records.deadbeef.parquet"
    shutil.copyfile(next(iter((state_dir(tmp_path) / "usage").glob("day=2026-10-01/*.parquet"))), orphan)
    _assert_usage(tmp_path, events[:1000])  # not listed in the manifest: never read
    # A checkpoint killed while it wrote a file leaves the temp file it was writing (kill -9 mid-write).
    half_written = orphan.with_name(".records.0badc0de.parquet.tmp")
    half_written.write_bytes(orphan.read_bytes()[:100])
    for path in (orphan, half_written):
        os.utime(path, (0, 0))
    asyncio.run(Runner(state_dir(tmp_path), RecordsSource(events[:1000])).run())
    assert not orphan.exists() and not half_written.exists()


def _assert_usage(data_dir: Path, events: list[dict[str, Any]]) -> None:
    usage = MetricsStore(data_dir).usage(["minute", "keyArn", "principalArn", "accountId", "eventName"])
    assert {r[:5]: (r[5], r[6]) for r in usage.iter_rows()} == reference.usage(events)


async def test_crash_between_persist_and_commit_counts_nothing_twice(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    committed = [0]
    # Checkpoints cover two batches: 1200-1800 is persisted, then the commit of 1500-1800 crashes.
    with pytest.raises(Crash):
        await Runner(
            state_dir(tmp_path), CommittedSource(events, committed, crash_at=1500), checkpoint_records=600
        ).run()
    assert committed[0] == 1200
    stats = await Runner(state_dir(tmp_path), CommittedSource(events, committed)).run()
    assert stats.redelivered == 600
    _assert_exact(tmp_path, events)


async def test_restart_resumes_at_the_checkpointed_offset(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    await Runner(state_dir(tmp_path), RecordsSource(events[:2500], max_records=400)).run()
    stats = await Runner(state_dir(tmp_path), RecordsSource(events, max_records=400)).run()
    assert stats.records == len(events) - 2500
    _assert_exact(tmp_path, events)


async def test_redelivered_events_under_new_offsets_count_once(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    resent = events + events[3000:3400]  # a shipper re-sending after its own restart
    stats = await Runner(state_dir(tmp_path), RecordsSource(resent, max_records=500)).run()
    assert stats.duplicates >= 400
    _assert_exact(tmp_path, events)


async def test_late_event_updates_its_old_window(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    runner_dir = state_dir(tmp_path)
    await Runner(runner_dir, RecordsSource(events[:3000])).run()
    late = dict(events[100], eventID="late-0001", eventTime="2026-10-01T00:05:10Z")
    await Runner(runner_dir, RecordsSource([*events[:3000], late])).run()
    hourly = MetricsStore(tmp_path).usage(["eventName"], "hour")
    first_hour = hourly.filter(hourly["windowStart"] == datetime(2026, 10, 1, tzinfo=UTC))
    expected = reference.usage([*events[:3000], late])
    want = sum(
        c
        for (m, *_rest, name), (c, _e) in expected.items()
        if m.hour == 0 and m.day == 1 and name == late["eventName"]
    )
    assert first_hour.filter(first_hour["eventName"] == late["eventName"])["count"].item() == want


async def test_dedup_memory_is_bounded_by_its_capacity(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    runner = Runner(
        state_dir(tmp_path),
        RecordsSource(events, max_records=200),
        dedup_capacity=1000,
        checkpoint_records=200,
    )
    sizes: list[int] = []
    runner.after_checkpoint = lambda: sizes.append(len(runner.state("records").seen))
    await runner.run()
    assert max(sizes) <= 1000 + 200  # never more than the capacity (+ one batch), not the 4000 events


async def test_recent_duplicates_are_still_dropped_after_a_restart(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    await Runner(state_dir(tmp_path), RecordsSource(events[:3000], max_records=250)).run()
    resent = [*events[:3000], *events[2600:3000], *events[3000:]]  # re-sent under new offsets, after restart
    stats = await Runner(state_dir(tmp_path), RecordsSource(resent, max_records=250)).run()
    assert stats.duplicates >= 400
    _assert_exact(tmp_path, events)


def test_last_usage_answers_like_get_key_last_usage(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    import asyncio

    asyncio.run(Runner(state_dir(tmp_path), RecordsSource(events)).run())
    store = MetricsStore(tmp_path)
    for key, (when, event_id, operation, principal) in reference.last_used_per_key(events).items():
        answer = store.last_usage(key)
        assert answer is not None
        assert (answer["Timestamp"], answer["CloudTrailEventId"]) == (when, event_id)
        assert (answer["Operation"], answer["PrincipalArn"]) == (operation, principal)
        assert answer["TrackingStartDate"] <= answer["Timestamp"]
    assert store.last_usage("arn:aws:kms:us-east-1:111122223333:key/never-used") is None


class SteadySource:
    """A batch every few milliseconds, never an idle spell as long as `checkpoint_seconds`;
    stops once a batch was committed (or after `limit` batches)."""

    def __init__(self, events: list[dict[str, Any]], limit: int = 2000) -> None:
        self.events, self.limit, self.committed, self.yielded = events, limit, 0, 0

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        import asyncio

        for index in range(self.limit):
            if self.committed:
                return
            event = self.events[index % len(self.events)]
            self.yielded += 1
            yield Batch("p0", [index], records=[{**event, "eventID": f"steady-{index}"}])
            await asyncio.sleep(0.005)

    async def commit(self, batch: Batch) -> None:
        self.committed = batch.end

    async def rewind(self, partition: str, offset: int) -> None:
        raise AssertionError("single owner: never rewound")


async def test_steady_traffic_is_checkpointed_every_checkpoint_seconds(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    source = SteadySource(events)
    await Runner(state_dir(tmp_path), source, checkpoint_seconds=0.05).run()
    assert source.yielded < source.limit  # committed while batches kept coming, not only at the end


async def test_records_without_a_time_are_counted_as_unreadable_not_as_duplicates(tmp_path: Path) -> None:
    events = list(generate_events(20, SyntheticSettings(keys=3, principals=2), seed=9))
    events[4] = {**events[4], "eventTime": None}
    stats = await Runner(state_dir(tmp_path), RecordsSource(events)).run()
    assert (stats.records, stats.counted, stats.unreadable, stats.duplicates) == (20, 19, 1, 0)


def _log_files(folder: Path, events: list[dict[str, Any]], per_file: int) -> list[Path]:
    import json

    from keytrail.transport.cloudtrail_logs import iter_log_files

    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(events), per_file):
        path = folder / f"111122223333_CloudTrail_us-east-1_{start:06d}.json"
        path.write_text(json.dumps({"Records": events[start : start + per_file]}))  # same content again
    return list(iter_log_files([folder]))


async def test_consuming_a_grown_folder_of_log_files_again_counts_only_its_new_files(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    from keytrail.pipeline.sources import CloudTrailFilesSource

    unique = list({e["eventID"]: e for e in events}.values())
    logs, states = tmp_path / "logs", state_dir(tmp_path)

    def run(files: list[Path]) -> Any:  # remembers 1,000 eventIDs: far fewer than the folder holds
        return Runner(states, CloudTrailFilesSource(files, states, max_records=250), dedup_capacity=1000,
                      checkpoint_records=500).run()

    await run(_log_files(logs, unique[:3000], 200))
    again = await run(_log_files(logs, unique[:3000], 200))
    assert again.records == 0  # every file was counted whole: none is read again
    grown = await run(_log_files(logs, unique, 200))  # the bucket synced again: new files
    assert grown.records == len(unique) - 3000
    _assert_usage(tmp_path, unique)


async def test_a_log_file_whose_listing_a_crash_lost_is_read_again_and_counts_once(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    from keytrail.pipeline.sources import CloudTrailFilesSource

    unique = list({e["eventID"]: e for e in events}.values())[:2000]
    files, states = _log_files(tmp_path / "logs", unique, 200), state_dir(tmp_path)
    source = CloudTrailFilesSource(files, states, max_records=250)
    source.commit = _no_commit  # type: ignore[method-assign]  # killed after its checkpoints, before listing
    await Runner(states, source).run()
    stats = await Runner(states, CloudTrailFilesSource(files, states, max_records=250)).run()
    assert (stats.records, stats.duplicates) == (2000, 2000)
    _assert_usage(tmp_path, unique)
    assert (await Runner(states, CloudTrailFilesSource(files, states)).run()).records == 0


async def _no_commit(batch: Batch) -> None:
    return None


async def test_a_stopped_log_file_source_reads_no_further_file_and_the_next_run_counts_the_rest_once(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    import asyncio

    from keytrail.pipeline.sources import CloudTrailFilesSource

    unique = list({e["eventID"]: e for e in events}.values())[:2000]
    files, states = _log_files(tmp_path / "logs", unique, 200), state_dir(tmp_path)
    stop = asyncio.Event()
    # SIGTERM/SIGINT set `stop` (keytrail consume --cloudtrail) once the first file is read.
    source = CloudTrailFilesSource(files, states, max_records=250, stop=stop, progress=lambda _: stop.set())
    stopped = await Runner(states, source).run()
    assert stopped.records == 200  # the file it had read, not the other nine
    rest = await Runner(states, CloudTrailFilesSource(files, states, max_records=250)).run()
    assert (rest.records, rest.duplicates) == (1800, 0)
    _assert_usage(tmp_path, unique)


async def test_network_activity_events_of_a_vpc_endpoint_are_not_counted_as_requests(tmp_path: Path) -> None:
    from tests.unit.reports.records import key_arn, record

    when, key = datetime(2026, 10, 1, 12, tzinfo=UTC), key_arn("vpce")
    call = dict(record("Decrypt", when, key), vpcEndpointId="vpce-1234abcdf5678c90a")
    # With network activity events on, the endpoint owner's trail logs the same call again, and
    # logs the calls its endpoint policy refused (which never reached KMS): eventType AwsVpceEvent.
    network = {"eventType": "AwsVpceEvent", "eventCategory": "NetworkActivity"}
    twin = dict(call, **network, eventID="0b0e0f00-0000-4000-8000-00000000a001")
    refused = dict(record("Encrypt", when, key), **network, eventID="0b0e0f00-0000-4000-8000-00000000a002",
                   errorCode="VpceAccessDenied", errorMessage="The request was denied due to a VPC endpoint policy")
    # The twin first, carrying the call's sharedEventID: it must not make the call a duplicate.
    twin["sharedEventID"] = call["sharedEventID"] = "5a1e0c1d-3b7e-4f0e-9a52-0d7c7b1c2e02"
    stats = await Runner(state_dir(tmp_path), RecordsSource([twin, call, refused])).run()
    assert (stats.counted, stats.network, stats.duplicates) == (1, 2, 0)
    store = MetricsStore(tmp_path)
    assert store.usage(["eventName"]).rows() == [("Decrypt", 1, 0)]
    assert store.cost(PriceTable())["requests"].to_list() == [1]


@pytest.mark.parametrize("free_tier", [300, 700])  # per calling account: ≈ 600 on October 1
async def test_free_tier_read_a_day_at_a_time_carries_over_exactly(
    tmp_path: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, free_tier: int
) -> None:
    await Runner(state_dir(tmp_path), RecordsSource(events)).run()
    monkeypatch.setattr(query, "SPAN_ROWS", 1)  # each UTC day a part of its own: the free tier crosses them
    store = MetricsStore(tmp_path)
    assert len(list(store._day_spans(None, UNTIL))) == 3  # late events reach back into September
    prices = PriceTable(free_tier_requests=free_tier)
    got = {
        (r["keyArn"], r["accountId"]): {k: r[k] for k in ("keyMonths", "keyCost", "requests", "requestCost")}
        for r in store.cost(prices, until=UNTIL).iter_rows(named=True)
    }
    assert got == reference.cost(events, prices, UNTIL)


async def test_last_used_read_a_slice_at_a_time_is_exact(
    tmp_path: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    await Runner(state_dir(tmp_path), RecordsSource(events)).run()
    store = MetricsStore(tmp_path)
    whole = store.last_used_by_key()  # every key x principal row in one slice
    monkeypatch.setattr(state, "_READ_ROWS", 7)
    assert store.last_used_by_key().equals(whole)
    last = {
        (r["keyArn"], r["principalArn"]): (r["lastUsedTime"], r["eventId"], r["lastUsedOperation"])
        for r in store.last_used().iter_rows(named=True)
    }
    assert last == reference.last_used(events)


class ValuesSource:
    """Avro single-object values in batches, as a Kafka partition delivers them."""

    def __init__(self, values: list[bytes], size: int = 500) -> None:
        self.values, self.size = values, size

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        for start in range(start_at("p0"), len(self.values), self.size):
            chunk = self.values[start : start + self.size]
            yield Batch("p0", range(start, start + len(chunk)), values=chunk)

    async def commit(self, batch: Batch) -> None:
        return None

    async def rewind(self, partition: str, offset: int) -> None:
        raise AssertionError("single owner: never rewound")


async def test_a_damaged_value_of_a_known_writer_is_skipped_not_a_stop_of_its_partition(
    tmp_path: Path, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    from keytrail.audit.schema import encode

    values = [encode(event) for event in events]
    # A value cut short, and another producer's bytes behind a copied header: both fail polars'
    # reader for their whole batch, so every restart would stop at the same offset again.
    values[1234] = values[1234][: len(values[1234]) // 2]
    values[2000] = values[2000][:10] + b"\xff" * 40
    stats = await Runner(state_dir(tmp_path), ValuesSource(values)).run()
    assert (stats.records, stats.unreadable) == (len(events), 2)
    _assert_exact(tmp_path, [e for i, e in enumerate(events) if i not in (1234, 2000)])
    assert "p0: skipped 1 audit values that cannot be decoded (offsets 1234)" in caplog.text


async def test_events_of_a_schema_this_build_does_not_know_are_named_as_such_not_as_damage(
    tmp_path: Path, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """A newer keytrail's events (another node on the topic, a data dir a newer serve wrote) were
    said to be values "that cannot be decoded", as if damaged: nothing said to upgrade, and every
    one of them went uncounted."""
    from keytrail.audit.schema import encode

    values = [encode(event) for event in events[:600]]
    newer = (100, 101, 450)
    for position in newer:  # the header of a writer schema this build does not know
        values[position] = values[position][:2] + bytes(range(8)) + values[position][10:]
    values[300] = values[300][:10] + b"\xff" * 40  # damage beside them is still said to be damage
    stats = await Runner(state_dir(tmp_path), ValuesSource(values, size=600)).run()
    assert (stats.records, stats.unreadable) == (600, 4)
    _assert_exact(tmp_path, [e for i, e in enumerate(events[:600]) if i not in (*newer, 300)])
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert warnings == [
        "p0: skipped 3 audit events of an Avro schema this keytrail does not know (fingerprint "
        "0001020304050607; offsets 100, 101, 450): their calls are not counted; a newer keytrail "
        "writes them, upgrade this one",
        "p0: skipped 1 audit values that cannot be decoded (offsets 300)",
    ]


async def test_a_value_cut_short_after_its_header_is_skipped_too(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    from keytrail.audit.schema import encode

    values = [encode(event) for event in events[:600]]
    # Cut a few bytes after the 10-byte header, polars' reader fails with an OSError ("failed to
    # fill whole buffer"), not a PolarsError or a panic: uncaught, it stopped the partition.
    values[321] = values[321][:12]
    stats = await Runner(state_dir(tmp_path), ValuesSource(values)).run()
    assert (stats.records, stats.unreadable) == (600, 1)
    _assert_exact(tmp_path, [e for i, e in enumerate(events[:600]) if i != 321])


async def test_a_value_holding_two_events_is_skipped_not_read_as_two_rows_shifting_the_rest(
    tmp_path: Path, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """One value holding two whole events (a producer's batch) was read as two rows and the
    batch's last value dropped in the guard record's place: its event never counted, and every
    row after the two paired with the offset before its own."""
    from keytrail.audit.schema import encode

    values = [encode(event) for event in events[:600]]
    values[200] = values[200] + encode(events[3000])
    stats = await Runner(state_dir(tmp_path), ValuesSource(values, size=600)).run()
    assert (stats.records, stats.unreadable) == (600, 1)
    _assert_exact(tmp_path, [e for i, e in enumerate(events[:600]) if i != 200])
    assert "p0: skipped 1 audit values that cannot be decoded (offsets 200)" in caplog.text


@pytest.mark.parametrize("millis", [-(2**60), 2**62, 253402300800000])  # the last: 10000-01-01
async def test_a_value_whose_event_time_is_past_a_dates_range_is_skipped_not_a_stop_of_its_partition(
    tmp_path: Path, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture, millis: int
) -> None:
    """A value of a known writer whose eventTime long is damaged but still a long (a poisoned Kafka
    message) read as a row in polars, then failed the batch's frame (InvalidOperationError: the
    cast to microseconds overflowed), the same batch again at every restart; fastavro, and `audit
    events`, refuse such a time."""
    from keytrail.audit import schema

    values = [schema.encode(event) for event in events[:600]]
    _, start = schema._event_id_span(values[77])  # eventTime follows eventID
    _, end = schema._read_long(values[77], start)
    values[77] = values[77][:start] + schema.avro_long(millis) + values[77][end:]
    stats = await Runner(state_dir(tmp_path), ValuesSource(values, size=600)).run()
    assert (stats.records, stats.unreadable) == (600, 1)
    _assert_exact(tmp_path, [e for i, e in enumerate(events[:600]) if i != 77])
    assert "p0: skipped 1 audit values that cannot be decoded (offsets 77)" in caplog.text


async def test_a_damaged_batch_says_one_warning_and_no_panic_text_and_counts_exact(
    tmp_path: Path, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Halving a damaged batch down to its bad values made polars' reader panic again and again,
    each panic printing Rust's text (and, with RUST_BACKTRACE set, a backtrace) on stderr. Every
    kind of damage here once did; now one warning names the skipped offsets, nothing else."""
    from keytrail.audit.schema import encode

    values = [encode(event) for event in events[:1000]]
    damage = {
        0: values[0][: len(values[0]) // 2],  # cut short: the next value read as its rest
        321: values[321][:12],  # cut a few bytes after the header
        500: values[500] + b"\x00\x01\x02",  # overlong: the next value's reads shift by three bytes
        998: values[998][:10] + b"\xff" * 40,  # another producer's bytes behind a copied header
        999: values[999][: len(values[999]) - 7],  # the batch's last value cut short
    }
    for position, value in damage.items():
        values[position] = value
    stats = await Runner(state_dir(tmp_path), ValuesSource(values, size=1000)).run()
    assert (stats.records, stats.unreadable) == (1000, len(damage))
    _assert_exact(tmp_path, [e for i, e in enumerate(events[:1000]) if i not in damage])
    warnings = [r.getMessage() for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert warnings == ["p0: skipped 5 audit values that cannot be decoded (offsets 0, 321, 500, 998, 999)"]
    assert "panicked" not in capfd.readouterr().err


async def test_the_records_before_a_damaged_part_of_a_log_file_count_once_however_often_it_is_read(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    """A file cut short (a sync interrupted) was refused whole; its records before the cut are
    now counted, and the file, never listed as read, counts none of them again at the next run."""
    from keytrail.pipeline.sources import CloudTrailFilesSource

    unique = list({e["eventID"]: e for e in events}.values())[:600]
    [path] = _log_files(tmp_path / "logs", unique, 600)
    text = path.read_text()
    cut = text.index(unique[500]["eventID"])
    path.write_text(text[:cut])  # cut inside record 500
    states, problems = state_dir(tmp_path), []

    def source() -> CloudTrailFilesSource:
        return CloudTrailFilesSource([path], states, max_records=250, on_problem=problems.append)

    first = await Runner(states, source()).run()
    again = await Runner(states, source()).run()
    assert (first.records, again.records, again.duplicates) == (500, 500, 500)
    # The string cut opens with the quote just before the eventID: its column, 1-based, is `cut`.
    assert problems == [f"{path}: line 1: not valid JSON (Unterminated string starting at column {cut})"] * 2
    _assert_usage(tmp_path, unique[:500])



class _Held:
    """Holds the runner's worker in `owner.name` until released, and records how the call ended."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> None:
        import threading

        self.inside, self.release, self.outcomes = threading.Event(), threading.Event(), list[str]()
        original = getattr(owner, name)

        def held(*args: Any) -> Any:
            self.inside.set()
            self.release.wait(10)
            try:
                result = original(*args)
            except Exception as error:
                self.outcomes.append(type(error).__name__)
                raise
            self.outcomes.append("done")
            return result

        monkeypatch.setattr(owner, name, held)

    async def entered(self) -> None:
        import asyncio

        while not self.inside.is_set():
            await asyncio.sleep(0.01)


async def test_a_run_cancelled_while_its_reader_waits_on_a_full_queue_ends(
    tmp_path: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keytrail report --cloudtrail` stopped by SIGTERM hung for ever: asyncio.run cancels every
    task left as it ends, the reader's two cancellations (that and the run's own) came as one, and
    the reader then waited to put the end in a full queue that no one read any more."""
    import asyncio

    held = _Held(monkeypatch, Runner, "process")
    run = asyncio.create_task(Runner(state_dir(tmp_path), RecordsSource(events, max_records=100)).run())
    await held.entered()
    await asyncio.sleep(0.05)  # the reader has put the next batch and waits to put another
    others = asyncio.all_tasks() - {asyncio.current_task()}
    for task in sorted(others, key=lambda task: task is not run):  # as asyncio.run cancels what is left
        task.cancel()
    held.release.set()
    _, pending = await asyncio.wait(others, timeout=5)
    assert not pending and run.cancelled()


async def test_a_run_cancelled_mid_checkpoint_closes_its_state_only_once_the_worker_is_done(
    tmp_path: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C stopped `keytrail report --cloudtrail` with a segmentation fault: the cancelled run
    closed its SQLite state (and the report removed its scratch folder) while the worker thread
    was still writing a checkpoint into it."""
    import asyncio
    import threading

    held = _Held(monkeypatch, state.PartitionState, "flush")
    run = asyncio.create_task(Runner(state_dir(tmp_path), RecordsSource(events, max_records=100),
                                     checkpoint_records=1).run())
    await held.entered()
    run.cancel()
    threading.Timer(0.2, held.release.set).start()  # the run winds down while the checkpoint is yet to be written
    with pytest.raises(asyncio.CancelledError):
        await run
    assert held.outcomes == ["done"]
