"""A trivial echo skill, used by the quickstart and the benchmarks."""

from __future__ import annotations

import asyncio

from edgeagent import skill


@skill(max_concurrency=64, max_queue=1024)
async def echo(data: str) -> str:
    """Return `data` unchanged."""
    return data


@skill(max_concurrency=64, max_queue=1024, timeout_s=30)
async def slow_echo(data: str, delay_s: float = 0.5) -> str:
    """Return `data` after `delay_s` seconds (for failover tests and demos)."""
    await asyncio.sleep(delay_s)
    return data
