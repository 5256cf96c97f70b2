"""The `keytrail` entry point: every error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _keytrail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "line"), [
    (["audit", "events", "--format", "xml"], "keytrail audit events: Invalid value for '--format'"),
    (["usage", "--bogus"], "keytrail usage: No such option: --bogus"),
    (["nope"], "keytrail: No such command 'nope'."),
])
def test_a_usage_error_is_one_line_naming_the_command(args: list[str], line: str) -> None:
    result = _keytrail(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(line) and result.stderr.endswith(" (see --help)\n")
    assert result.stderr.count("\n") == 1


def test_a_choice_not_offered_is_named_with_the_choices_in_plain_words() -> None:
    result = _keytrail("usage", "--format", "xml")
    assert result.returncode == 2
    assert result.stderr == ("keytrail usage: Invalid value for '--format': 'xml' is not one of 'table', 'json', "
                             "'csv'. (see --help)\n")


def test_help_and_exit_codes_pass_through() -> None:
    assert _keytrail("--help").returncode == 0
    alone = _keytrail()
    assert alone.returncode == 2 and "Usage: keytrail" in alone.stdout + alone.stderr
    assert "(see --help)" not in alone.stderr  # `keytrail` alone prints the help, no error line


def test_dev_credentials_are_refused_off_loopback(tmp_path: Path) -> None:
    result = _keytrail("serve", "--dev-credentials", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path))
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr == "keytrail serve: --dev-credentials is refused unless the server binds to loopback\n"
    assert not any(tmp_path.iterdir())  # refused before anything was created


@pytest.mark.parametrize("command", [["serve"], ["detect"], ["analyze"]])
def test_help_shows_the_settings_file_tables_literally(command: list[str]) -> None:
    # "[hooks]" is a TOML table; read as markup, help printed "detection rules ()" instead.
    text = " ".join(_keytrail(*command, "--help").stdout.split())
    assert "[rules.<id>]" in text and "[hooks]" in text


@pytest.mark.parametrize(("args", "path"), [
    (["usage", "--data-dir", "d"], "keytrail usage"),
    (["audit", "export", "out"], "keytrail audit export"),
    (["--help"], "keytrail"),
    (["report", "usage"], "keytrail report"),
])
def test_an_error_no_command_caught_names_the_command(args: list[str], path: str) -> None:
    from keytrail.cli import _command_path

    assert _command_path(args) == path
