"""The commands that read a data dir read one whose path is not valid UTF-8 (a data dir named in
Latin-1, `lat\\xe9n`, which Python sees as the surrogate-escaped str 'lat\\udce9n') as they read it
under a plain name: the same rows, the same report, the same alarms, and no traceback.

The data dir is made by a real `keytrail serve` session, stopped cleanly, and copied under the
Latin-1 name: the commands run on both copies and must agree. A serve started on a Latin-1 data
dir counts its calls as under a plain name (its consumer writes the metrics' Parquet files there).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from keytrail.pipeline.query import MetricsStore
from keytrail.pipeline.usage_files import COMPACT_AFTER
from tests.support.server import KeytrailServer
from tests.support.waits import eventually_blocking
from tests.unit.reports.records import key_arn, record

pytestmark = pytest.mark.integration

LATIN_1_NAME = os.fsdecode(b"lat\xe9n")  # 'lat\udce9n': not valid UTF-8, so surrogate-escaped


class Copies:
    """One serve session's data dir under a plain name and under a Latin-1 one."""

    def __init__(self, plain: Path, latin_1: Path, principals: Path, key_arn: str) -> None:
        self.plain, self.latin_1, self.principals, self.key_arn = plain, latin_1, principals, key_arn


def _serve(data_dir: Path) -> tuple[Path, str]:
    """A key created and used by alice, the node stopped cleanly: its principals file and the key's ARN."""
    server = KeytrailServer(data_dir).start()
    try:
        alice = server.client("alice")
        key_arn = alice.create_key(Description="latin-1")["KeyMetadata"]["Arn"]
        alice.decrypt(CiphertextBlob=alice.encrypt(KeyId=key_arn, Plaintext=b"x")["CiphertextBlob"])
        # a stop does not wait for the consumer to catch up: the three calls counted first
        counted = MetricsStore(data_dir, read_only=True).offsets
        eventually_blocking(lambda: sum(counted().values()) == 3, what="the calls counted")
    finally:
        assert server.stop() == 0
    return server.principals, key_arn


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Copies:
    folder = tmp_path_factory.mktemp("names")
    plain = folder / "data"
    principals, key_arn = _serve(plain)
    latin_1 = folder / LATIN_1_NAME / "data"
    shutil.copytree(plain, latin_1)
    return Copies(plain, latin_1, principals, key_arn)


def together(*commands: list[str | Path]) -> list[subprocess.CompletedProcess[str]]:
    """Run keytrail commands at once (each spends most of a second starting); each must exit 0."""
    started = [(command, subprocess.Popen([sys.executable, "-m", "keytrail", *map(str, command)], text=True,
                                          errors="surrogateescape", stdout=subprocess.PIPE, stderr=subprocess.PIPE))
               for command in commands]
    results = []
    for command, process in started:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, f"keytrail {' '.join(map(str, command))}: {stderr[-2000:]}"
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_usage_cost_and_last_used_read_a_data_dir_named_in_latin_1(copies: Copies) -> None:
    queries = [[name, "--data-dir", data_dir, "--format", "json"]
               for data_dir in (copies.latin_1, copies.plain) for name in ("usage", "cost", "last-used")]
    usage, cost, last_used, *plain = together(*queries)
    assert {(u["eventName"], u["principalArn"].rsplit("/")[-1], u["count"]) for u in json_lines(usage.stdout)} == {
        ("CreateKey", "alice", 1), ("Encrypt", "alice", 1), ("Decrypt", "alice", 1)}
    [key_cost] = json_lines(cost.stdout)
    assert key_cost["keyArn"] == copies.key_arn and key_cost["requests"] == 3
    [last] = json_lines(last_used.stdout)
    assert (last["keyArn"], last["lastUsedOperation"]) == (copies.key_arn, "Decrypt")
    assert [usage.stdout, cost.stdout, last_used.stdout] == [p.stdout for p in plain]


def test_serve_on_a_data_dir_named_in_latin_1_counts_its_calls(tmp_path: Path) -> None:
    (tmp_path / LATIN_1_NAME).mkdir()
    data_dir = tmp_path / LATIN_1_NAME / "data"
    _, arn = _serve(data_dir)  # the calls counted by serve's own consumer, as under a plain name
    metrics = data_dir / "metrics"
    assert [p.name for p in metrics.glob("usage/day=*/usage.parquet")] == ["usage.parquet"]
    assert (metrics / "last_used" / "last_used.parquet").stat().st_size > 0
    assert not [p for p in data_dir.rglob("*.tmp") if p.name.endswith(".parquet.tmp")]  # none left half-written
    usage, last_used = together(*([name, "--data-dir", data_dir, "--format", "json"]
                                  for name in ("usage", "last-used")))
    assert sorted((u["eventName"], u["count"]) for u in json_lines(usage.stdout)) == [
        ("CreateKey", 1), ("Decrypt", 1), ("Encrypt", 1)]
    assert [(last["keyArn"], last["lastUsedOperation"]) for last in json_lines(last_used.stdout)] == [
        (arn, "Decrypt")]


def test_consume_compacts_the_minute_files_of_a_data_dir_named_in_latin_1(tmp_path: Path) -> None:
    folder = tmp_path / LATIN_1_NAME
    folder.mkdir()
    calls = [record("Encrypt", datetime(2026, 11, 2, 8, n, tzinfo=UTC), key_arn("k0")) for n in range(20)]
    trail = folder / "trail.json.gz"
    trail.write_bytes(gzip.compress(json.dumps({"Records": calls}).encode()))
    data_dir = folder / "data"
    together(["consume", "--cloudtrail", trail, "--data-dir", data_dir, "--batch-size", "1",
              "--checkpoint-records", "1"])  # a file a call: more than compaction leaves of a day
    assert 0 < len(list(data_dir.glob("metrics/state/usage/day=2026-11-02/*.parquet"))) <= COMPACT_AFTER
    [usage] = together(["usage", "--data-dir", data_dir, "--format", "json"])
    assert [(u["eventName"], u["count"]) for u in json_lines(usage.stdout)] == [("Encrypt", 20)]


def test_a_parquet_report_written_under_a_latin_1_name_holds_the_plain_copy_s_rows(copies: Copies,
                                                                                  tmp_path: Path) -> None:
    out = tmp_path / LATIN_1_NAME / "report.parquet"
    together(["report", "--data-dir", copies.latin_1, "--format", "parquet", "--out", out],
             ["report", "--data-dir", copies.plain, "--format", "parquet", "--out", tmp_path / "plain.parquet"])
    with out.open("rb") as handle:  # polars cannot be given the Latin-1 path either
        written = pl.read_parquet(handle)
    assert written.filter(pl.col("table") == "usage").height == 3
    assert written.equals(pl.read_parquet(tmp_path / "plain.parquet"))


def _page_without_source(page: str, data_dir: Path) -> str:
    """The report page with its source path and its generation time left out: all else depends
    on the records alone."""
    shown = str(data_dir).encode("utf-8", "backslashreplace").decode("utf-8")
    assert f"source: <code>{shown}</code>" in page
    return re.sub(r"generated [\d-]+ [\d:]+ UTC", "generated", page.replace(shown, "DATA_DIR"))


def test_report_of_a_data_dir_named_in_latin_1_is_the_report_of_its_plain_copy(copies: Copies,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / LATIN_1_NAME / "report.html"
    latin_1, plain = together(["report", "--data-dir", copies.latin_1, "--out", out],
                              ["report", "--data-dir", copies.plain, "--out", tmp_path / "plain.html"])
    summary = latin_1.stderr.partition(" (html: ")[2]
    assert summary.startswith("3 events, 1 key,") and summary == plain.stderr.partition(" (html: ")[2]
    page = out.read_text(encoding="utf-8")  # the page says charset="utf-8": it must be UTF-8
    assert "lat\\udce9n" in page  # the undecodable byte shown as stderr shows it, not dropped
    assert _page_without_source(page, copies.latin_1) == _page_without_source(
        (tmp_path / "plain.html").read_text(encoding="utf-8"), copies.plain)


def test_analyze_reads_the_key_store_of_a_data_dir_named_in_latin_1(copies: Copies) -> None:
    latin_1, plain = together(*(["analyze", "--data-dir", data_dir, "--principals", copies.principals,
                                 "--format", "json"] for data_dir in (copies.latin_1, copies.plain)))
    alarms = json_lines(latin_1.stdout)
    assert ("rotation-disabled", copies.key_arn) in [(a["rule"], a["keyArn"]) for a in alarms]
    assert _findings(alarms) == _findings(json_lines(plain.stdout))


def _findings(alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alarms without what each run of analyze makes anew: their IDs and the time they were seen."""
    return [{k: v for k, v in alarm.items() if k not in ("alarmId", "firstSeen", "lastSeen")} for alarm in alarms]
