"""The router's vocabulary, the catalog of devices and skills it routes to, and its results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..protocol import SkillSpec

if TYPE_CHECKING:
    from ..protocol import Manifest
from ._constants import (
    Layer,
    Mode,
)

# --- vocabulary ---------------------------------------------------------------------------------

#: Device-kind concepts (the intent model's kinds) → device ``kind`` tag values meaning the same,
#: in order of preference. A catalog kind not listed here is its own concept ("pump", "meter").
KIND_TAGS: dict[str, tuple[str, ...]] = {
    "light": ("lamp", "light", "lights", "bulb"),
    "thermostat": ("thermostat", "climate", "heater", "heating"),
    "door": ("door", "lock", "door-lock"),
    "doorbell": ("doorbell", "bell"),
    "speaker": ("speaker", "speakers", "assistant", "radio"),
    "fan": ("fan",),
    "blinds": ("blinds", "shades", "curtains", "shutters"),
}

#: Words naming a kind concept.
KIND_WORDS: dict[str, tuple[str, ...]] = {
    "light": (
        "light",
        "lights",
        "lamp",
        "lamps",
        "bulb",
        "bulbs",
        "lighting",
        "ceiling light",
        "spotlight",
        "spotlights",
    ),
    "thermostat": (
        "thermostat",
        "heating",
        "heater",
        "radiator",
        "radiators",
        "heat",
        "temperature",
        "temp",
        "climate",
    ),
    "door": ("door", "front door", "back door", "side door", "door lock"),
    "doorbell": ("doorbell", "door bell", "bell", "chime", "buzzer"),
    "speaker": ("speaker", "speakers", "music", "radio", "sound system", "volume"),
    "fan": ("fan", "fans", "ceiling fan", "extractor fan"),
    "blinds": ("blinds", "blind", "curtains", "shades", "shutters"),
}

#: Words pointing at a kind without naming it ("warmer" → thermostat): weaker evidence, used when
#: no kind is named.
KIND_CUES: dict[str, tuple[str, ...]] = {
    "light": ("dark", "bright", "brighter", "brightness", "dim", "dimmer", "brighten", "lit"),
    "thermostat": (
        "warm",
        "warmer",
        "cold",
        "colder",
        "hot",
        "hotter",
        "cool",
        "cooler",
        "chilly",
        "freezing",
        "degrees",
        "degree",
        "celsius",
    ),
    "doorbell": (
        "ring",
        "rang",
        "rung",
        "ringing",
        "rings",
        "ding",
        "at the door",
        "visitor",
        "visitors",
    ),
}

#: Room tag values → words for them. A catalog room not listed is matched by its own name.
ROOM_WORDS: dict[str, tuple[str, ...]] = {
    "kitchen": ("kitchen", "kitchenette"),
    "living": ("living room", "lounge", "sitting room", "family room", "front room", "living"),
    "hall": ("hall", "hallway", "entrance hall", "entrance", "entryway", "corridor", "foyer"),
    "bedroom": ("bedroom", "master bedroom", "guest bedroom", "bed room"),
    "bathroom": ("bathroom", "shower room", "bath room", "toilet"),
    "garage": ("garage",),
    "basement": ("basement", "cellar"),
    "office": ("office", "study"),
    "garden": ("garden", "yard", "backyard", "patio"),
    # Rooms the example fleets do not have: named so that "in the nursery" is a room the router
    # knows it has no device in, not a word it drops.
    "dining": ("dining room", "dining area"),
    "nursery": ("nursery", "kids room", "kids' room", "children's room", "playroom"),
    "attic": ("attic", "loft"),
    "utility": ("utility room", "laundry", "laundry room"),
    "porch": ("porch", "veranda", "front porch"),
    "landing": ("landing", "stairs", "staircase", "stairway", "upstairs", "downstairs"),
    "pantry": ("pantry",),
    "balcony": ("balcony", "terrace", "deck"),
    "driveway": ("driveway", "drive"),
    "shed": ("shed", "workshop"),
    "conservatory": ("conservatory", "sunroom"),
    "guest": ("guest room", "spare room", "spare bedroom"),
    "den": ("den", "snug", "games room", "music room", "library"),
}

#: Actions (the intent model's intents, plus ``toggle``) → skill names that perform them, per kind
#: concept; ``"*"`` applies to every kind. The first name a device has is the one used.
ACTION_SKILLS: dict[str, dict[str, tuple[str, ...]]] = {
    "turn_on": {"*": ("turn_on", "switch_on", "power_on")},
    "turn_off": {"*": ("turn_off", "switch_off", "power_off")},
    "toggle": {"*": ("toggle",)},
    "set_level": {
        "light": ("set_brightness", "set_level", "dim"),
        "thermostat": ("set_target", "set_temperature", "set_setpoint"),
        "speaker": ("set_volume",),
        "fan": ("set_speed", "set_level"),
        "blinds": ("set_position", "set_level"),
        "*": ("set_level",),
    },
    "query_state": {
        "thermostat": ("read_temperature", "get_temperature", "get_state"),
        "doorbell": ("recent_rings", "get_state"),
        "*": ("get_state", "read_state", "status"),
    },
    "notify": {
        "doorbell": ("press", "ring"),
        "speaker": ("announce", "say", "chime"),
        "*": ("press", "ring", "announce"),
    },
    "lock": {"*": ("lock",)},
    "unlock": {"*": ("unlock",)},
    "open": {"*": ("open",)},
    "close": {"*": ("close",)},
}

# --- the catalog --------------------------------------------------------------------------------

CatalogEntry = tuple[str, Mapping[str, str], Sequence[SkillSpec]]


@dataclass(frozen=True)
class CatalogDevice:
    """One device: its id, tags and skills."""

    device: str
    tags: Mapping[str, str]
    skills: tuple[SkillSpec, ...]

    def skill(self, name: str) -> SkillSpec | None:
        return next((s for s in self.skills if s.name == name), None)

    def matches(self, where: Mapping[str, str]) -> bool:
        """True if the device has every tag ``where`` asks for (the registry's rule)."""
        return all(self.tags.get(key) == value for key, value in where.items())


@dataclass(frozen=True)
class Catalog:
    """What the router may route to: ``(device, tags, skills)`` per device (the registry's view).

    ``Catalog([("lamp-kitchen", {"room": "kitchen", "kind": "lamp"}, specs), …])`` or
    :meth:`from_manifests`.
    """

    entries: Sequence[CatalogEntry] = ()
    devices: tuple[CatalogDevice, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        devices = tuple(
            CatalogDevice(device, dict(tags), tuple(skills))
            for device, tags, skills in self.entries
        )
        seen = [d.device for d in devices]
        dupes = sorted({d for d in seen if seen.count(d) > 1})
        if dupes:
            raise ValueError(f"devices listed twice: {', '.join(dupes)}")
        object.__setattr__(self, "entries", tuple((d.device, d.tags, d.skills) for d in devices))
        object.__setattr__(self, "devices", devices)

    @classmethod
    def from_manifests(cls, manifests: Iterable[Manifest]) -> Catalog:
        return cls([(m.device, m.tags, m.skills) for m in manifests])

    @property
    def skill_names(self) -> tuple[str, ...]:
        """Every skill some device has, sorted."""
        return tuple(sorted({s.name for d in self.devices for s in d.skills}))

    @property
    def tags(self) -> dict[str, frozenset[str]]:
        """Tag key → the set of values devices use for it."""
        out: dict[str, set[str]] = {}
        for d in self.devices:
            for key, value in d.tags.items():
                out.setdefault(key, set()).add(value)
        return {key: frozenset(values) for key, values in sorted(out.items())}

    def tag_values(self, key: str) -> frozenset[str]:
        return frozenset(d.tags[key] for d in self.devices if key in d.tags)

    @property
    def rooms(self) -> frozenset[str]:
        return self.tag_values("room")

    @property
    def kinds(self) -> frozenset[str]:
        return self.tag_values("kind")

    def matching(self, where: Mapping[str, str] | None = None) -> tuple[CatalogDevice, ...]:
        return tuple(d for d in self.devices if d.matches(where or {}))

    def devices_with(self, skill: str, where: Mapping[str, str] | None = None) -> tuple[str, ...]:
        """Ids of the devices ``where`` selects that have ``skill``."""
        return tuple(d.device for d in self.matching(where) if d.skill(skill) is not None)

    def spec(self, skill: str, where: Mapping[str, str] | None = None) -> SkillSpec | None:
        """The skill's spec on the first device ``where`` selects that has it."""
        for d in self.matching(where):
            found = d.skill(skill)
            if found is not None:
                return found
        return None


def kind_concept(tag: str | None) -> str | None:
    """A device ``kind`` tag value → its concept (``lamp`` → ``light``); unknown tags are their
    own concept."""
    if tag is None:
        return None
    return next((c for c, tags in KIND_TAGS.items() if tag in tags), tag)


def skill_choices(action: str, concept: str | None) -> tuple[str, ...]:
    """Skill names performing ``action`` on a device of ``concept``, preferred first."""
    table = ACTION_SKILLS.get(action, {})
    names = [*(table.get(concept, ()) if concept else ()), *table.get("*", ())]
    if concept is None:
        names += [n for c, ns in table.items() if c != "*" for n in ns]
    return tuple(dict.fromkeys(names))


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interpretation:
    """A reading of the text the caller can run: ``skill`` with ``input`` on devices ``where``
    selects (one of them, or ``mode="all"`` of them)."""

    skill: str
    input: dict[str, Any]
    where: dict[str, str]
    mode: Mode
    confidence: float
    layer: Layer
    explanation: str


@dataclass(frozen=True)
class Unsure:
    """No confident, runnable reading: the best ``candidates`` (at most three, best first),
    why each layer did not decide, and (when the router knows what to ask) a ``question`` back
    for the person: "Which one: lamp-kitchen (room kitchen) or lamp-hall (room hall)?"."""

    candidates: list[Interpretation]
    reason: str
    question: str | None = None
    plan: Plan | None = None
    """A plan the LLM layer wrote but that is not carried out (a condition, a guess, several
    steps asked through :meth:`Router.route`): shown with ``--explain``, never run."""


@dataclass(frozen=True)
class Plan:
    """Several calls to carry out in order (the LLM layer's multi-step reading): each step an
    :class:`Interpretation`; ``confidence`` is the least of theirs."""

    steps: tuple[Interpretation, ...]
    confidence: float
    layer: Layer
    explanation: str


class SupportsRun(Protocol):
    """A loaded model (:class:`edgeagent.models.Session` or anything with its ``run``)."""

    def run(self, feeds: dict[str, Any]) -> Mapping[str, Any]: ...
