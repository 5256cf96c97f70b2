"""`keytrail demo`: start the whole system, play a scripted quarter of KMS traffic through boto3,
and show what keytrail made of it (alarms, usage, cost, an HTML report)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keytrail.cli import console
from keytrail.cli.demo_workload import DemoError, Workload, demo_principals, write_principals
from keytrail.cli.listening import listen_probe
from keytrail.owner_only import make_dirs, open_file, sharing_problem

# The summary (polars, the metrics state, the report) loads once the story has run, not with
# `keytrail demo --help` (commands.py).
if TYPE_CHECKING:
    from keytrail.cli.demo_summary import Story

__all__ = ["ServerProcess", "demo", "register"]

STARTUP_SECONDS = 30.0
CATCH_UP_SECONDS = 30.0
STOP_SECONDS = 30.0
POLL_SECONDS = 0.1
FORMATS = ("text", "json")


class ServerProcess:
    """`keytrail serve --dev-clock` as a child process on a loopback port; stopped, never left behind."""

    def __init__(self, data_dir: Path, port: int, principals: Path) -> None:
        self.data_dir, self.port, self.principals = data_dir, port, principals
        self.endpoint = f"http://127.0.0.1:{port}"
        self.log_path = data_dir / "demo-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers its health check."""
        args = [sys.executable, "-m", "keytrail", "serve", "--data-dir", str(self.data_dir), "--port",
                str(self.port), "--principals", str(self.principals), "--dev-clock"]
        with os.fdopen(open_file(self.log_path, os.O_WRONLY | os.O_APPEND), "ab") as log:
            # Its own session: Ctrl-C reaches the demo only, which then stops the server in order.
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait("keytrail serve to start", STARTUP_SECONDS, self._healthy)

    def stop(self, interrupted: bool = False) -> int | None:
        """SIGTERM (finish calls, flush, exit 0); SIGKILL if it does not stop in time or on the user's second
        Ctrl-C or SIGTERM. `interrupted`: their first is why it stops. A first one that comes during the stop
        lets the server finish it, then is raised."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        try:
            return _exit_status(proc, deadline, kill_on_interrupt=interrupted)
        except KeyboardInterrupt:  # the user's first signal, come as the story ended: still theirs to report
            _exit_status(proc, deadline, kill_on_interrupt=True)
            raise

    def advance(self, seconds: float) -> None:
        """Move the server's dev clock forward (it then runs due deletions and time-based rules)."""
        body = json.dumps({"seconds": seconds}).encode()
        request = urllib.request.Request(f"{self.endpoint}/_keytrail/clock/advance", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            if response.status != 200:
                raise DemoError(f"could not move the dev clock: HTTP {response.status}")

    def wait_for_alarms(self, what: str, ready: Callable[[list[dict[str, Any]]], bool]) -> None:
        """Poll `<data-dir>/alarms.jsonl` until `ready` holds for the alarms in it."""
        self._wait(what, CATCH_UP_SECONDS, lambda: ready(self._alarms()))

    def wait_for_consumers(self, calls: int) -> None:
        """Poll GET /metrics until the usage consumer has counted at least `calls` requests."""
        self._wait("the usage and cost consumer to catch up", CATCH_UP_SECONDS,
                   lambda: self._requests_counted() >= calls)

    def _alarms(self) -> list[dict[str, Any]]:
        from keytrail.detect.sinks.jsonl import read_alarms

        try:
            return [alarm.to_json() for alarm in read_alarms(self.data_dir / "alarms.jsonl").values()]
        except ValueError:  # a line half written as we read: look again
            return []

    def _requests_counted(self) -> int:
        total = 0
        for line in self._get("/metrics").splitlines():
            if line.startswith("keytrail_kms_requests_total{"):
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def _healthy(self) -> bool:
        try:
            self._get("/_keytrail/health")
            return True
        except OSError:
            return False

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(self.endpoint + path, timeout=10) as response:
            return str(response.read().decode())

    def _wait(self, what: str, seconds: float, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise DemoError(f"keytrail serve stopped while waiting for {what}: {self._last_log_line()}")
            if ready():
                return
            time.sleep(POLL_SECONDS)
        raise DemoError(f"gave up after {seconds:g}s waiting for {what} (server log: {self.log_path})")

    def _last_log_line(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"no output (see {self.log_path})"


def _exit_status(proc: subprocess.Popen[bytes], deadline: float, kill_on_interrupt: bool) -> int:
    """Wait for `proc` to exit; SIGKILL it at the deadline, or on Ctrl-C or SIGTERM if `kill_on_interrupt`
    (else the interrupt is raised). Polled, not `Popen.wait`: its own grace period after a Ctrl-C would
    merge two quick ones into one."""
    try:
        while time.monotonic() < deadline:
            if (code := proc.poll()) is not None:
                return code
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        if not kill_on_interrupt:
            raise
    proc.kill()
    return proc.wait()


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line to stderr; the caller raises the returned Exit."""
    return console.fail(message, "keytrail demo", code)


def demo(
    data_dir: Annotated[Path | None, console.path_option(
        "--data-dir", help="Where the demo's node keeps its data: a new or empty folder "
        "(default: a new temporary directory).")] = None,
    port: Annotated[int | None, typer.Option(help="Port for the demo server (default: a free one).",
                                             min=1, max=65535)] = None,
    output: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """Start keytrail, drive a scripted quarter of KMS traffic through boto3, show the alarms, usage,
    cost and the HTML report it produced."""
    from keytrail.cli.demo_summary import render_json, render_text, summarize, write_html_report

    if output not in FORMATS:
        raise fail(f"--format: use text or json, not {output!r}")
    chosen = _port(port)
    directory = _data_dir(data_dir)
    try:
        with console.terminate_as_interrupt():  # the `finally` that stops the server runs
            story = _play(directory, chosen)
            summary = summarize(story, write_html_report(directory))
    except (DemoError, OSError) as error:  # OSError: the server stopped answering
        raise fail(str(error), 1) from None
    except KeyboardInterrupt as interrupt:
        raise fail("interrupted; the server was stopped", console.interrupted_status(interrupt)) from None
    typer.echo(render_json(summary) if output == "json" else render_text(summary))


def _play(directory: Path, port: int) -> Story:
    """Run the server and the workload; the server is stopped whatever happens."""
    from keytrail.cli.demo_summary import Story

    principals = demo_principals()
    server = ServerProcess(directory, port, write_principals(directory / "principals.toml", principals))
    _progress(f"starting keytrail serve on {server.endpoint} (data in {directory})")
    interrupted = False
    try:
        server.start()
        workload = Workload(server, principals)
        _progress("playing the story: keys, envelope encryption, a partner's probe, a deletion, 91 days")
        workload.run()
        server.wait_for_consumers(workload.calls)
        _progress("story played; stopping keytrail serve")
    except KeyboardInterrupt:  # so a second Ctrl-C while the server stops kills it
        interrupted = True
        raise
    finally:
        code = server.stop(interrupted)
    if code not in (0, None):
        raise DemoError(f"keytrail serve exited with status {code} (server log: {server.log_path})")
    _progress("server stopped; writing the HTML report")
    return Story(directory, server.endpoint, workload.calls, workload.days, workload.keys,
                 {name: entry.caller_arn for name, entry in principals.items()})


def _progress(message: str) -> None:
    typer.echo(f"keytrail demo: {message}", err=True)


def _port(port: int | None) -> int:
    """The port asked for (it must be free now; the option's min and max keep it in 1-65535), or a
    free one."""
    try:
        return listen_probe("127.0.0.1", port or 0)
    except OSError as error:
        raise fail(f"--port: cannot listen on 127.0.0.1:{port} ({error.strerror})") from None


def _data_dir(path: Path | None) -> Path:
    """A fresh temporary directory, or the one given if it holds no keytrail data yet."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="keytrail-demo-"))
    if path.exists() and not path.is_dir():
        raise fail(f"--data-dir: {path} is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise fail(f"--data-dir: {path} is not empty; the demo needs a data dir of its own")
    try:
        make_dirs(path)
    except OSError as error:  # under a file, or in a folder it may not write: said as serve says it
        raise fail(f"--data-dir: cannot create {path}: {error.strerror or error}") from None
    # Before a file is written: serve would refuse it after the demo wrote its principals file, and
    # the folder, no longer empty, was refused by the next demo too.
    if (problem := sharing_problem(path.stat(), chmod="700")) and problem.changeable:
        raise fail(f"--data-dir: {path} {problem}, which serve refuses: {problem.fix}, or give a new folder")
    return path.resolve()


def register(app: typer.Typer) -> None:
    """Add `demo` to the `keytrail` app."""
    app.command("demo")(demo)
