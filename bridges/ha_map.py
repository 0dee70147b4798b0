"""Manifest -> Home Assistant device discovery, commands and state views (pure).

One call, :func:`map_device`, reads a device's :class:`~edgeagent.protocol.Manifest` and decides,
in this order, each skill used at most once:

1. explicit hints (``@skill(ha={"component": ...})``): ``sensor``, ``binary_sensor``, ``button``,
   ``switch``, ``number``, or ``none`` (leave it out); hints win over inference;
2. a ``light``: ``turn_on`` + ``turn_off`` (no input) and a read skill with no input whose
   output has a boolean ``on``; ``set_brightness`` (one numeric input with a maximum) adds
   brightness, read back from the output's ``brightness``;
3. a ``climate``: an actuate skill taking one temperature (a numeric field whose text names
   degrees Celsius/Fahrenheit) and a read skill with no input returning the room temperature
   (and optionally a ``target`` and a boolean naming heating);
4. read skills with no input: a ``sensor`` per number (unit and device class from the field's
   text: :mod:`~edgeagent.bridges.ha_schema`), a ``binary_sensor`` per boolean;
5. actuate skills with no required input: a ``button``;
6. every event: an ``event`` entity.

Anything else is listed in :attr:`DeviceMap.unmapped` with the reason, never guessed.
"""

from __future__ import annotations

from typing import Any

from edgeagent import __version__
from edgeagent.protocol import OPERATOR_PREFIXES, Manifest, SkillSpec

from . import ha_entities as ent
from .ha_model import (
    AVAILABILITY_TEMPLATE,
    Command,
    DeviceMap,
    HaNames,
    StateView,
    Unmapped,
    safe_id,
)
from .ha_schema import Field, field_named, fields, takes_no_input, unit_of

#: Entities one device may get; skills past it are listed as unmapped.
MAX_ENTITIES_PER_DEVICE = 64


class Builder:
    """Collects one device's components, commands and views while the rules run."""

    def __init__(self, manifest: Manifest, names: HaNames, max_entities: int) -> None:
        self.manifest = manifest
        self.names = names
        self.device = manifest.device
        self.max_entities = max_entities
        self.specs = {s.name: s for s in manifest.skills}
        self.cmps: dict[str, dict[str, Any]] = {}
        self.commands: dict[str, Command] = {}
        self.views: list[StateView] = []
        self.events: dict[str, str] = {}
        self.unmapped: list[Unmapped] = []
        self.used: set[str] = set()

    def free(self, name: str) -> SkillSpec | None:
        spec = self.specs.get(name)
        return spec if spec is not None and spec.name not in self.used else None

    def room(self, count: int) -> bool:
        return len(self.cmps) + count <= self.max_entities

    def add(self, obj: str, platform: str, config: dict[str, Any]) -> None:
        """Add a component under ``obj`` (unique per device; the caller checked room)."""
        self.cmps[obj] = {
            "p": platform,
            "unique_id": self.names.unique_id(self.device, obj),
            **config,
        }

    def state(self, obj: str) -> str:
        return self.names.state(self.device, obj)

    def command(self, obj: str, command: Command) -> str:
        topic = self.names.command(self.device, obj)
        self.commands[topic] = command
        return topic

    def view(self, obj: str, spec: SkillSpec, **kw: Any) -> StateView:
        required = frozenset(f.name for f in fields(spec.output_schema) if f.required)
        view = StateView(topic=self.state(obj), skill=spec.name, required=required, **kw)
        self.views.append(view)
        return view

    def skip(self, spec: SkillSpec, reason: str) -> None:
        self.used.add(spec.name)
        self.unmapped.append(Unmapped(spec.name, reason))


def map_device(
    manifest: Manifest, names: HaNames, *, max_entities: int = MAX_ENTITIES_PER_DEVICE
) -> DeviceMap:
    """Decide the discovery payload, commands and state views for one device."""
    b = Builder(manifest, names, max_entities)
    for spec in manifest.skills:
        if spec.name.startswith(OPERATOR_PREFIXES):
            b.skip(spec, "system or data skill (operators only)")
        elif spec.ha is not None:
            ent.hinted(b, spec, spec.ha)
    light(b)
    climate(b)
    for spec in manifest.skills:
        if spec.name not in b.used:
            ent.inferred(b, spec)
    for event in manifest.events:
        ent.event(b, event.name, event.description)
    return DeviceMap(
        device=manifest.device,
        config_topic=names.config(manifest.device),
        payload=discovery_payload(b) if b.cmps else None,
        commands=b.commands,
        views=tuple(b.views),
        events=b.events,
        unmapped=tuple(b.unmapped),
    )


def discovery_payload(b: Builder) -> dict[str, Any]:
    m = b.manifest
    dev: dict[str, Any] = {
        "ids": [b.names.discovery_id(m.device)],
        "name": m.device,
        "mf": "edgeagent",
        "mdl": m.profile or "edgeagent device",
        "sw": m.agent_version + (f" ({m.release})" if m.release else ""),
    }
    if "room" in m.tags:
        dev["sa"] = m.tags["room"]
    return {
        "dev": dev,
        "o": {"name": "edgeagent", "sw": __version__},
        "avty": [{"t": b.names.topics.state(m.device), "val_tpl": AVAILABILITY_TEMPLATE}],
        "qos": 1,
        "cmps": b.cmps,
    }


# Light -----------------------------------------------------------------------------------------


def _no_input_actuate(spec: SkillSpec | None) -> bool:
    return spec is not None and spec.side_effect == "actuate" and takes_no_input(spec.input_schema)


def _one_number(spec: SkillSpec) -> Field | None:
    """The single required numeric input field of an actuate skill, if that is all it takes."""
    items = fields(spec.input_schema)
    if spec.side_effect != "actuate" or len(items) != 1:
        return None
    only = items[0]
    return only if only.numeric and only.required else None


def light(b: Builder) -> None:
    on, off = b.free("turn_on"), b.free("turn_off")
    if not (on and off and _no_input_actuate(on) and _no_input_actuate(off)) or not b.room(1):
        return
    state = next(
        (
            s
            for s in b.manifest.skills
            if s.name not in b.used
            and s.side_effect == "read"
            and takes_no_input(s.input_schema)
            and (f := field_named(fields(s.output_schema), "on")) is not None
            and f.type == "boolean"
        ),
        None,
    )
    if state is None:
        return
    level_spec = b.free("set_brightness")
    level = _one_number(level_spec) if level_spec is not None else None
    out_level = field_named(fields(state.output_schema), "brightness")
    dimmable = level is not None and level.maximum and out_level is not None and out_level.numeric
    view = b.view(
        "light",
        state,
        render="light",
        on_field="on",
        level_field="brightness" if dimmable else None,
    )
    roles = {"on": on.name, "off": off.name}
    if dimmable and level_spec is not None and level is not None:
        roles["level"] = level_spec.name
    direct = frozenset(n for n in roles.values() if b.specs[n].output_schema == state.output_schema)
    cmd = Command(
        kind="light",
        skills=roles,
        field=level.name if dimmable and level else None,
        integer=bool(level and level.type == "integer"),
        minimum=level.minimum if level else None,
        maximum=level.maximum if level else None,
        views=(view,),
        direct=direct,
    )
    config: dict[str, Any] = {
        "name": None,
        "schema": "json",
        "state_topic": view.topic,
        "command_topic": b.command("light", cmd),
    }
    if dimmable and level is not None and level.maximum is not None:
        config["supported_color_modes"] = ["brightness"]
        config["brightness_scale"] = int(level.maximum)
    else:
        config["supported_color_modes"] = ["onoff"]
    b.add("light", "light", config)
    b.used.update({*roles.values(), state.name})


# Climate ---------------------------------------------------------------------------------------


def _temperature(item: Field) -> bool:
    return item.numeric and unit_of(item)[1] == "temperature"


def climate(b: Builder) -> None:
    setter = next(
        (
            s
            for s in b.manifest.skills
            if s.name not in b.used and (f := _one_number(s)) is not None and _temperature(f)
        ),
        None,
    )
    if setter is None or not b.room(1):
        return
    target_in = _one_number(setter)
    assert target_in is not None
    readers = [
        s
        for s in b.manifest.skills
        if s.name not in b.used
        and s.side_effect == "read"
        and takes_no_input(s.input_schema)
        and any(_temperature(f) for f in fields(s.output_schema))
    ]
    readers.sort(key=lambda s: s.output_schema != setter.output_schema)
    unit = unit_of(target_in)[0] or "°C"
    cmd_topic = b.names.command(b.device, "climate")
    config: dict[str, Any] = {
        "name": None,
        "modes": ["heat"],
        "temperature_command_topic": cmd_topic,
        "temperature_unit": "F" if unit == "°F" else "C",
        "precision": 0.1,
        "temp_step": 0.5,
    }
    if target_in.minimum is not None:
        config["min_temp"] = target_in.minimum
    if target_in.maximum is not None:
        config["max_temp"] = target_in.maximum
    views: tuple[StateView, ...] = ()
    if readers:
        reader = readers[0]
        view = b.view("climate", reader)
        views = (view,)
        config.update(_climate_state(view.topic, fields(reader.output_schema)))
        b.used.add(reader.name)
    direct = frozenset(
        {setter.name} if readers and setter.output_schema == readers[0].output_schema else ()
    )
    b.commands[cmd_topic] = Command(
        kind="temperature",
        skills={"set": setter.name},
        field=target_in.name,
        integer=target_in.type == "integer",
        minimum=target_in.minimum,
        maximum=target_in.maximum,
        views=views,
        direct=direct,
    )
    b.add("climate", "climate", config)
    b.used.add(setter.name)


def _climate_state(topic: str, out: list[Field]) -> dict[str, Any]:
    """The state topics and templates a climate entity reads from the reading's JSON."""
    config: dict[str, Any] = {"mode_state_topic": topic, "mode_state_template": "heat"}
    temps = [f for f in out if _temperature(f)]
    current = next((f for f in temps if "target" not in f.text), None)
    target = next((f for f in temps if "target" in f.text), None)
    heating = next((f for f in out if f.type == "boolean" and "heat" in f.text), None)
    if current is not None:
        config["current_temperature_topic"] = topic
        config["current_temperature_template"] = ent.value(current.name)
    if target is not None:
        config["temperature_state_topic"] = topic
        config["temperature_state_template"] = ent.value(target.name)
    if heating is not None:
        config["action_topic"] = topic
        config["action_template"] = (
            f"{{{{ 'heating' if value_json[{heating.name!r}] else 'idle' }}}}"
        )
    return config


__all__ = ["MAX_ENTITIES_PER_DEVICE", "Builder", "map_device", "safe_id"]
