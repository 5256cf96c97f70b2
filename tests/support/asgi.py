"""One KMS call served straight by an ASGI app (no server, no network): what the app sent back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.model import CallRecord

__all__ = ["AllowAndRecord", "post_kms", "whole_body"]

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def post_kms(
    app: App, operation: str, messages: list[dict[str, Any]], authorization: bytes
) -> list[dict[str, Any]]:
    """Serve one `POST /` of `operation` whose body arrives as the ASGI `messages`, under the
    `Authorization` header given (dated 2026-01-01); the messages the app sent back."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"x-amz-target", f"TrentService.{operation}".encode()), (b"authorization", authorization),
               (b"x-amz-date", b"20260101T000000Z")]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "client": ("127.0.0.1", 5000)}
    await app(scope, receive, send)
    return sent


async def whole_body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes | None:
    """A request's whole body from the ASGI `receive`, or None when the client left before its end."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message["body"]
        if not message.get("more_body"):
            return body


class AllowAndRecord:
    """Allows every call; as audit sink, keeps every record."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def authorize(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(Verdict.ALLOW)

    async def record(self, call: CallRecord) -> None:
        self.records.append(call)
