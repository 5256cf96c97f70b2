"""What a first start of `keytrail serve` prints for the admin user it made: a line to paste into a
shell that every client then reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keytrail.cli.start_made import NewAdmin, _print_new_admin
from keytrail.config import ServeSettings


def _pasted(line: str, command: str) -> str:
    """What `command` prints in a shell, with nothing in its environment, once `line` is pasted."""
    shell = subprocess.run(["bash", "-c", f"{line}\n{command}"], capture_output=True, text=True, check=True,
                           env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    return shell.stdout


def test_the_admins_export_line_names_the_region_as_every_sdk_reads_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The AWS SDKs' shared setting is AWS_REGION (the JavaScript v3 and Java v2 SDKs read only it,
    # and said "Region is missing"); boto3 and the aws CLI v1 read only AWS_DEFAULT_REGION.
    admin = NewAdmin(tmp_path / "principals.toml", "AKIAEXAMPLE000000001", "secret")
    _print_new_admin(admin, ServeSettings(data_dir=tmp_path, port=4599))
    line = capsys.readouterr().out.splitlines()[1]
    assert _pasted(line, 'printf "%s" "$AWS_REGION"') == "us-east-1"
    boto3_region = f"{sys.executable} -c 'import boto3; print(boto3.session.Session().region_name)'"
    assert _pasted(line, boto3_region) == "us-east-1\n"
