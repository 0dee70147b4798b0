"""A device agent's metrics: a collector reading its skill slots and counters at scrape time.

The agent keeps these statistics anyway (for its health message); the one addition on the call
path is each skill's run-time histogram (:class:`~edgeagent.metrics_stats.Buckets`, one bucket
increment per run) and a count of error replies by (skill, code). Skill labels are the skills
the agent serves (its config bounds them); a call naming no skill counts as ``other``.
Names: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from edgeagent import __version__
from edgeagent.device import DeviceAgent

from .metrics_families import duration_histogram

__all__ = ["AgentCollector"]

P = "edgeagent_agent_"


class AgentCollector(Collector):
    """Metrics of one :class:`~edgeagent.device.DeviceAgent` (register it on a private
    ``CollectorRegistry``: a process may run many agents)."""

    def __init__(self, agent: DeviceAgent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        health = agent.health()
        slots = agent.skill_slots()
        info = InfoMetricFamily(
            P + "build", "The agent's device, release and versions.", labels=["device"]
        )
        info.add_metric(
            [agent.device_id],
            {
                "release": agent.config.release or "",
                "agent_version": __version__,
                "profile": agent.config.profile or "",
            },
        )
        yield info
        for name, doc, value in (
            ("calls_served", "Calls answered ok.", health.calls_served),
            (
                "calls_failed",
                "Calls answered with an error (refusals included).",
                health.calls_failed,
            ),
            (
                "calls_dropped",
                "Requests dropped unanswered (expired, no reply topic).",
                health.calls_dropped,
            ),
        ):
            yield CounterMetricFamily(P + name, doc, value=value)
        gauges: tuple[tuple[str, str, float], ...] = (
            ("in_flight", "Calls running now, all skills.", health.in_flight),
            ("queue_depth", "Calls waiting now, all skills.", health.queue_depth),
            ("uptime_seconds", "Seconds since the agent started.", health.uptime_s),
        )
        for name, doc, level in gauges:
            yield GaugeMetricFamily(P + name, doc, value=level)
        if health.memory_rss_bytes is not None:
            yield GaugeMetricFamily(
                P + "resident_memory_bytes",
                "Resident memory of the agent's process, bytes.",
                value=health.memory_rss_bytes,
            )
        runs = CounterMetricFamily(
            P + "skill_runs", "Calls that ran, by skill (ok or error).", labels=["skill"]
        )
        rejected = CounterMetricFamily(
            P + "skill_rejected", "Calls refused busy (skill full).", labels=["skill"]
        )
        running = GaugeMetricFamily(
            P + "skill_in_flight", "Calls running now, by skill.", labels=["skill"]
        )
        queued = GaugeMetricFamily(
            P + "skill_queued", "Calls waiting now, by skill.", labels=["skill"]
        )
        for slot in slots:
            name = slot.skill.name
            runs.add_metric([name], slot.calls)
            rejected.add_metric([name], slot.rejected)
            running.add_metric([name], slot.in_flight)
            queued.add_metric([name], slot.queued)
        yield from (runs, rejected, running, queued)
        errors = CounterMetricFamily(
            P + "errors",
            "Error replies, by skill and code (refusals before a run included).",
            labels=["skill", "code"],
        )
        for (skill, code), n in sorted(agent.errors_by_code().items()):
            errors.add_metric([skill, code], n)
        yield errors
        yield duration_histogram(
            P + "skill_run_seconds",
            "Run time of a skill's calls, seconds.",
            ["skill"],
            {(s.skill.name,): s.runtime for s in slots},
        )
