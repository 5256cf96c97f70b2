"""GET /metrics on serve renders the pipeline's part (keytrail_kms_cost_usd: polars over every usage
file of the data dir, seconds over a year of history) in a worker thread: on the event loop, every
KMS call waited for it once a minute. Scrapes that arrive while one render runs share its result,
and a render that fails fails each of them as it failed the scrape before."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import keytrail.pipeline.prometheus as prometheus
from keytrail.api.credentials import CredentialStore
from keytrail.cli.node import Node, build_node, stop_node
from keytrail.config import ServeSettings
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.prometheus import MetricsExposition
from keytrail.pipeline.query import MetricsStore, OpenEnd

_COST_LINE = 'keytrail_kms_cost_usd{account="111122223333"} 1.5'


async def _get(node: Node, path: str) -> tuple[int, str]:
    """Serve one GET of `path` straight by the node's ASGI app: (status, body)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await node.app({"type": "http", "method": "GET", "path": path, "headers": [], "client": ("127.0.0.1", 5000)},
                   receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]).decode()


@pytest.fixture(params=[False, True], ids=["consumer child", "in-process consumer (--dev-clock)"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    settings = ServeSettings(data_dir=tmp_path, detector=False, dev_clock=request.param)
    built = await build_node(settings, CredentialStore(None, dev_credentials=True), lifespan=False)
    yield built
    await stop_node(built)


class _BlockedCost:
    """`cost_by_account` held until `release` is set; `computing` is set once it runs. On the event
    loop's own thread it fails at once (and says it ran): blocked there, nothing could release it."""

    def __init__(self) -> None:
        self.loop_thread = threading.get_ident()
        self.computing = threading.Event()
        self.release = threading.Event()

    def __call__(self, store: MetricsStore, prices: PriceTable, end: OpenEnd | None = None) -> dict[str, Decimal]:
        self.computing.set()
        if threading.get_ident() == self.loop_thread:
            raise AssertionError("the cost was computed on the event loop")
        self.release.wait()
        return {"111122223333": Decimal("1.5")}


def _count_renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    renders: list[int] = []
    render = MetricsExposition.render

    def counted(self: MetricsExposition, lag: Any, spool_depth: int | None = None) -> str:
        renders.append(1)
        return render(self, lag, spool_depth)

    monkeypatch.setattr(MetricsExposition, "render", counted)
    return renders


async def test_the_node_answers_while_a_scrape_computes_the_cost_and_two_scrapes_share_one_render(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    cost = _BlockedCost()
    monkeypatch.setattr(prometheus, "cost_by_account", cost)
    renders = _count_renders(monkeypatch)
    first = asyncio.create_task(_get(node, "/metrics"))
    second = asyncio.create_task(_get(node, "/metrics"))  # starts (and joins the render) before the cost runs
    try:
        await asyncio.to_thread(cost.computing.wait)
        assert await _get(node, "/_keytrail/health") == (200, '{"status":"ok","version":"0.1.0"}')
        assert not first.done() and not second.done()  # both still wait for the one render
    finally:
        cost.release.set()
    (status, body), again = await first, await second
    assert status == 200 and again == (200, body)
    assert len(renders) == 1
    assert body.startswith("# HELP keytrail_kms_requests_total ")  # the pipeline's part first, as before
    assert f"\n{_COST_LINE}\n" in body and "\n# TYPE keytrail_healthy gauge\n" in body


async def test_a_scrape_after_the_render_ended_renders_again(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    renders = _count_renders(monkeypatch)
    assert (await _get(node, "/metrics"))[0] == 200
    assert (await _get(node, "/metrics"))[0] == 200
    assert len(renders) == 2  # the lag and spool depth are read anew at each scrape


async def test_a_render_that_fails_fails_its_scrapes_and_the_next_scrape_renders_anew(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(store: MetricsStore, prices: PriceTable, end: OpenEnd | None = None) -> dict[str, Decimal]:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(prometheus, "cost_by_account", broken)
    scrapes = [asyncio.create_task(_get(node, "/metrics")) for _ in range(2)]
    for scrape in scrapes:  # raised out of the app, as before: the server answers 500 and logs it
        with pytest.raises(OSError, match="Input/output error"):
            await scrape
    monkeypatch.setattr(prometheus, "cost_by_account", lambda store, prices, end=None: {"111122223333": Decimal("1.5")})
    status, body = await _get(node, "/metrics")
    assert status == 200 and f"\n{_COST_LINE}\n" in body


async def test_a_scrape_that_goes_away_leaves_the_render_to_the_others(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    cost = _BlockedCost()
    monkeypatch.setattr(prometheus, "cost_by_account", cost)
    gone = asyncio.create_task(_get(node, "/metrics"))
    staying = asyncio.create_task(_get(node, "/metrics"))
    try:
        await asyncio.to_thread(cost.computing.wait)
        gone.cancel()  # its client went away: the server cancels it
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        cost.release.set()
    status, body = await staying
    assert status == 200 and f"\n{_COST_LINE}\n" in body
