"""What a fault does in each mode: the fault actions of a simulation and the device tool's agent
restarts.

Embedded, a fault acts on the :class:`~edgeagent.simulator.network.SimBroker` (partitions, link
loss and delay, message loss, broker restart); against a real broker, a partition is an unclean
disconnect and a later reconnect, and a broker restart stops and starts the private mosquitto
(``--broker local``). Crashes and restarts of an agent are the same in both modes.
:class:`ModeActions` implements :class:`~edgeagent.simulator.faults.FaultActions` and the
simulation side of :mod:`~edgeagent.simulator.sysskills`;
:class:`~edgeagent.simulator.simulation.Simulation` inherits it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..transport.memory import MemoryTransport

if TYPE_CHECKING:
    from ..device import DeviceAgent
    from .devices import SimDevice
    from .network import SimBroker

log = logging.getLogger("edgeagent.simulator.runner")
"""The runner's logger, where these actions logged before they had a module."""


class ModeActions:
    """Fault actions over :attr:`broker` (embedded) or :attr:`local_broker` (broker mode)."""

    broker: SimBroker | None
    local_broker: Any

    def make_agent(self, dev: SimDevice) -> DeviceAgent:
        """A new agent for ``dev`` (on a new transport); the simulation provides it."""
        raise NotImplementedError

    # Fault actions ------------------------------------------------------------------------------

    @property
    def restartable(self) -> bool:
        """Whether a broker_restart fault can be carried out in this mode."""
        return self.broker is not None or self.local_broker is not None

    async def crash(self, device: SimDevice) -> None:
        transport, agent = device.transport, device.agent
        if device.system is not None:
            device.system.crashed()
        if agent is None:
            return
        device.agent = None
        _kill(transport)
        await agent.abort()

    async def restart(self, device: SimDevice) -> None:
        if device.system is not None:
            device.system.booting()
        if device.agent is None:
            await self.make_agent(device).start()

    # The device tool's agent restarts (sysskills.Control) -----------------------------------

    async def stop_agent(self, device: SimDevice) -> None:
        agent, device.agent = device.agent, None
        if agent is not None:  # a crash cancelling the tool meanwhile does not cut the stop short
            await asyncio.shield(agent.stop(grace_s=0))

    async def start_agent(self, device: SimDevice) -> None:
        if device.agent is None:
            await self.make_agent(device).start()

    def partition(self, device: SimDevice) -> None:
        if self.broker is not None and isinstance(device.transport, MemoryTransport):
            self.broker.partition(device.transport)
        elif device.transport is not None:
            _kill(device.transport, reconnect=False)

    def heal(self, device: SimDevice) -> None:
        if self.broker is not None and isinstance(device.transport, MemoryTransport):
            self.broker.heal(device.transport)
        elif device.transport is not None:
            _revive(device.transport)

    def link(self, device: SimDevice, *, loss: float, delay_s: float) -> None:
        if self.broker is not None:
            state = self.broker.link(f"sim-{device.id}")
            state.extra_loss, state.extra_delay_s = loss, delay_s

    def message_loss(self, loss: float) -> None:
        if self.broker is not None:
            self.broker.loss = loss

    def broker_down(self) -> None:
        if self.broker is not None:
            self.broker.disconnect_all()
        elif self.local_broker is not None:
            self.local_broker.stop()

    def broker_up(self) -> None:
        if self.broker is not None:
            self.broker.restart()
        elif self.local_broker is not None:
            self.local_broker.start()


def _kill(transport: Any, *, reconnect: bool = False) -> None:
    """Break a connection uncleanly, as a power cut would (the broker publishes the will)."""
    transport.kill(reconnect=reconnect)


_revivals: set[asyncio.Task[None]] = set()


def _revive(transport: Any) -> None:
    """Reconnect a transport :func:`_kill` left down (broker mode's partition healing)."""

    async def reconnect() -> None:
        try:
            await transport.connect()
        except Exception as exc:  # the broker may be down too: it will be retried by faults
            log.warning("%s could not rejoin: %s", transport.client_id, exc)

    task = asyncio.get_running_loop().create_task(reconnect())
    _revivals.add(task)
    task.add_done_callback(_revivals.discard)
