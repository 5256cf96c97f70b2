"""serve's HTTP server: the servers of one process share one log filter."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from keytrail.api.http_protocol import ClientNoiseFilter
from keytrail.cli.http_server import HttpServer
from keytrail.config import ServeSettings


async def _not_found(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})


def test_the_servers_of_one_process_share_one_client_noise_filter(tmp_path: Path) -> None:
    logger = logging.getLogger("uvicorn.error")
    for _ in range(3):
        HttpServer(_not_found, ServeSettings(data_dir=tmp_path), {})
    assert [type(known) for known in logger.filters].count(ClientNoiseFilter) == 1
