"""The fleet spec: one YAML file describing a simulated fleet, its workload, faults and checks.

::

    name: smart-home
    fleet: home                     # the MQTT fleet name the agents use
    seed: 7                         # same seed, same spec, same calibration: same report
    duration_s: 600                 # simulated seconds
    link: {latency_ms: 2, jitter_ms: 1, loss: 0}     # default for every group (embedded mode)
    groups:
      - name: lamp                  # devices are lamp-1, lamp-2, …
        count: 6
        profile: pi-zero-2w         # a device profile (`edgeagent devices ls`) or a YAML file
        tags: {kind: lamp, room: [kitchen, hall, living]}   # a list is dealt round-robin
        skills:
          - module: smarthome.lamp:Lamp
    coordinator: {replicas: 1, rules: rules.yaml}
    workload:
      - {name: lights, skill: set_brightness, rate_per_s: 2, where: {kind: lamp},
         input: {level: 60}}
      - {name: speech, ask: ["turn off the kitchen lights"], rate_per_s: 0.1}
    faults:
      - {name: meters down, kind: crash, group: meter, count: 2, at_s: 200, duration_s: 120}
    assertions:
      - {skill: read_digit, check: "p95_ms < 200", during: meters down}

Everything is validated with ``extra="forbid"``; errors name the file, the line and the field.
Cross-references (a fault's group, an assertion's fault) are checked here too; profiles and
skill modules are resolved by :mod:`edgeagent.simulator.fleet` before anything starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import SkillSource
from ..errors import ConfigError
from ..protocol import check_name
from ..yamlconf import node_at, parse_yaml_model
from .spec_hardcases import HardCaseScenario
from .spec_rollout import NO_BROKEN, BadRelease, RolloutScenario, rollout_check

_CHECK = re.compile(
    r"^\s*(calls|ok|success_rate|p50_ms|p95_ms|p99_ms|failovers|errors)\s*"
    r"(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\s*$"
)
Metric = Literal["calls", "ok", "success_rate", "p50_ms", "p95_ms", "p99_ms", "failovers", "errors"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Link(_Strict):
    """A simulated network link between a device and the broker (embedded mode only)."""

    latency_ms: float = Field(default=1.0, ge=0, description="One-way latency, milliseconds.")
    jitter_ms: float = Field(default=0.0, ge=0, description="Uniform extra latency, ms (0..j).")
    loss: float = Field(default=0.0, ge=0, lt=1, description="Probability a message is lost.")
    bandwidth_mbps: float = Field(
        default=10.0, gt=0, le=100_000,
        description="Download rate of a rollout's files, Mbit/s (both modes: the transfer is "
        "simulated, its bytes counted).",
    )  # fmt: skip


class Group(_Strict):
    """Devices that share a profile, skills and tags."""

    name: str = Field(description="Group name; devices are named NAME-1 … NAME-COUNT.")
    count: int = Field(default=1, ge=1, le=1_000_000, description="How many devices.")
    profile: str = Field(description="Device profile name (edgeagent devices ls) or YAML file.")
    skills: list[SkillSource] = Field(min_length=1, description="Where the skills come from.")
    tags: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="Device tags; a list value is dealt round-robin (device i gets item i mod n).",
    )
    link: Link | None = Field(default=None, description="Network link; default: the spec's.")
    health_interval_s: float = Field(default=10.0, gt=0, description="Health period, seconds.")
    latency_ms: dict[str, float] = Field(
        default_factory=dict,
        description="Pin a skill's reference cost here, ms, instead of calibrating it.",
    )
    hard_cases: HardCaseScenario | None = Field(
        default=None, description="Devices keep hard cases of a skill (docs/data-loop.md)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "group name")

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for key, value in v.items():
            if isinstance(value, list) and not value:
                raise ValueError(f"tag {key!r}: an empty list deals no value")
        return v

    def device_ids(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(1, self.count + 1)]

    def tags_for(self, index: int) -> dict[str, str]:
        """Tags of device ``index`` (0-based)."""
        return {k: v[index % len(v)] if isinstance(v, list) else v for k, v in self.tags.items()}


class CoordinatorSpec(_Strict):
    replicas: int = Field(default=1, ge=0, le=16, description="Coordinator replicas (0: none).")
    rules: Path | None = Field(default=None, description="Rules file, relative to the spec.")
    hedge: bool = Field(default=True, description="Hedge read skills after the p95.")
    retry_budget: int = Field(default=2, ge=0, le=10, description="Failovers per call at most.")


class Workload(_Strict):
    """Calls arriving as a Poisson process: one skill routed by the coordinator, or plain
    language requests picked at random from ``ask``."""

    name: str | None = Field(default=None, description="Label in the report; default: skill.")
    skill: str | None = Field(default=None, description="Skill to call through the coordinator.")
    ask: list[str] | None = Field(default=None, description="Plain-language requests to send.")
    rate_per_s: float = Field(gt=0, le=100_000, description="Mean arrivals per simulated second.")
    where: dict[str, str] = Field(default_factory=dict, description="Tags the device must have.")
    mode: Literal["one", "all"] = Field(default="one", description="one device, or every match.")
    input: dict[str, Any] | None = Field(default=None, description="The skill's input (JSON).")
    input_from: str | None = Field(
        default=None,
        description="'module:function' called with a random.Random; returns the input.",
    )
    timeout_s: float = Field(default=5.0, gt=0, description="Caller's deadline, seconds.")
    start_s: float = Field(default=0.0, ge=0, description="First arrival not before, seconds.")
    stop_s: float | None = Field(default=None, gt=0, description="No arrivals after, seconds.")

    @model_validator(mode="after")
    def _one_kind(self) -> Workload:
        if (self.skill is None) == (self.ask is None):
            raise ValueError("give exactly one of 'skill' or 'ask'")
        if self.ask is not None and not self.ask:
            raise ValueError("'ask' needs at least one request")
        if self.input is not None and self.input_from is not None:
            raise ValueError("give 'input' or 'input_from', not both")
        return self

    @property
    def label(self) -> str:
        return self.name or self.skill or "ask"


FaultKind = Literal[
    "crash",  # the agent dies (will published) and restarts after duration_s
    "slow",  # thermal throttling: skills take `factor` times longer
    "link_loss",  # messages to and from the group are lost with probability `loss`
    "delay",  # messages to and from the group take `delay_ms` longer
    "partition",  # the group cannot reach the broker at all (connections drop)
    "message_loss",  # every message in the broker is lost with probability `loss`
    "broker_restart",  # the broker goes down for duration_s (all clients reconnect)
    "flap",  # devices go offline and online every `period_s`
]


class Fault(_Strict):
    """A scheduled fault (``at_s``) or random ones (``random_per_hour``)."""

    name: str | None = Field(default=None, description="Label in the report; default: kind.")
    kind: FaultKind = Field(description="What goes wrong.")
    group: str | None = Field(default=None, description="Group it hits (device faults).")
    count: int | None = Field(default=None, ge=1, description="Devices hit; default: all.")
    at_s: float | None = Field(default=None, ge=0, description="When it starts, seconds.")
    random_per_hour: float | None = Field(
        default=None, gt=0, description="Instead of at_s: random starts per device per hour."
    )
    duration_s: float = Field(default=60.0, gt=0, description="How long it lasts, seconds.")
    factor: float = Field(default=4.0, ge=1, description="slow: how many times slower.")
    loss: float = Field(default=0.5, gt=0, le=1, description="link_loss, message_loss: p(lost).")
    delay_ms: float = Field(default=200.0, gt=0, description="delay: extra one-way latency, ms.")
    period_s: float = Field(default=10.0, gt=0, description="flap: seconds per on/off phase.")

    @model_validator(mode="after")
    def _when(self) -> Fault:
        if (self.at_s is None) == (self.random_per_hour is None):
            raise ValueError("give exactly one of 'at_s' or 'random_per_hour'")
        device_fault = self.kind in ("crash", "slow", "link_loss", "delay", "partition", "flap")
        if device_fault and self.group is None:
            raise ValueError(f"a {self.kind} fault needs a 'group'")
        if not device_fault and self.group is not None:
            raise ValueError(f"a {self.kind} fault hits the whole broker; remove 'group'")
        if self.random_per_hour is not None and self.kind not in ("crash", "slow", "flap"):
            raise ValueError("random_per_hour is for crash, slow and flap faults")
        return self

    @property
    def label(self) -> str:
        return self.name or self.kind


class Assertion(_Strict):
    """A check on the report: ``check: "p95_ms < 200"`` for a skill, a group or the fleet."""

    check: str = Field(description="'METRIC OP NUMBER', e.g. 'p95_ms < 200'.")
    skill: str | None = Field(default=None, description="Scope: calls of this skill.")
    group: str | None = Field(default=None, description="Scope: calls served by this group.")
    during: str | None = Field(
        default=None, description="Only calls made while this fault (by name) was active."
    )

    @field_validator("check")
    @classmethod
    def _check(cls, v: str) -> str:
        if not _CHECK.match(v) and rollout_check(v) is None:
            raise ValueError(
                "expected 'METRIC OP NUMBER' with METRIC one of calls, ok, success_rate, "
                "p50_ms, p95_ms, p99_ms, failovers, errors and OP one of < <= > >= == !=; or a "
                "rollout check: 'rollout done', 'rollout halted', 'rollout done < 30 min', "
                "'rollout failures <= 3' (also healthy, failed, rolled_back, pending, skipped, "
                f"duration_s, bytes_total, bytes_per_device_max), '{NO_BROKEN}'"
            )
        return v

    @model_validator(mode="after")
    def _scope(self) -> Assertion:
        if self.is_rollout and (self.skill or self.group or self.during):
            raise ValueError("a rollout check takes no 'skill', 'group' or 'during'")
        return self

    @property
    def is_rollout(self) -> bool:
        return rollout_check(self.check) is not None

    def parsed(self) -> tuple[Metric, str, float]:
        m = _CHECK.match(self.check)
        assert m is not None
        metric: Any = m.group(1)
        return metric, m.group(2), float(m.group(3))

    def describe(self) -> str:
        if self.is_rollout:
            return " ".join(self.check.split())
        scope = (
            f"skill {self.skill}"
            if self.skill
            else f"group {self.group}"
            if self.group
            else "fleet"
        )
        during = f" during '{self.during}'" if self.during else ""
        return f"{scope}: {self.check}{during}"


Duration = Annotated[float, Field(gt=0, le=30 * 86400)]


class FleetSpec(_Strict):
    """A simulated fleet and what happens to it."""

    name: str = Field(description="Scenario name, shown in the report.")
    fleet: str = Field(default="sim", description="The MQTT fleet name agents use.")
    root: str = Field(default="edgeagent", description="Topic root.")
    seed: int = Field(default=1, description="Seed of every random choice.")
    duration_s: Duration = Field(default=300.0, description="Simulated seconds to run.")
    bucket_s: float | None = Field(
        default=None, gt=0, description="Report time-series bucket, seconds; default ~1/60 run."
    )
    link: Link = Field(default_factory=Link, description="Default link for every group.")
    groups: list[Group] = Field(min_length=1, description="Device groups.")
    coordinator: CoordinatorSpec = Field(default_factory=CoordinatorSpec)
    workload: list[Workload] = Field(default_factory=list, description="Call arrivals.")
    faults: list[Fault] = Field(default_factory=list, description="What goes wrong, and when.")
    rollout: RolloutScenario | None = Field(
        default=None, description="A fleet rollout during the run (docs/simulator.md)."
    )
    assertions: list[Assertion] = Field(default_factory=list, description="Checks on the report.")
    base_dir: Path | None = Field(default=None, exclude=True, description="The spec's folder.")

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, v: str) -> str:
        return check_name(v, "fleet name")

    @property
    def devices(self) -> int:
        return sum(g.count for g in self.groups)

    def device_group(self, device: str) -> str | None:
        """The group of device ``NAME-i``, if there is one."""
        name, _, index = device.rpartition("-")
        g = next((g for g in self.groups if g.name == name), None)
        ok = g is not None and index.isdigit() and 1 <= int(index) <= g.count and index[0] != "0"
        return name if ok else None

    def bucket(self) -> float:
        if self.bucket_s is not None:
            return self.bucket_s
        raw = self.duration_s / 60
        for step in (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
            if raw <= step:
                return float(step)
        return 3600.0

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() or self.base_dir is None else self.base_dir / path


Problem = tuple[tuple[str | int, ...], str]
"""Where in the spec (a path of keys and indexes) and what is wrong there."""


def _references(spec: FleetSpec) -> list[Problem]:
    """Cross-references a schema cannot check: (location, problem) pairs, section by section."""
    groups = {g.name: g for g in spec.groups}
    return [
        *_group_problems(spec),
        *_fault_problems(spec, groups),
        *_assertion_problems(spec, groups),
        *_rollout_problems(spec, groups),
        *(
            (("assertions", i, "check"), "a rollout check needs a 'rollout' section")
            for i, a in enumerate(spec.assertions)
            if a.is_rollout and spec.rollout is None
        ),
        *_workload_problems(spec),
    ]


def _group_problems(spec: FleetSpec) -> list[Problem]:
    names = [g.name for g in spec.groups]
    return [
        (("groups", i, "name"), f"group name {g.name!r} is used twice")
        for i, g in enumerate(spec.groups)
        if names.index(g.name) != i
    ]


def _fault_problems(spec: FleetSpec, groups: dict[str, Group]) -> list[Problem]:
    out: list[Problem] = []
    for i, f in enumerate(spec.faults):
        group = groups.get(f.group) if f.group is not None else None
        if f.group is not None and group is None:
            known = ", ".join(g.name for g in spec.groups)
            out.append((("faults", i, "group"), f"no group {f.group!r} (groups: {known})"))
        if f.at_s is not None and f.at_s >= spec.duration_s:
            out.append((("faults", i, "at_s"), f"{f.at_s:g} s is after the run ends"))
        if group is not None and f.count is not None and f.count > group.count:
            out.append(
                (("faults", i, "count"), f"{f.count} devices, but {f.group!r} has {group.count}")
            )
    return out


def _assertion_problems(spec: FleetSpec, groups: dict[str, Group]) -> list[Problem]:
    fault_names = [f.label for f in spec.faults]
    out: list[Problem] = []
    for i, a in enumerate(spec.assertions):
        if a.during is not None and a.during not in fault_names:
            known = ", ".join(fault_names) or "none"
            out.append((("assertions", i, "during"), f"no fault {a.during!r} (faults: {known})"))
        if a.group is not None and a.group not in groups:
            out.append((("assertions", i, "group"), f"no group {a.group!r}"))
    return out


def _rollout_problems(spec: FleetSpec, groups: dict[str, Group]) -> list[Problem]:
    r = spec.rollout
    if r is None:
        return []
    out: list[Problem] = []
    if r.group is not None and r.group not in groups:
        out.append((("rollout", "group"), f"no group {r.group!r}"))
    if r.start_s >= spec.duration_s:
        out.append((("rollout", "start_s"), f"{r.start_s:g} s is after the run ends"))
    for j, name in enumerate(r.bad.groups if r.bad else ()):
        if name not in groups:
            out.append((("rollout", "bad", "groups", j), f"no group {name!r}"))
    for j, name in enumerate(r.bad.devices if r.bad else ()):
        if spec.device_group(name) is None:
            out.append((("rollout", "bad", "devices", j), f"no device {name!r}"))
    return out


def _workload_problems(spec: FleetSpec) -> list[Problem]:
    labels = [w.label for w in spec.workload]
    return [
        (("workload", i), f"workload {w.label!r} twice: give each a 'name'")
        for i, w in enumerate(spec.workload)
        if labels.index(w.label) != i
    ]


def _check_references(spec: FleetSpec, text: str, source: str) -> None:
    problems = _references(spec)
    if not problems:
        return
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines = []
    for loc, message in problems:
        line = node_at(root, loc).start_mark.line + 1 if root is not None else 0
        lines.append(f"{source}:{line}: {'.'.join(map(str, loc))}: {message}")
    raise ConfigError("\n".join(lines))


def load_spec(path: str | Path) -> FleetSpec:
    """Load and validate a fleet spec; :class:`ConfigError` names the file, line and field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the fleet spec: {exc.strerror or exc}") from exc
    return parse_spec(text, source=str(p), base_dir=p.resolve().parent)


def parse_spec(text: str, *, source: str = "<spec>", base_dir: Path | None = None) -> FleetSpec:
    spec = parse_yaml_model(text, FleetSpec, source=source)
    _check_references(spec, text, source)
    return spec.model_copy(update={"base_dir": base_dir})


__all__ = [
    "NO_BROKEN",
    "Assertion",
    "BadRelease",
    "ConfigError",
    "CoordinatorSpec",
    "Fault",
    "FleetSpec",
    "Group",
    "Link",
    "RolloutScenario",
    "Workload",
    "load_spec",
    "parse_spec",
    "rollout_check",
]
