"""`keytrail serve`'s HTTP server: uvicorn over the node's app, stopping as the contract says.

Apart from serve.py so that uvicorn (and the node) load when serve runs, not with its --help.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from keytrail.api.http_protocol import ClientNoiseFilter, CoalescingHttpToolsProtocol, connection_limit
from keytrail.api.tls_handshake import TlsHandshake
from keytrail.cli.health import Drain
from keytrail.config import PROXIES_ENV, ServeSettings

__all__ = ["HttpServer"]

log = logging.getLogger("keytrail")


class HttpServer:
    """uvicorn over the node's app. The node's start and stop are not uvicorn's (no ASGI lifespan):
    serve runs them around `serve`, so a failed start is reported in keytrail's words, not as
    uvicorn's traceback and exit status 3. SIGTERM/SIGINT are caught from `stop_requests` on."""

    def __init__(self, app: Any, settings: ServeSettings, tls: dict[str, str],
                 refusals: Counter[str] | None = None, drain: Drain | None = None) -> None:
        """`refusals` counts the connections closed before a request on them was served, and the
        requests the protocol refused itself, by reason (REFUSAL_REASONS, REQUEST_REFUSAL_REASONS),
        for /metrics. `drain` is marked begun as a stop's drain (settings.drain_seconds) begins."""
        # The caller's address goes into every audit record and into aws:SourceIp conditions, so it
        # is the connection's, unless the operator names the proxies trusted to report another
        # (uvicorn's FORWARDED_ALLOW_IPS). uvicorn's own default trusts X-Forwarded-For from
        # 127.0.0.1: any local client could then write whatever source address it liked into the trail.
        proxies = os.environ.get(PROXIES_ENV) or None
        self._protocol = CoalescingHttpToolsProtocol.limited_to(connection_limit())
        if settings.audit:  # answers wait on their group commit: see the protocol's module docstring
            self._protocol = self._protocol.answering_at_once()
        if refusals is not None:
            self._protocol = self._protocol.counting_refusals(refusals)
        config = uvicorn.Config(
            app, host=settings.host, port=settings.port, lifespan="off", log_level="warning",
            access_log=False, timeout_graceful_shutdown=20, server_header=False, http=self._protocol,
            proxy_headers=proxies is not None, forwarded_allow_ips=proxies,
            **tls,  # type: ignore[arg-type]
        )
        ClientNoiseFilter.attach(logging.getLogger("uvicorn.error"))  # after Config: it sets up the loggers
        self._server = _Server(config, settings.drain_seconds, drain or Drain())

    def load(self) -> None:
        """Load uvicorn's settings, the TLS context among them, so that a failure comes before the
        node starts (OSError, ssl.SSLError: a TLS file replaced since serve checked it)."""
        config = self._server.config
        if config.loaded:
            return
        config.load()
        if config.ssl is not None:
            # uvicorn would serve TLS by asyncio's TLS server, whose connections reach the protocol,
            # and are counted against the bound, only once their handshake is over: the server
            # accepts plain TCP instead, and TlsHandshake makes the handshake of each connection
            # it counts from its accept.
            config.http_protocol_class = TlsHandshake.serving(self._protocol, config.ssl)
            config.ssl = None

    @property
    def stop_requested(self) -> bool:
        return bool(self._server.should_exit)

    def request_stop(self) -> None:
        """Stop as SIGTERM would: at once if not serving yet."""
        self._server.should_exit = True

    def stop_requests(self) -> contextlib.AbstractContextManager[None]:
        """SIGTERM and SIGINT ask the server to stop, also while the node starts: it then stops as
        soon as it has started, by the contract's SIGTERM (flush, exit 0), not killed half-started."""
        return self._server.capture_signals()

    async def serve(self, sockets: list[socket.socket]) -> None:
        """Serve on `sockets` (listening on the settings' address) until SIGTERM/SIGINT, after
        in-flight calls finish; at once if a stop was asked for already."""
        if not self.stop_requested:
            self.load()
            await self._server.serve(sockets=sockets)


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die by the
    signal; keytrail's contract is: finish in-flight calls, flush, exit 0. With `drain_seconds`, the
    first SIGTERM or SIGINT drains first: for that long calls are still served, the health check
    answers 503 "draining" and every answer closes its connection (a client or proxy holding it
    open would send on to this node), so that load balancers take the node out before it stops
    accepting; a second signal ends the drain at once."""

    def __init__(self, config: uvicorn.Config, drain_seconds: float, drain: Drain) -> None:
        super().__init__(config)
        self._drain_seconds, self._drain = drain_seconds, drain
        self._drain_ends: float | None = None  # time.monotonic() at which the drain gives way to the stop

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._request_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _request_exit(self, signum: int, frame: FrameType | None) -> None:
        if self._drain_seconds and self._drain_ends is None and self.started:
            # The drain begins at the next tick: a signal handler runs between any two bytecodes.
            self._drain_ends = time.monotonic() + self._drain_seconds
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick (every 0.1 s), which stops the server once `should_exit` is set: the
        drain's end sets it, and each tick of the drain has the answers close their connections."""
        if self._drain_ends is not None and time.monotonic() >= self._drain_ends:
            self.should_exit = True
        stop = await super().on_tick(counter)  # renews default_headers each second
        if self._drain_ends is not None:
            self._begin_drain()
            if _CLOSE not in self.server_state.default_headers:
                self.server_state.default_headers = [*self.server_state.default_headers, _CLOSE]
        return stop

    def _begin_drain(self) -> None:
        """The health check fails from the moment answers close their connections; said once."""
        if not self._drain.began:
            self._drain.began = True
            log.warning("stopping: serving calls for %g s more while /_keytrail/health answers 503 \"draining\", so "
                        "that load balancers take this node out; SIGTERM again to stop at once", self._drain_seconds)


# Sent with every answer while the node drains: uvicorn then closes the connection after the answer.
_CLOSE = (b"connection", b"close")
