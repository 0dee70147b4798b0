"""The coordinator's registry: what every device has announced, and how it is doing.

Pure state: it is fed the fleet's retained ``state`` and ``manifest`` messages and its ``health``
messages (:meth:`Registry.apply`), plus the coordinator's own observations of the calls it routes
(:meth:`Registry.started`, :meth:`Registry.finished`), each with ``now`` passed in. It holds
nothing the broker does not: a restarted coordinator rebuilds it from retained messages, and a
device whose last will arrives is out of the candidates at once.

A device's status is its retained ``state`` until a ``health`` message newer than that state
arrives: health is only sent by a live agent, so a device marked offline (or whose retained state
was cleared) that is still sending health is online again, whatever a stale or forged retained
state said. The registry holds at most ``max_devices`` devices and finds a skill's devices
through an index, so routing costs the same with 10 devices or 10,000.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .protocol import Health, Manifest, Message, SkillSpec, StateMessage
from .stats import LatencyWindow

#: Weight of a new latency sample in the moving average.
EWMA_ALPHA = 0.2
#: Round trips this coordinator must have timed before a device counts as measured on a skill.
MEASURED_AFTER = 3


@dataclass(slots=True)
class SkillLoad:
    """What the coordinator measured for one (device, skill)."""

    outstanding: int = 0
    ewma_s: float | None = None
    window: LatencyWindow = field(default_factory=lambda: LatencyWindow(128))
    failures: int = 0
    timeouts_in_row: int = 0

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
    #: The retained state's own time (None: absent, or a last will, which has none).
    state_ts: float | None = None
    manifest: Manifest | None = None
    manifest_bytes: int = 0
    specs: dict[str, SkillSpec] = field(default_factory=dict)
    health: Health | None = None
    health_at: float | None = None
    loads: dict[str, SkillLoad] = field(default_factory=dict)
    #: It answered this coordinator (a ping or a call) since it came online; see routing.
    vouched: bool = False
    #: A ping to it is in flight / when the last one was sent (monotonic).
    pinging: bool = False
    pinged_at: float | None = None

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.manifest.tags) if self.manifest else {}

    def skill(self, name: str) -> SkillSpec | None:
        return self.specs.get(name)

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
    measured: bool = False
    """This coordinator has timed calls of this skill on this device (a device's own health
    report does not count: any client can publish one)."""
    timeouts_in_row: int = 0
    """Calls of this skill on this device that timed out since the last one that did not."""
    vouched: bool = False
    """The device answered this coordinator since it came online (a ping or a call)."""


class Registry:
    """Devices, their skills and live load, from what agents publish."""

    def __init__(
        self,
        max_devices: int = 10_000,
        suspect_after: int = 3,
        max_manifest_total: int = 64 * 1024 * 1024,
    ) -> None:
        self.devices: dict[str, DeviceEntry] = {}
        self.max_devices = max_devices
        #: Sum of the held manifests' sizes (as received, bytes) the registry accepts.
        self.max_manifest_total = max_manifest_total
        self.manifest_total = 0
        #: Timeouts in a row after which a device must answer a ping again.
        self.suspect_after = suspect_after
        # skill name -> the devices whose manifest lists it (a dict: insertion-ordered set)
        self._by_skill: dict[str, dict[str, None]] = {}

    def entry(self, device: str) -> DeviceEntry:
        e = self.devices.get(device)
        if e is None:
            e = self.devices[device] = DeviceEntry(device)
        return e

    def full(self, device: str) -> bool:
        """True when ``device`` is new and the registry already holds ``max_devices``."""
        return device not in self.devices and len(self.devices) >= self.max_devices

    def apply(self, message: Message, now: float, size: int = 0) -> bool:
        """Take in a state, manifest or health message; False if it was refused (a new device
        past ``max_devices``, or a manifest of ``size`` bytes past ``max_manifest_total``). The
        caller has checked that the message came on the device's own topic."""
        if not isinstance(message, StateMessage | Manifest | Health):
            return True
        if self.full(message.device):
            return False
        old = self.devices.get(message.device)
        if isinstance(message, Manifest):
            held = old.manifest_bytes if old is not None else 0
            if self.manifest_total - held + size > self.max_manifest_total:
                return False
        e = self.entry(message.device)
        if isinstance(message, StateMessage):
            if message.status != "online":
                e.vouched = False
            e.status, e.state_ts = message.status, message.ts
        elif isinstance(message, Manifest):
            self._unindex(e)
            self.manifest_total += size - e.manifest_bytes
            e.manifest, e.manifest_bytes = message, size
            e.specs = {spec.name: spec for spec in message.skills}
            for name in e.specs:
                self._by_skill.setdefault(name, {})[e.device] = None
        else:
            e.health, e.health_at = message, now
            if e.status in ("offline", "unknown") and (
                e.state_ts is None or message.ts > e.state_ts
            ):
                e.status = "online"  # alive, whatever the retained state says
        return True

    def clear_state(self, device: str) -> None:
        """The retained state was cleared: the device is what its live messages say (unknown
        until its next health); with no manifest either, it is gone."""
        e = self.devices.get(device)
        if e is None:
            return
        if e.manifest is None:
            self.forget(device)
        else:
            e.status, e.state_ts = "unknown", None

    def clear_manifest(self, device: str) -> None:
        """The retained manifest was cleared: the device announces no skills any more."""
        e = self.devices.get(device)
        if e is None:
            return
        self._unindex(e)
        e.manifest, e.specs = None, {}
        if e.status in ("offline", "unknown"):
            self.forget(device)

    def forget(self, device: str) -> None:
        """The device is gone."""
        e = self.devices.pop(device, None)
        if e is not None:
            self._unindex(e)

    def _unindex(self, e: DeviceEntry) -> None:
        self.manifest_total -= e.manifest_bytes
        e.manifest_bytes = 0
        for name in e.specs:
            holders = self._by_skill.get(name)
            if holders is not None:
                holders.pop(e.device, None)
                if not holders:
                    del self._by_skill[name]

    def online(self, device: str) -> bool:
        e = self.devices.get(device)
        return e is not None and e.status == "online"

    def skills(self) -> set[str]:
        return {
            name
            for name, holders in self._by_skill.items()
            if any(self.devices[d].status == "online" for d in holders)
        }

    def has_skill(self, skill: str) -> bool:
        """Some device (online or not) announces ``skill``."""
        return skill in self._by_skill

    def candidates(
        self, skill: str, where: dict[str, str] | None = None, exclude: frozenset[str] = frozenset()
    ) -> tuple[list[Candidate], dict[str, str]]:
        """Online devices with ``skill`` whose tags match ``where``; also why others were not."""
        found: list[Candidate] = []
        rejected: dict[str, str] = {}
        for name in sorted(self._by_skill.get(skill, ())):
            e = self.devices[name]
            spec = e.specs[skill]
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
                    measured=load is not None and len(load.window) >= MEASURED_AFTER,
                    timeouts_in_row=load.timeouts_in_row if load is not None else 0,
                    vouched=e.vouched,
                )
            )
        return found, rejected

    # The coordinator's own observations ---------------------------------------------------------

    def started(self, device: str, skill: str) -> None:
        e = self.devices.get(device)
        if e is not None:
            e.load(skill).outstanding += 1

    def finished(
        self, device: str, skill: str, seconds: float | None, ok: bool, timed_out: bool = False
    ) -> None:
        """A routed call ended. A timeout counts as a (long) latency sample, so a device that
        hangs while staying connected scores worse and gets fewer calls."""
        e = self.devices.get(device)
        if e is None:  # forgotten meanwhile: nothing to record
            return
        load = e.load(skill)
        load.outstanding = max(0, load.outstanding - 1)
        if seconds is not None and (ok or timed_out):
            load.observe(seconds)
        if not ok:
            load.failures += 1
        load.timeouts_in_row = load.timeouts_in_row + 1 if timed_out else 0
        if ok:
            e.vouched = True
        elif timed_out and load.timeouts_in_row >= self.suspect_after:
            e.vouched = False  # a suspect: it must answer a ping again

    def p95_s(self, device: str, skill: str) -> float | None:
        e = self.devices.get(device)
        if e is None or skill not in e.loads:
            return None
        return e.loads[skill].p95_s()
