"""The tiny LLM's world and its examples: a fixed demo catalog and router requests with their plans.

The catalog is a small house (three lamps, a thermostat, a front-door lock, a bedroom fan) built
from :class:`~edgeagent.protocol.SkillSpec` objects shaped like the example fleet's skills. The
requests come from the intent recipe's generator (:func:`.intent_data.generate`: its templates,
device words, rooms and numbers), so the LLM and the intent model see the same phrasings and
the held-out split uses templates never seen in training. Each request is mapped to the plan a
careful router would make over this catalog (:func:`plan_for`): a step when a device can do it,
``{"steps": []}`` (a refusal) when none can ("turn on the garage lights" in a house without
garage lights, "tell me a joke"). A share of requests joins two actionable ones ("turn off the
lights and lock the door") into a two-step plan.

Pure and seeded: the same seed gives the same examples on every machine. The chat messages are
:func:`edgeagent.nlu.llm_prompt.messages` and the answers :func:`~.llm_prompt.render_plan`, the
format the LLM router prompts with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from ...nlu.catalog import Catalog
from ...nlu.llm_prompt import Step, Tool, messages, render_plan, tools_from_catalog
from ...protocol import SkillSpec
from ._base import rng
from .intent_data import Utterance, generate
from .intent_vocab import PREFIXES

ExampleKind = Literal["single", "multi", "refusal"]
MULTI_SHARE = 0.2
"""Share of examples that join two actionable requests into a two-step plan."""
REFUSAL_SHARE = 0.25
"""Share of examples no device of the demo house can carry out (the plan is empty)."""
JOINERS = (" and ", " and ", ", then ", " and also ", ", and ")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _spec(name: str, description: str, props: Mapping[str, Any] | None = None) -> SkillSpec:
    schema: dict[str, Any] = {"type": "object", "properties": dict(props or {})}
    if props:
        schema["required"] = list(props)
    else:
        schema["additionalProperties"] = False
    return SkillSpec(
        name=name,
        description=description,
        side_effect="read" if name.startswith(("get_", "read_")) else "actuate",
        idempotent=True,
        input_schema=schema,
        output_schema={"type": "object"},
        max_concurrency=4,
        max_queue=64,
        timeout_s=10.0,
    )


_LAMP = (
    _spec("turn_on", "Turn it on."),
    _spec("turn_off", "Turn it off."),
    _spec(
        "set_brightness",
        "Set the lamp's brightness, percent.",
        {"level": {"type": "integer", "minimum": 0, "maximum": 100}},
    ),
    _spec("get_state", "Read its state."),
)
_THERMOSTAT = (
    _spec(
        "set_target",
        "Set the target temperature, Celsius.",
        {"celsius": {"type": "number", "minimum": 5, "maximum": 30}},
    ),
    _spec("read_temperature", "Read the temperature."),
)
_LOCK = (_spec("lock", "Lock the door."), _spec("unlock", "Unlock the door."), _LAMP[3])
_FAN = (
    _LAMP[0],
    _LAMP[1],
    _spec(
        "set_speed",
        "Set the fan speed.",
        {"speed": {"type": "integer", "minimum": 1, "maximum": 5}},
    ),
)

#: The demo house: (device, tags, skills).
DEMO_DEVICES: tuple[tuple[str, dict[str, str], tuple[SkillSpec, ...]], ...] = (
    ("lamp-kitchen", {"room": "kitchen", "kind": "lamp"}, _LAMP),
    ("lamp-living", {"room": "living", "kind": "lamp"}, _LAMP),
    ("lamp-bedroom", {"room": "bedroom", "kind": "lamp"}, _LAMP),
    ("thermostat-living", {"room": "living", "kind": "thermostat"}, _THERMOSTAT),
    ("lock-front", {"room": "hall", "kind": "lock"}, _LOCK),
    ("fan-bedroom", {"room": "bedroom", "kind": "fan"}, _FAN),
)

#: The intent generator's kinds → the demo catalog's ``kind`` tag.
KIND_TAG = {"light": "lamp", "thermostat": "thermostat", "door": "lock", "fan": "fan"}
#: (intent, catalog kind) → the skill and its number argument (or None).
SKILLS: dict[tuple[str, str], tuple[str, str | None]] = {
    ("turn_on", "lamp"): ("turn_on", None),
    ("turn_off", "lamp"): ("turn_off", None),
    ("set_level", "lamp"): ("set_brightness", "level"),
    ("query_state", "lamp"): ("get_state", None),
    ("turn_on", "fan"): ("turn_on", None),
    ("turn_off", "fan"): ("turn_off", None),
    ("set_level", "fan"): ("set_speed", "speed"),
    ("set_level", "thermostat"): ("set_target", "celsius"),
    ("query_state", "thermostat"): ("read_temperature", None),
    ("lock", "lock"): ("lock", None),
    ("unlock", "lock"): ("unlock", None),
    ("query_state", "lock"): ("get_state", None),
}


@cache
def demo_catalog() -> Catalog:
    return Catalog([(d, dict(t), list(s)) for d, t, s in DEMO_DEVICES])


@cache
def demo_tools() -> tuple[Tool, ...]:
    return tools_from_catalog(demo_catalog())


@dataclass(frozen=True, slots=True)
class Example:
    """One request and the plan it should get."""

    text: str
    steps: tuple[Step, ...]
    kind: ExampleKind

    @property
    def answer(self) -> str:
        return render_plan(self.steps)

    def chat(self) -> list[dict[str, str]]:
        """The prompt messages (system: the demo tools; user: the request)."""
        return messages(demo_tools(), self.text)


def _number(text: str, skill_input: str) -> int | float | None:
    found = _NUMBER.search(text)
    if found is None:
        return None
    value = float(found.group())
    if skill_input in ("level", "speed") or value.is_integer():
        return int(value)
    return value


def plan_for(u: Utterance) -> tuple[Step, ...]:
    """The plan over the demo catalog for one generated utterance (empty: refuse)."""
    tag = KIND_TAG.get(u.kind)
    if tag is None or (u.intent, tag) not in SKILLS:
        return ()
    skill, arg = SKILLS[(u.intent, tag)]
    where = {"kind": tag}
    if u.room != "none":
        where = {"room": u.room, "kind": tag}
    if not demo_catalog().devices_with(skill, where):
        return ()
    args: dict[str, Any] = {}
    if arg is not None:
        value = _number(u.text, arg)
        spec = demo_catalog().spec(skill)
        bounds = spec.input_schema["properties"][arg] if spec is not None else {}
        if value is None or not bounds["minimum"] <= value <= bounds["maximum"]:
            return ()
        args[arg] = value
    return (Step(skill, where, args),)


def _strip_prefix(text: str) -> str:
    for prefix in sorted((p for p in PREFIXES if p), key=len, reverse=True):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def examples(split: Literal["train", "test"], n: int, seed: int) -> list[Example]:
    """``n`` examples from the intent generator's ``split`` templates, seeded: a share
    :data:`REFUSAL_SHARE` of refusals, :data:`MULTI_SHARE` of two-step requests, the rest one
    step. (The generator's own mix would be mostly refusals: most of its devices are not in the
    demo house.)"""
    gen = rng(seed, 10 if split == "train" else 11)
    pool = generate(split, 8 * n + 64, gen)
    plans = [plan_for(u) for u in pool]
    actionable = [i for i, p in enumerate(plans) if p]
    refused = [i for i, p in enumerate(plans) if not p]
    out: list[Example] = []
    a = r = 0
    while len(out) < n:
        draw = gen.random()
        if draw < REFUSAL_SHARE:
            u = pool[refused[r % len(refused)]]
            r += 1
            out.append(Example(u.text, (), "refusal"))
            continue
        first = actionable[a % len(actionable)]
        a += 1
        if draw < REFUSAL_SHARE + MULTI_SHARE:
            second = int(gen.choice(actionable))
            one, two = plans[first][0], plans[second][0]
            if one.skill == two.skill and one.where == two.where:
                continue
            joiner = str(gen.choice(JOINERS))
            text = pool[first].text + joiner + _strip_prefix(pool[second].text)
            out.append(Example(text, (one, two), "multi"))
        else:
            out.append(Example(pool[first].text, plans[first], "single"))
    return out


def kinds_count(items: Sequence[Example]) -> dict[str, int]:
    counts = {"single": 0, "multi": 0, "refusal": 0}
    for e in items:
        counts[e.kind] += 1
    return counts
