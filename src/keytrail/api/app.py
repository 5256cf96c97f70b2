"""The HTTP front end: an ASGI app speaking AWS JSON 1.1 on `POST /`.

parse → SigV4 header checks → body → SigV4 signature → principal + Region → validate against botocore's
model → KmsService.
Every answer carries `x-amzn-RequestId`; every error is AWS's JSON error body, never a 500 page.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from keytrail.api import cors
from keytrail.api.credentials import Credential, CredentialStore
from keytrail.api.http_protocol import TLS_EXTENSION
from keytrail.api.protocol import decode_request, encode_value, operation_names
from keytrail.api.refused_requests import RefusedRequests
from keytrail.api.sigv4 import (
    SignedRequest,
    UnrecognizedClientException,
    check_signature,
    check_signed_headers,
    parse_authorization,
)
from keytrail.api.source_ip import caller_address, is_loopback
from keytrail.clock import ManualClock, utc_now
from keytrail.kms import errors
from keytrail.kms.call_values import call_value
from keytrail.kms.context import CallContext, Principal
from keytrail.kms.partitions import partition_of
from keytrail.kms.service import KmsService

__all__ = ["ApiSettings", "KmsApp"]

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]

_JSON = b"application/x-amz-json-1.1"
_TARGET_PREFIX = "TrentService."
#: The body of every request an SDK sends fits (a 32 KB key policy, JSON-escaped, included): only
#: bodies past it wait on each other (`_LargeBodies`).
SMALL_BODY_BYTES = 64 * 1024
_READS = frozenset({"GET", "HEAD"})  # the methods of the health and metrics endpoints
_MAX_ADVANCE = 100 * 365 * 86400  # one move of the dev clock: far enough for any test, short of year 9999
_ADVANCE_FROM_A_PAGE = orjson.dumps({"__type": "AccessDeniedException",
                                     "message": "The dev clock is not moved by a web page (a request with an Origin)"})
_ADVANCE_REFUSED = orjson.dumps({"__type": "ValidationException",
                                 "message": f'Body must be {{"seconds": N}} with 0 <= N <= {_MAX_ADVANCE} (100 years)'})


class _BodyTooLarge(errors.KmsError):
    code = "SerializationException"
    status = 413


class _Unread(Exception):
    """A refusal answered before the request's body was read whole, on a connection then closed:
    the HTTP protocol reads what is left of the body and drops it first, so that the client gets
    the answer (api/http_protocol.py). `reason`: its REQUEST_REFUSAL_REASONS entry, if counted there."""

    def __init__(self, error: errors.KmsError, reason: str | None = None) -> None:
        super().__init__(error.message)
        self.error, self.reason = error, reason


class _LargeBodies:
    """The bytes request bodies still arriving hold past their first SMALL_BODY_BYTES, all requests
    together, at most `limit`. Each request's body is bounded (max_body_bytes), but not how many
    arrive at once: a client that knows an access key id (CloudTrail records name them) could open
    thousands of connections and leave each body unfinished, holding 256 KiB apiece until its
    deadline. Every request an SDK sends is smaller than SMALL_BODY_BYTES, so only such bodies
    wait on each other."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self, size: int) -> None:
        """Hold `size` more bytes; refused past the limit."""
        if self.held + size > self.limit:
            raise errors.ThrottlingException(
                f"Too many large request bodies are arriving at once (over {self.limit >> 20} MiB past the first "
                f"{SMALL_BODY_BYTES >> 10} KiB of each); try again.")
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size


@call_value
class _Signer:
    """Who signed a request, as its headers say, checked before its body is read; `amz_date`: its
    time stamp, None for an access key whose signatures are not checked (--dev-credentials);
    `generation`: the CredentialStore's generation `credential` was looked up in."""

    signed: SignedRequest
    credential: Credential
    amz_date: str | None
    generation: int


class _ClientGone(Exception):
    """The client went away before its request body arrived whole: what did arrive is not the
    request it signed or meant, so nothing runs, and there is no one left to answer."""


@dataclass(slots=True)
class ApiSettings:
    """What the front end needs besides the service."""

    max_body_bytes: int = 256 * 1024
    large_bodies_bytes: int = 16 << 20  # _LargeBodies' limit
    dev_clock: ManualClock | None = None
    on_clock_advanced: Hook | None = None
    metrics: Callable[[], Awaitable[str]] | None = None
    health: Callable[[], Awaitable[dict[str, Any]]] | None = None  # a "status" other than "ok" answers 503
    startup: list[Hook] = field(default_factory=list)
    shutdown: list[Hook] = field(default_factory=list)
    # Requests refused before the service saw them, by REQUEST_REFUSAL_REASONS: the app's 413 and
    # large bodies' ThrottlingException here, the HTTP protocol's 408, 431 and 400 when it is given the
    # same counter (cli/http_server.py).
    refusals: Counter[str] = field(default_factory=Counter)


def _error_body(error: errors.KmsError) -> bytes:
    return orjson.dumps({"__type": error.code, "message": error.message})


class KmsApp:
    """ASGI application: the KMS API plus health, dev-clock and metrics endpoints."""

    def __init__(self, service: KmsService, credentials: CredentialStore, settings: ApiSettings) -> None:
        self.service = service
        self.credentials = credentials
        self.settings = settings
        self.refused = RefusedRequests()  # before authentication: no caller to record, counted and logged
        self.large_bodies = _LargeBodies(settings.large_bodies_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == "/":
            await self._kms(scope, receive, send)
        elif method == "OPTIONS" and path == "/":
            await self._preflight(scope, send)
        # HEAD as GET (RFC 9110 §9.3.2; the server sends no body): uptime monitors and some load
        # balancers probe with HEAD, and a 404 took a healthy node out of their rotation.
        elif method in _READS and path == "/_keytrail/health":
            body = {"status": "ok", **(await self.settings.health() if self.settings.health else {})}
            status = 200 if body["status"] == "ok" else 503  # a load balancer's cue to send calls elsewhere
            await _respond(send, status, orjson.dumps(body), b"application/json")
        elif method in _READS and path == "/metrics" and self.settings.metrics:
            text = (await self.settings.metrics()).encode()
            await _respond(send, 200, text, b"text/plain; version=0.0.4; charset=utf-8")
        elif method == "POST" and path == "/_keytrail/clock/advance" and self._clock_allowed(scope):
            await self._advance_clock(scope, receive, send)
        elif path == "/_keytrail/health" or (path == "/metrics" and self.settings.metrics):
            await _not_allowed(method, path, send)
        else:
            await self._not_found(method, path, send)

    async def _not_found(self, method: str, path: str, send: Send) -> None:
        """An AWS error with its request id, as every answer has, naming where KMS calls go: an SDK
        whose endpoint URL has a path (`…:4599/kms`) sends its calls to `POST /kms`, and a bare
        "Not Found" left the user guessing."""
        request_id = str(uuid.uuid4())  # no KMS call: none of the service's ids
        error = errors.UnknownOperationException(
            f"{method} {path[:200]} is no keytrail endpoint: KMS calls are POST / (an endpoint URL without a path)")
        extra = [(b"x-amzn-requestid", request_id.encode()), (b"x-amzn-errortype", error.code.encode())]
        await _respond(send, 404, _error_body(error), _JSON, extra)

    async def _preflight(self, scope: Scope, send: Send) -> None:
        """A browser's CORS preflight of a KMS call (api/cors.py): 200 saying what the page may send,
        or 403 for a page a --dev-credentials node takes no calls from. Not a KMS call: not audited."""
        request_id = (b"x-amzn-requestid", str(uuid.uuid4()).encode())
        allowed = cors.preflight(scope["headers"], local_only=self.credentials.dev_credentials)
        if allowed is None:
            error = errors.AccessDeniedException(
                "A --dev-credentials node takes calls from web pages of this machine only (localhost).")
            refused = [request_id, (b"x-amzn-errortype", error.code.encode())]
            await _respond(send, 403, _error_body(error), _JSON, refused)
            return
        await _respond(send, 200, b"", _JSON, [request_id, *allowed])

    # --- KMS calls ---------------------------------------------------------------------------

    async def _kms(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = self.service.deps.new_id()
        extra = [(b"x-amzn-requestid", request_id.encode()),
                 *cors.call_headers(scope["headers"], local_only=self.credentials.dev_credentials)]
        try:
            response = await self._handle(scope, receive, request_id)
        except _ClientGone:
            return
        except _Unread as unread:  # the rest of the body is read and dropped, then it closes
            if unread.reason:
                self.settings.refusals[unread.reason] += 1
            extra += [(b"x-amzn-errortype", unread.error.code.encode()), (b"connection", b"close")]
            await _respond(send, unread.error.status, _error_body(unread.error), _JSON, extra)
            return
        except errors.KmsError as error:
            extra.append((b"x-amzn-errortype", error.code.encode()))
            await _respond(send, error.status, _error_body(error), _JSON, extra)
            return
        except Exception:
            log.exception("unexpected error serving request %s", request_id)
            internal = errors.KMSInternalException("An internal error occurred.")
            await _respond(send, 500, _error_body(internal), _JSON, extra)
            return
        await _respond(send, 200, orjson.dumps(encode_value(response)), _JSON, extra)

    async def _handle(self, scope: Scope, receive: Receive, request_id: str) -> dict[str, Any]:
        headers = _headers(scope)
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Unread(_body_too_large(limit), "body_too_large")
        # Who signed is judged from the headers before the body is read: a request no caller could
        # have signed (no or a broken Authorization, an unknown access key, a time out of the
        # window) holds none of its body while it arrives.
        try:
            signer = self._signer(headers)
        except errors.KmsError as error:
            self._unauthenticated(scope, headers, error)
            raise _Unread(error) from None
        body = await _read_body(receive, limit, self.large_bodies)
        try:
            principal, region = self._verified(scope, headers, body, self._current(signer, headers))
        except errors.KmsError as error:
            self._unauthenticated(scope, headers, error)
            raise
        operation = _operation(headers.get("x-amz-target", ""), self.service)
        context = CallContext(
            principal=principal, region=region, request_id=request_id,
            source_ip=caller_address(scope),
            user_agent=_as_written(headers.get("user-agent", ""))[:1024],
            secure_transport=scope.get("scheme") == "https",
            tls_details=_tls_details(scope, headers),
            organizations=self.credentials.organizations,
        )
        try:
            params = decode_request(operation, _parse_json(body))
        except errors.KmsError as error:
            await self.service.record_rejected(operation, context, error)
            raise
        return await self.service.execute(operation, context, params)

    def _unauthenticated(self, scope: Scope, headers: dict[str, str], error: errors.KmsError) -> None:
        """Count and log (thinned) a request refused before it was authenticated."""
        self.refused.refused(error, caller_address(scope), headers.get("authorization"))

    def _signer(self, headers: dict[str, str]) -> _Signer:
        return self._signed_by(parse_authorization(headers.get("authorization")), headers)

    def _signed_by(self, signed: SignedRequest, headers: dict[str, str], amz_date: str | None = None) -> _Signer:
        """The credential `signed` names, as the principals file has it now; `amz_date`: what
        `check_signed_headers` found in these headers already, if it was asked."""
        generation = self.credentials.generation
        credential = self.credentials.lookup(signed.access_key_id)
        if credential is None:
            raise UnrecognizedClientException("The security token included in the request is invalid.")
        if not self.credentials.verifies_signatures(signed.access_key_id):
            return _Signer(signed, credential, None, generation)
        return _Signer(signed, credential, amz_date or check_signed_headers(signed, headers, utc_now()), generation)

    def _current(self, signer: _Signer, headers: dict[str, str]) -> _Signer:
        """`signer` as the principals file has it once the body is in. A reload (SIGHUP) while the
        body arrived (up to 60 s) applies to the request as to a fresh one: an access key removed is
        unknown, a secret changed checks the signature, policies changed decide. The headers are
        not checked again: their time was in the window when they came."""
        if signer.generation == self.credentials.generation:
            return signer
        return self._signed_by(signer.signed, headers, signer.amz_date)

    def _verified(self, scope: Scope, headers: dict[str, str], body: bytes, signer: _Signer) -> tuple[Principal, str]:
        signed = signer.signed
        if signer.amz_date is not None:
            check_signature(
                signed, signer.credential.signing_keys, signer.amz_date, method=scope["method"],
                path=scope.get("raw_path", b"/").decode(), query=scope.get("query_string", b"").decode(),
                headers=headers, body=body,
            )
        # IAM identities live in one partition; the caller acts in the partition of the Region it
        # signed for, so its ARNs (key policies, grants, audit records) read `arn:aws-cn:…` there.
        return signer.credential.principal.in_partition(partition_of(signed.region)), signed.region

    # --- development clock -------------------------------------------------------------------

    def _clock_allowed(self, scope: Scope) -> bool:
        client = (scope.get("client") or ("",))[0]
        return self.settings.dev_clock is not None and is_loopback(client)

    async def _advance_clock(self, scope: Scope, receive: Receive, send: Send) -> None:
        clock = self.settings.dev_clock
        assert clock is not None
        # A page may POST here unasked (no preflight for a text/plain body): any site the developer
        # opened could move the clock, and so complete pending key deletions.
        if cors.from_a_page(scope["headers"]):
            await _respond(send, 403, _ADVANCE_FROM_A_PAGE, b"application/json")
            return
        try:
            request = orjson.loads(await _read_body(receive, 4096) or b"{}")
            seconds = request["seconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= _MAX_ADVANCE:
                raise ValueError
        except _ClientGone:
            return
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, _Unread):
            await _respond(send, 400, _ADVANCE_REFUSED, b"application/json")
            return
        try:
            now = clock.advance(float(seconds))
        except OverflowError:  # moved often enough, even 100 years at a time reach the calendar's end
            message = b'{"__type":"ValidationException","message":"The clock cannot move past the year 9999"}'
            await _respond(send, 400, message, b"application/json")
            return
        moved_to = now.isoformat().replace("+00:00", "Z")
        try:
            if self.settings.on_clock_advanced:
                await self.settings.on_clock_advanced()
        except errors.KmsError as exc:
            await _respond(send, exc.status, _due_work_failed(moved_to, exc), b"application/json")
            return
        await _respond(send, 200, orjson.dumps({"now": moved_to}), b"application/json")

    # --- lifespan ----------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self.settings.startup:
                        await hook()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for hook in self.settings.shutdown:
                    try:
                        await hook()
                    except Exception:
                        log.exception("shutdown hook failed")
                await send({"type": "lifespan.shutdown.complete"})
                return


def _operation(target: str, service: KmsService) -> str:
    name = target.removeprefix(_TARGET_PREFIX)
    if not target.startswith(_TARGET_PREFIX) or name not in operation_names() or name not in service.operations:
        # Named as its client wrote it: the header's bytes were read as Latin-1 (see `_as_written`).
        raise errors.UnknownOperationException(f"The operation {_as_written(target)!r} is not supported.")
    return name


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.SerializationException("The request body is not valid JSON.") from None


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def _as_written(value: str) -> str:
    """A header value as its client wrote it, for the audit record: its bytes (read as Latin-1
    characters, which the signature check needs) decoded as UTF-8 when they are UTF-8, as the Go,
    Java and Rust SDKs and curl send non-ASCII text, else as read (botocore's http.client sends
    Latin-1). Read as Latin-1 alone, a User-Agent of `café` was recorded as `cafÃ©`."""
    if value.isascii():  # every SDK's own User-Agent: no copy
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return value


def _tls_details(scope: Scope, headers: dict[str, str]) -> dict[str, str] | None:
    """CloudTrail's tlsDetails: the version and cipher suite the connection negotiated (named
    only when the HTTP protocol reports them, never guessed) and the Host header sent."""
    if scope.get("scheme") != "https":
        return None
    session = scope.get("extensions", {}).get(TLS_EXTENSION, {})
    return {**session, "clientProvidedHostHeader": _as_written(headers.get("host", ""))}


async def _read_body(receive: Receive, limit: int, large: _LargeBodies | None = None) -> bytes:
    """The request body, refused beyond `limit` bytes, and while it arrives past its first
    SMALL_BODY_BYTES when `large` bodies hold too much already; _ClientGone if the client
    disconnects before its end."""
    chunks, size, held = [], 0, 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _Unread(_body_too_large(limit), "body_too_large")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
            if large is not None and size > SMALL_BODY_BYTES:
                try:
                    large.take(size - SMALL_BODY_BYTES - held)
                except errors.KmsError as error:  # counted: refused before its signature, it has no audit record
                    raise _Unread(error, "large_bodies_throttled") from None
                held = size - SMALL_BODY_BYTES
    finally:
        if large is not None and held:
            large.release(held)
    return b"".join(chunks)


def _due_work_failed(moved_to: str, exc: errors.KmsError) -> bytes:
    """The answer to a dev-clock advance whose due work the key store or the audit spool refused
    (a PostgreSQL store out of reach): the clock did move, so the answer names the new time, and
    says how to run the work without moving it again. It was a bare 500 and a traceback in the
    log, and a client that retried it moved the clock a second time. Logged in one line, as the
    scheduler logs the refusals of its ticks."""
    log.warning("the dev clock moved to %s, but the work it made due did not run: %s", moved_to, exc.message)
    message = (f"The clock moved to {moved_to}, but the work it made due did not run ({exc.message}). "
               "The scheduler runs it at its next tick; advance by 0 seconds to run it now.")
    return orjson.dumps({"__type": exc.code, "message": message, "now": moved_to})


def _body_too_large(limit: int) -> _BodyTooLarge:
    return _BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _not_allowed(method: str, path: str, send: Send) -> None:
    """405 naming the methods of a read-only endpoint (RFC 9110 §15.5.6), as `consume` and `detect`
    answer at their /metrics: a 404 said the path was missing."""
    body = orjson.dumps({"message": f"{method} {path} is not allowed: it answers GET and HEAD"})
    await _respond(send, 405, body, b"application/json", [(b"allow", b"GET, HEAD")])
