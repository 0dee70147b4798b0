"""The operator's side of a simulated rollout, and its part of the report.

:class:`RolloutOperator` runs the real operator: at the spec's ``start_s`` it lists the fleet
from retained messages (``Fleet.devices``), builds the planner (``deploy.rollout_plan.Rollout``)
and runs ``deploy.rollout_driver.Driver`` over its own connection to the simulated broker (the
same code ``edgeagent rollout start`` runs), on the simulation's clock. The release is a
:class:`SimRelease`: the rollout's manifest made up by :class:`~.sysskills.Catalog` instead of
bundle folders on disk. The devices' side is :mod:`edgeagent.simulator.sysskills`.

:func:`rollout_report` is the report's ``rollout`` section: outcome, waves (start and end, in
simulated seconds), per-state counts, failed and rolled-back devices (at most
:data:`MAX_LISTED`), bytes transferred in all and per device, and the devices without a working
release at the end. :func:`evaluate_rollout` checks the spec's rollout assertions against it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..client import Fleet
from ..deploy.rollout_driver import Driver, Outcome
from ..deploy.rollout_io import Release
from ..deploy.rollout_plan import Rollout
from ..deploy.rollout_state import DeviceView, RolloutSpec, WaveStarted, parse_waves
from ..transport.base import Transport
from .spec import Assertion, FleetSpec, RolloutScenario, rollout_check
from .sysskills import Catalog

#: Devices listed by name in the report (failed, rolled back, without a working release).
MAX_LISTED = 50
_FINAL = {"healthy", "failed", "rolled_back", "skipped"}


@dataclass(frozen=True, slots=True)
class SimRelease(Release):
    """One release for every device, its manifest in memory (no bundle folders)."""

    manifest_text: str = ""

    def target(self, device: str) -> str | None:
        return self.label

    def request(self, device: str) -> tuple[str, str]:
        return self.manifest_text, "untrusted comment: simulated release\n"


#: The driver's file server serves from here: nothing (the devices' transfer is simulated).
NO_FILES = Path("/nonexistent/edgeagent-sim-files")


def sim_release(catalog: Catalog) -> SimRelease:
    return SimRelease(
        Path("sim"), catalog.new, "", {}, (NO_FILES,), manifest_text=catalog.manifest(catalog.new)
    )


@dataclass(slots=True)
class SimReporter:
    """The driver's :class:`~edgeagent.deploy.rollout_driver.Reporter`: records what happened,
    with simulated times."""

    now: Callable[[], float]
    waves: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, tuple[str, float]] = field(default_factory=dict)
    """device -> (state, when) of its last change."""
    notes: list[tuple[float, str]] = field(default_factory=list)
    selected_at: float | None = None
    listener: Callable[[str], None] | None = None
    """Also told every note (the benchmark measures memory when the planner is done)."""

    def selected(self, rollout: Rollout, excluded: Mapping[str, str]) -> None:
        self.selected_at = self.now()

    def wave(self, wave: WaveStarted) -> None:
        self.waves.append({"number": wave.number, "of": wave.of, "size": wave.size,
                           "canary": wave.canary, "start_s": round(self.now(), 3)})  # fmt: skip

    def device(self, device: str, state: str, detail: str) -> None:
        self.last[device] = (state.replace(" ", "_"), self.now())

    def note(self, text: str) -> None:
        if self.listener is not None:
            self.listener(text)
        if len(self.notes) < MAX_LISTED:
            self.notes.append((round(self.now(), 3), text))

    def progress(self, rollout: Rollout) -> None:
        pass


class RolloutOperator:
    """Runs the real Driver against the simulated fleet (see the module docstring)."""

    def __init__(
        self,
        spec: FleetSpec,
        catalog: Catalog,
        make_transport: Callable[[str, Any], Transport],
        clock: Any,
        now: Callable[[], float],
    ) -> None:
        assert spec.rollout is not None
        self.spec = spec
        self.scenario: RolloutScenario = spec.rollout
        self.catalog = catalog
        self.make_transport = make_transport
        self.clock = clock
        self.now = now
        self.reporter = SimReporter(now)
        self.stop = asyncio.Event()
        self.rollout: Rollout | None = None
        self.driver: Driver | None = None
        self.outcome: Outcome | None = None
        self.started_s: float | None = None
        self.ended_s: float | None = None
        self.error: str | None = None
        self.on_driver: Callable[[RolloutOperator], None] | None = None
        """Called once the driver is built (the benchmark measures from there)."""

    def planner_spec(self) -> RolloutSpec:
        r = self.scenario
        return RolloutSpec(
            id=r.id, version=r.release, where=dict(r.where), canary=r.canary,
            waves=parse_waves(r.waves), max_failures=r.max_failures, parallel=r.parallel,
            confirm_within=r.confirm_within_s, deadline=r.deadline_s,
            wait_offline=r.wait_offline_s,
        )  # fmt: skip

    async def run(self) -> None:
        await asyncio.sleep(max(0.0, self.scenario.start_s - self.now()))
        if self.stop.is_set():
            return
        self.started_s = self.now()
        release = sim_release(self.catalog)
        fleet = Fleet(transport=self.make_transport("sim-operator", None), root=self.spec.root,
                      fleet=self.spec.fleet, clock=self.clock)  # fmt: skip
        await fleet.__aenter__()
        try:
            infos = await fleet.devices()
            group = self.scenario.group
            views = [
                DeviceView(
                    i.device,
                    release.norm(i.device, i.manifest.release if i.manifest else None),
                    i.online,
                    i.tags,
                )
                for i in infos
                if group is None or self.spec.device_group(i.device) == group
            ]
            self.rollout = Rollout.new(self.planner_spec(), views, self.clock.time())
            self.reporter.selected(self.rollout, {})
            self.driver = Driver(fleet, self.rollout, release, self.reporter)
            if self.on_driver is not None:
                self.on_driver(self)
            self.outcome = await self.driver.run(self.stop)
        except Exception as exc:  # the report says so; the run itself goes on
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ended_s = self.now()
            with contextlib.suppress(Exception):
                await fleet.close()


def rollout_report(op: RolloutOperator, devices: list[Any]) -> dict[str, Any]:
    """The report's ``rollout`` section; ``devices``: every ``SimDevice`` (with ``system``)."""
    r, cat = op.scenario, op.catalog
    out: dict[str, Any] = {
        "id": r.id, "release": r.release, "from_release": r.from_release,
        "size_bytes": r.size_bytes, "changed_bytes": r.changed, "start_s": r.start_s,
        "started_s": op.started_s, "ended_s": op.ended_s, "error": op.error,
    }  # fmt: skip
    ro = op.rollout
    finished = ro is not None and ro.finished and op.outcome is not None
    out["phase"] = ro.phase if finished and ro is not None else "unfinished"
    out["halted"] = ro.halt_reason if ro is not None else None
    ended = op.reporter.last
    if finished and ro is not None:
        ends = [t for d, (s, t) in ended.items() if s in _FINAL]
        end_s = max([op.started_s or 0.0, *ends])
        out["duration_s"] = round(end_s - (op.started_s or 0.0), 3)
    else:
        out["duration_s"] = None
    if ro is not None:
        st = ro.status()
        out.update(selected=st["selected"], unmatched=st["unmatched"], counts=st["counts"],
                   failures=st["failures"], attempted=st["attempted"],
                   allowed_failures=st["allowed_failures"])  # fmt: skip
        waves = []
        bounds = [0, *ro.ends]
        for w in op.reporter.waves:
            members = ro.ids[bounds[w["number"] - 1] : bounds[w["number"]]]
            times = [ended[d][1] for d in members if d in ended and ended[d][0] in _FINAL]
            outcome = Counter(str(ro.state_of(d).label) for d in members)  # type: ignore[union-attr]
            done = len(times) == len(members) and bool(members)
            waves.append({**w, "end_s": round(max(times), 3) if done else None,
                          "outcomes": dict(sorted(outcome.items()))})  # fmt: skip
        out["waves"] = waves
        disks = {d.id: d.system.disk for d in devices if d.system is not None}
        listed = []
        for d in ro.ids:
            state = ro.state_of(d)
            if state is None or state.label not in ("failed", "rolled_back"):
                continue
            back = disks[d].rolled_back if d in disks else None
            listed.append({"device": d, "state": state.label, "reason": st["reasons"].get(d, ""),
                           "device_reason": back[1] if back else None})  # fmt: skip
        out["failed_devices"] = listed[:MAX_LISTED]
        out["failed_devices_more"] = max(0, len(listed) - MAX_LISTED)
    else:
        out.update(selected=0, counts={}, failures=0, waves=[], failed_devices=[])
    per_device = [(d.id, d.group, d.system.disk) for d in devices if d.system is not None]
    total = sum(disk.bytes_in for _, _, disk in per_device)
    moved = [disk.bytes_in for _, _, disk in per_device if disk.bytes_in]
    by_group: dict[str, list[int]] = {}
    for _, g, disk in per_device:
        by_group.setdefault(g, []).append(disk.bytes_in)
    out["bytes"] = {
        "total": total,
        "devices": len(moved),
        "per_device_mean": round(total / len(moved), 1) if moved else 0,
        "per_device_max": max(moved, default=0),
        "by_group": {g: {"total": sum(v), "max": max(v)} for g, v in sorted(by_group.items())},
    }
    broken = [d for d, _, disk in per_device if not _working(cat, d, disk)]
    on_new = sum(1 for _, _, disk in per_device if disk.release == cat.new and disk.pending is None)
    out["on_release"] = {"new": on_new, "devices": len(per_device)}
    out["without_release"] = len(broken)
    out["without_release_devices"] = broken[:MAX_LISTED]
    out["notes"] = [{"t": t, "text": text} for t, text in op.reporter.notes]
    return out


def _working(cat: Catalog, device: str, disk: Any) -> bool:
    """A committed release that works on the device (a switch still unconfirmed is not)."""
    return disk.pending is None and cat.working(device, disk.release)


def evaluate_rollout(a: Assertion, rollout: Mapping[str, Any] | None) -> dict[str, Any]:
    parsed = rollout_check(a.check)
    assert parsed is not None
    what, op, bound = parsed
    text = a.describe()
    if rollout is None:
        return {"text": text, "passed": False, "value": None, "calls": 0}
    phase = rollout.get("phase")
    value: Any
    if what in ("done", "halted", "aborted", "unfinished"):
        value = phase
        passed = phase == what
        if op is not None and bound is not None:
            duration = rollout.get("duration_s")
            value = f"{phase} in {duration:g} s" if duration is not None else phase
            passed = passed and duration is not None and _cmp(op, float(duration), bound)
        return {"text": text, "passed": passed, "value": value, "calls": 0}
    counts = rollout.get("counts") or {}
    if what in ("healthy", "failed", "rolled_back", "pending", "skipped"):
        value = counts.get(what, 0)
    elif what == "failures":
        value = rollout.get("failures", 0)
    elif what == "bytes_total":
        value = rollout["bytes"]["total"]
    elif what == "bytes_per_device_max":
        value = rollout["bytes"]["per_device_max"]
    else:
        value = rollout.get(what)
    passed = value is not None and op is not None and _cmp(op, float(value), float(bound or 0))
    return {"text": text, "passed": passed, "value": value, "calls": 0}


def _cmp(op: str, value: float, bound: float) -> bool:
    from .metrics import OPS

    return OPS[op](value, bound)
