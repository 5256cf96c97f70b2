"""`keytrail consume --kafka` (a real process, the real broker) over poisoned audit values: each
skipped, and nothing of polars' insides on the consumer's stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keytrail.audit import schema
from keytrail.pipeline.synthetic import SyntheticSettings, generate_events
from tests.support.services import kafka_broker, kafka_topic

pytestmark = pytest.mark.integration

from aiokafka import AIOKafkaProducer  # noqa: E402

from keytrail.pipeline.kafka_source import AUDIT_TOPIC  # noqa: E402


def _poisoned(value: bytes) -> list[bytes]:
    """Values of a known writer holding a length far past their end, which polars' reader sliced
    by unchecked (a Rust panic): another producer's bytes behind a copied header (the keyArn
    branch, then a length of 2**31), and an event whose eventSource length was damaged."""
    _, start = schema._event_id_span(value)  # eventTime, then eventSource, follow eventID
    _, source = schema._read_long(value, start)
    _, text = schema._read_long(value, source)
    return [value[:10] + b"\x02\x80\x80\x80\x80\x10" + b"x" * 40,
            value[:source] + schema.avro_long(2**40) + value[text:]]


async def test_consume_skips_values_holding_a_length_past_their_end_without_panic_text(tmp_path: Path) -> None:
    """Each such value printed Rust's panic text (with RUST_BACKTRACE set, a backtrace of 35
    frames) on the consumer's stderr, once for each batch it came in, though it was skipped; now it
    is refused before polars reads it: one warning names the offsets, stderr holds nothing else."""
    events = list(generate_events(60, SyntheticSettings(keys=5, principals=5), seed=31))
    values = [schema.encode(event) for event in events]
    poisoned = _poisoned(values[0])
    with kafka_broker() as bootstrap:
        await kafka_topic(bootstrap, AUDIT_TOPIC, 1)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for value in [*values[:30], *poisoned, *values[30:]]:
                await producer.send(AUDIT_TOPIC, value, key=b"k")
            await producer.flush()
        finally:
            await producer.stop()
        done = subprocess.run(
            [sys.executable, "-m", "keytrail", "consume", "--kafka", bootstrap, "--data-dir", str(tmp_path),
             "--group", "poisoned", "--exit-when-idle", "3"],
            capture_output=True, text=True, timeout=120, env=_with_backtraces())
    assert done.returncode == 0, done.stderr
    assert "panicked" not in done.stderr and "backtrace" not in done.stderr, done.stderr
    assert f"{AUDIT_TOPIC}-0: skipped 2 audit values that cannot be decoded (offsets 30, 31)" in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"consumed {len(values) + 2} records"), done.stderr


def _with_backtraces() -> dict[str, str]:
    """The environment, with RUST_BACKTRACE=1 as many a shell sets it (the panic text at its longest)."""
    import os

    return {**os.environ, "RUST_BACKTRACE": "1"}
