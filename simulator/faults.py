"""Fault injection: turn the spec's fault schedule into timed actions on devices and the network.

Each fault is a task that sleeps (virtual time in embedded mode) until it starts, applies itself,
writes a timeline entry, waits ``duration_s`` and undoes itself. Random faults draw their start
times per device from a Poisson process seeded by the spec's seed and the fault's name. What a
fault does is in :class:`FaultActions`, which the runner implements for its mode: in broker mode
the network faults (``link_loss``, ``delay``, ``message_loss``) cannot be simulated and are
rejected before the run starts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Protocol

from ..errors import ConfigError
from .devices import FleetPlan, SimDevice
from .metrics import Recorder
from .spec import Fault

NETWORK_FAULTS = frozenset({"link_loss", "delay", "message_loss"})
Thunk = Callable[[], None]


class FaultActions(Protocol):
    """What the runner can do to its fleet."""

    async def crash(self, device: SimDevice) -> None: ...
    async def restart(self, device: SimDevice) -> None: ...
    def partition(self, device: SimDevice) -> None: ...
    def heal(self, device: SimDevice) -> None: ...
    def link(self, device: SimDevice, *, loss: float, delay_s: float) -> None: ...
    def message_loss(self, loss: float) -> None: ...
    def broker_down(self) -> None: ...
    def broker_up(self) -> None: ...


def check_faults(faults: list[Fault], mode: str, *, broker_restartable: bool) -> None:
    """Reject faults this mode cannot carry out, before anything starts."""
    for i, f in enumerate(faults):
        if mode == "broker" and f.kind in NETWORK_FAULTS:
            raise ConfigError(
                f"faults.{i} ({f.label}): {f.kind} needs the embedded network; a real broker's "
                "links are not simulated (run without --broker)"
            )
        if f.kind == "broker_restart" and not broker_restartable:
            raise ConfigError(
                f"faults.{i} ({f.label}): broker_restart needs a broker the simulator runs: "
                "embedded mode or --broker local"
            )


def _describe(f: Fault) -> str:
    return {
        "crash": f"agents crash (last will) and restart after {f.duration_s:g} s",
        "slow": f"skills {f.factor:g}x slower (thermal throttling) for {f.duration_s:g} s",
        "link_loss": f"{f.loss:.0%} of messages lost on the group's links for {f.duration_s:g} s",
        "delay": f"+{f.delay_ms:g} ms on the group's links for {f.duration_s:g} s",
        "partition": f"the group cannot reach the broker for {f.duration_s:g} s",
        "message_loss": f"{f.loss:.0%} of deliveries lost broker-wide for {f.duration_s:g} s",
        "broker_restart": f"the broker is down for {f.duration_s:g} s",
        "flap": f"devices drop off and rejoin every {f.period_s:g} s for {f.duration_s:g} s",
    }[f.kind]


class FaultScheduler:
    def __init__(
        self,
        plan: FleetPlan,
        actions: FaultActions,
        recorder: Recorder,
        local: set[str] | None = None,
        lead: bool = True,
    ) -> None:
        """``local``: the devices this process runs (a shard), None for all; only the ``lead``
        shard records the timeline and applies broker-wide faults."""
        self.local = local
        self.lead = lead
        self.plan = plan
        self.actions = actions
        self.recorder = recorder
        self._loop = asyncio.get_running_loop()
        self.applied = 0
        self.start = self._loop.time()

    def _now(self) -> float:
        return self._loop.time() - self.start

    def tasks(self, start: float, duration_s: float) -> list[asyncio.Task[None]]:
        """Create one task per fault occurrence (targets and times drawn now, from the seed)."""
        self.start = start
        seed = self.plan.spec.seed
        out: list[asyncio.Task[None]] = []
        for i, f in enumerate(self.plan.spec.faults):
            rng = random.Random(f"{seed}/fault/{i}/{f.label}")
            devices = self._group(f.group)
            if f.at_s is not None:
                chosen = devices
                if f.count is not None:
                    chosen = sorted(rng.sample(devices, f.count), key=lambda d: devices.index(d))
                out.append(self._loop.create_task(self._run(f, f.at_s, chosen)))
                continue
            assert f.random_per_hour is not None
            rate = f.random_per_hour / 3600.0
            for dev in devices:
                t = rng.expovariate(rate)
                while t < duration_s:
                    out.append(self._loop.create_task(self._run(f, t, [dev])))
                    t += f.duration_s + rng.expovariate(rate)
        return out

    def _group(self, name: str | None) -> list[SimDevice]:
        if name is None:
            return []
        return next(g.devices for g in self.plan.groups if g.group.name == name)

    async def _run(self, f: Fault, at: float, targets: list[SimDevice]) -> None:
        await asyncio.sleep(max(0.0, at - self._now()))
        t0 = self._now()
        ids = [d.id for d in targets]
        if self.lead:
            self.recorder.fault(t0, t0 + f.duration_s, f.kind, f.label, ids, _describe(f))
        if self.local is not None:
            targets = [d for d in targets if d.id in self.local]
        if f.group is None and not self.lead:
            return
        self.applied += 1
        if f.kind == "crash":
            await asyncio.gather(*(self.actions.crash(d) for d in targets))
            await asyncio.sleep(f.duration_s)
            await asyncio.gather(*(self.actions.restart(d) for d in targets))
        elif f.kind == "flap":
            await self._flap(targets, t0 + f.duration_s, f.period_s)
        else:
            held = self._held(f, targets)
            if held is None:
                return
            begin, end = held
            begin()
            await asyncio.sleep(f.duration_s)
            end()

    def _held(self, f: Fault, targets: list[SimDevice]) -> tuple[Thunk, Thunk] | None:
        """A fault that holds for its duration: what starts it and what ends it."""
        a = self.actions
        kind = f.kind
        if kind == "slow":
            return _slow(targets, f.factor)
        if kind in ("link_loss", "delay"):
            loss = f.loss if kind == "link_loss" else 0.0
            delay = f.delay_ms / 1000 if kind == "delay" else 0.0
            return _each(targets, lambda d: a.link(d, loss=loss, delay_s=delay)), _each(
                targets, lambda d: a.link(d, loss=0.0, delay_s=0.0)
            )
        if kind == "partition":
            return _each(targets, a.partition), _each(targets, a.heal)
        if kind == "message_loss":
            return (lambda: a.message_loss(f.loss)), (lambda: a.message_loss(0.0))
        if kind == "broker_restart":
            return a.broker_down, a.broker_up
        return None

    async def _flap(self, targets: list[SimDevice], end: float, period_s: float) -> None:
        """Partition and heal the targets every ``period_s`` until ``end``."""
        a = self.actions
        while self._now() < end:
            for d in targets:
                a.partition(d)
            await asyncio.sleep(min(period_s, max(0.0, end - self._now())))
            for d in targets:
                a.heal(d)
            if self._now() >= end:
                break
            await asyncio.sleep(min(period_s, max(0.0, end - self._now())))


def _slow(targets: list[SimDevice], factor: float) -> tuple[Thunk, Thunk]:
    def begin() -> None:
        for d in targets:
            d.slowdown *= factor

    def end() -> None:
        for d in targets:
            d.slowdown /= factor

    return begin, end


def _each(targets: list[SimDevice], action: Callable[[SimDevice], None]) -> Thunk:
    def run() -> None:
        for d in targets:
            action(d)

    return run
