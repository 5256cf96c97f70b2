"""Passwords of the URLs a command line names are overwritten with `*` in the process's own
argument memory, which `ps` and /proc/<pid>/cmdline show."""

from __future__ import annotations

import subprocess
import sys

import pytest

from keytrail.cli.command_line import _starred

_SHOW = (
    "import sys; from pathlib import Path; from keytrail.cli.command_line import hide_url_passwords; "
    "assert hide_url_passwords(sys.argv[1:]); sys.stdout.buffer.write(Path('/proc/self/cmdline').read_bytes())"
)


@pytest.mark.parametrize(
    ("url", "starred"),
    [
        ("postgresql://app:s3cret@db:5432/keys", "postgresql://app:******@db:5432/keys"),
        (
            "postgresql://app:e@db/keys?sslpassword=pass%20phrase&application_name=e",
            "postgresql://app:*@db/keys?sslpassword=*************&application_name=e",
        ),
        ("postgresql:///keys?host=db&password=p", "postgresql:///keys?host=db&password=*"),
        ("mqtts://alarms:hunter2@broker:8883", "mqtts://alarms:*******@broker:8883"),
        ("mqtt://user@broker:1883", "mqtt://user@broker:1883"),
    ],
)
def test_each_password_of_a_url_is_starred_and_nothing_else(url: str, starred: str) -> None:
    assert _starred(url) == starred and len(_starred(url)) == len(url)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/mem is Linux's")
def test_ps_shows_the_command_line_with_its_passwords_starred() -> None:
    store, mqtt = "postgresql://app:e-s3cret@db/keys", "mqtt://alarms:hunter2@broker:1883"
    shown = subprocess.run(
        [sys.executable, "-c", _SHOW, store, mqtt, "e-s3cret"], capture_output=True, check=True
    ).stdout
    assert shown.split(b"\0")[-4:] == [
        b"postgresql://app:********@db/keys",
        b"mqtt://alarms:*******@broker:1883",
        b"e-s3cret",
        b"",
    ]  # an argument that only equals a password is left
