"""The Home Assistant bridge's pure core: manifest -> discovery, commands, state (no broker).

Every discovery payload is checked by ``ha-mqtt-models-pydantic`` (a validator nobody here
wrote), and more strictly than it checks itself: a key its model does not know is an error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import pytest
from ha_mqtt_models_pydantic import parse_component_payload, parse_device_discovery_payload
from ha_mqtt_models_pydantic.discovery import COMPONENT_MODELS, expand_abbreviations
from pydantic import BaseModel, Field

from edgeagent import skill
from edgeagent.bridges.ha_commands import (
    MAX_COMMAND_BYTES,
    decode_command,
    event_carries,
    render_event,
    render_state,
)
from edgeagent.bridges.ha_map import map_device
from edgeagent.bridges.ha_model import DeviceMap, HaCommandError, HaNames, HaStateError
from edgeagent.bridges.ha_schema import Field as SchemaField
from edgeagent.bridges.ha_schema import unit_of
from edgeagent.config import load_config, load_skills
from edgeagent.protocol import EventSpec, Manifest, SkillSpec, Topics
from edgeagent.skills import collect_skills

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"
NAMES = HaNames(Topics("edgeagent", "home"))
SHARED = ("avty", "availability", "qos")


def manifest_of(
    device: str,
    specs: list[SkillSpec],
    events: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> Manifest:
    return Manifest(
        device=device,
        fleet="home",
        profile="pi4",
        tags=tags or {},
        skills=specs,
        events=[EventSpec(name=k, description=v) for k, v in (events or {}).items()],
        max_payload=65536,
        agent_version="0.1.0",
    )


def example(config: str) -> Manifest:
    cfg = load_config(EXAMPLES / config)
    skills, _, events = load_skills(cfg)
    return manifest_of(cfg.device, [s.spec for s in skills], events, dict(cfg.tags))


def known_keys(model: type[BaseModel]) -> set[str]:
    keys = set()
    for name, info in model.model_fields.items():
        keys |= {name, info.alias or name}
    return keys


def validate(payload: dict[str, Any]) -> None:
    """Validate a device discovery payload as a whole and every component with its model."""
    parse_device_discovery_payload(payload)
    top = expand_abbreviations(payload)
    assert set(top) <= {"device", "origin", "components", "availability", "qos"}, top.keys()
    for obj, comp in payload["cmps"].items():
        platform = comp["p"]
        config = {k: v for k, v in comp.items() if k != "p"}
        config.update({k: payload[k] for k in SHARED if k in payload})
        model = parse_component_payload(platform, config)
        unknown = set(expand_abbreviations(config)) - known_keys(type(model))
        assert not unknown, f"{obj}: keys {unknown} unknown to {type(model).__name__}"
        assert platform in COMPONENT_MODELS


EXAMPLE_CONFIGS = sorted(
    p.name
    for p in EXAMPLES.glob("*.yaml")
    if re.search(r"^device:", p.read_text(encoding="utf-8"), re.MULTILINE)
)


@pytest.fixture(scope="module")
def maps() -> dict[str, DeviceMap]:
    out = {}
    for config in EXAMPLE_CONFIGS:
        m = example(config)
        out[m.device] = map_device(m, NAMES)
    return out


def test_every_example_payload_validates(maps: dict[str, DeviceMap]) -> None:
    assert {"lamp-hall", "thermostat-living", "doorbell-front"} <= maps.keys()
    for dm in maps.values():
        if dm.payload is not None:
            validate(dm.payload)
            json.dumps(dm.payload)  # what goes on the wire
    assert sum(dm.entities for dm in maps.values()) >= 6


def test_lamp_is_a_dimmable_light(maps: dict[str, DeviceMap]) -> None:
    dm = maps["lamp-hall"]
    assert dm.config_topic == "homeassistant/device/edgeagent_home_lamp-hall/config"
    assert dm.payload is not None
    light = dm.payload["cmps"]["light"]
    assert light["p"] == "light"
    assert light["schema"] == "json"
    assert light["supported_color_modes"] == ["brightness"]
    assert light["brightness_scale"] == 100
    assert dm.payload["dev"]["sa"] == "hall"
    assert dm.payload["o"]["name"] == "edgeagent"
    assert dm.payload["avty"][0]["t"] == "edgeagent/home/dev/lamp-hall/state"
    cmd = dm.commands[light["command_topic"]]
    on = decode_command(cmd, b'{"state": "ON", "brightness": 37}')
    assert (on.skill, on.input) == ("set_brightness", {"level": 37})
    assert decode_command(cmd, b'{"state":"OFF"}').skill == "turn_off"
    assert decode_command(cmd, b'{"state":"ON"}').skill == "turn_on"
    assert decode_command(cmd, b"ON").skill == "turn_on"
    assert dm.poll_skills == ("get_state",)
    # The lamp's toggle is a button, its `changed` event an event entity.
    assert dm.summary()["entities"] == {
        "light": "light",
        "toggle": "button",
        "event_changed": "event",
    }


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b'{"brightness": 3}',
        b'{"state": "MAYBE"}',
        b'{"state":"ON","brightness":300}',
        b'{"state":"ON","brightness":"x"}',
        b"[1]",
        b"\xff\xfe",
        b" " * (MAX_COMMAND_BYTES + 1),
    ],
)
def test_bad_light_commands_are_refused(maps: dict[str, DeviceMap], payload: bytes) -> None:
    dm = maps["lamp-hall"]
    cmd = dm.commands["edgeagent/ha/home/lamp-hall/light/set"]
    with pytest.raises(HaCommandError):
        decode_command(cmd, payload)


def test_thermostat_is_a_climate(maps: dict[str, DeviceMap]) -> None:
    dm = maps["thermostat-living"]
    assert dm.payload is not None
    climate = dm.payload["cmps"]["climate"]
    assert (climate["min_temp"], climate["max_temp"], climate["temperature_unit"]) == (5, 30, "C")
    assert climate["current_temperature_template"] == "{{ value_json['celsius'] }}"
    assert climate["temperature_state_template"] == "{{ value_json['target'] }}"
    cmd = dm.commands[climate["temperature_command_topic"]]
    call = decode_command(cmd, b"21.5")
    assert (call.skill, call.input) == ("set_target", {"celsius": 21.5})
    assert "set_target" in cmd.direct  # its reply is the reading: no poll needed
    for bad in (b"warm", b"nan", b"45", b"1e999"):
        with pytest.raises(HaCommandError):
            decode_command(cmd, bad)


def test_unmapped_skills_are_listed_with_reasons(maps: dict[str, DeviceMap]) -> None:
    unmapped = {u.skill: u.reason for u in maps["doorbell-front"].unmapped}
    assert "recent_rings" in unmapped
    assert "number or boolean" in unmapped["recent_rings"]
    assert "needs input" in unmapped["snapshot_stats"]
    doorbell = maps["doorbell-front"].payload
    assert doorbell is not None
    press = doorbell["cmps"]["press"]  # the example's hint: a diagnostic test button
    assert (press["p"], press["name"], press["entity_category"]) == (
        "button",
        "Test ring",
        "diagnostic",
    )
    listed = {u.skill for dm in maps.values() for u in dm.unmapped}
    assert "read_digit" in listed  # the meter reader needs an image: nothing to poll


class Climate(BaseModel):
    humidity: float = Field(description="Relative humidity, percent.")
    power: float = Field(description="Heater draw, watts.")
    at: float = Field(description="Unix time of the reading, seconds.")
    dry: bool = Field(description="Below 30 percent.")
    label: str = Field(description="A name.")


@skill(side_effect="read")
async def air() -> Climate:
    """Read the air."""
    raise NotImplementedError


@skill(side_effect="read")
async def level() -> float:
    """Tank level, percent."""
    raise NotImplementedError


@skill(side_effect="read")
async def relay_state() -> dict[str, bool]:
    """Whether the relay is closed."""
    raise NotImplementedError


@skill(
    side_effect="actuate",
    ha={"component": "switch", "state_skill": "relay_state", "state_field": "on", "name": "Relay"},
)
async def set_relay(on: bool) -> dict[str, bool]:
    """Close or open the relay."""
    raise NotImplementedError


@skill(side_effect="actuate", ha={"component": "number", "icon": "mdi:fan"})
async def set_fan(speed: Annotated[int, Field(ge=0, le=5)]) -> None:
    """Fan speed."""


@skill(side_effect="actuate", ha={"component": "none"})
async def reboot() -> None:
    """Reboot."""


@skill(side_effect="actuate", ha={"component": "vacuum"})
async def clean() -> None:
    """Clean."""


@skill(side_effect="actuate")
async def move(x: float, y: float) -> None:
    """Move somewhere."""


def synthetic() -> DeviceMap:
    funcs = [air, level, relay_state, set_relay, set_fan, reboot, clean, move]
    specs = [s.spec for f in funcs for s in collect_skills(f)]
    specs.append(SkillSpec.model_validate({**specs[0].model_dump(), "name": "system.info"}))
    return map_device(manifest_of("box.1", specs), NAMES)


def test_sensors_units_and_hints() -> None:
    dm = synthetic()
    assert dm.payload is not None
    validate(dm.payload)
    assert dm.config_topic == "homeassistant/device/edgeagent_home_box_1/config"
    cmps = dm.payload["cmps"]
    hum, power = cmps["air_humidity"], cmps["air_power"]
    assert (hum["unit_of_measurement"], hum["device_class"]) == ("%", "humidity")
    assert (power["unit_of_measurement"], power["device_class"]) == ("W", "power")
    assert "unit_of_measurement" not in cmps["air_at"]  # a point in time is no duration
    assert cmps["air_dry"]["p"] == "binary_sensor"
    assert "air_label" not in cmps
    assert cmps["level_value"]["unit_of_measurement"] == "%"  # a scalar output
    relay = cmps["set_relay"]
    assert relay["p"] == "switch"
    assert relay["name"] == "Relay"
    assert relay["value_template"] == "{{ 'ON' if value_json['on'] else 'OFF' }}"
    sw = dm.commands[relay["command_topic"]]
    assert decode_command(sw, b"OFF").input == {"on": False}
    fan = cmps["set_fan"]
    assert (fan["p"], fan["min"], fan["max"], fan["step"], fan["icon"]) == (
        "number",
        0,
        5,
        1,
        "mdi:fan",
    )
    assert decode_command(dm.commands[fan["command_topic"]], b"3").input == {"speed": 3}
    reasons = {u.skill: u.reason for u in dm.unmapped}
    assert reasons["reboot"] == "ha hint says none"
    assert "'vacuum' is not supported" in reasons["clean"]
    assert "needs input" in reasons["move"]
    assert "operators only" in reasons["system.info"]


def test_entity_limit_lists_the_rest() -> None:
    dm = map_device(example("lamp-hall.yaml"), NAMES, max_entities=2)
    assert dm.entities == 2
    assert any("entity limit" in u.reason for u in dm.unmapped)


def test_nothing_mapped_means_no_discovery() -> None:
    dm = map_device(manifest_of("quiet", [s.spec for s in collect_skills(move)]), NAMES)
    assert dm.payload is None
    assert dm.entities == 0
    assert dm.unmapped[0].skill == "move"


def test_state_rendering(maps: dict[str, DeviceMap]) -> None:
    lamp = maps["lamp-hall"].views[0]
    state = json.loads(render_state(lamp, {"on": True, "brightness": 55}))
    assert state == {"state": "ON", "brightness": 55, "color_mode": "brightness"}
    assert json.loads(render_state(lamp, {"on": False, "brightness": 9}))["state"] == "OFF"
    with pytest.raises(HaStateError):
        render_state(lamp, {"brightness": 1})
    with pytest.raises(HaStateError):
        render_state(lamp, "on")
    assert event_carries(lamp, {"on": True, "brightness": 3})
    assert not event_carries(lamp, {"who": "x"})
    raw = maps["thermostat-living"].views[0]
    reading = {"celsius": 19.5, "target": 20.5, "heating": True}
    assert json.loads(render_state(raw, reading)) == reading
    assert json.loads(render_event("ring", {"who": "x"})) == {"who": "x", "event_type": "ring"}
    assert json.loads(render_event("ring", {"blob": "x" * 20000})) == {"event_type": "ring"}


@pytest.mark.parametrize(
    ("text", "unit", "cls"),
    [
        ("Room temperature, degrees Celsius.", "°C", "temperature"),
        ("Soil moisture, percent.", "%", "moisture"),
        ("Energy used, kWh.", "kWh", "energy"),
        ("Uptime, seconds.", "s", "duration"),
        ("Unix time, seconds.", None, None),
        ("A count.", None, None),
    ],
)
def test_units_from_text(text: str, unit: str | None, cls: str | None) -> None:
    assert unit_of(SchemaField("x", "number", "", text, True)) == (unit, cls)
