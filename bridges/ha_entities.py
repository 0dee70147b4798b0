"""The one-skill entities of the Home Assistant mapping (pure): sensors, binary sensors, buttons,
switches, numbers (by hint), events; and what an explicit ``ha`` hint asks for.

Called by :func:`edgeagent.bridges.ha_map.map_device`, which owns the order of the rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeagent.protocol import SkillSpec

from .ha_model import Command, StateView, Unmapped, safe_id
from .ha_schema import Field, fields, scalar_type, takes_no_input, unit_of

if TYPE_CHECKING:
    from .ha_map import Builder

#: Components a hint may name; ``none`` leaves the skill out on purpose.
HINT_COMPONENTS = ("sensor", "binary_sensor", "button", "switch", "number", "none")
#: Hint keys copied onto the entity's config as they are.
PASSTHROUGH = (
    "name",
    "icon",
    "device_class",
    "state_class",
    "entity_category",
    "unit_of_measurement",
)


def value(name: str) -> str:
    """A template reading field ``name`` of a JSON state payload."""
    return f"{{{{ value_json[{name!r}] }}}}"


def title(text: str) -> str:
    return text.replace("_", " ").strip().capitalize() or text


# Sensors and binary sensors --------------------------------------------------------------------


def _output_fields(spec: SkillSpec) -> list[Field]:
    """The output's fields; a scalar output is one field, ``value`` (the state wraps it)."""
    out = fields(spec.output_schema)
    if out:
        return out
    kind = scalar_type(spec.output_schema)
    return [Field("value", kind, spec.name, spec.description, True)] if kind != "object" else []


def _sensor_config(item: Field, topic: str, hint: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    config: dict[str, Any] = {"name": item.title or title(item.name), "state_topic": topic}
    if item.type == "boolean":
        tpl = f"{{{{ 'ON' if value_json[{item.name!r}] else 'OFF' }}}}"
        config["value_template"] = tpl
        platform = "binary_sensor"
    else:
        config["value_template"] = value(item.name)
        unit, cls = unit_of(item)
        if unit:
            config["unit_of_measurement"] = unit
        if cls:
            config["device_class"] = cls
        config["state_class"] = "measurement"
        platform = "sensor"
    if "unit" in hint:
        config["unit_of_measurement"] = str(hint["unit"])
    config.update({k: hint[k] for k in PASSTHROUGH if k in hint})
    return platform, config


def sensors(b: Builder, spec: SkillSpec, hint: dict[str, Any] | None = None) -> None:
    """A sensor per number and a binary sensor per boolean of a read skill's output."""
    hint = hint or {}
    if spec.side_effect != "read" or not takes_no_input(spec.input_schema):
        b.skip(spec, "a sensor needs a read skill callable with no input")
        return
    wanted = hint.get("field")
    items = [f for f in _output_fields(spec) if f.numeric or f.type == "boolean"]
    if wanted is not None:
        items = [f for f in items if f.name == wanted]
    if not items:
        b.skip(spec, "output has no number or boolean field" + (f" {wanted!r}" if wanted else ""))
        return
    if not b.room(len(items)):
        b.skip(spec, f"entity limit ({b.max_entities}) reached")
        return
    obj = safe_id(spec.name)
    view = b.view(obj, spec)
    for item in items:
        platform, config = _sensor_config(item, view.topic, hint)
        b.add(safe_id(f"{spec.name}_{item.name}"), platform, config)
    b.used.add(spec.name)


# Buttons, switches, numbers --------------------------------------------------------------------


def button(b: Builder, spec: SkillSpec, hint: dict[str, Any] | None = None) -> None:
    if not takes_no_input(spec.input_schema):
        b.skip(spec, "a button needs a skill callable with no input")
        return
    if not b.room(1):
        b.skip(spec, f"entity limit ({b.max_entities}) reached")
        return
    obj = safe_id(spec.name)
    topic = b.command(obj, Command(kind="button", skills={"press": spec.name}))
    config = {"name": title(spec.name), "command_topic": topic, "payload_press": "PRESS"}
    config.update({k: v for k, v in (hint or {}).items() if k in PASSTHROUGH})
    b.add(obj, "button", config)
    b.used.add(spec.name)


def _state_source(b: Builder, hint: dict[str, Any], obj: str) -> tuple[StateView | None, str]:
    """A hint's ``state_skill``/``state_field``: the view and the template reading it."""
    name = hint.get("state_skill")
    spec = b.specs.get(str(name)) if name is not None else None
    if spec is None or spec.side_effect != "read" or not takes_no_input(spec.input_schema):
        return None, ""
    return b.view(obj, spec), str(hint.get("state_field", "value"))


def valued(b: Builder, spec: SkillSpec, hint: dict[str, Any], component: str) -> None:
    """A ``switch`` (one boolean input) or ``number`` (one numeric input) named by a hint."""
    want = "boolean" if component == "switch" else "number"
    items = [
        f
        for f in fields(spec.input_schema)
        if (f.type == "boolean") == (want == "boolean") and (f.numeric or want == "boolean")
    ]
    if "field" in hint:
        items = [f for f in items if f.name == hint["field"]]
    others = [f for f in fields(spec.input_schema) if f.required and f not in items]
    if spec.side_effect != "actuate" or len(items) != 1 or others or not b.room(1):
        b.skip(spec, f"a {component} needs an actuate skill with one {want} input field")
        return
    item, obj = items[0], safe_id(spec.name)
    view, read = _state_source(b, hint, obj)
    same = view is not None and b.specs[view.skill].output_schema == spec.output_schema
    direct = frozenset({spec.name}) if same else frozenset()
    cmd = Command(
        kind="switch" if component == "switch" else "number",
        skills={"set": spec.name},
        field=item.name,
        integer=item.type == "integer",
        minimum=item.minimum,
        maximum=item.maximum,
        views=(view,) if view else (),
        direct=direct,
    )
    config: dict[str, Any] = {"name": title(spec.name), "command_topic": b.command(obj, cmd)}
    if view is None:
        config["optimistic"] = True
    elif component == "switch":
        config.update(
            state_topic=view.topic,
            value_template=(f"{{{{ 'ON' if value_json[{read!r}] else 'OFF' }}}}"),
        )
    else:
        config.update(state_topic=view.topic, value_template=value(read))
    if component == "number":
        config.update(
            {k: v for k, v in (("min", item.minimum), ("max", item.maximum)) if v is not None}
        )
        config["step"] = 1 if item.type == "integer" else float(hint.get("step", 0.1))
    config.update({k: hint[k] for k in PASSTHROUGH if k in hint})
    b.add(obj, component, config)
    b.used.add(spec.name)


# Hints, inference, events ----------------------------------------------------------------------


def hinted(b: Builder, spec: SkillSpec, hint: dict[str, Any]) -> None:
    """Map ``spec`` as its ``ha`` hint says (a hint without ``component`` only renames)."""
    component = hint.get("component")
    if component is None:
        return
    if component not in HINT_COMPONENTS:
        b.skip(
            spec,
            f"ha hint component {component!r} is not supported "
            f"(supported: {', '.join(HINT_COMPONENTS)})",
        )
    elif component == "none":
        b.skip(spec, "ha hint says none")
    elif component in ("sensor", "binary_sensor"):
        sensors(b, spec, hint)
    elif component == "button":
        button(b, spec, hint)
    else:
        valued(b, spec, hint, component)


def inferred(b: Builder, spec: SkillSpec) -> None:
    """Rules 4 and 5: a read skill with no input -> sensors; an actuate one -> a button."""
    if spec.side_effect == "read":
        if takes_no_input(spec.input_schema):
            sensors(b, spec, spec.ha)
        else:
            b.skip(spec, "read skill needs input (no entity polls with arguments)")
    elif takes_no_input(spec.input_schema):
        button(b, spec, spec.ha)
    else:
        b.skip(spec, "actuate skill needs input; an ha hint (switch, number) can map it")


def event(b: Builder, name: str, description: str) -> None:
    obj = safe_id(f"event_{name}")
    if not b.room(1):
        b.unmapped.append(Unmapped(f"event {name}", f"entity limit ({b.max_entities}) reached"))
        return
    topic = b.state(obj)
    b.events[name] = topic
    config = {"name": title(name), "state_topic": topic, "event_types": [name]}
    b.add(obj, "event", config)
