"""SigV4 verification against signatures made by botocore itself."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from keytrail.api.sigv4 import (
    IncompleteSignatureException,
    InvalidSignatureException,
    MissingAuthenticationTokenException,
    SigningKeys,
    check_signed_headers,
    parse_authorization,
    verify_signature,
)

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def _signed(body: bytes = b"{}", secret: str = "s3cret", region: str = "eu-west-1") -> AWSRequest:
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=body,
                         headers={"X-Amz-Target": "TrentService.ListKeys"})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        SigV4Auth(Credentials("AKIDEXAMPLE", secret), "kms", region).add_auth(request)
    return request


def _verify(request: AWSRequest, secret: str = "s3cret", now: datetime = NOW, body: bytes | None = None) -> None:
    prepared = request.prepare()
    headers = {k.lower(): v for k, v in prepared.headers.items()}
    headers["host"] = "localhost:4599"
    signed = parse_authorization(headers["authorization"])
    verify_signature(signed, SigningKeys(secret), method="POST", path="/", query="", headers=headers,
                     body=prepared.body if body is None else body, now=now)


def test_botocore_signature_verifies_and_names_the_region() -> None:
    request = _signed()
    _verify(request)
    assert parse_authorization(request.headers["Authorization"]).region == "eu-west-1"


def test_wrong_secret_or_altered_body_fails() -> None:
    with pytest.raises(InvalidSignatureException):
        _verify(_signed(), secret="other")
    with pytest.raises(InvalidSignatureException):
        _verify(_signed(b'{"Limit": 1}'), body=b'{"Limit": 2}')


def test_a_signed_payload_hash_header_does_not_vouch_for_a_swapped_body() -> None:
    # The client signs x-amz-content-sha256 of the body it sent; someone who swaps the body and
    # keeps that header must still fail: the server hashes the body it received.
    original = b'{"KeyId": "alias/app"}'
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=original,
                         headers={"X-Amz-Target": "TrentService.Decrypt",
                                  "X-Amz-Content-SHA256": hashlib.sha256(original).hexdigest()})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        SigV4Auth(Credentials("AKIDEXAMPLE", "s3cret"), "kms", "eu-west-1").add_auth(request)
    assert "x-amz-content-sha256" in request.headers["Authorization"]
    _verify(request)
    with pytest.raises(InvalidSignatureException):
        _verify(request, body=b'{"KeyId": "alias/other"}')


def test_one_cached_signing_key_verifies_request_after_request() -> None:
    # The derived key's hash states are copied per request, never consumed: any order, repeats.
    bodies = [b'{"Limit": 1}', b'{"Limit": 2}', b'{"Limit": 1}', b"{}"]
    for body in bodies:
        _verify(_signed(body))
    with pytest.raises(InvalidSignatureException):
        _verify(_signed(bodies[0]), body=bodies[1])
    _verify(_signed(bodies[1]))


def test_skew_over_five_minutes_fails_both_ways() -> None:
    _verify(_signed(), now=NOW + timedelta(minutes=4))
    for delta in (timedelta(minutes=6), -timedelta(minutes=6)):
        with pytest.raises(InvalidSignatureException, match="Signature (expired|not yet current)"):
            _verify(_signed(), now=NOW + delta)


def test_a_request_signed_five_minutes_away_either_way_is_within_the_window() -> None:
    for delta in (timedelta(minutes=5), -timedelta(minutes=5)):
        _verify(_signed(), now=NOW + delta)


def test_a_signed_header_missing_from_the_request_is_an_incomplete_signature_not_a_crash() -> None:
    prepared = _signed().prepare()
    headers = {k.lower(): v for k, v in prepared.headers.items() if k.lower() != "x-amz-target"}
    headers["host"] = "localhost:4599"
    with pytest.raises(IncompleteSignatureException) as caught:
        verify_signature(parse_authorization(headers["authorization"]), SigningKeys("s3cret"), method="POST",
                         path="/", query="", headers=headers, body=prepared.body, now=NOW)
    assert caught.value.message == "The signed header 'x-amz-target' is missing from the request."


@pytest.mark.parametrize(("header", "error"), [
    (None, MissingAuthenticationTokenException),
    ("", MissingAuthenticationTokenException),
    ("AWS4-HMAC-SHA256 Credential=AKID/20261128/us-east-1/kms/aws4_request", IncompleteSignatureException),
    ("Basic dXNlcjpwYXNz", IncompleteSignatureException),
    ("AWS4-HMAC-SHA256 Credential=AKID/x, SignedHeaders=host, Signature=00", IncompleteSignatureException),
])
def test_broken_authorization_headers(header: str | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_authorization(header)


def test_fields_in_any_order_parse_alike() -> None:
    credential = "Credential=AKID/20261128/us-east-1/kms/aws4_request"
    headers = "SignedHeaders=host;x-amz-date"
    usual = parse_authorization(f"AWS4-HMAC-SHA256 {credential}, {headers}, Signature=abc123 ")
    reordered = parse_authorization(f"AWS4-HMAC-SHA256 Signature=abc123, {headers}, {credential}")
    assert usual == reordered
    assert (usual.access_key_id, usual.region, usual.signed_headers, usual.signature) == (
        "AKID", "us-east-1", ("host", "x-amz-date"), "abc123")


def test_each_request_keeps_its_own_signature_with_the_same_credential() -> None:
    head = "AWS4-HMAC-SHA256 Credential=AKID/20261128/us-east-1/kms/aws4_request, SignedHeaders=host"
    assert [parse_authorization(f"{head}, Signature={s}").signature for s in ("aa", "bb", "aa")] == ["aa", "bb", "aa"]


@pytest.mark.parametrize("header", [
    "AWS4-HMAC-SHA256 Credential=AKID/20261128/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=",
    "AWS4-HMAC-SHA256 Credential=AKID/20261128/us-east-1/kms/aws4_request, Signature=00",
    "AWS4-HMAC-SHA512 Credential=AKID/20261128/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00",
])
def test_a_signature_does_not_make_a_broken_header_acceptable(header: str) -> None:
    with pytest.raises(IncompleteSignatureException):
        parse_authorization(header)


_HEAD = "AWS4-HMAC-SHA256 Credential=AKID/20261128/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date"


@pytest.mark.parametrize(("header", "refused"), [
    # two Authorization headers, which the app joins with a comma as HTTP joins repeated fields:
    # the second's algorithm name is a part without '=', as AWS reads it
    (f"{_HEAD}, Signature=aa,{_HEAD}, Signature=bb", "'AWS4-HMAC-SHA256' not a valid key=value pair"),
    (f"{_HEAD}, Signature=aa bb", "'bb' not a valid key=value pair"),
    ("AWS4-HMAC-SHA256 Credential= AKID/20261128/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=aa",
     "'AKID/20261128/us-east-1/kms/aws4_request' not a valid key=value pair"),
    (f"AWS4-HMAC-SHA256 Credential=OTHER/20261128/us-east-1/kms/aws4_request, {_HEAD[17:]}, Signature=aa",
     "'Credential' parameter more than once"),
    (f"{_HEAD}, SignedHeaders=host, Signature=aa", "'SignedHeaders' parameter more than once"),
    (f"{_HEAD}, Signature=aa, Signature=bb", "'Signature' parameter more than once"),
])
def test_an_authorization_header_is_read_as_aws_reads_it_or_refused(header: str, refused: str) -> None:
    # A part AWS would refuse, or a parameter given twice, is refused rather than read one way
    # here and another by whatever sits in front (a proxy that logs the first Credential).
    with pytest.raises(IncompleteSignatureException, match=refused):
        parse_authorization(header)


@pytest.mark.parametrize("signature", ["0f3a9c", "ab-c+d/e=", "\u00e9\u00e9"])
def test_a_signature_of_any_characters_parses_as_the_whole_header_does(signature: str) -> None:
    # The usual order's head is parsed once and kept, a signature of other characters than letters
    # and digits takes the whole parse; the reordered header is always parsed whole.
    usual = parse_authorization(f"{_HEAD}, Signature={signature}")
    reordered = parse_authorization(f"AWS4-HMAC-SHA256 Signature={signature}, {_HEAD.split(' ', 1)[1]}")
    assert usual == reordered
    assert usual.signature == signature


def test_a_host_named_in_capitals_in_signed_headers_counts_as_signed() -> None:
    signed = parse_authorization(f"{_HEAD.replace('=host;', '=Host;')}, Signature=00")
    assert check_signed_headers(signed, {"host": "localhost:4599", "x-amz-date": "20261128T120000Z"}, NOW) == (
        "20261128T120000Z")


def test_every_unsigned_x_amz_header_is_named_in_order() -> None:
    headers = {"host": "localhost:4599", "x-amz-date": "20261128T120000Z", "x-amz-target": "TrentService.ListKeys",
               "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "x-amz-meta": "m", "user-agent": "u"}
    with pytest.raises(InvalidSignatureException) as caught:
        check_signed_headers(parse_authorization(f"{_HEAD}, Signature=00"), headers, NOW)
    assert caught.value.message == (
        "There were headers present in the request which were not signed: x-amz-meta, x-amz-target.")


@pytest.mark.parametrize("header", [
    "AWS4-HMAC-SHA256 Credential=AKID/20261128/us-east-1/kms/aws4_request,SignedHeaders=host;x-amz-date,Signature=aa",
    "AWS4-HMAC-SHA256  Credential=AKID/20261128/us-east-1/kms/aws4_request ,  SignedHeaders=host;x-amz-date, "
    "Signature=aa",
    f"{_HEAD}, Signature=aa,",
])
def test_spacing_and_commas_between_parameters_do_not_matter(header: str) -> None:
    signed = parse_authorization(header)
    assert (signed.access_key_id, signed.signed_headers, signed.signature) == ("AKID", ("host", "x-amz-date"), "aa")


# The canonical query string as SigV4 makes it: each name and value percent-encoded as sent, the
# pairs sorted by their encoded names. Decoded first, `a%3A` sorted after `a0`, `%FF` read as U+FFFD,
# and the signature a botocore client made of them was refused.
@pytest.mark.parametrize("query", ["b=2&a=x%20y", "a0=1&a%3A=2", "a=%FF", "c=&b&a=1"])
def test_a_request_with_a_query_string_signs_it(query: str) -> None:
    request = AWSRequest(method="POST", url=f"http://localhost:4599/?{query}", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys"})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        SigV4Auth(Credentials("AKIDEXAMPLE", "s3cret"), "kms", "eu-west-1").add_auth(request)
    prepared = request.prepare()
    headers = {k.lower(): v for k, v in prepared.headers.items()}
    headers["host"] = "localhost:4599"
    signed = parse_authorization(headers["authorization"])
    verify_signature(signed, SigningKeys("s3cret"), method="POST", path="/", query=query, headers=headers,
                     body=b"{}", now=NOW)
    with pytest.raises(InvalidSignatureException):
        verify_signature(signed, SigningKeys("s3cret"), method="POST", path="/", query="", headers=headers,
                         body=b"{}", now=NOW)


class _ScopeDateAuth(SigV4Auth):
    """Signs with a credential-scope date other than the X-Amz-Date day (what someone holding a
    signing key derived for an old day would do); botocore itself always uses the same day."""

    scope_date = "20261120"

    @contextlib.contextmanager
    def _on_scope_day(self, request: AWSRequest) -> Iterator[None]:
        stamp: str = request.context["timestamp"]
        request.context["timestamp"] = self.scope_date + stamp[8:]
        try:
            yield
        finally:
            request.context["timestamp"] = stamp

    def scope(self, request: AWSRequest) -> str:
        with self._on_scope_day(request):
            return str(super().scope(request))

    def credential_scope(self, request: AWSRequest) -> str:
        with self._on_scope_day(request):
            return str(super().credential_scope(request))

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        with self._on_scope_day(request):
            return str(super().signature(string_to_sign, request))


def test_a_signature_scoped_to_another_service_is_refused_though_it_signs_the_request() -> None:
    # Signed with the right secret, but for S3: the signing key is derived per service so that one
    # a service was given works nowhere else.
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys"})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        SigV4Auth(Credentials("AKIDEXAMPLE", "s3cret"), "s3", "eu-west-1").add_auth(request)
    with pytest.raises(InvalidSignatureException) as caught:
        _verify(request)
    assert caught.value.message == "Credential should be scoped to correct service: 'kms'."


def test_a_scope_date_other_than_the_request_day_is_refused() -> None:
    # The signing key is derived per day so that a leaked one expires; a request whose scope names
    # another day than its X-Amz-Date would keep an old day's key usable for ever.
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys"})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        _ScopeDateAuth(Credentials("AKIDEXAMPLE", "s3cret"), "kms", "eu-west-1").add_auth(request)
    assert "/20261120/eu-west-1/kms/" in request.headers["Authorization"]
    with pytest.raises(InvalidSignatureException) as caught:
        _verify(request)
    assert caught.value.message == (
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
        "'20261120' != '20261128', from '20261128T120000Z'."
    )


def _sign_leaving_out(header: str, request: AWSRequest) -> None:
    """Sign `request` with `header` left out of SignedHeaders, as a hand-rolled signer might."""

    class LeavingOut(SigV4Auth):
        def headers_to_sign(self, request: AWSRequest) -> Any:
            headers = super().headers_to_sign(request)
            del headers[header]
            return headers

    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        LeavingOut(Credentials("AKIDEXAMPLE", "s3cret"), "kms", "eu-west-1").add_auth(request)


def test_a_signature_that_does_not_cover_the_host_is_refused() -> None:
    # Unsigned, the Host header could be changed: the same signed call would then be accepted by
    # any other endpoint that knows the same credentials.
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys"})
    _sign_leaving_out("host", request)
    assert "host" not in parse_authorization(request.headers["Authorization"]).signed_headers
    with pytest.raises(InvalidSignatureException) as caught:
        _verify(request)
    assert caught.value.message == "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."


def test_a_signature_that_does_not_cover_an_x_amz_header_is_refused() -> None:
    # Signed as DescribeKey, sent as ScheduleKeyDeletion: the body and every signed header match.
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=b'{"KeyId": "k"}',
                         headers={"X-Amz-Target": "TrentService.DescribeKey"})
    _sign_leaving_out("x-amz-target", request)
    request.headers.replace_header("X-Amz-Target", "TrentService.ScheduleKeyDeletion")
    with pytest.raises(InvalidSignatureException) as caught:
        _verify(request)
    assert caught.value.message == (
        "There were headers present in the request which were not signed: x-amz-target.")


def test_an_unsigned_content_hash_header_is_taken_since_the_body_hash_is_computed() -> None:
    request = _signed()
    request.headers["X-Amz-Content-Sha256"] = "UNSIGNED-PAYLOAD"
    _verify(request)


def test_a_non_ascii_signature_is_an_invalid_signature_not_a_crash() -> None:
    prepared = _signed().prepare()
    headers = {k.lower(): v for k, v in prepared.headers.items()}
    headers["host"] = "localhost:4599"
    signed = parse_authorization(headers["authorization"].rsplit("Signature=", 1)[0] + "Signature=\u00e9\u00e9")
    with pytest.raises(InvalidSignatureException):
        verify_signature(signed, SigningKeys("s3cret"), method="POST", path="/", query="", headers=headers,
                         body=prepared.body, now=NOW)


def test_skew_errors_are_worded_as_aws_words_them() -> None:
    # SDKs and tools tell clock skew from a wrong secret by these messages.
    with pytest.raises(InvalidSignatureException) as late:
        _verify(_signed(), now=NOW + timedelta(minutes=6))
    assert late.value.message == (
        "Signature expired: 20261128T120000Z is now earlier than 20261128T120100Z (20261128T120600Z - 5 min.)")
    with pytest.raises(InvalidSignatureException) as early:
        _verify(_signed(), now=NOW - timedelta(minutes=6))
    assert early.value.message == (
        "Signature not yet current: 20261128T120000Z is still later than 20261128T115900Z "
        "(20261128T115400Z + 5 min.)")


@pytest.mark.parametrize("region", ["", "..", "us-east-1:evil", "us_east_1", "US-EAST-1", "-us", "a" * 65])
def test_a_scope_region_no_region_could_be_named_is_refused(region: str) -> None:
    header = (f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261128/{region}/kms/aws4_request, "
              "SignedHeaders=host;x-amz-date, Signature=abc123")
    with pytest.raises(InvalidSignatureException, match="Credential should be scoped to a valid region, not"):
        parse_authorization(header)


def test_a_credential_scope_of_the_wrong_shape_is_refused_in_awss_words() -> None:
    """AWS's words, which users search for (the usual cause: the key id and secret swapped)."""
    with pytest.raises(IncompleteSignatureException) as parts:
        parse_authorization("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261128/us-east-1, "
                            "SignedHeaders=host, Signature=abc123")
    assert parts.value.message == ("Credential must have exactly 5 slash-delimited elements, e.g. "
                                   "keyid/date/region/service/term, got 'AKIDEXAMPLE/20261128/us-east-1'")
    with pytest.raises(IncompleteSignatureException) as term:
        parse_authorization("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261128/us-east-1/kms/aws4, "
                            "SignedHeaders=host, Signature=abc123")
    assert term.value.message == "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws4'."


@pytest.mark.parametrize("region", ["us-east-1", "us-gov-west-1", "eu-central-2", "local"])
def test_region_names_as_aws_and_self_hosted_deployments_spell_them_are_taken(region: str) -> None:
    header = (f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261128/{region}/kms/aws4_request, "
              "SignedHeaders=host;x-amz-date, Signature=abc123")
    assert parse_authorization(header).region == region


def test_a_session_token_is_signed_but_not_checked_and_cannot_be_swapped() -> None:
    # docs/principals.md: keytrail issues no session tokens, so an AWS_SESSION_TOKEN left in the
    # environment is carried along; it is still covered by the signature like any x-amz-* header.
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys"})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        SigV4Auth(Credentials("AKIDEXAMPLE", "s3cret", "some-token"), "kms", "eu-west-1").add_auth(request)
    _verify(request)
    request.headers.replace_header("X-Amz-Security-Token", "another-token")
    with pytest.raises(InvalidSignatureException):
        _verify(request)


class _IsoDateAuth(SigV4Auth):
    """Writes the Date header in ISO 8601 basic format, as AWS's example for it does."""

    def _modify_request_before_signing(self, request: AWSRequest) -> None:
        super()._modify_request_before_signing(request)
        request.headers.replace_header("Date", request.context["timestamp"])


def _signed_with_date_header(signer: type[SigV4Auth] = SigV4Auth) -> AWSRequest:
    """Signed by botocore dated by a Date header: given one, botocore writes the signing time there
    as an HTTP-date and sends no X-Amz-Date (SigV4Auth._set_necessary_date_headers)."""
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys", "Date": ""})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        signer(Credentials("AKIDEXAMPLE", "s3cret"), "kms", "eu-west-1").add_auth(request)
    return request


def test_a_request_dated_by_its_date_header_alone_verifies() -> None:
    # AWS reads Date when X-Amz-Date is absent ("Handling dates in Signature Version 4").
    request = _signed_with_date_header()
    assert "X-Amz-Date" not in request.headers
    assert request.headers["Date"] == "Sat, 28 Nov 2026 12:00:00 -0000"  # email.utils.formatdate's form
    assert "date;host" in request.headers["Authorization"]
    _verify(request)
    # The time is signed: in the string to sign whether the Date header is signed or not
    request.headers.replace_header("Date", "Sat, 28 Nov 2026 12:00:01 -0000")
    with pytest.raises(InvalidSignatureException, match="does not match the signature you provided"):
        _verify(request)


@pytest.mark.parametrize("sent_as", ["Sat, 28 Nov 2026 12:00:00 GMT", "Sat, 28 Nov 2026 13:00:00 +0100",
                                     "Saturday, 28-Nov-26 12:00:00 GMT", "Sat Nov 28 12:00:00 2026"])
def test_every_http_date_form_of_the_signing_time_dates_the_request(sent_as: str) -> None:
    class DateAuth(SigV4Auth):
        def _modify_request_before_signing(self, request: AWSRequest) -> None:
            super()._modify_request_before_signing(request)
            request.headers.replace_header("Date", sent_as)

    _verify(_signed_with_date_header(DateAuth))


def test_a_date_header_in_iso_basic_format_dates_the_request_too() -> None:
    # The format of AWS's own example for the Date header ("Handling dates in Signature Version 4").
    request = _signed_with_date_header(_IsoDateAuth)
    assert request.headers["Date"] == "20261128T120000Z"
    _verify(request)


def test_a_date_header_is_held_to_the_window_and_the_scope_day_as_x_amz_date_is() -> None:
    with pytest.raises(InvalidSignatureException) as late:
        _verify(_signed_with_date_header(), now=NOW + timedelta(minutes=6))
    assert late.value.message == (
        "Signature expired: 20261128T120000Z is now earlier than 20261128T120100Z (20261128T120600Z - 5 min.)")
    request = _signed_with_date_header()
    request.headers.replace_header("Date", "Fri, 27 Nov 2026 23:59:59 GMT")  # another day than the scope's
    with pytest.raises(InvalidSignatureException, match="Date in Credential scope does not match"):
        _verify(request, now=datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC))


def test_x_amz_date_dates_the_request_when_both_are_sent() -> None:
    request = _signed()
    request.headers["Date"] = "Thu, 01 Jan 2026 00:00:00 GMT"  # unsigned and wrong: not read
    _verify(request)


@pytest.mark.parametrize(("date", "message"), [
    (None, "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."),
    ("yesterday", "Date must be an HTTP-date or in ISO-8601 'basic format'. Got 'yesterday'."),
    ("20261128T12Z", "Date must be in ISO-8601 'basic format'. Got '20261128T12Z'."),
    # Every field a number, in the wrong frame: no T, no Z, or something after the Z.
    ("20261128 120000Z", "Date must be in ISO-8601 'basic format'. Got '20261128 120000Z'."),
    ("20261128T1200000", "Date must be in ISO-8601 'basic format'. Got '20261128T1200000'."),
    ("20261128T120000Z0", "Date must be in ISO-8601 'basic format'. Got '20261128T120000Z0'."),
    ("Fri, 31 Dec 9999 23:59:59 -2359", "Date must be an HTTP-date or in ISO-8601 'basic format'. "
                                        "Got 'Fri, 31 Dec 9999 23:59:59 -2359'."),  # past year 9999 in UTC
])
def test_a_request_without_a_readable_date_is_incomplete(date: str | None, message: str) -> None:
    request = _signed()
    del request.headers["X-Amz-Date"]
    if date is not None:
        request.headers["Date"] = date
    with pytest.raises(IncompleteSignatureException) as caught:
        _verify(request)
    assert caught.value.message == message


def _as_received(request: AWSRequest, encoding: str) -> dict[str, str]:
    """The request's headers as the app reads them (api/app.py: each byte one Latin-1 character)
    when the client sent their values in `encoding`."""
    prepared = request.prepare()
    headers = {k.lower(): v.encode(encoding).decode("latin-1") for k, v in prepared.headers.items()}
    headers["host"] = "localhost:4599"
    return headers


def _verify_received(request: AWSRequest, headers: dict[str, str]) -> None:
    verify_signature(parse_authorization(headers["authorization"]), SigningKeys("s3cret"), method="POST", path="/",
                     query="", headers=headers, body=b"{}", now=NOW)


def _signed_with(value: str) -> AWSRequest:
    request = AWSRequest(method="POST", url="http://localhost:4599/", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys", "X-Amz-Meta-Note": value})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        SigV4Auth(Credentials("AKIDEXAMPLE", "s3cret"), "kms", "eu-west-1").add_auth(request)
    return request


def test_a_non_ascii_header_value_verifies_sent_as_latin_1_or_as_utf_8() -> None:
    # The signer signs the value's UTF-8 bytes. botocore then sends it as Latin-1 (http.client's
    # encoding); the Go, Java and Rust SDKs send the UTF-8 bytes they signed, which is what AWS
    # verifies. "à" is C3 A0 in UTF-8: A0 is a blank to str.split(), not to AWS's Trimall.
    request = _signed_with("café  à la carte")
    _verify_received(request, _as_received(request, "latin-1"))
    _verify_received(request, _as_received(request, "utf-8"))


def test_a_header_value_latin_1_cannot_carry_verifies_as_its_utf_8_bytes() -> None:
    request = _signed_with("鍵 — ключ")
    _verify_received(request, _as_received(request, "utf-8"))


def test_a_non_ascii_header_value_changed_after_signing_fails_either_way() -> None:
    request = _signed_with("café")
    for encoding in ("latin-1", "utf-8"):
        headers = _as_received(request, encoding)
        headers["x-amz-meta-note"] = headers["x-amz-meta-note"].replace("caf", "cab")
        with pytest.raises(InvalidSignatureException, match="does not match the signature you provided"):
            _verify_received(request, headers)


def test_signing_keys_are_bounded_whatever_regions_a_client_names() -> None:
    keys = SigningKeys("s3cret")
    first = keys["20261128", "eu-west-1", "kms"]
    assert keys["20261128", "eu-west-1", "kms"] is first  # derived once per scope
    for number in range(1000):
        assert keys["20261128", f"region-{number}", "kms"] is not first
    assert len(keys) <= 64
    assert "s3cret" not in repr(keys) and repr(first.inner) not in repr(keys)
