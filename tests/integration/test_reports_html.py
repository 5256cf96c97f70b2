"""The HTML report: its tables show the numbers of `keytrail usage | cost --format json`, and it
renders in headless Chromium (screenshot checked non-blank), opened from disk with no network."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.unit.reports.commands import cli_commands
from tests.unit.reports.records import key_arn, record, user_arn

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 20, 9, tzinfo=UTC)


def keytrail(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "keytrail", *args], capture_output=True, text=True, timeout=240)
    if result.returncode != 0:
        pytest.fail(f"keytrail {' '.join(args)} exited {result.returncode}: {result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(HTML report from CloudTrail files, data dir that `keytrail consume` filled from the same files)."""
    missing = [name for name in ("consume", "usage", "cost", "report") if name not in cli_commands()]
    assert not missing, f"keytrail commands missing from the CLI: {', '.join(missing)}"
    root = tmp_path_factory.mktemp("html")
    keys = [key_arn(f"h{n}") for n in range(5)]
    events = [record("CreateKey", START, key) for key in keys]
    # A service event: in the usage table, and no request (the requests card said it was).
    rotation = record("RotateKey", START + timedelta(hours=1), keys[0])
    rotation.update(userIdentity={"accountId": keys[0].split(":")[4], "invokedBy": "AWS Internal"},
                    eventType="AwsServiceEvent", requestParameters=None)
    events.append(rotation)
    for minute in range(0, 8 * 60, 3):
        when = START + timedelta(minutes=minute)
        events.append(record("Decrypt", when, keys[minute % 3], user_arn(("alice", "app", "etl")[minute % 2])))
        if minute % 45 == 0:
            events.append(record("Decrypt", when, keys[3], user_arn("mallory"), error="AccessDenied"))
    (root / "trail.json.gz").write_bytes(gzip.compress(json.dumps({"Records": events}).encode()))
    html, data_dir = root / "report.html", root / "data"
    keytrail("report", "--cloudtrail", str(root / "trail.json.gz"), "--out", str(html))
    keytrail("consume", "--cloudtrail", str(root / "trail.json.gz"), "--data-dir", str(data_dir), "--no-follow")
    return html, data_dir


class _Tables(HTMLParser):
    """Text of every cell of every <table id=…>, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag == "td" and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(path: Path) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(path.read_text())
    return {name: [row for row in rows if row] for name, rows in parser.tables.items()}


def _json(text: str) -> list[dict[str, Any]]:
    return [json.loads(line, parse_float=Decimal) for line in text.splitlines() if line.strip()]


def _usd(value: Decimal) -> str:
    """How the report prints money: cents from a dollar up, four places below."""
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"


def test_html_usage_table_shows_the_usage_query(report: tuple[Path, Path]) -> None:
    html, data_dir = report
    rows = _json(keytrail("usage", "--data-dir", str(data_dir), "--format", "json"))
    expected = {(r["keyArn"], r["principalArn"], r["eventName"], r["accountId"], f"{r['count']:,}",
                 f"{r['errorCount']:,}") for r in rows}
    shown = {tuple(row) for row in html_tables(html)["usage"]}
    assert shown == expected


def test_html_cost_table_shows_the_cost_query(report: tuple[Path, Path]) -> None:
    html, data_dir = report
    rows = _json(keytrail("cost", "--data-dir", str(data_dir), "--format", "json"))
    expected = {(r["keyArn"], r["accountId"], f"{r['requests']:,}", _usd(r["totalCost"])) for r in rows}
    shown = {(row[0], row[1], row[4], row[6]) for row in html_tables(html)["cost"]}
    assert shown == expected


class _Cards(HTMLParser):
    """The report's headline figures: {name: value as shown}."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self._figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "div" and (figure := dict(attrs).get("data-figure")):
            self._figure = figure

    def handle_data(self, data: str) -> None:
        if self._figure is not None and data.strip():
            self.figures[self._figure], self._figure = data.strip(), None


def test_html_requests_card_counts_what_the_cost_query_bills(report: tuple[Path, Path]) -> None:
    # It summed the usage rows, whose RotateKey service event (and the like) is no request.
    html, data_dir = report
    cards = _Cards()
    cards.feed(html.read_text())
    billed = sum(r["requests"] for r in _json(keytrail("cost", "--data-dir", str(data_dir), "--format", "json")))
    calls = sum(r["count"] for r in _json(keytrail("usage", "--data-dir", str(data_dir), "--format", "json")))
    assert cards.figures["requests"] == f"{billed:,}" and billed == calls - 1


def test_html_has_no_network_references(report: tuple[Path, Path]) -> None:
    page = report[0].read_text()
    for marker in ("<script", "<link", "<img", "@import", "url("):
        assert marker not in page


def chromium() -> str:
    """The Debian `chromium` binary (`scripts/install test` installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("headless Chromium is not installed: run scripts/install test (apt-get install chromium)")
    return found


def test_html_report_renders_in_headless_chromium(report: tuple[Path, Path], tmp_path: Path) -> None:
    browser, shot = chromium(), tmp_path / "report.png"
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2000",
            "--virtual-time-budget=5000",  # let layout finish before the shot
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
            report[0].resolve().as_uri()]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), result.stderr[-2000:]
    width, height, pixels = read_png(shot.read_bytes())
    assert (width, height) == (1200, 2000)
    ink = sum(1 for p in pixels if p[:3] != (255, 255, 255)) / len(pixels)
    assert ink > 0.03, f"screenshot is almost blank ({ink:.2%} non-white)"
    colours = {p[:3] for p in pixels}
    assert len(colours) > 20, "screenshot has too few colours for charts and tables"
    assert (0x2F, 0x6D, 0xB5) in colours, "no chart drawn: the bars' fill colour (svg.PALETTE[0]) is missing"


# A role ARN has no hyphen to wrap at: as one word it set the width of every column it is in.
LONG_ROLE = "arn:aws:iam::111122223333:role/DataPlatformNightlyIngestionServiceRole"


def _alarm(key: str, when: datetime) -> dict[str, Any]:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"alarmId": "3d70a8f2-8263-6f2a-9001-cb00534f5272", "rule": "unauthorized-decrypt", "severity": "HIGH",
            "keyArn": key, "principalArn": LONG_ROLE, "accountId": "111122223333", "region": "us-east-1",
            "firstSeen": stamp, "lastSeen": stamp, "count": 1, "eventIds": ["00000000-0000-4000-8000-000000000001"],
            "summary": f"{LONG_ROLE} was denied Decrypt on {key} (implicit deny, identity-based policy)",
            "recommendation": f"Check whether {LONG_ROLE} should use this key. If not, find where its "
                              "credentials are used and rotate them; if it should, grant it in the key policy.",
            "details": {}}


def with_probe(page: str, script: str) -> str:
    """`page` with `script` added at the end of its body and allowed by hash in its Content-Security-
    Policy, the rest of the policy as the report wrote it."""
    allowed = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert "default-src 'none'; " in page
    page = page.replace("default-src 'none'; ", f"default-src 'none'; script-src 'sha256-{allowed}'; ", 1)
    return page.replace("</body>", f"<script>{script}</script></body>")


def dump_dom(page: str, tmp_path: Path, window: int = 1300) -> str:
    """The DOM of `page` after headless Chromium ran it, opened from disk."""
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={window},1000",
            "--virtual-time-budget=2000", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom", probe.resolve().as_uri()]
    return subprocess.run(args, capture_output=True, text=True, timeout=120).stdout


def page_width(html: Path, tmp_path: Path, window: int) -> int:
    """The width the page lays out to in headless Chromium at `window` pixels (a script added to a
    copy: the report itself has none)."""
    script = "document.body.dataset.width = document.documentElement.scrollWidth"
    dom = dump_dom(with_probe(html.read_text(), script), tmp_path, window)
    found = re.search(r'data-width="(\d+)"', dom)
    assert found, dom[-2000:]
    return int(found.group(1))


def test_the_report_s_policy_applies_its_style_and_runs_no_script_that_slipped_in(
        report: tuple[Path, Path], tmp_path: Path) -> None:
    # An escaping slip would put markup from an imported record into the page: the Content-Security-
    # Policy runs no script the report did not allow, while its own style (allowed by hash) applies.
    slipped = "<script>document.body.dataset.slipped = 'ran'</script>"
    page = report[0].read_text().replace("</h1>", f"</h1>{slipped}", 1)
    probe = "document.body.dataset.h1 = getComputedStyle(document.querySelector('h1')).fontSize"
    dom = dump_dom(with_probe(page, probe), tmp_path)
    assert 'data-h1="22px"' in dom, dom[-2000:]  # _CSS's h1{font-size:22px}; unstyled it is 32px
    assert "data-slipped" not in dom


def test_html_report_fits_its_page_width_however_long_the_arns(tmp_path: Path) -> None:
    """The alarms table set a role ARN, unbroken, in three of its columns: 1,272 px on a page
    of 1,100, cut off at the right on a laptop's screen and on paper."""
    key = key_arn("1234abcd-12ab-34cd-56ef-1234567890ab")
    events = [record("CreateKey", START, key), record("Decrypt", START + timedelta(minutes=5), key, LONG_ROLE,
                                                      error="AccessDenied")]
    (tmp_path / "trail.json").write_text(json.dumps({"Records": events}))
    (tmp_path / "alarms.jsonl").write_text(json.dumps(_alarm(key, START + timedelta(minutes=5))) + "\n")
    html = tmp_path / "report.html"
    keytrail("report", "--cloudtrail", str(tmp_path / "trail.json"), "--alarms", str(tmp_path / "alarms.jsonl"),
             "--out", str(html))
    assert LONG_ROLE in html.read_text()
    assert page_width(html, tmp_path, 1300) <= 1300


def test_a_bidirectional_override_in_a_record_is_shown_not_obeyed(tmp_path: Path) -> None:
    # U+202E in an imported record's user name turned the rest of the ARN right to left on the page:
    # "...:user/evil\u202egnp.ecila" read as "...:user/evilalice.png". It is shown as its escape.
    key, who = key_arn("1234abcd-12ab-34cd-56ef-1234567890ab"), user_arn("evil\u202egnp.ecila")
    events = [record("CreateKey", START, key), record("Decrypt", START + timedelta(minutes=5), key, who)]
    (tmp_path / "trail.json").write_text(json.dumps({"Records": events}))
    html = tmp_path / "report.html"
    keytrail("report", "--cloudtrail", str(tmp_path / "trail.json"), "--out", str(html))
    page = html.read_text()
    assert "\u202e" not in page
    assert user_arn("evil\\u202egnp.ecila") in page


def read_png(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Pixels of an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunk = data[position + 8:position + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0
    channels = 3 if colour == 2 else 4
    rows = _unfilter(zlib.decompress(idat), width * channels, height, channels)
    return width, height, [tuple(row[i:i + channels]) for row in rows for i in range(0, len(row), channels)]


def _unfilter(raw: bytes, stride: int, height: int, bpp: int) -> list[bytes]:
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up, corner = previous[x], previous[x - bpp] if x >= bpp else 0
            line[x] = (line[x] + _predict(kind, left, up, corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return rows


def _predict(kind: int, left: int, up: int, corner: int) -> int:
    if kind == 1:
        return left
    if kind == 2:
        return up
    if kind == 3:
        return (left + up) // 2
    if kind == 4:
        estimate = left + up - corner
        a, b, c = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
        return left if a <= b and a <= c else (up if b <= c else corner)
    return 0
