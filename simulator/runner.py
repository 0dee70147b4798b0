"""Run a fleet: start the agents, coordinators and a client, drive the workload and the faults,
watch the fleet, and build the report.

Two modes run the same code:

* **embedded** (:func:`run_embedded`): an in-process broker with simulated links
  (:class:`~edgeagent.simulator.network.SimBroker`) on a :class:`VirtualTimeLoop`: a run of hours
  takes seconds and a seed reproduces it exactly;
* **broker** (:func:`run_broker`): every device is a real MQTT 5 client of a real broker, in
  real time. ``--broker local`` starts a private mosquitto (so ``broker_restart`` can be
  injected); any other URL is used as it is.

:class:`~edgeagent.simulator.simulation.Simulation` (re-exported here) owns everything it
starts; :mod:`~edgeagent.simulator.actions` holds the fault actions of each mode.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from ..broker import BrokerConfig
from ..transport.base import Transport
from ..transport.memory import MemoryTransport
from .devices import FleetPlan, SimDevice
from .network import SimBroker
from .simulation import Progress, RunStats, Simulation
from .vclock import VirtualClock, VirtualTimeLoop

__all__ = ["Progress", "RunStats", "Simulation", "run_broker", "run_embedded"]


def run_embedded(
    plan: FleetPlan, *, spec_file: str = "", progress: Progress | None = None
) -> tuple[dict[str, Any], RunStats]:
    """Run ``plan`` on virtual time in this thread; returns the report and run statistics."""

    async def main() -> tuple[dict[str, Any], RunStats]:
        loop = asyncio.get_running_loop()
        clock = VirtualClock(loop)
        broker = SimBroker(clock=clock, rng=random.Random(f"{plan.spec.seed}/network"))
        default = plan.spec.link
        links = {g.group.name: g.group.link or default for g in plan.groups}

        def make_transport(client_id: str, dev: SimDevice | None) -> Transport:
            t = MemoryTransport(broker, client_id)
            link = links[dev.group] if dev is not None else default
            if link.latency_ms or link.jitter_ms or link.loss:
                state = broker.link(client_id)
                state.latency_s = link.latency_ms / 1000
                state.jitter_s = link.jitter_ms / 1000
                state.loss = link.loss if dev is not None else 0.0
            return t

        sim = Simulation(
            plan, make_transport=make_transport, clock=clock, broker=broker,
            spec_file=spec_file, mode="embedded", progress=progress,
        )  # fmt: skip
        report = await sim.run()
        assert sim.stats is not None
        return report, sim.stats

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


def run_broker(
    plan: FleetPlan,
    broker_url: str,
    *,
    spec_file: str = "",
    progress: Progress | None = None,
    local_broker: Any = None,
    shard: tuple[int, int] = (0, 1),
    identity: Callable[[str, SimDevice | None], BrokerConfig] | None = None,
) -> tuple[dict[str, Any], RunStats]:
    """Run ``plan`` in real time against a real broker; every device is an MQTT 5 client.

    ``identity(client_id, device)``: the broker settings (credentials) of each connection, when
    they differ per client (a secured broker: each device connects as itself).

    ``shard=(k, n)``: run only the devices whose index is k modulo n. Shard 0 leads: it also runs
    the coordinators, the workload and the monitor, waits until every shard's devices are online,
    then publishes a retained start marker that the others align their fault schedules to, and
    writes the report. Start the same spec with each shard index, on one host or several."""
    from ..transport import lite

    config = BrokerConfig.from_url(broker_url)

    async def main() -> tuple[dict[str, Any], RunStats]:
        from ..clock import SYSTEM_CLOCK

        def make_transport(client_id: str, dev: SimDevice | None) -> Transport:
            settings = identity(client_id, dev) if identity is not None else config
            return lite.LiteTransport(settings, client_id=f"{plan.spec.fleet}-{client_id}")

        sim = Simulation(
            plan, make_transport=make_transport, clock=SYSTEM_CLOCK, local_broker=local_broker,
            spec_file=spec_file, mode="broker", progress=progress, shard=shard,
        )  # fmt: skip
        report = await sim.run()
        assert sim.stats is not None
        return report, sim.stats

    return asyncio.run(main())
