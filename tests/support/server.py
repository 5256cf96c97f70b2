"""Run a real `keytrail serve` process and talk to it with real clients."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config

from tests.support.services import free_port, wait_for_port

__all__ = ["ACCOUNT", "OTHER_ACCOUNT", "PRINCIPALS", "KeytrailServer", "write_principals"]

T = TypeVar("T")
ACCOUNT = "111122223333"
OTHER_ACCOUNT = "444455556666"
_ALLOW_ALL = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}'

# name -> (arn, access key, secret, identity policies, session name)
PRINCIPALS: dict[str, tuple[str, str, str, list[str], str | None]] = {
    "alice": (f"arn:aws:iam::{ACCOUNT}:user/alice", "AKIAALICE000000000001", "alice-secret", [_ALLOW_ALL], None),
    "bob": (f"arn:aws:iam::{ACCOUNT}:user/bob", "AKIABOB00000000000001", "bob-secret", [], None),
    "root": (f"arn:aws:iam::{ACCOUNT}:root", "AKIAROOT000000000001", "root-secret", [], None),
    "app": (f"arn:aws:iam::{ACCOUNT}:role/app", "ASIAAPP0000000000001", "app-secret", [_ALLOW_ALL], "app-session"),
    "carol": (f"arn:aws:iam::{OTHER_ACCOUNT}:user/carol", "AKIACAROL00000000001", "carol-secret", [_ALLOW_ALL],
              None),
    "other-root": (f"arn:aws:iam::{OTHER_ACCOUNT}:root", "AKIAOTHERROOT0000001", "other-root-secret", [], None),
}


PrincipalEntry = tuple[str, str, str, list[str], str | None]


def write_principals(path: Path, principals: dict[str, PrincipalEntry] = PRINCIPALS) -> Path:
    lines = []
    for arn, key, secret, policies, session in principals.values():
        lines += ["[[principal]]", f'arn = "{arn}"', f'access_key_id = "{key}"', f'secret_access_key = "{secret}"']
        if session:
            lines.append(f'session_name = "{session}"')
        if policies:
            lines.append("policies = [" + ", ".join(f"'''{p}'''" for p in policies) + "]")
        lines.append("")
    path.write_text("\n".join(lines))
    path.chmod(0o600)  # as docs/principals.md asks: serve warns about one other users can read
    return path


# How long `start` waits for a healthy server: ≈ 1-3 s on a quiet 2-core machine, but a restart
# after kill -9 (recovery, the children's catch-up) under a loaded machine took over 30 s.
START_SECONDS = 90.0


class KeytrailServer:
    """A `keytrail serve --dev-clock` subprocess on a free port (`dev_clock=False`: the real clock,
    so the consumer and the detector run as child processes)."""

    def __init__(self, data_dir: Path, *extra: str, principals: Path | None = None, dev_clock: bool = True,
                 open_files: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host  # its --host: ::1 serves on IPv6
        self.dev_clock = dev_clock
        self.open_files = open_files  # the process's RLIMIT_NOFILE, when not inherited
        self.port = free_port()
        self.principals = principals or write_principals(data_dir.parent / f"{data_dir.name}-principals.toml")
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def endpoint(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The `keytrail serve` command line this server runs."""
        return [sys.executable, "-m", "keytrail", "serve", "--data-dir", str(self.data_dir),
                "--port", str(self.port), "--principals", str(self.principals),
                *(["--host", self.host] if self.host != "127.0.0.1" else []),
                *(["--dev-clock"] if self.dev_clock else []), *self.extra]

    def answers_health(self) -> bool:
        """Whether the server answers its health check with 200 now."""
        try:
            return self.get("/_keytrail/health")[0] == 200
        except OSError:  # not listening yet, or gone
            return False

    def start(self) -> KeytrailServer:
        self.proc = subprocess.Popen(self.command(), stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     env=os.environ.copy(),
                                     preexec_fn=self._limit_open_files if self.open_files else None)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keytrail serve exited: {self.log.read_text()[-2000:]}")
            try:
                wait_for_port(self.port, timeout=0.2, host=self.host)
            except (TimeoutError, OSError):
                continue
            if self.answers_health():
                return self
        self.proc.kill()  # else it outlives the test run, serving on, when it starts after all
        self.proc.wait()
        raise TimeoutError(f"keytrail serve did not start: {self.log.read_text()[-2000:]}")

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def after_sighup(self, check: Callable[[], T]) -> T:
        """SIGHUP the server (it re-reads its principals file), then retry `check` until it passes:
        the reload is asynchronous."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while True:
            try:
                return check()
            except (AssertionError, pytest.fail.Exception):  # aws_error's "DID NOT RAISE": not reloaded yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def client(self, who: str = "alice", region: str = "us-east-1", service: str = "kms", **config: Any) -> Any:
        _, key, secret, _, _ = PRINCIPALS[who]
        return boto3.client(
            service, endpoint_url=self.endpoint, region_name=region, aws_access_key_id=key,
            # No retry: botocore's `max_attempts` counts retries, and a retried 500 or reset would
            # hide from a test what the server answered the first time.
            aws_secret_access_key=secret, config=Config(retries={"total_max_attempts": 1}, **config),
        )

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.endpoint + path, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(self.endpoint + path, data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def advance(self, seconds: float) -> str:
        status, body = self.post("/_keytrail/clock/advance", {"seconds": seconds})
        assert status == 200, body
        return str(body["now"])


@contextmanager
def two_nodes(parent: Path, store_url: str) -> Iterator[tuple[KeytrailServer, KeytrailServer]]:
    """Nodes A and B on the key store `store_url` (with the root key the environment gives both),
    each with its own data dir under `parent` (its own audit log and consumer); each stops cleanly."""
    first = KeytrailServer(parent / "a", "--store", store_url).start()
    try:
        second = KeytrailServer(parent / "b", "--store", store_url).start()
        try:
            yield first, second
        finally:
            assert second.stop() == 0
    finally:
        assert first.stop() == 0
