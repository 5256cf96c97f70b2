"""The `keytrail` group loads a command's module only when that command runs, and lists them all
with the help each declares."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup

from keytrail.cli import app
from keytrail.cli.commands import COMMANDS, GROUPS, load_module_commands, summary_command

# What the command modules pull in, and none of the listing needs.
HEAVY = {"polars", "boto3", "botocore", "uvicorn", "uvloop", "aiokafka", "asyncpg", "fastavro", "pyarrow"}
COMMAND_MODULES = {listing.module for listing in COMMANDS.values()}

_RUN = ("import json, sys\n"
        "sys.argv = ['keytrail', *json.loads(sys.argv[1])]\n"
        "from keytrail.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n")


def _modules_loaded_by(*args: str) -> set[str]:
    """Every module a fresh `keytrail <args>` had imported when it finished."""
    result = subprocess.run([sys.executable, "-c", _RUN, json.dumps(args)], capture_output=True, text=True,
                            timeout=60)
    return set(json.loads(result.stderr.splitlines()[-1]))


@pytest.mark.parametrize("args", [["--help"], [], ["no-such-command"], ["--version"]])
def test_listing_the_commands_imports_none_of_their_modules(args: list[str]) -> None:
    loaded = _modules_loaded_by(*args)
    assert "typer" in loaded and "keytrail.cli.commands" in loaded  # the run got as far as the listing
    assert {name for name in loaded if name.split(".")[0] in HEAVY} == set()
    assert loaded & COMMAND_MODULES == set()


def test_a_command_loads_its_own_module_and_no_other_command_module() -> None:
    loaded = _modules_loaded_by("audit", "--help")
    assert "keytrail.cli.audit" in loaded
    assert loaded & COMMAND_MODULES == {"keytrail.cli.audit"}


@pytest.mark.parametrize(("args", "own_module", "unneeded"), [
    (["usage", "--help"], "keytrail.cli.metrics", ("keytrail.pipeline.query", "keytrail.detect")),
    (["cost", "--help"], "keytrail.cli.metrics", ("keytrail.pipeline.query", "keytrail.reports")),
    (["last-used", "--help"], "keytrail.cli.metrics", ("keytrail.pipeline.query",)),
    (["consume", "--help"], "keytrail.cli.metrics", ("keytrail.pipeline.consumer", "keytrail.cli.sidecar")),
    (["root-key", "rotate", "--help"], "keytrail.cli.root_key", ("keytrail.kms.postgres_store",
                                                                "keytrail.kms.sqlite_store", "keytrail.cli.serve")),
    (["demo", "--help"], "keytrail.cli.demo", ("keytrail.cli.demo_summary", "keytrail.detect")),
    (["serve", "--help"], "keytrail.cli.serve", ("keytrail.cli.node", "keytrail.api", "keytrail.detect")),
    (["detect", "--help"], "keytrail.cli.detect", ("keytrail.detect", "keytrail.kms.sqlite_store")),
    (["analyze", "--help"], "keytrail.cli.detect", ("keytrail.detect", "keytrail.kms.sqlite_store")),
    (["report", "--help"], "keytrail.cli.report", ("keytrail.reports.collect", "keytrail.reports.output",
                                                    "keytrail.pipeline.runner")),
    (["audit", "import", "--help"], "keytrail.cli.audit", ("keytrail.audit.cloudtrail_files",
                                                            "keytrail.audit.verification")),
], ids=["usage", "cost", "last-used", "consume", "root-key rotate", "demo", "serve", "detect", "analyze", "report",
        "audit import"])
def test_a_commands_help_imports_only_what_its_options_need(args: list[str], own_module: str,
                                                           unneeded: tuple[str, ...]) -> None:
    loaded = _modules_loaded_by(*args)
    assert own_module in loaded  # the help came from the command itself
    assert {name for name in loaded if name.split(".")[0] in HEAVY} == set()
    assert {name for name in loaded if name.startswith(unneeded)} == set()


def test_the_commands_listed_are_those_the_modules_register() -> None:
    registered: list[str] = []
    for module in dict.fromkeys(listing.module for listing in COMMANDS.values()):
        commands = load_module_commands(module)
        assert all(COMMANDS[name].module == module for name in commands)
        registered.extend(commands)
    assert sorted(registered) == sorted(COMMANDS)


def test_the_groups_listed_are_the_commands_that_are_groups() -> None:
    loaded = {name: command for module in dict.fromkeys(listing.module for listing in COMMANDS.values())
              for name, command in load_module_commands(module).items()}
    assert {name for name, command in loaded.items() if isinstance(command, TyperGroup)} == GROUPS


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_listed_line_is_the_first_paragraph_of_the_commands_own_help(name: str) -> None:
    command = load_module_commands(COMMANDS[name].module)[name]
    for limit in (20, 45, 60, 74, 1000):  # shortened as click shortens it, at any terminal width
        assert summary_command(name).get_short_help_str(limit) == command.get_short_help_str(limit)


@pytest.mark.parametrize("width", [40, 80, 200])
def test_keytrail_help_lists_the_commands_as_typer_lists_them_loaded(width: int) -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    with typer.Context(group, info_name="keytrail", terminal_width=width) as ctx:
        listed = ctx.make_formatter()
        group.format_commands(ctx, listed)
        loaded = ctx.make_formatter()
        TyperGroup.format_commands(group, ctx, loaded)  # typer's own: every command loaded, its help shortened
    assert listed.getvalue() == loaded.getvalue() and "root-key" in listed.getvalue()


def _counted_nothing_yet(data_dir: Path) -> Path:
    """`data_dir` with the state of a partition the consumer has counted no event of."""
    from keytrail.pipeline.query import state_dir
    from keytrail.pipeline.state import PartitionState

    state_dir(data_dir).mkdir(parents=True)
    PartitionState(state_dir(data_dir) / "segment-log.sqlite").close()
    return data_dir


def test_a_usage_query_loads_polars_and_not_the_consumers_modules(tmp_path: Path) -> None:
    """`keytrail usage` loaded the Avro decoder (fastavro) for one set of operation names, and the
    consumer's asyncio and runner for the name of a partition; and polars before finding that its
    data directory does not exist."""
    loaded = _modules_loaded_by("usage", "--data-dir", str(_counted_nothing_yet(tmp_path)))
    assert "polars" in loaded and "keytrail.pipeline.query" in loaded  # the query ran
    unneeded = ("fastavro", "asyncio", "keytrail.pipeline.runner", "keytrail.pipeline.frame", "keytrail.audit")
    assert {name for name in loaded if name.startswith(unneeded)} == set()
    missing = _modules_loaded_by("usage", "--data-dir", str(tmp_path / "no-such-dir"))
    assert "keytrail.cli.metrics" in missing and "polars" not in missing


@pytest.mark.parametrize("command", ["usage", "cost", "last-used"])
def test_a_query_of_a_data_dir_that_counted_nothing_yet_loads_no_polars(tmp_path: Path, command: str) -> None:
    """A new node's data dir (no metrics state yet) had polars loaded (~0.2 s) to answer nothing;
    the answer is the same (tests/unit/pipeline/test_cli_metrics.py), polars left unloaded."""
    loaded = _modules_loaded_by(command, "--data-dir", str(tmp_path), "--format", "json")
    assert "keytrail.cli.metrics" in loaded and "keytrail.pipeline.layout" in loaded  # the command ran
    assert {name for name in loaded if name.split(".")[0] in HEAVY} == set()
