"""keytrail with N server worker processes, for the scale benchmark.

`keytrail serve` runs one process. This is the smallest launcher that runs N of them behind one
listening socket: uvicorn's own supervisor (`--workers N --factory`) forks N processes, and each
builds a node exactly as `serve` does (`keytrail.cli.node.build_node`). The embedded SQLite store
has a single writer and the audit spool is per node, so each worker claims its own copy of the
data dir (same root key, same keys): right for the read-only Encrypt load measured here; a real
multi-worker serve needs a shared store (PostgreSQL) or one writer process.
"""

from __future__ import annotations

import fcntl
import inspect
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from bench.procs import SERVE_HTTP_PROTOCOL

__all__ = ["make_app", "worker_command", "worker_data_dirs"]

_ENV = "KEYTRAIL_BENCH_NODE"
_held: list[Any] = []  # the claimed data dir's lock file, held open for the worker's lifetime


def worker_data_dirs(data_dir: Path, workers: int) -> list[Path]:
    """One copy of `data_dir` per worker (the key store and root key; no audit or event data)."""
    copies = []
    for index in range(workers):
        copy = data_dir.with_name(f"{data_dir.name}-w{index}")
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir(parents=True)
        for item in data_dir.iterdir():
            if item.is_file() and (item.name.startswith("keys.db") or item.name == "root.key"):
                shutil.copy2(item, copy / item.name)
        copies.append(copy)
    return copies


def worker_command(data_dir: Path, port: int, principals: Path, kafka: str | None,
                   workers: int) -> tuple[list[str], dict[str, str]]:
    """The uvicorn command line and environment that run `workers` keytrail nodes on `port`."""
    dirs = worker_data_dirs(data_dir, workers)
    spec = {"data_dirs": [str(d) for d in dirs], "principals": str(principals), "kafka": kafka}
    args = [sys.executable, "-m", "uvicorn", "bench.workers:make_app", "--factory", "--workers", str(workers),
            "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
            "--http", SERVE_HTTP_PROTOCOL,
            "--lifespan", "on", "--no-access-log", "--log-level", "warning", "--no-server-header",
            "--no-proxy-headers"]  # as serve runs it (cli/serve.py)
    return args, {_ENV: json.dumps(spec)}


def _claim(dirs: list[str]) -> Path:
    for name in dirs:
        handle = Path(name, ".worker.lock").open("w")  # noqa: SIM115 (held open while the worker lives)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held.append(handle)
        return Path(name)
    raise RuntimeError("every worker data dir is taken")


class _NodeApp:
    """Builds the node inside the worker's event loop (build_node is async: the resources it makes
    belong to the loop that serves), on the first ASGI event, which is the lifespan startup."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.app is None:
            from keytrail.api.credentials import CredentialStore
            from keytrail.cli.node import build_node

            node = build_node(self.settings, CredentialStore(self.settings.principals))
            self.app = (await node if inspect.isawaitable(node) else node).app
        await self.app(scope, receive, send)


def make_app() -> Any:
    """uvicorn factory: this worker's node, built as `keytrail serve` builds it."""
    from keytrail.config import ServeSettings

    spec = json.loads(os.environ[_ENV])
    return _NodeApp(ServeSettings(data_dir=_claim(spec["data_dirs"]), principals=Path(spec["principals"]),
                                  kafka=spec["kafka"], audit=os.environ.get("KEYTRAIL_AUDIT", "on") != "off"))
