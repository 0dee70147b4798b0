"""The fleet simulator: a whole fleet on one PC, with the real agent code, faults and a report.

::

    from edgeagent.simulator import simulate
    result = simulate("examples/smart-home/fleet.yaml", seed=7)
    result.report["summary"]["p95_ms"], result.failed_assertions

Modules, in the order a run uses them: :mod:`.spec` (the fleet YAML), :mod:`.devices` (profiles,
skills, calibration, memory budgets), :mod:`.vclock` and :mod:`.network` (virtual time and the
embedded network), :mod:`.runner` with :mod:`.workload` and :mod:`.faults`, :mod:`.metrics` (the
report data), :mod:`.render` and :mod:`.png` (HTML, PNG and the terminal table).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .devices import FleetPlan, build_fleet
from .runner import Progress, RunStats, run_broker, run_embedded
from .spec import FleetSpec, load_spec

__all__ = [
    "FleetPlan",
    "FleetSpec",
    "RunStats",
    "SimResult",
    "build_fleet",
    "load_calibration",
    "load_spec",
    "simulate",
]


@dataclass(frozen=True, slots=True)
class SimResult:
    report: dict[str, Any]
    stats: RunStats

    @property
    def failed_assertions(self) -> list[dict[str, Any]]:
        return [a for a in self.report["assertions"] if not a["passed"]]


def load_calibration(path: str | Path) -> dict[str, dict[str, float]]:
    """Read pinned skill costs: a report's ``calibration`` (or a file of just that mapping),
    ``{group: {skill: {"model_ms": …}}}``; returns ``{group: {skill: model_ms}}``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: cannot read calibration: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("calibration"), dict):
        data = data["calibration"]
    out: dict[str, dict[str, float]] = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: calibration is a mapping of group -> skill -> costs")
    for group, skills in data.items():
        if not isinstance(skills, dict):
            raise ConfigError(f"{p}: {group}: expected a mapping of skill -> costs")
        for skill, cost in skills.items():
            value = cost.get("model_ms") if isinstance(cost, dict) else cost
            if not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{p}: {group}.{skill}: model_ms must be a number >= 0")
            if isinstance(cost, dict) and cost.get("kind") == "python" and not value:
                continue  # no model: nothing to pin
            out.setdefault(str(group), {})[str(skill)] = float(value)
    return out


def simulate(
    spec: str | Path | FleetSpec,
    *,
    broker: str | None = None,
    seed: int | None = None,
    duration_s: float | None = None,
    calibration: dict[str, dict[str, float]] | None = None,
    progress: Progress | None = None,
    building: Callable[[int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
    secure: bool = False,
) -> SimResult:
    """Build and run a fleet. ``broker``: None for embedded mode (virtual time), ``"local"``
    for a private mosquitto, or a broker URL. Raises ConfigError before starting anything if the
    spec, a profile, a skill module or a memory budget is wrong. ``shard=(k, n)`` (broker mode):
    this process runs every n-th device from k; start one process per k with the same spec.
    ``secure`` (with ``broker="local"``): the private mosquitto runs the generated fleet policy
    (TLS, ACL) and every device connects with its own certificate (``securebroker.py``)."""
    if secure and broker != "local":
        raise ConfigError("secure runs need the private broker: broker='local' (--broker local)")
    k, n = shard
    if n < 1 or not 0 <= k < n:
        raise ConfigError(f"shard {k}/{n}: expected K/N with 0 <= K < N")
    if n > 1 and broker in (None, "local"):
        raise ConfigError("shards need a broker they all reach: --broker URL (not embedded/local)")
    source = str(spec) if not isinstance(spec, FleetSpec) else "<spec>"
    fleet_spec = spec if isinstance(spec, FleetSpec) else load_spec(spec)
    update: dict[str, Any] = {}
    if seed is not None:
        update["seed"] = seed
    if duration_s is not None:
        update["duration_s"] = duration_s
    if update:
        fleet_spec = fleet_spec.model_copy(update=update)
    for i, f in enumerate(fleet_spec.faults):
        if f.at_s is not None and f.at_s >= fleet_spec.duration_s:
            raise ConfigError(
                f"faults.{i} ({f.label}) starts at {f.at_s:g} s, after the run ends "
                f"({fleet_spec.duration_s:g} s)"
            )
    plan = build_fleet(fleet_spec, source=source, calibration=calibration, progress=building)
    if broker is None:
        report, stats = run_embedded(plan, spec_file=source, progress=progress)
        return SimResult(report, stats)
    if broker == "local":
        from ..localbroker import Mosquitto

        local: Any = None
        identity = None
        if secure:
            from ..securebroker import start_secure_sim

            devices = plan.all_devices()
            local, identity = start_secure_sim(devices, fleet_spec.fleet, fleet_spec.root)
        else:
            local = Mosquitto().start()
        try:
            report, stats = run_broker(
                plan, local.url, spec_file=source, progress=progress, local_broker=local,
                identity=identity,
            )  # fmt: skip
        finally:
            local.close()
        return SimResult(report, stats)
    report, stats = run_broker(plan, broker, spec_file=source, progress=progress, shard=shard)
    return SimResult(report, stats)
