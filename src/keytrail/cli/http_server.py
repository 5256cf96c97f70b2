"""`keytrail serve`'s HTTP server: uvicorn over the node's app, stopping as the contract says.

Apart from serve.py so that uvicorn (and the node) load when serve runs, not with its --help.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from keytrail.api.http_protocol import CoalescingHttpToolsProtocol
from keytrail.config import ServeSettings

__all__ = ["serve_http"]


async def serve_http(app: Any, settings: ServeSettings, tls: dict[str, str], sockets: list[socket.socket]) -> bool:
    """Serve `app` on `sockets` (listening on the settings' address) until SIGTERM/SIGINT; False if
    it never started."""
    # The caller's address goes into every audit record and into aws:SourceIp conditions, so it is
    # the connection's, unless the operator names the proxies trusted to report another (uvicorn's
    # FORWARDED_ALLOW_IPS). uvicorn's own default trusts X-Forwarded-For from 127.0.0.1: any local
    # client could then write whatever source address it liked into the audit trail.
    proxies = os.environ.get("FORWARDED_ALLOW_IPS") or None
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on", log_level="warning",
        access_log=False, timeout_graceful_shutdown=20, server_header=False, http=CoalescingHttpToolsProtocol,
        proxy_headers=proxies is not None, forwarded_allow_ips=proxies,
        **tls,  # type: ignore[arg-type]
    )
    server = _Server(config)
    await server.serve(sockets=sockets)
    return bool(server.started)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die by the
    signal; keytrail's contract is: finish in-flight calls, flush, exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._request_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _request_exit(self, signum: int, frame: FrameType | None) -> None:
        self.should_exit = True
