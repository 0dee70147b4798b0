"""Fleet-wide metrics for the bridge: every device as its retained state, manifest and health say.

:class:`FleetSnapshot` is the pure core: fed the messages a :class:`~edgeagent.client.Fleet`'s
``watch()`` yields, it holds the latest state, manifest and health per device (at most
``max_devices``). :class:`FleetCollector` turns it into metric families at scrape time (devices
by status and profile, per-device calls, errors, in flight, queue and memory from health,
release per device); :class:`FleetMetrics` is the I/O shell that follows the fleet and serves
``/metrics`` until cancelled. Names: docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edgeagent.client import Fleet
from edgeagent.clock import SYSTEM_CLOCK, Clock
from edgeagent.metrics_stats import DEVICE_LABELS, OTHER, SKILL_LABELS
from edgeagent.protocol import Health, Manifest, Message, StateMessage

from .metrics_families import capped, fold_sum, release_info
from .metrics_http import MetricsServer

__all__ = ["FleetCollector", "FleetMetrics", "FleetSnapshot"]

log = logging.getLogger("edgeagent.metrics")

P = "edgeagent_fleet_"
#: Devices the snapshot holds (as many as a Fleet's view).
MAX_DEVICES = 10_000
#: How often devices whose retained messages were cleared are dropped, seconds.
RECONCILE_S = 30.0


@dataclass(slots=True)
class DeviceSeen:
    status: str = "unknown"
    manifest: Manifest | None = None
    health: Health | None = None


@dataclass(slots=True)
class FleetSnapshot:
    """The latest state, manifest and health of each device (pure)."""

    max_devices: int = MAX_DEVICES
    devices: dict[str, DeviceSeen] = field(default_factory=dict)
    ignored: int = 0

    def apply(self, message: Message) -> bool:
        """Take a state, manifest or health message in; False when ignored (not one of those,
        or a new device past ``max_devices``)."""
        if not isinstance(message, StateMessage | Manifest | Health):
            return False
        seen = self.devices.get(message.device)
        if seen is None:
            if len(self.devices) >= self.max_devices:
                self.ignored += 1
                return False
            seen = self.devices[message.device] = DeviceSeen()
        if isinstance(message, StateMessage):
            seen.status = message.status
        elif isinstance(message, Manifest):
            seen.manifest = message
        else:
            seen.health = message
            if seen.status in ("offline", "unknown"):
                seen.status = "online"  # only a live agent sends health
        return True

    def keep_only(self, devices: set[str]) -> None:
        """Forget devices not in ``devices`` (their retained messages were cleared)."""
        for gone in [d for d in self.devices if d not in devices]:
            del self.devices[gone]


class FleetCollector(Collector):
    """Metric families from a :class:`FleetSnapshot`, device and skill labels capped."""

    def __init__(
        self,
        snapshot: FleetSnapshot,
        *,
        device_labels: int = DEVICE_LABELS,
        skill_labels: int = SKILL_LABELS,
    ) -> None:
        self.snapshot = snapshot
        self.device_labels = device_labels
        self.skill_labels = skill_labels

    def collect(self) -> Iterator[Metric]:
        devices = self.snapshot.devices
        by_kind: dict[tuple[str, str], int] = {}
        for seen in devices.values():
            profile = (seen.manifest.profile if seen.manifest else None) or ""
            key = (seen.status, profile)
            by_kind[key] = by_kind.get(key, 0) + 1
        count = GaugeMetricFamily(
            P + "devices", "Devices known, by status and profile.", labels=["status", "profile"]
        )
        for (status, profile), n in sorted(by_kind.items()):
            count.add_metric([status, profile], n)
        yield count
        labels = capped(devices, self.device_labels)
        up = GaugeMetricFamily(
            P + "device_up",
            "1 if the device is online, else 0 (folded devices: how many are online).",
            labels=["device"],
        )
        online = {d: float(s.status == "online") for d, s in devices.items()}
        for device, value in sorted(fold_sum(online, self.device_labels).items()):
            up.add_metric([device], value)
        yield up
        yield from self._health(labels)
        yield from self._skills()
        yield release_info(
            "Each device's release and agent version, from its manifest.",
            labels,
            {d: s.manifest for d, s in devices.items()},
        )

    def _health(self, labels: dict[str, str]) -> Iterator[Metric]:
        """Per-device figures from each device's last health message."""
        healths = {d: s.health for d, s in self.snapshot.devices.items() if s.health is not None}
        figures: list[tuple[str, str, bool, dict[str, float]]] = [
            (
                "device_calls_served",
                "Calls a device answered ok (its last health).",
                True,
                {d: h.calls_served for d, h in healths.items()},
            ),
            (
                "device_calls_failed",
                "Calls a device answered with an error (its last health).",
                True,
                {d: h.calls_failed for d, h in healths.items()},
            ),
            (
                "device_calls_dropped",
                "Requests a device dropped (its last health).",
                True,
                {d: h.calls_dropped for d, h in healths.items()},
            ),
            (
                "device_in_flight",
                "Calls running on a device (its last health).",
                False,
                {d: h.in_flight for d, h in healths.items()},
            ),
            (
                "device_queue_depth",
                "Calls waiting on a device (its last health).",
                False,
                {d: h.queue_depth for d, h in healths.items()},
            ),
            (
                "device_resident_memory_bytes",
                "A device agent's resident memory, bytes (its last health).",
                False,
                {
                    d: h.memory_rss_bytes
                    for d, h in healths.items()
                    if h.memory_rss_bytes is not None
                },
            ),
        ]
        for name, doc, counter, values in figures:
            family: Metric = (
                CounterMetricFamily(P + name, doc, labels=["device"])
                if counter
                else GaugeMetricFamily(P + name, doc, labels=["device"])
            )
            folded: dict[str, float] = {}
            for device, value in values.items():
                label = labels.get(device, OTHER)
                folded[label] = folded.get(label, 0) + value
            for device, value in sorted(folded.items()):
                family.add_metric([device], value)  # type: ignore[attr-defined]
            yield family

    def _skills(self) -> Iterator[Metric]:
        """Calls and errors per skill, summed over the devices' last health messages."""
        calls: dict[str, float] = {}
        errors: dict[str, float] = {}
        for seen in self.snapshot.devices.values():
            if seen.health is None:
                continue
            for skill, sh in seen.health.skills.items():
                calls[skill] = calls.get(skill, 0) + sh.calls
                errors[skill] = errors.get(skill, 0) + sh.errors
        for name, doc, values in (
            ("skill_calls", "Calls that ran, by skill, over every device (last health).", calls),
            ("skill_errors", "Calls that ended in an error, by skill, over every device.", errors),
        ):
            family = CounterMetricFamily(P + name, doc, labels=["skill"])
            for skill, value in sorted(fold_sum(values, self.skill_labels).items()):
                family.add_metric([skill], value)
            yield family


class FleetMetrics:
    """Follow ``fleet`` and serve its metrics on ``http://host:port/metrics`` until cancelled.

    ``fleet`` must be entered (connected) by the caller. ``port=0`` picks a free port: read
    :attr:`port` once :attr:`ready` is set."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        host: str = "127.0.0.1",
        port: int = 9108,
        clock: Clock = SYSTEM_CLOCK,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self.fleet = fleet
        self.clock = clock
        self.snapshot = FleetSnapshot(max_devices)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(self.snapshot))
        self.server = MetricsServer(self.registry, host=host, port=port, clock=clock)
        self.ready = asyncio.Event()

    @property
    def port(self) -> int:
        return self.server.port

    async def run(self) -> None:
        """Serve and follow the fleet until cancelled; the server is closed on the way out."""
        await self.server.start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow(), name="fleet-metrics-follow")
                group.create_task(self._reconcile(), name="fleet-metrics-reconcile")
                self.ready.set()
        finally:
            self.ready.clear()
            await self.server.close()

    async def _follow(self) -> None:
        async for message in self.fleet.watch():
            self.snapshot.apply(message)

    async def _reconcile(self) -> None:
        while True:
            await self.clock.sleep(RECONCILE_S)
            try:
                present = {d.device for d in await self.fleet.devices()}
            except Exception as exc:  # the connection is down: try again next time
                log.warning("fleet metrics: reading the fleet failed: %s", exc)
                continue
            self.snapshot.keep_only(present)
