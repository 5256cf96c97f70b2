"""Supervised child processes of `keytrail serve` (the consumer and detector sidecars, the audit
trail's Kafka shipper): restarted with a growing pause after an unexpected exit, stopped with
SIGTERM, or by the end of their stdin (the shipper), and killed after a timeout.

Each child gets a pipe as stdin: when `serve` dies, even by SIGKILL, the kernel closes it and the
child sees end of file and exits (cli/sidecar.py, audit/shipping.py). No child is in `serve`'s
process group, so a terminal's Ctrl-C reaches `serve` only, which then stops them in order: a child
runs either in a session of its own, or in serve's session as a process group of its own
(`ChildSpec.in_serves_group`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ANALYTICS_NICENESS", "Child", "ChildSpec", "lower_priority", "run_when_idle", "without_store_secrets"]

log = logging.getLogger("keytrail")


# The longest line of a child's stdout handed to `on_line`; a longer one is left out, with a
# warning. The detector writes each alarm as a line: a permissive-key alarm lists a finding per
# statement, ≈ 90 KB for a policy near AWS's 32 KB cap.
LINE_LIMIT = 1 << 20
_READ_SIZE = 1 << 16

# Added to serve's niceness by the Kafka shipper (`lower_priority`): about a tenth of its CPU share.
# Not `SCHED_IDLE` as the consumer and detector: a shipper starved by a saturated core lets the
# spool fill to its cap, and then calls are refused.
ANALYTICS_NICENESS = 10

# Where Linux groups a session's processes for the scheduler ("autogroup", on by default in most
# distributions' kernels).
_AUTOGROUP = Path("/proc/self/autogroup")
# This process's threads.
_THREADS = Path("/proc/self/task")


def lower_priority(niceness: int = ANALYTICS_NICENESS) -> None:
    """Run this child `niceness` below `serve`. For a child in a session of its own (`_run_once`):
    where the kernel groups sessions for the scheduler (autogroups) the groups share the CPU
    first: a niceness inside a child's group weighs only against that group's own threads. So the
    group's niceness is lowered too. With only the process's lowered, the children's batches took
    serve's core as if at its priority: open-loop p99 at 80 % of the maximum rate 13.3–13.8 ms, and
    9.5–11.3 ms with the group's (docs/benchmarks.md, the levers table)."""
    os.nice(niceness)
    # Opened "r+": never created where the kernel has no autogroups (or cgroups decide instead).
    with contextlib.suppress(OSError), _AUTOGROUP.open("r+") as group:
        group.write(str(niceness))


def run_when_idle() -> None:
    """Run this child only when `serve`'s threads leave a core idle (`SCHED_IDLE`): for a child in
    serve's session (`ChildSpec.in_serves_group`), so in serve's scheduling group, where a serving
    thread that wakes takes the core from it at once. At a niceness, in a group of its own, its
    batches of 5–20 ms held serve's core until their slice ended: open-loop p99 at 80 % of the
    maximum rate 8.0 and 14.3 ms on two VMs, and 6.6 and 11.8 ms at `SCHED_IDLE` (docs/benchmarks.md,
    the levers table). The policy is a thread's: set for each thread there is (imports have started
    some), and inherited by those started later.

    It also ignores SIGTTOU: in a background process group of serve's session, a child writing a
    log line to a terminal set to `stty tostop` would otherwise be stopped for good."""
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        for thread in _THREADS.iterdir():
            with contextlib.suppress(ProcessLookupError):  # one that ended meanwhile
                os.sched_setscheduler(int(thread.name), os.SCHED_IDLE, os.sched_param(0))
    except OSError:  # refused (a seccomp profile, a kernel without it): the niceness still weighs in serve's group
        os.nice(ANALYTICS_NICENESS)


# What serve alone needs to reach its key store: a child has no use for it, and unlike serve a
# child is dumpable, its environment readable in /proc by the user's other processes.
STORE_SECRETS = ("KEYTRAIL_STORE", "PGPASSWORD")


# The Kafka clients' SASL password (transport/kafka_security.py's PASSWORD_ENV): only the children
# that build a Kafka client (the audit shipper, the detector publishing alarms) are given it.
KAFKA_SECRETS = ("KEYTRAIL_KAFKA_SASL_PASSWORD",)


def without_store_secrets(environment: Mapping[str, str], *, kafka_client: bool = False) -> dict[str, str]:
    """`environment` less the key store's URL and password, and, unless the child builds a Kafka
    client (`kafka_client`), less the Kafka SASL password."""
    withheld = STORE_SECRETS if kafka_client else (*STORE_SECRETS, *KAFKA_SECRETS)
    return {name: value for name, value in environment.items() if name not in withheld}


@dataclass(frozen=True)
class ChildSpec:
    """What to run; `on_line` receives each line of its stdout (else stdout is inherited);
    `environment_defaults` are set for the child unless serve's own environment sets them;
    `settings` (or what it returns, asked at each start) is written to its stdin at each start: what
    must stay off its command line (every user of the machine can read that) and out of its
    environment (readable while it is dumpable), or what the child must know as it starts.
    `stops_at_end_of_input`: the child finishes its work and exits at the end of its stdin, which is
    how `stop` ends it, with no SIGTERM: one that came while it still imported its modules, before
    it set its handler, would end it with that work undone (the Kafka shipper's last records).
    `in_serves_group`: the child runs in serve's session, so in its scheduling group, as a process
    group of its own (which Ctrl-C does not reach), and calls `run_when_idle`; else it has a session
    of its own, and calls `lower_priority`.
    `on_exit` runs after each run of the child ends: what it told of its state no longer holds.
    `kafka_client`: the child builds Kafka clients, so it is given the Kafka SASL password."""

    name: str
    argv: tuple[str, ...]
    on_line: Callable[[bytes], None] | None = None
    settings: bytes | Callable[[], bytes] | None = None
    environment_defaults: Mapping[str, str] = field(default_factory=dict)
    stop_timeout: float = 15.0
    first_backoff: float = 0.5
    max_backoff: float = 30.0
    stops_at_end_of_input: bool = False
    in_serves_group: bool = False
    on_exit: Callable[[], None] | None = None
    kafka_client: bool = False


class Child:
    """One supervised child process."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0  # unexpected exits restarted after (for /metrics)
        self._stopping = False
        self._restart_asked = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.spec.first_backoff
        while not self._stopping:  # stopped before its first run (a failed start): none
            started = loop.time()
            try:
                ended = f"exited with status {await self._run_once()}"
            except OSError as exc:
                # fork or exec refused (no file descriptor for its pipes, no memory, no process
                # slot): mostly for a moment. Raised, it ended this task, and the child never ran
                # again, unsaid: `stop` gathers the task's exception.
                ended = f"could not start ({exc})"
            if self.spec.on_exit is not None:
                self.spec.on_exit()
            if self._stopping:
                return
            if self._restart_asked:  # `restart`: no crash to say, count or back off from
                self._restart_asked = False
                continue
            # A child that ran a while crashed on something new: restart it soon again.
            backoff = self.spec.first_backoff if loop.time() - started > self.spec.max_backoff else backoff
            log.warning("%s child %s; restarting in %.1f s", self.spec.name, ended, backoff)
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.spec.max_backoff)

    async def _run_once(self) -> int:
        spec = self.spec
        # The process group is taken between fork and exec (`preexec_fn`: uvloop has no `process_group`),
        # so that no Ctrl-C reaches the child while it starts.
        self.process = process = await asyncio.create_subprocess_exec(
            *spec.argv, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE if spec.on_line else None, start_new_session=not spec.in_serves_group,
            preexec_fn=os.setpgrp if spec.in_serves_group else None,
            env={**spec.environment_defaults, **without_store_secrets(os.environ, kafka_client=spec.kafka_client)},
        )
        try:
            return await self._follow(process)
        except asyncio.CancelledError:
            # Cancelled by `stop` after its wait (this process was spawned while stop ran, and it
            # found none to end): a child must not outlive its supervisor, writing on into a data
            # dir a failed start is cleaning. Else its pipe stayed open until serve exited.
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            raise

    async def _follow(self, process: asyncio.subprocess.Process) -> int:
        """Give the running child its settings, read its lines, and wait for its exit."""
        spec = self.spec
        if spec.settings is not None and process.stdin is not None:
            settings = spec.settings() if callable(spec.settings) else spec.settings
            process.stdin.write(settings)  # the pipe stays open: its end tells the child serve is gone
            with contextlib.suppress(ConnectionError):  # a child that died at once: its exit is handled below
                await process.stdin.drain()
        if self._stopping:  # a stop came while it was spawned, and found no process: ask it to end now
            self._ask_to_stop(process)
        if spec.on_line is not None and process.stdout is not None:
            await self._read_lines(process.stdout, spec.on_line)
        return await process.wait()

    async def _read_lines(self, stdout: asyncio.StreamReader, on_line: Callable[[bytes], None]) -> None:
        """Hand each line of the child's stdout to `on_line`, up to its end. Not `readline`: a line
        over its 64 KiB limit raised, which ended this supervisor, and the child, its output no
        longer read, blocked on a write for good (the detector, after an alarm on a large policy)."""
        pending, skipping = b"", False  # the line begun; whether it is one over LINE_LIMIT, left out
        while chunk := await stdout.read(_READ_SIZE):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if skipping:  # the end of the one left out
                    skipping = False
                else:
                    on_line(line + b"\n")
            if len(pending) > LINE_LIMIT:
                if not skipping:
                    log.warning("%s child: a line of its output over %d bytes was left out", self.spec.name,
                                LINE_LIMIT)
                pending, skipping = b"", True
        if pending and not skipping:
            on_line(pending)

    def restart(self) -> None:
        """Stop the running child as `stop` does and start it again at once (it reads its settings
        anew): asked for, so neither a restart in the log and /metrics nor a backoff. A child between
        two runs starts on its own, anew too."""
        process = self.process
        if self._stopping or process is None or process.returncode is not None:
            return
        self._restart_asked = True
        self._ask_to_stop(process)

    async def stop(self, timeout: float | None = None) -> None:
        """SIGTERM (or the end of its stdin: `stops_at_end_of_input`), then SIGKILL after `timeout`
        (default: the spec's `stop_timeout`); no restart afterwards."""
        self._stopping = True
        timeout = self.spec.stop_timeout if timeout is None else timeout
        process = self.process
        if process is not None and process.returncode is None:
            self._ask_to_stop(process)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                log.warning("%s child did not stop in %.0f s; killing it", self.spec.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._task is not None:
            # Let it read the child's last lines (or end one it was spawning); it is only still
            # waiting if it was between runs, or its child did not end in that second (then killed).
            await asyncio.wait({self._task}, timeout=1.0)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _ask_to_stop(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM, or the end of its stdin for a child that stops at the end of its input."""
        if self.spec.stops_at_end_of_input:
            if process.stdin is not None:
                process.stdin.close()
        else:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
