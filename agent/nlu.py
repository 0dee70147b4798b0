"""Natural-language commands → a skill, its input and a ``where``: the coordinator's router.

::

    catalog = Catalog([("lamp-kitchen", {"room": "kitchen", "kind": "lamp"}, lamp_specs), …])
    router = Router(catalog)                       # threshold 0.6, the zoo's intent model
    router.route("turn off the kitchen lights")
    # Interpretation(skill='turn_off', input={}, where={'room': 'kitchen', 'kind': 'lamp'},
    #                mode='one', confidence=0.95, layer='grammar', explanation='grammar: …')
    router.route("order pizza")
    # Unsure(candidates=[], reason='grammar: no command verb recognized; model: …')

Three layers, tried in order; the first confident, runnable reading wins:

1. **exact**: the text is a skill name, or ``skill_name key=value …``. Keys naming an input
   property of the skill go to ``input`` (values parsed as JSON when they parse, else strings);
   keys naming a device tag (``room``, ``kind``, …) go to ``where`` (``device=ID``: that device's
   tags); ``mode=all`` sets the mode. Confidence 1.
2. **grammar**: a small set of regular expressions for command verbs ("turn off", "switch … on",
   "dim … to 30%", "set … to 21 degrees", questions, "ring", …), room words (the catalog's
   ``room`` tag values plus synonyms: "living room", "lounge" → ``living``) and kind words
   ("lights", "lamp" → the ``kind`` tag value the catalog's lamps use, through :data:`KIND_TAGS`).
3. **model**: the zoo's tiny intent model (``edgeagent.models.zoo.intent.interpret``); its
   (intent, kind) pair maps to a skill with the same tables as the grammar. Confidence is the
   product of the probabilities of the heads used (intent, kind, and room unless the text names
   a room). numpy and the runtime are imported, and the model loaded, on first use only; when
   they are missing the router still works with the first two layers and says so.

In every layer the skill must exist on a device the ``where`` selects: the router never routes to
a skill no device has. Numbers ("30%", "21 degrees") fill the skill's one required numeric input
property, checked against the schema's type and bounds. Below ``threshold``, or when no reading
can run as is, :meth:`Router.route` returns :class:`Unsure` with up to three candidates from all
layers, best first, instead of guessing.
It also answers Unsure, rather than let a later layer decide, when the text is in the exact form
but cannot run, when the model reads a different skill than the grammar did, and for a negated
command ("don't turn off …").

``where`` holds device tag filters only (``{"room": "kitchen", "kind": "lamp"}``), as the
coordinator's registry matches them; a device named by its id ("turn off lamp-kitchen",
``device=lamp-kitchen`` in the exact form) becomes its tags, and is routed to only when those tags
single it out among the devices with the skill. ``mode`` is ``"all"`` when the text says
"all"/"every"/"everything"/"both"; otherwise ``"one"``, and a command naming a kind but no room
leaves the choice among that kind's devices to the caller.

Pure logic: no MQTT, no I/O except loading the model.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .errors import EdgeAgentError
from .protocol import SkillSpec

if TYPE_CHECKING:
    from .protocol import Manifest

__all__ = [
    "ACTION_SKILLS",
    "KIND_CUES",
    "KIND_TAGS",
    "KIND_WORDS",
    "LAYERS",
    "ROOM_WORDS",
    "Catalog",
    "CatalogDevice",
    "Interpretation",
    "Layer",
    "Mode",
    "Router",
    "SupportsRun",
    "Unsure",
    "kind_concept",
    "skill_choices",
]

Layer = Literal["exact", "grammar", "model"]
Mode = Literal["one", "all"]
LAYERS: tuple[Layer, ...] = ("exact", "grammar", "model")

DEFAULT_MODEL = "zoo:intent"
DEFAULT_THRESHOLD = 0.6
MAX_CANDIDATES = 3
NO_VERB = "no command verb"
NOT_RUNNABLE_CAP = 0.5
"""A candidate that cannot run as is (missing or invalid input) reports at most this confidence."""

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
    """No confident, runnable reading: the best ``candidates`` (at most three, best first) and
    why each layer did not decide."""

    candidates: list[Interpretation]
    reason: str


class SupportsRun(Protocol):
    """A loaded model (:class:`edgeagent.models.Session` or anything with its ``run``)."""

    def run(self, feeds: dict[str, Any]) -> Mapping[str, Any]: ...


# --- text helpers -------------------------------------------------------------------------------

# edgeagent.models.zoo.intent.parse's number pattern (kept here: no numpy needed), except that
# digits inside a name ("lamp-1") are not a number.
_NUMBER = re.compile(
    r"(?<![\w.:-])(-?\d+(?:[.,]\d+)?)\s*(%|percent\b|per cent\b|degrees?\b|°\s*c?|c\b)?",
    re.IGNORECASE,
)
_TIME_UNIT = re.compile(
    r"^(?::\d\d|\s*(?:minutes?|mins?|seconds?|secs?|hours?|hrs?|days?|am|pm|a\.m|p\.m|o'?clock)\b)"
)
_POLITE = re.compile(
    r"^(?:(?:please|hey|hi|hello|ok|okay|so|um|uh|oh|well|yo|kindly|quickly|just|now|"
    r"(?:could|can|would|will) you(?: please| kindly)?|i'd like you to|i want you to)\b[\s,]*)+"
)
_QUESTION = re.compile(
    r"^(?:is|are|was|were|did|does|do|has|have|had|what|whats|what's|how|hows|how's|which|who|"
    r"when|where|why|tell me|check|show me|show|let me know|any|anyone|anybody|i wonder|"
    r"report|read|find out|see if)\b"
)
_NEGATION = re.compile(r"\b(?:don'?t|do not|dont|never|no need to)\b")
_ALL = re.compile(r"\b(?:all|every|everything|each|both|everywhere)\b(?! the way)")
_CLEAN = re.compile(r"[^a-z0-9%°'.:\-\s]+")


def _normalize(text: str) -> str:
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    t = _CLEAN.sub(" ", t)
    t = re.sub(r"(?<!\d)[.:]|[.:](?!\d)", " ", t)  # keep "20.5" and "6:30" only
    return " " + " ".join(t.split()) + " "


def _words(words: Iterable[str]) -> str:
    """An alternation of phrases, longest first, spaces matching any whitespace."""
    ordered = sorted(set(words), key=lambda w: (-len(w), w))
    return "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in ordered)


def _phrase_re(words: Iterable[str]) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-])(?:{_words(words)})(?![\w-])")


@dataclass(frozen=True)
class _Number:
    value: float
    unit: str | None  # "percent", "degrees" or None
    text: str


_COUNTED = re.compile(rf"^\s*(?:{_words(w for ws in KIND_WORDS.values() for w in ws)})\b")


def _find_number(norm: str) -> _Number | None:
    """The first level or temperature: not a time ("6:30", "10 minutes") nor a count of devices
    ("2 lamps")."""
    for match in _NUMBER.finditer(norm):
        rest = norm[match.end() :]
        if _TIME_UNIT.match(rest) or (not match.group(2) and _COUNTED.match(rest)):
            continue
        raw = (match.group(2) or "").lower().strip()
        unit = "percent" if raw.startswith(("%", "per")) else "degrees" if raw else None
        return _Number(float(match.group(1).replace(",", ".")), unit, match.group(0).strip())
    return None


def _has_time_number(norm: str) -> bool:
    return any(_TIME_UNIT.match(norm[m.end() :]) for m in _NUMBER.finditer(norm))


# --- the grammar ----------------------------------------------------------------------------------

_INFLECTED = r"(?:s|es|ed|d|ing|ting|ming|ping)?"
"""Verb endings: "turning", "switched", "putting", "dimming"."""
_ON_VERBS = rf"(?:turn|switch|power|flip|put|get|leave|keep|click){_INFLECTED}"
_OFF_VERBS = rf"(?:turn|switch|power|flip|put|get|shut|knock|click){_INFLECTED}"
_GAP = r"(?:\s+[\w'%.-]+){1,6}?"
_LIGHT_WORDS = _words(KIND_WORDS["light"])
_ANY_KIND_WORDS = _words(w for ws in KIND_WORDS.values() for w in ws)
_SET_VERBS = (
    r"\b(?:set|dim|brighten|adjust|change|bring|make|raise|lower|bump|crank|increase|decrease|"
    rf"reduce|drop|put|turn|warm|heat|cool|up|down|level|move){_INFLECTED}\b"
)


@dataclass(frozen=True)
class _ActionRule:
    action: str
    pattern: re.Pattern[str]
    strength: int
    """Higher wins; equal strengths of different actions make the reading ambiguous."""
    cue: str | None = None
    """The kind concept the phrasing implies ("it's dark" → light)."""
    implied: bool = False
    """An idiom rather than a command verb: lowers the confidence."""


def _rule(
    action: str, pattern: str, strength: int, cue: str | None = None, implied: bool = False
) -> _ActionRule:
    return _ActionRule(action, re.compile(pattern), strength, cue, implied)


_RULES: tuple[_ActionRule, ...] = (
    _rule("turn_on", rf"\b{_ON_VERBS}\s+on\b", 3),
    _rule("turn_off", rf"\b{_OFF_VERBS}\s+(?:off|out)\b", 3),
    _rule("turn_off", r"\bshut\s+down\b", 3),
    _rule("turn_on", rf"\b{_ON_VERBS}{_GAP}\s+on\b", 2),
    _rule("turn_off", rf"\b{_OFF_VERBS}{_GAP}\s+(?:off|out)\b", 2),
    _rule("turn_off", rf"\b(?:kill|cut|douse|extinguish|deactivate|disable){_INFLECTED}\b", 2),
    _rule(
        "turn_on",
        rf"\b(?:light{_INFLECTED} up|illuminat(?:e|es|ed|ing)|activat(?:e|es|ed|ing)|"
        rf"enabl(?:e|es|ed|ing)|power{_INFLECTED} up|fir(?:e|es|ed|ing) up)\b",
        2,
    ),
    _rule("turn_off", rf"\b(?:{_LIGHT_WORDS})\s+out\b", 2, "light"),
    _rule("turn_on", rf"\b(?:{_ANY_KIND_WORDS})\s+on\b", 1),
    _rule("turn_off", r"\boff\b", 1),
    _rule(
        "turn_on",
        r"\b(?:(?:it'?s|it is|too|so|getting|very|pretty|really|bit|pitch)\s+dark|can'?t see)\b",
        1,
        "light",
        True,
    ),
    _rule(
        "set_level",
        r"\b(?:(?:it'?s|it is|too|so|getting|very|pretty|really|bit|i'?m|i am)\s+"
        r"(?:cold|chilly|freezing|hot|warm)|warmer|cooler|colder|hotter|"
        r"warm up|heat up|cool down)\b",
        1,
        "thermostat",
        True,
    ),
    _rule("set_level", r"\b(?:dim|dimmer|brighten|brighter)\b", 1, "light"),
    _rule("toggle", rf"\b(?:toggl(?:e|es|ed|ing)|flip{_INFLECTED})\b", 2),
    _rule("notify", rf"\b(?:ring|press|push|buzz|chime|ding){_INFLECTED}\b", 2),
    _rule("lock", r"\block\b", 2),
    _rule("unlock", r"\bunlock\b", 2),
    _rule("open", r"\bopen\b", 2),
    _rule("close", r"\b(?:close|shut)\b", 1),
    _rule("query_state", r"\b(?:status|state)\b", 3),
    _rule("query_state", r"\b(?:temperature|how (?:warm|cold|hot))\b", 1, "thermostat"),
)


@dataclass(frozen=True)
class _Slots:
    """What the text names: rooms, kinds, a device, a number, the mode."""

    rooms: tuple[str, ...]
    """Catalog room values named in the text."""
    foreign_rooms: tuple[str, ...]
    """Rooms named in the text that no catalog device is in."""
    kinds: tuple[str, ...]
    """Kind concepts named ("lights" → light)."""
    cues: tuple[str, ...]
    """Kind concepts hinted at ("warmer" → thermostat)."""
    device: str | None
    number: _Number | None
    mode: Mode
    said: dict[str, str]
    """What matched, for explanations: slot → words."""


@dataclass(frozen=True)
class _Target:
    skill: str
    where: dict[str, str]
    devices: tuple[str, ...]
    spec: SkillSpec


@dataclass(frozen=True)
class _Candidate:
    interpretation: Interpretation
    problem: str | None = None
    """Why it cannot run as is (missing or invalid input, …); None if it can."""

    @property
    def runnable(self) -> bool:
        return self.problem is None


class _Lexicon:
    """The catalog's vocabulary as compiled patterns."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        rooms = catalog.rooms
        self.room_res = {r: _phrase_re((*ROOM_WORDS.get(r, ()), *_spellings(r))) for r in rooms}
        self.foreign_room_res = {
            r: _phrase_re(words) for r, words in ROOM_WORDS.items() if r not in rooms
        }
        concepts: dict[str, set[str]] = {c: set(ws) for c, ws in KIND_WORDS.items()}
        for tag in catalog.kinds:
            concept = kind_concept(tag) or tag
            concepts.setdefault(concept, set()).update(_spellings(tag))
            if concept == tag and not tag.endswith("s"):
                concepts[concept].add(tag + "s")
        self.kind_res = {c: _phrase_re(ws) for c, ws in concepts.items()}
        self.cue_res = {c: _phrase_re(ws) for c, ws in KIND_CUES.items()}
        self.device_re = (
            _phrase_re(d.device.lower() for d in catalog.devices) if catalog.devices else None
        )
        self.skill_phrases = {
            name: re.compile(rf"\b{_words([name.lower().replace('_', ' ')])}\b")
            for name in sorted(catalog.skill_names, key=len, reverse=True)
        }

    def slots(self, norm: str) -> _Slots:
        said: dict[str, str] = {}
        rooms = []
        spans: list[tuple[int, int]] = []
        for room, pattern in self.room_res.items():
            m = pattern.search(norm)
            if m:
                rooms.append(room)
                spans.append(m.span())
                said[f"room {room}"] = m.group(0)
        foreign = []
        for room, pattern in self.foreign_room_res.items():
            m = pattern.search(norm)
            if m and not any(a <= m.start() < b for a, b in spans):
                foreign.append(room)
                said[f"room {room}"] = m.group(0)
        device = None
        if self.device_re is not None:
            m = self.device_re.search(norm)
            if m:
                device = next(d.device for d in self.catalog.devices if d.device.lower() == m[0])
                said["device"] = m.group(0)
        kinds = []
        kind_spans: list[tuple[int, int, str]] = []
        for concept, pattern in self.kind_res.items():
            for m in pattern.finditer(norm):
                kind_spans.append((m.start(), m.end(), concept))
        # A kind word inside a longer one ("bell" in "door bell") does not count.
        for start, end, concept in kind_spans:
            inside = any(
                s <= start and end <= e and (e - s) > (end - start) for s, e, _ in kind_spans
            )
            if not inside and concept not in kinds:
                kinds.append(concept)
                said[f"kind {concept}"] = norm[start:end]
        cues = []
        for concept, pattern in self.cue_res.items():
            m = pattern.search(norm)
            if m:
                cues.append(concept)
                said[f"cue {concept}"] = m.group(0)
        number = _find_number(norm)
        if number is not None:
            cues.extend(
                c
                for c, unit in (("light", "percent"), ("thermostat", "degrees"))
                if number.unit == unit and c not in cues
            )
        mode: Mode = "all" if _ALL.search(norm) else "one"
        return _Slots(
            tuple(rooms), tuple(foreign), tuple(kinds), tuple(cues), device, number, mode, said
        )


def _spellings(value: str) -> tuple[str, ...]:
    v = value.lower()
    return tuple(dict.fromkeys((v, v.replace("-", " ").replace("_", " "))))


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


def _properties(spec: SkillSpec) -> dict[str, Mapping[str, Any]]:
    props = spec.input_schema.get("properties", {})
    return {k: v for k, v in props.items() if isinstance(v, Mapping)}


def _required(spec: SkillSpec) -> list[str]:
    req = spec.input_schema.get("required", [])
    return [str(r) for r in req] if isinstance(req, list) else []


def _check_input(spec: SkillSpec, value: Mapping[str, Any]) -> str | None:
    props = _properties(spec)
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


def _build_input(spec: SkillSpec, number: _Number | None) -> tuple[dict[str, Any], str | None]:
    """Fill the skill's one required numeric property from the text's number; check it."""
    props = _properties(spec)
    required = _required(spec)
    numeric = [r for r in required if _schema_type(props.get(r, {})) & {"integer", "number"}]
    value: dict[str, Any] = {}
    if number is not None and len(numeric) == 1:
        name = numeric[0]
        prop = props.get(name, {})
        v = number.value
        value[name] = int(v) if "integer" in _schema_type(prop) and v.is_integer() else v
        about = f"{name} {prop.get('description', '')} {spec.description}".lower()
        if number.unit == "degrees" and "percent" in about and "celsius" not in about:
            return value, f"{spec.name} takes {name} in percent, not degrees"
        if number.unit == "percent" and ("celsius" in about or "degrees" in about):
            return value, f"{spec.name} takes {name} in degrees, not percent"
    return value, _check_input(spec, value)


# --- the router ---------------------------------------------------------------------------------


def _where_text(where: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in where.items()) or "any device"


def _fmt(p: float) -> str:
    return f"{p:.2f}"


class Router:
    """Maps text to a skill, its input and a ``where`` over ``catalog`` (see the module doc).

    ``model``: a model spec for :func:`edgeagent.models.skillset.resolve_model` (``zoo:intent``,
    a file, an optimizer folder) or None for no model layer; ``session``: an already loaded model
    (anything with ``run``), used instead of loading ``model``; ``layers``: the layers to use
    (all three by default; fewer to measure one alone).
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        model: str | None = DEFAULT_MODEL,
        threshold: float = DEFAULT_THRESHOLD,
        session: SupportsRun | None = None,
        layers: Sequence[Layer] = LAYERS,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        unknown = sorted(set(layers) - set(LAYERS))
        if unknown:
            raise ValueError(f"unknown layers {unknown}; layers are {', '.join(LAYERS)}")
        self.layers: tuple[Layer, ...] = tuple(x for x in LAYERS if x in layers)
        self.catalog = catalog
        self.model = model
        self.threshold = threshold
        self._session = session
        self._model_error: str | None = None
        self._lock = threading.Lock()
        self._lexicon = _Lexicon(catalog)
        self._tags_of = {d.device: dict(d.tags) for d in catalog.devices}

    # Public ----------------------------------------------------------------------------------

    @property
    def model_status(self) -> str:
        """``disabled``, ``not loaded``, ``loaded`` or ``unavailable: <why>``."""
        if self._session is not None:
            return "loaded"
        if self.model is None:
            return "disabled"
        return f"unavailable: {self._model_error}" if self._model_error else "not loaded"

    def route(self, text: str) -> Interpretation | Unsure:
        """The first confident, runnable reading of ``text``, else :class:`Unsure`."""
        text = text.strip()
        if not text:
            return Unsure([], "empty text")
        candidates: list[_Candidate] = []
        reasons: list[str] = []
        run = {"exact": self._exact, "grammar": self._grammar, "model": self._model_layer}
        layers = [run[x] for x in self.layers]
        negation = _NEGATION.search(_normalize(text))
        if negation:
            layers = layers[:1] if self.layers[:1] == ("exact",) else []
            reasons.append(f'"{negation.group(0)}": a negated command is never acted on')
        for layer in layers:
            found, why = layer(text)
            candidates.extend(found)
            if why:
                reasons.append(why)
            best = next((c for c in found if c.runnable), None)
            earlier = {
                c.interpretation.skill
                for c in candidates[: len(candidates) - len(found)]
                if c.problem != NO_VERB
            }
            if best is not None and earlier and best.interpretation.skill not in earlier:
                reasons.append(
                    f"{best.interpretation.layer}: reads {best.interpretation.skill}, but the "
                    f"layer before read {' or '.join(sorted(earlier))}: not guessing between them"
                )
                continue
            if best is not None and best.interpretation.confidence >= self.threshold:
                return best.interpretation
            if found and layer == self._exact:
                break  # a call in the exact form that cannot run: no other layer second-guesses it
            if best is not None:
                reasons.append(
                    f"{best.interpretation.layer}: best reading {best.interpretation.skill} "
                    f"has confidence {_fmt(best.interpretation.confidence)} < threshold "
                    f"{_fmt(self.threshold)}"
                )
        return Unsure(_best(candidates), "; ".join(reasons) or "no reading")

    # Layer 1: exact ------------------------------------------------------------------------------

    def _exact(self, text: str) -> tuple[list[_Candidate], str | None]:
        try:
            tokens = shlex.split(text)
        except ValueError:
            return [], None
        if not tokens or tokens[0] not in self.catalog.skill_names:
            return [], None
        name, args = tokens[0], tokens[1:]
        if not all("=" in a and not a.startswith("=") for a in args):
            return [], None  # words after the name: a sentence, not a call
        input_keys = {
            k for d in self.catalog.devices if (s := d.skill(name)) for k in _properties(s)
        }
        tag_keys = set(self.catalog.tags)
        value: dict[str, Any] = {}
        where: dict[str, str] = {}
        mode: Mode = "one"
        named: str | None = None
        problems: list[str] = []
        for arg in args:
            key, _, raw = arg.partition("=")
            if key in input_keys:
                value[key] = _json_or_str(raw)
            elif key in tag_keys:
                where[key] = raw
            elif key == "device" and raw not in self._tags_of:
                problems.append(f"no device {raw!r}")
            elif key == "device":
                named = raw
                where.update(self._tags_of[raw])
            elif key == "mode" and raw in ("one", "all"):
                mode = "all" if raw == "all" else "one"
            else:
                problems.append(f"{key!r} is neither an input of {name} nor a device tag")
        devices = self.catalog.devices_with(name, where)
        spec = self.catalog.spec(name, where)
        if spec is None:
            problems.append(f"no device with {_where_text(where)} has {name}")
        elif named is not None and devices != (named,) and mode == "one":
            problems.append(_not_singled_out(named, devices))
        else:
            problem = _check_input(spec, value)
            if problem:
                problems.append(problem)
        explanation = (
            f"exact: skill name {name!r}"
            + (f", input {json.dumps(value, sort_keys=True)}" if value else "")
            + f", where {_where_text(where)}: {len(devices)} device(s)"
        )
        if problems:
            explanation += "; cannot run: " + "; ".join(problems)
        interp = Interpretation(
            name,
            value,
            where,
            mode,
            1.0 if not problems else NOT_RUNNABLE_CAP,
            "exact",
            explanation,
        )
        why = f"exact: {'; '.join(problems)}" if problems else None
        return [_Candidate(interp, "; ".join(problems) or None)], why

    # Layer 2: grammar ----------------------------------------------------------------------------

    def _grammar(self, text: str) -> tuple[list[_Candidate], str | None]:
        norm = _normalize(text)
        slots = self._lexicon.slots(norm)
        stripped = _POLITE.sub("", norm.strip())
        said = dict(slots.said)
        # The action: a question, a number to set, a verb, or a skill's own name.
        action: str | None = None
        strength = 0
        ambiguous = False
        implied = False
        cue: str | None = None
        if _QUESTION.match(stripped):
            action, strength = "query_state", 5
            said["question"] = stripped.split()[0]
        elif slots.number is not None and re.search(
            rf"(?:\b(?:to|at)\s+-?\d|%|\bpercent\b|\bdegrees?\b|°|{_SET_VERBS})", norm
        ):
            action, strength = "set_level", 4
            said["number"] = slots.number.text
        else:
            for rule in _RULES:
                m = rule.pattern.search(norm)
                if m is None or rule.strength < strength:
                    continue
                if rule.strength == strength and action is not None and rule.action != action:
                    ambiguous = True
                    continue
                if rule.strength > strength:
                    ambiguous = False
                action, strength = rule.action, rule.strength
                cue, implied = rule.cue or cue, rule.implied
                said["verb"] = m.group(0).strip()
        direct: str | None = None
        for name, pattern in self._lexicon.skill_phrases.items():  # longest name first
            m = pattern.search(norm)
            if m and (action is None or strength <= 3):
                direct = name
                said["skill name"] = m.group(0)
                break
        if action is None and direct is None:
            if slots.number is not None and _has_time_number(norm):
                return [], "grammar: a time or duration is not a device command"
            return self._no_verb(slots), "grammar: no command verb recognized"
        cues = [*([cue] if cue else []), *(c for c in slots.cues if c != cue)]
        confidence = 0.95
        if implied:
            confidence = 0.8
        elif strength <= 1:
            confidence = 0.85
        if ambiguous:
            confidence = 0.5
        explanation = "grammar: " + ", ".join(f'{k} "{v}"' for k, v in said.items())
        if direct is not None and (action is None or direct not in skill_choices(action, None)):
            targets, why = self._targets_for_skill(direct, slots)
            action_text = f"skill {direct}"
        else:
            assert action is not None
            targets, why, from_cue = self._targets(action, slots, cues)
            if from_cue and not implied:
                confidence = min(confidence, 0.85)
            action_text = action
        if not targets:
            return [], f"grammar: {action_text}: {why}"
        found = self._candidates(targets, slots, confidence, "grammar", explanation)
        if any(c.runnable for c in found):
            return found, None
        return found, f"grammar: {found[0].interpretation.skill}: {found[0].problem}"

    def _no_verb(self, slots: _Slots) -> list[_Candidate]:
        """No verb but a named device, room or kind: its skills as weak candidates."""
        where: dict[str, str] = {}
        if len(slots.rooms) == 1:
            where["room"] = slots.rooms[0]
        tags = [t for c in slots.kinds for t in self._kind_tags(c)]
        if len(tags) == 1:
            where["kind"] = tags[0]
        if slots.device:
            where = dict(self._tags_of[slots.device])
        if not where:
            return []
        out = []
        for name in self.catalog.skill_names:
            spec = self.catalog.spec(name, where)
            if spec is None:
                continue
            value, _ = _build_input(spec, slots.number)
            text = f"grammar: no verb; {_where_text(where)} has skill {name} ({spec.description})"
            interp = Interpretation(name, value, where, slots.mode, 0.3, "grammar", text)
            out.append(_Candidate(interp, NO_VERB))
        return out

    # Layer 3: the model --------------------------------------------------------------------------

    def _load(self) -> SupportsRun | None:
        with self._lock:
            if self._session is not None or self._model_error is not None or self.model is None:
                return self._session
            try:
                from .models import load_model
                from .models.skillset import resolve_model

                self._session = load_model(resolve_model(self.model).path)
            except EdgeAgentError as exc:  # ModelError, RuntimeMissing, ConfigError
                self._model_error = str(exc)
            except (ImportError, OSError, ValueError, RuntimeError) as exc:
                self._model_error = f"{type(exc).__name__}: {exc}"
            return self._session

    def _model_layer(self, text: str) -> tuple[list[_Candidate], str | None]:
        if self.model is None and self._session is None:
            return [], "model: layer disabled (model=None)"
        session = self._load()
        if session is None:
            return [], f"model: layer unavailable ({self._model_error})"
        try:
            from .models.zoo import intent as zoo
        except ImportError as exc:  # RuntimeMissing is an ImportError too
            return [], f"model: layer unavailable ({exc})"
        outputs: dict[str, Any] = {}

        def run(feeds: dict[str, Any]) -> Mapping[str, Any]:
            out = session.run(feeds)
            outputs.update(out)
            return out

        command = zoo.interpret(text, run)
        probs = {
            head: _softmax([float(x) for x in outputs[head][0]]) for head in ("intent", "kind")
        }
        room_probs = _softmax([float(x) for x in outputs["room"][0]])
        slots = self._lexicon.slots(_normalize(text))
        pairs = sorted(
            (
                (pi * pk, intent_name, pi, kind_name, pk)
                for intent_name, pi in _top(zoo.INTENTS, probs["intent"])
                for kind_name, pk in _top(zoo.KINDS, probs["kind"])
            ),
            reverse=True,
        )
        # The room: named in the text (the model knows six rooms; the catalog may have others),
        # else the model's room head.
        room_p = 1.0
        room_text = ""
        if not slots.rooms and not slots.foreign_rooms:
            room_p = max(room_probs)
            room = zoo.ROOMS[room_probs.index(room_p)]
            room_text = f", room {room} ({_fmt(room_p)})"
            if room != "none":
                if room in self.catalog.rooms:
                    slots = _with_rooms(slots, (room,), ())
                else:
                    slots = _with_rooms(slots, (), (room,))
        else:
            room_text = ", room from the text"
        candidates: list[_Candidate] = []
        reasons: list[str] = []
        top_name = f"{command.intent}/{command.kind}"  # the argmax pair, pairs[0]
        for p, intent_name, pi, kind_name, pk in pairs:
            if intent_name == "unknown":
                if pi >= 0.5:
                    reasons.append(f"intent unknown ({_fmt(pi)}): not a device command")
                continue
            if p * room_p < 0.02:
                continue  # a reading too unlikely to offer
            kinds = () if kind_name == "none" else (kind_name,)
            if not (kinds or slots.rooms or slots.foreign_rooms or slots.device) and (
                slots.mode == "one"
            ):
                reasons.append(f"{intent_name}/none: names no device, room or kind")
                continue
            conflict = bool(slots.kinds) and kind_name not in slots.kinds
            confidence = p * room_p * (0.5 if conflict else 1.0)
            model_slots = _with_kinds(slots, kinds)
            targets, why, _ = self._targets(intent_name, model_slots, [])
            explanation = (
                f"model: intent {intent_name} ({_fmt(pi)}), kind {kind_name} ({_fmt(pk)})"
                f"{room_text}"
                + (" (the text names another kind)" if conflict else "")
                + f" → confidence {_fmt(confidence)}"
            )
            if not targets:
                reasons.append(f"{intent_name}/{kind_name}: {why}")
                continue
            candidates.extend(
                self._candidates(targets, model_slots, confidence, "model", explanation)
            )
        candidates.sort(key=lambda c: (c.interpretation.confidence, c.runnable), reverse=True)
        if any(c.runnable for c in candidates):
            return candidates, None
        reasons = list(dict.fromkeys(reasons))[:2]
        return candidates, "model: " + ("; ".join(reasons) or f"{top_name}: nothing runs")

    # Shared: targets and candidates ----------------------------------------------------------

    def _kind_tags(self, concept: str) -> list[str]:
        kinds = self.catalog.kinds
        tags = [t for t in KIND_TAGS.get(concept, (concept,)) if t in kinds]
        return tags or ([concept] if concept in kinds else [])

    def _targets(
        self, action: str, slots: _Slots, cues: Sequence[str]
    ) -> tuple[list[_Target], str, bool]:
        """Skills performing ``action`` on the devices the slots select. Returns the targets,
        why there are none, and whether a kind cue (not a named kind) selected them."""
        if slots.foreign_rooms and not slots.rooms:
            rooms = ", ".join(slots.foreign_rooms)
            return [], f"no device is in the {rooms} (rooms: {_list(self.catalog.rooms)})", False
        base: dict[str, str] = {}
        if slots.device:  # a device named by its id: its tags, whatever else the text says
            base = dict(self._tags_of[slots.device])
            found = self._targets_over(action, base, [None], [(None, None)])
            return found, self._none_why(action, base, [None], [(None, None)]), False
        room_options: list[str | None] = list(slots.rooms) or [None]
        kind_options: list[tuple[str | None, str | None]]
        if slots.kinds:
            kind_options = [(c, t) for c in slots.kinds for t in self._kind_tags(c)]
            if not kind_options:
                # "any rings at the front door": no door, but the doorbell the words point at.
                for concept in (c for c in cues if c not in slots.kinds):
                    options = [(concept, t) for t in self._kind_tags(concept)]
                    found = self._targets_over(action, base, room_options, options)
                    if found:
                        return found, "", True
                named = ", ".join(slots.kinds)
                return [], f"no {named} device (kinds: {_list(self.catalog.kinds)})", False
            found = self._targets_over(action, base, room_options, kind_options)
            if found:
                return found, "", False
            return [], self._none_why(action, base, room_options, kind_options), False
        for concept in cues:
            kind_options = [(concept, t) for t in self._kind_tags(concept)]
            found = self._targets_over(action, base, room_options, kind_options)
            if found:
                return found, "", True
        kind_options = [(None, None)]
        if action == "query_state" and not base and not slots.rooms and slots.mode == "one":
            return [], "the question names no device, room or kind", False
        found = self._targets_over(action, base, room_options, kind_options)
        if found:
            return found, "", False
        return [], self._none_why(action, base, room_options, kind_options), False

    def _targets_over(
        self,
        action: str,
        base: Mapping[str, str],
        rooms: Sequence[str | None],
        kinds: Sequence[tuple[str | None, str | None]],
    ) -> list[_Target]:
        out: list[_Target] = []
        for room in rooms:
            for concept, tag in kinds:
                where = dict(base)
                if room:
                    where["room"] = room
                if tag:
                    where["kind"] = tag
                by_skill: dict[str, list[str]] = {}
                specs: dict[str, SkillSpec] = {}
                for device in self.catalog.matching(where):
                    own = concept or kind_concept(device.tags.get("kind"))
                    for name in skill_choices(action, own):
                        spec = device.skill(name)
                        if spec is not None:
                            by_skill.setdefault(name, []).append(device.device)
                            specs.setdefault(name, spec)
                            break
                out.extend(
                    _Target(name, where, tuple(devices), specs[name])
                    for name, devices in by_skill.items()
                )
        return out

    def _none_why(
        self,
        action: str,
        base: Mapping[str, str],
        rooms: Sequence[str | None],
        kinds: Sequence[tuple[str | None, str | None]],
    ) -> str:
        wheres = []
        for room in rooms:
            for _, tag in kinds:
                where = dict(base)
                if room:
                    where["room"] = room
                if tag:
                    where["kind"] = tag
                wheres.append(where)
        concepts = {c for c, _ in kinds}
        names = sorted({n for c in concepts for n in skill_choices(action, c)})
        selected = {d.device for w in wheres for d in self.catalog.matching(w)}
        if not selected:
            return f"no device with {' or '.join(_where_text(w) for w in wheres)}"
        return (
            f"no device with {' or '.join(_where_text(w) for w in wheres)} has "
            f"{' or '.join(names) or 'a skill for it'}"
        )

    def _targets_for_skill(self, name: str, slots: _Slots) -> tuple[list[_Target], str]:
        """The text says a skill's own name ("read temperature", "recent rings")."""
        base: dict[str, str] = {}
        if len(slots.rooms) == 1:
            base["room"] = slots.rooms[0]
        tags = [t for c in slots.kinds for t in self._kind_tags(c)]
        options = [{**base, "kind": t} for t in tags] or [base]
        if slots.device:
            base = dict(self._tags_of[slots.device])
            options = [base]
        out = [
            _Target(name, w, self.catalog.devices_with(name, w), spec)
            for w in options
            if (spec := self.catalog.spec(name, w)) is not None
        ]
        return out, f"no device with {_where_text(base)} has {name}"

    def _candidates(
        self,
        targets: Sequence[_Target],
        slots: _Slots,
        confidence: float,
        layer: Layer,
        explanation: str,
    ) -> list[_Candidate]:
        out: list[_Candidate] = []
        ambiguous = len({t.skill for t in targets}) > 1 or len({str(t.where) for t in targets}) > 1
        for t in targets:
            conf = confidence
            notes = [f"{t.skill} on {_where_text(t.where)}: {', '.join(t.devices)}"]
            if ambiguous:
                conf = min(conf, 0.5)
                notes.append(f"ambiguous ({len(targets)} readings)")
            untargeted = not ({"room", "kind"} & set(t.where)) and slots.device is None
            if untargeted and slots.mode == "one" and len(t.devices) > 1:
                conf = min(conf, 0.45)
                notes.append("no room or kind named: which device?")
            value, problem = _build_input(t.spec, slots.number)
            if slots.device and t.devices != (slots.device,) and slots.mode == "one":
                problem = _not_singled_out(slots.device, t.devices)
            if value:
                notes.append(f"input {json.dumps(value, sort_keys=True)}")
            if slots.mode == "all":
                notes.append("mode all")
            if problem:
                conf = min(conf, NOT_RUNNABLE_CAP)
                notes.append(f"cannot run: {problem}")
            interp = Interpretation(
                t.skill,
                value,
                dict(t.where),
                slots.mode,
                round(conf, 4),
                layer,
                f"{explanation} → {'; '.join(notes)}",
            )
            out.append(_Candidate(interp, problem))
        out.sort(key=lambda c: (c.interpretation.confidence, c.runnable), reverse=True)
        return out


# --- small helpers ------------------------------------------------------------------------------


def _not_singled_out(device: str, selected: Sequence[str]) -> str:
    if device not in selected:
        return f"{device} does not have it"
    others = ", ".join(d for d in selected if d != device)
    return f"{device}'s tags also select {others}: the where cannot name {device} alone"


def _json_or_str(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _softmax(z: Sequence[float]) -> list[float]:
    top = max(z)
    e = [math.exp(x - top) for x in z]
    total = sum(e)
    return [x / total for x in e]


def _top(labels: Sequence[str], probs: Sequence[float], k: int = 2) -> list[tuple[str, float]]:
    ranked = sorted(zip(labels, probs, strict=True), key=lambda lp: lp[1], reverse=True)
    return [(label, p) for i, (label, p) in enumerate(ranked[:k]) if i == 0 or p >= 0.05]


def _list(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none"


def _with_rooms(slots: _Slots, rooms: tuple[str, ...], foreign: tuple[str, ...]) -> _Slots:
    return _replace(slots, rooms=rooms, foreign_rooms=foreign)


def _with_kinds(slots: _Slots, kinds: tuple[str, ...]) -> _Slots:
    return _replace(slots, kinds=kinds, cues=())


def _replace(slots: _Slots, **changes: Any) -> _Slots:
    return replace(slots, **changes)


def _best(candidates: Iterable[_Candidate]) -> list[Interpretation]:
    """Up to :data:`MAX_CANDIDATES` distinct readings, runnable and confident first."""
    ranked = sorted(
        candidates, key=lambda c: (c.interpretation.confidence, c.runnable), reverse=True
    )
    out: list[Interpretation] = []
    seen: set[str] = set()
    for c in ranked:
        i = c.interpretation
        key = json.dumps([i.skill, i.where, i.input, i.mode], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(i)
        if len(out) == MAX_CANDIDATES:
            break
    return out
