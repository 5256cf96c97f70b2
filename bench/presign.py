"""Pre-signed KMS requests for the load generators: raw HTTP/1.1 text, SigV4-signed by botocore.

A signature is accepted for 5 minutes, so the harness signs right before every run. The request
file holds one or more requests, each followed by `SEPARATOR` (bench/kms.lua splits on it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

__all__ = ["SEPARATOR", "Signer", "read_requests", "write_requests"]

SEPARATOR = b"\n--KEYTRAIL-REQUEST--\n"
_JSON = "application/x-amz-json-1.1"


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs KMS JSON 1.1 calls for one endpoint and one access key."""

    endpoint: str  # http://127.0.0.1:PORT: the Host header is signed, so it must match the wrk URL
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def raw(self, operation: str, params: Mapping[str, Any]) -> bytes:
        """The complete request (head and body) as the server will receive it."""
        body = json.dumps(params, separators=(",", ":")).encode()
        request = AWSRequest(method="POST", url=self.endpoint + "/", data=body, headers={
            "Content-Type": _JSON, "X-Amz-Target": f"TrentService.{operation}",
        })
        credentials = Credentials(self.access_key_id, self.secret_access_key)
        SigV4Auth(credentials, "kms", self.region).add_auth(request)
        host = self.endpoint.split("://", 1)[1].rstrip("/")
        head = ["POST / HTTP/1.1", f"Host: {host}", "User-Agent: keytrail-bench",
                f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in request.headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def write_requests(path: Path, requests: Iterable[bytes]) -> Path:
    """Write the request file that bench/kms.lua and bench/openloop.py replay."""
    data = b"".join(raw + SEPARATOR for raw in requests)
    if not data:
        raise ValueError("no requests to write")
    path.write_bytes(data)
    return path


def read_requests(path: Path) -> list[bytes]:
    """The requests of a file written by `write_requests`."""
    return [part for part in path.read_bytes().split(SEPARATOR) if part]
