"""The commands the `keytrail` CLI really has, asked of a fresh interpreter (as a user would run it)."""

from __future__ import annotations

import functools
import subprocess
import sys

_LIST = ("import typer\nfrom keytrail.cli import app\n"
         "group = typer.main.get_command(app)\n"
         "for name, command in group.commands.items():\n"
         "    print(name)\n"
         "    for sub in getattr(command, 'commands', {}):\n"
         "        print(name, sub)\n")


@functools.cache
def cli_commands() -> frozenset[str]:
    """Every command name, and `group sub` for the commands of a group (e.g. `audit import`)."""
    result = subprocess.run([sys.executable, "-c", _LIST], capture_output=True, text=True, timeout=120, check=True)
    return frozenset(line.strip() for line in result.stdout.splitlines() if line.strip())
