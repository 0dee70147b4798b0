"""Prometheus metrics for edgeagent's services: the coordinator, each agent, the fleet (bridge).

Each service gets a private ``CollectorRegistry`` (never the process-wide one: the simulator
runs hundreds of agents in one process, the tests many services) holding one custom collector
that reads the service's own statistics at scrape time, served by a small asyncio HTTP server on
the service's event loop (:mod:`~edgeagent.bridges.metrics_http`)::

    server = await serve_coordinator_metrics(coordinator, port=9107)   # coordinator run
    server = await serve_agent_metrics(agent, port=9100)               # metrics_port: in YAML
    await FleetMetrics(fleet, port=9108).run()                         # bridge run --metrics
    ...
    await server.close()

Metric names, labels and limits: docs/metrics.md; a Grafana dashboard: docs/grafana-dashboard.json.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from edgeagent.clock import SYSTEM_CLOCK, Clock

from .metrics_fleet import FleetCollector, FleetMetrics, FleetSnapshot
from .metrics_http import MetricsServer

if TYPE_CHECKING:
    from edgeagent.coordinator import Coordinator
    from edgeagent.device import DeviceAgent

__all__ = [
    "FleetCollector",
    "FleetMetrics",
    "FleetSnapshot",
    "MetricsServer",
    "agent_registry",
    "coordinator_registry",
    "serve_agent_metrics",
    "serve_coordinator_metrics",
]


def coordinator_registry(coordinator: Coordinator) -> CollectorRegistry:
    """A private registry with the coordinator's collector."""
    from .metrics_coordinator import CoordinatorCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoordinatorCollector(coordinator))
    return registry


def agent_registry(agent: DeviceAgent) -> CollectorRegistry:
    """A private registry with the agent's collector."""
    from .metrics_agent import AgentCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    return registry


async def serve_coordinator_metrics(
    coordinator: Coordinator, *, host: str = "127.0.0.1", port: int = 0, clock: Clock = SYSTEM_CLOCK
) -> MetricsServer:
    """Serve the coordinator's metrics until the returned server is closed."""
    server = MetricsServer(coordinator_registry(coordinator), host=host, port=port, clock=clock)
    await server.start()
    return server


async def serve_agent_metrics(
    agent: DeviceAgent, *, host: str = "127.0.0.1", port: int = 0, clock: Clock = SYSTEM_CLOCK
) -> MetricsServer:
    """Serve the agent's metrics until the returned server is closed."""
    server = MetricsServer(agent_registry(agent), host=host, port=port, clock=clock)
    await server.start()
    return server
