"""Where an Encrypt call spends its time inside keytrail (no HTTP server, no network).

Builds a node exactly as `keytrail serve` does, drives its ASGI app with pre-signed requests, and
reports the time per call and a pyinstrument breakdown by stage (SigV4, validation, authorization,
crypto, audit, response). The server stack's own cost (uvicorn, httptools) is the ceiling row of
the HTTP table. Usage: python -m bench.profile_encrypt [--calls 3000] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyinstrument import Profiler

from bench.fixtures import APP, KEY_POLICY, OWNER, operation_params, write_principals
from bench.presign import Signer

__all__ = ["STAGES", "profile_encrypt"]

_ENDPOINT = "http://127.0.0.1:4599"
# stage -> (function name, path fragment of its module); inclusive time, first match on each path
STAGES = {
    "whole app (share base)": ("__call__", "api/app.py"),
    "SigV4 verify": ("_authenticate", "api/app.py"),
    "JSON parse + validation": ("decode_request", "api/protocol.py"),
    "find key": ("find_key", "kms/service.py"),
    "authorization": ("authorize", "kms/service.py"),
    "AES-GCM + ciphertext format": ("encrypt", "kms/cipher.py"),
    "audit record (durable)": ("_report", "kms/service.py"),
    "response JSON": ("_respond", "api/app.py"),
    "request id (uuid4)": ("uuid4", "uuid.py"),
}


def _scope(raw: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ")
    headers = [(name.strip().lower(), value.strip()) for name, _, value in (line.partition(b":") for line in lines[1:])]
    return {"type": "http", "http_version": "1.1", "method": method.decode(), "path": path.decode(),
            "raw_path": path, "query_string": b"", "headers": headers, "scheme": "http",
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 4599)}, body


async def _call(app: Any, raw: bytes) -> tuple[int, bytes]:
    scope, body = _scope(raw)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"]


async def _lifespan(app: Any) -> tuple[asyncio.Queue[dict[str, Any]], asyncio.Task[None]]:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()

    task = asyncio.create_task(app({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    await started.wait()
    return inbox, task


def _walk(frame: Any) -> Iterator[Any]:
    yield frame
    for child in frame.children:
        yield from _walk(child)


def _stage_seconds(root: Any, function: str, fragment: str) -> float:
    total, todo = 0.0, [root]
    while todo:
        frame = todo.pop()
        if frame.function == function and fragment in (frame.file_path or ""):
            total += frame.time
        else:
            todo.extend(frame.children)
    return total


async def _encrypt_request(app: Any) -> bytes:
    """Create the benchmark key through the app; a pre-signed Encrypt under it, checked once."""
    owner, user = Signer(_ENDPOINT, OWNER[1], OWNER[2]), Signer(_ENDPOINT, APP[1], APP[2])
    status, body = await _call(app, owner.raw("CreateKey", {"Policy": json.dumps(KEY_POLICY)}))
    if status != 200:
        raise RuntimeError(f"CreateKey answered {status}: {body[:300]!r}")
    raw = user.raw(*operation_params("Encrypt", json.loads(body)["KeyMetadata"]["Arn"], b""))
    for _ in range(300):  # warm every cache the first calls fill
        status, body = await _call(app, raw)
        if status != 200:
            raise RuntimeError(f"Encrypt answered {status}: {body[:300]!r}")
    return raw


async def _timed_and_profiled(app: Any, raw: bytes, calls: int) -> tuple[float, float, Profiler]:
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await _call(app, raw)
    # CPU time: other tenants of a shared machine stretch wall time, not this process's CPU.
    per_call, wall = (time.process_time() - cpu_start) / calls, (time.perf_counter() - start) / calls
    profiler = Profiler(interval=0.0002, async_mode="enabled")
    profiler.start()
    for _ in range(calls):
        await _call(app, raw)
    profiler.stop()
    return per_call, wall, profiler


async def profile_encrypt(calls: int) -> dict[str, Any]:
    """CPU and wall time per in-process Encrypt, and each stage's share of it."""
    from keytrail.api.credentials import CredentialStore
    from keytrail.cli.node import build_node
    from keytrail.config import ServeSettings

    with tempfile.TemporaryDirectory(prefix="keytrail-profile-") as tmp:
        principals = write_principals(Path(tmp) / "principals.toml")
        settings = ServeSettings(data_dir=Path(tmp) / "data", principals=principals)
        settings.data_dir.mkdir()
        app = build_node(settings, CredentialStore(principals)).app
        inbox, lifespan = await _lifespan(app)
        try:
            per_call, wall, profiler = await _timed_and_profiled(app, await _encrypt_request(app), calls)
        finally:
            await inbox.put({"type": "lifespan.shutdown"})
            await lifespan
    session = profiler.last_session
    seconds = {name: _stage_seconds(session.root_frame(), *where) for name, where in STAGES.items()} if session else {}
    base = seconds.pop("whole app (share base)", 0.0) or 1.0
    # The profiler slows everything down; shares of the app's profiled time, applied to the
    # unprofiled CPU time per call, estimate each stage's real cost.
    stages = {name: {"share": value / base, "us": value / base * per_call * 1e6} for name, value in seconds.items()}
    return {"calls": calls, "us_per_call": per_call * 1e6, "wall_us_per_call": wall * 1e6, "stages": stages,
            "tree": profiler.output_text(unicode=False, color=False, show_all=False)[:6000]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(profile_encrypt(args.calls))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text if not args.out else result["tree"])


if __name__ == "__main__":
    main()
