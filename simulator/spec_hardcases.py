"""The spec's ``hard_cases`` (per group): simulated devices keep hard cases, as real ones do.

::

    groups:
      - name: meter
        skills: [{module: "smarthome.meter:DigitReader"}]
        hard_cases: {skill: read_digit, rate: 0.1, confidence_below: 0.6}

Each device of the group runs the agent's real data loop (:mod:`edgeagent.data_skills`): its
skill offers its results, a seeded ``rate`` of the calls is kept as ``sampled`` (plus the
low-confidence ones with ``confidence_below``), bounded by ``max_cases`` per device, and the
device serves ``data.cases``/``data.clear``/``data.correct``, so ``edgeagent data pull`` works
against a broker-mode run. The stores live in a temporary folder removed with the fleet plan.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..data_skills import DataSkills, KeepsHardCases
from ..errors import ConfigError
from ..models.hardcases import DataConfig, Reason, SkillPolicy
from ..protocol import DATA_PREFIX
from ..skills import Skill, SkillSet, collect_skills


class HardCaseScenario(BaseModel):
    """Which skill of a group keeps cases, and how many."""

    model_config = ConfigDict(extra="forbid")

    skill: str = Field(description="The skill whose calls are kept (its SkillSet must offer).")
    rate: float = Field(gt=0, le=1, description="Fraction of its calls kept as 'sampled'.")
    confidence_below: float | None = Field(
        default=None, gt=0, le=1, description="Also keep calls below this confidence."
    )
    keep_raw: bool = Field(default=False, description="Keep raw inputs (images, audio).")
    max_cases: int = Field(default=1000, ge=1, le=100_000, description="Cases per device.")

    def data_config(self, folder: Path) -> DataConfig:
        reasons: list[Reason] = ["sampled", "correction"]
        if self.confidence_below is not None:
            reasons.append("low_confidence")
        policy = SkillPolicy(
            reasons=reasons,
            sample_rate=self.rate,
            confidence_below=self.confidence_below or 0.0,
            keep_raw=self.keep_raw,
        )
        return DataConfig(dir=folder, max_cases=self.max_cases, skills={self.skill: policy})


def prepare_keepers(
    scenario: HardCaseScenario,
    skills: Sequence[Skill],
    sets: Sequence[SkillSet],
    *,
    seed: int,
    device: str,
    where: str,
) -> None:
    """Check that the scenario's skill offers cases; seed each device's sampling."""
    offering = [s for s in sets if isinstance(s, KeepsHardCases)]
    if not any(k.name == scenario.skill for s in offering for k in collect_skills(s)):
        names = sorted(k.name for k in skills if not k.name.startswith(DATA_PREFIX))
        raise ConfigError(
            f"{where}: hard_cases.skill: {scenario.skill!r} keeps no hard cases (skills: "
            f"{', '.join(names)}; a skill keeps them when its SkillSet is KeepsHardCases)"
        )
    for s in sets:
        if isinstance(s, DataSkills):
            s.keeper.rng = random.Random(f"{seed}/hard-cases/{device}")


__all__ = ["HardCaseScenario", "prepare_keepers"]
