"""Reading a skill's JSON Schemas for the Home Assistant bridge (pure).

What the mapping in :mod:`edgeagent.bridges.ha_map` needs to know about a schema: its fields
(``$ref`` into ``$defs`` followed once), which are required, which are numbers or booleans, their
bounds, and the unit and Home Assistant device class their title or description names ("Room
temperature, degrees Celsius." -> ``°C``, ``temperature``). Nothing here guesses beyond the text:
a field with no recognised unit gets none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

NUMBER_TYPES = ("number", "integer")


@dataclass(frozen=True, slots=True)
class Field:
    """One property of an object schema."""

    name: str
    type: str
    title: str
    description: str
    required: bool
    minimum: float | None = None
    maximum: float | None = None

    @property
    def text(self) -> str:
        """Name, title and description, lower case: what unit and class rules read."""
        return f"{self.name} {self.title} {self.description}".lower()

    @property
    def numeric(self) -> bool:
        return self.type in NUMBER_TYPES


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow one local ``$ref`` (``#/$defs/Name``); anything else is returned unchanged."""
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = schema.get("$defs", {}).get(ref.removeprefix("#/$defs/"))
        if isinstance(target, dict):
            return target
    return node


def field_type(node: dict[str, Any]) -> str:
    """The JSON type of a property; ``X | None`` (``anyOf`` with null) counts as ``X``."""
    kind = node.get("type")
    if isinstance(kind, str):
        return kind
    options = node.get("anyOf")
    if isinstance(options, list):
        kinds = [o.get("type") for o in options if isinstance(o, dict)]
        real = [k for k in kinds if isinstance(k, str) and k != "null"]
        if len(real) == 1:
            return real[0]
    return "unknown"


def _bound(node: dict[str, Any], key: str) -> float | None:
    value = node.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def fields(schema: dict[str, Any]) -> list[Field]:
    """The properties of an object schema, in order (empty for any other schema)."""
    root = resolve(schema, schema)
    props = root.get("properties")
    if root.get("type") != "object" or not isinstance(props, dict):
        return []
    required = set(root.get("required") or ())
    out = []
    for name, raw in props.items():
        node = resolve(schema, raw) if isinstance(raw, dict) else {}
        out.append(
            Field(
                name=str(name),
                type=field_type(node),
                title=str(node.get("title", "")),
                description=str(node.get("description", "")),
                required=name in required,
                minimum=_bound(node, "minimum"),
                maximum=_bound(node, "maximum"),
            )
        )
    return out


def takes_no_input(schema: dict[str, Any]) -> bool:
    """True when the skill can be called with ``{}`` (no property is required)."""
    root = resolve(schema, schema)
    return root.get("type") == "object" and not root.get("required")


def scalar_type(schema: dict[str, Any]) -> str:
    """The type of a non-object output (``number``, ``boolean``…), or ``object``."""
    return field_type(resolve(schema, schema))


def field_named(items: list[Field], name: str) -> Field | None:
    return next((f for f in items if f.name == name), None)


# Units and device classes -------------------------------------------------------------------

#: (pattern over name/title/description, unit_of_measurement, device class or None), first wins.
UNIT_RULES: tuple[tuple[str, str, str | None], ...] = (
    (r"degrees? celsius|°c\b|\bcelsius\b", "°C", "temperature"),
    (r"degrees? fahrenheit|°f\b|\bfahrenheit\b", "°F", "temperature"),
    (r"\bkilowatt[- ]?hours?\b|\bkwh\b", "kWh", "energy"),
    (r"\bwatts?\b", "W", "power"),
    (r"\bvolts?\b", "V", "voltage"),
    (r"\bamperes?\b|\bamps?\b", "A", "current"),
    (r"\bhectopascals?\b|\bhpa\b", "hPa", "pressure"),
    (r"\blux\b", "lx", "illuminance"),
    (r"\bppm\b|parts per million", "ppm", None),
    (r"\bmilliseconds?\b", "ms", "duration"),
    (r"\bseconds?\b", "s", "duration"),
    (r"\bbytes?\b", "B", "data_size"),
    (r"\bpercent\b|%", "%", None),
)
#: Percent fields whose text names one of these get that device class.
PERCENT_CLASSES = (("humidity", "humidity"), ("battery", "battery"), ("moisture", "moisture"))
_COMPILED = tuple((re.compile(p), unit, cls) for p, unit, cls in UNIT_RULES)


def unit_of(item: Field) -> tuple[str | None, str | None]:
    """``(unit_of_measurement, device_class)`` named by a field's text, or ``(None, None)``."""
    text = item.text
    if "unix time" in text or "timestamp" in text:
        return None, None  # a point in time, not a duration
    for pattern, unit, cls in _COMPILED:
        if pattern.search(text):
            if unit == "%":
                cls = next((c for word, c in PERCENT_CLASSES if word in text), None)
            return unit, cls
    return None, None
