"""Cross-origin (CORS) answers for KMS calls made from a web page, as AWS KMS gives them.

The AWS SDK for JavaScript in a browser (and the AWS Encryption SDK for browsers) may only send a
call once the browser's preflight `OPTIONS /` is answered, and may only read the answer if it
names the page's origin. AWS KMS answers the preflight 200 with `Access-Control-Allow-Origin: *`,
the headers asked for, `POST`, a max age of 172800 s, and exposes `x-amzn-RequestId`,
`x-amzn-ErrorType`, `x-amzn-ErrorMessage` and `Date` (the aws-sdk-js `cors: true` list; the
preflight recorded in AllanZhengYP/cors-test). `*` gives nothing away where every call must be
signed: a page without a secret key gets no further than an error.

Under `--dev-credentials` any access key is taken unsigned, so `*` would let every web page the
developer opens call the node: there only pages served from this machine (`localhost`,
`127.0.0.1`, `[::1]`) are let in, as LocalStack does by default.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["call_headers", "from_a_page", "preflight"]

Headers = list[tuple[bytes, bytes]]

_MAX_AGE = b"172800"
_EXPOSED = b"x-amzn-RequestId,x-amzn-ErrorType,x-amzn-ErrorMessage,Date"


def _is_local(origin: bytes) -> bool:
    """Whether a page's origin (`http://localhost:3000`) is served from this machine."""
    try:
        parts = urlsplit(origin.decode("latin-1"))
        host = parts.hostname
    except ValueError:  # a malformed origin: a port that is no number, a bad IPv6 literal
        return False
    if parts.scheme not in ("http", "https") or host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _allowed(origin: bytes | None, local_only: bool) -> Headers:
    """The Access-Control-Allow-Origin header for a request from `origin` (none without one, or for
    an origin refused)."""
    if origin is None:
        return []
    if not local_only:
        return [(b"access-control-allow-origin", b"*")]
    if _is_local(origin):  # named back, so an answer cached for one page is not reused for another
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
    return []


def _header(raw: Headers, name: bytes) -> bytes | None:
    return next((value for key, value in raw if key == name), None)  # ASGI names are lowercase


def call_headers(raw: Headers, *, local_only: bool) -> Headers:
    """The CORS headers of the answer to a KMS call with the request headers `raw`: none for a call
    without an Origin (every client outside a browser)."""
    allowed = _allowed(_header(raw, b"origin"), local_only)
    return [*allowed, (b"access-control-expose-headers", _EXPOSED)] if allowed else []


def preflight(raw: Headers, *, local_only: bool) -> Headers | None:
    """The headers of the 200 answering a preflight `OPTIONS /`; None for an origin refused."""
    origin = _header(raw, b"origin")
    allowed = _allowed(origin, local_only)
    if origin is not None and not allowed:
        return None
    asked = _header(raw, b"access-control-request-headers")
    return [*allowed, *([(b"access-control-allow-headers", asked)] if asked else []),
            (b"access-control-allow-methods", b"POST"), (b"access-control-expose-headers", _EXPOSED),
            (b"access-control-max-age", _MAX_AGE)]


def from_a_page(raw: Headers) -> bool:
    """Whether a request was sent by a web page: a browser names the page's origin in every POST it
    sends to another origin, preflighted or not (a text/plain body needs none); curl and the SDKs
    outside a browser send no Origin."""
    return _header(raw, b"origin") is not None
