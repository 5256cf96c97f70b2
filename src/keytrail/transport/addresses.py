"""Broker and receiver addresses as operators type them (Kafka bootstrap lists, MQTT and webhook
URLs): checked when a command starts, since a typo would otherwise surface only as a failed
connection in a log, when the first event or alarm is sent."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

__all__ = ["UNBRACKETED_IPV6", "host_port_problem", "is_host", "is_port", "redacted", "split_host_port",
           "unbracketed_ipv6", "url_problem"]

#: What an IPv6 address and a port are written with (an IPv4 address may end the address).
_IPV6_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")
#: What is wrong with an IPv6 address written without its brackets in HOST:PORT.
UNBRACKETED_IPV6 = "an IPv6 address goes in brackets, as [::1]:PORT"

#: One DNS label: letters, digits, hyphens inside (underscores too: container and service names
#: carry them), at most 63 characters.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def is_host(host: str) -> bool:
    """A host a client can connect to: a DNS name, a dotted IPv4 address or an IPv6 address
    (without its brackets). Digits and dots alone must be a whole IPv4 address: `1883` or
    `10.0.0` is a port or a cut-off address, which the resolver would read as some other IPv4."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    if not host.isascii():  # an internationalized name: what the resolver is given is its IDNA form
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    if host and all(char.isdigit() or char == "." for char in host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    labels = host.removesuffix(".").split(".")
    return 0 < len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def is_port(text: str) -> bool:
    """A TCP port written in ASCII digits, 1 to 65535 (`int` alone would take `+1`, ` 1` or `١`)."""
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


def split_host_port(server: str) -> tuple[str, str | None]:
    """(host, port or None) of HOST, HOST:PORT or [IPv6]:PORT; no host when it is none of them."""
    if server.startswith("["):
        host, bracket, rest = server[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return "", None
        return host, (rest[1:] if rest else None)
    host, colon, port = server.partition(":")
    return host, (port if colon else None)


def unbracketed_ipv6(server: str) -> bool:
    """Whether HOST:PORT `server` holds an IPv6 address without its brackets (`::1:9092`,
    `2001:db8::1`): it was "no host", and where its address ends and its port begins no one can
    tell (`::1:9092` is an IPv6 address too), so the brackets are asked for, not guessed."""
    return server.count(":") > 1 and all(char in _IPV6_CHARACTERS for char in server)


def host_port_problem(server: str) -> str | None:
    """None for HOST, HOST:PORT or [IPv6]:PORT, else what is wrong with it."""
    if unbracketed_ipv6(server):
        return UNBRACKETED_IPV6
    host, port = split_host_port(server)
    if not host:
        return "no host"
    if not is_host(host):
        return f"{host!r} is not a host name or address"
    if port is not None and not is_port(port):
        return f"the port {port!r} is not a number from 1 to 65535"
    return None


def url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """None for a SCHEME://[USER[:PASS]@]HOST[:PORT]… URL with one of `schemes`, else what is wrong
    with it (the path, query and fragment are the caller's to judge)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "mqtt://[::1": an unclosed bracket
        return "not a URL"
    if parts.scheme not in schemes or not url.strip().lower().startswith(f"{parts.scheme}://"):
        return f"the scheme is not {' or '.join(f'{scheme}://' for scheme in schemes)}"
    problem = host_port_problem(parts.netloc.rpartition("@")[2])
    at_after_netloc = "@" in url.partition("://")[2][len(parts.netloc):]
    if problem and at_after_netloc:
        # The "@" of the user info came after a "/", "?" or "#" of an unencoded password: what
        # urlsplit took for the host and port is part of that password, not to be quoted.
        return "no HOST:PORT after the scheme (a '/', '?' or '#' in the user name or password must be percent-encoded)"
    if at_after_netloc and _may_be_user_and_password(parts.netloc):
        # USER:1#2@HOST: the password's digits before its "#" pass for a port, and the call would go
        # to the host USER. The same text is HOST:PORT with an "@" in its path, query or fragment:
        # no parser can tell which was meant, so neither is guessed (nor quoted).
        return (
            "an '@' after HOST:PORT: percent-encode a '#', '?' or '/' in the password (%23, %3F, %2F)"
            " or an '@' in the path or query (%40)"
        )
    return problem


def _may_be_user_and_password(netloc: str) -> bool:
    """Whether a HOST:PORT without user info could be USER:PASS cut short (an IPv6 address, in
    brackets, could not)."""
    return "@" not in netloc and ":" in netloc and not netloc.startswith("[")


def redacted(address: str, *, query: bool = True) -> str:
    """`address` (a URL, a HOST:PORT list) as an error message may repeat it: what stands before its
    last "@" (a user name and password: the last, since a password may hold an unencoded "/" or "?")
    replaced by `***`, and with `query=False` its query and fragment too (where webhook receivers
    take tokens)."""
    scheme, separator, rest = address.partition("://") if "://" in address else ("", "", address)
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    for mark in "" if query else "?#":
        head, found, _ = rest.partition(mark)
        rest = f"{head}{mark}***" if found else rest
    return f"{scheme}{separator}{rest}"
