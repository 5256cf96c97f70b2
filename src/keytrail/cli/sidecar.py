"""The child processes of `keytrail serve` (started and supervised by keytrail/children.py): the metrics
consumer and the detector, each following the node's embedded event log on the other core.

    python -m keytrail.cli.sidecar consumer DATA_DIR
    python -m keytrail.cli.sidecar detector DATA_DIR [--config FILE]   (stdin: {"mqtt": …, "kafka": …, …}\n)

A child stops gracefully (the consumer checkpoints and exports) on SIGTERM or SIGINT, and when
its stdin reaches end of file: `serve` holds the other end, so even `kill -9` of `serve` leaves no
orphan. The detector first reads one line there, serve's --mqtt and --kafka as JSON: a password
in an MQTT URL on its command line was readable by every user of the machine. The line also
carries the webhook HMAC keys serve took out of its environment (cli/hook_secrets.py). With no line
within HOOKS_LINE_WAIT (a serve older than this keytrail started it), or hooks given as arguments
(a serve older still), it exits 1 in one line instead of waiting for good. The detector
writes each alarm state it announces (raised, escalated, its count updated) to stdout as one
JSON line, of which `serve` counts the raised and escalated ones for /metrics, and, at most once
each JUDGED_LINE_SECONDS while it moves, the offset of the event log it has judged up to
(`{"judged": N}`), from which `serve` tells its lag. Both tell the offset they are held at in
front of a record of the event log they cannot read (`{"held": N}`), and `{"held": null}` once they
read on, from which `serve` tells keytrail_event_log_reader_held. One child of each kind per data dir: each
holds an exclusive lock, and a new one waits while the child of a previous `serve` is still
finishing. The consumer also keeps `consume --kafka` out of the data dir
(pipeline/kafka_lock.py), and where one already counts there it exits 1 in one line without
counting: Kafka carries the node's calls too.

Both run only on what CPU `serve`'s threads leave idle (keytrail.children.run_when_idle): they read
what is already durable and catch up within a second or two, while a call waiting behind them
would show in the API's tail latency. `serve` has one serving thread, and it idles while its calls
wait on their fsync: confined to one core at its maximum rate for 20 s, it left the consumer at most
3.3 s of calls behind and the detector 2.1 s (keytrail_pipeline_consumer_lag, keytrail_detector_lag),
both caught up 4 s after.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import select
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from keytrail.children import ChildSpec, run_when_idle
from keytrail.cli.detect import BadInput, detector_settings, settings_of_text
from keytrail.cli.hook_secrets import hook_environment
from keytrail.cli.organizations import PrincipalsOrganizations
from keytrail.cli.tail import detect_live
from keytrail.clock import SystemClock
from keytrail.config import ServeSettings
from keytrail.detect.alarms import Alarm
from keytrail.detect.checks.permissive import no_organization
from keytrail.detect.hooks import HooksConfig
from keytrail.detect.rules import RuleError, RuleSet
from keytrail.detect.runner import DetectorRunner
from keytrail.detect.severity import Severity
from keytrail.log_lines import log_to_stderr
from keytrail.pipeline.consumer import ConsumerSettings, MetricsConsumer
from keytrail.pipeline.kafka_lock import hold_as_event_log_consumer, kafka_consumers_counting, lock_for_life
from keytrail.pipeline.query import consumer_lock

__all__ = ["consumer_lock", "detector_lock", "hold_lock", "sidecars", "try_lock"]

log = logging.getLogger("keytrail")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
DataDir = Annotated[Path, typer.Argument(help="The node's data directory.")]
# polars runs a thread per core; the children's batches are small and they share the node's cores
# with the server they audit. On one thread the consumer took a fifth less CPU per Encrypt (10 → 8
# and 13 → 10 µs in two A/B runs of serve under wrk -c16 on 2 cores, req/s +1.5 and +1.9 %), its
# threads no longer waking ≈ 600 times a second; the detector's one thread gave serve +1.7 % under
# wrk -c64 (8 rounds), its batch of ≈ 2,500 events still decoded in a few ms of its 0.25 s gather.
# An operator's own POLARS_MAX_THREADS wins.
ANALYTICS_ENVIRONMENT = {"POLARS_MAX_THREADS": "1"}
# How long the detector child waits for serve's hooks line on its stdin. serve writes it into the
# pipe as it starts the child, before the child has even imported anything: none by then means a
# serve that never writes it (`_started_by_an_older_serve`), which the child waited for for good.
HOOKS_LINE_WAIT = 5.0
# How often at most the detector child tells serve the offset it has judged up to: a line per
# batch would be up to four a second under load, for a gauge scraped every 15 s.
JUDGED_LINE_SECONDS = 1.0


def sidecars(settings: ServeSettings, on_alarm: Callable[[str, str, Severity], None],
             on_judged: Callable[[int], None] = lambda offset: None,
             on_held: Callable[[str, int | None], None] = lambda child, offset: None,
             config_text: Callable[[], str | None] = lambda: None) -> list[ChildSpec]:
    """The children `serve` runs for `settings`; `on_alarm(alarmId, rule, severity)` for each alarm
    state the detector announces, `on_judged(offset)` as it tells the event log's offset it has
    judged up to, `on_held(child, offset)` as a child tells the offset it is held at (None: it reads
    on, or it exited: the next one watches anew); `config_text()`, asked at each start of the
    detector, the text of --config serve last read and checked (None: the child reads the file)."""
    command = (sys.executable, "-m", "keytrail.cli.sidecar")
    data_dir = str(settings.data_dir)
    specs = [ChildSpec("consumer", (*command, "consumer", data_dir), _held_reader("consumer", on_held),
                       environment_defaults=ANALYTICS_ENVIRONMENT, in_serves_group=True,
                       on_exit=lambda: on_held("consumer", None))]
    if settings.detector:
        flags = ("--config", str(settings.config)) if settings.config is not None else ()
        def hooks() -> bytes:
            return json.dumps({"mqtt": settings.mqtt, "kafka": settings.kafka,
                               "principals": str(settings.principals_file), "secrets": dict(settings.hook_secrets),
                               "config": config_text()}).encode() + b"\n"

        specs.append(ChildSpec("detector", (*command, "detector", data_dir, *flags),
                               _alarm_reader(on_alarm, on_judged, on_held), settings=hooks,
                               environment_defaults=ANALYTICS_ENVIRONMENT, in_serves_group=True,
                               on_exit=lambda: on_held("detector", None), kafka_client=True))  # alarms to Kafka
    return specs


def _alarm_reader(on_alarm: Callable[[str, str, Severity], None], on_judged: Callable[[int], None],
                  on_held: Callable[[str, int | None], None]) -> Callable[[bytes], None]:
    def on_line(line: bytes) -> None:
        try:
            message = json.loads(line)
            if isinstance(judged := message.get("judged"), int):
                on_judged(judged)
                return
            if _held(message, functools.partial(on_held, "detector")):
                return
            on_alarm(message["alarmId"], message["rule"], Severity(message["severity"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("detector child: unexpected output %r", line[:200])

    return on_line


def _held_reader(child: str, on_held: Callable[[str, int | None], None]) -> Callable[[bytes], None]:
    """The consumer child's stdout: only its held lines."""
    def on_line(line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not _held(message, functools.partial(on_held, child)):
            log.warning("%s child: unexpected output %r", child, line[:200])

    return on_line


def _held(message: Any, on_held: Callable[[int | None], None]) -> bool:
    """Whether `message` is a held line (`{"held": N}` or `{"held": null}`), handed to `on_held`."""
    if not isinstance(message, dict) or not isinstance(offset := message.get("held", ""), int | None):
        return False
    on_held(offset)
    return True


def _tell_held(offset: int | None) -> None:
    """A child tells serve the offset it is held at (StallWatch's `on_held`), None once it reads on."""
    sys.stdout.write(json.dumps({"held": offset}) + "\n")
    sys.stdout.flush()


def detector_lock(data_dir: Path) -> Path:
    """Held by the detector child while it appends to alarms.jsonl."""
    return data_dir / "detector.lock"


@app.command()
def consumer(data_dir: DataDir) -> None:
    """The usage, cost and last-used consumer over the embedded event log."""
    _run_child("consumer", _consume(data_dir))


@app.command()
def detector(
    data_dir: DataDir,
    config: Annotated[Path | None, typer.Option(help="serve's --config: rules and hooks.")] = None,
    mqtt: Annotated[str | None, typer.Option(hidden=True)] = None,  # what a serve before 461f484 passed
    kafka: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """The detector over the embedded event log, alarms also as JSON lines on stdout; serve's
    --mqtt and --kafka come first on stdin, as one JSON line."""
    if mqtt is not None or kafka is not None:
        _started_by_an_older_serve("it was given --mqtt or --kafka as arguments")
    line = _first_line(sys.stdin.fileno(), HOOKS_LINE_WAIT)
    if line is None:
        _started_by_an_older_serve(f"no line came on its stdin within {HOOKS_LINE_WAIT:g} s")
    if not line:  # serve is gone before it wrote them (or no serve started it): nothing to detect for
        log.error("detector child: its stdin ended before serve's hooks line; this child is started by keytrail serve")
        raise SystemExit(1)
    try:
        mqtt, kafka, principals = _flag_hooks(line)
        secrets = _hook_secrets(line)
        text = _config_text(line)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("detector child: its hooks on stdin are unreadable (%s)", exc)
        raise SystemExit(1) from None
    _run_child("detector", _detect(data_dir, _Config(config, text), mqtt, kafka, principals, secrets))


def _started_by_an_older_serve(sign: str) -> NoReturn:
    """A serve older than this keytrail (upgraded in place while it ran) started this child: it
    gives the hooks as arguments, or nothing at all, and never writes them on stdin, where this
    child waited for them for good. One line says so; serve restarts the child, and says so, until
    it is restarted itself."""
    log.error("detector child: %s, as a serve older than this keytrail starts it (upgraded while it ran?): "
              "restart keytrail serve to run its detector again", sign)
    raise SystemExit(1)


def _first_line(fd: int, wait: float) -> bytes | None:
    """The first line written to `fd`, unbuffered (the rest of the pipe is the stop signal's: its
    end); what came before the end of file if it ended first; None if no whole line came within
    `wait` seconds. serve writes the line as it starts the child, so it is there at once."""
    line, deadline = b"", time.monotonic() + wait
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return None
        if not (chunk := os.read(fd, 4096)):
            break
        line += chunk
    return line


def _flag_hooks(line: bytes) -> tuple[str | None, str | None, Path | None]:
    """(mqtt, kafka, principals file) from serve's line; ValueError, KeyError or TypeError if it is
    not what serve writes (a serve before the principals were on it gives none: no organization)."""
    settings = json.loads(line)
    mqtt, kafka, principals = settings["mqtt"], settings["kafka"], settings.get("principals")
    if not all(isinstance(value, str | None) for value in (mqtt, kafka, principals)):
        raise TypeError("mqtt, kafka and principals are strings or null")
    return mqtt, kafka, Path(principals) if principals else None


def _hook_secrets(line: bytes) -> dict[str, str]:
    """The webhook HMAC keys serve took out of its environment (cli/hook_secrets.py), by variable
    name; TypeError if they are not strings (a serve before them gives none)."""
    secrets = json.loads(line).get("secrets", {})
    if not isinstance(secrets, dict) or not all(isinstance(value, str) for value in secrets.values()):
        raise TypeError("secrets is an object of strings")
    return secrets


def _config_text(line: bytes) -> str | None:
    """The text of --config serve last read and checked (None: none given, the child reads the file)."""
    text = json.loads(line).get("config")
    if not isinstance(text, str | None):
        raise TypeError("config is a string or null")
    return text


@dataclass(frozen=True)
class _Config:
    """serve's --config, and the text of it serve last read and checked (None: read the file)."""

    path: Path | None
    text: str | None

    def settings(self, environment: Mapping[str, str]) -> tuple[RuleSet, HooksConfig]:
        if self.path is not None and self.text is not None:
            return settings_of_text(self.text, self.path, environment=environment)
        return detector_settings(self.path, environment=environment)


class _SettingsUnusable(Exception):
    """serve's --config no longer reads (changed since serve checked it); the message says why."""


class _KafkaConsumersCount(Exception):
    """A `consume --kafka` counts into the data dir (started after serve checked for one): the
    consumer child would count the node's calls a second time, from its event log."""


def _run_child(name: str, main: Coroutine[Any, Any, None]) -> None:
    """Run a child's main. A file it cannot write (a full disk), or a settings file broken since
    serve checked it (and that serve could not read as the node started), ends it with one log line:
    `serve` restarts it with a backoff, and it resumes from its last checkpoint."""
    try:
        asyncio.run(main)
    except (OSError, sqlite3.Error, _SettingsUnusable, _KafkaConsumersCount) as exc:
        log.error("%s child: %s", name, exc)
        raise SystemExit(1) from None


async def _consume(data_dir: Path) -> None:
    metrics = MetricsConsumer(ConsumerSettings(data_dir=data_dir), on_held=_tell_held)
    _stop_on_signal_or_eof(metrics.stop_event)  # run() then checkpoints, exports and returns
    if not await hold_lock(consumer_lock(data_dir), metrics.stop_event):
        return
    # Exits rather than waits: serve restarts it with its growing backoff, so that each attempt
    # is a line in the log and keytrail_child_restarts_total rises, and it counts again within
    # 30 s of the `consume --kafka` stopping; a wait would have said it once, and /metrics nothing.
    if not hold_as_event_log_consumer(data_dir):
        raise _KafkaConsumersCount(f"{kafka_consumers_counting(data_dir)}; until it stops, this child counts "
                                   "nothing and is restarted with a backoff")
    await metrics.run()


async def _detect(data_dir: Path, config: _Config, mqtt: str | None, kafka: str | None,
                  principals: Path | None, secrets: dict[str, str]) -> None:
    stopping = asyncio.Event()
    _stop_on_signal_or_eof(stopping)
    if not await hold_lock(detector_lock(data_dir), stopping):
        return
    try:
        rules, hooks = config.settings(hook_environment(secrets))
    except (BadInput, RuleError, ValueError) as exc:  # as serve's own check (cli/serve.py) refuses them
        raise _SettingsUnusable(f"--config: {exc}") from None
    organization_of = PrincipalsOrganizations(principals, strict=False) if principals else no_organization
    runner = DetectorRunner.open(data_dir, hooks=hooks.with_flags(mqtt=mqtt, kafka=kafka), rules=rules,
                                 clock=SystemClock(), organization_of=organization_of)
    live = asyncio.create_task(detect_live(data_dir, runner, _print_alarms, _JudgedLines().judged,
                                           held=_tell_held))
    stop = asyncio.create_task(stopping.wait())
    # Until serve stops it, or its loop ends on an error reading the event log: waiting for the stop
    # alone left a child that judged nothing, said nothing and was never restarted.
    await asyncio.wait({live, stop}, return_when=asyncio.FIRST_COMPLETED)
    for task in (live, stop):
        task.cancel()
    await asyncio.gather(live, stop, return_exceptions=True)
    await runner.close()  # delivers what is queued and the latest counts of open alarms
    if not live.cancelled() and (error := live.exception()) is not None:
        raise error  # one line (`_run_child`), exit 1: serve restarts it with its backoff


class _JudgedLines:
    """Tells serve the event log's offset the detector has judged up to, when it has moved, at
    most once each JUDGED_LINE_SECONDS: the last move is told too, at the next idle poll after.
    The first is told at once, so that serve lets go of a previous child's (this one replays the
    log from its start)."""

    def __init__(self) -> None:
        self._told, self._told_at = -1, -JUDGED_LINE_SECONDS

    def judged(self, offset: int) -> None:
        now = time.monotonic()
        if offset != self._told and now - self._told_at >= JUDGED_LINE_SECONDS:
            sys.stdout.write(f'{{"judged":{offset}}}\n')
            sys.stdout.flush()
            self._told, self._told_at = offset, now


def _print_alarms(alarms: list[Alarm]) -> None:
    for alarm in alarms:
        sys.stdout.write(json.dumps(alarm.to_json(), separators=(",", ":")) + "\n")
    if alarms:
        sys.stdout.flush()


def _stop_on_signal_or_eof(stopping: asyncio.Event) -> None:
    """Set `stopping` on SIGTERM/SIGINT or when stdin ends (the parent is gone)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_reader(sys.stdin.fileno(), _on_stdin, loop, stopping)


def _on_stdin(loop: asyncio.AbstractEventLoop, stopping: asyncio.Event) -> None:
    if not os.read(sys.stdin.fileno(), 4096):  # end of file: nobody holds the write end any more
        loop.remove_reader(sys.stdin.fileno())
        stopping.set()


def try_lock(path: Path) -> bool:
    """Take an exclusive lock on `path` for the rest of the process's life; False (and nothing
    held) while another process holds it."""
    return lock_for_life(path)


async def hold_lock(path: Path, stopping: asyncio.Event) -> bool:
    """Hold an exclusive lock on `path` until exit, waiting while another process holds it;
    False if told to stop first."""
    waited = False
    while not stopping.is_set():
        if try_lock(path):
            return True
        if not waited:
            log.warning("%s is held by another process; waiting for it", path)
            waited = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 0.2)
    return False


if __name__ == "__main__":
    run_when_idle()  # first: before its first log line, and before polars or a hook starts a thread
    log_to_stderr()
    app()
