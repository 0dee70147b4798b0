"""A fleet rollout's vocabulary: its spec, what the planner is told and what it answers.

Pure data, no I/O. ``rollout_plan.Rollout`` decides; the operator CLI, the simulator and the
benchmark feed it :data:`Event` values and carry out the :data:`Action` values it returns.
Devices are selected by ``where`` (tags, ``kind`` among them, as everywhere in edgeagent).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from .errors import DeployError

#: Version of the serialised state (``Rollout.to_json``); a reader refuses any other.
FORMAT_VERSION = 1


class RolloutError(DeployError):
    """A rollout cannot be planned or changed: a bad option, a malformed saved state, a refused
    command (resuming a halted rollout); the message says which and why."""


class State(IntEnum):
    """Where one selected device stands in a rollout (one byte per device)."""

    PENDING = 0  # its turn has not come (or the rollout stopped before it did)
    SKIPPED = 1  # already on the target release
    CONFLICT = 2  # claimed by another active rollout: left alone
    OFFLINE = 3  # its turn came while it was offline: it gets the update when it returns
    UPDATING = 4  # told to update, no outcome yet
    HEALTHY = 5  # reported healthy on the target release
    FAILED = 6  # reported a failure, or went silent past the deadline
    ROLLED_BACK = 7  # back on its previous release (by itself or told to)

    @property
    def label(self) -> str:
        return self.name.lower()


#: One letter per state, the serialised form of the per-device state array.
LETTERS = "PSCOUHFR"


def parse_fraction(text: str, what: str) -> float:
    """``"10%"`` → 0.1, ``"0.1"`` → 0.1; a share of the fleet in (0, 1]."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise RolloutError(
            f"{what}: {text!r} is not a percentage (10%) or a fraction (0.1)"
        ) from None
    if not 0 < value <= 1:
        raise RolloutError(f"{what}: {text!r} must be more than 0% and at most 100%")
    return value


def parse_waves(text: str) -> tuple[float, ...]:
    """``--waves 10%,50%,100%``: cumulative shares of the selected devices, the last 100%."""
    waves = tuple(parse_fraction(p, "--waves") for p in text.split(",") if p.strip())
    _check_waves(waves)
    return waves


def _check_waves(waves: tuple[float, ...]) -> None:
    if not waves:
        raise RolloutError("--waves: give at least one wave, e.g. 10%,50%,100%")
    if any(b <= a for a, b in itertools.pairwise(waves)):
        raise RolloutError(f"--waves: shares are cumulative and must grow: {_pct(waves)}")
    if not math.isclose(waves[-1], 1.0):
        raise RolloutError(f"--waves: the last wave must be 100% (got {_pct(waves)})")


def _pct(waves: tuple[float, ...]) -> str:
    return ",".join(f"{w * 100:g}%" for w in waves)


def parse_max_failures(text: str) -> tuple[int | None, float | None]:
    """``--max-failures 5%`` → (None, 0.05); ``--max-failures 3`` → (3, None)."""
    t = text.strip()
    if t.endswith("%"):
        try:
            frac = float(t[:-1]) / 100
        except ValueError:
            frac = -1.0
        if not 0 <= frac <= 1:
            raise RolloutError(f"--max-failures: {text!r} is not a percentage from 0% to 100%")
        return None, frac
    if not t.isdigit():
        raise RolloutError(f"--max-failures: {text!r} is neither a count (3) nor a percentage (5%)")
    return int(t), None


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    """What ``rollout start`` asked for. ``version`` is the target release; ``bundle_hash`` the
    bundle's content hash (carried for the devices, not used in decisions, nor is
    ``only_changed``: sending only changed files is the transfer's business). ``max_failures``
    is the CLI's text, a count ("3": a 4th failure halts) or a share of the devices attempted so
    far ("5%"). ``deadline``: an update that reports nothing for that many seconds has failed.
    ``confirm_within``: the device's own deadline to pass its health check after the switch.
    ``wait_offline``: once every reachable device is done, how long to keep waiting for devices
    that are offline (they are updated if they return meanwhile); 0: done at once."""

    id: str
    version: str
    bundle_hash: str = ""
    where: Mapping[str, str] = field(default_factory=dict)
    canary: int = 1
    waves: tuple[float, ...] = (0.1, 0.5, 1.0)
    max_failures: str = "5%"
    parallel: int = 10
    only_changed: bool = False
    confirm_within: float = 120.0
    deadline: float = 600.0
    wait_offline: float = 0.0

    def __post_init__(self) -> None:
        if not self.id or not self.version:
            raise RolloutError("a rollout needs an id and a target release version")
        if self.canary < 0:
            raise RolloutError(f"--canary: {self.canary} is negative")
        _check_waves(self.waves)
        if not all(0 < w <= 1 for w in self.waves):
            raise RolloutError(f"--waves: every share must be in (0%, 100%]: {self.waves}")
        parse_max_failures(self.max_failures)
        if self.parallel < 1:
            raise RolloutError(f"--parallel: {self.parallel} must be at least 1")
        if not self.deadline > 0 or not self.confirm_within > 0:
            raise RolloutError("deadline and confirm_within must be positive (seconds)")
        if self.wait_offline < 0:
            raise RolloutError(f"--wait-offline: {self.wait_offline} s is negative")

    def allowed_failures(self, attempted: int) -> int:
        """Failures tolerated once ``attempted`` devices were told to update; one more halts."""
        count, frac = parse_max_failures(self.max_failures)
        if count is not None:
            return count
        return math.floor((frac or 0.0) * attempted + 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "version": self.version, "bundle_hash": self.bundle_hash,
            "where": dict(self.where), "canary": self.canary,
            "waves": [float(w) for w in self.waves], "max_failures": self.max_failures,
            "parallel": self.parallel, "only_changed": self.only_changed,
            "confirm_within": float(self.confirm_within), "deadline": float(self.deadline),
            "wait_offline": float(self.wait_offline),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutSpec:
        return cls(
            id=str(d["id"]), version=str(d["version"]), bundle_hash=str(d["bundle_hash"]),
            where={str(k): str(v) for k, v in dict(d["where"]).items()},
            canary=int(d["canary"]), waves=tuple(float(w) for w in d["waves"]),
            max_failures=str(d["max_failures"]), parallel=int(d["parallel"]),
            only_changed=bool(d["only_changed"]), confirm_within=float(d["confirm_within"]),
            deadline=float(d["deadline"]), wait_offline=float(d.get("wait_offline", 0.0)),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device as the operator sees it when the rollout starts (from retained messages).
    ``claimed_by``: the id of another active rollout that holds this device, if any."""

    id: str
    release: str | None = None
    online: bool = True
    tags: Mapping[str, str] = field(default_factory=dict)
    claimed_by: str | None = None

    def matches(self, where: Mapping[str, str]) -> bool:
        return all(self.tags.get(k) == v for k, v in where.items())


def order_key(rollout_id: str, device: str) -> bytes:
    """Stable, spread position of a device in a rollout: the same for the same rollout id on any
    machine and any Python, different for another id (so waves do not always hit the same
    devices first)."""
    return hashlib.blake2b(f"{rollout_id}\0{device}".encode(), digest_size=8).digest()


def select(
    spec: RolloutSpec, devices: Iterable[DeviceView]
) -> tuple[list[DeviceView], list[tuple[DeviceView, State, str]], int]:
    """Split the fleet: the devices to update in rollout order (the canary first: the first
    devices online in :func:`order_key` order), those left alone with their state and why, and
    how many did not match ``where`` (not held at all)."""
    go: list[tuple[bytes, DeviceView]] = []
    left: list[tuple[DeviceView, State, str]] = []
    unmatched = 0
    for d in devices:
        if not d.matches(spec.where):
            unmatched += 1
        elif d.release == spec.version:
            left.append((d, State.SKIPPED, f"already on {spec.version}"))
        elif d.claimed_by is not None and d.claimed_by != spec.id:
            left.append((d, State.CONFLICT, f"claimed by rollout {d.claimed_by}"))
        else:
            go.append((order_key(spec.id, d.id), d))
    go.sort(key=lambda kd: kd[0])
    ordered = [d for _, d in go]
    canary = [k for k, d in enumerate(ordered) if d.online][: spec.canary]
    picked = set(canary)
    return (
        [ordered[k] for k in canary] + [d for k, d in enumerate(ordered) if k not in picked],
        left,
        unmatched,
    )


def wave_ends(n: int, canary: int, waves: tuple[float, ...]) -> list[int]:
    """Cumulative end index of each wave over ``n`` ordered devices; the canary (if any) is the
    first wave and counts towards the shares; empty waves are dropped."""
    ends: list[int] = []
    if canary > 0 and n > 0:
        ends.append(min(canary, n))
    for w in waves:
        end = min(n, math.ceil(w * n - 1e-9))
        if end > (ends[-1] if ends else 0):
            ends.append(end)
    return ends


# -- what the planner is told ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceOnline:
    device: str
    release: str | None


@dataclass(frozen=True, slots=True)
class DeviceOffline:
    device: str


@dataclass(frozen=True, slots=True)
class UpdateProgress:
    """Any progress report of the update (a chunk stored, staged, switched): not silent."""

    device: str


@dataclass(frozen=True, slots=True)
class UpdateHealthy:
    device: str
    version: str


@dataclass(frozen=True, slots=True)
class UpdateFailed:
    device: str
    reason: str


@dataclass(frozen=True, slots=True)
class UpdateRolledBack:
    device: str
    release: str | None = None


Event = (
    DeviceOnline | DeviceOffline | UpdateProgress | UpdateHealthy | UpdateFailed | UpdateRolledBack
)

# -- what it answers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartUpdate:
    device: str


@dataclass(frozen=True, slots=True)
class RollBack:
    device: str


@dataclass(frozen=True, slots=True)
class WaveStarted:
    """Wave ``number`` of ``of`` (1-based) starts with ``size`` devices; the canary is wave 1."""

    number: int
    of: int
    size: int
    canary: bool


@dataclass(frozen=True, slots=True)
class Halted:
    reason: str


@dataclass(frozen=True, slots=True)
class Done:
    """Every reachable device is done; ``pending`` were offline throughout their turn."""

    healthy: int
    failed: int
    pending: int


Action = StartUpdate | RollBack | WaveStarted | Halted | Done
