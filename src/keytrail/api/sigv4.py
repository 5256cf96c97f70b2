"""AWS Signature Version 4 verification of the Authorization header.

The canonical request is rebuilt from what was received, the signature compared in constant
time, and the request refused outside a 5-minute clock-skew window (KMS's own: its errors read
`Signature expired: … (… - 5 min.)`; read from the wall clock, never the dev clock, so moving
test time forward does not break signing). The request is dated by X-Amz-Date, else by Date, as
AWS dates it ("Handling dates in Signature Version 4", AWS General Reference).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import quote, unquote_to_bytes

from keytrail.keyed_hash import KeyedSha256
from keytrail.kms.call_values import call_value
from keytrail.kms.errors import KmsError

__all__ = [
    "IncompleteSignatureException",
    "InvalidSignatureException",
    "MissingAuthenticationTokenException",
    "SignedRequest",
    "SigningKeys",
    "UnrecognizedClientException",
    "check_signature",
    "check_signed_headers",
    "parse_authorization",
    "verify_signature",
]

MAX_SKEW_SECONDS = 300
_ALGORITHM = "AWS4-HMAC-SHA256"
_SIGNATURE_FIELD = ", Signature="
_PARAMETERS = ("Credential", "SignedHeaders", "Signature")
_SEPARATOR = re.compile(r"[,\s]+")  # between an Authorization header's parameters
_MAX_SCOPES = 64  # signing keys kept per secret: a day's Regions, and the day before
_NO_DATE = "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."


class IncompleteSignatureException(KmsError):
    code = "IncompleteSignatureException"


class InvalidSignatureException(KmsError):
    code = "InvalidSignatureException"


class UnrecognizedClientException(KmsError):
    code = "UnrecognizedClientException"


class MissingAuthenticationTokenException(KmsError):
    code = "MissingAuthenticationTokenException"
    status = 403


@call_value
class SignedRequest:
    """The parts of an Authorization header."""

    access_key_id: str
    date: str  # YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


# A Region name as AWS spells them (us-east-1, us-gov-west-1, eu-central-2), or any name made the
# same way for a self-hosted deployment ("local"): lowercase letters, digits and inner hyphens.
_REGION = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def parse_authorization(header: str | None) -> SignedRequest:
    """Split the Authorization header, or raise what AWS raises for a missing or broken one."""
    if not header:
        raise MissingAuthenticationTokenException("Request is missing Authentication Token")
    # SDKs write `<algorithm> Credential=…, SignedHeaders=…, Signature=…`; everything before the
    # signature repeats from call to call (it changes daily), so its parse is cached.
    head, found, signature = header.rpartition(_SIGNATURE_FIELD)
    signature = signature.strip()
    # An SDK's signature is hex: letters and digits hold no separator, and telling so costs a C loop
    # where a regex search tried a match at each of its 64 characters. Anything else is parsed whole.
    if found and signature.isalnum():
        scope = _parse_head(head)
        if scope is not None:
            return SignedRequest(*scope, signature=signature)
    return _parse_fields(header)


@lru_cache(maxsize=256)
def _parse_head(head: str) -> tuple[str, str, str, str, tuple[str, ...]] | None:
    """The parts of `head` (an Authorization header without its signature), None if broken."""
    try:
        signed = _parse_fields(head + _SIGNATURE_FIELD + "-")
    except KmsError:
        return None
    return signed.access_key_id, signed.date, signed.region, signed.service, signed.signed_headers


def _parse_fields(header: str) -> SignedRequest:
    algorithm, _, rest = header.partition(" ")
    if algorithm != _ALGORITHM:
        raise IncompleteSignatureException(f"Unsupported AWS 'algorithm': '{algorithm}'")
    fields = _key_value_pairs(header, rest)
    missing = [name for name in _PARAMETERS if not fields.get(name)]
    if missing:
        raise IncompleteSignatureException(
            " ".join(f"Authorization header requires '{name}' parameter." for name in missing)
            + f" Authorization={header[:200]}"
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5:  # AWS's words (an access key and secret given the wrong way round, most often)
        raise IncompleteSignatureException(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
            f"got '{fields['Credential']}'")
    if scope[4] != "aws4_request":
        raise IncompleteSignatureException(
            f"Credential should be scoped with a valid terminator: 'aws4_request', not '{scope[4][:64]}'.")
    if len(scope[2]) > 64 or not _REGION.fullmatch(scope[2]):  # it becomes part of every key ARN
        raise InvalidSignatureException(f"Credential should be scoped to a valid region, not '{scope[2][:64]}'.")
    return SignedRequest(
        access_key_id=scope[0], date=scope[1], region=scope[2], service=scope[3],
        signed_headers=tuple(fields["SignedHeaders"].split(";")), signature=fields["Signature"],
    )


def _key_value_pairs(header: str, rest: str) -> dict[str, str]:
    """The header's parameters, split at commas and blanks as AWS splits them. A part without '='
    (what two Authorization headers joined into one, or a blank inside a value, leave) and a
    parameter given twice are refused: read here one way, they could be read another by a proxy
    or log in front, which would then name a caller other than the one authenticated."""
    fields: dict[str, str] = {}
    for part in _SEPARATOR.split(rest):
        if not part:
            continue
        name, equals, value = part.partition("=")
        if not equals:
            raise IncompleteSignatureException(f"'{part[:200]}' not a valid key=value pair (missing equal-sign) "
                                               f"in Authorization header: '{header[:200]}'.")
        if name in fields and name in _PARAMETERS:
            raise IncompleteSignatureException(f"Authorization header has the '{name}' parameter more than once.")
        fields[name] = value
    return fields


def _date_header_stamp(value: str | None) -> str:
    """The request time a Date header gives, as X-Amz-Date writes it: AWS reads Date when
    X-Amz-Date is absent, and signs the time in ISO 8601 basic format either way (what botocore
    does for a request that carries Date). Date is an HTTP-date (`Mon, 09 Sep 2011 23:36:00 GMT`,
    as in AWS's SigV4 test suite), or the basic format itself."""
    if not value:
        raise IncompleteSignatureException(_NO_DATE)
    if value[:8].isdigit():
        _parse_amz_date(value)  # refused unless it is the basic format
        return value
    try:
        moment = parsedate_to_datetime(value)
        return _stamp(moment if moment.tzinfo is None else moment.astimezone(UTC))
    except (ValueError, TypeError, IndexError, OverflowError):  # OverflowError: a zone past year 9999
        raise IncompleteSignatureException(
            f"Date must be an HTTP-date or in ISO-8601 'basic format'. Got '{value[:64]}'.") from None


@lru_cache(maxsize=64)
def _parse_amz_date(value: str) -> datetime:
    # Slicing is ~5x cheaper than strptime, which showed up in the hot path; and concurrent
    # requests mostly share the second they were signed in.
    if len(value) != 16 or value[8] != "T" or value[15] != "Z":
        raise IncompleteSignatureException(f"Date must be in ISO-8601 'basic format'. Got '{value}'.")
    try:
        return datetime(int(value[0:4]), int(value[4:6]), int(value[6:8]),
                        int(value[9:11]), int(value[11:13]), int(value[13:15]), tzinfo=UTC)
    except ValueError:
        raise IncompleteSignatureException(f"Date must be in ISO-8601 'basic format'. Got '{value}'.") from None


def _check_host_signed(signed: SignedRequest) -> None:
    """AWS refuses a signature that leaves Host out: the same signed call could otherwise be
    replayed to any other endpoint that holds the same credentials."""
    if "host" in signed.signed_headers:  # as every SDK writes it: no name lowercased
        return
    if "host" not in (name.lower() for name in signed.signed_headers):
        raise InvalidSignatureException("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")


def _check_amz_headers_signed(signed: SignedRequest, headers: Mapping[str, str]) -> None:
    """Every X-Amz-* header the request carries must be signed, as AWS requires of S3 and every SDK
    does: X-Amz-Target names the operation, so with it unsigned a captured DescribeKey could be
    replayed as ScheduleKeyDeletion on the same body. X-Amz-Content-Sha256 may stay out: the
    body's hash is computed here, never taken from it."""
    # The set difference runs in C, and leaves only the few headers an SDK does not sign to look at.
    unsigned = [name for name in headers.keys() - signed.signed_headers
                if name.startswith("x-amz-") and name != "x-amz-content-sha256"]
    if unsigned:
        raise InvalidSignatureException(
            f"There were headers present in the request which were not signed: {', '.join(sorted(unsigned))}."
        )


def _check_scope_date(signed: SignedRequest, amz_date: str) -> None:
    """The scope's day must be the request's: the signing key is derived per day so that a leaked
    one stops working, which a scope naming any other day would undo."""
    day = amz_date[:8]
    if signed.date != day:
        raise InvalidSignatureException(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{signed.date}' != '{day}', from '{amz_date}'."
        )


def _check_skew(amz_date: str, now: datetime) -> None:
    """Refuse a request signed outside the window, in AWS's words (SDKs read them to tell clock
    skew from a wrong secret)."""
    signed_at = _parse_amz_date(amz_date)
    skew = (now - signed_at).total_seconds()
    if abs(skew) <= MAX_SKEW_SECONDS:
        return
    window = timedelta(seconds=MAX_SKEW_SECONDS)
    minutes = f"{MAX_SKEW_SECONDS // 60} min."
    if skew > 0:
        raise InvalidSignatureException(
            f"Signature expired: {amz_date} is now earlier than {_stamp(now - window)} ({_stamp(now)} - {minutes})"
        )
    raise InvalidSignatureException(
        f"Signature not yet current: {amz_date} is still later than {_stamp(now + window)} "
        f"({_stamp(now)} + {minutes})"
    )


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


class SigningKeys(dict[tuple[str, str, str], KeyedSha256]):
    """The SigV4 signing keys of one secret by credential scope (day, Region, service), each
    derived on first use (`keys[scope]`: a plain dict lookup after that, cheaper than the
    lru_cache it replaces) and kept with that secret's credential, never in a cache shared by all:
    a secret removed from the principals file or replaced there leaves with its credential, keys
    and all, and no request can be checked against it again."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._secret = secret

    def __repr__(self) -> str:
        return "SigningKeys(...)"  # never the secret, nor a key derived from it

    def __missing__(self, scope: tuple[str, str, str]) -> KeyedSha256:
        if len(self) >= _MAX_SCOPES:  # a client may name any Region: bounded, not grown
            self.clear()
        date, region, service = scope
        key = hmac.digest(("AWS4" + self._secret).encode(), date.encode(), "sha256")
        for part in (region, service, "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        self[scope] = derived = KeyedSha256.of(key)
        return derived


def _canonical_query(query: str) -> str:
    """SigV4's canonical query string: each name and value percent-encoded (its bytes as sent, `+`
    a plus, not a space), the pairs sorted by the encoded name, then value. Decoded as a form, `%FF`
    became U+FFFD and `a%3A` sorted after `a0`: a correctly signed request was refused."""
    if not query:  # every KMS call: the operation travels in X-Amz-Target, the input in the body
        return ""
    pairs = sorted((_encoded(name), _encoded(value))
                   for name, _, value in (pair.partition("=") for pair in query.split("&") if pair))
    return "&".join(f"{name}={value}" for name, value in pairs)


def _encoded(part: str) -> str:
    return quote(unquote_to_bytes(part), safe="-_.~")


def _canonical_request(
    method: str, path: str, query: str, headers: Mapping[str, str], signed: SignedRequest, body: bytes,
) -> str:
    lines = []
    for name in signed.signed_headers:
        value = headers.get(name)
        if value is None:
            raise IncompleteSignatureException(f"The signed header '{name}' is missing from the request.")
        lines.append(f"{name}:{' '.join(value.split())}\n")
    # The body's hash is always computed here, never taken from x-amz-content-sha256: a header
    # the client sends could otherwise vouch for a body that was swapped after signing.
    payload_hash = hashlib.sha256(body).hexdigest()
    uri = "/" if path == "/" else quote(path or "/", safe="/-_.~")
    return "\n".join((method, uri, _canonical_query(query), "".join(lines), ";".join(signed.signed_headers),
                      payload_hash))


def _as_sent(canonical: str, headers: Mapping[str, str], signed: SignedRequest) -> bytes:
    """`canonical` with each signed header's value as the bytes that arrived, blanks trimmed and
    runs of them made one (ASCII blanks only: AWS's Trimall), which is what AWS signs and what the
    Go, Java and Rust SDKs sign when a value is sent as UTF-8. `canonical` reads the bytes as
    Latin-1 characters, each then signed as UTF-8, which is what botocore signs (http.client
    sends a header's characters as Latin-1); the two differ only for bytes over 0x7F."""
    method, uri, query, rest = canonical.split("\n", 3)
    lines = b"".join(name.encode() + b":" + b" ".join(headers[name].encode("latin-1").split()) + b"\n"
                     for name in signed.signed_headers)  # each one there: `canonical` was made
    tail = rest.rsplit("\n", 2)[-2:]  # the signed header names and the payload's hash
    return b"\n".join((method.encode(), uri.encode(), query.encode(), lines, *(part.encode() for part in tail)))


def _signature(keys: SigningKeys, signed: SignedRequest, amz_date: str, canonical: bytes) -> bytes:
    to_sign = "\n".join((_ALGORITHM, amz_date, signed.scope, hashlib.sha256(canonical).hexdigest()))
    return keys[signed.date, signed.region, signed.service].hexdigest(to_sign.encode()).encode()


def verify_signature(
    signed: SignedRequest, keys: SigningKeys, *, method: str, path: str, query: str,
    headers: Mapping[str, str], body: bytes, now: datetime,
) -> None:
    """Raise unless `signed.signature` is the signature of this request under the secret of `keys`."""
    amz_date = check_signed_headers(signed, headers, now)
    check_signature(signed, keys, amz_date, method=method, path=path, query=query, headers=headers, body=body)


def check_signed_headers(signed: SignedRequest, headers: Mapping[str, str], now: datetime) -> str:
    """What the headers alone decide (the service, the time and its window, the headers that must
    be signed), raised as AWS raises it; the request's time stamp, which its signature covers. A
    server checks this before it reads the body, so that a request nobody could have signed holds
    no memory while its body arrives."""
    if signed.service != "kms":
        raise InvalidSignatureException("Credential should be scoped to correct service: 'kms'.")
    amz_date = headers.get("x-amz-date") or _date_header_stamp(headers.get("date"))
    _check_skew(amz_date, now)
    _check_host_signed(signed)
    _check_amz_headers_signed(signed, headers)
    _check_scope_date(signed, amz_date)
    return amz_date


def check_signature(
    signed: SignedRequest, keys: SigningKeys, amz_date: str, *, method: str, path: str, query: str,
    headers: Mapping[str, str], body: bytes,
) -> None:
    """Raise unless `signed.signature` signs this request, stamped `amz_date` (`check_signed_headers`),
    under the secret of `keys`."""
    canonical = _canonical_request(method, path, query, headers, signed, body)
    # Compared as bytes: compare_digest refuses str with non-ASCII characters (TypeError, a 500),
    # and the header is whatever the client sent.
    given = signed.signature.encode()
    if hmac.compare_digest(_signature(keys, signed, amz_date, canonical.encode()), given):
        return
    # A header value with bytes over 0x7F is signed one of two ways (`_as_sent`); only then, and
    # only once the first has failed, is the second computed.
    if canonical.isascii() or not hmac.compare_digest(
            _signature(keys, signed, amz_date, _as_sent(canonical, headers, signed)), given):
        raise InvalidSignatureException(
            "The request signature we calculated does not match the signature you provided. Check your "
            "AWS Secret Access Key and signing method. Consult the service documentation for details."
        )
