"""The workload: calls arriving as Poisson processes, sent through the coordinator, recorded.

Each workload entry has its own generator seeded from the spec's seed and the entry's label, so
adding an entry does not shift the others' arrivals. A call is routed by the coordinator with
``explain`` on: the routing record says which device answered (hence its group) and how many
attempts failed over. Plain-language entries go through the same layered router ``edgeagent ask``
uses, built once from the fleet's manifests; a request the router is unsure about is recorded as
``not_understood``.
"""

from __future__ import annotations

import asyncio
import importlib
import random
from collections.abc import Callable
from typing import Any

from ..client import Fleet
from ..errors import CallError, ConfigError, TransportError
from .metrics import CallRecord, Recorder
from .spec import FleetSpec, Workload

InputFn = Callable[[random.Random], Any]


def load_input_fn(spec: str, where: str) -> InputFn:
    """Import ``module:function`` (modules next to the spec are importable)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError(f"{where}: input_from must be 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{where}: {spec!r} is not a function")
    return fn  # type: ignore[no-any-return]


class WorkloadRunner:
    """Drive every workload entry until ``stop`` simulated seconds, recording each call."""

    def __init__(
        self,
        spec: FleetSpec,
        fleet: Fleet,
        recorder: Recorder,
        device_group: dict[str, str],
        router: Any = None,
    ) -> None:
        self.spec = spec
        self.fleet = fleet
        self.recorder = recorder
        self.device_group = device_group
        self.router = router
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._calls: dict[asyncio.Task[None], None] = {}
        self._inputs: dict[str, InputFn] = {}
        for i, w in enumerate(spec.workload):
            if w.input_from is not None:
                self._inputs[w.label] = load_input_fn(w.input_from, f"workload.{i}.input_from")

    def _now(self) -> float:
        return self._loop.time() - self._start

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def run(self, until: float) -> None:
        """Generate arrivals until ``until`` (seconds from start); calls then finish alone."""
        self._start = self._loop.time()
        async with asyncio.TaskGroup() as tg:
            for w in self.spec.workload:
                tg.create_task(self._generate(w, until), name=f"workload-{w.label}")

    async def drain(self) -> None:
        """Wait for the calls still in flight (each ends by its own deadline)."""
        while self._calls:
            await asyncio.gather(*list(self._calls), return_exceptions=True)

    async def _generate(self, w: Workload, until: float) -> None:
        rng = random.Random(f"{self.spec.seed}/workload/{w.label}")
        stop = min(until, w.stop_s if w.stop_s is not None else until)
        t = w.start_s + rng.expovariate(w.rate_per_s)
        while t < stop:
            await asyncio.sleep(max(0.0, t - self._now()))
            if w.ask is not None:
                task = self._loop.create_task(self._ask(w, rng.choice(w.ask), t))
            else:
                fn = self._inputs.get(w.label)
                value = fn(rng) if fn is not None else w.input
                task = self._loop.create_task(self._call(w, w.skill or "", value, w.where, t))
            self._calls[task] = None
            task.add_done_callback(self._forget)
            t += rng.expovariate(w.rate_per_s)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._calls.pop(task, None)

    async def _ask(self, w: Workload, text: str, t: float) -> None:
        from ..nlu import Interpretation

        reading = self.router.route(text) if self.router is not None else None
        if not isinstance(reading, Interpretation):
            self.recorder.call(CallRecord(t, w.label, "(not understood)", None, 0.0,
                                          "not_understood", 0))  # fmt: skip
            return
        where = dict(reading.where or {})
        await self._call(w, reading.skill, reading.input, where, t, mode=reading.mode)

    async def _call(
        self,
        w: Workload,
        skill: str,
        value: Any,
        where: dict[str, str],
        t: float,
        mode: str | None = None,
    ) -> None:
        started = self._loop.time()
        route: dict[str, Any] | None = None
        try:
            _, route = await self.fleet.call_skill(
                skill, value, where=where or None, mode=mode or w.mode, timeout=w.timeout_s,
                explain=True,
            )  # fmt: skip
            outcome = "ok"
        except CallError as exc:
            outcome, route = exc.code, exc.route
        except TransportError:
            outcome = "unavailable"
        ms = (self._loop.time() - started) * 1000
        attempts = (route or {}).get("attempts") or []
        device = None
        for a in attempts:
            if a.get("outcome") == "ok":
                device = a.get("device")
        if device is None and attempts:
            device = attempts[-1].get("device")
        failovers = sum(1 for a in attempts if a.get("outcome") != "ok")
        group = self.device_group.get(device) if isinstance(device, str) else None
        self.recorder.call(CallRecord(t, w.label, skill, group, round(ms, 3), outcome, failovers))
