"""The /metrics endpoint of `consume --metrics-port` and `detect --metrics-port`: HEAD and other methods."""

from __future__ import annotations

import asyncio
import http.client

import pytest

from keytrail.cli.metrics_endpoint import metrics_endpoint, metrics_socket
from keytrail.pipeline.prometheus import CONTENT_TYPE

BODY = "# TYPE keytrail_up gauge\nkeytrail_up 1\n"


def _ask(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, {name.lower(): value for name, value in answer.getheaders()}, answer.read()
    finally:
        connection.close()


async def _answers(*requests: tuple[str, str]) -> list[tuple[int, dict[str, str], bytes]]:
    sock = metrics_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    async with metrics_endpoint(sock, lambda: BODY):
        return [await asyncio.to_thread(_ask, port, method, path) for method, path in requests]


async def test_head_metrics_answers_as_get_without_a_body() -> None:
    """A HEAD probe (uptime checkers, load balancers) got 404 from the path GET serves, as serve answers it."""
    (head_status, head, head_body), (get_status, get, get_body) = await _answers(("HEAD", "/metrics"),
                                                                                 ("GET", "/metrics"))
    assert (get_status, get["content-type"], get_body) == (200, CONTENT_TYPE, BODY.encode())
    assert (head_status, head["content-type"], head_body) == (200, CONTENT_TYPE, b"")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_another_method_on_metrics_is_not_allowed_not_not_found(method: str) -> None:
    """The path exists: 405 naming the methods it takes; 404 is for the other paths only."""
    [(status, headers, _)] = await _answers((method, "/metrics"))
    assert (status, headers["allow"]) == (405, "GET, HEAD")


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
async def test_any_other_path_is_not_found(method: str) -> None:
    [(status, headers, _)] = await _answers((method, "/other"))
    assert status == 404 and "allow" not in headers
