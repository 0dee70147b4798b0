"""Simulated devices: the real agent and skills, with device speed and memory taken from profiles.

Building a fleet (:func:`build_fleet`) happens before anything runs, so a bad spec fails early:
every group's profile is loaded, every device's skills are imported and instantiated (models
loaded), each skill's cost is calibrated and each device's models are checked against its
profile's model memory budget.

Device speed. A call's device time is ``python_ms × speed.python`` plus the model's time on the
device, times the device's slowdown (thermal throttling) and a small seeded jitter. The model's
time on the device comes from the profile's speed model applied to the model's graph
(:mod:`edgeagent.devices.speed`: per operator class and precision, at the device's threads; the
estimate ``models bench --device`` and the optimizer's cards make), so a simulated camera skill on
a Pi Zero 2 W costs what it would there. Only when the graph cannot be counted or the profile has
no speed model is it ``model_ms × speed.fp32`` (or ``speed.int8`` for an int8 variant).
``model_ms`` is the model's latency measured *here*: taken from the optimizer's
card when it measured the variant the device loads, otherwise timed now on zeros of the model's
input signature (:func:`measure_model_ms`, cached per process). ``python_ms`` is the agent's own
per-call work here (decode, validate, encode): :data:`PYTHON_MS`. The skill's real code runs (its
output is real), then the call holds a core of the device for the device time. Measured costs
go into the report, and ``--calibration`` pins them so a seed reproduces a run across processes.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import shutil
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import AgentConfig, load_skills
from ..devices import DeviceProfile, load_profile
from ..errors import ConfigError
from ..skills import Skill, SkillSet
from .spec import FleetSpec, Group
from .spec_hardcases import prepare_keepers
from .speedcost import speed_model_ms

PYTHON_MS = 0.07
"""The agent's own work per call on the reference machine, ms: half the gap between a
``Fleet.call`` and a raw paho round trip in ``benchmarks/bench_rr.py`` (0.617 - 0.473 ms, shared
by the client and the agent)."""

JITTER_SIGMA = 0.15
"""Spread of device time: log-normal with this sigma around the calibrated time."""

RUNTIME_BASE_MB = {"onnxruntime": 10.0, "litert": 4.0}
"""Memory a runtime takes for a tiny model, MiB: the optimizer's peak-memory figures for the zoo
models (digits fp32 on ONNX Runtime 10.4 MiB, on LiteRT 3.8 MiB). Used when a card has none."""

Kind = Literal["python", "fp32", "int8"]


@dataclass(frozen=True, slots=True)
class SkillCost:
    """What one call of a skill costs on one device class."""

    skill: str
    kind: Kind
    model_ms: float
    """Model latency on the reference machine (this one), ms; 0 for a skill without a model."""
    python_factor: float
    model_factor: float
    source: str
    model_device_ms: float | None = None
    """The model's time on the device from the device's speed model (the same estimate as
    ``models bench --device``); ``None``: ``model_ms × model_factor`` instead."""
    range_ms: tuple[float, float] | None = None
    """The speed model's range for ``model_device_ms``."""

    @property
    def device_ms(self) -> float:
        model = self.model_ms * self.model_factor
        if self.model_device_ms is not None:
            model = self.model_device_ms
        return PYTHON_MS * self.python_factor + model

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "model_ms": round(self.model_ms, 6),
            "python_ms": PYTHON_MS,
            "python_factor": self.python_factor,
            "model_factor": self.model_factor,
            "device_ms": round(self.device_ms, 4),
            "source": self.source,
        }
        if self.model_device_ms is not None:
            out["model_device_ms"] = round(self.model_device_ms, 4)
        if self.range_ms is not None:
            out["model_device_range_ms"] = [round(v, 4) for v in self.range_ms]
        return out


_MEASURED: dict[tuple[str, int], float] = {}


def measure_model_ms(session: Any, key: tuple[str, int], runs: int = 200) -> float:
    """Median of five timings of ``runs`` calls on zeros, ms per call; cached by ``key``."""
    if key in _MEASURED:
        return _MEASURED[key]
    session.warmup(20)
    timings = []
    for _ in range(5):
        t0 = time.perf_counter()
        session.warmup(runs)
        timings.append((time.perf_counter() - t0) * 1000 / runs)
    value = float(f"{statistics.median(timings):.2g}")  # two digits: stabler across runs
    _MEASURED[key] = value
    return value


def _card_figures(card: dict[str, Any]) -> dict[str, Any] | None:
    choice = card.get("choice")
    variant = choice.get("variant") if isinstance(choice, dict) else None
    for v in card.get("variants") or ():
        if isinstance(v, dict) and v.get("name") == variant and isinstance(v.get("figures"), dict):
            figures: dict[str, Any] = v["figures"]
            return figures
    return None


def skill_cost(
    skill: Skill, owner: SkillSet | None, profile: DeviceProfile, pinned: float | None
) -> SkillCost:
    """Calibrate one skill on one profile (see the module docstring)."""
    speed = profile.speed
    kind: Kind
    resolved = getattr(owner, "resolved", None)
    session = getattr(owner, "session", None)
    if skill.options.model is None or resolved is None or session is None:
        model_ms, kind, source = 0.0, "python", "agent overhead only (no model)"
        if pinned is not None:
            model_ms, kind, source = pinned, "fp32", "pinned in the spec"
    else:
        kind = "int8" if "int8" in resolved.variant else "fp32"
        figures = _card_figures(resolved.card)
        if pinned is not None:
            model_ms, source = pinned, "pinned in the spec"
        elif figures is not None and isinstance(figures.get("p50_ms"), float | int):
            model_ms, source = float(figures["p50_ms"]), f"model card ({resolved.variant})"
        else:
            threads = getattr(getattr(session, "settings", None), "threads", 0) or 0
            model_ms = measure_model_ms(session, (str(resolved.path), threads))
            source = f"measured here ({resolved.path.name})"
    factor = (speed.int8 if kind == "int8" else speed.fp32).value
    if kind != "python" and resolved is not None:
        modelled = speed_model_ms(resolved, figures, profile, kind, session)
        if modelled is not None:
            ms, low, high, basis = modelled
            return SkillCost(
                skill.name,
                kind,
                model_ms,
                speed.python.value,
                round(ms / model_ms, 4) if model_ms > 0 else factor,
                f"{basis} ({resolved.path.name})",
                ms,
                (low, high),
            )
    return SkillCost(skill.name, kind, model_ms, speed.python.value, factor, source)


def model_memory_mb(owner: SkillSet) -> tuple[float, str] | None:
    """Peak memory of the model a skill set loads, MiB, and where the figure comes from."""
    resolved = getattr(owner, "resolved", None)
    session = getattr(owner, "session", None)
    if resolved is None or session is None:
        return None
    figures = _card_figures(resolved.card)
    if figures is not None and isinstance(figures.get("peak_memory_mb"), float | int):
        return float(figures["peak_memory_mb"]), "model card"
    size_mb = resolved.path.stat().st_size / 2**20
    base = RUNTIME_BASE_MB.get(str(getattr(session, "runtime", "")), 10.0)
    return round(base + 3 * size_mb, 2), "estimate: runtime base + 3 × file size"


@dataclass(slots=True)
class SimDevice:
    """One simulated device: its config, its (wrapped) skills and, while up, its agent."""

    id: str
    group: str
    config: AgentConfig
    skills: list[Skill]
    sets: list[SkillSet]
    events: dict[str, str]
    cores: int
    rng: random.Random
    slowdown: float = 1.0
    agent: Any = None
    transport: Any = None
    cpu: asyncio.Semaphore | None = None
    system: Any = None
    """Its releases and device tool when the spec has a rollout (``sysskills.DeviceSystem``)."""

    def device_seconds(self, cost: SkillCost) -> float:
        jitter = math.exp(self.rng.gauss(0.0, JITTER_SIGMA))
        return cost.device_ms * self.slowdown * jitter / 1000.0


@dataclass(slots=True)
class GroupPlan:
    group: Group
    profile: DeviceProfile
    devices: list[SimDevice]
    costs: dict[str, SkillCost]
    memory_mb: float
    memory_source: str
    budget_mb: float


@dataclass(slots=True, weakref_slot=True)
class FleetPlan:
    spec: FleetSpec
    groups: list[GroupPlan]
    device_group: dict[str, str] = field(default_factory=dict)
    scratch: Path | None = None
    """Where the devices keep hard cases (``hard_cases``); removed with the plan."""

    def all_devices(self) -> list[SimDevice]:
        return [d for g in self.groups for d in g.devices]


def emulate(skill: Skill, device: SimDevice, cost: SkillCost) -> Skill:
    """``skill`` with its real code, then the device's time for it (see the module docstring)."""
    func = skill.func
    is_async = skill.is_async

    async def run(**kwargs: Any) -> Any:
        if is_async:
            result = await func(**kwargs)
        else:
            result = func(**kwargs)
        if device.cpu is None:
            device.cpu = asyncio.Semaphore(device.cores)
        async with device.cpu:
            await asyncio.sleep(device.device_seconds(cost))
        return result

    wrapped = copy.copy(skill)  # shares the spec and schemas (a replace would rebuild them)
    wrapped.func = run
    wrapped.is_async = True
    return wrapped


def build_fleet(
    spec: FleetSpec,
    *,
    source: str = "spec",
    calibration: dict[str, dict[str, float]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> FleetPlan:
    """Load every group's profile and skills, calibrate and check memory; raise ConfigError."""
    scratch = None
    if any(g.hard_cases is not None for g in spec.groups):
        scratch = Path(tempfile.mkdtemp(prefix="edgeagent-sim-cases-"))
    try:
        plan = _build(spec, source, calibration, progress, scratch)
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    if scratch is not None:
        weakref.finalize(plan, shutil.rmtree, scratch, True)
    return plan


def _build(
    spec: FleetSpec,
    source: str,
    calibration: dict[str, dict[str, float]] | None,
    progress: Callable[[int], None] | None,
    scratch: Path | None,
) -> FleetPlan:
    plans: list[GroupPlan] = []
    for gi, group in enumerate(spec.groups):
        where = f"{source}: groups.{gi} ({group.name})"
        try:
            profile = load_profile(group.profile)
        except ConfigError as exc:
            raise ConfigError(f"{where}: profile: {exc}") from exc
        devices: list[SimDevice] = []
        costs: dict[str, SkillCost] = {}
        memory: tuple[float, str] = (0.0, "no model")
        template = AgentConfig(
            device=group.device_ids()[0],
            fleet=spec.fleet,
            root=spec.root,
            profile=group.profile,  # a name, or a user profile's file
            skills=group.skills,
            health_interval_s=group.health_interval_s,
            base_dir=spec.base_dir,
            data=None
            if group.hard_cases is None or scratch is None
            else group.hard_cases.data_config(scratch / group.name),
        )
        tag_sets: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        for i, device_id in enumerate(group.device_ids()):
            tags = group.tags_for(i)
            tags = tag_sets.setdefault(tuple(sorted(tags.items())), tags)
            # A shallow copy: every device of the group shares the broker and skills settings.
            config = template.model_copy(update={"device": device_id, "tags": tags})
            try:
                skills, sets, events = load_skills(config, source=where)
            except ConfigError as exc:
                if str(exc).startswith("data.skills"):  # hard_cases names no skill of the group
                    raise ConfigError(f"{where}: hard_cases.skill: {exc}") from exc
                raise  # already names the group and the field
            except Exception as exc:  # a SkillSet constructor failing, a model not loading
                raise ConfigError(f"{where}: skills: {type(exc).__name__}: {exc}") from exc
            if i == 0:
                pinned = (calibration or {}).get(group.name, {})
                for s in skills:
                    owner = getattr(s.func, "__self__", None)
                    pin = group.latency_ms.get(s.name, pinned.get(s.name))
                    costs[s.name] = skill_cost(
                        s, owner if isinstance(owner, SkillSet) else None, profile, pin
                    )
                unknown = sorted(set(group.latency_ms) - set(costs))
                if unknown:
                    raise ConfigError(
                        f"{where}: latency_ms names skills the group does not have: "
                        f"{', '.join(unknown)} (skills: {', '.join(sorted(costs))})"
                    )
                total, sources = 0.0, []
                for owner in sets:
                    m = model_memory_mb(owner)
                    if m is not None:
                        total += m[0]
                        sources.append(m[1])
                memory = (total, ", ".join(sorted(set(sources))) or "no model")
                budget = profile.model_budget_mb.value
                if total > budget:
                    raise ConfigError(
                        f"{where}: its models need {total:.1f} MiB ({memory[1]}) but a "
                        f"{profile.name} has a model budget of {budget:g} MiB"
                    )
            if group.hard_cases is not None:
                prepare_keepers(group.hard_cases, skills, sets, seed=spec.seed, device=device_id,
                                where=where)  # fmt: skip
            rng = random.Random(f"{spec.seed}/device/{device_id}")
            dev = SimDevice(
                device_id, group.name, config, [], sets, events, int(profile.cores.value), rng
            )
            dev.skills = [emulate(s, dev, costs[s.name]) for s in skills]
            devices.append(dev)
            if progress is not None:
                progress(1)
        plans.append(
            GroupPlan(
                group, profile, devices, costs, memory[0], memory[1], profile.model_budget_mb.value
            )
        )
    plan = FleetPlan(spec, plans, scratch=scratch)
    plan.device_group = {d.id: g.group.name for g in plans for d in g.devices}
    return plan
