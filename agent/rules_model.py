"""Rules: the file format (pydantic models, ``extra="forbid"``) and its semantic validation.

The validators compile conditions and templates while the file loads, so every mistake is a
:class:`~edgeagent.errors.ConfigError` naming the file, line, field and rule; the compiled call
(:class:`CompiledThen`) is kept here because it is the checked form of :class:`Then`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from .protocol import check_name
from .rules_conditions import normalize_tests
from .rules_paths import RuleProblem, check_field_name
from .rules_templates import Template, compile_value

Mode = Literal["one", "all"]


class When(BaseModel):
    """Which events a rule looks at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(description="Event name, the last level of …/event/{name}.")
    device: str | None = Field(default=None, description="Only events from this device id.")
    where: dict[str, str] = Field(
        default_factory=dict,
        description="Only events from devices whose tags include all of these (room: hall).",
    )


class Then(BaseModel):
    """The skill call a rule makes when it fires."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skill: str = Field(description="Skill to call.")
    device: str | None = Field(
        default=None, description="Call this device id (may be a template, e.g. '{device}')."
    )
    where: dict[str, str] = Field(
        default_factory=dict,
        description="Call devices whose tags include all of these; values may be templates.",
    )
    mode: Mode = Field(
        default="one",
        description="one: any one device that matches (the router picks); all: every one.",
    )
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="The skill's input; strings may be templates such as '{data.who}'.",
    )


class Rule(BaseModel):
    """One automation: when an event matches, call a skill."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique rule name; one topic level.")
    description: str = Field(default="", description="What the rule is for, for people.")
    enabled: bool = Field(default=True, description="False keeps the rule but never fires it.")
    when: When = Field(description="Which events the rule looks at.")
    if_: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        alias="if",
        description="Tests on the event, all of which must hold: {path: {operator: operand}}; "
        "a bare value means eq.",
    )
    then: Then = Field(description="The skill call to make.")
    cooldown_s: float = Field(
        default=0.0, ge=0, allow_inf_nan=False, description="Quiet time after firing, seconds."
    )
    max_per_minute: int | None = Field(
        default=None,
        ge=0,
        description="Fire at most this many times in any 60 s (0: no limit; default: the "
        "runner's).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return check_name(v, "rule name")
        except ValueError as exc:
            raise PydanticCustomError("rule", "{message}", {"message": str(exc)}) from None

    @field_validator("when")
    @classmethod
    def _when(cls, v: When, info: ValidationInfo) -> When:
        with _rule_errors(info):
            check_field_name(v.event, "event", "event name")
            if v.device is not None:
                check_field_name(v.device, "device", "device id")
        return v

    @field_validator("if_", mode="before")
    @classmethod
    def _if(cls, v: Any, info: ValidationInfo) -> Any:
        if not isinstance(v, Mapping):
            return v  # the type check names the problem
        with _rule_errors(info):
            return {str(path): normalize_tests(str(path), ops) for path, ops in v.items()}

    @field_validator("then")
    @classmethod
    def _then(cls, v: Then, info: ValidationInfo) -> Then:
        with _rule_errors(info):
            compile_then(v)
        return v


class RulesFile(BaseModel):
    """A rules file: a list of rules, names unique."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(default_factory=list, description="The rules, tried in this order.")

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[Rule]) -> list[Rule]:
        problem = duplicate_problem(v)
        if problem:
            raise PydanticCustomError("rule", "{message}", {"message": problem})
        return v


@contextlib.contextmanager
def _rule_errors(info: ValidationInfo) -> Iterator[None]:
    try:
        yield
    except RuleProblem as exc:
        name = info.data.get("name")
        label = f"rule {name!r}" if isinstance(name, str) else "rule (name invalid)"
        raise PydanticCustomError("rule", "{message}", {"message": f"{label}: {exc}"}) from None


def duplicate_problem(rules: Sequence[Rule]) -> str | None:
    seen: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name in seen:
            return (
                f"rule {rule.name!r}: the name is used twice (rules.{seen[rule.name]} and "
                f"rules.{i}); rule names must be unique"
            )
        seen[rule.name] = i
    return None


@dataclass(frozen=True, slots=True)
class CompiledThen:
    device: str | Template | None
    where: dict[str, str | Template]
    input: dict[str, Any]


def compile_then(then: Then) -> CompiledThen:
    check_field_name(then.skill, "skill", "skill name")
    if then.device is not None and then.where:
        raise RuleProblem("give device or where, not both")
    if then.device is not None and then.mode == "all":
        raise RuleProblem("mode: 'all' needs where (tags), not one device")
    device: str | Template | None = None
    if then.device is not None:
        device = Template.compile(then.device, "device")
        if isinstance(device, str):
            check_field_name(device, "device", "device id")
    where = {k: Template.compile(v, f"where.{k}") for k, v in then.where.items()}
    return CompiledThen(device, where, compile_value(then.input, "input"))
