"""Stopping `keytrail serve` over TLS while clients hold idle keep-alive connections."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.support.server import PRINCIPALS, KeytrailServer
from tests.support.waits import eventually_blocking

pytestmark = pytest.mark.integration


def _answers(client: Any) -> bool:
    try:
        client.list_keys()
    except (BotoCoreError, ClientError):  # not listening yet, or its handshake not yet answered
        return False
    return True


def test_sigterm_stops_a_tls_node_whose_sdk_client_holds_an_idle_connection(tmp_path: Path) -> None:
    # boto3 keeps its connection open after a call, as every SDK's pool does. At the stop the node
    # closes it and waited for the client's TLS close_notify, which an idle pool never sends: 30 s
    # of asyncio's, cut by uvicorn's 20 s graceful timeout, where a plain HTTP node stopped at once.
    server = KeytrailServer(tmp_path / "data")
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([*server.command(), "--tls-self-signed"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _, key, secret, _, _ = PRINCIPALS["alice"]
        client = boto3.client("kms", endpoint_url=f"https://localhost:{server.port}", region_name="us-east-1",
                              aws_access_key_id=key, aws_secret_access_key=secret,
                              verify=str(tmp_path / "data" / "tls" / "tls-cert.pem"),
                              config=Config(retries={"total_max_attempts": 1}))
        eventually_blocking(lambda: _answers(client), what="a call answered over TLS", timeout=90)
        client.create_key()  # and its connection left open, idle
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0  # not uvicorn's 20 s wait for the idle connection
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
