"""The `keytrail` commands by name, each command's module imported only when that command runs.

Importing every command module to list them cost `keytrail --help` about 1.5 s and 100 MB: they
need polars, boto3, uvicorn, aiokafka, asyncpg, fastavro… So the group loads a command's module
when the command is asked for (`keytrail usage …` loads metrics.py alone), and `keytrail --help`
lists the commands from one line each declared here: a test checks each equals the first
paragraph of the help its command declares, so they cannot drift.

Within a module, what only the command's work needs is imported in the functions doing it (types
under TYPE_CHECKING), so that `keytrail usage --help` is cheap too. That alone would not do: typer
builds every listed command from its signature, and one heavy import slipped in at the top of any
module would slow every command again; loaded lazily, such a slip costs only its own command.
tests/unit/cli/test_commands.py checks both in a fresh interpreter.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import Any, NamedTuple

import typer
from typer import _click as click  # typer's own copy of click, of which its commands are made
from typer.core import TyperCommand, TyperGroup

__all__ = ["COMMANDS", "GROUPS", "LazyGroup", "load_module_commands"]


class Listing(NamedTuple):
    """Where a command is defined, and what `keytrail --help` says of it."""

    module: str  # a module of keytrail.cli whose `register(app)` adds the command
    summary: str  # the first paragraph of the command's help


# In the order `keytrail --help` lists them.
COMMANDS: dict[str, Listing] = {
    "serve": Listing("keytrail.cli.serve",
                     "Serve the AWS KMS API with the audit trail, consumers and detector in one process."),
    "demo": Listing("keytrail.cli.demo",
                    "Start keytrail, drive a scripted quarter of KMS traffic through boto3, show the alarms, "
                    "usage, cost and the HTML report it produced."),
    "detect": Listing("keytrail.cli.detect",
                      "Run the detection rules: offline over CloudTrail logs, or live over the Kafka audit topic."),
    "analyze": Listing("keytrail.cli.detect",
                       "Check every key's policy and grants for public, cross-account and over-broad access, every "
                       "principal's identity policies for decryption with every key, and every customer managed "
                       "symmetric key for automatic rotation: the keys and principals of a node (--data-dir, "
                       "default ./keytrail-data) or an exported inventory."),
    "report": Listing("keytrail.cli.report",
                      "Write a usage, cost, last-used, denied-calls and alarms report "
                      "(HTML, CSV, JSON lines or Parquet)."),
    "usage": Listing("keytrail.cli.metrics",
                     "Requests and errors per key, principal, account and operation "
                     "(optionally per time window)."),
    "cost": Listing("keytrail.cli.metrics",
                    "Cost in USD per key and account: key-months (prorated hourly) and requests by price class."),
    "last-used": Listing("keytrail.cli.metrics",
                         "When each key was last used by a successful cryptographic operation "
                         "(null: never, since tracking)."),
    "consume": Listing("keytrail.cli.metrics",
                       "Run the usage, cost and last-used consumer until stopped (SIGTERM/SIGINT) "
                       "or the input ends."),
    "audit": Listing("keytrail.cli.audit", "The audit trail: CloudTrail-format events of every KMS call."),
    "root-key": Listing("keytrail.cli.root_key",
                        "The root key that seals all key material (docs/operations.md, \"Root key\")."),
}

# The COMMANDS that are groups of commands (`keytrail audit verify`), known without loading them.
GROUPS = frozenset({"audit", "root-key"})


def load_module_commands(module: str) -> dict[str, click.Command]:
    """The commands a module registers, built as typer builds those of the `keytrail` app (whose
    settings the holder repeats: rich_markup_mode=None keeps the help texts literal)."""
    holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    importlib.import_module(module).register(holder)
    return dict(typer.main.get_group(holder).commands)


class LazyCommands(MutableMapping[str, click.Command]):
    """The `keytrail` commands by name: the names are known up front, each module loads on first use."""

    def __init__(self) -> None:
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded and name in COMMANDS:
            self._loaded.update(load_module_commands(COMMANDS[name].module))
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*COMMANDS, *self._loaded]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*COMMANDS, *self._loaded]))


class LazyGroup(TyperGroup):
    """The `keytrail` group over COMMANDS: resolving a command loads its module; listing them
    (help, the suggestions for a mistyped name) loads none."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The rows typer writes, each command's line shortened from its summary as click shortens
        the command's own help (to what fits the terminal's width)."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, summary_command(name).get_short_help_str(limit)) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def summary_command(name: str) -> TyperCommand:
    """A stand-in for the command, with the help `keytrail --help` shows for it (and nothing to run)."""
    return TyperCommand(name=name, help=COMMANDS[name].summary)
