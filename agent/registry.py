"""The coordinator's registry: what every device has announced, and how it is doing.

Pure state: it is fed the fleet's retained ``state`` and ``manifest`` messages and its ``health``
messages (:meth:`Registry.apply`), plus the coordinator's own observations of the calls it routes
(:meth:`Registry.started`, :meth:`Registry.finished`), each with ``now`` passed in. It holds
nothing the broker does not: a restarted coordinator rebuilds it from retained messages, and a
device whose last will arrives is out of the candidates at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .protocol import Health, Manifest, Message, SkillSpec, StateMessage
from .stats import LatencyWindow

#: Weight of a new latency sample in the moving average.
EWMA_ALPHA = 0.2


@dataclass(slots=True)
class SkillLoad:
    """What the coordinator measured for one (device, skill)."""

    outstanding: int = 0
    ewma_s: float | None = None
    window: LatencyWindow = field(default_factory=lambda: LatencyWindow(128))
    failures: int = 0

    def observe(self, seconds: float) -> None:
        self.window.add(seconds)
        old = self.ewma_s
        self.ewma_s = seconds if old is None else EWMA_ALPHA * seconds + (1 - EWMA_ALPHA) * old

    def p95_s(self) -> float | None:
        (p95,) = self.window.percentiles_ms((95,))
        return None if p95 is None else p95 / 1000


@dataclass(slots=True)
class DeviceEntry:
    device: str
    status: str = "unknown"
    manifest: Manifest | None = None
    health: Health | None = None
    health_at: float | None = None
    loads: dict[str, SkillLoad] = field(default_factory=dict)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.manifest.tags) if self.manifest else {}

    def skill(self, name: str) -> SkillSpec | None:
        if self.manifest is None:
            return None
        for spec in self.manifest.skills:
            if spec.name == name:
                return spec
        return None

    def load(self, skill: str) -> SkillLoad:
        entry = self.loads.get(skill)
        if entry is None:
            entry = self.loads[skill] = SkillLoad()
        return entry


@dataclass(frozen=True, slots=True)
class Candidate:
    """A device that can serve a skill, with what routing needs to score it."""

    device: str
    spec: SkillSpec
    outstanding: int
    """Calls this coordinator has in flight to it, plus the queue its health reported."""
    latency_s: float | None
    """Moving average of this coordinator's measured round trips, else the device's p50."""


class Registry:
    """Devices, their skills and live load, from what agents publish."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceEntry] = {}

    def entry(self, device: str) -> DeviceEntry:
        e = self.devices.get(device)
        if e is None:
            e = self.devices[device] = DeviceEntry(device)
        return e

    def apply(self, message: Message, now: float) -> None:
        """Take in a state, manifest or health message."""
        if isinstance(message, StateMessage):
            self.entry(message.device).status = message.status
        elif isinstance(message, Manifest):
            self.entry(message.device).manifest = message
        elif isinstance(message, Health):
            e = self.entry(message.device)
            e.health, e.health_at = message, now

    def forget(self, device: str) -> None:
        """A retained state or manifest was cleared: the device is gone."""
        self.devices.pop(device, None)

    def online(self, device: str) -> bool:
        e = self.devices.get(device)
        return e is not None and e.status == "online"

    def skills(self) -> set[str]:
        return {
            s.name
            for e in self.devices.values()
            if e.manifest is not None and e.status == "online"
            for s in e.manifest.skills
        }

    def candidates(
        self, skill: str, where: dict[str, str] | None = None, exclude: frozenset[str] = frozenset()
    ) -> tuple[list[Candidate], dict[str, str]]:
        """Online devices with ``skill`` whose tags match ``where``; also why others were not."""
        found: list[Candidate] = []
        rejected: dict[str, str] = {}
        for name in sorted(self.devices):
            e = self.devices[name]
            spec = e.skill(skill)
            if spec is None:
                continue
            if name in exclude:
                rejected[name] = "already tried"
                continue
            if e.status != "online":
                rejected[name] = f"state {e.status}"
                continue
            tags = e.tags
            mismatch = [k for k, v in (where or {}).items() if tags.get(k) != v]
            if mismatch:
                rejected[name] = "tags " + ", ".join(
                    f"{k}={tags.get(k, '-')}≠{(where or {})[k]}" for k in mismatch
                )
                continue
            load = e.loads.get(skill)
            queued = 0
            latency = load.ewma_s if load is not None else None
            if e.health is not None:
                h = e.health.skills.get(skill)
                if h is not None:
                    queued = h.queued
                    if latency is None and h.p50_ms is not None:
                        latency = h.p50_ms / 1000
            found.append(
                Candidate(
                    device=name,
                    spec=spec,
                    outstanding=(load.outstanding if load else 0) + queued,
                    latency_s=latency,
                )
            )
        return found, rejected

    # The coordinator's own observations ---------------------------------------------------------

    def started(self, device: str, skill: str) -> None:
        self.entry(device).load(skill).outstanding += 1

    def finished(
        self, device: str, skill: str, seconds: float | None, ok: bool, timed_out: bool = False
    ) -> None:
        """A routed call ended. A timeout counts as a (long) latency sample, so a device that
        hangs while staying connected scores worse and gets fewer calls."""
        load = self.entry(device).load(skill)
        load.outstanding = max(0, load.outstanding - 1)
        if seconds is not None and (ok or timed_out):
            load.observe(seconds)
        if not ok:
            load.failures += 1

    def p95_s(self, device: str, skill: str) -> float | None:
        e = self.devices.get(device)
        if e is None or skill not in e.loads:
            return None
        return e.loads[skill].p95_s()
