"""The requests the HTTP protocol refuses for their head alone, before the app runs, and the answers
it writes for them (api/http_protocol.py).

httptools (llhttp) already refuses most framing RFC 9112 forbids: Content-Length with
Transfer-Encoding, differing or signed Content-Lengths, obs-fold, bare LF, a space before a
header's colon, NUL or CR in a value. What it takes, and what is refused here, as each head ends:

- a version other than HTTP/1.1 and 1.0: `HTTP/2.0` and `HTTP/0.9` were answered as HTTP/1.1,
  and the versions the parser cannot read (`HTTP/3.0`, the HTTP/2 connection preface) as
  unreadable HTTP. 505 (RFC 9110 §15.6.6).
- a Transfer-Encoding naming a coding besides chunked (`gzip, chunked`, or a line per coding):
  the coding was ignored and the bytes still coded taken for the body, a KMS call carried out
  and audited. 501 (RFC 9112 §6.1: a coding the server does not understand); chunked not last,
  or twice, 400 (the body's length cannot be known).
- Transfer-Encoding in an HTTP/1.0 request: 400 (RFC 9112 §6.1: its framing is faulty, as an
  HTTP/1.0 hop in between may have framed it otherwise).
- an Expect other than 100-continue: served as if absent, though the client waits on what it
  asked for. 417 (RFC 9110 §10.1.1).
- an absolute-form target (`POST http://host/ HTTP/1.1`) naming a host other than the Host
  header: the Host header was taken, where RFC 9112 §3.2.2 has the target's host override it,
  so the host the client addressed was not the one signed and audited. 400.
- a Host that is no host and port (`a, b`, `user@a`, `a/b`): taken, and recorded as the call's
  `clientProvidedHostHeader`. 400 (RFC 9112 §3.2: MUST).

Each answer closes its connection. The usual request costs the same as before these checks: one
pass over the header names (the Host count needed it already), the rare headers read only when
present, and the Host matched once a connection (`HeadChecks`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import orjson

__all__ = ["MALFORMED", "UNSUPPORTED_VERSION", "HeadChecks", "Refusal", "asks_for_h2c", "last_answer",
           "parser_refusal"]

Headers = list[tuple[bytes, bytes]]  # as uvicorn keeps them: names lowercased, values as sent
# Headers whose presence calls for a closer look: absent from every SDK's KMS request.
_RARE = frozenset({b"transfer-encoding", b"expect"})
# RFC 3986's uri-host (an IP-literal, or a reg-name, which an IPv4 address also is) and an optional port;
# percent-encoding taken loosely: `%` is no byte that could end the value or start another.
_HOST = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=%-]*|\[[A-Za-z0-9:._~!$&'()*+,;=-]+\])(?::[0-9]*)?")
# llhttp's errors for a request line of another HTTP version.
_VERSION_ERRORS = (("Invalid HTTP version",), ("Pause on PRI/Upgrade",))


class Refusal(NamedTuple):
    """An answer the protocol writes itself to a request, and its reason in REQUEST_REFUSAL_REASONS."""

    answer: bytes
    reason: str


def last_answer(status: bytes, code: str, message: str) -> bytes:
    """A whole AWS JSON error answer that closes its connection: what the protocol writes itself
    when the app never gets the request."""
    body = orjson.dumps({"__type": code, "message": message})
    return (b"HTTP/1.1 %s\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: %d\r\n"
            b"x-amzn-errortype: %s\r\nconnection: close\r\n\r\n%s" % (status, len(body), code.encode(), body))


def _malformed(message: str) -> Refusal:
    return Refusal(last_answer(b"400 Bad Request", "SerializationException", message), "malformed_http")


# CONNECT, or `Connection: Upgrade` with an Upgrade other than h2c alone (a WebSocket): keytrail has
# no other protocol to switch to, and httptools ends such a request at its headers, its body unread
# (uvicorn#2722, httptools#124). A request asking for h2c is served as HTTP/1.1 instead.
UPGRADE = Refusal(last_answer(b"400 Bad Request", "SerializationException",
                              "keytrail serves HTTP/1.1 and switches to no other protocol: send the request "
                              "without Connection: Upgrade."),
                  "protocol_upgrade")
# RFC 9112 §3.2: an HTTP/1.1 request "that lacks a Host header field" or "contains more than one Host
# header field line" MUST be answered 400 (two, both signed, were taken joined with a comma, as
# `tlsDetails.clientProvidedHostHeader`).
NOT_ONE_HOST = _malformed("The request must have exactly one Host header.")
MALFORMED = _malformed("The request is not valid HTTP/1.1.")
UNSUPPORTED_VERSION = Refusal(last_answer(b"505 HTTP Version Not Supported", "HttpVersionNotSupported",
                                          "keytrail serves HTTP/1.1 (and HTTP/1.0): send the request as HTTP/1.1."),
                              "malformed_http")
_UNKNOWN_CODING = Refusal(last_answer(b"501 Not Implemented", "NotImplemented",
                                      "keytrail reads no transfer coding but chunked: send the body with "
                                      "Transfer-Encoding: chunked alone, or with a Content-Length."),
                          "malformed_http")
_CHUNKED_NOT_LAST = _malformed("The request's Transfer-Encoding must end in chunked, named once.")
_CODED_HTTP_1_0 = _malformed("An HTTP/1.0 request cannot carry Transfer-Encoding: send it as HTTP/1.1.")
_EXPECTATION = Refusal(last_answer(b"417 Expectation Failed", "ExpectationFailed",
                                   "keytrail meets no expectation but 100-continue."),
                       "malformed_http")
_OTHER_HOST = _malformed("The request target names a host other than the Host header.")
# RFC 9112 §3.2: a Host "with an invalid field value" MUST be answered 400 (RFC 9110 §7.2: uri-host
# [":" port]). `Host: a, b`, `Host: user@a`, `Host: a/b` were served, and recorded as the
# clientProvidedHostHeader of the call.
_INVALID_HOST = _malformed("The request's Host header is not a host and port.")


class HeadChecks:
    """The checks of each request head on one connection (`refusal`). The Host value last found
    valid is kept: a client sends the same one on every request, so it is matched once a
    connection, not once a request."""

    __slots__ = ("_valid_host",)

    def __init__(self) -> None:
        self._valid_host: bytes | None = None

    def refusal(self, upgrade: bool, headers: Headers, version: str, url: bytes) -> Refusal | None:
        """The answer to a request refused for its head as it ends, if it is: asking to switch
        protocols (`upgrade`: CONNECT, or an Upgrade other than h2c), in an HTTP version other than
        1.1 and 1.0, naming more than one host (or, in HTTP/1.1, none) or a Host no URI has, or one
        of the module docstring's faults in its framing, expectations or target."""
        if upgrade:
            return UPGRADE
        if version != "1.1" and version != "1.0":
            return UNSUPPORTED_VERSION
        hosts, host, rare = 0, b"", False
        for name, value in headers:  # one plain loop: cheaper than the generator that counted hosts alone
            if name == b"host":
                hosts, host = hosts + 1, value
            elif name in _RARE:
                rare = True
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            return NOT_ONE_HOST
        if host != self._valid_host:
            if _HOST.fullmatch(host) is None:
                return _INVALID_HOST
            self._valid_host = host
        if rare:
            refusal = _rare_header_refusal(headers, version)
            if refusal is not None:
                return refusal
        if not url.startswith(b"/") and url != b"*":
            return _target_refusal(headers, url)
        return None


def parser_refusal(error: Exception) -> Refusal | None:
    """The answer to a request the parser could not read, when its error says more than that the
    request is malformed: an HTTP version llhttp does not know (`HTTP/3.0`, `HTTP/1.2`), or the
    HTTP/2 connection preface (`PRI * HTTP/2.0`, a client speaking HTTP/2 from its first byte), is
    one keytrail does not serve."""
    return UNSUPPORTED_VERSION if error.args[:1] in _VERSION_ERRORS else None


def asks_for_h2c(method: bytes, headers: Headers) -> bool:
    """Whether a request httptools takes for an upgrade (CONNECT, or Connection: Upgrade with an
    Upgrade header) asks only to switch to HTTP/2 over plain TCP, `Upgrade: h2c`: served as
    HTTP/1.1. CONNECT, a WebSocket, or h2c offered among other protocols are not."""
    if method == b"CONNECT":
        return False
    return _members(headers, b"upgrade") == [b"h2c"]


def _members(headers: Headers, name: bytes) -> list[bytes]:
    """The members of the list header `name`, over all its lines, lowercased; empty ones dropped
    (RFC 9110 §5.6.1)."""
    members = (member.strip().lower() for field, value in headers if field == name for member in value.split(b","))
    return [member for member in members if member]


def _rare_header_refusal(headers: Headers, version: str) -> Refusal | None:
    """The answer to a request whose Transfer-Encoding or Expect keytrail cannot honour, if any."""
    if any(field == b"transfer-encoding" for field, _ in headers):
        codings = _members(headers, b"transfer-encoding")
        if version == "1.0":
            return _CODED_HTTP_1_0
        if codings[-1:] != [b"chunked"] or b"chunked" in codings[:-1]:
            return _CHUNKED_NOT_LAST
        if len(codings) > 1:
            return _UNKNOWN_CODING
    # RFC 9110 §10.1.1: an HTTP/1.0 request's expectation is ignored (Expect is HTTP/1.1's).
    if version == "1.1" and any(member != b"100-continue" for member in _members(headers, b"expect")):
        return _EXPECTATION
    return None


def _target_refusal(headers: Headers, url: bytes) -> Refusal | None:
    """The answer to an absolute-form request target (`http://host:port/path`) naming a host other
    than the Host header, or to one of no form HTTP/1.1 has."""
    scheme, separator, rest = url.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https"):
        return MALFORMED
    authority = rest.split(b"/", 1)[0].split(b"?", 1)[0]
    hosts = [value.strip().lower() for field, value in headers if field == b"host"]  # one, or none in HTTP/1.0
    return None if hosts in ([], [authority.lower()]) else _OTHER_HOST
