"""Listening sockets for the commands that serve (`serve`, the metrics endpoints of `consume` and
`detect`, `demo`): bound before anything is built, and the one-line reason when they cannot be."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from typing import Any

import typer

from keytrail.cli.console import LISTEN_ADDRESS, address_option, given

__all__ = ["bound_socket", "host_port", "listen_option", "listen_probe", "listen_problem", "listening_sockets"]

# HOST:PORT or [HOST]:PORT: an address with its port, where the option takes the address alone.
_WITH_PORT = re.compile(r"(?:\[(?P<bracketed>[^\]]*)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)")


def listen_option(*declarations: str, port_option: str, help: str) -> Any:
    """`address_option` for an address to listen on (`--host`, `--metrics-host`), parsed by
    `listen_host`: `port_option` is the option that takes its port."""
    return address_option(*declarations, help=help, give=LISTEN_ADDRESS, parser=listen_host(port_option))


def listen_host(port_option: str) -> Callable[[str], str]:
    """A typer parser for an address to listen on. An IPv6 address in brackets, as a URL writes it
    (`[::1]`, copied from the `http://[::1]:4599` serve prints), is that address: bound as written it
    was "cannot listen on [[::1]]:4599 (Name or service not known)". An address with its port
    (`[::1]:4599`, `127.0.0.1:4599`) is refused saying where the port goes."""
    present = given(LISTEN_ADDRESS)

    def parse(value: str) -> str:
        host = present(value)
        if match := _WITH_PORT.fullmatch(host):
            address = match["bracketed"] if match["bracketed"] is not None else match["host"]
            raise typer.BadParameter(f"{host!r} names a port: give the address alone ({address}) and the port "
                                     f"in {port_option} {match['port']}")
        if host.startswith("[") and host.endswith("]"):
            return _bracketed(host)
        return _compressed(host)

    return parse


def _bracketed(host: str) -> str:
    """The IPv6 address `[address]` holds; brackets around anything else are refused."""
    address = host[1:-1]
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise typer.BadParameter(
            f"{host!r}: brackets hold an IPv6 address only ([::1]): give {LISTEN_ADDRESS}") from None
    return _compressed(address)


def _compressed(host: str) -> str:
    """An IPv6 address as RFC 5952 writes it, anything else as given: `0:0:0:0:0:0:0:0` is `::`, so
    that serve prints the endpoint and makes the dev certificate for it as for `::` (`[::1]`, not
    `https://[0:0:0:0:0:0:0:0]:4599`, which only Linux connects to). An IPv4 address mapped into
    IPv6 is that IPv4 address: an IPv6-only socket cannot bind it ("Invalid argument")."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    return str(address.ipv4_mapped or address)


def host_port(host: str, port: int) -> str:
    """HOST:PORT as a message names it, an IPv6 address in brackets (RFC 3986): `2001:db8::1:0`
    could not be told from a port."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_problem(error: OSError | UnicodeError) -> str:
    """Why host:port cannot be listened on, for "cannot listen on HOST:PORT (…)". A host no DNS
    name can be (`a..b`, a label over 63 characters) fails in Python's IDNA codec, as a
    UnicodeError whose text names the codec, not the host."""
    if isinstance(error, UnicodeError):
        return "not a valid host name"
    return f"{error.strerror or error}"


def listen_probe(host: str, port: int) -> int:
    """Bind host:port as the server will and let go (`bound_socket`); the port bound (a free one
    for 0)."""
    with bound_socket(host, port) as probe:
        return int(probe.getsockname()[1])


def bound_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port's first address (SO_REUSEADDR, as uvicorn binds), not listening
    yet. Raises OSError, socket.gaierror for an unknown host, or UnicodeError for a host that is no
    valid name, when it cannot, with the socket closed."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on host:port, one per address of `host` (`localhost` may be 127.0.0.1 and
    ::1), opened as uvicorn would (SO_REUSEADDR; an IPv6 one for IPv6 only), for the server to serve
    on: held from the start, the port cannot be taken while the node is built. For port 0, the free
    port of the first address, on every address. Raises OSError (socket.gaierror for an unknown
    host) or UnicodeError (a host that is no valid name) with none left open."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):  # the same address twice: once
            sockets.append(sock := socket.socket(family, kind, proto))
            _listen(sock, (address[0], port, *address[2:]))
            port = port or sock.getsockname()[1]  # port 0: the free one the first address got, for the others
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _listen(sock: socket.socket, address: tuple[Any, ...]) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sock.family == socket.AF_INET6:  # as asyncio's servers: "::" is not 0.0.0.0 too
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    sock.listen(2048)  # uvicorn's backlog
