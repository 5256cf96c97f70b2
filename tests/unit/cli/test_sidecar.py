"""What `serve` runs as its children, how it reads the detector child's alarms, and the lock that
keeps a second child of a kind waiting."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from pathlib import Path

import pytest

from keytrail.children import ChildSpec
from keytrail.cli.sidecar import _config_text, _first_line, _hook_secrets, detector_lock, hold_lock, sidecars
from keytrail.config import ServeSettings
from keytrail.detect.alarm_tally import AlarmTally
from keytrail.detect.severity import Severity


def test_detector_child_gets_serves_config_mqtt_and_kafka(tmp_path: Path) -> None:
    settings = ServeSettings(data_dir=tmp_path, config=tmp_path / "k.toml", mqtt="mqtt://h:1883", kafka="k:9092")
    consumer, detector = sidecars(settings, lambda alarm_id, rule, severity: None)
    assert consumer.argv[-2:] == ("consumer", str(tmp_path))
    for child in (consumer, detector):  # one polars thread each beside the server
        assert child.environment_defaults == {"POLARS_MAX_THREADS": "1"}
    assert detector.argv[-4:] == ("detector", str(tmp_path), "--config", str(tmp_path / "k.toml"))
    # on its stdin: a password in the MQTT URL would be readable by every user in its command line
    # and the principals file serve reads, whose organizations the detector trusts (its own data dir's here)
    assert json.loads(_line(detector)) == {"mqtt": "mqtt://h:1883", "kafka": "k:9092",
                                           "principals": str(tmp_path / "principals.toml"), "secrets": {},
                                           "config": None}


def test_the_detector_child_gets_the_settings_text_serve_last_checked_at_each_start(tmp_path: Path) -> None:
    # A detector restarted after a crash runs on it, not on an edit not reloaded or a file broken since.
    texts = iter(["[rules.usage-spike]\nenabled = false\n", "[rules.usage-spike]\nenabled = true\n"])
    settings = ServeSettings(data_dir=tmp_path, config=tmp_path / "k.toml")
    [_, detector] = sidecars(settings, lambda alarm_id, rule, severity: None, config_text=lambda: next(texts))
    assert _config_text(_line(detector)) == "[rules.usage-spike]\nenabled = false\n"
    assert _config_text(_line(detector)) == "[rules.usage-spike]\nenabled = true\n"
    assert _config_text(b'{"mqtt": null, "kafka": null}') is None  # none given: the child reads the file


def _line(child: ChildSpec) -> bytes:
    """What serve writes on the child's stdin as it starts it."""
    return child.settings() if callable(child.settings) else child.settings or b""


def test_the_webhook_keys_serve_took_from_its_environment_reach_the_detector_on_its_stdin(tmp_path: Path) -> None:
    # Not in the children's environment, which every process of the user reads in /proc (cli/hook_secrets.py).
    settings = ServeSettings(data_dir=tmp_path, hook_secrets={"HOOK_KEY": "s3cret"})
    [consumer, detector] = sidecars(settings, lambda alarm_id, rule, severity: None)
    assert json.loads(_line(detector))["secrets"] == {"HOOK_KEY": "s3cret"}
    assert _hook_secrets(_line(detector)) == {"HOOK_KEY": "s3cret"}
    assert consumer.settings is None
    assert "s3cret" not in repr(settings)


def test_no_detector_runs_the_consumer_child_only(tmp_path: Path) -> None:
    assert [spec.name for spec in sidecars(ServeSettings(data_dir=tmp_path, detector=False), print)] == ["consumer"]


def _alarm_line(count: int, severity: str = "HIGH") -> bytes:
    alarm = {"alarmId": "a-1", "rule": "unauthorized-decrypt", "severity": severity, "count": count}
    return json.dumps(alarm).encode() + b"\n"


def test_detector_lines_are_counted_once_raised_and_once_per_escalation(tmp_path: Path) -> None:
    # A tick's update of an open alarm (its count) is a line too: counted, one alarm of a denial
    # flood went up by one each tick in keytrail_alarms_total, and its alerts fired again each time.
    tally = AlarmTally()
    [_, detector] = sidecars(ServeSettings(data_dir=tmp_path), tally.add)
    assert detector.on_line is not None
    for line in (_alarm_line(1, "MEDIUM"), _alarm_line(4, "MEDIUM"), _alarm_line(10), _alarm_line(12),
                 b"not an alarm\n", _alarm_line(13, "SEVERE")):
        detector.on_line(line)
    assert tally.counts == {("unauthorized-decrypt", "MEDIUM"): 1, ("unauthorized-decrypt", "HIGH"): 1}


def test_the_detector_child_s_judged_offset_lines_are_its_progress_not_alarms(tmp_path: Path) -> None:
    # serve tells the detector child's lag (the event log's end less this offset) in /metrics.
    seen: list[tuple[str, str, Severity]] = []
    judged: list[int] = []
    [_, detector] = sidecars(ServeSettings(data_dir=tmp_path),
                             lambda alarm_id, rule, severity: seen.append((alarm_id, rule, severity)), judged.append)
    assert detector.on_line is not None
    detector.on_line(b'{"judged":4000}\n')
    detector.on_line(_alarm_line(1))
    detector.on_line(b'[1, 2]\n')
    assert (judged, seen) == ([4000], [("a-1", "unauthorized-decrypt", Severity.HIGH)])


def test_each_child_s_held_lines_tell_serve_where_it_is_held_until_it_reads_on_or_exits(tmp_path: Path) -> None:
    # keytrail_event_log_reader_held: on a quiet node a held child's lag never reaches the lag alerts.
    held: dict[str, int | None] = {}
    alarms: list[str] = []
    consumer, detector = sidecars(ServeSettings(data_dir=tmp_path), lambda alarm_id, rule, severity:
                                  alarms.append(alarm_id), on_held=held.__setitem__)
    assert consumer.on_line is not None and detector.on_line is not None
    consumer.on_line(b'{"held": 1200}\n')
    detector.on_line(b'{"held": 1200}\n')
    detector.on_line(_alarm_line(1))
    assert held == {"consumer": 1200, "detector": 1200} and alarms == ["a-1"]
    consumer.on_line(b'{"held": null}\n')
    assert held == {"consumer": None, "detector": 1200}
    assert detector.on_exit is not None
    detector.on_exit()  # a restarted child watches anew, and would not say that it reads on
    assert held == {"consumer": None, "detector": None}


def test_output_of_the_consumer_child_that_is_no_held_line_is_logged_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    held: dict[str, int | None] = {}
    [consumer] = sidecars(ServeSettings(data_dir=tmp_path, detector=False), print, on_held=held.__setitem__)
    assert consumer.on_line is not None
    for line in (b"Traceback (most recent call last):\n", b'"held"\n', b'{"held": "12"}\n', b"[1]\n"):
        consumer.on_line(line)
    assert held == {} and caplog.text.count("consumer child: unexpected output") == 4


async def test_a_held_lock_keeps_the_next_holder_waiting(tmp_path: Path) -> None:
    path = detector_lock(tmp_path)
    other = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)  # a previous serve's child, still finishing
    stopping = asyncio.Event()
    waiting = asyncio.create_task(hold_lock(path, stopping))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    os.close(other)  # it exits
    assert await asyncio.wait_for(waiting, 5)
    stopping.set()
    assert not await hold_lock(path, stopping)  # told to stop while waiting: gives up


def test_the_detector_childs_hooks_line_is_read_whole_or_its_absence_said() -> None:
    """A serve that never writes the line (one older than this keytrail, upgraded in place) left
    the child waiting for it for good: now it gets None after the wait."""
    read, write = os.pipe()
    try:
        assert _first_line(read, 0.1) is None  # nothing written, the pipe still open
        os.write(write, b'{"mqtt": null, "kafka": null}\n')
        assert _first_line(read, 0.1) == b'{"mqtt": null, "kafka": null}\n'
        os.write(write, b'{"mqtt": null,')
        assert _first_line(read, 0.1) is None  # half a line, no more
        os.close(write)
        assert _first_line(read, 5) == b""  # its end: serve gone before writing it
    finally:
        os.close(read)
