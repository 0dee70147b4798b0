"""The coordinator's metrics: a collector reading its counters and registry at scrape time.

Nothing is added to the routing path but :class:`~edgeagent.metrics_stats.CallStats` (a dict
increment and a bucket per call and per forward, kept by the coordinator whether scraped or
not); the rest (failovers, hedges, rule firings, devices, queue depths, releases) is read from
what the coordinator and its registry already hold. Names: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edgeagent.coordinator import Coordinator
from edgeagent.metrics_stats import DEVICE_LABELS

from .metrics_families import calls_counter, capped, duration_histogram, fold_sum, release_info

__all__ = ["CoordinatorCollector"]

P = "edgeagent_coordinator_"


class CoordinatorCollector(Collector):
    """Metrics of one :class:`~edgeagent.coordinator.Coordinator` (register it on a private
    ``CollectorRegistry``)."""

    def __init__(self, coordinator: Coordinator, *, device_labels: int = DEVICE_LABELS) -> None:
        self.coordinator = coordinator
        self.device_labels = device_labels

    def collect(self) -> Iterator[Metric]:
        c = self.coordinator
        yield calls_counter(
            P + "calls",
            "Calls answered, by skill and outcome (ok or the error code).",
            ["skill", "outcome"],
            c.call_stats,
        )
        errors = CounterMetricFamily(
            P + "errors", "Calls answered with an error, by code.", labels=["code"]
        )
        for code, n in sorted(c.call_stats.by_outcome().items()):
            if code != "ok":
                errors.add_metric([code], n)
        yield errors
        yield duration_histogram(
            P + "call_duration_seconds",
            "Time from a call's arrival to its answer, seconds.",
            ["skill"],
            c.call_stats.durations,
        )
        yield calls_counter(
            P + "forwards",
            "Forwards to devices, by device and outcome.",
            ["device", "outcome"],
            c.forward_stats,
        )
        yield duration_histogram(
            P + "forward_duration_seconds",
            "Round trip of a forward to a device, seconds.",
            ["device"],
            c.forward_stats.durations,
        )
        for name, doc, value in (
            ("failovers", "Forwards retried on another device.", c.failovers),
            ("hedges", "Second requests sent for slow reads.", c.hedges),
            ("refused", "Calls refused by admission (too many in flight).", c.refused),
            (
                "dropped_messages",
                "Messages ignored: malformed, oversized, spoofed, no reply topic, registry full.",
                c.dropped,
            ),
            ("rule_firings", "Rule actions started.", c.rules_fired),
            (
                "rules_cut",
                "Events that fired no rule: too deep a chain of rule-made calls.",
                c.rules_cut,
            ),
            ("rules_limited", "Rule firings skipped by the per-minute rate.", c.rules_limited),
        ):
            yield CounterMetricFamily(P + name, doc, value=value)
        yield GaugeMetricFamily(
            P + "calls_in_flight", "Calls being routed now.", value=c.admission.in_flight
        )
        yield GaugeMetricFamily(
            P + "forwards_in_flight",
            "Forwards waiting for a device's reply.",
            value=c.forwarder.in_flight,
        )
        yield from self._fleet()

    def _fleet(self) -> Iterator[Metric]:
        devices = self.coordinator.registry.devices
        statuses: dict[str, int] = {}
        for entry in devices.values():
            statuses[entry.status] = statuses.get(entry.status, 0) + 1
        known = GaugeMetricFamily(
            P + "devices", "Devices in the registry, by status.", labels=["status"]
        )
        for status in ("online", "offline", "draining", "updating", "unknown"):
            known.add_metric([status], statuses.pop(status, 0))
        for status, n in sorted(statuses.items()):
            known.add_metric([status], n)
        yield known
        queue = GaugeMetricFamily(
            P + "device_queue_depth",
            "Calls waiting on a device, from its last health message.",
            labels=["device"],
        )
        depths = {d: float(e.health.queue_depth) for d, e in devices.items() if e.health}
        for device, depth in sorted(fold_sum(depths, self.device_labels).items()):
            queue.add_metric([device], depth)
        yield queue
        yield release_info(
            "Each device's release and agent version, from its manifest (at most the first "
            f"{self.device_labels} devices by name).",
            capped((d for d, e in devices.items() if e.manifest), self.device_labels),
            {d: e.manifest for d, e in devices.items()},
        )
