"""A skill's input from the text: its one required number, converted to the unit the schema
declares, and checked against the schema's type and bounds (simple JSON Schema only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..protocol import SkillSpec
from .numbers import Number, Unit, convert, duration_unit, schema_unit

# --- inputs -------------------------------------------------------------------------------------


def _schema_type(prop: Mapping[str, Any]) -> set[str]:
    t = prop.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {str(x) for x in t}
    found: set[str] = set()
    for option in prop.get("anyOf", ()):
        if isinstance(option, Mapping):
            found |= _schema_type(option)
    return found


def _check_value(name: str, prop: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` does not fit the property's (simple) schema, or None."""
    types = _schema_type(prop)
    if not types:
        return None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    fits = {
        "integer": is_number and float(value).is_integer(),
        "number": is_number,
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }
    if not any(fits.get(t, True) for t in types):
        return f"{name}={value!r} is not {' or '.join(sorted(types))}"
    if is_number:
        low, high = prop.get("minimum"), prop.get("maximum")
        if isinstance(low, int | float) and value < low:
            return f"{name}={value:g} is below the minimum {low:g}"
        if isinstance(high, int | float) and value > high:
            return f"{name}={value:g} is above the maximum {high:g}"
    return None


def properties(spec: SkillSpec) -> dict[str, Mapping[str, Any]]:
    props = spec.input_schema.get("properties", {})
    return {k: v for k, v in props.items() if isinstance(v, Mapping)}


def _required(spec: SkillSpec) -> list[str]:
    req = spec.input_schema.get("required", [])
    return [str(r) for r in req] if isinstance(req, list) else []


def check_input(spec: SkillSpec, value: Mapping[str, Any]) -> str | None:
    props = properties(spec)
    missing = [r for r in _required(spec) if r not in value]
    if missing:
        return f"{spec.name} needs {', '.join(missing)}"
    for key, v in value.items():
        if key not in props:
            if spec.input_schema.get("additionalProperties") is False:
                return f"{spec.name} takes no input {key!r}"
            continue
        problem = _check_value(key, props[key], v)
        if problem:
            return problem
    return None


_UNIT_WORDS: dict[Unit, str] = {
    "percent": "percent",
    "degrees": "degrees",
    "celsius": "degrees Celsius",
    "fahrenheit": "degrees Fahrenheit",
    "kelvin": "kelvin",
}


def _numeric_property(spec: SkillSpec) -> str | None:
    """The skill's one required numeric input property, if it has exactly one."""
    props = properties(spec)
    numeric = [r for r in _required(spec) if _schema_type(props.get(r, {})) & {"integer", "number"}]
    return numeric[0] if len(numeric) == 1 else None


def build_input(
    spec: SkillSpec, number: Number | None, duration: float | None = None
) -> tuple[dict[str, Any], str | None, str | None]:
    """Fill the skill's one required numeric property from the text's number (or its duration,
    for a property in minutes or seconds), converted to the unit the schema declares. Returns
    the input, why it cannot run (or None) and a note on a conversion (or None)."""
    name = _numeric_property(spec)
    value: dict[str, Any] = {}
    if name is None:
        return value, check_input(spec, value), None
    prop = properties(spec).get(name, {})
    per = duration_unit(name, prop, spec.description)
    if per is not None:
        if duration is not None:
            v = round(duration / per, 3)
            value[name] = int(v) if "integer" in _schema_type(prop) and v.is_integer() else v
        return value, check_input(spec, value), None
    if number is None:
        return value, check_input(spec, value), None
    target = schema_unit(name, prop, spec.description)
    full_scale = prop.get("minimum") == 0 and prop.get("maximum") == 100
    if target is None and number.unit == "percent" and full_scale:
        target = "percent"  # a 0-100 scale takes a percentage as it is
    if target is None and number.unit is not None and not number.unknown_unit:
        value[name] = number.value
        return value, f"{spec.name} does not say which unit {name} takes: {number.text}?", None
    converted, note = convert(number, target)
    if converted is None:
        value[name] = number.value
        said = number.unknown_unit or _UNIT_WORDS.get(number.unit or "percent", "")
        want = _UNIT_WORDS.get(target, "its own unit") if target else "its own unit"
        return value, f"{spec.name} takes {name} in {want}, not {said}", None
    v = converted
    value[name] = int(v) if "integer" in _schema_type(prop) and float(v).is_integer() else v
    return value, check_input(spec, value), note
