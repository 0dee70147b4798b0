"""The JSON Schema of a valid plan over a fleet's tools: what an LLM's output is constrained to.

The LLM router (:mod:`.layer_llm`) hands this schema to the runtime's constrained decoding
(onnxruntime-genai's llguidance), so the model can only write a plan of known skills, tag values
devices have and inputs of the right shape::

    {"type": "object", "properties": {"steps": {"type": "array", "maxItems": 4, "items":
      {"anyOf": [{"type": "object", "properties": {
          "skill": {"const": "set_brightness"},
          "where": {"type": "object", "properties": {"room": {"enum": ["hall", "kitchen"]},
                    "kind": {"enum": ["lamp"]}}, "additionalProperties": false},
          "input": {"type": "object", "properties": {"level": {"type": "integer",
                    "minimum": 0, "maximum": 100}}, "required": ["level"],
                    "additionalProperties": false}},
        "required": ["skill", "where", "input"], "additionalProperties": false}, ...]}}},
     "required": ["steps"], "additionalProperties": false}

Each tool's ``input`` is its skill's input schema made strict (:func:`strict_schema`): only the
keywords a value check needs are kept (types, enums, bounds, lengths, items, properties,
required), ``$ref`` s are inlined, and objects that list their properties take no others. A
schema cannot say everything: the ``where`` enums are per key, so ``{"room": "hall", "kind":
"thermostat"}`` fits the schema even when no thermostat is in the hall; the router checks every
step again in pure code (:mod:`.llm_check`).

Skills a person cannot say are left out: ``system.*`` skills (never; :func:`~.llm_prompt.
tools_from_catalog` drops them), and skills whose required input is raw bytes or a long array
(an image, 128 samples: :func:`sayable`).

Bounded for big fleets: the schema has the tools the prompt shows (:func:`~.llm_prompt.
shown_tools`, cut at ``MAX_TOOLS_TEXT`` characters) and at most :data:`MAX_SCHEMA_TOOLS` of
them; a ``where`` key with more than :data:`MAX_WHERE_VALUES` values becomes a bounded string
(the pure check then refuses a value no device has); a tool whose strict input schema is larger
than :data:`MAX_INPUT_CHARS` is left out. Tools past a bound are named in :attr:`PlanSchema.
left_out`, so the router can say why a skill was not offered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..protocol import OPERATOR_PREFIXES
from .llm_prompt import WHERE_KEYS, Tool, shown_tools

MAX_STEPS = 4
"""Most steps in one plan ("turn everything off and lock the door" is two)."""
MAX_SCHEMA_TOOLS = 64
MAX_WHERE_VALUES = 48
MAX_TAG_CHARS = 64
MAX_INPUT_CHARS = 4_000
MAX_SAYABLE_ITEMS = 8
"""An array input longer than this (pixels, samples) is not something a person says."""
MAX_REF_DEPTH = 8

#: llguidance's options (other validators ignore the key): the canonical compact separators and
#: no free whitespace. With free whitespace SmolLM2-135M filled its answers with blank lines
#: until max_tokens (measured: 3 of 4 answers cut off).
GUIDANCE = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}

#: Keywords kept from a skill's input schema: what :func:`.llm_check.check_value` checks.
_KEPT = frozenset(
    {
        "type",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
    }
)


class NotSayable(ValueError):
    """A skill input a plan cannot carry (bytes, a long array, a schema too deep)."""


@dataclass(frozen=True, slots=True)
class PlanSchema:
    """The schema (as a dict and as compact JSON for the runtime) and what it covers."""

    schema: dict[str, Any]
    text: str
    tools: tuple[Tool, ...]
    """The tools a plan may use, with their strict input schemas in :attr:`inputs`."""
    inputs: Mapping[str, dict[str, Any]]
    left_out: Mapping[str, str]
    """Skill name → why it is not in the schema."""
    max_steps: int


def strict_schema(
    schema: Mapping[str, Any], defs: Mapping[str, Any] | None = None, depth: int = 0
) -> dict[str, Any]:
    """``schema`` with only the checked keywords, ``$ref`` s inlined, objects closed.

    Raises :class:`NotSayable` for raw bytes, arrays longer than :data:`MAX_SAYABLE_ITEMS`
    when required, and references that do not resolve or nest too deep."""
    defs = schema.get("$defs", defs or {})
    if depth > MAX_REF_DEPTH:
        raise NotSayable(f"nested deeper than {MAX_REF_DEPTH} levels")
    if "$ref" in schema:
        ref = str(schema["$ref"])
        target = defs.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/$defs/") else None
        if not isinstance(target, Mapping):
            raise NotSayable(f"unresolved reference {ref}")
        return strict_schema(target, defs, depth + 1)
    if schema.get("format") == "binary" or schema.get("contentEncoding") == "base64":
        raise NotSayable("raw bytes")
    out: dict[str, Any] = {k: v for k, v in schema.items() if k in _KEPT}
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out["anyOf"] = _options(key, schema[key], defs, depth)
    if isinstance(schema.get("items"), Mapping):
        out["items"] = strict_schema(schema["items"], defs, depth + 1)
    props = schema.get("properties")
    if isinstance(props, Mapping):
        out.update(_object(props, schema.get("required", ()), defs, depth))
    elif schema.get("additionalProperties") is False:
        out["additionalProperties"] = False
    return out


def _options(
    key: str, options: Sequence[Any], defs: Mapping[str, Any], depth: int
) -> list[dict[str, Any]]:
    out = []
    for option in options:
        if isinstance(option, Mapping):
            try:
                out.append(strict_schema(option, defs, depth + 1))
            except NotSayable:
                continue  # an option the model cannot write: the others remain
    if not out:
        raise NotSayable(f"no {key} option can be written")
    return out


def _object(
    props: Mapping[str, Any], required: Any, defs: Mapping[str, Any], depth: int
) -> dict[str, Any]:
    """Properties (unsayable optional ones dropped), required, and no others."""
    wanted = [str(r) for r in required if isinstance(r, str)] if isinstance(required, list) else []
    strict_props: dict[str, Any] = {}
    for name, prop in props.items():
        if not isinstance(prop, Mapping):
            continue
        try:
            strict_props[str(name)] = _sayable_property(prop, defs, depth)
        except NotSayable as exc:
            if name in wanted:
                raise NotSayable(f"{name}: {exc}") from exc
    out: dict[str, Any] = {"properties": strict_props, "additionalProperties": False}
    if kept := [r for r in wanted if r in strict_props]:
        out["required"] = kept
    return out


def _sayable_property(prop: Mapping[str, Any], defs: Mapping[str, Any], depth: int) -> Any:
    strict = strict_schema(prop, defs, depth + 1)
    low = strict.get("minItems")
    if isinstance(low, int) and low > MAX_SAYABLE_ITEMS:
        raise NotSayable(f"an array of at least {low} items")
    return strict


def sayable(tool: Tool) -> str | None:
    """Why a plan cannot call ``tool`` (None if it can)."""
    if tool.name.startswith(OPERATOR_PREFIXES):
        return "an operator skill (system.*, data.*)"
    try:
        strict = strict_schema(tool.input_schema)
    except NotSayable as exc:
        return f"its input cannot be said ({exc})"
    if len(json.dumps(strict)) > MAX_INPUT_CHARS:
        return f"its input schema is larger than {MAX_INPUT_CHARS} characters"
    return None


def _where_schema(tool: Tool) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key in WHERE_KEYS:
        values = tool.where.get(key, ())
        if not values:
            continue
        if len(values) > MAX_WHERE_VALUES:
            props[key] = {"type": "string", "maxLength": MAX_TAG_CHARS}
        else:
            props[key] = {"enum": list(values)}
    return {"type": "object", "properties": props, "additionalProperties": False}


def plan_schema(tools: Sequence[Tool], max_steps: int = MAX_STEPS) -> PlanSchema:
    """The schema of a plan of at most ``max_steps`` steps over ``tools`` (see the module doc)."""
    if not 1 <= max_steps <= 16:
        raise ValueError(f"max_steps must be within [1, 16], got {max_steps}")
    shown = shown_tools(tools)
    left_out: dict[str, str] = {t.name: "not shown: the prompt's tool list is full" for t in tools}
    options: list[dict[str, Any]] = []
    kept: list[Tool] = []
    inputs: dict[str, dict[str, Any]] = {}
    for tool in shown:
        del left_out[tool.name]
        why = sayable(tool)
        if why is None and len(kept) >= MAX_SCHEMA_TOOLS:
            why = f"more than {MAX_SCHEMA_TOOLS} tools"
        if why is not None:
            left_out[tool.name] = why
            continue
        inputs[tool.name] = strict_schema(tool.input_schema)
        kept.append(tool)
        options.append(
            {
                "type": "object",
                "properties": {
                    "skill": {"const": tool.name},
                    "where": _where_schema(tool),
                    "input": {"type": "object", **inputs[tool.name]},
                },
                "required": ["skill", "where", "input"],
                "additionalProperties": False,
            }
        )
    steps: dict[str, Any] = {"type": "array", "maxItems": max_steps}
    if options:
        steps["items"] = {"anyOf": options}
    else:
        steps["maxItems"] = 0  # nothing can be called: the only plan is the empty one
    schema = {
        "type": "object",
        "properties": {"steps": steps},
        "required": ["steps"],
        "additionalProperties": False,
        "x-guidance": GUIDANCE,
    }
    text = json.dumps(schema, separators=(",", ":"))
    return PlanSchema(schema, text, tuple(kept), inputs, left_out, max_steps)
