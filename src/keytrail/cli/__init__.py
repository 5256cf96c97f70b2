"""The `keytrail` command: the composition root that wires every piece together.

Each command group lives in its own module of this package, loaded only when one of its commands
runs (commands.py says why); this module only assembles them.
"""

from __future__ import annotations

import codecs
import io
import itertools
import os
import sys
from typing import Annotated

import typer

from keytrail import __version__
from keytrail.cli.commands import GROUPS, LazyGroup

__all__ = ["app", "main"]

app = typer.Typer(
    name="keytrail",
    cls=LazyGroup,
    help="A self-hosted key service speaking the AWS KMS API, with a trustworthy audit trail.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts are literal: "[hooks]" is a TOML table, not a style tag
)


def _show_version(asked: bool) -> None:
    """`keytrail --version`: the version of the keytrail running, the one its package metadata
    (`pip show keytrail`), /_keytrail/health and the HTML report name; no command module loads."""
    if asked:
        sys.stdout.write(f"keytrail {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, expose_value=False, callback=_show_version,
                                          help="Show the version and exit.")] = False,
) -> None:
    """keytrail: a self-hosted AWS KMS-compatible key service with a trustworthy audit trail."""


def main() -> None:
    """The console entry point. Every error is one line on stderr and a non-zero exit: a usage
    error (unknown option, a value out of range) names the command, as the commands' own errors do."""
    _fill_closed_standard_streams()
    _escape_what_stdout_cannot_encode()
    if _empty_data_dir(sys.argv[1:]):
        sys.stderr.write(f"{_command_path(sys.argv[1:])}: --data-dir is empty (an unset variable?): name the "
                         "node's data directory\n")
        sys.exit(2)
    try:
        code = app(standalone_mode=False, prog_name="keytrail")
    except KeyboardInterrupt:  # Ctrl-C before typer's main; in it (a command loading or running) typer exits 130
        sys.exit(130)
    except typer.TyperException as error:  # click's usage and parameter errors
        ctx = getattr(error, "ctx", None)
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        # typer validates choices with pydantic, whose message for them starts "Value error, ".
        message = message.replace(": Value error, ", ": ", 1)
        if type(error).__name__ == "NoArgsIsHelpError":  # `keytrail` alone: the message is the help
            sys.stderr.write(f"{message}\n")
        elif message:
            # An option missing its value or given one it takes none of comes from click's parser
            # without a context: the command is then read from the arguments.
            sys.stderr.write(f"{ctx.command_path if ctx else _command_path(sys.argv[1:])}: {message} (see --help)\n")
        sys.exit(getattr(error, "exit_code", 2))
    except typer.Abort:
        sys.stderr.write("keytrail: aborted\n")
        sys.exit(1)
    except OSError as error:  # what no command handled (e.g. stdout on a full disk): one line, not a traceback
        where = f": {error.filename}" if error.filename else ""
        sys.stderr.write(f"{_command_path(sys.argv[1:])}: {error.strerror or error}{where}\n")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _empty_data_dir(args: list[str]) -> bool:
    """Whether `--data-dir` is given as "" (`--data-dir "$DIR"` with DIR unset): click makes it the
    current directory, where serve then created a new root key, key store and principals file
    without a word (`/` under systemd); and the empty text cannot be told from "." past click."""
    options = args[: args.index("--")] if "--" in args else args
    return "--data-dir=" in options or any(
        option == "--data-dir" and value == "" for option, value in itertools.pairwise(options))


def _command_path(args: list[str]) -> str:
    """`keytrail <command>` (`keytrail audit <command>`, `keytrail root-key rotate`: a group's
    command) as the arguments name it: errors no command caught still say which command failed, as
    the commands' own errors do."""
    words = ["keytrail"]
    for arg in args[:2]:
        if arg.startswith("-") or (len(words) == 2 and words[1] not in GROUPS):
            break
        words.append(arg)
    return " ".join(words)


def _fill_closed_standard_streams() -> None:
    """A standard stream the caller closed (`keytrail serve >&-`) gets /dev/null.
    Closed, Python made sys.stdout None, on which uvicorn's logging setup failed with a traceback,
    and the next file opened (the key store, a segment) took the free descriptor, for the children
    and any write to it to scribble on. Stdout's is read-only, so a write still fails (EBADF) as on
    a closed stream: serve does not take the credentials it makes for printed. Stderr's takes what
    is written and drops it: what goes there (progress, "wrote …", warnings) is for a reader the
    caller sent away, and a report written whole exited 1 for the line saying so. Each is inherited
    as a standard stream is: os.open's close-on-exec left a child (report's reader of the event log,
    serve's consumers) with the descriptor closed again, and its sys.stderr None (a traceback)."""
    for fd, name, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_RDONLY), (2, "stderr", os.O_WRONLY)):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        opened = os.open(os.devnull, flags)  # the lowest free descriptor: `fd` itself
        if opened != fd:
            os.dup2(opened, fd)
            os.close(opened)
        os.set_inheritable(fd, True)
        mode = "r" if fd == 0 else "w"
        setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, mode, closefd=False), line_buffering=fd == 2))


def _escape_what_stdout_cannot_encode() -> None:
    """A character stdout's encoding lacks (Latin-1 under an ISO-8859-1 locale) is printed as a
    backslash escape, as Python's stderr does: imported records, tags and encryption contexts hold
    any text, and a name in one ended the output in a UnicodeEncodeError traceback. (Under the C
    locale Python's stdout has surrogateescape, which fails on them as strict does.)

    An ASCII stream (LC_ALL=C with PYTHONUTF8=0) is made UTF-8, as Python's UTF-8 mode makes it
    under a bare LC_ALL=C: click, which prints most lines, takes an ASCII stream for misconfigured
    and writes UTF-8 with "replace" itself, so a path given in the locale's bytes (surrogates to
    Python) was printed "r??p.html", not as given; and the other lines, escaped, disagreed with it."""
    codecs.register_error(_STDOUT_ERRORS, _file_name_bytes_else_escaped)
    for stream in (sys.stdout, sys.stderr):
        if not isinstance(stream, io.TextIOWrapper):
            continue
        if codecs.lookup(stream.encoding).name == "ascii":
            stream.reconfigure(encoding="utf-8", errors=_STDOUT_ERRORS)
        elif stream is sys.stdout and stream.errors in ("strict", "surrogateescape"):
            stream.reconfigure(errors=_STDOUT_ERRORS)


_STDOUT_ERRORS = "keytrail.stdout"


def _file_name_bytes_else_escaped(error: UnicodeError) -> tuple[str | bytes, int]:
    """A path's undecodable bytes (a data dir named in Latin-1) as the bytes they were, as
    surrogateescape writes them; any other character the encoding lacks as a backslash escape."""
    try:
        return codecs.lookup_error("surrogateescape")(error)
    except UnicodeError:
        return codecs.backslashreplace_errors(error)
