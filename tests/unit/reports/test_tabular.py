"""The CSV, JSON lines and Parquet forms read back with polars and hold the same values."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from keytrail.reports.tabular import TabularFormat, long_form, long_form_parts, write_tabular

WHEN = datetime(2026, 11, 3, 4, 5, 6, tzinfo=UTC)
TABLES = {
    "usage": pl.DataFrame({"keyArn": ["k1", "k2"], "count": [3, 4]}),
    "cost": pl.DataFrame({"keyArn": ["k1"], "totalCost": [Decimal("0.0000030000")]},
                         schema={"keyArn": pl.String, "totalCost": pl.Decimal(38, 10)}),
    "last_used": pl.DataFrame({"keyArn": ["k1", "k2"], "lastUsedTime": [WHEN, None], "unused": [False, True]}),
}


def _read(path: Path, form: TabularFormat) -> pl.DataFrame:
    if form is TabularFormat.csv:
        return pl.read_csv(path, infer_schema_length=None)
    if form is TabularFormat.json:
        return pl.read_ndjson(path, infer_schema_length=None)
    return pl.read_parquet(path)


@pytest.mark.parametrize("form", list(TabularFormat))
def test_every_table_reads_back_by_its_table_column(tmp_path: Path, form: TabularFormat) -> None:
    path = write_tabular(long_form(TABLES), tmp_path / f"report.{form.value}", form)
    frame = _read(path, form)
    assert frame.get_column("table").to_list() == ["usage", "usage", "cost", "last_used", "last_used"]
    usage = frame.filter(pl.col("table") == "usage")
    assert usage.get_column("count").cast(pl.Int64).to_list() == [3, 4]
    cost = frame.filter(pl.col("table") == "cost").get_column("totalCost")[0]
    assert Decimal(str(cost)) == Decimal("0.000003")
    last = frame.filter(pl.col("table") == "last_used")
    assert str(last.get_column("lastUsedTime")[0]).startswith("2026-11-03")
    assert last.get_column("lastUsedTime")[1] is None


def test_json_lines_write_money_as_exact_numbers_and_omit_empty_columns(tmp_path: Path) -> None:
    path = write_tabular(long_form(TABLES, only="cost"), tmp_path / "cost.json", TabularFormat.json)
    assert path.read_text() == '{"table": "cost", "keyArn": "k1", "totalCost": 0.000003}\n'


def test_csv_writes_times_as_iso_utc(tmp_path: Path) -> None:
    path = write_tabular(long_form(TABLES, only="last_used"), tmp_path / "l.csv", TabularFormat.csv)
    assert path.read_text().splitlines() == ["table,keyArn,lastUsedTime,unused",
                                             "last_used,k1,2026-11-03T04:05:06Z,false", "last_used,k2,,true"]


def test_unknown_table_is_refused() -> None:
    with pytest.raises(ValueError, match="no table named 'nope'"):
        long_form(TABLES, only="nope")


@pytest.mark.parametrize("only", [None, "usage"])
@pytest.mark.parametrize("form", list(TabularFormat))
def test_a_table_held_as_categories_is_written_as_its_strings(tmp_path: Path, form: TabularFormat,
                                                              only: str | None) -> None:
    as_categories = {**TABLES, "usage": TABLES["usage"].with_columns(pl.col("keyArn").cast(pl.Categorical))}
    plain = write_tabular(long_form(TABLES, only), tmp_path / f"plain.{form.value}", form)
    compact = write_tabular(long_form(as_categories, only), tmp_path / f"compact.{form.value}", form)
    assert compact.read_bytes() == plain.read_bytes()
    assert _read(compact, form).schema["keyArn"] == pl.String


@pytest.mark.parametrize("form", list(TabularFormat))
def test_an_owner_only_report_is_0600_and_removes_the_temporary_files_killed_runs_left(tmp_path: Path,
                                                                                      form: TabularFormat) -> None:
    import os

    out = tmp_path / f"report.{form.value}"
    stale = [out.with_name(f".{out.name}.tmp"), out.with_name(f".{out.name}.0badc0de.tmp")]  # an older release's name
    running = out.with_name(f".{out.name}.12345678.tmp")  # another run's, being written
    for temp in (*stale, running):
        temp.write_text("half a report")
        temp.chmod(0o644)  # as a version before owner-only modes, or the umask, left it
    for temp in stale:
        os.utime(temp, (0, 0))  # written long ago
    write_tabular(long_form(TABLES), out, form, owner_only=True)
    assert (out.stat().st_mode & 0o777, [t.exists() for t in (*stale, running)]) == (0o600, [False, False, True])
    assert _read(out, form).height == 5


@pytest.mark.parametrize("form", list(TabularFormat))
def test_a_report_that_cannot_be_written_whole_leaves_no_temporary_file(tmp_path: Path, form: TabularFormat) -> None:
    """The hidden `.<out>.tmp` stayed behind, as large as the report, when writing it failed."""
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(IsADirectoryError):  # the rename onto a folder fails
        write_tabular(long_form(TABLES), folder, form)

    def interrupted() -> Iterator[pl.DataFrame]:  # Ctrl-C halfway through the parts
        yield long_form(TABLES, "usage")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_tabular(interrupted(), tmp_path / f"report.{form.value}", form)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_parquet_report_is_written_from_its_parts_as_they_come_not_whole(tmp_path: Path) -> None:
    """The Parquet form concatenated the long form whole (every table's rows, padded with every
    other table's columns) before writing it; the parts now stream into the file."""
    alive: set[int] = set()
    most = 0

    def usage_parts() -> Iterator[pl.DataFrame]:
        nonlocal most
        for number in range(30):
            part = long_form({"usage": pl.DataFrame({"keyArn": [f"k{number}"] * 50_000, "count": range(50_000)})})
            alive.add(number)
            weakref.finalize(part, alive.discard, number)
            most = max(most, len(alive))
            yield part

    frame = pl.read_parquet(write_tabular(usage_parts(), tmp_path / "report.parquet", TabularFormat.parquet))
    assert frame.height == 1_500_000 and frame.get_column("keyArn").unique().len() == 30
    assert frame.get_column("count").sum() == 30 * sum(range(50_000))
    assert most <= 4  # of 30: taken as the writer goes


def test_a_parquet_report_written_in_parts_reads_back_as_the_long_form(tmp_path: Path) -> None:
    path = write_tabular(long_form_parts(TABLES), tmp_path / "report.parquet", TabularFormat.parquet)
    assert_frame_equal(pl.read_parquet(path), long_form(TABLES))


def test_keytrail_report_stopped_by_sigterm_while_writing_leaves_nothing_and_exits_143(tmp_path: Path) -> None:
    """SIGTERM's default action killed `keytrail report` where it was: the report's hidden
    temporary file stayed behind, and nothing was said. It now unwinds as Ctrl-C does. (A process
    of its own: a test runner that received the SIGTERM would die of it.)"""
    import json
    import subprocess
    import sys

    from tests.unit.reports.records import key_arn, record

    trail, out = tmp_path / "trail.json", tmp_path / "report.csv"
    trail.write_text(json.dumps({"Records": [record("CreateKey", WHEN, key_arn("k")),
                                             record("Encrypt", WHEN, key_arn("k"))]}))
    killed_halfway = f"""
import os, signal, sys
from keytrail.reports import tabular
write_csv = tabular._csv
def halfway(parts, sink):
    write_csv(parts, sink)
    os.kill(os.getpid(), signal.SIGTERM)  # `kill <pid>` while the file is being written
tabular._csv = halfway
from keytrail.cli import main
sys.argv = ["keytrail", "report", "--cloudtrail", {str(trail)!r}, "--out", {str(out)!r}]
main()
"""
    result = subprocess.run([sys.executable, "-c", killed_halfway], capture_output=True, text=True, timeout=120)
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip() == "keytrail report: stopped (SIGTERM): no report written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trail.json"]


@pytest.mark.parametrize("form", list(TabularFormat))
def test_a_report_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path: Path,
                                                                                 form: TabularFormat) -> None:
    # Renamed over, the link (report.csv -> /srv/www/report.csv, say) became a file of its own and
    # its target kept the old report.
    target, link = tmp_path / "www" / f"report.{form.value}", tmp_path / f"report.{form.value}"
    target.parent.mkdir()
    target.write_text("the old report")
    link.symlink_to(target)
    assert write_tabular(long_form(TABLES), link, form) == link
    assert link.is_symlink() and link.readlink() == target
    assert _read(target, form).height == 5
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_a_report_is_not_written_through_a_link_another_user_planted_in_a_shared_folder(tmp_path: Path) -> None:
    """A sticky folder every user may write (/tmp): a root-run report through a link another user
    made there replaced the file it pointed at (fs.protected_symlinks, which refuses that, is off in
    many containers)."""
    import os

    shared, victim = tmp_path / "shared", tmp_path / "victim.txt"
    shared.mkdir()
    shared.chmod(0o1777)
    victim.write_text("not a report")
    link = shared / "report.csv"
    link.symlink_to(victim)
    os.lchown(link, 4242, 4242)  # made by another user (the tests run as root)
    with pytest.raises(PermissionError, match="is not followed"):
        write_tabular(long_form(TABLES), link, TabularFormat.csv)
    assert victim.read_text() == "not a report"
    os.lchown(link, os.geteuid(), os.getegid())  # one's own link is followed, as a shell's `>` does
    assert write_tabular(long_form(TABLES), link, TabularFormat.csv) == link
    assert victim.read_text().startswith("table,")


def test_a_report_never_goes_through_what_another_user_planted_in_a_shared_folder(tmp_path: Path) -> None:
    """Past the link at `--out` itself: a link at the temporary file's name (it was fixed, and opened
    as it stood), a link to a folder on the way, and a FIFO another user reads."""
    import os

    shared, victim, elsewhere = tmp_path / "shared", tmp_path / "victim.txt", tmp_path / "elsewhere"
    shared.mkdir()
    shared.chmod(0o1777)
    elsewhere.mkdir()
    victim.write_text("not a report")
    temp_link = shared / ".report.csv.tmp"
    temp_link.symlink_to(victim)
    os.lchown(temp_link, 4242, 4242)
    write_tabular(long_form(TABLES), shared / "report.csv", TabularFormat.csv)
    assert victim.read_text() == "not a report" and not (shared / "report.csv").is_symlink()
    folder_link = shared / "reports"
    folder_link.symlink_to(elsewhere)
    os.lchown(folder_link, 4242, 4242)
    with pytest.raises(PermissionError, match="is not followed"):
        write_tabular(long_form(TABLES), folder_link / "report.csv", TabularFormat.csv)
    assert list(elsewhere.iterdir()) == []
    fifo = shared / "stolen.csv"
    os.mkfifo(fifo)
    os.chown(fifo, 4242, 4242)
    with pytest.raises(PermissionError, match="is not written into"):
        write_tabular(long_form(TABLES), fifo, TabularFormat.csv)


@pytest.mark.parametrize("form", list(TabularFormat))
def test_a_report_to_a_fifo_is_written_into_it_and_the_fifo_stays(tmp_path: Path, form: TabularFormat) -> None:
    # Renamed over, the FIFO (or /dev/stdout's target, or /dev/null as root) was replaced by a file,
    # and its reader got nothing.
    import os
    import stat
    import threading

    fifo, copy = tmp_path / "report", tmp_path / f"read.{form.value}"
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: copy.write_bytes(fifo.read_bytes()), daemon=True)
    reader.start()
    write_tabular(long_form(TABLES), fifo, form)
    reader.join(10)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert _read(copy, form).height == 5


def test_a_parquet_report_into_a_fifo_is_one_open_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # polars' sink opens a path twice to write it (strace: two O_WRONLY|O_CREAT|O_TRUNC opens); a
    # FIFO's reader took the first close for the end, and the second open waited for a reader for
    # ever: the test above hung about one run in fifteen. A FIFO is handed to the sink as one open file.
    import os
    import threading

    import polars as pl

    targets: list[object] = []
    original = pl.LazyFrame.sink_parquet

    def recording(self: pl.LazyFrame, target: object, **options: object) -> object:
        targets.append(target)
        return original(self, target, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", recording)
    fifo, copy = tmp_path / "report", tmp_path / "read.parquet"
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: copy.write_bytes(fifo.read_bytes()), daemon=True)
    reader.start()
    write_tabular(long_form(TABLES), fifo, TabularFormat.parquet)
    reader.join(10)
    assert len(targets) == 1 and not isinstance(targets[0], str | Path)
    assert _read(copy, TabularFormat.parquet).height == 5
