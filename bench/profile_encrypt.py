"""Where Encrypt calls spend their time inside keytrail (no HTTP server, no network).

Builds a node exactly as `keytrail serve` does (audit trail and Kafka shipper in process; the
consumer and detector children it starts run outside this profile),
drives its ASGI app with pre-signed Encrypt requests from 16 concurrent callers (like wrk's 16
connections, so the audit spool's group commit shares fsyncs as it does under load), and reports
CPU per call and a pyinstrument breakdown of the event-loop thread: the call's stages (SigV4,
validation, authorization, crypto, audit record, answer) and the node's background work
(spool writer, shipper). The server stack's own cost (uvicorn, httptools) is the
ceiling row of the HTTP table. Usage: python -m bench.profile_encrypt [--calls 4000] [--out FILE] [--kafka B]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pyinstrument import Profiler

from bench.fixtures import APP, KEY_POLICY, OWNER, operation_params, write_principals
from bench.presign import Signer

__all__ = ["STAGES", "profile_encrypt"]

_ENDPOINT = "http://127.0.0.1:4599"
_CALLERS = 16
# stage of a KMS call -> (function name, path fragment of its module); inclusive, first match per path
STAGES = {
    "SigV4 header checks": ("_signer", "api/app.py"),
    "SigV4 verify": ("_verified", "api/app.py"),
    "JSON parse + validation": ("decode_request", "api/protocol.py"),
    "find key": ("find_key", "kms/service.py"),
    "authorization": ("authorize", "kms/service.py"),
    "AES-GCM + ciphertext format": ("encrypt", "kms/cipher.py"),
    "audit record (durable)": ("_report", "kms/service.py"),
    "response JSON": ("_respond", "api/app.py"),
    "request and event ids": ("__call__", "kms/uuids.py"),
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


_APP = ("__call__", "api/app.py")
_IDLE = ("select", "selectors.py")  # the loop waiting: for fsyncs, for the broker, for nothing
_TASK = ("_run", "asyncio/events.py")  # Handle._run: its children are what each loop step runs


def _is(frame: Any, where: tuple[str, str]) -> bool:
    return bool(frame.function == where[0] and where[1] in (frame.file_path or ""))


def _stage_seconds(root: Any, where: tuple[str, str]) -> float:
    total, todo = 0.0, [root]
    while todo:
        frame = todo.pop()
        if _is(frame, where):
            total += frame.time
        else:
            todo.extend(frame.children)
    return total


def _short(path: str | None) -> str:
    path = path or "?"
    return path.split("keytrail/", 1)[1] if "keytrail/" in path else path.rsplit("/", 1)[-1]


def _background_seconds(root: Any) -> dict[str, float]:
    """Loop time of the node's own tasks (spool writer, consumers, detector, shipper), by the
    task's top function: everything the loop runs that is not one of the calls."""
    seconds: dict[str, float] = {}
    todo = [root]
    while todo:
        frame = todo.pop()
        if not _is(frame, _TASK):
            todo.extend(frame.children)
            continue
        for task in frame.children:
            if _stage_seconds(task, _APP) == 0.0 and task.function != "[self]":
                name = f"background: {task.function} ({_short(task.file_path)})"
                seconds[name] = seconds.get(name, 0.0) + task.time
    return dict(sorted(seconds.items(), key=lambda item: -item[1])[:6])


def _stages(root: Any, cpu_per_call: float) -> dict[str, dict[str, float]]:
    """Each stage's share of the loop thread's busy time, and that share of the CPU per call."""
    seconds = {name: _stage_seconds(root, where) for name, where in STAGES.items()}
    seconds["whole KMS call (sum of its stages and the rest)"] = _stage_seconds(root, _APP)
    seconds.update(_background_seconds(root))
    busy = (root.time - _stage_seconds(root, _IDLE)) or 1.0
    # The profiler slows everything down; shares of profiled time, applied to the unprofiled
    # CPU per call, estimate each stage's real cost.
    return {name: {"share": value / busy, "us": value / busy * cpu_per_call * 1e6} for name, value in seconds.items()}


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


async def _concurrently(app: Any, raw: bytes, calls: int) -> None:
    async def caller() -> None:
        for _ in range(calls // _CALLERS):
            await _call(app, raw)
    await asyncio.gather(*(caller() for _ in range(_CALLERS)))


async def _timed_and_profiled(app: Any, raw: bytes, calls: int) -> tuple[float, float, Profiler]:
    start, cpu_start = time.perf_counter(), time.process_time()
    await _concurrently(app, raw, calls)
    # CPU time (all threads): other tenants of a shared machine stretch wall time, not this CPU.
    per_call, wall = (time.process_time() - cpu_start) / calls, (time.perf_counter() - start) / calls
    profiler = Profiler(interval=0.0002, async_mode="disabled")  # samples whatever the loop runs
    profiler.start()
    await _concurrently(app, raw, calls)
    profiler.stop()
    return per_call, wall, profiler


async def profile_encrypt(calls: int, kafka: str | None = None) -> dict[str, Any]:
    """CPU and wall time per in-process Encrypt, and each stage's share of it."""
    from keytrail.api.credentials import CredentialStore
    from keytrail.cli.node import build_node
    from keytrail.config import ServeSettings

    with tempfile.TemporaryDirectory(prefix="keytrail-profile-") as tmp:
        principals = write_principals(Path(tmp) / "principals.toml")
        settings = ServeSettings(data_dir=Path(tmp) / "data", principals=principals, kafka=kafka)
        settings.data_dir.mkdir()
        node = build_node(settings, CredentialStore(principals))
        app = (await node if inspect.isawaitable(node) else node).app
        inbox, lifespan = await _lifespan(app)
        try:
            per_call, wall, profiler = await _timed_and_profiled(app, await _encrypt_request(app), calls)
        finally:
            await inbox.put({"type": "lifespan.shutdown"})
            await lifespan
    session = profiler.last_session
    stages = _stages(session.root_frame(), per_call) if session else {}
    return {"calls": calls, "us_per_call": per_call * 1e6, "wall_us_per_call": wall * 1e6, "stages": stages,
            "tree": profiler.output_text(unicode=False, color=False, show_all=False)[:6000]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--kafka", help="bootstrap address: ship the audit trail as `serve --kafka` does")
    args = parser.parse_args()
    result = asyncio.run(profile_encrypt(args.calls, args.kafka))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text if not args.out else result["tree"])


if __name__ == "__main__":
    main()
