"""Every step of an LLM's plan checked again in pure code, against the catalog and the schemas.

Constrained decoding makes a plan's shape right, but the schema cannot say which tag values go
together ("room hall, kind thermostat": each value exists, no device has both), and a runtime
without guidance (or a bug in one) could write anything. So the router trusts no step until
:func:`check_step` has passed it:

- the skill is one the schema offered (a tool some device has, never ``system.*``);
- ``where`` uses only tag keys the prompt shows and selects at least one device that has the
  skill;
- ``input`` fits the skill's strict input schema (:func:`check_value`: types, enums, bounds,
  lengths, required and unknown properties) and the router's own input check
  (:func:`.inputs.check_input`), on every selected device's spec (devices may differ).

Pure: no runtime, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .catalog import Catalog
from .inputs import check_input
from .llm_prompt import WHERE_KEYS, Step
from .llm_schema import PlanSchema


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fits(kind: str, v: Any) -> bool:
    """Whether ``v`` is of JSON Schema type ``kind`` (an unknown type name fits anything)."""
    checks: dict[str, bool] = {
        "integer": _is_number(v) and float(v).is_integer(),
        "number": _is_number(v),
        "string": isinstance(v, str),
        "boolean": isinstance(v, bool),
        "null": v is None,
        "array": isinstance(v, list),
        "object": isinstance(v, dict),
    }
    return checks.get(kind, True)


def check_value(value: Any, schema: Mapping[str, Any], path: str = "input") -> str | None:
    """Why ``value`` does not fit ``schema`` (the subset :func:`.llm_schema.strict_schema`
    keeps), naming where, or None."""
    problem = _check_here(value, schema, path)
    if problem is not None:
        return problem
    options = schema.get("anyOf")
    if isinstance(options, list) and options:
        found = [p for o in options if (p := check_value(value, o, path)) is not None]
        if len(found) == len(options):  # an option whose constant matched says the most
            return max(found, key=lambda p: (", not " not in p, len(p.split("=")[0])))
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            if (problem := check_value(item, schema["items"], f"{path}[{i}]")) is not None:
                return problem
    if isinstance(value, dict) and isinstance(schema.get("properties"), Mapping):
        props: Mapping[str, Any] = schema["properties"]
        for name in schema.get("required", ()):
            if name not in value:
                return f"{path}: {name} is required"
        for name, v in value.items():
            if name not in props:
                if schema.get("additionalProperties") is False:
                    return f"{path}: no property {name!r} (has {', '.join(props) or 'none'})"
                continue
            if (problem := check_value(v, props[name], f"{path}.{name}")) is not None:
                return problem
    return None


def _check_here(value: Any, schema: Mapping[str, Any], path: str) -> str | None:
    kind = schema.get("type")
    kinds = [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else []
    if kinds and not any(_fits(str(k), value) for k in kinds):
        return f"{path}={value!r} is not {' or '.join(str(k) for k in kinds)}"
    if "const" in schema and value != schema["const"]:
        return f"{path}={value!r}, not {schema['const']!r}"
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        return f"{path}={value!r} is not one of {', '.join(repr(e) for e in enum[:8])}"
    if _is_number(value):
        for key, sign, words in (
            ("minimum", -1, "below the minimum"),
            ("maximum", 1, "above the maximum"),
            ("exclusiveMinimum", 0, "not above"),
            ("exclusiveMaximum", 0, "not below"),
        ):
            bound = schema.get(key)
            if not _is_number(bound):
                continue
            if sign == 0:
                bad = value <= bound if key == "exclusiveMinimum" else value >= bound
            else:
                bad = (value - bound) * sign > 0
            if bad:
                return f"{path}={value:g} is {words} {bound:g}"
    sized = value if isinstance(value, str | list) else None
    if sized is not None:
        low = schema.get("minLength" if isinstance(value, str) else "minItems")
        high = schema.get("maxLength" if isinstance(value, str) else "maxItems")
        if isinstance(low, int) and len(sized) < low:
            return f"{path} is shorter than {low}"
        if isinstance(high, int) and len(sized) > high:
            return f"{path} is longer than {high}"
    return None


@dataclass(frozen=True, slots=True)
class CheckedStep:
    """A step that passed every check, with the devices its ``where`` selects."""

    step: Step
    devices: tuple[str, ...]
    side_effect: str


def check_step(step: Step, index: int, catalog: Catalog, schema: PlanSchema) -> CheckedStep | str:
    """The checked step, or why it cannot run (naming the step)."""
    at = f"step {index + 1} ({step.skill})"
    if step.skill not in schema.inputs:
        why = schema.left_out.get(step.skill, "no device has it")
        return f"{at}: not a tool the plan may use: {why}"
    unknown = sorted(set(step.where) - set(WHERE_KEYS))
    if unknown:
        return f"{at}: where may name {', '.join(WHERE_KEYS)}, not {', '.join(unknown)}"
    where = dict(step.where)
    devices = catalog.devices_with(step.skill, where)
    if not devices:
        said = ", ".join(f"{k}={v}" for k, v in sorted(where.items())) or "any device"
        return f"{at}: no device with {step.skill} matches {said}"
    args = dict(step.input)
    problem = check_value(args, schema.inputs[step.skill], f"{at}: input")
    if problem is not None:
        return problem
    side_effect = "read"
    for device in catalog.matching(where):
        spec = device.skill(step.skill)
        if spec is None:
            continue
        if (problem := check_input(spec, args)) is not None:
            return f"{at} on {device.device}: {problem}"
        if spec.side_effect != "read":
            side_effect = spec.side_effect
    return CheckedStep(step, devices, side_effect)
