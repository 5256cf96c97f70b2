"""--host and --metrics-host spelled as a URL writes an address: [::1], or with a port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keytrail.cli.listening import listen_host


def _keytrail(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2 and result.stderr.count("\n") == 1, (result.returncode, result.stderr)
    return result.stderr.rstrip("\n")


@pytest.mark.parametrize(("host", "address", "port"), [
    ("[::1]:4599", "::1", "4599"), ("127.0.0.1:4599", "127.0.0.1", "4599"), ("localhost:8080", "localhost", "8080"),
])
def test_an_address_with_its_port_is_refused_saying_where_the_port_goes(tmp_path: Path, host: str, address: str,
                                                                        port: str) -> None:
    # It said "cannot listen on [[::1]:4599]:4599 (Name or service not known)".
    line = _one_line_error(_keytrail("serve", "--data-dir", tmp_path / "node", "--host", host))
    assert line == (f"keytrail serve: Invalid value for '--host': {host!r} names a port: give the address alone "
                    f"({address}) and the port in --port {port} (see --help)")
    assert not (tmp_path / "node").exists()
    line = _one_line_error(_keytrail("consume", "--data-dir", tmp_path, "--metrics-port", "20000",
                                     "--metrics-host", host))
    assert f"and the port in --metrics-port {port}" in line, line


@pytest.mark.parametrize("host", ["[localhost]", "[127.0.0.1]", "[]"])
def test_brackets_around_anything_but_an_ipv6_address_are_refused(tmp_path: Path, host: str) -> None:
    line = _one_line_error(_keytrail("serve", "--data-dir", tmp_path / "node", "--port", "0", "--host", host))
    assert line.startswith(f"keytrail serve: Invalid value for '--host': {host!r}: brackets hold an IPv6 address "
                           "only ([::1]): give an address to listen on"), line



@pytest.mark.parametrize(("host", "address"), [
    ("[::1]", "::1"), ("0:0:0:0:0:0:0:0", "::"), ("[0::1]", "::1"), ("2001:DB8::1", "2001:db8::1"),
    # an IPv4 address mapped into IPv6: "cannot listen on [::ffff:127.0.0.1]:4599 (Invalid argument)"
    ("::ffff:127.0.0.1", "127.0.0.1"), ("127.0.0.1", "127.0.0.1"), ("localhost", "localhost"), ("::", "::"),
])
def test_an_address_to_listen_on_is_taken_in_one_spelling(host: str, address: str) -> None:
    assert listen_host("--port")(host) == address
