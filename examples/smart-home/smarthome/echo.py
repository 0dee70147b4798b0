"""A trivial echo skill, used by the quickstart and the benchmarks."""

from __future__ import annotations

from edgeagent import skill


@skill(max_concurrency=64, max_queue=1024)
async def echo(data: str) -> str:
    """Return `data` unchanged."""
    return data
