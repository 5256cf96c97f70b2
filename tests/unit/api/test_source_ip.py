"""The caller's address as the audit trail and aws:SourceIp take it (api/source_ip.py)."""

from __future__ import annotations

import pytest

from keytrail.api.source_ip import caller_address, is_loopback


@pytest.mark.parametrize(("reported", "recorded"), [
    ("203.0.113.9", "203.0.113.9"),
    ("::ffff:203.0.113.9", "203.0.113.9"),  # a dual-stack proxy's IPv4 caller
    ("::FFFF:cb00:7109", "203.0.113.9"),
    ("2001:DB8:0:0::9", "2001:db8::9"),
    ("2001:0db8:0000:0000:0000:0000:0000:0009", "2001:db8::9"),
    ("fe80::1%eth0", "fe80::1%eth0"),  # a link-local caller keeps its zone
    ("unknown", "unknown"),  # a proxy's report that is no address, as written
    ("x" * 300, "x" * 300),
])
def test_a_caller_is_recorded_by_its_address_in_one_spelling(reported: str, recorded: str) -> None:
    assert caller_address({"client": (reported, 0)}) == recorded


def test_a_connection_without_an_address_is_this_machine() -> None:
    assert caller_address({"client": None}) == caller_address({}) == "127.0.0.1"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("::1:2:3", False), ("10.0.0.1", False), ("", False), ("localhost", False),
])
def test_loopback_is_judged_by_the_address(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
