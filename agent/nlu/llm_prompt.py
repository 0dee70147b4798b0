"""What a language model sees and answers when it routes plain language (pure; no runtime).

The LLM layer (issue 15) and the zoo's tiny language model share this one format: the zoo trains
on it, the router prompts with it. The model is shown the fleet's tools, one line each, taken
from the manifests (skill name, input fields, which devices by tag, description), and the
request; it answers with one JSON object, a plan of zero or more steps::

    {"steps": [{"skill": "set_power", "where": {"room": "kitchen"}, "input": {"on": false}}]}

An empty plan (``{"steps": []}``) means "nothing to do": the model refuses rather than guesses.
:func:`render_plan` writes the canonical text (keys in this order, no spaces after separators),
:func:`parse_plan` reads it back and says what is wrong with a bad one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..protocol import OPERATOR_PREFIXES
from .catalog import Catalog

#: Tag keys a step may use in ``where`` (the ones people say: "the kitchen lamp").
WHERE_KEYS = ("room", "kind")
MAX_TOOLS_TEXT = 16_000
"""Longest tool list shown to a model, in characters (a prompt is bounded; the rest is cut)."""

SYSTEM_HEAD = (
    "You control the devices of a home. Answer with JSON only: "
    '{"steps": [{"skill": ..., "where": {...}, "input": {...}}]}. '
    'Use only these tools; answer {"steps": []} when none fits.'
)


class PlanError(ValueError):
    """A model's answer is not a plan: the message says what is wrong and where."""


@dataclass(frozen=True, slots=True)
class Tool:
    """One skill as the model sees it: the union over the devices that have it."""

    name: str
    description: str
    side_effect: str
    input_schema: Mapping[str, Any]
    where: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Tag key → the values of the devices that have this skill (``WHERE_KEYS`` only)."""

    def line(self) -> str:
        props = self.input_schema.get("properties", {})
        args = ", ".join(
            f"{name}: {_type_of(spec)}" for name, spec in props.items() if isinstance(spec, dict)
        )
        where = "; ".join(f"{k} in {'|'.join(v)}" for k, v in self.where.items() if v)
        text = f"- {self.name}({args})"
        if where:
            text += f" [{where}]"
        if self.description:
            text += f": {self.description}"
        return text


def _type_of(spec: Mapping[str, Any]) -> str:
    if "enum" in spec:
        return "|".join(json.dumps(v) for v in spec["enum"])
    kind = spec.get("type", "any")
    return kind if isinstance(kind, str) else "|".join(str(k) for k in kind)


def tools_from_catalog(catalog: Catalog) -> tuple[Tool, ...]:
    """One :class:`Tool` per skill name some device has, sorted; operator skills (``system.*``,
    ``data.*``: :data:`~edgeagent.protocol.OPERATOR_PREFIXES`) never."""
    out: list[Tool] = []
    for name in catalog.skill_names:
        if name.startswith(OPERATOR_PREFIXES):
            continue
        spec = catalog.spec(name)
        if spec is None:  # pragma: no cover - skill_names lists only skills devices have
            continue
        where: dict[str, tuple[str, ...]] = {}
        for key in WHERE_KEYS:
            values = sorted(
                {
                    d.tags[key]
                    for d in catalog.devices
                    if key in d.tags and d.skill(name) is not None
                }
            )
            if values:
                where[key] = tuple(values)
        out.append(Tool(name, spec.description, spec.side_effect, spec.input_schema, where))
    return tuple(out)


def shown_tools(tools: Sequence[Tool]) -> tuple[Tool, ...]:
    """The tools :func:`system_text` shows (a prefix of ``tools``: the rest does not fit in
    :data:`MAX_TOOLS_TEXT`); the LLM router's schema allows these and no others."""
    size = len(SYSTEM_HEAD) + len("Tools:") + 2
    for i, tool in enumerate(tools):
        size += len(tool.line()) + 1
        if size > MAX_TOOLS_TEXT:
            return tuple(tools[:i])
    return tuple(tools)


def system_text(tools: Sequence[Tool]) -> str:
    shown = shown_tools(tools)
    lines = [SYSTEM_HEAD, "Tools:", *(t.line() for t in shown)]
    if len(shown) < len(tools):
        lines.append(f"- ({len(tools) - len(shown)} more tools not shown)")
    return "\n".join(lines)


def messages(tools: Sequence[Tool], text: str) -> list[dict[str, str]]:
    """The chat messages for one request (system: the tools; user: the request)."""
    return [
        {"role": "system", "content": system_text(tools)},
        {"role": "user", "content": text.strip()},
    ]


@dataclass(frozen=True, slots=True)
class Step:
    """One call of a plan."""

    skill: str
    where: Mapping[str, str] = field(default_factory=dict)
    input: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"skill": self.skill, "where": dict(self.where), "input": dict(self.input)}


def render_plan(steps: Sequence[Step]) -> str:
    """The canonical answer text: what the zoo's model is trained to write."""
    return json.dumps({"steps": [s.as_json() for s in steps]}, separators=(",", ":"))


def parse_plan(text: str) -> tuple[Step, ...]:
    """Read a model's answer; :class:`PlanError` says what is wrong (schema checks are the
    router's: this checks the shape only)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"not JSON ({exc.msg} at character {exc.pos})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise PlanError('not a plan: expected {"steps": [...]}')
    steps: list[Step] = []
    for i, raw in enumerate(data["steps"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("skill"), str):
            raise PlanError(f"steps[{i}]: expected an object with a skill name")
        where = raw.get("where", {})
        args = raw.get("input", {})
        if not isinstance(where, dict) or not all(isinstance(v, str) for v in where.values()):
            raise PlanError(f"steps[{i}].where: expected an object of tag values")
        if not isinstance(args, dict):
            raise PlanError(f"steps[{i}].input: expected an object")
        steps.append(Step(raw["skill"], where, args))
    return tuple(steps)
