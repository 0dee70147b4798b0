"""One simulation run: start the agents, coordinators and a client, drive the workload and the
faults, watch the fleet, and build the report (see :mod:`~edgeagent.simulator.runner` for the
two modes that set it up).

Every read of time and every sleep goes through the run's clock (the
:class:`~edgeagent.simulator.vclock.VirtualClock` embedded, the system clock against a real
broker); wall-clock figures (``RunStats``, the shards' start marker) are the machine's, on
purpose. What a fault does in each mode is :class:`~edgeagent.simulator.actions.ModeActions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..client import Fleet
from ..clock import Clock
from ..coordinator import Coordinator
from ..device import DeviceAgent
from ..errors import TransportError
from ..protocol import Health, StateMessage, Topics, decode
from ..rules import load_rules
from ..transport.base import Inbound, Transport
from .actions import ModeActions
from .devices import FleetPlan, SimDevice
from .faults import FaultScheduler, check_faults
from .metrics import Recorder, build_report
from .network import SimBroker
from .rollout import RolloutOperator, rollout_report
from .sysskills import attach_systems, system_skills
from .vclock import InlineExecutor
from .workload import WorkloadRunner

Progress = Callable[[str, float], None]
"""Called with a phase (``starting``, ``running``, ``draining``) and its fraction done."""


@dataclass(frozen=True, slots=True)
class RunStats:
    """How the run went for the machine (not part of the report: it varies run to run)."""

    wall_s: float
    start_wall_s: float
    devices: int
    calls: int
    messages_lost: int
    heartbeats: int = 0
    """Health messages the monitor received inside the run's window (0 for a follower shard,
    which does not watch them): what a heartbeat benchmark divides its CPU by."""


class Simulation(ModeActions):
    """One run of a :class:`FleetPlan` (use :func:`~edgeagent.simulator.runner.run_embedded` or
    :func:`~edgeagent.simulator.runner.run_broker`)."""

    def __init__(
        self,
        plan: FleetPlan,
        *,
        make_transport: Callable[[str, SimDevice | None], Transport],
        clock: Clock,
        broker: SimBroker | None = None,
        local_broker: Any = None,
        spec_file: str = "",
        mode: str = "embedded",
        progress: Progress | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.plan = plan
        self.shard = shard
        self._online: set[str] = set()
        self.spec = plan.spec
        self.make_transport = make_transport
        self.clock = clock
        self.broker = broker
        self.local_broker = local_broker
        self.spec_file = spec_file
        self.mode = mode
        self.progress = progress or (lambda phase, fraction: None)
        self.recorder = Recorder()
        self.topics = Topics(self.spec.root, self.spec.fleet)
        self.executor = InlineExecutor()
        self.coordinators: list[Coordinator] = []
        self._loop = asyncio.get_running_loop()
        self._t0 = self.clock.monotonic()
        self._bucket = self.spec.bucket()
        self.stats: RunStats | None = None
        self._heartbeats = 0
        self.rollout: RolloutOperator | None = None

    # Lifecycle ----------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock.monotonic() - self._t0

    def make_agent(self, dev: SimDevice) -> DeviceAgent:
        dev.transport = self.make_transport(f"sim-{dev.id}", dev)
        skills, sets, updating = dev.skills, dev.sets, None
        if dev.system is not None:  # a rollout: the system skills, on the release on its disk
            skills, sets, updating = system_skills(dev)
        dev.agent = DeviceAgent(
            dev.config,
            transport=dev.transport,
            skills=skills,
            skill_sets=sets,
            events=dev.events,
            clock=self.clock,
            executor=self.executor,
            updating=updating,
        )
        return dev.agent  # type: ignore[no-any-return]

    async def run(self) -> dict[str, Any]:
        wall0 = time.perf_counter()
        k, n = self.shard
        everyone = self.plan.all_devices()
        devices = [d for i, d in enumerate(everyone) if i % n == k]
        check_faults(self.spec.faults, self.mode, broker_restartable=self.restartable)
        catalog = attach_systems(self.plan, self) if self.spec.rollout is not None else None
        monitor = self.make_transport(f"sim-monitor-{k}", None)
        if k > 0:
            return await self._follow(monitor, devices, wall0)
        await monitor.subscribe(self.topics.all_states(), self._on_state, qos=1)
        await monitor.subscribe(self.topics.all_health(), self._on_health)
        await monitor.connect()
        if n > 1:  # a stale start marker from an earlier run must not start the followers
            await monitor.publish(self._marker_topic, b"", qos=1, retain=True)
        await self._start(devices)
        if n > 1:
            await self._wait_for_shards(len(everyone))
        c = self.spec.coordinator
        rules = load_rules(self.spec.resolve(c.rules)) if c.rules is not None else None
        for i in range(c.replicas):
            coord = Coordinator(
                self.make_transport(f"sim-coord-{i}", None),
                root=self.spec.root,
                fleet=self.spec.fleet,
                retry_budget=c.retry_budget,
                hedge=c.hedge,
                clock=self.clock,
                rng=random.Random(f"{self.spec.seed}/coordinator/{i}"),
                rules=rules,
            )
            await coord.start()
            self.coordinators.append(coord)
        fleet = Fleet(
            transport=self.make_transport("sim-client", None),
            root=self.spec.root,
            fleet=self.spec.fleet,
            clock=self.clock,
        )
        await fleet.__aenter__()
        start_wall = time.perf_counter() - wall0
        router = self._router() if any(w.ask for w in self.spec.workload) else None
        self._t0 = self.clock.monotonic()
        if n > 1:
            marker = json.dumps({"name": self.spec.name, "wall": time.time()}).encode()
            await monitor.publish(self._marker_topic, marker, qos=1, retain=True)
        workload = WorkloadRunner(self.spec, fleet, self.recorder, self.plan.device_group, router)
        local = {d.id for d in devices} if n > 1 else None
        faults = FaultScheduler(self.plan, self, self.recorder, local)
        fault_tasks = faults.tasks(self._t0, self.spec.duration_s)
        ticker = self._loop.create_task(self._tick())
        operator = None
        if catalog is not None:
            operator = RolloutOperator(
                self.spec, catalog, self.make_transport, self.clock, self._now
            )
            self.rollout = operator
            fault_tasks.append(self._loop.create_task(operator.run()))
        try:
            await workload.run(self.spec.duration_s)
            await self.clock.sleep(max(0.0, self.spec.duration_s - self._now()))
            self.progress("running", 1.0)
            end_s = self._now()
            self.progress("draining", 0.0)
            await workload.drain()
            if operator is not None:
                operator.stop.set()
                await self.clock.sleep(2.0)  # the driver's loop wakes once a second
                self.recorder.rollout = rollout_report(operator, self.plan.all_devices())
        finally:
            ticker.cancel()
            for task in fault_tasks:
                task.cancel()
            await asyncio.gather(*fault_tasks, ticker, return_exceptions=True)
        report = build_report(
            self.spec,
            self.recorder,
            mode=self.mode,
            spec_file=self.spec_file,
            groups={
                g.group.name: {"profile": g.profile.name, "members": [d.id for d in g.devices]}
                for g in self.plan.groups
            },
            calibration={
                g.group.name: {name: cost.as_dict() for name, cost in sorted(g.costs.items())}
                for g in self.plan.groups
            },
            memory={
                g.group.name: {
                    "budget_mb": g.budget_mb,
                    "used_mb": round(g.memory_mb, 2),
                    "source": g.memory_source,
                    "ok": g.memory_mb <= g.budget_mb,
                }
                for g in self.plan.groups
            },
            end_s=end_s,
        )
        report["coordinators"] = [c.statistics() for c in self.coordinators]
        for dev in devices:  # the device tools' work ends with the run
            if dev.system is not None:
                dev.system.crashed()
        await fleet.close()
        for coord in self.coordinators:
            await coord.stop()
            await coord.transport.close()
        for dev in devices:
            if dev.agent is not None:
                await self._stop_agent(dev)
        if n > 1:
            await monitor.publish(self._marker_topic, b"", qos=1, retain=True)
        await monitor.close()
        lost = self.broker.lost_messages if self.broker is not None else 0
        self.stats = RunStats(
            round(time.perf_counter() - wall0, 3), round(start_wall, 3), len(devices),
            len(self.recorder.calls), lost, self._heartbeats,
        )  # fmt: skip
        return report

    async def _start(self, devices: list[SimDevice]) -> None:
        for i, dev in enumerate(devices):
            await self.make_agent(dev).start()
            if i % 200 == 199 or i == len(devices) - 1:
                self.progress("starting", (i + 1) / len(devices))

    @property
    def _marker_topic(self) -> str:
        return f"{self.topics.base}/sim/start"

    async def _wait_for_shards(self, total: int, timeout: float = 300.0) -> None:
        """The lead shard waits until every shard's devices are online."""
        deadline = self.clock.monotonic() + timeout
        while len(self._online) < total:
            if self.clock.monotonic() > deadline:
                raise TransportError(
                    f"only {len(self._online)} of {total} devices came online within "
                    f"{timeout:g} s: are all {self.shard[1]} shards running against this broker?"
                )
            self.progress("waiting for shards", len(self._online) / total)
            await self.clock.sleep(0.2)

    async def _follow(
        self, monitor: Transport, devices: list[SimDevice], wall0: float
    ) -> dict[str, Any]:
        """A follower shard: run its devices and their faults on the lead shard's clock."""
        started = time.time()
        marker: asyncio.Future[float] = self._loop.create_future()

        cleared = asyncio.Event()

        def on_marker(msg: Inbound) -> None:
            if not msg.payload and marker.done():
                cleared.set()  # the lead has its report: the run is over
                return
            try:
                wall = float(json.loads(msg.payload)["wall"])
            except (ValueError, KeyError, TypeError):
                return
            if wall >= started - 1 and not marker.done():
                marker.set_result(wall)

        await monitor.subscribe(self._marker_topic, on_marker, qos=1)
        await monitor.connect()
        await self._start(devices)
        start_wall = time.perf_counter() - wall0
        self.progress("waiting for lead", 0.0)
        wall = await marker
        self._t0 = self.clock.monotonic() - (time.time() - wall)
        faults = FaultScheduler(self.plan, self, self.recorder, {d.id for d in devices}, False)
        tasks = faults.tasks(self._t0, self.spec.duration_s)
        try:
            await self.clock.sleep(max(0.0, self.spec.duration_s - self._now()))
            self.progress("running", 1.0)
            # Stay up until the lead has drained and reported (its calls may still be running).
            with contextlib.suppress(TimeoutError):
                async with self.clock.timeout(120):
                    await cleared.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for dev in devices:
            if dev.agent is not None:
                await self._stop_agent(dev)
        await monitor.close()
        self.stats = RunStats(
            round(time.perf_counter() - wall0, 3), round(start_wall, 3), len(devices), 0, 0
        )
        return {"name": self.spec.name, "mode": self.mode, "shard": list(self.shard),
                "devices": len(devices), "faults_applied": faults.applied}  # fmt: skip

    async def _stop_agent(self, dev: SimDevice) -> None:
        await dev.agent.stop(grace_s=0)

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(self._bucket)
            self.progress("running", min(1.0, self._now() / self.spec.duration_s))

    def _router(self) -> Any:
        from ..nlu import Catalog, Router

        manifests = [d.agent.manifest() for d in self.plan.all_devices() if d.agent is not None]
        return Router(Catalog.from_manifests(manifests))

    # The monitor --------------------------------------------------------------------------------

    def _on_state(self, msg: Inbound) -> None:
        try:
            state = decode(msg.payload)
        except ValueError:
            return
        if not isinstance(state, StateMessage) or state.device not in self.plan.device_group:
            return
        t = max(0.0, self._now())
        if state.status == "offline":
            self._online.discard(state.device)
            self.recorder.went_offline(state.device, t)
        elif state.status == "online":
            self._online.add(state.device)
            self.recorder.came_online(state.device, t)

    def _on_health(self, msg: Inbound) -> None:
        now = self._now()
        in_window = 0 <= now < self.spec.duration_s
        if in_window:
            self._heartbeats += 1
        try:
            health = decode(msg.payload)
        except ValueError:
            return
        if not isinstance(health, Health):
            return
        group = self.plan.device_group.get(health.device)
        if group is not None and in_window:
            self.recorder.queue_depth(group, int(now // self._bucket), health.queue_depth)

    # Fault actions ------------------------------------------------------------------------------
