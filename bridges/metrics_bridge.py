"""The bridges' own counters on the fleet metrics endpoint (``bridge run --ha --metrics``).

:class:`HaCollector` reads :meth:`HaBridge.stats` at scrape time, so the bridge keeps plain
integers and pays nothing per command. Names: docs/metrics.md ("The bridge").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .ha import HaStats

__all__ = ["HA_COUNTERS", "HA_GAUGES", "HaCollector"]

P = "edgeagent_ha_"
#: HaStats fields that only grow (exported as ``…_total``), with their help text.
HA_COUNTERS = {
    "published": "Messages the Home Assistant bridge published (discovery, state).",
    "commands": "Commands received from Home Assistant.",
    "command_errors": "Home Assistant commands refused (bad payload, unknown entity).",
    "call_errors": "Skill calls made for Home Assistant that ended in an error.",
    "polls": "Read-skill calls made to refresh Home Assistant's state.",
    "events": "Device events turned into Home Assistant state or event messages.",
    "dropped": "Commands dropped because too many calls were pending.",
}
#: HaStats fields that are a level now.
HA_GAUGES = {
    "devices": "Devices the Home Assistant bridge announces.",
    "entities": "Home Assistant entities announced, all devices.",
    "unmapped": "Skills that map to no Home Assistant entity (listed, not guessed).",
}


class HaCollector(Collector):
    """The Home Assistant bridge's counters, read when scraped."""

    def __init__(self, stats: Callable[[], HaStats]) -> None:
        self.stats = stats
        known = {f.name for f in fields(HaStats)}
        missing = (HA_COUNTERS.keys() | HA_GAUGES.keys()) - known
        if missing:  # a renamed field must not silently vanish from the metrics
            raise ValueError(f"HaStats has no field(s) {sorted(missing)}")

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        for name, text in HA_COUNTERS.items():
            counter = CounterMetricFamily(P + name, text)
            counter.add_metric([], getattr(s, name))
            yield counter
        for name, text in HA_GAUGES.items():
            gauge = GaugeMetricFamily(P + name, text)
            gauge.add_metric([], getattr(s, name))
            yield gauge
