"""Timing request/response calls: sequential latency, then throughput with calls in flight.

Shared by the benchmarks that compare ways of calling an echo (raw paho, ``Fleet.call``,
aiomqtt, a routed call): each measurement warms up, collects garbage, then times ``calls``
calls one at a time and ``calls`` calls with ``inflight`` outstanding, reading the CPU time of
every process involved around each part (:class:`~benchmarks._common.system.CpuMeter`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from .stats import Sample, make_sample
from .system import CpuMeter


@dataclass(frozen=True, slots=True)
class Load:
    """How many calls a measurement makes: after ``warmup`` calls, ``calls`` one at a time
    (latency), then ``calls`` with ``inflight`` outstanding (a closed loop: throughput)."""

    calls: int
    warmup: int
    inflight: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Load:
        return cls(calls=args.calls, warmup=args.warmup, inflight=args.inflight)


class Requester(Protocol):
    """A blocking requester (e.g. a single-threaded paho client)."""

    def sequential(self, calls: int) -> list[float]: ...

    def pipelined(self, calls: int, inflight: int) -> float: ...


def echo_payload(size: int) -> bytes:
    """A JSON echo request, ``{"data":"xxx…"}``, of exactly ``size`` bytes."""
    overhead = len(b'{"data":""}')
    if size < overhead:
        raise SystemExit(f"--payload must be at least {overhead} bytes")
    return b'{"data":"' + b"x" * (size - overhead) + b'"}'


def measure_requester(requester: Requester, load: Load, meter: CpuMeter) -> Sample:
    """Warm up, time ``load.calls`` sequential calls, then pipelined ones; CPU per call."""
    requester.sequential(load.warmup)
    gc.collect()
    before = meter.snapshot()
    latencies = requester.sequential(load.calls)
    cpu_seq = meter.per_call(before, load.calls)
    requester.pipelined(load.warmup, load.inflight)
    gc.collect()
    before = meter.snapshot()
    rate = requester.pipelined(load.calls, load.inflight)
    cpu_pipe = meter.per_call(before, load.calls)
    return make_sample(latencies, rate, cpu_seq, cpu_pipe)


async def sequential_calls(call: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    """``calls`` awaited one after another; each one's latency, seconds."""
    latencies = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - t0)
    return latencies


async def pipelined_calls(
    call: Callable[[], Awaitable[object]], calls: int, inflight: int
) -> float:
    """``calls`` calls from ``inflight`` worker tasks (each starts its next call when its last
    one is answered); calls per second."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as workers:
        for _ in range(min(inflight, calls)):
            workers.create_task(worker())
    return calls / (time.perf_counter() - t0)


async def measure_calls(
    call: Callable[[], Awaitable[object]], load: Load, meter: CpuMeter
) -> Sample:
    """:func:`measure_requester` for an async call."""
    await sequential_calls(call, load.warmup)
    gc.collect()
    before = meter.snapshot()
    latencies = await sequential_calls(call, load.calls)
    cpu_seq = meter.per_call(before, load.calls)
    await pipelined_calls(call, load.warmup, load.inflight)
    gc.collect()
    before = meter.snapshot()
    rate = await pipelined_calls(call, load.calls, load.inflight)
    cpu_pipe = meter.per_call(before, load.calls)
    return make_sample(latencies, rate, cpu_seq, cpu_pipe)
