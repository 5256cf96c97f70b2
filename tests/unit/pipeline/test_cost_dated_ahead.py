"""Cost without --until bills key storage up to now, never to an event dated ahead of it.

One event stamped years ahead (a node with a skewed clock, a bad imported record) billed every
key until its date; a dev clock that went ahead on purpose (`serve --dev-clock`, the demo's 91
days) is the data dir's now, so its events are not taken for ones dated ahead.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from keytrail.cli.metrics import register
from keytrail.cli.node import record_dev_clock
from keytrail.clock import DEV_CLOCK_FILE, data_dir_now, utc_now
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.prometheus import MetricsExposition, render_prometheus
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.runner import Runner
from keytrail.pipeline.sources import RecordsSource
from tests.unit.reports.records import key_arn, record

KEY, OTHER = key_arn("kept"), key_arn("other")
SKEWED = datetime(2099, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def _consume(data_dir: Path, records: list[dict[str, Any]]) -> None:
    asyncio.run(Runner(state_dir(data_dir), RecordsSource(records)).run())


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _keys_and_uses(hour: datetime | None = None) -> list[dict[str, Any]]:
    """Two keys made ten days before `hour` (this one), used daily up to an hour before it: what
    really happened."""
    hour = hour or _hour(utc_now())
    made = hour - 10 * DAY
    uses = [record("Encrypt", made + n * DAY + timedelta(minutes=30), KEY) for n in range(10)]
    return [record("CreateKey", made, KEY), record("CreateKey", made, OTHER), *uses,
            record("Decrypt", hour - timedelta(hours=1), OTHER)]


def _rows(data_dir: Path) -> dict[str, dict[str, Any]]:
    cost = MetricsStore(data_dir).cost(PriceTable())
    return {row["keyArn"]: row for row in cost.iter_rows(named=True)}


def _cli(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_one_event_dated_2099_leaves_key_storage_at_its_true_figure_and_counts_its_request(tmp_path: Path) -> None:
    true, skewed = tmp_path / "true", tmp_path / "skewed"
    real = _keys_and_uses()
    _consume(true, real)
    _consume(skewed, real)  # the consumer restarted before the bad record came: state across checkpoints
    _consume(skewed, [*real, record("Encrypt", SKEWED, KEY)])
    expected, found = _rows(true), _rows(skewed)
    for key in (KEY, OTHER):
        assert found[key]["keyMonths"] == expected[key]["keyMonths"] > 0
        assert found[key]["keyCost"] == expected[key]["keyCost"] < 1  # not the 72 years to 2099: $865 a key
    assert found[KEY]["requests"] == expected[KEY]["requests"] + 1  # it happened, per its timestamp
    assert found[KEY]["requestCost"] == expected[KEY]["requestCost"] + Decimal("0.000003")


def test_the_true_figure_bills_storage_up_to_the_hour_of_the_last_event_before_now(tmp_path: Path) -> None:
    hour = _hour(utc_now())
    _consume(tmp_path, [*_keys_and_uses(hour), record("Encrypt", SKEWED, KEY)])
    store = MetricsStore(tmp_path)
    end = store.open_end()
    assert (end.late, end.latest) == (1, SKEWED)
    assert end.storage == hour - timedelta(minutes=59)  # the last event's minute (an hour ago), + 1 minute
    # Key storage from their making to the end of the last event's hour: what --until that hour says.
    to_last_event = {row["keyArn"]: row for row in store.cost(PriceTable(), None, hour).iter_rows(named=True)}
    for key, row in _rows(tmp_path).items():
        assert (row["keyMonths"], row["keyCost"]) == (to_last_event[key]["keyMonths"], to_last_event[key]["keyCost"])
    assert _rows(tmp_path)[KEY]["requests"] == to_last_event[KEY]["requests"] + 1


def test_an_event_dated_ahead_later_in_the_hour_of_the_last_event_before_now_bills_no_storage(
        tmp_path: Path) -> None:
    # That hour is billed whole, from its events: not from one dated after now (a clock 20 minutes fast).
    now = datetime(2026, 10, 5, 10, 30, tzinfo=UTC)
    _consume(tmp_path, [record("CreateKey", now - timedelta(minutes=20), KEY),
                        record("CreateKey", now + timedelta(minutes=20), OTHER)])
    store = MetricsStore(tmp_path)
    end = store.open_end(now)
    assert end.late == 1
    rows = {row["keyArn"]: row for row in store.cost(PriceTable(), end=end).iter_rows(named=True)}
    assert rows[KEY]["keyMonths"] == Decimal("0.0013440860")  # the hour 10:00 of October's 744
    assert (rows[OTHER]["keyMonths"], rows[OTHER]["requests"]) == (0, 1)  # its request counted, not its key


def test_keytrail_cost_says_in_one_line_that_events_are_dated_after_now(tmp_path: Path) -> None:
    _consume(tmp_path, [*_keys_and_uses(), record("Encrypt", SKEWED, KEY)])
    code, out, err = _cli("cost", "--data-dir", str(tmp_path), "--format", "json")
    assert code == 0 and {json.loads(line)["keyArn"] for line in out.splitlines()} == {KEY, OTHER}
    [note] = err.strip().splitlines()
    assert note.startswith("note: 1 event is dated after now (")
    assert note.endswith("), the latest 2099-01-01T00:00:00Z (a skewed clock, a bad imported record): its requests "
                         "are counted, but key storage is billed only up to the last event before now; "
                         "--until T bills it up to T")


def test_no_note_when_nothing_is_dated_ahead_or_until_is_given(tmp_path: Path) -> None:
    _consume(tmp_path / "fine", _keys_and_uses())
    assert _cli("cost", "--data-dir", str(tmp_path / "fine"))[2] == ""
    _consume(tmp_path / "ahead", [*_keys_and_uses(), record("Encrypt", SKEWED, KEY)])
    code, out, err = _cli("cost", "--data-dir", str(tmp_path / "ahead"), "--until", "2099-01-02", "--format", "json")
    rows = {row["keyArn"]: row for row in map(json.loads, out.splitlines())}
    assert code == 0 and err == "" and rows[OTHER]["keyMonths"] > 860  # --until: billed up to it (72 years), as asked


def test_metrics_bill_the_true_figure_and_count_the_events_dated_ahead(tmp_path: Path) -> None:
    true, skewed = tmp_path / "true", tmp_path / "skewed"
    _consume(true, _keys_and_uses())
    _consume(skewed, [*_keys_and_uses(), record("Encrypt", SKEWED, KEY), record("Decrypt", SKEWED, OTHER)])

    def samples(text: str) -> dict[str, Decimal]:
        return {line.rsplit(" ", 1)[0]: Decimal(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(("keytrail_kms_cost_usd", "keytrail_pipeline_events_after_now"))}

    for render in (lambda d: render_prometheus(MetricsStore(d)),
                   lambda d: MetricsExposition(MetricsStore(d), PriceTable()).render({})):
        expected, found = samples(render(true)), samples(render(skewed))
        account = 'keytrail_kms_cost_usd{account="111122223333"}'
        assert found[account] == expected[account] + Decimal("0.000006") < 2
        assert (expected["keytrail_pipeline_events_after_now"], found["keytrail_pipeline_events_after_now"]) == (0, 2)


def _dev_clock_story(ahead: timedelta) -> list[dict[str, Any]]:
    """The demo's shape: keys made now, used a quarter later by a dev clock moved `ahead`."""
    now = _hour(utc_now())
    return [record("CreateKey", now, KEY), record("CreateKey", now, OTHER),
            record("Encrypt", now + ahead - 2 * DAY, KEY), record("Encrypt", now + ahead - timedelta(hours=1), KEY)]


def test_a_dev_clock_that_went_ahead_is_the_data_dir_s_now_and_its_days_are_billed(tmp_path: Path) -> None:
    ahead = 91 * DAY
    moved, unknown = tmp_path / "moved", tmp_path / "unknown"
    for data_dir in (moved, unknown):
        data_dir.mkdir()
        _consume(data_dir, _dev_clock_story(ahead))
    record_dev_clock(moved, utc_now() + ahead)  # what serve --dev-clock does as its clock moves
    store = MetricsStore(moved)
    end = store.open_end()
    assert end.late == 0 and end.storage == end.requests  # billed up to the last event, 91 days on
    months = _rows(moved)[OTHER]["keyMonths"]
    assert Decimal("2.9") < months < Decimal("3.1")  # 91 days: about three key-months (by the months crossed)
    # The same events in a data dir with no record of a dev clock: dated ahead of the wall clock.
    assert MetricsStore(unknown).open_end().late == 2 and _rows(unknown)[OTHER]["keyMonths"] < Decimal("0.01")


def test_the_dev_clock_record_keeps_the_furthest_the_clock_went(tmp_path: Path) -> None:
    assert abs(data_dir_now(tmp_path) - utc_now()) < timedelta(seconds=5)  # no record: the wall clock
    record_dev_clock(tmp_path, utc_now() + 91 * DAY)
    record_dev_clock(tmp_path, utc_now() + DAY)  # a restarted serve --dev-clock moved a day
    assert abs(data_dir_now(tmp_path) - (utc_now() + 91 * DAY)) < timedelta(seconds=5)
    assert (tmp_path / DEV_CLOCK_FILE).stat().st_mode & 0o777 == 0o600
    (tmp_path / DEV_CLOCK_FILE).write_text("{not json")
    assert abs(data_dir_now(tmp_path) - utc_now()) < timedelta(seconds=5)  # unreadable: the wall clock
