"""The Home Assistant bridge's data: names, topics, commands, state views, one device's mapping.

Pure data shared by the mapping (:mod:`~edgeagent.bridges.ha_map`), the command and state
translation (:mod:`~edgeagent.bridges.ha_commands`) and the I/O shell
(:mod:`~edgeagent.bridges.ha`). Errors::

    EdgeAgentError
    └── HaError                 the bridge refused something (logged and counted, never fatal)
        ├── HaCommandError      a command payload from Home Assistant that means nothing here
        └── HaStateError        a skill output or event that cannot become a state payload
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from edgeagent.errors import EdgeAgentError
from edgeagent.protocol import Topics

DEFAULT_PREFIX = "homeassistant"
#: Home Assistant's availability payloads from the device's retained state message: only
#: ``online`` is available (``draining`` and ``updating`` refuse new calls).
AVAILABILITY_TEMPLATE = "{{ 'online' if value_json.status == 'online' else 'offline' }}"

Component = Literal["light", "climate", "sensor", "binary_sensor", "switch", "button", "number"]
CommandKind = Literal["light", "temperature", "switch", "button", "number"]
Render = Literal["raw", "light"]


class HaError(EdgeAgentError):
    """Base of the bridge's own refusals."""


class HaCommandError(HaError):
    """A command payload that cannot become a skill call."""


class HaStateError(HaError):
    """A skill output or event that cannot become a state payload."""


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def safe_id(text: str) -> str:
    """``text`` with every character Home Assistant refuses in ids replaced by ``_``."""
    return _UNSAFE.sub("_", text)


@dataclass(frozen=True, slots=True)
class HaNames:
    """The topics the bridge owns for one fleet: discovery under ``prefix``, state and commands
    under ``{root}/ha/{fleet}``."""

    topics: Topics
    prefix: str = DEFAULT_PREFIX

    @property
    def base(self) -> str:
        return f"{self.topics.root}/ha/{self.topics.fleet}"

    def discovery_id(self, device: str) -> str:
        return safe_id(f"{self.topics.root}_{self.topics.fleet}_{device}")

    def config(self, device: str) -> str:
        return f"{self.prefix}/device/{self.discovery_id(device)}/config"

    def configs_filter(self) -> str:
        return f"{self.prefix}/device/+/config"

    def state(self, device: str, obj: str) -> str:
        return f"{self.base}/{device}/{obj}/state"

    def command(self, device: str, obj: str) -> str:
        return f"{self.base}/{device}/{obj}/set"

    def commands_filter(self) -> str:
        return f"{self.base}/+/+/set"

    def unique_id(self, device: str, obj: str) -> str:
        return f"{self.discovery_id(device)}_{obj}"


@dataclass(frozen=True, slots=True)
class StateView:
    """One retained state topic fed from one read skill's output (or an event carrying it)."""

    topic: str
    skill: str
    render: Render = "raw"
    on_field: str | None = None
    level_field: str | None = None
    #: Output fields that must all be present for an event's data to stand in for the output.
    required: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Command:
    """How a payload on one command topic becomes a skill call.

    ``skills`` by role: light ``on``/``off``/``level``; ``set`` for temperature, number and
    switch; ``press`` for a button. ``field`` is the input field the value goes to. After a
    call of a skill in ``direct`` (its output schema is the views' source's), the reply renders
    ``views`` at once; after any other, the views' read skills are polled again.
    """

    kind: CommandKind
    skills: dict[str, str]
    field: str | None = None
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    views: tuple[StateView, ...] = ()
    direct: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A skill the bridge did not project, and why."""

    skill: str
    reason: str


@dataclass(frozen=True, slots=True)
class DeviceMap:
    """Everything the bridge does for one manifest."""

    device: str
    config_topic: str
    #: The retained discovery payload, or None when nothing maps (no discovery published).
    payload: dict[str, Any] | None
    commands: dict[str, Command] = field(default_factory=dict)
    views: tuple[StateView, ...] = ()
    #: Event name -> the event entity's topic.
    events: dict[str, str] = field(default_factory=dict)
    unmapped: tuple[Unmapped, ...] = ()

    @property
    def entities(self) -> int:
        return len(self.payload["cmps"]) if self.payload else 0

    @property
    def poll_skills(self) -> tuple[str, ...]:
        """The read skills that feed state topics, each once."""
        return tuple(dict.fromkeys(v.skill for v in self.views))

    def state_topics(self) -> list[str]:
        """Every retained topic the bridge publishes for this device (cleared on removal)."""
        return sorted({v.topic for v in self.views})

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description for ``bridge run --dry-run``/``--json`` and the log."""
        cmps = self.payload["cmps"] if self.payload else {}
        return {
            "device": self.device,
            "config_topic": self.config_topic,
            "entities": {k: v["p"] for k, v in cmps.items()},
            "unmapped": [{"skill": u.skill, "reason": u.reason} for u in self.unmapped],
        }
