"""The fleet spec's rollout vocabulary: the ``rollout`` section and the rollout assertions.

::

    rollout:
      release: "2.0.0"              # the version rolled out (devices start on from_release)
      where: {kind: meter}          # or group: meter; default every device
      canary: 5
      waves: "1%,10%,50%,100%"
      max_failures: "5%"
      parallel: 50
      start_s: 120                  # when the operator starts, simulated seconds
      size_bytes: 30000000          # the whole release
      changed_bytes: 250000         # what a device lacks (one changed file); default: all
      bad: {fraction: 0.02, groups: [attic]}   # where it fails its self-test
    assertions:
      - {check: "rollout done < 30 min"}
      - {check: "no device without a working release"}
      - {check: "rollout failures <= 3"}

See docs/simulator.md ("Rollouts").
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..protocol import check_name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_ROLLOUT_OUTCOME = re.compile(
    r"^\s*rollout\s+(done|halted|aborted|unfinished)"
    r"(?:\s*(<=|<|>=|>)\s*(\d+(?:\.\d+)?)\s*(s|min|h))?\s*$"
)
_ROLLOUT_METRIC = re.compile(
    r"^\s*rollout\s+(failures|healthy|failed|rolled_back|pending|skipped|duration_s|bytes_total|"
    r"bytes_per_device_max|without_release)\s*(<=|>=|==|!=|<|>)\s*(\d+(?:\.\d+)?)\s*$"
)
NO_BROKEN = "no device without a working release"
_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def rollout_check(text: str) -> tuple[str, str | None, float | None] | None:
    """A rollout assertion as (what, op, bound): ``("done", "<", 1800.0)`` for ``rollout done <
    30 min``, ``("failures", "<=", 3.0)``, ``("without_release", "==", 0.0)`` for ``no device
    without a working release``; None if ``text`` is not a rollout check."""
    t = " ".join(text.split())
    if t == NO_BROKEN:
        return "without_release", "==", 0.0
    m = _ROLLOUT_OUTCOME.match(t)
    if m:
        bound = float(m.group(3)) * _UNITS[m.group(4)] if m.group(2) else None
        return m.group(1), m.group(2), bound
    m = _ROLLOUT_METRIC.match(t)
    if m:
        return m.group(1), m.group(2), float(m.group(3))
    return None


class BadRelease(_Strict):
    """Where the rolled-out release is bad: it fails its self-test there (and rolls back)."""

    fraction: float = Field(
        default=0.0, ge=0, le=1,
        description="Share of the devices (each drawn by the seed) on which it fails.",
    )  # fmt: skip
    groups: list[str] = Field(default_factory=list, description="Groups where it always fails.")
    devices: list[str] = Field(default_factory=list, description="Devices where it fails.")


class RolloutScenario(_Strict):
    """A fleet rollout during the run: the real operator (``deploy/rollout_driver.Driver`` and
    its planner) updates the simulated devices through their ``system.update`` skill."""

    id: str = Field(default="sim", description="Rollout id (topics, report).")
    release: str = Field(description="The release (version name) rolled out.")
    from_release: str = Field(default="1.0.0", description="The release every device starts on.")
    where: dict[str, str] = Field(default_factory=dict, description="Tags a device must have.")
    group: str | None = Field(default=None, description="Only devices of this group.")
    start_s: float = Field(default=60.0, ge=0, description="When the operator starts, seconds.")
    canary: int = Field(default=1, ge=0, le=10_000, description="Canary devices (first wave).")
    waves: str = Field(
        default="10%,50%,100%", description="Cumulative shares of the devices per wave."
    )
    max_failures: str = Field(
        default="5%", description="Failures tolerated: a count (3) or a share of attempts (5%)."
    )
    parallel: int = Field(default=10, ge=1, le=100_000, description="Updates at once at most.")
    confirm_within_s: float = Field(
        default=120.0, ge=10, le=3600,
        description="A device's deadline to pass its self-test after the switch, seconds.",
    )  # fmt: skip
    deadline_s: float = Field(
        default=600.0, gt=0, description="An update silent this long has failed, seconds."
    )
    wait_offline_s: float = Field(
        default=0.0, ge=0, description="At the end, how long to wait for offline devices."
    )
    size_bytes: int = Field(
        default=20_000_000, ge=1, le=2**40, description="The whole release's size, bytes."
    )
    changed_bytes: int | None = Field(
        default=None, ge=1, le=2**40,
        description="Bytes in files the devices lack (one changed file); default: the whole "
        "release (a full update).",
    )  # fmt: skip
    restart_s: float = Field(
        default=3.0, ge=0, le=600,
        description="An agent restart on the reference machine, seconds (times the profile's "
        "speed.python).",
    )  # fmt: skip
    bad: BadRelease | None = Field(default=None, description="Where the release is bad.")

    @field_validator("id", "release", "from_release")
    @classmethod
    def _names(cls, v: str) -> str:
        return check_name(v, "rollout id or release")

    @field_validator("waves")
    @classmethod
    def _waves(cls, v: str) -> str:
        from ..deploy.rollout_state import RolloutError, parse_waves

        try:
            parse_waves(v)
        except RolloutError as exc:
            raise ValueError(str(exc).removeprefix("--waves: ")) from None
        return v

    @field_validator("max_failures")
    @classmethod
    def _max_failures(cls, v: str) -> str:
        from ..deploy.rollout_state import RolloutError, parse_max_failures

        try:
            parse_max_failures(v)
        except RolloutError as exc:
            raise ValueError(str(exc).removeprefix("--max-failures: ")) from None
        return v

    @model_validator(mode="after")
    def _sizes(self) -> RolloutScenario:
        if self.changed_bytes is not None and self.changed_bytes > self.size_bytes:
            raise ValueError(f"changed_bytes {self.changed_bytes} > size_bytes {self.size_bytes}")
        if self.release == self.from_release:
            raise ValueError(f"release and from_release are both {self.release!r}")
        return self

    @property
    def changed(self) -> int:
        return self.size_bytes if self.changed_bytes is None else self.changed_bytes


__all__ = ["NO_BROKEN", "BadRelease", "RolloutScenario", "rollout_check"]
