"""The Kafka shipper's own process: `Shipper` (audit/shipper.py) run beside the serving process.

Shipping costs whoever does it CPU for every record (reading it back, building record batches,
hearing the acknowledgements) and, every quarter second, thousands of records' worth at once. In
the serving process that was CPU taken from the calls: through `serve --kafka` under wrk -c64
(Encrypt, 8 interleaved rounds) the same node without shipping served 5.5 % more. As a child
process it runs on the other core, as the consumer and the detector do, at their lower priority
(it has a quarter second of linger to spare; on a busy machine the calls come first).

    python -m keytrail.audit.shipping LOG_DIR SHIPPED_OFFSET_FILE BOOTSTRAP TOPIC PARTITIONS REPLICATION_FACTOR

Protocol, ASCII lines on its pipes. The serving process writes the durable end (the offset below
which every record is on disk) at the child's start and then as it moves, at most every
TELL_SECONDS; the shipper ships records up to it and writes back `<shipped offset> <framed bytes>`
after each batch the broker acknowledged (the offset file is written by then, unless a full disk
refused it: the shipper retries the write, shipper.py `_OffsetWriter`), and `held <offset>`
when it is held in front of a record of the log it cannot read (`held -` once it reads on), and
`lost 1` each time it finds the broker lost records it had acknowledged. At the end of its
stdin (serve stopping it, or gone, even by SIGKILL), or on SIGTERM from anyone else, it ships what
it was told is durable, while the broker takes it, for STOP_SECONDS at most, and exits; serve kills
it after its close's shipping timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from keytrail.audit.shipper import ShippedOffset, Shipper
from keytrail.children import Child, ChildSpec, lower_priority
from keytrail.log_lines import log_to_stderr

__all__ = ["ShipperProcess", "held_line"]

# Named, not __name__: run as `python -m keytrail.audit.shipping`, the child's lines read '__main__'.
log = logging.getLogger("keytrail.audit.shipping")

# How often, at most, the serving process tells the shipper the durable end: a pipe write per
# group commit would cost hundreds of system calls a second, and the shipper lingers 0.25 s anyway.
TELL_SECONDS = 0.05
# How long a stop lets shipping go on (the last records, while the broker takes them): less than
# serve waits for this process (AuditTrail.close's `ship_timeout`, 5 s; a second or two left for
# the exit), which would then kill it with a warning. A broker that accepts connections and never
# answers holds a connection attempt, or a batch, for its 10 s request timeout.
STOP_SECONDS = 3.0
STDIN_DRAIN_SECONDS = 1.0


class ShipperProcess:
    """The serving process's end of the shipper: runs it as a supervised child (restarted after an
    unexpected exit), tells it how far the log is durable, and hears how far Kafka acknowledged:
    `shipped.value` follows, and `shipped_bytes` counts the framed bytes acknowledged (the trail's cap)."""

    def __init__(self, bootstrap: str, log_dir: Path, shipped: ShippedOffset, *, topic: str, partitions: int,
                 durable_end: Callable[[], int], replication_factor: int = 1) -> None:
        self.shipped = shipped
        self.shipped_bytes = 0
        self.held_at: int | None = None  # the offset the shipper is held at (`held` lines), for /metrics
        self.losses = 0  # times the shipper found the broker lost records it had acknowledged (`lost` lines)
        self._durable_end = durable_end
        self._timer: asyncio.TimerHandle | None = None
        argv = (sys.executable, "-m", __name__, str(log_dir), str(shipped.path), bootstrap, topic, str(partitions),
                str(replication_factor))
        self.child = Child(ChildSpec("audit shipper", argv, on_line=self._heard, settings=self._end_line,
                                     stops_at_end_of_input=True, on_exit=self._exited, kafka_client=True))

    @property
    def pid(self) -> int | None:
        """The shipper process's id while it runs (benchmarks count its CPU)."""
        process = self.child.process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        self.child.start()

    def durable(self) -> None:
        """The spool made more records durable: the shipper hears of it within TELL_SECONDS."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(TELL_SECONDS, self._tell)

    async def finish(self, timeout: float) -> None:
        """Tell the shipper the last durable end and stop it: it ships up to there while the broker
        takes records, for at most `timeout` seconds."""
        if self._timer is not None:
            self._timer.cancel()
        if (stdin := self._stdin()) is not None:
            stdin.write(self._end_line())
        await self.child.stop(timeout)  # closes its stdin after that line: the shipper reads both, then stops

    def _tell(self) -> None:
        self._timer = None
        if (stdin := self._stdin()) is not None:
            stdin.write(self._end_line())

    def _stdin(self) -> asyncio.StreamWriter | None:
        """The running shipper's stdin; None between restarts (the next one is told as it starts)."""
        process = self.child.process
        if process is None or process.returncode is not None or process.stdin is None or process.stdin.is_closing():
            return None
        return process.stdin

    def _end_line(self) -> bytes:
        return b"%d\n" % self._durable_end()

    def _exited(self) -> None:
        self.held_at = None  # the next shipper watches anew: it would not say that it reads on

    def _heard(self, line: bytes) -> None:
        """A batch acknowledged: `<shipped offset> <framed bytes>`; or `held <offset>`, `held -`; or `lost 1`."""
        try:
            first, second = line.split()
            if first == b"held":
                self.held_at = None if second == b"-" else int(second)
                return
            if first == b"lost":
                self.losses += 1
                return
            offset, size = int(first), int(second)
        except ValueError:
            log.warning("audit shipper: unexpected output %r", line[:200])
            return
        if offset > self.shipped.value:  # a restarted shipper may resend what one before it reported
            self.shipped.value = offset
            self.shipped_bytes += size


async def _ship(log_dir: Path, shipped: ShippedOffset, bootstrap: str, topic: str, partitions: int,
                replication_factor: int) -> None:
    """The child: ship what the serving process says is durable until told to stop."""
    loop = asyncio.get_running_loop()
    durable_end = 0
    told = asyncio.Event()
    stopping = asyncio.Event()

    def hear(line: bytes) -> None:
        nonlocal durable_end
        durable_end = max(durable_end, int(line))
        told.set()

    shipper = Shipper(bootstrap, log_dir, shipped, partitions=partitions, durable_end=lambda: durable_end,
                      committed=told, on_shipped=_report, topic=topic, replication_factor=replication_factor,
                      on_held=_report_held, on_lost=_report_lost)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    listening = asyncio.create_task(_listen(hear, stopping))
    shipping = asyncio.create_task(shipper.run())
    await stopping.wait()
    # Stopped by serve, which wrote the last durable end and closed the pipe just before: read on to
    # its end (a signal from anyone else leaves the pipe open: then only what is there already).
    await asyncio.wait({listening}, timeout=STDIN_DRAIN_SECONDS)
    await shipper.stop()  # ships what is durable first, if the broker is there
    how_long = ""
    try:
        await asyncio.wait_for(shipping, STOP_SECONDS)
    except TimeoutError:  # a broker not answering: shipping ends, the records stay
        how_long = f" after {STOP_SECONDS:g} s"
    if shipper.shipped.value < durable_end:  # that broker, or one refusing connections
        log.warning("audit shipping to %s stopped%s with records %d to %d not acknowledged: they wait in the event "
                    "log and go out at the next start", bootstrap, how_long, shipper.shipped.value, durable_end - 1)
    listening.cancel()


async def _listen(hear: Callable[[bytes], None], stopping: asyncio.Event) -> None:
    """Durable ends from stdin, one per line, until its end of file."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        async for line in reader:
            hear(line)
    finally:
        stopping.set()


def _report(offset: int, size: int) -> None:
    with contextlib.suppress(OSError):  # serve is gone: its end of our stdin stops this process
        os.write(sys.stdout.fileno(), b"%d %d\n" % (offset, size))


def _report_held(offset: int | None) -> None:
    with contextlib.suppress(OSError):
        os.write(sys.stdout.fileno(), held_line(offset))


def _report_lost() -> None:
    with contextlib.suppress(OSError):
        os.write(sys.stdout.fileno(), b"lost 1\n")


def held_line(offset: int | None) -> bytes:
    """The shipper's `held` line: the offset it is held at, `-` once it reads on."""
    return b"held %s\n" % (b"-" if offset is None else b"%d" % offset)


def main() -> None:
    log_to_stderr()
    log_dir, offset_file, bootstrap, topic, partitions, replication_factor = sys.argv[1:7]
    lower_priority()
    asyncio.run(_ship(Path(log_dir), ShippedOffset(Path(offset_file)), bootstrap, topic, int(partitions),
                      int(replication_factor)))


if __name__ == "__main__":
    main()
