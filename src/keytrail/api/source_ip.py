"""The caller's address, as every audit record's `sourceIPAddress` and every `aws:SourceIp`
condition take it: the connection's, or what a trusted proxy reports (`FORWARDED_ALLOW_IPS`,
docs/operations.md), written one way for one address.

A proxy on a dual-stack socket (nginx `listen [::]:443 ipv6only=off`, Node, Java) reports an IPv4
caller as `::ffff:203.0.113.9`, and one may write IPv6 with capitals or zeros
(`2001:DB8:0:0::9`): as reported, a key policy's Deny on `203.0.113.0/24` missed the IPv4 caller
(an IPv4 range holds no IPv6 address) and the trail named one caller in several spellings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["caller_address", "canonical", "is_loopback"]

# Longer than any address's text (45 characters, or 39 and a zone such as `%eth0`): a proxy's
# report that is no address is kept as written, and not held in the cache.
_LONGEST_ADDRESS = 64


def caller_address(scope: Mapping[str, Any]) -> str:
    """The caller's address for the audit record and the policy conditions, from an ASGI scope's
    `client` (127.0.0.1 for a connection with no address, as a Unix socket's)."""
    host = str((scope.get("client") or ("127.0.0.1", 0))[0])
    return canonical(host) if len(host) <= _LONGEST_ADDRESS else host


@lru_cache(maxsize=4096)
def canonical(text: str) -> str:
    """`text` as RFC 5952 writes its address (lower case, zeros compressed), an IPv4 address mapped
    into IPv6 as the IPv4 address it is; anything else (a proxy's `unknown`) as written."""
    address = _parsed(text)
    return text if address is None else str(_unmapped(address))


def is_loopback(host: str) -> bool:
    """Whether a client address is this machine's own (127.0.0.0/8, ::1, or IPv4 loopback mapped
    into IPv6); anything else, a Unix socket's missing address included, is not."""
    address = _parsed(host)
    return address is not None and _unmapped(address).is_loopback


def _parsed(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address
