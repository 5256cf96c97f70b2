"""A closed-loop load from Python: `concurrency` keep-alive clients POSTing one signed request."""

from __future__ import annotations

import asyncio
import time

import httpx

__all__ = ["post_rate"]


async def post_rate(
    endpoint: str, request: tuple[dict[str, str], bytes], calls: int, concurrency: int, *, warm: bool = False,
) -> float:
    """Requests per second for `calls` POSTs of `request`; a non-200 answer is an error.
    With `warm`, one client first runs the whole count untimed (connections, server caches)."""
    headers, body = request
    remaining = calls

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            response = await client.post(endpoint + "/", content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"request failed: {response.status_code} {response.text}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        if warm:
            await worker(client)
            remaining = calls
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return calls / (time.perf_counter() - start)
