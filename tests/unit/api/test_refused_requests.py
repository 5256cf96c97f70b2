"""Requests refused before authentication: counted by code, logged thinned per address and code."""

from __future__ import annotations

import logging

import pytest

from keytrail.api import refused_requests
from keytrail.api.refused_requests import LOG_EVERY_SECONDS, RefusedRequests
from keytrail.api.sigv4 import InvalidSignatureException, UnrecognizedClientException, parse_authorization
from keytrail.kms.errors import KmsError
from tests.support.clocks import SteppedClock

SIGNED = "AWS4-HMAC-SHA256 Credential=AKIAALICE000000000001/20261202/us-east-1/kms/aws4_request, SignedHeaders=host"


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_the_first_refusal_of_a_code_from_an_address_is_logged_the_next_ones_counted_on_its_next_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, bad = SteppedClock(), InvalidSignatureException("The request signature we calculated does not match")
    refused = RefusedRequests(clock)
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        for _ in range(5):
            refused.refused(bad, "192.0.2.7", SIGNED)
        refused.refused(UnrecognizedClientException("The security token included in the request is invalid."),
                        "192.0.2.7", None)
        refused.refused(bad, "198.51.100.1", SIGNED)
        clock.now += LOG_EVERY_SECONDS
        refused.refused(bad, "192.0.2.7", SIGNED)
    assert refused.counts == {"InvalidSignatureException": 7, "UnrecognizedClientException": 1}
    assert _lines(caplog) == [
        "refused a request from 192.0.2.7 before authentication (InvalidSignatureException, access key "
        "AKIAALICE000000000001): The request signature we calculated does not match",
        "refused a request from 192.0.2.7 before authentication (UnrecognizedClientException, access key "
        "none readable): The security token included in the request is invalid.",
        "refused a request from 198.51.100.1 before authentication (InvalidSignatureException, access key "
        "AKIAALICE000000000001): The request signature we calculated does not match",
        "refused a request from 192.0.2.7 before authentication (InvalidSignatureException, access key "
        "AKIAALICE000000000001): The request signature we calculated does not match (4 more from there "
        "since its last line)",
    ]


def test_the_header_s_own_text_goes_to_the_log_as_one_line_and_never_whole(caplog: pytest.LogCaptureFixture) -> None:
    """The message quotes the sender's header; an access key that does not look like one is not written."""
    error = InvalidSignatureException("Date must be in ISO-8601 'basic format'. Got 'x\x1b[2J\u2028forged line'.")
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        RefusedRequests(SteppedClock()).refused(error, "192.0.2.7", "AWS4-HMAC-SHA256 Credential=not/a/key/at/all")
    [line] = _lines(caplog)
    assert "access key none readable" in line and "Got 'x?[2J?forged line'." in line


# An AWS-format secret access key: 40 characters, often with a "/" (which breaks the scope).
SWAPPED = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("header", [
    # A client given its key pair the wrong way round names the secret as its access key: the
    # message quoted it ("Credential must have exactly 5 slash-delimited elements, …, got '<secret>/2026…'"), and
    # the line wrote the secret to the log.
    f"AWS4-HMAC-SHA256 Credential={SWAPPED}/20261202/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=ab",
    f"AWS4-HMAC-SHA256 Credential={SWAPPED}, SignedHeaders=host, Signature=ab",
    f"AWS4-HMAC-SHA256 Credential={SWAPPED}/20261202/us-east-1/kms/aws4_request, SignedHeaders=host",
    f"AWS4-HMAC-SHA256 Credential={SWAPPED}/20261202/us-east-1/kms/aws4_request SignedHeaders=host, Signature=ab",
    # Quoted past the first 200 characters of the header, cut short: its head neither.
    f"AWS4-HMAC-SHA256 {'X-Padding=1, ' * 12}Credential={SWAPPED}/20261202/us-east-1/kms/aws4_request, "
    "SignedHeaders=host",
])
def test_a_secret_access_key_sent_as_the_access_key_is_not_written_to_the_log(
    header: str, caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(KmsError) as refusal:
        parse_authorization(header)
    assert SWAPPED[:12] in refusal.value.message  # the answer quotes the caller's own header, as AWS's
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        RefusedRequests(SteppedClock()).refused(refusal.value, "192.0.2.7", header)
    [line] = _lines(caplog)
    assert "access key none readable" in line and refusal.value.code in line
    assert SWAPPED[:4] not in line and "bPxRfiCYEXAMPLEKEY" not in line, line


def test_an_access_key_id_and_the_words_of_a_message_stay_in_the_line(caplog: pytest.LogCaptureFixture) -> None:
    """Only a Credential that does not read as an access key id is hidden, and only where quoted."""
    readable = "AWS4-HMAC-SHA256 Credential=AKIAALICE000000000001/20261202/us-east-1/kms/aws4_request"
    short = "AWS4-HMAC-SHA256 Credential=lid/20261202/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=a"
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        refused = RefusedRequests(SteppedClock())
        refused.refused(parse_error(readable), "192.0.2.7", readable)
        refused.refused(UnrecognizedClientException("The security token included in the request is invalid."),
                        "192.0.2.8", short)
    first, second = _lines(caplog)
    assert "Authorization=AWS4-HMAC-SHA256 Credential=AKIAALICE000000000001/20261202/us-east-1/kms" in first
    assert second.endswith("The security token included in the request is invalid.")


def test_a_secret_pasted_after_the_access_key_id_is_not_written_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """A readable key id followed by more than a scope (a secret pasted after it): the message quotes
    the whole Credential, and only a key id that did not read as one was hidden."""
    header = (f"AWS4-HMAC-SHA256 Credential=AKIAALICE000000000001/20261202/us-east-1/kms/aws4_request/{SWAPPED}, "
              "SignedHeaders=host, Signature=ab")
    refusal = parse_error(header)
    assert SWAPPED in refusal.message  # the answer quotes the caller's own header, as AWS's
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        RefusedRequests(SteppedClock()).refused(refusal, "192.0.2.7", header)
    [line] = _lines(caplog)
    assert "got 'AKIAALICE000000000001/***'" in line and "bPxRfiCYEXAMPLEKEY" not in line, line


def parse_error(header: str) -> KmsError:
    with pytest.raises(KmsError) as refusal:
        parse_authorization(header)
    return refusal.value


def test_addresses_past_the_bound_start_the_thinning_afresh_rather_than_grow_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(refused_requests, "MAX_SOURCES", 3)
    refused, bad = RefusedRequests(SteppedClock()), InvalidSignatureException("no")
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.1"):
            refused.refused(bad, address, None)
    assert len(refused._quiet_until) <= 3
    assert len(_lines(caplog)) == 5  # 192.0.2.1 again after the reset: logged, not counted away


def test_a_flood_from_ever_new_addresses_writes_at_most_max_lines_a_minute_and_then_one_line_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sender rotating its source address (an IPv6 /64) made every refusal a first one: a line each."""
    clock, bad = SteppedClock(), InvalidSignatureException("no")
    refused = RefusedRequests(clock)
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        for n in range(5_000):
            refused.refused(bad, f"2001:db8::{n:x}", SIGNED)
        refused.refused(UnrecognizedClientException("unknown"), "2001:db8::1:0", None)
        assert len(_lines(caplog)) == refused_requests.MAX_LINES
        clock.now += LOG_EVERY_SECONDS
        refused.refused(bad, "192.0.2.7", SIGNED)
    lines = _lines(caplog)
    assert refused.counts == {"InvalidSignatureException": 5_001, "UnrecognizedClientException": 1}
    assert len(lines) == refused_requests.MAX_LINES + 2
    assert lines[-2] == ("refused 4901 more requests before authentication from 4901 addresses without a line each "
                         f"(over {refused_requests.MAX_LINES} lines a minute): InvalidSignatureException 4900, "
                         "UnrecognizedClientException 1")
    assert lines[-1].startswith("refused a request from 192.0.2.7 before authentication")


def test_a_flood_that_stops_has_its_count_said_once_its_minute_is_over_without_a_next_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The count since a pair's last line was said only by its next refusal, which may never come."""
    clock, bad = SteppedClock(), InvalidSignatureException("no")
    refused = RefusedRequests(clock)
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        for _ in range(5):
            refused.refused(bad, "192.0.2.7", SIGNED)
        refused.refused(bad, "198.51.100.1", SIGNED)
        refused.say_overdue()  # within the minute: nothing yet
        assert len(_lines(caplog)) == 2
        clock.now += LOG_EVERY_SECONDS
        refused.say_overdue()
        refused.say_overdue()  # said once
    assert _lines(caplog)[2:] == [
        "refused 4 more requests from 192.0.2.7 before authentication (InvalidSignatureException) since its last line",
    ]
    assert refused._quiet_until.keys() == {("192.0.2.7", "InvalidSignatureException")}  # one line a minute still
    assert not refused._unsaid


def test_the_summary_of_a_minute_past_max_lines_is_said_once_it_is_over_without_a_next_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, bad = SteppedClock(), InvalidSignatureException("no")
    refused = RefusedRequests(clock)
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        for n in range(refused_requests.MAX_LINES + 7):
            refused.refused(bad, f"2001:db8::{n:x}", SIGNED)
        clock.now += LOG_EVERY_SECONDS
        refused.say_overdue()
    lines = _lines(caplog)
    assert len(lines) == refused_requests.MAX_LINES + 1
    assert lines[-1] == ("refused 7 more requests before authentication from 7 addresses without a line each "
                         f"(over {refused_requests.MAX_LINES} lines a minute): InvalidSignatureException 7")
    assert not refused._quiet_until  # nothing unsaid: forgotten, a next refusal from them is a first


def test_overdue_counts_past_the_minute_s_lines_join_its_summary(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(refused_requests, "MAX_LINES", 2)
    clock, bad = SteppedClock(), InvalidSignatureException("no")
    refused = RefusedRequests(clock)
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        for address in ("192.0.2.1", "192.0.2.2"):
            refused.refused(bad, address, SIGNED)
            refused.refused(bad, address, SIGNED)
        clock.now += LOG_EVERY_SECONDS
        refused.refused(bad, "192.0.2.3", SIGNED)  # the new minute's two lines
        refused.refused(bad, "192.0.2.4", SIGNED)
        refused.say_overdue()  # no line left in this minute for the first two addresses' counts
        assert len(_lines(caplog)) == 4
        clock.now += LOG_EVERY_SECONDS
        refused.say_overdue()
    assert _lines(caplog)[4:] == [
        "refused 2 more requests before authentication from 2 addresses without a line each "
        "(over 2 lines a minute): InvalidSignatureException 2",
    ]
