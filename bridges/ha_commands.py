"""Home Assistant command payloads -> skill calls; skill outputs and events -> state payloads
(pure).

What Home Assistant publishes on a command topic, by entity:

* JSON light: ``{"state": "ON", "brightness": 40}`` / ``{"state": "OFF"}`` (plain ``ON``/``OFF``
  accepted too); brightness is already on the skill's scale (``brightness_scale``);
* climate: the target temperature as plain text, ``21.5``;
* switch: ``ON``/``OFF``; number: the value as text; button: ``PRESS``.

Every refusal is a :class:`~edgeagent.bridges.ha_model.HaCommandError` naming what was wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .ha_model import Command, HaCommandError, HaStateError, StateView

#: Largest command payload accepted, bytes (Home Assistant's are tens of bytes).
MAX_COMMAND_BYTES = 1024
#: Largest state or event payload published, bytes.
MAX_STATE_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class SkillCall:
    """One call the bridge makes for a command."""

    skill: str
    input: dict[str, Any]


def _text(payload: bytes) -> str:
    if len(payload) > MAX_COMMAND_BYTES:
        raise HaCommandError(f"command payload of {len(payload)} bytes (limit {MAX_COMMAND_BYTES})")
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise HaCommandError("command payload is not UTF-8 text") from exc


def _number(text: str, cmd: Command) -> float | int:
    try:
        number = float(text)
    except ValueError:
        raise HaCommandError(f"expected a number, got {text[:40]!r}") from None
    if not math.isfinite(number):
        raise HaCommandError(f"expected a finite number, got {text[:40]!r}")
    low = -math.inf if cmd.minimum is None else cmd.minimum
    high = math.inf if cmd.maximum is None else cmd.maximum
    if not low <= number <= high:
        raise HaCommandError(f"{number:g} is outside {cmd.minimum}..{cmd.maximum}")
    return round(number) if cmd.integer else number


def _on_off(text: str) -> bool:
    upper = text.upper()
    if upper not in ("ON", "OFF"):
        raise HaCommandError(f"expected ON or OFF, got {text[:40]!r}")
    return upper == "ON"


def _light(text: str, cmd: Command) -> SkillCall:
    if text.upper() in ("ON", "OFF"):
        message: Any = {"state": text.upper()}
    else:
        try:
            message = json.loads(text)
        except ValueError:
            raise HaCommandError(
                f"light command is neither JSON nor ON/OFF: {text[:40]!r}"
            ) from None
    if not isinstance(message, dict) or "state" not in message:
        raise HaCommandError('light command must be a JSON object with "state"')
    on = _on_off(str(message["state"]))
    if not on:
        return SkillCall(cmd.skills["off"], {})
    brightness = message.get("brightness")
    if brightness is None or "level" not in cmd.skills or cmd.field is None:
        return SkillCall(cmd.skills["on"], {})
    if isinstance(brightness, bool) or not isinstance(brightness, int | float):
        raise HaCommandError(f"brightness must be a number, got {brightness!r:.40}")
    return SkillCall(cmd.skills["level"], {cmd.field: _number(str(brightness), cmd)})


def decode_command(cmd: Command, payload: bytes) -> SkillCall:
    """The skill call a command payload means, or :class:`HaCommandError`."""
    text = _text(payload)
    if cmd.kind == "light":
        return _light(text, cmd)
    if cmd.kind == "button":
        return SkillCall(cmd.skills["press"], {})
    assert cmd.field is not None
    if cmd.kind == "switch":
        return SkillCall(cmd.skills["set"], {cmd.field: _on_off(text)})
    return SkillCall(cmd.skills["set"], {cmd.field: _number(text, cmd)})


def _dump(value: Any) -> bytes:
    data = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > MAX_STATE_BYTES:
        raise HaStateError(f"state payload of {len(data)} bytes (limit {MAX_STATE_BYTES})")
    return data


def render_state(view: StateView, output: Any) -> bytes:
    """The retained payload Home Assistant reads on ``view.topic`` for a skill's output."""
    if view.render == "raw":
        return _dump(output if isinstance(output, dict) else {"value": output})
    if not isinstance(output, dict) or not isinstance(output.get(view.on_field or "on"), bool):
        raise HaStateError(f"{view.skill} output has no boolean {view.on_field!r}")
    state: dict[str, Any] = {"state": "ON" if output[view.on_field or "on"] else "OFF"}
    if view.level_field is not None:
        level = output.get(view.level_field)
        if isinstance(level, int | float) and not isinstance(level, bool):
            state["brightness"] = level
        state["color_mode"] = "brightness"
    else:
        state["color_mode"] = "onoff"
    return _dump(state)


def event_carries(view: StateView, data: dict[str, Any]) -> bool:
    """True when an event's data holds every required field of the view's output (the lamp's
    ``changed`` event carries its state): the view renders from it without a call."""
    return bool(view.required) and view.required <= data.keys()


def render_event(name: str, data: dict[str, Any]) -> bytes:
    """An event entity's payload: the event's data with ``event_type`` (data dropped if large)."""
    try:
        return _dump({**data, "event_type": name})
    except HaStateError:
        return _dump({"event_type": name})
