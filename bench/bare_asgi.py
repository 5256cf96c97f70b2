"""The ceiling: the least work a Python KMS-style HTTP service can do on this server stack.

Reads the whole body, parses it as JSON (orjson) and answers a fixed JSON 1.1 body with a request
id header, like keytrail's front end does before any KMS work. Served by uvicorn with uvloop and
httptools with one write per answer, exactly as `keytrail serve` configures it:

    python -m uvicorn bench.bare_asgi:app --loop uvloop \
        --http keytrail.api.http_protocol:CoalescingHttpToolsProtocol --no-access-log --no-proxy-headers
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

__all__ = ["app"]

_BODY = orjson.dumps({"KeyId": "arn:aws:kms:us-east-1:111122223333:key/bare", "CiphertextBlob": "AAAA",
                      "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
_HEADERS = [(b"content-type", b"application/x-amz-json-1.1"), (b"content-length", str(len(_BODY)).encode()),
            (b"x-amzn-requestid", b"00000000-0000-0000-0000-000000000000")]


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """Parse the JSON body, answer fixed JSON."""
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    if body:
        orjson.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
