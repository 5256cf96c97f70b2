"""SIGHUP re-reads `serve --config` too (docs/detection-rules.md, "Configuration file"): an edited
settings file restarts the detector child on it, a broken one is one log line and the detector
keeps the rules and hooks it runs with, an unchanged one restarts nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.e2e.support import eventually
from tests.support.errors import aws_error
from tests.support.processes import child_commands
from tests.support.server import KeytrailServer

pytestmark = pytest.mark.integration

_DISABLED = "[rules.unauthorized-decrypt]\nenabled = false\n"
_ENABLED = "[rules.unauthorized-decrypt]\nenabled = true\n"


def _detector(server: KeytrailServer) -> int | None:
    """The pid of serve's detector child, None between two of its runs."""
    assert server.proc is not None
    return next((pid for pid, args in child_commands(server.proc.pid).items()
                 if b"keytrail.cli.sidecar" in args and b"detector" in args), None)


def _log_after(server: KeytrailServer, start: int, text: str) -> str:
    """The first line of the server's log after byte `start` that holds `text` (waited for)."""
    def found() -> str | None:
        return next((line for line in server.log.read_text()[start:].splitlines() if text in line), None)

    return eventually(found, what=f"a log line with {text!r}")


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[tuple[KeytrailServer, Path]]:
    config = tmp_path / "settings.toml"
    config.write_text(_DISABLED)
    running = KeytrailServer(tmp_path / "data", "--config", str(config), dev_clock=False).start()
    try:
        yield running, config
    finally:
        if running.proc is not None:
            running.stop()


def _hangup(server: KeytrailServer) -> int:
    """SIGHUP the server; the size of its log before, to read what the reload said."""
    assert server.proc is not None
    start = len(server.log.read_text())
    server.proc.send_signal(signal.SIGHUP)
    return start


def test_an_edited_settings_file_is_in_force_after_sighup(configured: tuple[KeytrailServer, Path]) -> None:
    server, config = configured
    alice = server.client("alice")
    blob = alice.encrypt(KeyId=alice.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    assert aws_error(server.client("bob").decrypt, CiphertextBlob=blob)[0] == "AccessDeniedException"
    first = eventually(lambda: _detector(server), what="the detector child")
    config.write_text(_ENABLED)
    start = _hangup(server)
    line = _log_after(server, start, "settings file")
    assert f"settings file {config} reloaded" in line and "detector" in line
    # The detector restarted on the new file judges the calls of the event log again: the denied
    # Decrypt made before the reload raises the alarm its rule, now on, raises.
    eventually(lambda: "unauthorized-decrypt" in _alarms(server), timeout=60, what="the re-enabled rule's alarm")
    assert _detector(server) not in (None, first)
    assert "restarting in" not in server.log.read_text()[start:]  # asked for: no crash said, none counted
    assert 'keytrail_child_restarts_total{child="detector"} 0' in server.get("/metrics")[1].decode()


def test_a_broken_settings_file_is_one_line_and_the_detector_runs_on(
        configured: tuple[KeytrailServer, Path]) -> None:
    server, config = configured
    first = eventually(lambda: _detector(server), what="the detector child")
    config.write_text("[rules.unauthorized-decrypt]\nenabled = 'maybe'\n")
    start = _hangup(server)
    line = _log_after(server, start, "settings file")
    assert "ERROR" in line and f"settings file {config} not reloaded" in line and "enabled" in line
    assert "principals file reloaded" in server.log.read_text()[start:]  # the principals reload is not held back
    time.sleep(1)  # what a restart would take: the detector child is still the one it was
    assert _detector(server) == first
    assert server.answers_health()


def test_a_sighup_with_the_settings_file_unchanged_restarts_no_detector(
        configured: tuple[KeytrailServer, Path]) -> None:
    server, config = configured
    first = eventually(lambda: _detector(server), what="the detector child")
    config.write_text("# a comment changes no rule\n" + _DISABLED)
    start = _hangup(server)
    _log_after(server, start, "principals file reloaded")
    time.sleep(1)
    assert _detector(server) == first
    assert "settings file" not in server.log.read_text()[start:]


def test_under_the_dev_clock_an_edited_settings_file_is_said_to_need_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(_DISABLED)
    server = KeytrailServer(tmp_path / "data", "--config", str(config)).start()
    try:
        config.write_text(_ENABLED)
        line = _log_after(server, _hangup(server), "settings file")
        assert f"settings file {config} not reloaded" in line and "--dev-clock" in line and "restart" in line
    finally:
        assert server.stop() == 0


def _alarms(server: KeytrailServer) -> str:
    path = server.data_dir / "alarms.jsonl"
    return path.read_text() if path.exists() else ""


def test_a_webhook_key_serve_took_from_its_environment_reads_again_after_sighup(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # serve takes the variable a webhook's secret_env names out of its environment, which its
    # children inherit (cli/hook_secrets.py): the reload reads it from what serve took.
    monkeypatch.setenv("KEYTRAIL_TEST_HOOK_KEY", "hook-key")
    webhook = '[[hooks.webhook]]\nurl = "http://127.0.0.1:9/hook"\nsecret_env = "KEYTRAIL_TEST_HOOK_KEY"\n'
    config = tmp_path / "settings.toml"
    config.write_text(_DISABLED + webhook)
    server = KeytrailServer(tmp_path / "data", "--config", str(config), dev_clock=False).start()
    try:
        config.write_text(_ENABLED + webhook)
        line = _log_after(server, _hangup(server), "settings file")
        assert f"settings file {config} reloaded" in line, line
    finally:
        assert server.stop() == 0
