"""A household's examples for an LLM adapter: requests and the plans they should get.

::

    # house-plans.yaml: a list of {text, steps}; an empty steps list is a refusal
    - text: make the snug bright
      steps: [{skill: turn_on, where: {room: living, kind: lamp}, input: {}}]
    - text: sing me a song
      steps: []

A ``.jsonl`` file holds the same objects, one per line. The plans are over the tiny LLM's demo
house (:mod:`edgeagent.models.zoo.tinyllm_data`): a step's ``skill`` must be one of its skills
and ``where`` may only use the tags it routes on, so a typo is an :class:`ExamplesError` naming
the file and line (and the valid names) instead of an adapter trained to call a skill that does
not exist. Bounded like the intent examples (file size, count, text length).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..nlu.llm_prompt import Step
from .lora_examples import MAX_TEXT, _read, load_list

MAX_STEPS = 4
WHERE_KEYS = ("room", "kind")


@cache
def _skills() -> tuple[str, ...]:
    from .zoo.tinyllm_data import DEMO_DEVICES

    return tuple(sorted({s.name for _, _, skills in DEMO_DEVICES for s in skills}))


class PlanStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    skill: str = Field(min_length=1, description="A skill of the demo house.")
    where: dict[str, str] = Field(default_factory=dict, description="Tags: room, kind.")
    input: dict[str, Any] = Field(default_factory=dict, description="The skill's arguments.")

    @field_validator("skill")
    @classmethod
    def _skill(cls, value: str) -> str:
        if value not in _skills():
            raise ValueError(f"unknown skill {value!r}; valid: {', '.join(_skills())}")
        return value

    @field_validator("where")
    @classmethod
    def _where(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(value) - set(WHERE_KEYS))
        if bad:
            raise ValueError(f"unknown where key {bad[0]!r}; valid: {', '.join(WHERE_KEYS)}")
        return value


class PlanExample(BaseModel):
    """One request and its plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1, max_length=MAX_TEXT, description="What was said.")
    steps: list[PlanStep] = Field(max_length=MAX_STEPS, description="The plan; [] refuses.")

    def plan(self) -> tuple[Step, ...]:
        # the where keys in the order the router writes them (room before kind)
        return tuple(
            Step(s.skill, {k: s.where[k] for k in WHERE_KEYS if k in s.where}, dict(s.input))
            for s in self.steps
        )


def is_plan_file(path: Path) -> bool:
    """Whether an examples file holds plans (``steps``) rather than intent labels: the first
    example decides (cheap; the full parse checks every one)."""
    text = _read(path)
    if path.suffix.lower() == ".jsonl":
        first = next((line for line in text.splitlines() if line.strip()), "{}")
        try:
            data: Any = [json.loads(first)]
        except ValueError:
            return False
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            return False
    return (
        isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "steps" in data[0]
    )


def load_plan_examples(path: str | Path) -> list[PlanExample]:
    """Read a ``.yaml``/``.yml`` or ``.jsonl`` plan examples file; at least one example."""
    return load_list(path, PlanExample, "{text, steps}")
