"""The `keytrail` entry point: every error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.core import TyperArgument, TyperOption
from typer.testing import CliRunner

from keytrail.cli import app
from keytrail.cli.commands import COMMANDS, load_module_commands
from keytrail.cli.console import named_path
from tests.support.audit_records import fill_trail


def _keytrail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "line"), [
    (["audit", "events", "--format", "xml"], "keytrail audit events: Invalid value for '--format'"),
    (["usage", "--bogus"], "keytrail usage: No such option: --bogus"),
    (["nope"], "keytrail: No such command 'nope'."),
    # Errors of click's parser carry no context: these said "keytrail: …".
    (["audit", "events", "--data-dir"], "keytrail audit events: Option '--data-dir' requires an argument."),
    (["serve", "--dev-clock=yes"], "keytrail serve: Option '--dev-clock' does not take a value."),
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


def _local_address_off_loopback() -> str:
    """An address of this machine's own that is not loopback (the one it would reach out from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # nothing is sent: a UDP connect only picks the route
        except OSError:
            pytest.skip("no network interface but loopback")
        return str(probe.getsockname()[0])


def _keytrail_resolving(name: str, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    """keytrail, where the host name `name` resolves to `address` (as a DNS or hosts entry would)."""
    program = (
        "import runpy, socket, sys\n"
        "resolve = socket.getaddrinfo\n"
        f"socket.getaddrinfo = lambda host, *a, **k: resolve({address!r} if host == {name!r} else host, *a, **k)\n"
        "sys.argv[0] = 'keytrail'\n"
        "runpy.run_module('keytrail', run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "local-address", "name-of-local-address"])
def test_dev_credentials_are_refused_unless_every_address_bound_is_loopback(tmp_path: Path, host: str) -> None:
    # What counts is the address bound, not how --host spells it: every interface (0.0.0.0, ::),
    # or one of this machine's public addresses, by number or by a name resolving to it.
    if host == "::" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    address = {"0.0.0.0": "0.0.0.0", "::": "::"}.get(host) or _local_address_off_loopback()
    args = ("serve", "--dev-credentials", "--port", "0", "--data-dir", str(tmp_path))
    if host == "name-of-local-address":
        result = _keytrail_resolving("kms.example.test", address, *args, "--host", "kms.example.test")
        host = "kms.example.test"
    else:
        result = _keytrail(*args, "--host", address)
        host = address
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"keytrail serve: --dev-credentials is refused unless the server binds to loopback "
                             f"only; --host {host} binds {address}\n")
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
    (["root-key", "rotate", "--help"], "keytrail root-key rotate"),  # said "keytrail root-key"
])
def test_an_error_no_command_caught_names_the_command(args: list[str], path: str) -> None:
    from keytrail.cli import _command_path

    assert _command_path(args) == path


def test_text_the_terminal_cannot_encode_is_escaped_not_a_traceback(tmp_path: Path) -> None:
    # An imported record may name anyone ("user/jürgen😀"); printed to a stdout in ASCII (LC_ALL=C,
    # PYTHONUTF8=0) or Latin-1 (a de_DE.ISO-8859-1 locale), `audit events --format text`, `audit tail`,
    # `usage` and the rest ended in a UnicodeEncodeError traceback (`detect`: "keytrail detect: 'ascii'
    # codec can't encode…", exit 2). What the encoding lacks is escaped, as on Python's stderr.
    record = {"eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
              "eventTime": "2026-01-05T12:00:00Z", "eventID": "e-1", "awsRegion": "us-east-1",
              "recipientAccountId": "111122223333", "errorCode": "AccessDenied",
              "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/jürgen😀",
                               "accountId": "111122223333"},
              "resources": [{"ARN": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}]}
    log = tmp_path / "trail.json"
    log.write_text(json.dumps({"Records": [record]}))
    data = str(tmp_path / "node")
    assert _keytrail("audit", "import", "--data-dir", data, str(log)).returncode == 0
    c_locale, latin_1 = {"LC_ALL": "C", "PYTHONUTF8": "0"}, {"PYTHONIOENCODING": "latin-1"}
    for env in (c_locale, latin_1):
        for args in (["audit", "events", "--data-dir", data, "--format", "text"], ["detect", "--cloudtrail", str(log)]):
            result = subprocess.run([sys.executable, "-m", "keytrail", *args], capture_output=True, timeout=60,
                                    env={**os.environ, **env})
            assert result.returncode == 0 and b"Traceback" not in result.stderr, (args, result.stderr)
            assert b"user/j" in result.stdout, (args, result.stdout)
    # A folder named in Latin-1 (a byte that is no UTF-8) is still printed as the bytes it is named by,
    # as surrogateescape, stdout's error handler under the C locale in Python's UTF-8 mode, wrote it.
    latin = os.fsdecode(bytes(tmp_path) + b"/caf\xe9")
    utf8_mode = {name: value for name, value in os.environ.items() if name != "PYTHONUTF8"} | {"LC_ALL": "C"}
    result = subprocess.run([sys.executable, "-m", "keytrail", "audit", "export", "--data-dir", data, latin],
                            capture_output=True, timeout=60, env=utf8_mode)
    assert result.returncode == 0 and b"/caf\xe9/AWSLogs" in result.stdout, result


@pytest.mark.parametrize("args", [["serve", "--data-dir", ""], ["serve", "--data-dir="], ["usage", "--data-dir", ""]])
def test_an_empty_data_dir_is_refused_before_anything_is_written(tmp_path: Path, args: list[str]) -> None:
    # `--data-dir "$DIR"` with DIR unset: click took "" for the current directory, and serve made a
    # root key, key store and principals file there.
    result = subprocess.run([sys.executable, "-m", "keytrail", *args, "--port", "0"] if args[0] == "serve"
                            else [sys.executable, "-m", "keytrail", *args], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 2
    assert result.stderr == (f"keytrail {args[0]}: --data-dir is empty (an unset variable?): name the node's "
                             "data directory\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["audit", "export", ""], ["audit", "import", ""], ["detect", "--cloudtrail", ""],
    ["report", "--out", "r.html", "--cloudtrail", ""], ["consume", "--cloudtrail", "logs", ""],
])
def test_an_empty_path_to_read_or_write_is_refused_not_taken_for_the_current_directory(
        tmp_path: Path, args: list[str]) -> None:
    # `keytrail audit export "$OUT"` with OUT unset wrote AWSLogs/… into the current directory (exit 0);
    # `--cloudtrail "$LOGS"` and `audit import "$LOGS"` read every file under it.
    node = tmp_path / "node"
    fill_trail(node, 3)
    (tmp_path / "logs").mkdir()
    result = subprocess.run([sys.executable, "-m", "keytrail", *args, "--data-dir", str(node)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"keytrail {' '.join(args[:2] if args[0] == 'audit' else args[:1])}: ")
    assert "empty (an unset variable?): name the file or folder" in result.stderr
    assert result.stderr.count("\n") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["logs", "node"]


def _path_parameters() -> list[tuple[list[str], TyperOption | TyperArgument]]:
    """(command path, parameter) of every option and argument of every command that names a file or folder."""
    found = []
    for name, listing in COMMANDS.items():
        command = load_module_commands(listing.module)[name]
        subcommands = getattr(command, "commands", {})  # a group's: `audit export`, `root-key rotate`
        leaves = [([name, sub], leaf) for sub, leaf in subcommands.items()] if subcommands else [([name], command)]
        for path, leaf in leaves:
            found += [(path, parameter) for parameter in leaf.params
                      if isinstance(parameter, TyperOption | TyperArgument) and _names_a_path(parameter)]
    return found


def _names_a_path(parameter: TyperOption | TyperArgument) -> bool:
    annotation = parameter.type_descriptor.annotation  # `Path | None` is Path here; `list[Path]` stays
    return Path in (annotation, *typing.get_args(annotation))


def test_every_path_option_refuses_an_empty_value_rather_than_take_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `--out "$OUT"`, `--config "$CONF"` with the variable unset: typer took "" for ".", and report
    # said "--out: . is a folder", serve "--config: .: Is a directory", cost "--prices: Is a directory: .".
    # Run past the entry point's own check of --data-dir, so the option's parser is what refuses it.
    monkeypatch.chdir(tmp_path)
    parameters = _path_parameters()
    assert len(parameters) >= 25  # --out, --config, --principals, --tls-cert, --prices, --new-key, --data-dir…
    for path, parameter in parameters:
        assert parameter.type_descriptor.parameter_info.parser is named_path, (path, parameter.name)
        given = [parameter.opts[0], ""] if isinstance(parameter, TyperOption) else [""]
        result = CliRunner().invoke(app, [*path, *given])
        assert result.exit_code == 2, (path, given, result.output)
        assert "empty (an unset variable?): name the file or folder" in result.output, (path, given, result.output)
    assert list(tmp_path.iterdir()) == []


def _close_stderr() -> None:
    os.close(2)  # `keytrail report … 2>&-`


@pytest.mark.parametrize("progress", ["--no-progress", "--progress"])
def test_a_report_with_stderr_closed_is_written_and_exits_0(tmp_path: Path, progress: str) -> None:
    # It exited 1: the /dev/null put in for the closed stderr was close-on-exec, so the child reading
    # the event log started with none (sys.stderr None: its progress bar failed, no report written);
    # and read-only, so with --no-progress "wrote …" on stderr failed once the report was written.
    fill_trail(tmp_path / "node", 5)
    out = tmp_path / "report.csv"
    result = subprocess.run([sys.executable, "-m", "keytrail", "report", "--data-dir", str(tmp_path / "node"),
                             "--out", str(out), "--table", "usage", progress],
                            stdout=subprocess.PIPE, text=True, timeout=120, preexec_fn=_close_stderr)
    assert result.returncode == 0 and result.stdout == ""
    assert out.read_text().splitlines()[1].startswith("usage,arn:aws:kms:")  # the 5 calls, counted
