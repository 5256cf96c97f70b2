"""GET /metrics while the key store cannot be read: the key inventory is left out of each scrape,
and that is said once, then at most once a minute with the count of scrapes left unsaid, as the
node's other repeated conditions are (log_lines.py): Prometheus scrapes every 15 s, and a hung
PostgreSQL wrote a WARNING per scrape for as long as it hung."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import cast

import pytest

import keytrail.cli.node as node_module
from keytrail.cli.node import Node, _key_inventory, _ScrapeWarnings
from tests.support.clocks import SteppedClock

_LEFT_OUT = "/metrics: keytrail_kms_keys left out"


class _HungStore:
    """A key store whose database never answers (a partition, a stalled server)."""

    async def all_keys(self) -> list[object]:
        await asyncio.Event().wait()
        return []


class _LostStore:
    """A key store whose database refuses the connection."""

    async def all_keys(self) -> list[object]:
        raise ConnectionRefusedError(111, "Connection refused")


def _node(store: object, clock: SteppedClock) -> Node:
    return cast(Node, SimpleNamespace(service=SimpleNamespace(store=store), scrape_warnings=_ScrapeWarnings(clock)))


async def _scrapes(node: Node, clock: SteppedClock, count: int, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines `count` scrapes 15 s apart write, the inventory left out of each."""
    with caplog.at_level(logging.WARNING, logger="keytrail"):
        for _ in range(count):
            assert await _key_inventory(node) == ""
            clock.now += 15
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith(_LEFT_OUT)]


async def test_a_hung_key_store_is_said_once_a_minute_however_often_metrics_is_scraped(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(node_module, "KEY_INVENTORY_SECONDS", 0.01)
    clock = SteppedClock()
    node = _node(_HungStore(), clock)
    said = f"{_LEFT_OUT}, the key store did not answer in 0 s"
    assert await _scrapes(node, clock, 4, caplog) == [said]  # 0, 15, 30 and 45 s
    assert await _scrapes(node, clock, 1, caplog) == [said, f"{said} (and 3 more like it in the last 60 s)"]


async def test_a_key_store_that_cannot_be_read_is_thinned_on_its_own(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # One time for both would let a hang hide the refused connections that followed it.
    monkeypatch.setattr(node_module, "KEY_INVENTORY_SECONDS", 0.01)
    clock = SteppedClock()
    service = SimpleNamespace(store=_HungStore())
    node = cast(Node, SimpleNamespace(service=service, scrape_warnings=_ScrapeWarnings(clock)))
    assert len(await _scrapes(node, clock, 1, caplog)) == 1
    service.store = _LostStore()
    assert await _scrapes(node, clock, 3, caplog) == [
        f"{_LEFT_OUT}, the key store did not answer in 0 s",
        f"{_LEFT_OUT}, the key store cannot be read: [Errno 111] Connection refused"]
