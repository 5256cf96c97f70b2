"""`GET /metrics` for a process that serves nothing else (`keytrail detect --kafka --metrics-port`,
`keytrail consume --metrics-port`): the HTTP server `serve` runs (uvicorn), the alarm counter family
`serve`'s /metrics exports."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

import uvicorn

from keytrail.cli.listening import bound_socket, host_port, listen_problem
from keytrail.detect.severity import Severity
from keytrail.pipeline.prometheus import CONTENT_TYPE, render_family

__all__ = ["metrics_endpoint", "metrics_socket", "render_alarm_counts", "render_detector_lag", "render_readers_held"]

Send = Callable[[dict[str, Any]], Any]
_READS = ("GET", "HEAD")  # the methods /metrics answers


def render_alarm_counts(counts: Mapping[tuple[str, str], int], rules: Iterable[str] = ()) -> str:
    """`keytrail_alarms_total{rule, severity}`: `counts` by (rule, severity), and a zero for each
    severity of `rules` not counted yet: a series first seen at 1 is no increase to Prometheus's
    increase(), so the first alarm of each kind would never show on the dashboards."""
    every = {(rule, severity.value): 0 for rule in rules for severity in Severity} | dict(counts)
    return render_family("keytrail_alarms_total", "counter", "Alarms raised or escalated by the detector.",
                         (({"rule": r, "severity": s}, n) for (r, s), n in sorted(every.items())))


def render_detector_lag(lag: Mapping[str, int]) -> str:
    """`keytrail_detector_lag{partition}`: the events the detector has not judged yet, as
    `keytrail_pipeline_consumer_lag` counts the consumer's: its alarms are that far behind."""
    return render_family("keytrail_detector_lag", "gauge", "Events not yet judged by the detector, per partition.",
                         (({"partition": partition}, n) for partition, n in sorted(lag.items())))


def render_readers_held(held: Mapping[str, int | None]) -> str:
    """`keytrail_event_log_reader_held{reader}`: 1 while a reader of the embedded event log is held
    in front of a record it cannot read (`held`: reader → the offset, or None), 0 while it reads.
    Its lag grows meanwhile, but on a quiet node never to the lag alerts' threshold."""
    return render_family("keytrail_event_log_reader_held", "gauge",
                         "1 while this reader of the event log is held at a record it cannot read (a damaged "
                         "record, a segment deleted between two); its log line names it.",
                         (({"reader": reader}, int(offset is not None)) for reader, offset in sorted(held.items())))


def metrics_socket(host: str, port: int) -> socket.socket:
    """`bound_socket` for `--metrics-host`/`--metrics-port`, made before anything starts; ValueError
    with the command's one-line complaint when it cannot be bound (a port in use, an unknown host:
    socket.gaierror is an OSError; a host that is no valid name)."""
    try:
        return bound_socket(host, port)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"--metrics-port: cannot listen on {host_port(host, port)} ({listen_problem(exc)})") from None


class _Exposition:
    """The ASGI app: `render()` at GET /metrics (HEAD too), 405 for its other methods, 404 elsewhere."""

    def __init__(self, render: Callable[[], str]) -> None:
        self._render = render

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return
        extra: list[tuple[bytes, bytes]] = []
        if scope["path"] != "/metrics":
            status, body, kind = 404, b'{"message":"Not Found"}', b"application/json"
        # HEAD as GET (RFC 9110 §9.3.2; uvicorn sends no body), as serve answers it: uptime checkers and
        # load balancers probe with HEAD, and a 404 told them the endpoint was missing.
        elif scope["method"] in _READS:
            status, body, kind = 200, self._render().encode(), CONTENT_TYPE.encode()
        else:
            status, body, kind = 405, b'{"message":"Method Not Allowed"}', b"application/json"
            extra = [(b"allow", ", ".join(_READS).encode())]
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the command's own handlers stop it (and uvicorn
    would raise the signal again once it stopped)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def metrics_endpoint(sock: socket.socket, render: Callable[[], str]) -> AsyncIterator[None]:
    """Serve `render()` at GET /metrics on `sock` for the duration of the block."""
    config = uvicorn.Config(_Exposition(render), lifespan="off", log_level="warning", log_config=None,
                            access_log=False, server_header=False, timeout_graceful_shutdown=2)
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if serving.done():  # it could not start: say why now, not once the command ends
        sock.close()
        serving.result()
    try:
        yield
    finally:
        server.should_exit = True
        await serving
        sock.close()
