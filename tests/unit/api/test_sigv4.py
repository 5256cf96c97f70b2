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
    verify_signature(signed, secret, method="POST", path="/", query="", headers=headers,
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


@pytest.mark.parametrize("header", [
    "AWS4-HMAC-SHA256 Credential=AKID/20261128/us-east-1/kms/aws4_request,SignedHeaders=host;x-amz-date,Signature=aa",
    "AWS4-HMAC-SHA256  Credential=AKID/20261128/us-east-1/kms/aws4_request ,  SignedHeaders=host;x-amz-date, "
    "Signature=aa",
    f"{_HEAD}, Signature=aa,",
])
def test_spacing_and_commas_between_parameters_do_not_matter(header: str) -> None:
    signed = parse_authorization(header)
    assert (signed.access_key_id, signed.signed_headers, signed.signature) == ("AKID", ("host", "x-amz-date"), "aa")


def test_a_request_with_a_query_string_signs_it() -> None:
    request = AWSRequest(method="POST", url="http://localhost:4599/?b=2&a=x%20y", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys"})
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        SigV4Auth(Credentials("AKIDEXAMPLE", "s3cret"), "kms", "eu-west-1").add_auth(request)
    prepared = request.prepare()
    headers = {k.lower(): v for k, v in prepared.headers.items()}
    headers["host"] = "localhost:4599"
    signed = parse_authorization(headers["authorization"])
    verify_signature(signed, "s3cret", method="POST", path="/", query="b=2&a=x%20y", headers=headers,
                     body=b"{}", now=NOW)
    with pytest.raises(InvalidSignatureException):
        verify_signature(signed, "s3cret", method="POST", path="/", query="", headers=headers, body=b"{}", now=NOW)


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
        verify_signature(signed, "s3cret", method="POST", path="/", query="", headers=headers,
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


def test_a_date_header_alone_does_not_date_the_request() -> None:
    request = _signed()
    del request.headers["X-Amz-Date"]
    request.headers["Date"] = "Sat, 28 Nov 2026 12:00:00 GMT"
    with pytest.raises(IncompleteSignatureException, match="requires existence of either a 'X-Amz-Date'"):
        _verify(request)
