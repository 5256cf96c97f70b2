"""Every option the user guides give a `keytrail` command is one that command takes, and every
option and argument of every command says in its `--help` what it is for.

A reader copies `keytrail report --data-dir D --out F --table cost` from docs/reports.md, or
`serve --kafka-partitions` from a sentence of docs/audit-events.md; an option renamed in the code
and not on the page fails there with "No such option". tests/unit/test_deploy.py checks the
command names the guides use; this checks what follows them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer import _click as click

from keytrail.cli.commands import COMMANDS, load_module_commands

ROOT = Path(__file__).resolve().parents[3]
#: The user guides. benchmark-history.md is a record of past runs, kept as they were.
GUIDES = [ROOT / "README.md", *sorted(path for path in (ROOT / "docs").glob("*.md")
                                      if path.name != "benchmark-history.md")]
#: Between a command and its options, or two options: blanks, and a usage synopsis' brackets,
#: alternatives and ellipses (`[--data-dir DIR | --cloudtrail PATH…] [--since T]`).
_GAP = r"[\s\[\]|….]*\s[\s\[\]|….]*"
#: One option with at most one value after it (`--out report.html`, `--by=key`, `-n 10`).
_OPTION = rf"{_GAP}-{{1,2}}[a-z][a-z0-9-]*(?:[ =][^\s\[\]|-][^\s\[\]|]*)?"


def _leaves(name: str, command: click.Command) -> dict[str, click.Command]:
    """The runnable commands under `command` by their path (`audit verify`), itself if it runs."""
    subcommands: dict[str, click.Command] | None = getattr(command, "commands", None)
    if subcommands is None:
        return {name: command}
    return {path: leaf for sub, child in subcommands.items() for path, leaf in _leaves(f"{name} {sub}", child).items()}


def runnable_commands() -> dict[str, click.Command]:
    """Every runnable `keytrail` command by its path (`serve`, `audit verify`)."""
    commands: dict[str, click.Command] = {}
    for module in dict.fromkeys(listing.module for listing in COMMANDS.values()):
        for name, command in load_module_commands(module).items():
            commands.update(_leaves(name, command))
    return commands


def command_options() -> dict[str, set[str]]:
    """Every runnable `keytrail` command with the options it takes."""
    return {path: {"--help", *(option for param in command.params for option in (*param.opts, *param.secondary_opts)
                               if option.startswith("-"))}
            for path, command in runnable_commands().items()}


def _snippets(text: str) -> list[str]:
    """The lines of a page's code blocks and its inline code spans, as a reader copies them: lines
    continued by a backslash joined, command substitutions (`$(date -u +%FT%TZ)`) taken out."""
    text = re.sub(r"\\\n\s*", " ", text)
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    lines = [line for block in blocks for line in block.splitlines()]
    return [re.sub(r"\$\([^)]*\)", "X", snippet) for snippet in (*lines, *spans)]


def documented_options(text: str, commands: set[str]) -> list[tuple[str, str, str]]:
    """(command, option, snippet) for each option a page gives a command: after `keytrail <command>`,
    or after the command's name opening a phrase (`serve --kafka-partitions`, `detect --cloudtrail`)."""
    names = "|".join(re.escape(name) for name in sorted(commands, key=len, reverse=True))
    found = []
    for snippet in _snippets(text):
        for match in re.finditer(rf"(?:^|keytrail |(?<=[\s(]))({names})((?:{_OPTION})+)", snippet):
            options = re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", match.group(2))
            found += [(match.group(1), option, snippet.strip()) for option in options]
    return found


def test_the_reading_of_a_page_finds_the_options_it_gives_each_command() -> None:
    page = ("Run `keytrail report --data-dir D --out cost.csv --until \"$(date -u +%FT%TZ)\"`, or\n"
            "```sh\nkeytrail audit tail -n 3 \\\n    --no-follow | grep -e Decrypt\n```\n"
            "(`serve --kafka-partitions`, default 3). `keytrail cost [--since T] [--format …]`.\n"
            "```\nkeytrail consume [--data-dir DIR | --cloudtrail PATH…] [--no-follow]\n```\n")
    assert {(command, option) for command, option, _ in documented_options(page, set(command_options()))} == {
        ("report", "--data-dir"), ("report", "--out"), ("report", "--until"), ("audit tail", "-n"),
        ("audit tail", "--no-follow"), ("serve", "--kafka-partitions"), ("cost", "--since"), ("cost", "--format"),
        ("consume", "--data-dir"), ("consume", "--cloudtrail"), ("consume", "--no-follow")}


@pytest.mark.parametrize("guide", GUIDES, ids=lambda path: path.name)
def test_every_option_a_guide_gives_a_command_is_one_it_takes(guide: Path) -> None:
    options = command_options()
    given = documented_options(guide.read_text(), set(options))
    unknown = [f"{command} {option}: {snippet}" for command, option, snippet in given if option not in options[command]]
    assert unknown == [], f"{guide.relative_to(ROOT)} gives options these commands do not take"


def test_the_guides_name_many_options() -> None:
    # Guards the reading above: a regular expression that matched nothing would pass every page.
    named = {(command, option) for guide in GUIDES
             for command, option, _ in documented_options(guide.read_text(), set(command_options()))}
    assert len(named) > 60


def test_every_option_and_argument_of_every_command_says_what_it_is_for() -> None:
    # `keytrail audit events --help` listed `--format <json|text>  [default: json]` alone: what
    # `text` prints was nowhere but in the code, and `audit tail`'s `--follow / --no-follow` and
    # `audit export --format <cloudtrail>` likewise said nothing.
    silent = [f"keytrail {path} {param.opts[0]}" for path, command in runnable_commands().items()
              for param in command.params
              if param.expose_value and not (getattr(param, "help", None) or "").strip()]
    assert silent == [], "options and arguments whose --help says nothing of them"
