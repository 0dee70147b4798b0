"""Building Prometheus metric families from edgeagent's own statistics, at scrape time.

Shared by the coordinator's, the agent's and the fleet's collectors: histograms from
:class:`~edgeagent.metrics_stats.Buckets`, counters from
:class:`~edgeagent.metrics_stats.CallStats`,
and label values capped per scrape (the first ``limit`` in sorted order keep their own series,
the rest are summed into ``other``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, InfoMetricFamily

from edgeagent.metrics_stats import OTHER, Buckets, CallStats
from edgeagent.protocol import Manifest

__all__ = ["PREFIX", "calls_counter", "capped", "duration_histogram", "fold_sum"]

#: Every metric name starts with it.
PREFIX = "edgeagent_"

V = TypeVar("V")


def capped(names: Iterable[str], limit: int) -> dict[str, str]:
    """Each name -> its label value: itself for the first ``limit`` in sorted order, else
    ``other``."""
    ordered = sorted(names)
    return {n: (n if i < limit else OTHER) for i, n in enumerate(ordered)}


def fold_sum(values: Mapping[str, float], limit: int) -> dict[str, float]:
    """``values`` by name with names past ``limit`` summed into ``other``."""
    out: dict[str, float] = {}
    for name, label in capped(values, limit).items():
        out[label] = out.get(label, 0) + values[name]
    return out


def release_info(
    doc: str, labels: Mapping[str, str], manifests: Mapping[str, Manifest | None]
) -> InfoMetricFamily:
    """``edgeagent_device_release_info``: each device's profile, release and agent version from
    its manifest, for the devices whose label is their own name (past the cap: none)."""
    family = InfoMetricFamily(PREFIX + "device_release", doc, labels=["device"])
    for device, label in sorted(labels.items()):
        manifest = manifests.get(device)
        if label == device and manifest is not None:
            family.add_metric(
                [device],
                {
                    "profile": manifest.profile or "",
                    "release": manifest.release or "",
                    "agent_version": manifest.agent_version,
                },
            )
    return family


def calls_counter(name: str, doc: str, labels: list[str], stats: CallStats) -> CounterMetricFamily:
    """``stats.counts`` as a counter labelled ``labels`` (the key's parts, then the outcome)."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for (key, outcome), n in sorted(stats.counts.items()):
        family.add_metric([*key, outcome], n)
    return family


def duration_histogram(
    name: str, doc: str, labels: list[str], by_key: Mapping[tuple[str, ...], Buckets]
) -> HistogramMetricFamily:
    """One histogram series per key (its parts are the label values)."""
    family = HistogramMetricFamily(name, doc, labels=labels, unit="seconds")
    for key, hist in sorted(by_key.items()):
        family.add_metric(list(key), hist.cumulative(), hist.total)
    return family
